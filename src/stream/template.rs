//! Reading a stream event as the previous one with one string changed.
//!
//! A model server frames every token of a stream the same way: the chunks of one choice differ
//! only in the text of their delta (`{"choices":[{"delta":{"content":"…"},"index":0,…}],"id":…}`).
//! A codec that has read one such event in full keeps it as a [`Template`]; a later event that
//! equals it byte for byte before and after that string, and whose string has no escape, no
//! quote and no control character, is the same JSON document with only that value changed, so
//! the codec takes its text from the event without parsing it again (a JSON read of a chunk was
//! most of a moderated stream's per-event work). Anything else (another shape, a changed
//! `finish_reason` or `usage`, log-probabilities that repeat the token, an escape in the text)
//! is read in full as before.

/// The previous event's data and where its one text value lies in it.
#[derive(Debug, Clone)]
pub struct Template {
    data: String,
    /// The string's contents: `data[start..end]`, between its quotes.
    start: usize,
    end: usize,
}

impl Template {
    /// A template of `data` whose variable part is the string value `text`, which must stand
    /// in `data` as it is (no escapes) and be the only quoted run of those bytes there (so it
    /// is that value, not a stretch across tokens): `None` otherwise.
    pub fn of(data: &str, text: &str) -> Option<Template> {
        if !plain(text.as_bytes()) {
            return None;
        }
        let quoted = format!("\"{text}\"");
        let mut at = memchr::memmem::find_iter(data.as_bytes(), quoted.as_bytes());
        let first = at.next()?;
        if at.next().is_some() {
            return None;
        }
        Some(Template {
            data: data.to_owned(),
            start: first + 1,
            end: first + 1 + text.len(),
        })
    }

    /// The text in place of the template's string when `data` is the template with only that
    /// string's contents changed, and those contents need no decoding; `None` otherwise.
    pub fn fill<'a>(&self, data: &'a str) -> Option<&'a str> {
        let (t, d) = (self.data.as_bytes(), data.as_bytes());
        let tail = t.len() - self.end;
        let end = d.len().checked_sub(tail)?;
        if end < self.start || d[..self.start] != t[..self.start] || d[end..] != t[self.end..] {
            return None;
        }
        // Both cuts sit next to an ASCII quote, so they are character boundaries.
        plain(&d[self.start..end]).then(|| &data[self.start..end])
    }
}

/// A string's contents that stand for themselves in JSON: no quote, backslash or control
/// character (the text of most tokens).
fn plain(b: &[u8]) -> bool {
    !b.iter().any(|&c| c == b'"' || c == b'\\' || c < 0x20)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EV: &str = r#"{"choices":[{"delta":{"content":"tok "},"index":0}],"id":"x"}"#;

    fn template() -> Template {
        Template::of(EV, "tok ").unwrap()
    }

    #[test]
    fn fills_in_the_changed_string() {
        let t = template();
        let ev = r#"{"choices":[{"delta":{"content":"你好，world"},"index":0}],"id":"x"}"#;
        assert_eq!(t.fill(ev), Some("你好，world"));
        let ev = r#"{"choices":[{"delta":{"content":""},"index":0}],"id":"x"}"#;
        assert_eq!(t.fill(ev), Some(""));
        assert_eq!(t.fill(EV), Some("tok "));
    }

    #[test]
    fn refuses_anything_else() {
        let t = template();
        for ev in [
            // another value elsewhere, another index, another shape
            r#"{"choices":[{"delta":{"content":"a"},"index":1}],"id":"x"}"#,
            r#"{"choices":[{"delta":{"content":"a"},"index":0}],"id":"y"}"#,
            r#"{"choices":[{"delta":{"refusal":"a"},"index":0}],"id":"x"}"#,
            // a text that would need decoding, or would end the string early
            r#"{"choices":[{"delta":{"content":"a\nb"},"index":0}],"id":"x"}"#,
            r#"{"choices":[{"delta":{"content":"a\"b"},"index":0}],"id":"x"}"#,
            r#"{"choices":[{"delta":{"content":"a","content":"b"},"index":0}],"id":"x"}"#,
            "{\"choices\":[{\"delta\":{\"content\":\"a\tb\"},\"index\":0}],\"id\":\"x\"}",
            // shorter than the frame
            r#"{"choices":[{"delta":{"content":"#,
            "",
        ] {
            assert_eq!(t.fill(ev), None, "{ev}");
        }
    }

    #[test]
    fn needs_the_one_string_of_those_bytes() {
        assert!(Template::of(EV, "tik").is_none(), "not in the event");
        assert!(Template::of(EV, "cho").is_none(), "not a whole string");
        assert!(
            Template::of(r#"{"a":"x\ty"}"#, "x\ty").is_none(),
            "an escape inside"
        );
        // `","` is both the value and the run between the two other strings.
        assert!(
            Template::of(r#"{"a":"x","b":","}"#, ",").is_none(),
            "not the only run"
        );
        assert!(Template::of(r#"{"a":"x","b":"y"}"#, "y").is_some());
    }
}

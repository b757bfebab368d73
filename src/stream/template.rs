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
    /// A template of `data` whose variable part is `text`, which must be a string value of
    /// `data` borrowed from it as it stands (without escapes): `None` otherwise.
    pub fn new(data: &str, text: &str) -> Option<Template> {
        // Where `text` lies in `data`, from their addresses (a borrowed value points into it).
        let start = (text.as_ptr() as usize).checked_sub(data.as_ptr() as usize)?;
        let end = start.checked_add(text.len())?;
        let b = data.as_bytes();
        let quoted = start >= 1
            && end < b.len()
            && b[start - 1] == b'"'
            && b[end] == b'"'
            && plain(&b[start..end]);
        quoted.then(|| Template {
            data: data.to_owned(),
            start,
            end,
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
        let i = EV.find("tok ").unwrap();
        Template::new(EV, &EV[i..i + 4]).unwrap()
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
    fn needs_a_string_borrowed_from_the_event() {
        assert!(Template::new(EV, "tok ").is_none(), "not inside the event");
        let i = EV.find("choices").unwrap();
        assert!(
            Template::new(EV, &EV[i..i + 3]).is_none(),
            "not a whole string"
        );
        let esc = r#"{"a":"x\ty"}"#;
        let i = esc.find('x').unwrap();
        assert!(
            Template::new(esc, &esc[i..i + 4]).is_none(),
            "an escape inside"
        );
    }
}

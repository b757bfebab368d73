//! Reading a stream event as the previous one with its text changed.
//!
//! A model server frames every token of a stream the same way: the chunks of one choice differ
//! only in the text of their delta (`{"choices":[{"delta":{"content":"…"},"index":0,…}],"id":…}`)
//! and, in some APIs, a running number (`"sequence_number":41`). A codec that has read one such
//! event in full keeps it as a [`Template`]; a later event that equals it byte for byte outside
//! that string (and that number), whose string has no escape, no quote and no control character
//! and whose number is a plain non-negative integer, is the same JSON document with only those
//! values changed, so the codec takes them from the event without parsing it again (a JSON read
//! of a chunk was most of a moderated stream's per-event work). Anything else (another shape, a
//! changed `finish_reason` or `usage`, log-probabilities that repeat the token, an escape in the
//! text) is read in full as before.

/// The previous event's data and where its variable values lie in it.
#[derive(Debug, Clone)]
pub struct Template {
    data: String,
    /// The variable values in the order they come, as byte ranges of `data`: the text's
    /// contents between its quotes, and the number's digits.
    slots: Vec<(usize, usize, Slot)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Text,
    Counter,
}

/// The values an event put in a template's slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filled<'a> {
    pub text: &'a str,
    /// The number's value, for a template with one.
    pub counter: Option<u64>,
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
        let start = unique(data, &quoted)? + 1;
        Some(Template {
            data: data.to_owned(),
            slots: vec![(start, start + text.len(), Slot::Text)],
        })
    }

    /// This template with the integer value of member `key` variable too: `None` unless that
    /// member is there once, written `"key":` and digits.
    pub fn with_counter(mut self, key: &str) -> Option<Template> {
        let member = format!("\"{key}\":");
        let start = unique(&self.data, &member)? + member.len();
        let end = start + digits(&self.data.as_bytes()[start..])?;
        self.slots.push((start, end, Slot::Counter));
        self.slots.sort_unstable_by_key(|s| s.0);
        Some(self)
    }

    /// The values in place of the template's when `data` is the template with only those
    /// changed, and the text needs no decoding; `None` otherwise.
    pub fn fill<'a>(&self, data: &'a str) -> Option<Filled<'a>> {
        let (t, d) = (self.data.as_bytes(), data.as_bytes());
        let (mut at_t, mut at_d) = (0, 0);
        let mut filled = Filled {
            text: "",
            counter: None,
        };
        for &(start, end, slot) in &self.slots {
            let fixed = &t[at_t..start];
            if d.get(at_d..at_d + fixed.len())? != fixed {
                return None;
            }
            at_d += fixed.len();
            match slot {
                Slot::Text => {
                    // The text runs to the next quote, which must close it.
                    let len = memchr::memchr(b'"', &d[at_d..])?;
                    if !plain(&d[at_d..at_d + len]) {
                        return None;
                    }
                    // Next to ASCII quotes: character boundaries.
                    filled.text = &data[at_d..at_d + len];
                    at_d += len;
                }
                Slot::Counter => {
                    let len = digits(&d[at_d..])?;
                    filled.counter = Some(data[at_d..at_d + len].parse().ok()?);
                    at_d += len;
                }
            }
            at_t = end;
        }
        (d[at_d..] == t[at_t..]).then_some(filled)
    }
}

/// Where `needle` starts in `data`, when it occurs there exactly once.
fn unique(data: &str, needle: &str) -> Option<usize> {
    let mut at = memchr::memmem::find_iter(data.as_bytes(), needle.as_bytes());
    let first = at.next()?;
    at.next().is_none().then_some(first)
}

/// The length of the JSON non-negative integer at the start of `b` (`0`, or digits not starting
/// with `0`) that ends where a number ends, or `None`.
fn digits(b: &[u8]) -> Option<usize> {
    let len = b.iter().take_while(|c| c.is_ascii_digit()).count();
    let ends = !matches!(b.get(len), Some(b'.' | b'e' | b'E'));
    (ends && (len == 1 || (len > 1 && b[0] != b'0') && len <= 19)).then_some(len)
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

    fn text(t: &Template, ev: &str) -> Option<String> {
        t.fill(ev).map(|f| f.text.to_owned())
    }

    #[test]
    fn fills_in_the_changed_string() {
        let t = template();
        let ev = r#"{"choices":[{"delta":{"content":"你好，world"},"index":0}],"id":"x"}"#;
        assert_eq!(text(&t, ev).as_deref(), Some("你好，world"));
        let ev = r#"{"choices":[{"delta":{"content":""},"index":0}],"id":"x"}"#;
        assert_eq!(text(&t, ev).as_deref(), Some(""));
        assert_eq!(text(&t, EV).as_deref(), Some("tok "));
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
            Template::of(r#"{"a":"x\ty"}"#, "x\\ty").is_none(),
            "an escape inside"
        );
        // `","` is both the value and the run between the two other strings.
        assert!(
            Template::of(r#"{"a":"x","b":","}"#, ",").is_none(),
            "not the only run"
        );
        assert!(Template::of(r#"{"a":"x","b":"y"}"#, "y").is_some());
    }

    #[test]
    fn a_counter_may_change_too() {
        let ev = r#"{"delta":"tok ","sequence_number":7,"type":"d"}"#;
        let t = Template::of(ev, "tok ")
            .and_then(|t| t.with_counter("sequence_number"))
            .unwrap();
        let f = t.fill(r#"{"delta":"你好","sequence_number":1024,"type":"d"}"#);
        assert_eq!(
            f,
            Some(Filled {
                text: "你好",
                counter: Some(1024)
            })
        );
        // The number before the text works as well as after it.
        let ev = r#"{"sequence_number":7,"delta":"tok ","type":"d"}"#;
        let t = Template::of(ev, "tok ")
            .and_then(|t| t.with_counter("sequence_number"))
            .unwrap();
        let f = t.fill(r#"{"sequence_number":0,"delta":"b","type":"d"}"#);
        assert_eq!(f.map(|f| (f.text, f.counter)), Some(("b", Some(0))));
        for bad in [
            r#"{"sequence_number":07,"delta":"b","type":"d"}"#,
            r#"{"sequence_number":7.5,"delta":"b","type":"d"}"#,
            r#"{"sequence_number":7e2,"delta":"b","type":"d"}"#,
            r#"{"sequence_number":-7,"delta":"b","type":"d"}"#,
            r#"{"sequence_number":,"delta":"b","type":"d"}"#,
            r#"{"sequence_number":99999999999999999999,"delta":"b","type":"d"}"#,
            r#"{"sequence_number":7,"delta":"b","type":"e"}"#,
        ] {
            assert_eq!(t.fill(bad), None, "{bad}");
        }
        assert!(Template::of(ev, "tok ")
            .and_then(|t| t.with_counter("seq"))
            .is_none());
    }
}

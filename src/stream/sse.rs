//! Server-sent events framing per the WHATWG event-stream rules, keeping each event's raw bytes.
//!
//! Written by hand because the stream guard needs what the SSE crates throw away: the exact
//! bytes of every event (so events the policy leaves alone are forwarded byte-identical) and
//! control over when an event is released. Lines end with LF, CRLF or CR; `data:` with or without
//! the space; multi-line `data`; a BOM at the very start is skipped; an event ends at a blank line.

use bytes::{Bytes, BytesMut};

/// One event as it came: its raw bytes (including the blank line that ended it) and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    pub raw: Bytes,
    /// The `data` lines joined with `\n`; `None` when the block had no `data` field
    /// (comments, keep-alives, `retry:` alone).
    pub data: Option<String>,
    /// The `event:` field, if any.
    pub event: Option<String>,
}

/// Cuts a byte stream into events. Feed chunks as they come; partial events wait for more.
#[derive(Debug, Default)]
pub struct SseFramer {
    buf: BytesMut,
    /// Where scanning resumes in `buf` (everything before is part of the current event).
    scan: usize,
    started: bool,
    /// The current event has seen at least one line.
    lines_in_event: bool,
}

/// The event-stream could not be read as text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the event stream is not valid UTF-8")]
pub struct SseError;

impl SseFramer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes received but not yet part of a complete event.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Add a chunk; returns the events it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<RawEvent>, SseError> {
        self.buf.extend_from_slice(chunk);
        if !self.started {
            if self.buf.len() < 3 && b"\xEF\xBB\xBF".starts_with(&self.buf) {
                return Ok(Vec::new());
            }
            self.started = true;
            if self.buf.starts_with(b"\xEF\xBB\xBF") {
                let _ = self.buf.split_to(3);
            }
        }
        let mut out = Vec::new();
        while let Some((line_len, next)) = find_line_end(&self.buf[self.scan..], false) {
            self.scan += next;
            if line_len == 0 {
                // A blank line: the event (if any lines came before) is complete.
                if self.lines_in_event {
                    let raw = self.buf.split_to(self.scan).freeze();
                    self.scan = 0;
                    self.lines_in_event = false;
                    out.push(parse_event(raw)?);
                } else {
                    // Stray blank line between events: forward it as its own (empty) block.
                    let raw = self.buf.split_to(self.scan).freeze();
                    self.scan = 0;
                    out.push(RawEvent {
                        raw,
                        data: None,
                        event: None,
                    });
                }
            } else {
                self.lines_in_event = true;
            }
        }
        Ok(out)
    }

    /// End of stream: an unterminated last event is completed as if a blank line had followed.
    pub fn finish(&mut self) -> Result<Option<RawEvent>, SseError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let raw = self.buf.split().freeze();
        self.scan = 0;
        self.lines_in_event = false;
        let ev = parse_event(raw)?;
        Ok(Some(ev))
    }
}

/// Find the first line terminator: (length of the line, bytes to skip past the terminator).
/// A CR at the very end of the buffer is not taken as a terminator yet, since an LF may follow.
fn find_line_end(b: &[u8], at_eof: bool) -> Option<(usize, usize)> {
    // memchr looks at a vector's width of bytes a step: an event's JSON line is read twice
    // (framing, then fields), and a byte-by-byte search was most of the framer's cost.
    let pos = memchr::memchr2(b'\n', b'\r', b)?;
    if b[pos] == b'\n' {
        return Some((pos, pos + 1));
    }
    match b.get(pos + 1) {
        Some(b'\n') => Some((pos, pos + 2)),
        Some(_) => Some((pos, pos + 1)),
        None if at_eof => Some((pos, pos + 1)),
        None => None,
    }
}

fn parse_event(raw: Bytes) -> Result<RawEvent, SseError> {
    let text = crate::utf8::str_of(&raw).map_err(|_| SseError)?;
    let mut data: Option<String> = None;
    let mut event = None;
    let mut rest = text;
    while !rest.is_empty() {
        let (line, skip) = match find_line_end(rest.as_bytes(), true) {
            Some((len, skip)) => (&rest[..len], skip),
            None => (rest, rest.len()),
        };
        rest = &rest[skip..];
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            "event" => event = Some(value.to_string()),
            _ => {}
        }
    }
    Ok(RawEvent { raw, data, event })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> Vec<RawEvent> {
        let mut f = SseFramer::new();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(f.push(c).unwrap());
        }
        out.extend(f.finish().unwrap());
        out
    }

    #[test]
    fn line_endings_lf_crlf_cr() {
        for sep in ["\n", "\r\n", "\r"] {
            let s = format!("data: a{sep}data:b{sep}{sep}event: x{sep}data: c{sep}{sep}");
            let evs = all(&[s.as_bytes()]);
            assert_eq!(evs.len(), 2, "{sep:?}");
            assert_eq!(evs[0].data.as_deref(), Some("a\nb"));
            assert_eq!(evs[1].data.as_deref(), Some("c"));
            assert_eq!(evs[1].event.as_deref(), Some("x"));
            let raw: Vec<u8> = evs.iter().flat_map(|e| e.raw.to_vec()).collect();
            assert_eq!(raw, s.as_bytes());
        }
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_end() {
        let evs = all(&[b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"]);
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].data.as_deref(), Some("a"));
        assert_eq!(evs[1].data.as_deref(), Some("b"));
    }

    #[test]
    fn bom_comments_and_split_utf8() {
        let text = "\u{FEFF}: keep-alive\n\ndata: 你好\n\n";
        let bytes = text.as_bytes();
        // Split inside the BOM and inside a multi-byte character.
        let evs = all(&[&bytes[..1], &bytes[1..20], &bytes[20..]]);
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].data, None);
        assert_eq!(evs[1].data.as_deref(), Some("你好"));
    }

    #[test]
    fn unterminated_last_event_is_completed_at_end() {
        let evs = all(&[b"data: [DONE]"]);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].data.as_deref(), Some("[DONE]"));
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut f = SseFramer::new();
        assert!(f.push(b"data: \xff\n\n").is_err());
    }

    #[test]
    fn every_split_gives_the_same_events() {
        let s = b"data: {\"a\":\"\xe4\xbd\xa0\"}\r\n\r\n: c\n\nevent: e\ndata: x\n\n";
        let whole = all(&[s]);
        for i in 0..s.len() {
            for j in i..s.len() {
                let parts = all(&[&s[..i], &s[i..j], &s[j..]]);
                assert_eq!(parts, whole, "split at {i},{j}");
            }
        }
    }
}

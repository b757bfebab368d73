//! JSON strings read and written by hand, many bytes at a time: where the next byte that a
//! JSON string cannot hold as it is (`"`, `\` or a control character) lies, and text escaped
//! exactly as `serde_json` escapes it.
//!
//! Written by hand because the hot paths that use it cannot afford serde_json's pace:
//! serde_json looks each byte up in a table, where these functions pass over clean runs 32
//! bytes at a time (the strict body reader's strings; an audit line on every request and a
//! label written into an answer, `bench/README.md` item 38). The tests hold the escaping equal
//! to serde_json's byte for byte.

/// The position of the first `"`, `\` or control character (below U+0020) in `b` from `pos`,
/// or `b.len()`. Such a byte is ASCII, so the position is a character boundary of any UTF-8
/// text `b` holds.
pub fn special(b: &[u8], mut pos: usize) -> usize {
    // Thirty-two bytes at a time, tested without a branch per byte so that the compiler reads
    // them with vector compares (SSE2 on x86_64: two loads, six compares and a mask a step).
    while let Some(chunk) = b.get(pos..pos + 32) {
        let hit = chunk.iter().fold(false, |hit, &c| {
            hit | (c == b'"') | (c == b'\\') | (c < 0x20)
        });
        if hit {
            break;
        }
        pos += 32;
    }
    // Then eight at a time, which also finds the byte in a chunk that had one.
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(pos..pos + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        // A byte below 0x20, or equal to `"` or `\`: the classic has-zero-byte test on
        // `x - 0x20..`, `x ^ '"'..` and `x ^ '\'..`; bytes at or above 0x80 are UTF-8 and
        // never special, so they are masked out.
        let quote = x ^ (LO * u64::from(b'"'));
        let slash = x ^ (LO * u64::from(b'\\'));
        let hit = (quote.wrapping_sub(LO) & !quote & HI)
            | (slash.wrapping_sub(LO) & !slash & HI)
            | (x.wrapping_sub(LO * 0x20) & !x & HI);
        if hit != 0 {
            // The lowest flagged byte is exact (borrows only run upward).
            return pos + (hit.trailing_zeros() / 8) as usize;
        }
        pos += 8;
    }
    while let Some(&c) = b.get(pos) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return pos;
        }
        pos += 1;
    }
    pos
}

/// Where escaped text goes: a `String` or the bytes of a body being built.
pub trait JsonOut {
    fn put(&mut self, s: &str);
}

impl JsonOut for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
}

impl JsonOut for Vec<u8> {
    fn put(&mut self, s: &str) {
        self.extend_from_slice(s.as_bytes());
    }
}

/// `s` as the inside of a JSON string (no quotes), as serde_json writes it: `\"`, `\\`, `\b`,
/// `\f`, `\n`, `\r`, `\t`, other control characters as `\u00xx`, everything else as it is.
pub fn push_escaped(out: &mut impl JsonOut, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = s.as_bytes();
    let mut from = 0;
    loop {
        let at = special(b, from);
        out.put(&s[from..at]);
        let Some(&c) = b.get(at) else {
            return;
        };
        match c {
            b'"' => out.put("\\\""),
            b'\\' => out.put("\\\\"),
            b'\n' => out.put("\\n"),
            b'\r' => out.put("\\r"),
            b'\t' => out.put("\\t"),
            0x08 => out.put("\\b"),
            0x0c => out.put("\\f"),
            _ => {
                let code = [
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(c >> 4)],
                    HEX[usize::from(c & 15)],
                ];
                out.put(std::str::from_utf8(&code).expect("ASCII"));
            }
        }
        from = at + 1;
    }
}

/// `s` as a JSON string, quotes included.
pub fn push_quoted(out: &mut impl JsonOut, s: &str) {
    out.put("\"");
    push_escaped(out, s);
    out.put("\"");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn quoted(s: &str) -> String {
        let mut out = String::new();
        push_quoted(&mut out, s);
        out
    }

    #[test]
    fn escapes_as_serde_json_does() {
        for s in [
            "",
            "plain",
            "\"quoted\" and \\slashed\\",
            "\n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f} 控制",
            "你好，世界 😀 / <tag> \u{2028}",
            "exactly8",
            "seven\"7",
        ] {
            assert_eq!(quoted(s), serde_json::to_string(s).unwrap(), "{s:?}");
        }
        let mut bytes = Vec::new();
        push_escaped(&mut bytes, "a\"b");
        assert_eq!(bytes, b"a\\\"b");
    }

    #[test]
    fn special_finds_the_first_byte_to_escape() {
        let text = "0123456789\u{1}abc\"";
        assert_eq!(special(text.as_bytes(), 0), 10);
        assert_eq!(special(text.as_bytes(), 11), 14);
        assert_eq!(special(b"no such byte here, none", 0), 23);
    }

    proptest! {
        #[test]
        fn any_text_escapes_as_serde_json_does(s in "\\PC*|[\\x00-\\x7f]{0,40}|[\"\\\\\\x00-\\x1f a-z中]{0,40}") {
            prop_assert_eq!(quoted(&s), serde_json::to_string(&s).unwrap());
        }
    }
}

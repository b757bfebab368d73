//! Pattern detectors (custom regexes and built-in PII) over the original text, one-shot and
//! streamed with the same result.
//!
//! Semantics: from the cursor, take the leftmost position `p` where the regex matches; the match
//! at `p` is the regex's leftmost-first match in the window `text[..p + max_len + 4]` and counts
//! only if it starts at `p`, is non-empty and (for PII) passes the validator. A counted match
//! longer than `max_len` (possible only for custom patterns) is cut to `max_len` bytes. A counted
//! match moves the cursor to its end; otherwise the cursor moves one character past `p`.
//! Streamed and one-shot results agree for every pattern that does not test the text after its
//! match (`$`, `\b`, `\B` at the end) while also running longer than `max_len`.
//!
//! Hold-back while a stream is open: positions before `n - (max_len + 8)` are decided, where `n`
//! is what has arrived. For PII detectors, whose matches use only a small ASCII alphabet, every
//! position up to the last byte outside that alphabet is decided too (a match cannot cross it),
//! so Chinese or prose text is released at once and the held tail is at most `max_len + 8`
//! bytes: 26 for `cn_id_card`/`cn_mobile`, 32 `bank_card`, 23 `ipv4`, 47 `ipv6`, 337 `email`
//! (only while the tail is all e-mail characters), and `max_match_len + 8` (default 264) for
//! custom patterns.

use std::sync::Arc;

use regex::Regex;

use super::pii::PiiKind;

#[derive(Debug, Clone)]
pub(crate) enum DetKind {
    Pii(PiiKind),
    Pattern(Arc<str>),
}

/// One compiled detector bound to a category.
#[derive(Debug, Clone)]
pub(crate) struct PatternDetector {
    pub cat: u16,
    pub kind: DetKind,
    regex: Regex,
    max_len: usize,
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn char_len_at(s: &str, i: usize) -> usize {
    s[i..].chars().next().map_or(1, char::len_utf8)
}

impl PatternDetector {
    pub fn new(cat: u16, kind: DetKind, regex: Regex, max_len: usize) -> PatternDetector {
        PatternDetector {
            cat,
            kind,
            regex,
            max_len: max_len.max(1),
        }
    }

    pub fn pii(cat: u16, kind: PiiKind) -> Result<PatternDetector, regex::Error> {
        Ok(PatternDetector::new(
            cat,
            DetKind::Pii(kind),
            Regex::new(kind.regex())?,
            kind.max_len(),
        ))
    }

    /// How findings of this detector are labelled.
    pub fn finding_detector(&self) -> super::Detector {
        match &self.kind {
            DetKind::Pii(k) => super::Detector::Pii { kind: *k },
            DetKind::Pattern(name) => super::Detector::Pattern {
                name: Arc::clone(name),
            },
        }
    }

    pub fn pattern_source(&self) -> &str {
        self.regex.as_str()
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Report decidable matches of `text` (original text starting at absolute offset `base`)
    /// from the absolute `*cursor` on, as absolute spans. With `is_final` the text is complete.
    pub fn step(
        &self,
        text: &str,
        base: usize,
        cursor: &mut usize,
        is_final: bool,
        out: &mut Vec<(usize, usize)>,
    ) {
        let n = text.len();
        let look = self.max_len + 4;
        loop {
            let q = *cursor - base;
            if q >= n {
                return;
            }
            let decided = if is_final {
                n
            } else {
                let by_len = n.saturating_sub(look + 4);
                let by_alpha = match self.kind {
                    DetKind::Pii(k) => text.as_bytes()[q..]
                        .iter()
                        .rposition(|&b| !k.in_alphabet(b))
                        .map_or(0, |x| q + x + 1),
                    DetKind::Pattern(_) => 0,
                };
                by_len.max(by_alpha)
            };
            if decided <= q {
                return;
            }
            let p = match self.regex.find_at(text, q) {
                Some(m) if m.start() < decided => m.start(),
                _ => {
                    *cursor = base + floor_boundary(text, decided).max(q);
                    return;
                }
            };
            let hay_end = floor_boundary(text, p + look);
            let ok = self
                .regex
                .find_at(&text[..hay_end], p)
                .filter(|m| m.start() == p && m.end() > p)
                .filter(|m| match self.kind {
                    DetKind::Pii(k) => k.validate(&text[..p], m.as_str(), &text[m.end()..]),
                    DetKind::Pattern(_) => true,
                });
            match ok {
                Some(m) => {
                    // Longer than max_len (custom patterns only): reported cut at max_len.
                    let end = if m.end() > p + self.max_len {
                        floor_boundary(text, p + self.max_len).max(p + char_len_at(text, p))
                    } else {
                        m.end()
                    };
                    out.push((base + p, base + end));
                    *cursor = base + end;
                }
                None => *cursor = base + p + char_len_at(text, p),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_whole(d: &PatternDetector, text: &str) -> Vec<(usize, usize)> {
        let mut cur = 0;
        let mut out = Vec::new();
        d.step(text, 0, &mut cur, true, &mut out);
        out
    }

    #[test]
    fn open_text_holds_only_alphabet_tail() {
        let d = PatternDetector::pii(0, PiiKind::CnMobile).expect("compiles");
        let mut cur = 0;
        let mut out = Vec::new();
        d.step("电话是138 0013", 0, &mut cur, false, &mut out);
        assert!(out.is_empty());
        assert_eq!(cur, "电话是".len());
        let mut cur = 0;
        d.step("你好，世界", 0, &mut cur, false, &mut out);
        assert_eq!(cur, "你好，世界".len());
    }

    #[test]
    fn custom_pattern_is_capped() {
        let re = Regex::new(r"(?i)secret-\d+").expect("compiles");
        let d = PatternDetector::new(0, DetKind::Pattern("x#0".into()), re, 12);
        assert_eq!(run_whole(&d, "a SECRET-42 b"), [(2, 11)]);
        // Longer than 12 bytes: reported, cut at 12 bytes.
        assert_eq!(run_whole(&d, "secret-1234567890123"), [(0, 12)]);
    }
}

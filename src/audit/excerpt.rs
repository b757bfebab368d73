//! Bounded, PII-masked excerpts around a match: what an audit record keeps instead of the text.

use std::ops::Range;

/// The most characters of the match itself an excerpt keeps; a longer match is cut and marked `…`.
pub const MAX_MATCH_CHARS: usize = 64;
/// Extra characters the mask function sees beyond each edge of the window, so that PII cut by the
/// window edge (half a phone number) is still recognised whole and masked before the cut.
pub const MASK_MARGIN_CHARS: usize = 32;
/// Marks where the excerpt cuts the text.
pub const CUT: char = '…';

/// The most characters [`excerpt`] returns for `chars_each_side`: both sides, the capped match and
/// up to three cut marks.
pub const fn max_excerpt_chars(chars_each_side: usize) -> usize {
    chars_each_side
        .saturating_mul(2)
        .saturating_add(MAX_MATCH_CHARS + 3)
}

/// A window of `text` around the byte range `span`: up to `chars_each_side` characters before and
/// after, the match capped at [`MAX_MATCH_CHARS`], with `mask` (the policy's PII redactor) applied
/// and `…` where the window cuts the text.
///
/// Never panics: `span` is clamped to the text and widened to character boundaries; a reversed
/// span is an empty match at its start. The result is at most [`max_excerpt_chars`] characters
/// whatever `mask` returns (each part is cut to its budget after masking). The before-part, the
/// match and the after-part are masked separately, each with [`MASK_MARGIN_CHARS`] of context beyond
/// its cut; PII that straddles the edge of the match itself is masked only as far as `mask`
/// recognises the two halves.
pub fn excerpt(
    text: &str,
    span: Range<usize>,
    chars_each_side: usize,
    mask: impl Fn(&str) -> String,
) -> String {
    let start = floor_boundary(text, span.start.min(text.len()));
    let end = ceil_boundary(text, span.end.min(text.len())).max(start);

    let before = &text[..start];
    let matched = &text[start..end];
    let after = &text[end..];

    let margin = chars_each_side.saturating_add(MASK_MARGIN_CHARS);
    let before_wide = last_chars(before, margin);
    let matched_wide = first_chars(matched, MAX_MATCH_CHARS + MASK_MARGIN_CHARS);
    let after_wide = first_chars(after, margin);

    let before_masked = mask(before_wide);
    let matched_masked = mask(matched_wide);
    let after_masked = mask(after_wide);

    let mut out = String::new();
    let before_kept = last_chars(&before_masked, chars_each_side);
    if before_kept.len() < before_masked.len() || before_wide.len() < before.len() {
        out.push(CUT);
    }
    out.push_str(before_kept);
    let matched_kept = first_chars(&matched_masked, MAX_MATCH_CHARS);
    out.push_str(matched_kept);
    if matched_kept.len() < matched_masked.len() || matched_wide.len() < matched.len() {
        out.push(CUT);
    }
    let after_kept = first_chars(&after_masked, chars_each_side);
    out.push_str(after_kept);
    if after_kept.len() < after_masked.len() || after_wide.len() < after.len() {
        out.push(CUT);
    }
    out
}

/// The largest char boundary at or below `i` (`i` ≤ `s.len()`).
fn floor_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The smallest char boundary at or above `i` (`i` ≤ `s.len()`).
fn ceil_boundary(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// The first `n` characters of `s`.
fn first_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The last `n` characters of `s`.
fn last_chars(s: &str, n: usize) -> &str {
    if n == 0 {
        return &s[s.len()..];
    }
    match s.char_indices().rev().nth(n - 1) {
        Some((i, _)) => &s[i..],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn same(s: &str) -> String {
        s.to_string()
    }

    #[test]
    fn keeps_a_window_around_the_match() {
        let text = "aaaaaaaaaa bad word bbbbbbbbbb";
        let start = text.find("bad").unwrap();
        let e = excerpt(text, start..start + 8, 3, same);
        assert_eq!(e, "…aa bad word bb…");
    }

    #[test]
    fn no_cut_marks_when_the_whole_text_fits() {
        assert_eq!(excerpt("x bad y", 2..5, 40, same), "x bad y");
        assert_eq!(excerpt("", 0..0, 40, same), "");
    }

    #[test]
    fn cuts_on_char_boundaries_in_chinese_text() {
        let text = "前面的内容很长很长敏感词后面的内容也很长很长";
        let start = text.find("敏感词").unwrap();
        let end = start + "敏感词".len();
        let e = excerpt(text, start..end, 2, same);
        assert_eq!(e, "…很长敏感词后面…");
        // Offsets inside a character are widened to its boundaries.
        let e = excerpt(text, start + 1..end - 1, 2, same);
        assert_eq!(e, "…很长敏感词后面…");
    }

    #[test]
    fn long_matches_are_capped() {
        let text = "x".repeat(1000);
        let e = excerpt(&text, 10..900, 5, same);
        assert_eq!(e.chars().count(), 1 + 5 + MAX_MATCH_CHARS + 1 + 5 + 1);
    }

    /// A stand-in for the policy's phone redactor: masks runs of exactly 11 digits.
    fn mask_phones(s: &str) -> String {
        let mut out = String::new();
        let mut digits = String::new();
        let flush = |digits: &mut String, out: &mut String| {
            if digits.chars().count() == 11 {
                out.push_str("[PHONE]");
            } else {
                out.push_str(digits);
            }
            digits.clear();
        };
        for c in s.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
            } else {
                flush(&mut digits, &mut out);
                out.push(c);
            }
        }
        flush(&mut digits, &mut out);
        out
    }

    #[test]
    fn mask_sees_pii_that_the_window_cuts() {
        // The window alone would hold "0138000 now about the ", a run the phone redactor cannot
        // recognise; the margin lets it see the whole number and mask it before the cut.
        let text = "call 13800138000 now about the bad thing";
        let start = text.find("bad").unwrap();
        let e = excerpt(text, start..start + 3, 22, mask_phones);
        assert!(!e.chars().any(|c| c.is_ascii_digit()), "{e}");
        assert!(e.contains("bad"));
        let e = excerpt(text, 5..16, 3, mask_phones);
        assert_eq!(e, "…ll [PHONE] no…");
    }

    #[test]
    fn a_lengthening_mask_cannot_exceed_the_bound() {
        let mask = |s: &str| s.replace('a', "[REDACTED]");
        let text = "a".repeat(300);
        let e = excerpt(&text, 100..110, 10, mask);
        assert!(e.chars().count() <= max_excerpt_chars(10), "{e}");
    }

    #[test]
    fn out_of_range_and_reversed_spans_do_not_panic() {
        assert_eq!(excerpt("hello", 10..20, 2, same), "…lo");
        #[allow(clippy::reversed_empty_ranges)] // a detector bug must not panic the audit path
        let reversed = 3..1;
        assert_eq!(excerpt("hello", reversed, 1, same), "…ll…");
        assert_eq!(excerpt("hello", 0..usize::MAX, 0, same), "hello");
    }

    proptest! {
        #[test]
        fn never_panics_and_stays_bounded(
            text in "(\\PC|[\u{4e00}-\u{4e10}]|\u{1F600}|e\u{301}){0,200}",
            a in 0usize..1000,
            b in 0usize..1000,
            n in 0usize..80,
        ) {
            let e = excerpt(&text, a..b, n, same);
            prop_assert!(e.chars().count() <= max_excerpt_chars(n));
            let e = excerpt(&text, a..b, n, |s: &str| s.repeat(3));
            prop_assert!(e.chars().count() <= max_excerpt_chars(n));
        }

        #[test]
        fn identity_mask_output_is_a_piece_of_the_text(
            text in "[a-z\u{4e00}-\u{4e10}]{0,120}",
            a in 0usize..400,
            len in 0usize..400,
            n in 0usize..50,
        ) {
            let e = excerpt(&text, a..a.saturating_add(len), n, same);
            let pieces: Vec<&str> = e.split(CUT).filter(|p| !p.is_empty()).collect();
            for p in pieces {
                prop_assert!(text.contains(p), "{p:?} not in {text:?}");
            }
        }
    }
}

//! The keyword scan of a whole text (`Policy::scan`): normalization and matching in one pass.
//!
//! A stream (`scanner.rs`) writes its normalized text out with a map back to the original,
//! because both must outlive the piece that produced them. A whole text needs neither: here the
//! normalizer hands each normalized character straight to the automaton (through [`Emit`]),
//! and the only thing kept is a ring of the last characters read (as many as the longest term
//! is long, plus a few) with their original offsets: enough to find where a match starts, and
//! to read again the characters after a decided match, as `KeywordSet::drain` does. The
//! matches are the same as that function's over the whole normalized text; the tests compare
//! the two.
//!
//! It declines, and the scan goes the streaming way fed once, when a term that some allow
//! phrase contains matches (suppression reads the normalized text around the match), when the
//! longest term exceeds [`MAX_RING_TERM`] bytes, and for texts over [`MAX_TEXT`] bytes (so that
//! offsets fit in `u32`).

use super::keywords::{Automaton, KeywordSet, TermMeta, OUT, ROOT};
use super::normalize::{CharTable, Emit, NormState, Normalizer};

/// Longest term (normalized bytes) the ring is sized for.
const MAX_RING_TERM: usize = 1024;
/// Longest text scanned this way; normalized offsets (NFKC expands at most 18 times) fit in
/// `u32`.
const MAX_TEXT: usize = 1 << 26;

/// A keyword match, in original byte offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hit {
    pub start: usize,
    pub end: usize,
    pub meta: TermMeta,
}

/// One normalized character read: the character, its normalized start offset, and the
/// original range it came from.
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    c: u32,
    nstart: u32,
    os: u32,
    oe: u32,
}

/// The leftmost-longest match not yet decided, in normalized offsets; `term` is 1 + index.
#[derive(Debug, Clone, Copy)]
struct Best {
    start: u32,
    end: u32,
    term: u32,
}

#[inline(always)]
fn utf8_len(c: u32) -> u32 {
    match c {
        0..0x80 => 1,
        0x80..0x800 => 2,
        0x800..0x1_0000 => 3,
        _ => 4,
    }
}

struct Walker<'a> {
    a: &'a Automaton,
    kws: &'a KeywordSet,
    /// Automaton state (flagged, see `OUT`) and the last two characters read (`p1` last).
    s: u32,
    p1: u32,
    p2: u32,
    /// Normalized bytes read so far.
    npos: u32,
    /// Entry `k` of the text is at `ring[k & mask]`; `head` entries were read.
    ring: Box<[Entry]>,
    mask: usize,
    head: usize,
    best: Option<Best>,
    hits: Vec<Hit>,
    declined: bool,
}

impl Walker<'_> {
    /// Read one normalized character `c`, `clen` bytes long, from original bytes `os..oe`.
    #[inline(always)]
    fn read(&mut self, c: u32, clen: u32, os: u32, oe: u32) {
        let nstart = self.npos;
        self.npos = nstart + clen;
        self.ring[self.head & self.mask] = Entry { c, nstart, os, oe };
        self.head += 1;
        self.step(c);
        if self.s & OUT != 0 || self.best.is_some() {
            self.decide(self.head);
        }
    }

    #[inline(always)]
    fn step(&mut self, c: u32) {
        self.s = if self.s == ROOT {
            self.a.root_step(c)
        } else {
            self.a.next(self.s, c, self.p1, self.p2)
        };
        (self.p1, self.p2) = (c, self.p1);
    }

    /// After entry `k - 1` was read: note a term ending there, settle the match held once no
    /// earlier position is live, and read again from its end (up to `head`).
    #[inline(never)]
    fn decide(&mut self, mut k: usize) {
        loop {
            if self.s & OUT != 0 || self.best.is_some() {
                let e = self.ring[(k - 1) & self.mask];
                let q = e.nstart + utf8_len(e.c);
                if self.s & OUT != 0 {
                    let (depth, term) = self.a.output(self.s);
                    let start = q - depth as u32;
                    match &mut self.best {
                        Some(b) if b.start < start => {}
                        Some(b) if b.start == start => (b.end, b.term) = (q, term),
                        _ => {
                            self.best = Some(Best {
                                start,
                                end: q,
                                term,
                            })
                        }
                    }
                }
                if let Some(b) = self.best {
                    let live = self.a.depth_live(self.s).1 as u32;
                    if q - live > b.start {
                        k = self.settle(b);
                    }
                }
            }
            if k == self.head {
                return;
            }
            let c = self.ring[k & self.mask].c;
            k += 1;
            self.step(c);
        }
    }

    /// Report `b` and go back to the root at its end; returns the entry to read next.
    fn settle(&mut self, b: Best) -> usize {
        let (meta, allowable) = self.kws.term(b.term);
        // An allow phrase might suppress it: only the streaming way can tell.
        self.declined |= allowable;
        let next = self.index_before(self.head, b.end);
        let first = self.index_before(next, b.start);
        self.hits.push(Hit {
            start: self.ring[first & self.mask].os as usize,
            end: self.ring[(next - 1) & self.mask].oe as usize,
            meta,
        });
        self.best = None;
        self.s = ROOT;
        next
    }

    /// The first entry that starts at or after normalized offset `n`, searching back from
    /// entry `j` (`j` if none before it does).
    fn index_before(&self, mut j: usize, n: u32) -> usize {
        while j > 0 && self.ring[(j - 1) & self.mask].nstart >= n {
            j -= 1;
        }
        debug_assert!(self.head - j <= self.ring.len(), "ring too small");
        j
    }

    /// End of text: settle what is held, reading again after each match.
    fn finish(&mut self) {
        while let Some(b) = self.best {
            let k = self.settle(b);
            if k < self.head {
                let c = self.ring[k & self.mask].c;
                self.step(c);
                self.decide(k + 1);
            }
        }
    }
}

impl Emit for Walker<'_> {
    #[inline(always)]
    fn emit(&mut self, ch: char, os: usize, oe: usize) {
        self.read(ch as u32, ch.len_utf8() as u32, os as u32, oe as u32);
    }

    #[inline(always)]
    fn emit_ascii_run(&mut self, table: &CharTable, run: &str, os: usize) {
        for (o, &b) in (os as u32..).zip(run.as_bytes()) {
            self.read(u32::from(table.run_byte(b)), 1, o, o + 1);
        }
    }

    #[inline(always)]
    fn cjk_run(&mut self, table: &CharTable, piece: &str, i: usize, base: usize) -> usize {
        let bytes = piece.as_bytes();
        let mut j = i;
        while let Some(cp) = table.self_cjk(bytes, j) {
            let o = (base + j) as u32;
            self.read(cp, 3, o, o + 3);
            j += 3;
        }
        j
    }
}

/// The keyword matches in `text`, in order, or `None` when the scan must go the streaming way
/// (see the module documentation). `kws` must have terms.
pub(crate) fn keyword_hits(
    normalizer: &Normalizer,
    kws: &KeywordSet,
    text: &str,
) -> Option<Vec<Hit>> {
    let a = kws.automaton()?;
    if text.len() > MAX_TEXT || a.max_len() > MAX_RING_TERM {
        return None;
    }
    let size = (a.max_len() + 8).next_power_of_two();
    let mut w = Walker {
        a,
        kws,
        s: ROOT,
        p1: 0,
        p2: 0,
        npos: 0,
        ring: vec![Entry::default(); size].into_boxed_slice(),
        mask: size - 1,
        head: 0,
        best: None,
        hits: Vec::new(),
        declined: false,
    };
    let mut st = NormState::default();
    normalizer.feed(&mut st, text, 0, &mut w);
    normalizer.finish(&mut st, &mut w);
    w.finish();
    (!w.declined).then_some(w.hits)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::super::config::{CategoryConfig, NormalizeConfig, PolicyConfig};
    use super::super::normalize::tests::flags_strategy;
    use super::super::scanner::ScanCore;
    use super::super::{Direction, Finding, Policy};

    fn policy(terms: &[String], allow: &[String], normalize: NormalizeConfig) -> Option<Policy> {
        let cfg = PolicyConfig {
            normalize,
            allow: allow.to_vec(),
            categories: vec![CategoryConfig {
                id: "A1a".into(),
                keywords: terms.to_vec(),
                ..CategoryConfig::default()
            }],
            ..PolicyConfig::default()
        };
        // Terms or phrases that normalize to nothing are configuration errors.
        Policy::compile(&cfg, Path::new(".")).ok().map(|c| c.policy)
    }

    /// The streaming machine fed the whole text once: what `scan` did before this module.
    fn streaming_once(p: &Policy, text: &str) -> Vec<Finding> {
        let dir = Direction::Completion;
        let mut core = ScanCore::new(p, dir);
        let mut out = Vec::new();
        core.push(p, dir, text, &mut out);
        core.finish(p, dir, &mut out);
        out.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        out
    }

    /// Term and text material: letters that start and continue terms, CJK with traditional
    /// forms, separators, full-width, zero-width, confusables, a ligature and an emoji.
    const PIECES: &[&str] = &[
        "a", "b", "ab", "ba", "aba", "x", "B", "Ａ", "ο", "ﬁ", "炸", "弹", "彈", "鱼", "翅", " ",
        "  ", ".", "-", "，", "\u{200B}", "😀", "é", "1",
    ];

    fn text(max: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(PIECES), 0..max).prop_map(|v| v.concat())
    }

    #[test]
    fn matches_across_a_decided_match_are_read_again() {
        let terms = ["ab".to_owned(), "bab".to_owned(), "abc".to_owned()];
        let p = policy(&terms, &[], NormalizeConfig::default()).expect("compiles");
        for text in ["abab", "ababc", "a b a b", "xabcabab", "ＡＢab"] {
            let one = p.scan(text, Direction::Completion);
            assert_eq!(one, streaming_once(&p, text), "{text}");
            assert!(!one.is_empty(), "{text}");
        }
    }

    #[test]
    fn declines_only_for_terms_inside_allow_phrases() {
        let terms = ["炸弹".to_owned(), "鱼翅".to_owned()];
        let p =
            policy(&terms, &["炸弹鱼".to_owned()], NormalizeConfig::default()).expect("compiles");
        let kws = p.keywords_for(Direction::Completion);
        let hits = super::keyword_hits(&p.normalizer, kws, "有鱼翅").expect("fused");
        assert_eq!((hits[0].start, hits[0].end), (3, 9));
        assert!(super::keyword_hits(&p.normalizer, kws, "炸弹").is_none());
        assert!(p.scan("炸弹鱼", Direction::Completion).is_empty());
        assert_eq!(p.scan("炸弹", Direction::Completion).len(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(600))]

        /// The one-pass scan finds exactly what the streaming machine finds over the whole
        /// text, under every normalization flag set, with and without allow phrases.
        #[test]
        fn one_pass_equals_streaming_machine(
            terms in prop::collection::vec(text(4), 1..8),
            allow in prop::collection::vec(text(5), 0..2),
            normalize in flags_strategy(),
            text in text(40),
        ) {
            let Some(p) = policy(&terms, &allow, normalize) else {
                return Ok(());
            };
            prop_assert_eq!(p.scan(&text, Direction::Completion), streaming_once(&p, &text));
            let kws = p.keywords_for(Direction::Completion);
            if allow.is_empty() && !kws.is_empty() {
                // Without allow phrases the one-pass scan never declines.
                prop_assert!(super::keyword_hits(&p.normalizer, kws, &text).is_some());
            }
        }
    }
}

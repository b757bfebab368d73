//! The keyword scan of a whole text (`Policy::scan`): normalization and matching in one pass.
//!
//! A stream (`scanner.rs`) writes its normalized text out with a map back to the original,
//! because both must outlive the piece that produced them. A whole text needs neither: here the
//! normalizer hands each normalized character straight to the automaton (through [`Emit`]),
//! and the only thing kept is a ring of the last stretches read ([`Seg`]: a run of text that
//! maps byte for byte, or one character) back to where the longest term could begin: enough
//! to find where a match starts and ends in the original, and to read again the characters
//! after a decided match, as `KeywordSet::drain` does. A run of English or Chinese is one
//! entry, so the automaton's step is nearly all a character costs. In a run of English words,
//! a word read from the root that is too short for any term of letters and digits, and closed
//! by a space no term has, is passed over without a step (`Automaton::short_word`). The
//! matches are the same as `drain`'s over the whole normalized text; the tests compare the two.
//!
//! It declines, and the scan goes the streaming way fed once, when a term that some allow
//! phrase contains matches (suppression reads the normalized text around the match), when the
//! longest term exceeds [`MAX_RING_TERM`] bytes, and for texts over [`MAX_TEXT`] bytes (so that
//! offsets fit in `u32`).

use super::keywords::{Automaton, KeywordSet, TermMeta, OUT, ROOT};
use super::normalize::{CharTable, Emit, NormState, Normalizer};

/// Longest term (normalized bytes) the stretch ring is sized for.
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

/// Marks a [`Seg`] that is a run (see there).
const RUN: u32 = u32::MAX;

/// A stretch of the normalized text read, from normalized offset `nstart` to the next
/// stretch's: either a *run*, whose normalized bytes are the original bytes from `os` mapped
/// one for one through [`CharTable::run_byte`] (ASCII words, self-mapping CJK: all common
/// text), or one character `c` from original bytes `os..oe`. Runs cost one entry however long.
#[derive(Debug, Clone, Copy, Default)]
struct Seg {
    nstart: u32,
    os: u32,
    /// `RUN`, or the character.
    c: u32,
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
    table: &'a CharTable,
    orig: &'a str,
    /// Automaton state (flagged, see `OUT`) and the last two characters read (`p1` last).
    s: u32,
    p1: u32,
    p2: u32,
    /// Normalized bytes read so far.
    npos: u32,
    /// Stretch `k` of the text is at `segs[k & mask]`; `head` were started.
    segs: Box<[Seg]>,
    mask: usize,
    head: usize,
    best: Option<Best>,
    hits: Vec<Hit>,
    declined: bool,
}

impl Walker<'_> {
    /// Start a stretch at the current normalized offset.
    #[inline(always)]
    fn push(&mut self, os: u32, c: u32, oe: u32) {
        self.segs[self.head & self.mask] = Seg {
            nstart: self.npos,
            os,
            c,
            oe,
        };
        self.head += 1;
    }

    #[inline(always)]
    fn step(&mut self, c: u32) {
        self.s = self.a.advance(self.s, c, self.p1, self.p2);
        (self.p1, self.p2) = (c, self.p1);
    }

    /// The stretch holding normalized offset `n` (which must have been read).
    fn seg_at(&self, n: u32) -> Seg {
        let mut k = self.head - 1;
        loop {
            let g = self.segs[k & self.mask];
            if g.nstart <= n || k == 0 {
                debug_assert!(self.head - k <= self.segs.len(), "stretch ring too small");
                return g;
            }
            k -= 1;
        }
    }

    /// The character read at normalized offset `n`, and its length.
    fn char_at(&self, n: u32) -> (u32, u32) {
        let g = self.seg_at(n);
        if g.c != RUN {
            return (g.c, utf8_len(g.c));
        }
        let o = (g.os + (n - g.nstart)) as usize;
        // A run's characters map byte for byte: ASCII through the table, others to themselves.
        let ch = self
            .orig
            .get(o..)
            .and_then(|t| t.chars().next())
            .unwrap_or_default();
        if ch.is_ascii() {
            return (u32::from(self.table.run_byte(ch as u8)), 1);
        }
        (ch as u32, ch.len_utf8() as u32)
    }

    /// Original start of the character at normalized offset `n`.
    fn orig_start(&self, n: u32) -> usize {
        let g = self.seg_at(n);
        (if g.c == RUN {
            g.os + (n - g.nstart)
        } else {
            g.os
        }) as usize
    }

    /// Original end of the character that ends at normalized offset `n`.
    fn orig_end(&self, n: u32) -> usize {
        let g = self.seg_at(n - 1);
        (if g.c == RUN {
            g.os + (n - g.nstart)
        } else {
            g.oe
        }) as usize
    }

    /// After the character ending at normalized offset `pos` was stepped: note a term ending
    /// there, settle the match held once no earlier position is live (going back to its end),
    /// and so on, reading on up to `limit`.
    #[inline(never)]
    fn decide(&mut self, mut pos: u32, limit: u32) {
        loop {
            if self.s & OUT != 0 {
                let (depth, term) = self.a.output(self.s);
                let start = pos - depth as u32;
                match &mut self.best {
                    Some(b) if b.start < start => {}
                    Some(b) if b.start == start => (b.end, b.term) = (pos, term),
                    _ => {
                        self.best = Some(Best {
                            start,
                            end: pos,
                            term,
                        })
                    }
                }
            }
            if let Some(b) = self.best {
                let live = self.a.depth_live(self.s).1 as u32;
                if pos - live > b.start {
                    self.settle(b);
                    pos = b.end;
                }
            }
            if pos == limit {
                return;
            }
            let (c, n) = self.char_at(pos);
            self.step(c);
            pos += n;
        }
    }

    /// Report `b` and go back to the root at its end.
    fn settle(&mut self, b: Best) {
        let (meta, allowable) = self.kws.term(b.term);
        // An allow phrase might suppress it: only the streaming way can tell.
        self.declined |= allowable;
        self.hits.push(Hit {
            start: self.orig_start(b.start),
            end: self.orig_end(b.end),
            meta,
        });
        self.best = None;
        self.s = ROOT;
    }

    /// End of text: settle what is held, reading again after each match.
    fn finish(&mut self) {
        while let Some(b) = self.best {
            self.settle(b);
            if b.end < self.npos {
                let (c, n) = self.char_at(b.end);
                self.step(c);
                self.decide(b.end + n, self.npos);
            }
        }
    }

    /// Read a run (see [`Seg`]) from original offset `os` of characters `clen` bytes long,
    /// as `char_of` gives them until `None`. Returns how many were read.
    #[inline(always)]
    fn read_run(&mut self, os: u32, clen: u32, mut char_of: impl FnMut() -> Option<u32>) -> u32 {
        let mut r = self.run_begin(os);
        while let Some(c) = char_of() {
            self.run_read(&mut r, c, clen);
        }
        self.run_end(r) / clen
    }

    /// Start a run (see [`Seg`]) at original offset `os`: the walker's state goes into locals,
    /// written back only around the rare [`Walker::decide`] and at [`Walker::run_end`].
    #[inline(always)]
    fn run_begin(&mut self, os: u32) -> Run {
        self.push(os, RUN, 0);
        Run {
            s: self.s,
            p1: self.p1,
            p2: self.p2,
            start: self.npos,
            npos: self.npos,
            holding: self.best.is_some(),
        }
    }

    /// One character of a run, `clen` bytes long.
    #[inline(always)]
    fn run_read(&mut self, r: &mut Run, c: u32, clen: u32) {
        r.npos += clen;
        r.s = self.a.advance(r.s, c, r.p1, r.p2);
        (r.p1, r.p2) = (c, r.p1);
        if r.s & OUT != 0 || r.holding {
            (self.s, self.p1, self.p2, self.npos) = (r.s, r.p1, r.p2, r.npos);
            self.decide(r.npos, r.npos);
            (r.s, r.p1, r.p2) = (self.s, self.p1, self.p2);
            r.holding = self.best.is_some();
        }
    }

    /// End a run; returns how many bytes it read.
    #[inline(always)]
    fn run_end(&mut self, r: Run) -> u32 {
        (self.s, self.p1, self.p2, self.npos) = (r.s, r.p1, r.p2, r.npos);
        if r.npos == r.start {
            // Nothing read: the stretch is not there.
            self.head -= 1;
        }
        r.npos - r.start
    }
}

/// The walker's state while it reads a run (see [`Walker::run_begin`]).
struct Run {
    s: u32,
    p1: u32,
    p2: u32,
    /// Normalized offsets where the run began and where it is.
    start: u32,
    npos: u32,
    /// A match is held (`Walker::best`): every step must be decided.
    holding: bool,
}

impl Emit for Walker<'_> {
    #[inline(always)]
    fn emit(&mut self, ch: char, os: usize, oe: usize) {
        let c = ch as u32;
        self.push(os as u32, c, oe as u32);
        self.npos += ch.len_utf8() as u32;
        self.step(c);
        if self.s & OUT != 0 || self.best.is_some() {
            self.decide(self.npos, self.npos);
        }
    }

    #[inline(always)]
    fn ascii_run(
        &mut self,
        table: &CharTable,
        piece: &str,
        i: usize,
        base: usize,
        join_from: usize,
    ) -> usize {
        // `read_run`, with the run's end found as it is read (one pass over the bytes), and
        // words too short for any term passed over (`Automaton::short_word`).
        let bytes = piece.as_bytes();
        let short = self.a.short_word();
        let mut r = self.run_begin((base + i) as u32);
        let mut j = i;
        // Word by word: `bytes[j]` is a word byte, the first of the run or after a joining gap.
        loop {
            let we = table.word_end(bytes, j);
            let joined = we >= join_from && table.joins(bytes, we);
            if joined && r.s == ROOT && !r.holding && we - j < short {
                // Read from the root, a word closed by a space that no term has holds a match
                // only if it is as long as some term of letters and digits.
                r.npos += (we + 1 - j) as u32;
                (r.p1, r.p2) = (u32::from(b' '), u32::from(table.word_byte(bytes[we - 1])));
                j = we + 1;
                continue;
            }
            let word = bytes[j..we].iter().map(|&b| table.word_byte(b));
            for c in word.chain(joined.then_some(b' ')) {
                self.run_read(&mut r, u32::from(c), 1);
            }
            if !joined {
                j = we;
                break;
            }
            j = we + 1;
        }
        self.run_end(r);
        j
    }

    #[inline(always)]
    fn cjk_run(&mut self, table: &CharTable, piece: &str, i: usize, base: usize) -> usize {
        let bytes = piece.as_bytes();
        let mut j = i;
        let n = self.read_run((base + i) as u32, 3, || {
            let cp = table.self_cjk(bytes, j)?;
            j += 3;
            Some(cp)
        });
        i + 3 * n as usize
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
        table: normalizer.table(),
        orig: text,
        s: ROOT,
        p1: 0,
        p2: 0,
        npos: 0,
        segs: vec![Seg::default(); size].into_boxed_slice(),
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
        let long = "xab ab abc 炸弹 a.b.a.b Ａbab ".repeat(400);
        for text in ["abab", "ababc", "a b a b", "xabcabab", "ＡＢab", &long] {
            let one = p.scan(text, Direction::Completion);
            assert_eq!(one, streaming_once(&p, text), "{text}");
            assert!(!one.is_empty(), "{text}");
        }
    }

    #[test]
    fn short_words_are_passed_over_and_long_ones_read() {
        // The automaton's shortest-word length for `terms`, and the one-pass matches in `text`
        // (checked against the streaming machine).
        let scan = |terms: &[&str], text: &'static str| {
            let terms: Vec<String> = terms.iter().map(|t| t.to_string()).collect();
            let p = policy(&terms, &[], NormalizeConfig::default()).expect("compiles");
            let kws = p.keywords_for(Direction::Completion);
            let short = kws.automaton().expect("terms").short_word();
            let one = p.scan(text, Direction::Completion);
            assert_eq!(one, streaming_once(&p, text));
            let found: Vec<&str> = one.iter().map(|f| &text[f.span.clone()]).collect();
            (short, found)
        };
        // "x9" is the shortest term of letters and digits.
        let (short, found) = scan(
            &["abcde", "炸弹", "x9"],
            "tok tok ABCDE ab x abcdex zz tok炸弹 q x9 abcde",
        );
        assert_eq!(short, 2);
        assert_eq!(found, ["ABCDE", "abcde", "炸弹", "x9", "abcde"]);
        // A term with a space: no word is passed over.
        let (short, found) = scan(&["ab cd", "abcde"], "xx ab cd ab abcde");
        assert_eq!(short, 0);
        assert_eq!(found, ["ab cd", "abcde"]);
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

    #[test]
    fn declines_for_terms_longer_than_the_ring() {
        let long = "长".repeat(400);
        let p = policy(
            &[long.clone(), "ab".into()],
            &[],
            NormalizeConfig::default(),
        )
        .expect("compiles");
        let kws = p.keywords_for(Direction::Completion);
        assert!(super::keyword_hits(&p.normalizer, kws, "ab").is_none());
        let text = format!("x{long}y ab");
        let found = p.scan(&text, Direction::Completion);
        assert_eq!(found, streaming_once(&p, &text));
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].span, 1..1 + long.len());
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

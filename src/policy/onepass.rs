//! Normalization and keyword matching in one pass: the keyword scan of a whole text
//! (`Policy::scan`) and, for most policies, of a stream's pieces (`scanner.rs`).
//!
//! The streaming machine of `keywords.rs` (`KeywordSet::drain`) reads normalized text written
//! out with a map back to the original, because the checks of a held match that some terms
//! need (an allow phrase that contains it, a whole-word edge) read the normalized text around
//! it. Here the normalizer hands each normalized character straight to the automaton (through
//! [`Emit`]), and the only thing kept is a ring of the last stretches read ([`Seg`]: a run of
//! text that maps byte for byte, or one character) back to where the longest term could begin:
//! enough to find where a match starts and ends in the original, and to read again the
//! characters after a decided match, as `KeywordSet::drain` does. A run of English or Chinese is
//! one entry, so the automaton's step is nearly all a character costs. In a run of English
//! words, a word read from the root that is too short for any term of letters and digits, and
//! closed by a space no term has, is passed over without a step (`Automaton::short_word`). The
//! matches are the same as `drain`'s over the same normalized text; the tests compare the two,
//! whole and cut into pieces.
//!
//! A whole text ([`keyword_hits`]) declines, and the scan goes the streaming machine's way fed
//! once, when a term that needs those checks matches, or when the longest term exceeds
//! [`MAX_RING_TERM`] bytes. A stream ([`OnePass`]) takes this way only when no term of its
//! direction needs them and the ring fits the longest term: it cannot decline half-way. It
//! keeps the original text from the first character it may read again, which is never before
//! what it has released.

use super::keywords::{Automaton, KeywordSet, TermMeta, OUT, ROOT};
use super::normalize::{CharTable, Emit, NormState, Normalizer};

/// Longest term (normalized bytes) the stretch ring is sized for.
const MAX_RING_TERM: usize = 1024;

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
    nstart: usize,
    os: usize,
    oe: usize,
    /// `RUN`, or the character.
    c: u32,
}

/// The leftmost-longest match not yet decided, in normalized offsets; `term` is 1 + index.
#[derive(Debug, Clone, Copy)]
struct Best {
    start: usize,
    end: usize,
    term: u32,
}

#[inline(always)]
fn utf8_len(c: u32) -> usize {
    match c {
        0..0x80 => 1,
        0x80..0x800 => 2,
        0x800..0x1_0000 => 3,
        _ => 4,
    }
}

/// What the walk keeps from one piece of a stream to the next (and, for a whole text, from
/// start to end).
#[derive(Debug, Default)]
pub(crate) struct OnePass {
    /// Automaton state (flagged, see `OUT`) and the last two characters read (`p1` last).
    s: u32,
    p1: u32,
    p2: u32,
    /// Normalized bytes read so far.
    npos: usize,
    /// Stretch `k` of the text is at `segs[k & mask]`; `head` were started.
    segs: Box<[Seg]>,
    mask: usize,
    head: usize,
    best: Option<Best>,
    /// Matches reported and not yet taken.
    hits: Vec<Hit>,
}

impl OnePass {
    fn start(a: &Automaton) -> OnePass {
        let size = (a.max_len() + 8).next_power_of_two();
        OnePass {
            s: ROOT,
            segs: vec![Seg::default(); size].into_boxed_slice(),
            mask: size - 1,
            ..OnePass::default()
        }
    }

    /// The walk of a stream scanned with `kws`, or `None` when the stream must go the
    /// streaming machine's way (see the module documentation).
    pub(crate) fn for_stream(kws: &KeywordSet) -> Option<OnePass> {
        let a = kws.automaton()?;
        (a.max_len() <= MAX_RING_TERM && !kws.any_needs_context()).then(|| OnePass::start(a))
    }

    /// Read `piece`, whose first byte is at absolute original offset `base` and which ends
    /// `orig` (the original text from absolute offset `orig_base`), normalized with `st`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn feed(
        &mut self,
        normalizer: &Normalizer,
        kws: &KeywordSet,
        st: &mut NormState,
        piece: &str,
        base: usize,
        orig: &str,
        orig_base: usize,
    ) {
        self.walk(normalizer, kws, orig, orig_base, |w| {
            normalizer.feed(st, piece, base, w)
        });
    }

    /// End of the stream: settle what is held.
    pub(crate) fn finish(
        &mut self,
        normalizer: &Normalizer,
        kws: &KeywordSet,
        st: &mut NormState,
        orig: &str,
        orig_base: usize,
    ) {
        self.walk(normalizer, kws, orig, orig_base, |w| {
            normalizer.finish(st, w);
            w.finish();
        });
    }

    /// Run `f` on a walker holding this state (moved in and out: a few words).
    #[inline(always)]
    fn walk(
        &mut self,
        normalizer: &Normalizer,
        kws: &KeywordSet,
        orig: &str,
        orig_base: usize,
        f: impl FnOnce(&mut Walker<'_>),
    ) {
        let Some(a) = kws.automaton() else { return };
        let mut w = Walker {
            a,
            kws,
            table: normalizer.table(),
            orig,
            orig_base,
            w: std::mem::take(self),
            declined: false,
        };
        f(&mut w);
        debug_assert!(!w.declined, "a stream's terms need no context");
        *self = w.w;
    }

    /// Matches reported since they were last taken.
    pub(crate) fn hits(&mut self) -> &mut Vec<Hit> {
        &mut self.hits
    }

    /// Absolute original offset of the first character that may still be part of a match
    /// (`kws` the walk's terms), or `None` when everything read is decided.
    pub(crate) fn hold(&self, kws: &KeywordSet) -> Option<usize> {
        let a = kws.automaton()?;
        let mut n = self.npos - a.depth_live(self.s).1;
        if let Some(b) = self.best {
            n = n.min(b.start);
        }
        (n < self.npos).then(|| self.orig_start(n))
    }

    /// Start a stretch at the current normalized offset.
    #[inline(always)]
    fn push(&mut self, os: usize, c: u32, oe: usize) {
        self.segs[self.head & self.mask] = Seg {
            nstart: self.npos,
            os,
            c,
            oe,
        };
        self.head += 1;
    }

    #[inline(always)]
    fn step(&mut self, a: &Automaton, c: u32) {
        self.s = a.advance(self.s, c, self.p1, self.p2);
        (self.p1, self.p2) = (c, self.p1);
    }

    /// The stretch holding normalized offset `n` (which must have been read).
    fn seg_at(&self, n: usize) -> Seg {
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

    /// Original start of the character at normalized offset `n`.
    fn orig_start(&self, n: usize) -> usize {
        let g = self.seg_at(n);
        if g.c == RUN {
            g.os + (n - g.nstart)
        } else {
            g.os
        }
    }

    /// Original end of the character that ends at normalized offset `n`.
    fn orig_end(&self, n: usize) -> usize {
        let g = self.seg_at(n - 1);
        if g.c == RUN {
            g.os + (n - g.nstart)
        } else {
            g.oe
        }
    }
}

/// The walk over the text of one call: the state and what it reads with.
struct Walker<'a> {
    a: &'a Automaton,
    kws: &'a KeywordSet,
    table: &'a CharTable,
    /// The original text from absolute offset `orig_base`.
    orig: &'a str,
    orig_base: usize,
    w: OnePass,
    declined: bool,
}

impl Walker<'_> {
    /// The character read at normalized offset `n`, and its length.
    fn char_at(&self, n: usize) -> (u32, usize) {
        let g = self.w.seg_at(n);
        if g.c != RUN {
            return (g.c, utf8_len(g.c));
        }
        let o = g.os + (n - g.nstart) - self.orig_base;
        // A run's characters map byte for byte: ASCII through the table, others to themselves.
        let ch = self
            .orig
            .get(o..)
            .and_then(|t| t.chars().next())
            .unwrap_or_default();
        if ch.is_ascii() {
            return (u32::from(self.table.run_byte(ch as u8)), 1);
        }
        (ch as u32, ch.len_utf8())
    }

    /// After the character ending at normalized offset `pos` was stepped: note a term ending
    /// there, settle the match held once no earlier position is live (going back to its end),
    /// and so on, reading on up to `limit`.
    #[inline(never)]
    fn decide(&mut self, mut pos: usize, limit: usize) {
        loop {
            if self.w.s & OUT != 0 {
                let (depth, term) = self.a.output(self.w.s);
                let start = pos - depth;
                match &mut self.w.best {
                    Some(b) if b.start < start => {}
                    Some(b) if b.start == start => (b.end, b.term) = (pos, term),
                    _ => {
                        self.w.best = Some(Best {
                            start,
                            end: pos,
                            term,
                        })
                    }
                }
            }
            if let Some(b) = self.w.best {
                let live = self.a.depth_live(self.w.s).1;
                if pos - live > b.start {
                    self.settle(b);
                    pos = b.end;
                }
            }
            if pos == limit {
                return;
            }
            let (c, n) = self.char_at(pos);
            self.w.step(self.a, c);
            pos += n;
        }
    }

    /// Report `b` and go back to the root at its end.
    fn settle(&mut self, b: Best) {
        let (meta, needs_context) = self.kws.term(b.term);
        // An allow phrase or a whole-word edge might undo it: only the streaming machine can
        // tell.
        self.declined |= needs_context;
        let hit = Hit {
            start: self.w.orig_start(b.start),
            end: self.w.orig_end(b.end),
            meta,
        };
        self.w.hits.push(hit);
        self.w.best = None;
        self.w.s = ROOT;
    }

    /// End of text: settle what is held, reading again after each match.
    fn finish(&mut self) {
        while let Some(b) = self.w.best {
            self.settle(b);
            if b.end < self.w.npos {
                let (c, n) = self.char_at(b.end);
                self.w.step(self.a, c);
                self.decide(b.end + n, self.w.npos);
            }
        }
    }

    /// Read a run (see [`Seg`]) from original offset `os` of characters `clen` bytes long,
    /// as `char_of` gives them until `None`. Returns how many were read.
    #[inline(always)]
    fn read_run(
        &mut self,
        os: usize,
        clen: usize,
        mut char_of: impl FnMut() -> Option<u32>,
    ) -> usize {
        let mut r = self.run_begin(os);
        while let Some(c) = char_of() {
            self.run_read(&mut r, c, clen);
        }
        self.run_end(r) / clen
    }

    /// Start a run (see [`Seg`]) at original offset `os`: the walk's state goes into locals,
    /// written back only around the rare [`Walker::decide`] and at [`Walker::run_end`].
    #[inline(always)]
    fn run_begin(&mut self, os: usize) -> Run {
        self.w.push(os, RUN, 0);
        Run {
            s: self.w.s,
            p1: self.w.p1,
            p2: self.w.p2,
            start: self.w.npos,
            npos: self.w.npos,
            holding: self.w.best.is_some(),
        }
    }

    /// One character of a run, `clen` bytes long.
    #[inline(always)]
    fn run_read(&mut self, r: &mut Run, c: u32, clen: usize) {
        r.npos += clen;
        r.s = self.a.advance(r.s, c, r.p1, r.p2);
        (r.p1, r.p2) = (c, r.p1);
        if r.s & OUT != 0 || r.holding {
            (self.w.s, self.w.p1, self.w.p2, self.w.npos) = (r.s, r.p1, r.p2, r.npos);
            self.decide(r.npos, r.npos);
            (r.s, r.p1, r.p2) = (self.w.s, self.w.p1, self.w.p2);
            r.holding = self.w.best.is_some();
        }
    }

    /// End a run; returns how many bytes it read.
    #[inline(always)]
    fn run_end(&mut self, r: Run) -> usize {
        (self.w.s, self.w.p1, self.w.p2, self.w.npos) = (r.s, r.p1, r.p2, r.npos);
        if r.npos == r.start {
            // Nothing read: the stretch is not there.
            self.w.head -= 1;
        }
        r.npos - r.start
    }
}

/// The walk's state while it reads a run (see [`Walker::run_begin`]).
struct Run {
    s: u32,
    p1: u32,
    p2: u32,
    /// Normalized offsets where the run began and where it is.
    start: usize,
    npos: usize,
    /// A match is held (`OnePass::best`): every step must be decided.
    holding: bool,
}

impl Emit for Walker<'_> {
    #[inline(always)]
    fn emit(&mut self, ch: char, os: usize, oe: usize) {
        let c = ch as u32;
        self.w.push(os, c, oe);
        self.w.npos += ch.len_utf8();
        self.w.step(self.a, c);
        if self.w.s & OUT != 0 || self.w.best.is_some() {
            self.decide(self.w.npos, self.w.npos);
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
        let mut r = self.run_begin(base + i);
        let mut j = i;
        // Word by word: `bytes[j]` is a word byte, the first of the run or after a joining gap.
        loop {
            let we = table.word_end(bytes, j);
            let joined = we >= join_from && table.joins(bytes, we);
            if joined && r.s == ROOT && !r.holding && we - j < short {
                // Read from the root, a word closed by a space that no term has holds a match
                // only if it is as long as some term of letters and digits.
                r.npos += we + 1 - j;
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
        let n = self.read_run(base + i, 3, || {
            let cp = table.self_cjk(bytes, j)?;
            j += 3;
            Some(cp)
        });
        i + 3 * n
    }
}

/// The keyword matches in `text`, in order, or `None` when the scan must go the streaming
/// machine's way (see the module documentation). `kws` must have terms.
pub(crate) fn keyword_hits(
    normalizer: &Normalizer,
    kws: &KeywordSet,
    text: &str,
) -> Option<Vec<Hit>> {
    let a = kws.automaton()?;
    if a.max_len() > MAX_RING_TERM {
        return None;
    }
    let mut w = Walker {
        a,
        kws,
        table: normalizer.table(),
        orig: text,
        orig_base: 0,
        w: OnePass::start(a),
        declined: false,
    };
    let mut st = NormState::default();
    normalizer.feed(&mut st, text, 0, &mut w);
    normalizer.finish(&mut st, &mut w);
    w.finish();
    (!w.declined).then_some(w.w.hits)
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
        streamed(p, text, &[], false).0
    }

    /// A stream of `text` cut at `cuts` (those on char boundaries), through the one-pass walk
    /// where the policy allows it (`walk`) or through `KeywordSet::drain`: its findings in
    /// span order, and what each push released.
    fn streamed(p: &Policy, text: &str, cuts: &[usize], walk: bool) -> (Vec<Finding>, Vec<usize>) {
        let dir = Direction::Completion;
        let mut core = if walk {
            ScanCore::new(p, dir)
        } else {
            ScanCore::new_drain(p, dir)
        };
        let mut bounds: Vec<usize> = cuts
            .iter()
            .map(|&c| c % (text.len() + 1))
            .filter(|&c| text.is_char_boundary(c))
            .chain([text.len()])
            .collect();
        bounds.sort_unstable();
        let (mut out, mut released, mut at) = (Vec::new(), Vec::new(), 0);
        for b in bounds {
            released.push(core.push(p, dir, &text[at..b], &mut out));
            at = b;
        }
        core.finish(p, dir, &mut out);
        out.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        (out, released)
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
        /// text, under every normalization flag set, with and without allow phrases; a stream
        /// through the one-pass walk finds the same and releases as much after every piece,
        /// however the text is cut.
        #[test]
        fn one_pass_equals_streaming_machine(
            terms in prop::collection::vec(text(4), 1..8),
            allow in prop::collection::vec(text(5), 0..2),
            normalize in flags_strategy(),
            text in text(40),
            cuts in prop::collection::vec(0..200usize, 0..12),
        ) {
            let Some(p) = policy(&terms, &allow, normalize) else {
                return Ok(());
            };
            let whole = p.scan(&text, Direction::Completion);
            prop_assert_eq!(&whole, &streaming_once(&p, &text));
            let kws = p.keywords_for(Direction::Completion);
            if allow.is_empty() && !kws.is_empty() {
                // Without allow phrases the one-pass scan never declines, and a stream takes
                // the walk.
                prop_assert!(super::keyword_hits(&p.normalizer, kws, &text).is_some());
                prop_assert!(super::OnePass::for_stream(kws).is_some());
            }
            let walked = streamed(&p, &text, &cuts, true);
            prop_assert_eq!(&walked, &streamed(&p, &text, &cuts, false));
            prop_assert_eq!(walked.0, whole);
        }
    }
}

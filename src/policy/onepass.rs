//! Normalization and keyword matching in one pass: the keyword scan of a whole text
//! (`Policy::scan`) and of a stream's pieces (`scanner.rs`).
//!
//! The streaming machine of `keywords.rs` (`KeywordSet::drain`) reads normalized text written
//! out with a map back to the original. Here the normalizer hands each normalized character
//! straight to the automaton (through [`Emit`]), and the only thing kept is a ring of the last
//! stretches read ([`Seg`]: a run of text that maps byte for byte, or one character) back to
//! where the longest term could begin, less the context its checks read: enough to find where a
//! match starts and ends in the original, to read again the characters after a decided match,
//! as `KeywordSet::drain` does, and to spell again the normalized text around a match that
//! some terms need checked (an allow phrase that contains it, a whole-word edge), which then
//! goes to the same `KeywordSet::settle` as `drain`'s. A run of English or Chinese is one
//! entry, so the automaton's step is nearly all a character costs: a lookup in the automaton's
//! ASCII table for English (`AsciiDfa`), two in its double array for Chinese (`CjkDa`), back
//! to the automaton's own step where a term ends or the text leaves them. In a run of English
//! words, a word read from the root that is too short for any term of letters and digits, and
//! closed by a space no term has, is passed over without a step (`Automaton::short_word`). The
//! matches, and what a stream releases after each piece, are the same as `drain`'s over the
//! same text; the tests compare the two, whole and cut into pieces.
//!
//! The ring is sized for the longest term plus twice that context; where that exceeds
//! [`MAX_RING_SPAN`] normalized bytes, or the ASCII table lacks the normalizer's word classes
//! (`AsciiDfa::fold_words`, done when a policy compiles), the scan and the stream go the
//! streaming machine's way ([`keyword_hits`] and [`OnePass::new`] decline). A stream keeps
//! the original text from the first character it may read again: the context before what it
//! holds.

use super::ascii_dfa::{AsciiDfa, NO_ROW};
use super::cjk_da::{MAPPED, NOT_RUN};
use super::keywords::{self, AllowSet, Automaton, Best, KeywordSet, TermMeta, OUT, ROOT};
use super::normalize::{char_of_three, CharTable, Emit, NormState, Normalizer};
use super::{Direction, Policy};

/// Longest span (normalized bytes: the longest term and twice the context of its checks) the
/// stretch ring is sized for.
const MAX_RING_SPAN: usize = 2048;

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
/// stretch's: either a *run*, whose normalized bytes map one for one onto the original bytes
/// from `os`, ASCII through [`CharTable::run_byte`] and CJK through [`CharTable::run_cjk`]
/// (ASCII words, CJK that maps to itself or to its simplified form: all common text), or one
/// character `c` from original bytes `os..oe`. Runs cost one entry however long.
#[derive(Debug, Clone, Copy, Default)]
struct Seg {
    nstart: usize,
    os: usize,
    oe: usize,
    /// `RUN`, or the character.
    c: u32,
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
#[derive(Debug, Default, Clone)]
pub(crate) struct OnePass {
    /// Automaton state (flagged, see `OUT`) and the last two characters read (`p1` last).
    s: u32,
    p1: u32,
    p2: u32,
    /// Normalized bytes read so far.
    npos: usize,
    /// The row of the automaton's ASCII table (`AsciiDfa`) of state `row_state`, as the
    /// last run of English words ended there: a stream's next piece that goes on from the
    /// same state finds its row without a lookup.
    row_state: u32,
    row: u32,
    /// The node of the automaton's double array (`CjkDa`) of state `node_state`, as the last
    /// CJK run ended there.
    node_state: u32,
    node: u32,
    /// Stretch `k` of the text is at `segs[k & mask]`; `head` were started.
    segs: Box<[Seg]>,
    mask: usize,
    head: usize,
    best: Option<Best>,
    /// Matches reported and not yet taken.
    hits: Vec<Hit>,
    /// Normalized bytes of the context a held match needs checked with
    /// (`KeywordSet::context`).
    context: usize,
    /// The normalized text around a match spelled again for its checks, and what they found:
    /// kept to reuse their allocations.
    win: Vec<u8>,
    checked: Vec<keywords::Hit>,
}

impl OnePass {
    /// The walk of a text scanned with `kws`, whose matches are checked against `allow`, or
    /// `None` when it must go the streaming machine's way (see the module documentation).
    pub(crate) fn new(kws: &KeywordSet, allow: &AllowSet) -> Option<OnePass> {
        let a = kws.automaton()?;
        // The walk reads words through the ASCII table's word classes.
        if a.ascii_dfa().is_some_and(|d| !d.folded()) {
            return None;
        }
        let context = kws.context(allow);
        if a.max_len() + 2 * context > MAX_RING_SPAN {
            return None;
        }
        // Each stretch holds one normalized byte at least, and what is read again lies within
        // the longest term (or the allow context after a match's start), the context before it
        // and a character either side: 8 bytes cover the characters.
        let size = (a.max_len() + 2 * context + 8).next_power_of_two();
        Some(OnePass {
            s: ROOT,
            row_state: ROOT,
            node_state: ROOT,
            row: 0,
            segs: vec![Seg::default(); size].into_boxed_slice(),
            mask: size - 1,
            context,
            ..OnePass::default()
        })
    }

    /// Heap bytes held (what a clone allocates).
    pub(crate) fn memory_bytes(&self) -> usize {
        self.segs.len() * std::mem::size_of::<Seg>()
            + self.hits.len() * std::mem::size_of::<Hit>()
            + self.win.len()
            + self.checked.len() * std::mem::size_of::<keywords::Hit>()
    }

    /// Read `piece`, whose first byte is at absolute original offset `base` and which ends
    /// `orig` (the original text from absolute offset `orig_base`), normalized with `st`.
    pub(crate) fn feed(&mut self, on: &Text<'_>, st: &mut NormState, piece: &str, base: usize) {
        self.walk(on, |w| {
            on.normalizer.feed(st, piece, base, w);
            w.end_piece();
        });
    }

    /// End of the stream: settle what is held.
    pub(crate) fn finish(&mut self, on: &Text<'_>, st: &mut NormState) {
        self.walk(on, |w| {
            on.normalizer.finish(st, w);
            w.finish();
        });
    }

    /// Run `f` on a walker over this state.
    #[inline(always)]
    fn walk(&mut self, on: &Text<'_>, f: impl FnOnce(&mut Walker<'_>)) {
        let Some(a) = on.kws.automaton() else { return };
        let mut w = Walker {
            a,
            kws: on.kws,
            allow: on.allow,
            amax: on.allow.max_len(),
            table: on.normalizer.table(),
            orig: on.orig,
            orig_base: on.orig_base,
            w: self,
        };
        f(&mut w);
    }

    /// Matches reported since they were last taken.
    pub(crate) fn hits(&mut self) -> &mut Vec<Hit> {
        &mut self.hits
    }

    /// Normalized offset of the first character that may still be part of a match (`kws` the
    /// walk's terms); `npos` when everything read is decided. A stream asks once per piece and
    /// hands the answer to [`OnePass::hold`] and [`OnePass::keep_from`].
    #[inline]
    pub(crate) fn held_from(&self, kws: &KeywordSet) -> usize {
        let Some(a) = kws.automaton() else {
            return self.npos;
        };
        let mut n = self.npos - a.live(self.s, self.p1);
        if let Some(b) = self.best {
            n = n.min(b.start);
        }
        n
    }

    /// Absolute original offset of the first character that may still be part of a match, or
    /// `None` when everything read is decided; `held` is [`OnePass::held_from`].
    pub(crate) fn hold(&self, held: usize) -> Option<usize> {
        (held < self.npos).then(|| self.orig_start(held))
    }

    /// Absolute original offset from which the walk may read the original text again: the
    /// context before what it holds (or, with none, `released`, what the stream released);
    /// `held` is [`OnePass::held_from`].
    pub(crate) fn keep_from(&self, held: usize, released: usize) -> usize {
        if self.context == 0 || self.head == 0 {
            return released;
        }
        released.min(self.orig_start(held.saturating_sub(self.context)))
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

    /// Read character `c`: through the automaton's ASCII table when the walk knows its row
    /// there (a stream's pieces: the space before a word, then the word's run, each go on
    /// from the row where the other ended), else the automaton's step.
    #[inline(always)]
    fn step(&mut self, a: &Automaton, c: u32) {
        match a.ascii_dfa() {
            Some(d) if c < 0x80 && self.s == self.row_state => {
                let cell = d.entry(self.row, c as u8);
                self.s = d.state(cell);
                (self.row_state, self.row) = (self.s, cell & !OUT);
            }
            _ => self.s = a.advance(self.s, c, self.p1, self.p2),
        }
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

    /// Report a match of normalized offsets `start..end`, in original offsets.
    fn report(&mut self, start: usize, end: usize, meta: TermMeta) {
        let hit = Hit {
            start: self.orig_start(start),
            end: self.orig_end(end),
            meta,
        };
        self.hits.push(hit);
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

/// What a walk reads with, and the original text it may read again.
pub(crate) struct Text<'a> {
    pub normalizer: &'a Normalizer,
    pub kws: &'a KeywordSet,
    pub allow: &'a AllowSet,
    /// The original text from absolute offset `orig_base`.
    pub orig: &'a str,
    pub orig_base: usize,
}

impl<'a> Text<'a> {
    /// What a stream of `policy` in direction `dir` reads with; `orig` holds its original text
    /// from absolute offset `orig_base`.
    pub fn of(policy: &'a Policy, dir: Direction, orig: &'a str, orig_base: usize) -> Text<'a> {
        Text {
            normalizer: &policy.normalizer,
            kws: policy.keywords_for(dir),
            allow: &policy.allow,
            orig,
            orig_base,
        }
    }
}

/// The walk over the text of one call: the state and what it reads with.
struct Walker<'a> {
    a: &'a Automaton,
    kws: &'a KeywordSet,
    allow: &'a AllowSet,
    /// The allow list's longest phrase.
    amax: usize,
    table: &'a CharTable,
    /// The original text from absolute offset `orig_base`.
    orig: &'a str,
    orig_base: usize,
    w: &'a mut OnePass,
}

impl Walker<'_> {
    /// The character read at normalized offset `n`, and its length.
    fn char_at(&self, n: usize) -> (u32, usize) {
        let g = self.w.seg_at(n);
        if g.c != RUN {
            return (g.c, utf8_len(g.c));
        }
        let o = g.os + (n - g.nstart) - self.orig_base;
        // A run's characters map byte for byte: ASCII through the table, CJK to one CJK
        // character of the same length.
        let ch = self
            .orig
            .get(o..)
            .and_then(|t| t.chars().next())
            .unwrap_or_default();
        if ch.is_ascii() {
            return (u32::from(self.table.run_byte(ch as u8)), 1);
        }
        (self.table.run_cjk_char(ch), ch.len_utf8())
    }

    /// After the character ending at normalized offset `pos` was stepped: note a term ending
    /// there, settle the match held once no earlier position is live (going back to its end),
    /// and so on, reading on up to `limit`.
    #[inline(never)]
    fn decide(&mut self, mut pos: usize, limit: usize) {
        loop {
            if self.w.s & OUT != 0 {
                self.kws
                    .note_output(self.a, self.w.s, pos, &mut self.w.best);
            }
            if let Some(b) = self.w.best {
                let live = self.a.live(self.w.s, self.w.p1);
                if pos - live > b.start && self.kws.context_seen(&b, self.amax, pos) {
                    if let Some(r) = self.settle(b, false) {
                        pos = r;
                    }
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

    /// First normalized offset of the character holding normalized offset `n`.
    fn char_start(&self, n: usize) -> usize {
        let g = self.w.seg_at(n);
        if g.c != RUN {
            return g.nstart;
        }
        // A run maps byte for byte: its characters start where the original's do.
        let mut o = g.os + (n - g.nstart);
        while o > g.os && !self.orig.is_char_boundary(o - self.orig_base) {
            o -= 1;
        }
        g.nstart + (o - g.os)
    }

    /// Decide `b` (`KeywordSet::settle`): report it, or pass it over where an allow phrase
    /// contains it or it fails a whole-word edge. Returns where reading goes on from the root,
    /// or `None` when, with `open`, text still to come may change the decision.
    fn settle(&mut self, b: Best, open: bool) -> Option<usize> {
        let (meta, needs_context) = self.kws.term(b.term);
        let on = if needs_context {
            // The checks read the normalized text around the match, spelled again here.
            let from = self.char_start(b.start.saturating_sub(self.w.context));
            let mut win = std::mem::take(&mut self.w.win);
            let mut checked = std::mem::take(&mut self.w.checked);
            win.clear();
            checked.clear();
            let mut n = from;
            while n < self.w.npos {
                let (c, len) = self.char_at(n);
                let ch = char::from_u32(c).unwrap_or_default();
                win.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                n += len;
            }
            let on = self
                .kws
                .settle(self.allow, &win, from, b, &mut checked, open);
            for h in &checked {
                self.w.report(h.start, h.end, h.meta);
            }
            (self.w.win, self.w.checked) = (win, checked);
            on?
        } else {
            self.w.report(b.start, b.end, meta);
            b.end
        };
        self.w.best = None;
        self.w.s = ROOT;
        Some(on)
    }

    /// After a match settled, read again from `on` (its end, or past its start) to what has
    /// been read.
    fn read_again(&mut self, on: usize) {
        if on < self.w.npos {
            let (c, n) = self.char_at(on);
            self.w.step(self.a, c);
            self.decide(on + n, self.w.npos);
        }
    }

    /// End of a stream's piece: settle the match held where nothing before its start is live
    /// any more, as far as the text so far tells (as `KeywordSet::drain` does at the end of
    /// its text).
    fn end_piece(&mut self) {
        while let Some(b) = self.w.best {
            let live = self.a.live(self.w.s, self.w.p1);
            if self.w.npos - live <= b.start {
                return;
            }
            let Some(on) = self.settle(b, true) else {
                return;
            };
            self.read_again(on);
        }
    }

    /// End of text: settle what is held, reading again after each match.
    fn finish(&mut self) {
        while let Some(b) = self.w.best {
            // With nothing to come, a match is always decided.
            let on = self.settle(b, false).unwrap_or(b.end);
            self.read_again(on);
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
            off: NO_ROW,
        }
    }

    /// One character of a run, `clen` bytes long.
    #[inline(always)]
    fn run_read(&mut self, r: &mut Run, c: u32, clen: usize) {
        r.npos += clen;
        r.s = self.a.advance(r.s, c, r.p1, r.p2);
        (r.p1, r.p2) = (c, r.p1);
        if r.s & OUT != 0 || r.holding {
            self.run_decide(r);
        }
    }

    /// [`Walker::decide`] after a step of a run, with the run's state written back around it.
    #[inline(always)]
    fn run_decide(&mut self, r: &mut Run) {
        (self.w.s, self.w.p1, self.w.p2, self.w.npos) = (r.s, r.p1, r.p2, r.npos);
        self.decide(r.npos, r.npos);
        (r.s, r.p1, r.p2) = (self.w.s, self.w.p1, self.w.p2);
        r.holding = self.w.best.is_some();
    }

    /// One ASCII character `c` of a run of English words: a lookup in the automaton's ASCII
    /// table while the walk is on one of its rows (`r.off`; `r.s` is then out of date) and no
    /// term ends, else [`Walker::run_read`], finding the row again after it.
    #[inline(always)]
    fn ascii_read(&mut self, r: &mut Run, c: u8, dfa: Option<&AsciiDfa>) {
        let Some(d) = dfa else {
            return self.run_read(r, u32::from(c), 1);
        };
        if r.off == NO_ROW && !r.holding && r.p1 >= 0x80 && !self.a.wide_to_ascii() {
            // After text beyond ASCII: the step is the root's.
            r.off = 0;
        }
        if r.off != NO_ROW {
            let cell = d.entry(r.off, c);
            r.npos += 1;
            (r.p1, r.p2) = (u32::from(c), r.p1);
            if cell & OUT == 0 {
                r.off = cell;
                return;
            }
            r.s = d.state(cell);
            self.run_decide(r);
        } else {
            self.run_read(r, u32::from(c), 1);
        }
        r.off = if r.holding {
            NO_ROW
        } else {
            d.row_after(r.s, c)
        };
    }

    /// The word bytes `word` of a run (output bytes by `table`): while the walk is on a row of
    /// the ASCII table and no term ends, a tight loop of table lookups (the last characters and
    /// the offset are brought up to date once, after it); each other step by
    /// [`Walker::ascii_read`].
    #[inline(always)]
    fn ascii_word(&mut self, r: &mut Run, table: &CharTable, word: &[u8], dfa: Option<&AsciiDfa>) {
        let Some(d) = dfa else {
            for &b in word {
                self.run_read(r, u32::from(table.word_byte(b)), 1);
            }
            return;
        };
        let mut k = 0;
        while k < word.len() {
            // Never on a row while a match is held (`Run::off`).
            if r.off != NO_ROW {
                let from = k;
                while let Some(&b) = word.get(k) {
                    // The walk has the table's word classes (`OnePass::new`).
                    let cell = d.cell(r.off, d.word_class(b));
                    if cell & OUT != 0 {
                        break;
                    }
                    r.off = cell;
                    k += 1;
                }
                if k > from {
                    r.npos += k - from;
                    r.p2 = match k - from {
                        1 => r.p1,
                        _ => u32::from(table.word_byte(word[k - 2])),
                    };
                    r.p1 = u32::from(table.word_byte(word[k - 1]));
                }
                if k == word.len() {
                    break;
                }
            }
            self.ascii_read(r, table.word_byte(word[k]), dfa);
            k += 1;
        }
    }

    /// Whether a run is at the root.
    #[inline(always)]
    fn at_root(r: &Run) -> bool {
        if r.off != NO_ROW {
            r.off == 0
        } else {
            r.s == ROOT
        }
    }

    /// End a run; returns how many bytes it read.
    #[inline(always)]
    fn run_end(&mut self, mut r: Run) -> usize {
        if r.off != NO_ROW {
            if let Some(d) = self.a.ascii_dfa() {
                r.s = d.state(r.off);
                (self.w.row_state, self.w.row) = (r.s, r.off);
            }
        }
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
    /// The row of the automaton's ASCII table the run is on (`Walker::ascii_read`), or
    /// `NO_ROW` when `s` is the state. Never a row while `holding`.
    off: u32,
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
        let dfa = self.a.ascii_dfa();
        let mut r = self.run_begin(base + i);
        if let (Some(d), false) = (dfa, r.holding) {
            r.off = if r.s == self.w.row_state {
                self.w.row
            } else {
                d.row_at(r.s, r.p1)
            };
        }
        let mut j = i;
        // Word by word: `bytes[j]` is a word byte, the first of the run or after a joining gap.
        loop {
            let we = table.word_end(bytes, j);
            let joined = we >= join_from && table.joins(bytes, we);
            if joined && Self::at_root(&r) && !r.holding && we - j < short {
                // Read from the root, a word closed by a space that no term has holds a match
                // only if it is as long as some term of letters and digits.
                r.npos += we + 1 - j;
                (r.p1, r.p2) = (u32::from(b' '), u32::from(table.word_byte(bytes[we - 1])));
                j = we + 1;
                continue;
            }
            self.ascii_word(&mut r, table, &bytes[j..we], dfa);
            if !joined {
                j = we;
                break;
            }
            self.ascii_read(&mut r, b' ', dfa);
            j = we + 1;
        }
        self.run_end(r);
        j
    }

    #[inline(always)]
    fn cjk_run(&mut self, table: &CharTable, piece: &str, i: usize, base: usize) -> usize {
        let bytes = piece.as_bytes();
        if let Some((da, runs)) = self.a.cjk_da().and_then(|d| Some((d, d.runs()?))) {
            // `read_run` through the automaton's double array (`CjkDa`): the walk carries a
            // node (`n`; `r.s` is then out of date) and reads the state from it where a term
            // ends or a match is held (the decision needs it). Off the array (a state whose
            // string has other characters), `Walker::run_read` until a step comes back to a
            // node. One load (`runs`) says whether the character goes on the run and gives
            // its code.
            let mut r = self.run_begin(base + i);
            // The node of the state the run begins in: the one the last run left, else a
            // lookup (none for a state whose string has other characters).
            let mut n = if r.s == self.w.node_state {
                self.w.node
            } else {
                da.row_at(r.s, r.p1)
            };
            // Character by character: a run holds three-byte characters only.
            for ch in bytes[i..].chunks_exact(3) {
                let Some(cp) = char_of_three(ch) else {
                    break;
                };
                let (c, k) = match runs[usize::from(cp as u16)] {
                    NOT_RUN => break,
                    MAPPED => match table.run_cjk_of(cp) {
                        Some(m) => (m, da.code(m)),
                        None => break,
                    },
                    k => (cp, u32::from(k)),
                };
                if n == NO_ROW {
                    if r.p1 < 0x80 && !self.a.ascii_to_wide() {
                        // After English: the step is the root's.
                        n = 0;
                    } else {
                        // Off the array: the automaton's own step, then the node of where it
                        // went (at the root or depth one without a lookup).
                        self.run_read(&mut r, c, 3);
                        n = da.node_after(r.s, k);
                        continue;
                    }
                }
                let (t, ends) = da.step(n, k);
                r.npos += 3;
                (r.p1, r.p2) = (c, r.p1);
                n = t;
                if ends || r.holding {
                    // The decision needs the state; it stays the node's unless a match
                    // settled and the walk read on from the root.
                    let st = da.state(t);
                    r.s = st;
                    self.run_decide(&mut r);
                    if r.s != st {
                        n = da.row_of(r.s);
                    }
                }
            }
            if n != NO_ROW {
                r.s = da.state(n);
                (self.w.node_state, self.w.node) = (r.s, n);
            }
            return i + self.run_end(r);
        }
        let mut j = i;
        let n = self.read_run(base + i, 3, || {
            let cp = table.run_cjk(bytes, j)?;
            j += 3;
            Some(cp)
        });
        i + 3 * n
    }
}

/// The keyword matches in `text`, in order, checked against `allow`, or `None` when the scan
/// must go the streaming machine's way (see the module documentation).
pub(crate) fn keyword_hits(
    normalizer: &Normalizer,
    kws: &KeywordSet,
    allow: &AllowSet,
    text: &str,
) -> Option<Vec<Hit>> {
    let mut walk = OnePass::new(kws, allow)?;
    let on = Text {
        normalizer,
        kws,
        allow,
        orig: text,
        orig_base: 0,
    };
    let mut st = NormState::default();
    walk.walk(&on, |w| {
        normalizer.feed(&mut st, text, 0, w);
        normalizer.finish(&mut st, w);
        w.finish();
    });
    Some(walk.hits)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::super::ascii_dfa::CellBudget;
    use super::super::config::{CategoryConfig, NormalizeConfig, PolicyConfig};
    use super::super::normalize::tests::flags_strategy;
    use super::super::scanner::ScanCore;
    use super::super::{Direction, Finding, Policy};

    fn policy(terms: &[String], allow: &[String], normalize: NormalizeConfig) -> Option<Policy> {
        policy_with_words(terms, &[], allow, normalize)
    }

    /// `terms` in one category under the default normalization, the automaton's tables built
    /// under a budget of `cells`.
    fn policy_in_budget(terms: &[String], cells: usize) -> Policy {
        let _budget = CellBudget::set(cells);
        policy(terms, &[], NormalizeConfig::default()).expect("compiles")
    }

    /// `terms` in one category, `words` in a `whole_words` one.
    fn policy_with_words(
        terms: &[String],
        words: &[String],
        allow: &[String],
        normalize: NormalizeConfig,
    ) -> Option<Policy> {
        let cfg = PolicyConfig {
            normalize,
            allow: allow.to_vec(),
            categories: vec![
                CategoryConfig {
                    id: "A1a".into(),
                    keywords: terms.to_vec(),
                    ..CategoryConfig::default()
                },
                CategoryConfig {
                    id: "A1b".into(),
                    whole_words: Some(true),
                    keywords: words.to_vec(),
                    ..CategoryConfig::default()
                },
            ],
            ..PolicyConfig::default()
        };
        // Terms or phrases that normalize to nothing are configuration errors.
        Policy::compile(&cfg, Path::new(".")).ok().map(|c| c.policy)
    }

    /// The streaming machine fed the whole text once: what `scan` did before this module.
    fn streaming_once(p: &Policy, text: &str) -> Vec<Finding> {
        streamed(p, text, &[], false).0
    }

    /// The one-pass scan of `text` finds the spans `found`, as the streaming machine does;
    /// returns its findings.
    fn assert_finds(p: &Policy, text: &str, found: &[&str], what: &str) -> Vec<Finding> {
        let one = p.scan(text, Direction::Completion);
        let spans: Vec<&str> = one.iter().map(|f| &text[f.span.clone()]).collect();
        assert_eq!(spans, found, "{text} {what}");
        assert_eq!(one, streaming_once(p, text), "{text} {what}");
        one
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
    /// forms, separators, full-width, zero-width, confusables, a ligature, an emoji and the
    /// pieces of an e-mail address.
    const PIECES: &[&str] = &[
        "a", "b", "ab", "ba", "aba", "x", "B", "Ａ", "ο", "ﬁ", "炸", "弹", "彈", "鱼", "翅", " ",
        "  ", ".", "-", "，", "\u{200B}", "😀", "é", "1", "@", "q.cn",
    ];

    /// Up to `max` pieces of [`PIECES`].
    pub(crate) fn text(max: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(PIECES), 0..max).prop_map(|v| v.concat())
    }

    /// Traditional characters and CJK punctuation go in CJK runs (`CharTable::run_cjk`, the
    /// separator skip in `Normalizer::feed`): a term is found through both, with the span of
    /// the original characters, whole and in pieces, as the streaming machine finds it.
    #[test]
    fn cjk_runs_map_traditional_forms_and_pass_over_punctuation() {
        let terms = ["炸弹".to_owned(), "制造方法".to_owned()];
        let p = policy(&terms, &[], NormalizeConfig::default()).expect("compiles");
        for (text, found) in [
            ("如何製造炸彈的問題", vec!["炸彈"]),
            ("他說：炸，彈。", vec!["炸，彈"]),
            ("製造。方法與炸、弹", vec!["製造。方法", "炸、弹"]),
            ("炸 彈", vec!["炸 彈"]),
            ("炸a弹", vec![]),
        ] {
            let one = assert_finds(&p, text, &found, "");
            let cuts: Vec<usize> = (0..=text.len())
                .filter(|&c| text.is_char_boundary(c))
                .collect();
            assert_eq!(
                streamed(&p, text, &cuts, true).0,
                one,
                "{text} char by char"
            );
        }
    }

    /// A CJK run through the automaton's double array follows failure links: `炸弹鱼` is
    /// begun and left for `弹药`, which starts inside it; with the array and without it.
    #[test]
    fn cjk_runs_follow_failure_links() {
        let terms = ["炸弹鱼".to_owned(), "弹药".to_owned(), "药品".to_owned()];
        for nodes in [usize::MAX, 1] {
            let p = policy_in_budget(&terms, nodes);
            let a = p
                .keywords_for(Direction::Completion)
                .automaton()
                .expect("automaton");
            // The compile folds the normalizer's run test into the array.
            assert_eq!(
                a.cjk_da().and_then(|d| d.runs()).is_some(),
                nodes == usize::MAX
            );
            for (text, found) in [
                ("买炸弹药品", vec!["弹药"]),
                ("炸弹鱼药品", vec!["炸弹鱼", "药品"]),
                ("炸弹炸弹鱼", vec!["炸弹鱼"]),
            ] {
                assert_finds(&p, text, &found, "");
            }
        }
    }

    /// Where a run begins in a state that spells other text before it (`ωa`, `a炸`), the walk
    /// steps through the automaton and must not take the table's row or the array's node of
    /// the shorter state the same character leads to from the root (`a`, `炸`).
    #[test]
    fn runs_begun_in_the_other_scripts_state_keep_it() {
        // Each library with the automaton's tables and without them; each text's matches as
        // the streaming machine finds them. The second joins no scripts: a run after the other
        // script's text starts from the root of the table or the array.
        /// Terms, whether they join the scripts, (text, matches).
        type Library<'a> = (&'a [&'a str], bool, &'a [(&'a str, &'a [&'a str])]);
        let libraries: [Library<'_>; 2] = [
            (
                &["ωabc", "ab", "a炸弹鱼", "炸弹"],
                true,
                &[
                    ("ωabc", &["ωabc"]),
                    ("a炸弹鱼", &["a炸弹鱼"]),
                    ("ωab ωabc a炸弹 a炸弹鱼", &["ab", "ωabc", "炸弹", "a炸弹鱼"]),
                ],
            ),
            (
                &["abc", "ab", "炸弹鱼", "炸弹"],
                false,
                &[
                    ("ab炸弹鱼abc", &["ab", "炸弹鱼", "abc"]),
                    ("xab炸弹炸abcab", &["ab", "炸弹", "abc", "ab"]),
                ],
            ),
        ];
        for (terms, joined, cases) in libraries {
            let terms: Vec<String> = terms.iter().map(|t| (*t).to_owned()).collect();
            for cells in [usize::MAX, 1] {
                let p = policy_in_budget(&terms, cells);
                let a = p.keywords_for(Direction::Completion).automaton();
                assert!(
                    a.is_some_and(|a| a.ascii_to_wide() == joined && a.wide_to_ascii() == joined)
                );
                for &(text, found) in cases {
                    assert_finds(&p, text, found, &format!("cells {cells}"));
                }
            }
        }
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
    fn long_streams_keep_what_they_read_again() {
        // Allow phrases and whole-word terms read the text around a match; a long stream in
        // token-sized pieces trims the original text it keeps, and must keep that context.
        let cfg = PolicyConfig {
            allow: vec!["炸弹鱼".into(), "xab abc".into()],
            categories: vec![
                CategoryConfig {
                    id: "A1a".into(),
                    keywords: vec!["炸弹".into(), "ab".into(), "bab".into()],
                    ..CategoryConfig::default()
                },
                CategoryConfig {
                    id: "A1b".into(),
                    whole_words: Some(true),
                    keywords: vec!["abc".into(), "xa".into()],
                    ..CategoryConfig::default()
                },
            ],
            ..PolicyConfig::default()
        };
        let p = Policy::compile(&cfg, Path::new("."))
            .expect("compiles")
            .policy;
        let text = "xab abc 炸弹鱼 炸。弹 a.b.a.b Ａbab xa abcd 鱼翅 ".repeat(300);
        let cuts: Vec<usize> = (0..text.len()).step_by(5).collect();
        let walked = streamed(&p, &text, &cuts, true);
        assert_eq!(walked, streamed(&p, &text, &cuts, false));
        assert_eq!(walked.0, p.scan(&text, Direction::Completion));
        assert!(walked.0.len() >= 5 * 300, "{}", walked.0.len());
    }

    /// English terms of several words in English text: the walk reads it through the
    /// automaton's ASCII table (and, with a budget too small for the table, without it), whole
    /// and in pieces, and finds what the streaming machine finds.
    #[test]
    fn english_read_through_the_ascii_table_finds_what_the_machine_finds() {
        let terms: Vec<String> = [
            "the quick fox",
            "quick brown",
            "brown fox jumps",
            "ox",
            "jump",
            "lazy dog",
            "dog days",
            "炸弹",
            "a炸",
        ]
        .iter()
        .map(|t| t.to_string())
        .collect();
        let text = "The quick brown fox jumps over the lazy dog. The quick, brown fox; dog \
                    days are here a炸弹. Jumping foxes, ox-carts and lazy   dogs. "
            .repeat(20);
        let cuts: Vec<usize> = (0..text.len()).step_by(3).collect();
        let mut all = Vec::new();
        for cells in [usize::MAX, 40] {
            let p = policy_in_budget(&terms, cells);
            let table = p
                .keywords_for(Direction::Completion)
                .automaton()
                .and_then(|a| a.ascii_dfa())
                .is_some();
            assert_eq!(table, cells == usize::MAX);
            let one = p.scan(&text, Direction::Completion);
            assert_eq!(one, streaming_once(&p, &text), "{cells} cells");
            assert_eq!(streamed(&p, &text, &cuts, true).0, one, "{cells} cells");
            all.push(one);
        }
        let found: Vec<&str> = all[0]
            .iter()
            .take(9)
            .map(|f| &text[f.span.clone()])
            .collect();
        assert_eq!(
            found,
            [
                "quick brown",
                "ox",
                "jump",
                "lazy dog",
                "quick, brown",
                "ox",
                "dog days",
                "a炸",
                "Jump"
            ]
        );
        assert!(all.iter().all(|f| f == &all[0]));
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
    fn terms_inside_allow_phrases_are_checked_in_one_pass() {
        let terms = ["炸弹".to_owned(), "鱼翅".to_owned()];
        let p =
            policy(&terms, &["炸弹鱼".to_owned()], NormalizeConfig::default()).expect("compiles");
        let kws = p.keywords_for(Direction::Completion);
        let hits = |text| super::keyword_hits(&p.normalizer, kws, &p.allow, text).expect("fits");
        let found = hits("有鱼翅");
        assert_eq!((found[0].start, found[0].end), (3, 9));
        assert_eq!(hits("炸弹").len(), 1);
        assert!(hits("炸弹鱼").is_empty());
        assert_eq!(hits("炸弹炸弹鱼").len(), 1);
        // A stream holds "炸弹" while "炸弹鱼" may still come (a separator such as "。" may
        // stand between), then passes it over; "鱼" is held as the start of "鱼翅".
        let (found, released) = streamed(&p, "有炸弹鱼。", &[6, 9], true);
        assert!(found.is_empty());
        assert_eq!(released, [3, 3, 9]);
        let (found, released) = streamed(&p, "有炸弹。", &[6, 9], true);
        assert_eq!(released, [3, 3, 3]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].span, 3..9);
    }

    #[test]
    fn declines_for_terms_longer_than_the_ring() {
        let long = "长".repeat(700);
        let p = policy(
            &[long.clone(), "ab".into()],
            &[],
            NormalizeConfig::default(),
        )
        .expect("compiles");
        let kws = p.keywords_for(Direction::Completion);
        assert!(super::keyword_hits(&p.normalizer, kws, &p.allow, "ab").is_none());
        assert!(super::OnePass::new(kws, &p.allow).is_none());
        let text = format!("x{long}y ab");
        let found = p.scan(&text, Direction::Completion);
        assert_eq!(found, streaming_once(&p, &text));
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].span, 1..1 + long.len());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(600))]

        /// The one-pass scan finds exactly what the streaming machine finds over the whole
        /// text, under every normalization flag set, with and without allow phrases and
        /// whole-word terms; a stream through the one-pass walk finds the same and releases as
        /// much after every piece, however the text is cut.
        #[test]
        fn one_pass_equals_streaming_machine(
            terms in prop::collection::vec(text(4), 1..8),
            words in prop::collection::vec(text(3), 0..3),
            allow in prop::collection::vec(text(5), 0..2),
            normalize in flags_strategy(),
            text in text(40),
            cuts in prop::collection::vec(0..200usize, 0..12),
            cells in prop_oneof![Just(usize::MAX), 1usize..60],
        ) {
            // With the automaton's ASCII table, or without it (a budget too small for it).
            let budget = CellBudget::set(cells);
            let p = policy_with_words(&terms, &words, &allow, normalize);
            drop(budget);
            let Some(p) = p else {
                return Ok(());
            };
            let whole = p.scan(&text, Direction::Completion);
            prop_assert_eq!(&whole, &streaming_once(&p, &text));
            let kws = p.keywords_for(Direction::Completion);
            if !kws.is_empty() {
                // Terms and phrases this short fit the ring: the whole text and the stream take
                // the walk.
                prop_assert!(super::keyword_hits(&p.normalizer, kws, &p.allow, &text).is_some());
                prop_assert!(super::OnePass::new(kws, &p.allow).is_some());
            }
            let walked = streamed(&p, &text, &cuts, true);
            prop_assert_eq!(&walked, &streamed(&p, &text, &cuts, false));
            prop_assert_eq!(walked.0, whole);
        }
    }
}

//! Keyword matching over normalized text: leftmost-longest terms, allow-list suppression, and
//! the decision of what is final while a stream is still open.
//!
//! Semantics (the same for one-shot and streamed text):
//! 1. From the search position, find the leftmost-longest term match `m`: the earliest start
//!    position at which some term matches, and there the longest term.
//! 2. If some allow-phrase occurrence `a` has `a.start <= m.start && m.end <= a.end`, `m` is
//!    suppressed and the search resumes one character after `m.start` (so a suppressed match
//!    never hides an overlapping one); otherwise `m` is reported and the search resumes at
//!    `m.end`.
//!
//! Terms live in a character trie ([`Trie`]). Every character position at or after the search
//! position starts an anchored *walk* down the trie; a walk remembers the longest term it has
//! passed and dies when no term can follow. Each normalized character is therefore looked at
//! once per walk that is still alive (at most the longest term's length in characters, usually
//! one or two), and walks are carried from one piece of a stream to the next, so nothing is
//! searched twice. The leftmost-longest match is the front walk once it is dead.
//!
//! Most walks die at their second or third character, and the trie is too large to stay in
//! cache, so a walk that leaves the root without a term is started one character late, and
//! only when its first two characters pass a small filter of term beginnings ([`PrefixFilter`],
//! or a direct table for two ASCII characters); if those add no term either, it waits for its
//! third character and a filter of first three characters. The walks that exist are the same
//! as without it.
//!
//! While a stream is open a position `p` is *live* when its walk is still alive, i.e. the
//! normalized text from `p` to the end of what has arrived is a proper prefix of some term. A
//! match is final only when no position at or before its start is live (a longer or earlier
//! match could still complete) and no allow phrase that could contain it is still incomplete.
//! Everything before the first live position is final.

use aho_corasick::automaton::{Automaton, OverlappingState, StateID};
use aho_corasick::nfa::contiguous::NFA;
use aho_corasick::{Anchored, Input, MatchKind};

/// What a normalized term stands for: the library row it came from and its category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TermMeta {
    pub term_id: u32,
    /// Index into the policy's category table.
    pub cat: u16,
}

/// One automaton over distinct normalized strings (allow phrases), plus whether each is a
/// proper prefix of another (so a complete match at the end of the buffer can be called final).
struct PrefixAutomaton {
    nfa: NFA,
    extendable: Vec<bool>,
}

impl PrefixAutomaton {
    /// `sorted` must be sorted and distinct; pattern ids are indexes into it.
    fn build(sorted: &[&str], kind: MatchKind) -> Result<Option<PrefixAutomaton>, String> {
        if sorted.is_empty() {
            return Ok(None);
        }
        let nfa = NFA::builder()
            .match_kind(kind)
            .build(sorted.iter())
            .map_err(|e| e.to_string())?;
        let extendable = sorted
            .iter()
            .enumerate()
            .map(|(i, t)| sorted.get(i + 1).is_some_and(|n| n.starts_with(t)))
            .collect();
        Ok(Some(PrefixAutomaton { nfa, extendable }))
    }

    /// Walk `sid` (anchored) over `bytes`; `None` once no term can follow.
    fn advance(&self, mut sid: StateID, bytes: &[u8]) -> Option<StateID> {
        for &b in bytes {
            sid = self.nfa.next_state(Anchored::Yes, sid, b);
            if self.nfa.is_dead(sid) {
                return None;
            }
        }
        Some(sid)
    }

    /// Whether a walk of `plen` bytes that reached `sid` can still grow into a (longer) match:
    /// false only when the path is a complete term that no other term extends.
    fn can_grow(&self, sid: StateID, plen: usize) -> bool {
        if self.nfa.is_match(sid) {
            for i in 0..self.nfa.match_len(sid) {
                let pid = self.nfa.match_pattern(sid, i);
                if self.nfa.pattern_len(pid) == plen {
                    return self.extendable[pid.as_usize()];
                }
            }
        }
        true
    }

    /// Whether `hay[p..]` could still grow into a match starting at `p`.
    fn live_at(&self, hay: &[u8], p: usize) -> bool {
        let Ok(start) = self.nfa.start_state(Anchored::Yes) else {
            return false;
        };
        self.advance(start, &hay[p..])
            .is_some_and(|sid| self.can_grow(sid, hay.len() - p))
    }

    fn max_len(&self) -> usize {
        self.nfa.max_pattern_len()
    }

    fn memory_usage(&self) -> usize {
        self.nfa.memory_usage() + self.extendable.len()
    }
}

/// Allow-list phrases in normalized form.
#[derive(Default)]
pub(crate) struct AllowSet {
    auto: Option<PrefixAutomaton>,
    /// Sorted, distinct normalized phrases.
    phrases: Vec<String>,
}

impl AllowSet {
    pub fn build(mut phrases: Vec<String>) -> Result<AllowSet, String> {
        phrases.sort_unstable();
        phrases.dedup();
        let refs: Vec<&str> = phrases.iter().map(String::as_str).collect();
        let auto = PrefixAutomaton::build(&refs, MatchKind::Standard)?;
        Ok(AllowSet { auto, phrases })
    }

    pub fn len(&self) -> usize {
        self.phrases.len()
    }

    /// Feed the phrases into the policy version hash.
    pub fn hash_into(&self, h: &mut sha2::Sha256) {
        use sha2::Digest;
        for p in &self.phrases {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p.as_bytes());
        }
    }

    /// Longest phrase in bytes: how much normalized context a stream keeps for this check.
    pub fn max_len(&self) -> usize {
        self.auto.as_ref().map_or(0, PrefixAutomaton::max_len)
    }

    /// Whether a complete allow occurrence in `hay` contains `[s, e)`.
    fn contains(&self, hay: &[u8], s: usize, e: usize) -> bool {
        let Some(a) = &self.auto else { return false };
        let max = a.max_len();
        if e - s > max {
            return false;
        }
        let ws = e.saturating_sub(max);
        let we = hay.len().min(s + max);
        let input = Input::new(&hay[..we]).span(ws..we);
        let mut st = OverlappingState::start();
        while a.nfa.try_find_overlapping(&input, &mut st).is_ok() {
            match st.get_match() {
                Some(m) if m.start() <= s && e <= m.end() => return true,
                Some(_) => {}
                None => break,
            }
        }
        false
    }

    /// Whether an allow phrase that could contain `[s, e)` is still incomplete at the end of `hay`.
    fn pending(&self, hay: &[u8], s: usize, e: usize) -> bool {
        let Some(a) = &self.auto else { return false };
        let max = a.max_len();
        let from = e
            .saturating_sub(max)
            .max((hay.len() + 1).saturating_sub(max));
        (from..=s).any(|p| is_char_start(hay, p) && a.live_at(hay, p))
    }

    pub fn memory_usage(&self) -> usize {
        self.auto.as_ref().map_or(0, PrefixAutomaton::memory_usage)
    }
}

/// Runs of at most this many edges are scanned; larger ones are open-addressing hash tables.
const LINEAR_MAX: usize = 8;
/// Marks an empty slot of a hashed run (no `char` has this value).
const EMPTY: u32 = u32::MAX;

#[inline(always)]
fn slot(c: u32, size: usize) -> usize {
    (c.wrapping_mul(0x9E37_79B1) as usize) & (size - 1)
}

/// One trie edge with what a walk needs of the node it leads to, so a step touches one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Edge {
    ch: u32,
    /// The child's edge run: start in `Trie::edges` and length (0: a leaf).
    run_at: u32,
    run_len: u32,
    /// 1 + the index of the term ending at the child (0: none).
    term: u32,
}

const NO_EDGE: Edge = Edge {
    ch: EMPTY,
    run_at: 0,
    run_len: 0,
    term: 0,
};

/// The first two (or three) characters of every term at least that long, as a one-hash bit
/// set (a Bloom filter with k = 1) keyed by [`key`]: a walk whose next character does not
/// pass cannot go deeper. Far smaller than the trie (about 16 bits per term), so the check
/// stays in cache where stepping the walk would miss it. Hand-written: a Bloom filter crate
/// would add a dependency for a dozen lines.
struct PrefixFilter {
    bits: Vec<u64>,
    shift: u32,
}

/// The filter key of a term's first characters (at most three, 21 bits each).
#[inline(always)]
fn key(chars: &[u32]) -> u64 {
    chars.iter().fold(0, |k, &c| k << 21 | u64::from(c))
}

/// The filter key of four ASCII characters.
#[inline(always)]
fn ascii_key(chars: &[u32; 4]) -> u64 {
    chars.iter().fold(0, |k, &c| k << 7 | u64::from(c))
}

impl PrefixFilter {
    fn new(terms: usize) -> PrefixFilter {
        // About 16 bits per term (a few percent of false positives), 8 KiB to 2 MiB.
        let log = (terms.max(1) * 16)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(16, 24);
        PrefixFilter {
            bits: vec![0; 1 << (log - 6)],
            shift: 64 - log,
        }
    }

    #[inline(always)]
    fn index(&self, key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    fn insert(&mut self, key: u64) {
        let i = self.index(key);
        self.bits[i >> 6] |= 1 << (i & 63);
    }

    /// False only when no term starts with the characters of `key`.
    #[inline(always)]
    fn may_contain(&self, key: u64) -> bool {
        let i = self.index(key);
        self.bits[i >> 6] & (1 << (i & 63)) != 0
    }

    fn memory_usage(&self) -> usize {
        self.bits.capacity() * 8
    }
}

/// A trie over the characters of distinct terms. A node is known by its run of child edges
/// in `edges`: scanned when short, an open-addressing hash table (power-of-two size, at most
/// half full) when long. The root's children are a sorted run at the start of `edges`, with a
/// direct table for BMP characters.
struct Trie {
    /// The root's edge along each BMP character (`ch == EMPTY`: none); a copy of the root's
    /// run, so a walk starts with one load.
    root_bmp: Vec<Edge>,
    /// The root's run is `edges[..root_len]`, sorted by char.
    root_len: usize,
    edges: Vec<Edge>,
    pairs: PrefixFilter,
    /// First three characters, for walks at depth two.
    triples: PrefixFilter,
    /// For positions whose first three characters are ASCII and pass `triples`: the terms of
    /// exactly three characters, and the first four characters of longer terms when all ASCII
    /// (keyed 7 bits a character, see [`ascii_key`]). English text passes the triple filter at
    /// a third of its letters; one more character rules out nearly all of those.
    short3: PrefixFilter,
    quads: PrefixFilter,
    /// The depth-two edge along each pair of ASCII characters, indexed `a << 7 | b` (empty
    /// when no term starts with two ASCII characters): English text passes the pair filter
    /// at almost every letter, and one load here replaces a probe of the first letter's
    /// (large, hashed) run.
    ascii_pairs: Vec<Edge>,
    /// One bit per BMP character: whether the root has an edge along it (8 KiB, where
    /// `root_bmp` is 1 MiB), for passing over positions no term starts at.
    root_bits: Vec<u64>,
}

impl Trie {
    /// `sorted` must be sorted, distinct and non-empty strings; term indexes refer to it.
    fn build(sorted: &[&str]) -> Result<Trie, String> {
        let too_big = || "keyword trie exceeds 2^32 edges".to_owned();
        // Depth-first construction from the sorted terms: (parent, char, child) edges, each
        // parent's edges by increasing char.
        let mut raw: Vec<(u32, u32, u32)> = Vec::new();
        let mut pairs = PrefixFilter::new(sorted.len());
        let mut triples = PrefixFilter::new(sorted.len());
        let mut short3 = PrefixFilter::new(sorted.len());
        let mut quads = PrefixFilter::new(sorted.len());
        let mut term = vec![0u32];
        let mut path: Vec<u32> = vec![0];
        let mut prev = "";
        for (i, t) in sorted.iter().enumerate() {
            let common = t
                .chars()
                .zip(prev.chars())
                .take_while(|(a, b)| a == b)
                .count();
            path.truncate(common + 1);
            let (mut head, mut k) = ([0u32; 4], 0);
            for c in t.chars().take(4) {
                head[k] = c as u32;
                k += 1;
            }
            if k >= 2 {
                pairs.insert(key(&head[..2]));
            }
            if k >= 3 {
                triples.insert(key(&head[..3]));
            }
            if k == 3 && t.chars().nth(3).is_none() {
                short3.insert(key(&head[..3]));
            }
            if k == 4 && head.iter().all(|&c| c < 0x80) {
                quads.insert(ascii_key(&head));
            }
            for c in t.chars().skip(common) {
                let id = u32::try_from(term.len()).map_err(|_| too_big())?;
                term.push(0);
                raw.push((path[path.len() - 1], c as u32, id));
                path.push(id);
            }
            let last = path[path.len() - 1] as usize;
            term[last] = u32::try_from(i + 1).map_err(|_| too_big())?;
            prev = t;
        }
        let nodes = term.len();
        // Run sizes, then run starts (node order; the root first).
        let mut run_at = vec![0u32; nodes + 1];
        for &(p, _, _) in &raw {
            run_at[p as usize] += 1;
        }
        let mut at = 0usize;
        for (n, v) in run_at.iter_mut().enumerate() {
            let k = *v as usize;
            *v = u32::try_from(at).map_err(|_| too_big())?;
            at += if n == 0 || k <= LINEAR_MAX {
                k
            } else {
                (2 * k).next_power_of_two()
            };
        }
        run_at[nodes] = u32::try_from(at).map_err(|_| too_big())?;
        let mut fill: Vec<u32> = run_at[..nodes].to_vec();
        let mut edges = vec![NO_EDGE; at];
        let mut root_bmp = vec![NO_EDGE; 0x1_0000];
        let mut root_bits = vec![0u64; 0x1_0000 / 64];
        for &(p, c, child) in &raw {
            let (p, ch) = (p as usize, child as usize);
            let e = Edge {
                ch: c,
                run_at: run_at[ch],
                run_len: run_at[ch + 1] - run_at[ch],
                term: term[ch],
            };
            let (lo, hi) = (run_at[p] as usize, run_at[p + 1] as usize);
            if p == 0 || hi - lo <= LINEAR_MAX {
                let k = fill[p] as usize;
                edges[k] = e;
                fill[p] += 1;
                if p == 0 && c < 0x1_0000 {
                    root_bmp[c as usize] = e;
                    root_bits[c as usize >> 6] |= 1 << (c & 63);
                }
            } else {
                let run = &mut edges[lo..hi];
                let mut i = slot(c, run.len());
                while run[i].ch != EMPTY {
                    i = (i + 1) & (run.len() - 1);
                }
                run[i] = e;
            }
        }
        let root_len = (run_at[1] - run_at[0]) as usize;
        let mut ascii_pairs = Vec::new();
        for r in &edges[..root_len] {
            if r.ch >= 0x80 {
                continue;
            }
            let run = &edges[r.run_at as usize..(r.run_at + r.run_len) as usize];
            for e in run.iter().filter(|e| e.ch < 0x80) {
                if ascii_pairs.is_empty() {
                    ascii_pairs = vec![NO_EDGE; 1 << 14];
                }
                ascii_pairs[(r.ch << 7 | e.ch) as usize] = *e;
            }
        }
        Ok(Trie {
            root_bmp,
            root_len,
            edges,
            pairs,
            triples,
            short3,
            quads,
            ascii_pairs,
            root_bits,
        })
    }

    /// From normalized byte `q` of `text` on, the first position at which a term could start:
    /// positions whose first characters rule out every term are passed over (their walks would
    /// die by the third character with no term passed, the same tests `second` and `third`
    /// make). Stops where that cannot be told from the text at hand (its last characters,
    /// characters outside the BMP, pairs that are not both ASCII after the pair filter).
    #[inline]
    fn next_start(&self, text: &str, mut q: usize) -> usize {
        let hay = text.as_bytes();
        let at = |i: usize| -> Option<(u32, usize)> {
            let b = *hay.get(i)?;
            if b < 0x80 {
                return Some((u32::from(b), 1));
            }
            let c = text[i..].chars().next()?;
            Some((c as u32, c.len_utf8()))
        };
        loop {
            let Some((a, la)) = at(q) else { return q };
            if a >= 0x1_0000 {
                return q;
            }
            if self.root_bits[a as usize >> 6] & (1 << (a & 63)) == 0 {
                q += la;
                continue;
            }
            if self.root_bmp[a as usize].term != 0 {
                return q;
            }
            let Some((b, lb)) = at(q + la) else { return q };
            if a < 0x80 && b < 0x80 && !self.ascii_pairs.is_empty() {
                let e = &self.ascii_pairs[(a << 7 | b) as usize];
                if e.ch == EMPTY {
                    q += la;
                    continue;
                }
                if e.term != 0 {
                    return q;
                }
                let Some((c, lc)) = at(q + la + lb) else {
                    return q;
                };
                if !self.triples.may_contain(key(&[a, b, c])) {
                    q += la;
                    continue;
                }
                if c >= 0x80 || self.short3.may_contain(key(&[a, b, c])) {
                    return q;
                }
                let Some((d, _)) = at(q + la + lb + lc) else {
                    return q;
                };
                if d >= 0x80 || self.quads.may_contain(ascii_key(&[a, b, c, d])) {
                    return q;
                }
                q += la;
                continue;
            }
            if self.pairs.may_contain(key(&[a, b])) {
                return q;
            }
            q += la;
        }
    }

    /// The root's edge along `c`.
    #[inline(always)]
    fn root_child(&self, c: u32) -> Option<&Edge> {
        if c < 0x1_0000 {
            let e = &self.root_bmp[c as usize];
            return (e.ch != EMPTY).then_some(e);
        }
        let run = &self.edges[..self.root_len];
        run.binary_search_by_key(&c, |e| e.ch).ok().map(|k| &run[k])
    }

    /// The edge along `c` out of the node whose run is `(at, len)`.
    #[inline(always)]
    fn child(&self, at: u32, len: u32, c: u32) -> Option<&Edge> {
        let run = &self.edges[at as usize..(at + len) as usize];
        if run.len() <= LINEAR_MAX {
            return run.iter().find(|e| e.ch == c);
        }
        let mut i = slot(c, run.len());
        loop {
            let e = &run[i];
            if e.ch == c {
                return Some(e);
            }
            if e.ch == EMPTY {
                return None;
            }
            i = (i + 1) & (run.len() - 1);
        }
    }

    fn memory_usage(&self) -> usize {
        (self.root_bmp.capacity() + self.edges.capacity()) * std::mem::size_of::<Edge>()
            + self.pairs.memory_usage()
            + self.triples.memory_usage()
            + self.short3.memory_usage()
            + self.quads.memory_usage()
            + self.ascii_pairs.capacity() * std::mem::size_of::<Edge>()
            + self.root_bits.capacity() * 8
    }

    /// The edge along `b` out of the root's child along `a` (whose edge is `e`).
    #[inline(always)]
    fn second(&self, a: u32, e: &Edge, b: u32) -> Option<&Edge> {
        if a < 0x80 && b < 0x80 && !self.ascii_pairs.is_empty() {
            let x = &self.ascii_pairs[(a << 7 | b) as usize];
            return (x.ch != EMPTY).then_some(x);
        }
        if !self.pairs.may_contain(key(&[a, b])) {
            return None;
        }
        self.child(e.run_at, e.run_len, b)
    }

    /// The edge along `c` out of the depth-two node (edge `e`) reached along `a`, `b`.
    #[inline(always)]
    fn third(&self, a: u32, b: u32, e: &Edge, c: u32) -> Option<&Edge> {
        if !self.triples.may_contain(key(&[a, b, c])) {
            return None;
        }
        self.child(e.run_at, e.run_len, c)
    }
}

/// Terms of one direction in normalized form, with their meaning.
#[derive(Default)]
pub(crate) struct KeywordSet {
    trie: Option<Trie>,
    meta: Vec<TermMeta>,
    /// Defer walks to the next character and check the pair filter first (off only in tests,
    /// to compare with starting a walk at every position).
    prefilter: bool,
}

/// An anchored walk down the trie from one normalized position.
#[derive(Debug, Clone, Copy)]
struct Walk {
    /// Absolute normalized offset where the walk started.
    start: usize,
    /// The edge run of the node reached; `run_len == 0` once no character can extend the walk
    /// (the walk is dead).
    run_at: u32,
    run_len: u32,
    /// Length in bytes of the longest term passed so far, and 1 + its index (0: none yet).
    best_len: u32,
    best_term: u32,
}

impl Walk {
    /// A walk from `start` that has just taken edge `e`, its character ending at `end`.
    #[inline(always)]
    fn stepped(start: usize, e: &Edge, end: usize) -> Walk {
        Walk {
            start,
            run_at: e.run_at,
            run_len: e.run_len,
            best_len: if e.term != 0 { (end - start) as u32 } else { 0 },
            best_term: e.term,
        }
    }

    /// A deferred walk (alive, no term passed) at the node `e` leads to.
    fn waiting(start: usize, e: &Edge) -> Walk {
        Walk {
            start,
            run_at: e.run_at,
            run_len: e.run_len,
            best_len: 0,
            best_term: 0,
        }
    }

    #[inline(always)]
    fn alive(&self) -> bool {
        self.run_len != 0
    }

    fn best_end(&self) -> usize {
        self.start + self.best_len as usize
    }
}

/// Undecided walks in start order. Short (at most the longest term's length in characters),
/// so taking the front off shifts only a few elements.
#[derive(Debug, Default)]
struct Walks {
    v: Vec<Walk>,
}

impl Walks {
    #[inline(always)]
    fn is_empty(&self) -> bool {
        self.v.is_empty()
    }

    #[inline(always)]
    fn front(&self) -> Option<&Walk> {
        self.v.first()
    }

    #[inline(always)]
    fn pop_front(&mut self) {
        if !self.v.is_empty() {
            self.v.remove(0);
        }
    }

    /// Drop the walks starting before `end`.
    fn pop_before(&mut self, end: usize) {
        let k = self.v.partition_point(|w| w.start < end);
        self.v.drain(..k);
    }

    #[inline(always)]
    fn push_back(&mut self, w: Walk) {
        self.v.push(w);
    }

    /// Keep the walks for which `f` (which may change them) returns true, in order. A plain
    /// loop: `Vec::retain_mut` costs more than the work on these few elements.
    #[inline(always)]
    fn retain_mut(&mut self, mut f: impl FnMut(&mut Walk) -> bool) {
        let mut kept = 0;
        for r in 0..self.v.len() {
            let mut x = self.v[r];
            if f(&mut x) {
                self.v[kept] = x;
                kept += 1;
            }
        }
        self.v.truncate(kept);
    }
}

/// Reusable buffers of one stream's keyword search.
#[derive(Debug, Default)]
pub(crate) struct DrainBufs {
    /// Matches found by the last `drain`.
    pub hits: Vec<Hit>,
    /// Walks not yet decided, by start: alive ones and dead ones holding a match.
    walks: Walks,
    /// Absolute normalized offset the walks have reached.
    walked_to: usize,
    /// Walks still deferred at the end of the last piece (see `drain`), after every walk.
    d1: Option<(usize, u32, Edge)>,
    d2: Option<(usize, u32, u32, Edge)>,
}

/// A keyword match in absolute normalized offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hit {
    pub start: usize,
    pub end: usize,
    pub meta: TermMeta,
}

#[inline]
fn is_char_start(hay: &[u8], p: usize) -> bool {
    hay.get(p).is_some_and(|&b| (b as i8) >= -0x40)
}

fn next_char(hay: &[u8], p: usize) -> usize {
    let mut q = p + 1;
    while q < hay.len() && !is_char_start(hay, q) {
        q += 1;
    }
    q
}

/// The outcome of looking at the front walk.
enum Front {
    /// Nothing to decide yet (the front walk is alive, or needs more text).
    Wait,
    /// No walk left.
    Empty,
    /// The front walk was decided (reported or suppressed); look again.
    Done,
    /// An allow phrase that could contain the front match is still incomplete.
    Pending(usize),
}

impl KeywordSet {
    /// `sorted`: distinct normalized terms in sorted order with their meaning.
    pub fn build(sorted: &[(&str, TermMeta)]) -> Result<KeywordSet, String> {
        let refs: Vec<&str> = sorted.iter().map(|(t, _)| *t).collect();
        let trie = if refs.is_empty() {
            None
        } else {
            Some(Trie::build(&refs)?)
        };
        Ok(KeywordSet {
            trie,
            meta: sorted.iter().map(|(_, m)| *m).collect(),
            prefilter: true,
        })
    }

    pub fn memory_usage(&self) -> usize {
        self.trie.as_ref().map_or(0, Trie::memory_usage)
            + self.meta.len() * std::mem::size_of::<TermMeta>()
    }

    /// No terms: nothing to normalize text for.
    pub fn is_empty(&self) -> bool {
        self.trie.is_none()
    }

    /// Decide the front walk if it is dead: suppress it, report it, or (with `open`, text still
    /// to come) find an allow phrase that could contain it still incomplete.
    #[allow(clippy::too_many_arguments)]
    fn decide_front(
        &self,
        allow: &AllowSet,
        hay: &[u8],
        base: usize,
        cursor: &mut usize,
        walks: &mut Walks,
        out: &mut Vec<Hit>,
        open: bool,
    ) -> Front {
        let Some(f) = walks.front().copied() else {
            return Front::Empty;
        };
        if f.alive() {
            return Front::Wait;
        }
        let end = f.best_end();
        let (s, e) = (f.start - base, end - base);
        if allow.contains(hay, s, e) {
            *cursor = base + next_char(hay, s);
            walks.pop_front();
            return Front::Done;
        }
        if open && allow.pending(hay, s, e) {
            return Front::Pending(f.start);
        }
        out.push(Hit {
            start: f.start,
            end,
            meta: self.meta[f.best_term as usize - 1],
        });
        *cursor = end;
        walks.pop_before(end);
        Front::Done
    }

    /// Report every decidable match in `text` (normalized, starting at absolute offset `base`)
    /// from the absolute search position `*cursor` on. With `is_final` the text is complete.
    /// Returns the absolute position before which everything is decided, or `None` when all of
    /// `text` is. `*cursor` is left at the position where the next search starts. Successive
    /// calls of one stream pass the same text grown at the end (and maybe trimmed at the front,
    /// never past `*cursor` less the allow list's longest phrase).
    pub fn drain(
        &self,
        allow: &AllowSet,
        text: &str,
        base: usize,
        cursor: &mut usize,
        is_final: bool,
        bufs: &mut DrainBufs,
    ) -> Option<usize> {
        let DrainBufs {
            hits: out,
            walks,
            walked_to,
            d1: d1_kept,
            d2: d2_kept,
        } = bufs;
        out.clear();
        let hay = text.as_bytes();
        let n = hay.len();
        let Some(trie) = &self.trie else {
            *cursor = base + n;
            *walked_to = base + n;
            return None;
        };
        let amax = allow.max_len();
        let wrel = walked_to.saturating_sub(base).min(n);
        // A walk that leaves the root without a term is started one character late, and again
        // when its second character adds none: it only matters if the next character
        // continues it, which the prefix filters usually rule out without touching the trie.
        // Until then it is deferred: `d1` (start, char, root edge) and `d2` (start, chars,
        // depth-two edge). The walk list is the same as if they had been started at once:
        // such a walk is alive and matchless, so it is never decided, and nothing behind it
        // is decided while it waits (it is the last walk, or it is pushed before any other).
        // They are carried to the next piece as they are, so a stream cut into small pieces
        // keeps the filters' benefit.
        let mut d1 = d1_kept.take();
        let mut d2 = d2_kept.take();
        let mut q = wrel;
        while q < n {
            if self.prefilter && walks.is_empty() && d1.is_none() && d2.is_none() {
                // Nothing open: pass over the positions no term can start at in one loop.
                q = trie.next_start(text, q);
                if q >= n {
                    break;
                }
            }
            let Some(ch) = text[q..].chars().next() else {
                break;
            };
            let qe = base + q + ch.len_utf8();
            let c = ch as u32;
            if !walks.is_empty() {
                walks.retain_mut(|w| {
                    if w.alive() {
                        match trie.child(w.run_at, w.run_len, c) {
                            None => w.run_len = 0,
                            Some(e) => {
                                (w.run_at, w.run_len) = (e.run_at, e.run_len);
                                if e.term != 0 {
                                    w.best_len = (qe - w.start) as u32;
                                    w.best_term = e.term;
                                }
                            }
                        }
                    }
                    w.alive() || w.best_term != 0
                });
            }
            // A deferred walk starting before `*cursor` was dropped by a match decided since
            // (`pop_before`).
            if let Some((p, a, b, e)) = d2.take() {
                if p >= *cursor {
                    if let Some(x) = trie.third(a, b, &e, c) {
                        walks.push_back(Walk::stepped(p, x, qe));
                    }
                }
            }
            if let Some((p, a, e)) = d1.take() {
                if p >= *cursor {
                    if let Some(x) = trie.second(a, &e, c) {
                        if x.term == 0 && x.run_len != 0 {
                            d2 = Some((p, a, c, *x));
                        } else {
                            walks.push_back(Walk::stepped(p, x, qe));
                        }
                    }
                }
            }
            if base + q >= *cursor {
                if let Some(e) = trie.root_child(c) {
                    if self.prefilter && e.term == 0 && e.run_len != 0 {
                        d1 = Some((base + q, c, *e));
                    } else {
                        if let Some((p, _, _, x)) = d2.take() {
                            walks.push_back(Walk::waiting(p, &x));
                        }
                        walks.push_back(Walk::stepped(base + q, e, qe));
                    }
                }
            }
            // Decide what full knowledge would: a dead front walk once the allow list's
            // context after its start has been seen.
            while walks
                .front()
                .is_some_and(|w| !w.alive() && (amax == 0 || w.start + amax <= qe))
            {
                if !matches!(
                    self.decide_front(allow, hay, base, cursor, walks, out, false),
                    Front::Done
                ) {
                    break;
                }
            }
            q = qe - base;
        }
        *walked_to = base + n;
        if is_final {
            walks.retain_mut(|w| {
                w.run_len = 0;
                w.best_term != 0
            });
        }
        loop {
            match self.decide_front(allow, hay, base, cursor, walks, out, !is_final) {
                Front::Done => {}
                Front::Empty => break,
                Front::Wait => {
                    // The front walk starts before any deferred one.
                    *d1_kept = d1;
                    *d2_kept = d2;
                    let s = walks.front().map_or(base + n, |w| w.start);
                    *cursor = s;
                    return Some(s);
                }
                Front::Pending(s) => {
                    *d1_kept = d1;
                    *d2_kept = d2;
                    *cursor = s;
                    return Some(s);
                }
            }
        }
        // Open text: a deferred walk is alive, so it holds the text from its start, as it
        // would at the front of `walks` (unless a match decided since covers its start).
        if !is_final {
            let d2 = d2.filter(|d| d.0 >= *cursor);
            let d1 = d1.filter(|d| d.0 >= *cursor);
            if let Some(s) = d2.map(|d| d.0).or(d1.map(|d| d.0)) {
                *d1_kept = d1;
                *d2_kept = d2;
                *cursor = s;
                return Some(s);
            }
        }
        *cursor = base + n;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(terms: &[&str]) -> KeywordSet {
        let mut v: Vec<&str> = terms.to_vec();
        v.sort_unstable();
        let with: Vec<(&str, TermMeta)> = v
            .iter()
            .enumerate()
            .map(|(i, t)| {
                (
                    *t,
                    TermMeta {
                        term_id: i as u32,
                        cat: 0,
                    },
                )
            })
            .collect();
        KeywordSet::build(&with).expect("builds")
    }

    fn run(
        ks: &KeywordSet,
        allow: &AllowSet,
        text: &str,
        is_final: bool,
    ) -> (Vec<(usize, usize)>, Option<usize>) {
        let mut cursor = 0;
        let mut bufs = DrainBufs::default();
        let hold = ks.drain(allow, text, 0, &mut cursor, is_final, &mut bufs);
        (bufs.hits.iter().map(|h| (h.start, h.end)).collect(), hold)
    }

    #[test]
    fn leftmost_longest() {
        let ks = set(&["炸弹", "炸弹制作", "制造"]);
        let none = AllowSet::default();
        let (hits, _) = run(&ks, &none, "如何制造炸弹制作", true);
        assert_eq!(hits, [(6, 12), (12, 24)]);
    }

    #[test]
    fn open_text_holds_a_term_prefix() {
        let ks = set(&["炸弹", "炸弹制作"]);
        let none = AllowSet::default();
        // "炸弹" could still become "炸弹制作": not final, held from its start.
        assert_eq!(run(&ks, &none, "好的炸弹", false), (vec![], Some(6)));
        assert_eq!(run(&ks, &none, "好的炸弹制", false), (vec![], Some(6)));
        assert_eq!(run(&ks, &none, "好的炸弹。", false), (vec![(6, 12)], None));
        // A complete term that no other term extends is final at once.
        let ks = set(&["炸弹"]);
        assert_eq!(run(&ks, &none, "好的炸弹", false), (vec![(6, 12)], None));
        assert_eq!(run(&ks, &none, "好的炸", false), (vec![], Some(6)));
        assert_eq!(run(&ks, &none, "好的", false), (vec![], None));
    }

    #[test]
    fn allow_phrase_suppresses_contained_match() {
        let ks = set(&["炸弹", "鱼翅"]);
        let allow = AllowSet::build(vec!["炸弹鱼".into()]).expect("builds");
        assert_eq!(run(&ks, &allow, "一条炸弹鱼", true).0, vec![]);
        assert_eq!(run(&ks, &allow, "制造炸弹", true).0, [(6, 12)]);
        // A match reaching beyond the allow occurrence is not suppressed.
        assert_eq!(run(&ks, &allow, "炸弹鱼翅", true).0, [(6, 12)]);
        // Open text: the allow phrase may still complete.
        assert_eq!(run(&ks, &allow, "一条炸弹", false), (vec![], Some(6)));
        // Suppressed; "鱼" is still held because it could become "鱼翅".
        assert_eq!(run(&ks, &allow, "一条炸弹鱼", false), (vec![], Some(12)));
    }

    /// Leftmost-longest matches of `terms` in `text`, the reference: aho-corasick.
    fn reference(terms: &[String], text: &str) -> Vec<(usize, usize)> {
        let ac = aho_corasick::AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(terms)
            .expect("builds");
        ac.find_iter(text).map(|m| (m.start(), m.end())).collect()
    }

    /// Feed `text` cut at `cuts` as a stream (trimming like the scanner), then finish.
    fn streamed(
        ks: &KeywordSet,
        allow: &AllowSet,
        text: &str,
        cuts: &[usize],
    ) -> Vec<(usize, usize)> {
        let mut bufs = DrainBufs::default();
        let (mut cursor, mut base, mut hits) = (0, 0, Vec::new());
        let mut ends: Vec<usize> = cuts
            .iter()
            .copied()
            .filter(|&c| text.is_char_boundary(c))
            .collect();
        ends.push(text.len());
        ends.sort_unstable();
        let mut last_hold = 0;
        for (k, &end) in ends.iter().enumerate() {
            let is_final = k + 1 == ends.len();
            let hold = ks.drain(
                allow,
                &text[base..end],
                base,
                &mut cursor,
                is_final,
                &mut bufs,
            );
            hits.extend(bufs.hits.iter().map(|h| (h.start, h.end)));
            let h = hold.unwrap_or(end);
            assert!(h >= last_hold, "hold went back");
            last_hold = h;
            // Keep the allow context before the cursor, as the scanner does.
            let mut keep = cursor.saturating_sub(allow.max_len()).max(base);
            while !text.is_char_boundary(keep) {
                keep -= 1;
            }
            base = keep.min(end);
        }
        hits
    }

    fn build_terms(terms: &[String]) -> KeywordSet {
        let mut v: Vec<&str> = terms.iter().map(String::as_str).collect();
        v.sort_unstable();
        v.dedup();
        let with: Vec<(&str, TermMeta)> = v
            .iter()
            .enumerate()
            .map(|(i, t)| {
                (
                    *t,
                    TermMeta {
                        term_id: i as u32,
                        cat: 0,
                    },
                )
            })
            .collect();
        KeywordSet::build(&with).expect("builds")
    }

    use proptest::prelude::*;

    fn small_text(max: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec!["a", "b", "c", "炸", "弹", "鱼", "𠀀"]),
            0..max,
        )
        .prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The trie walk finds exactly aho-corasick's leftmost-longest matches, one-shot and
        /// streamed in any cuts.
        #[test]
        fn trie_equals_aho_corasick(
            terms in prop::collection::vec(small_text(5).prop_filter("non-empty", |t| !t.is_empty()), 1..12),
            text in small_text(40),
            cuts in prop::collection::vec(0usize..160, 0..8),
        ) {
            let ks = build_terms(&terms);
            let none = AllowSet::default();
            let want = reference(&terms, &text);
            prop_assert_eq!(run(&ks, &none, &text, true).0, want.clone());
            prop_assert_eq!(streamed(&ks, &none, &text, &cuts), want);
        }

        /// With allow phrases, streamed findings equal one-shot findings.
        #[test]
        fn trie_streamed_equals_whole_with_allow(
            terms in prop::collection::vec(small_text(4).prop_filter("non-empty", |t| !t.is_empty()), 1..10),
            allow in prop::collection::vec(small_text(6).prop_filter("non-empty", |t| !t.is_empty()), 0..4),
            text in small_text(40),
            cuts in prop::collection::vec(0usize..160, 0..8),
        ) {
            let ks = build_terms(&terms);
            let allow = AllowSet::build(allow).expect("builds");
            let whole = run(&ks, &allow, &text, true).0;
            prop_assert_eq!(streamed(&ks, &allow, &text, &cuts), whole);
        }

        /// Deferring walks behind the pair filter finds the same matches and holds the same
        /// text as starting a walk at every position, one-shot, open and streamed.
        #[test]
        fn pair_prefilter_equals_plain_walks(
            terms in prop::collection::vec(small_text(4).prop_filter("non-empty", |t| !t.is_empty()), 1..10),
            allow in prop::collection::vec(small_text(6).prop_filter("non-empty", |t| !t.is_empty()), 0..4),
            text in small_text(40),
            cuts in prop::collection::vec(0usize..160, 0..8),
        ) {
            let fast = build_terms(&terms);
            let mut slow = build_terms(&terms);
            slow.prefilter = false;
            let allow = AllowSet::build(allow).expect("builds");
            for is_final in [true, false] {
                prop_assert_eq!(run(&fast, &allow, &text, is_final), run(&slow, &allow, &text, is_final));
            }
            prop_assert_eq!(streamed(&fast, &allow, &text, &cuts), streamed(&slow, &allow, &text, &cuts));
        }
    }
}

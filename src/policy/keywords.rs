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
//! 3. If `m` is a whole-word term that fails an edge (a letter or digit right before or after
//!    it), the shorter terms starting at `m.start` are judged by 2 and 3, longest first (so
//!    `fuck` is found in `fuck yourself` beside the term `fuck you`); where none is reported,
//!    the search resumes one character after `m.start`.
//!
//! Terms live in a character-level Aho–Corasick automaton ([`Automaton`]). Its state after
//! the text read so far stands for every position from which a term could still be matching,
//! so each normalized character costs one transition, and the state is carried from one piece
//! of a stream to the next: nothing is searched twice except the few characters between a
//! decided match's end and where it was decided. Small filters of the terms' first two and
//! three characters ([`PrefixFilter`]) rule out most transitions from shallow states without
//! touching the automaton; on ASCII text, direct tables give the step from a state of depth one
//! or two in one load.
//!
//! While a stream is open a position `p` is *live* when a term could still be matching from
//! it, i.e. the normalized text from `p` to the end of what has arrived is a proper prefix of
//! some term. A match is final only when no position at or before its start is live (a longer
//! or earlier match could still complete) and no allow phrase that could contain it is still
//! incomplete. Everything before the first live position is final.

use aho_corasick::automaton::{Automaton as _, OverlappingState, StateID};

use super::ascii_dfa::AsciiDfa;
use super::cjk_da::CjkDa;
use super::normalize::CharTable;
use aho_corasick::nfa::contiguous::NFA;
use aho_corasick::{Anchored, Input, MatchKind};

/// What a normalized term stands for: the library row it came from and its category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TermMeta {
    pub term_id: u32,
    /// Index into the policy's category table.
    pub cat: u16,
    /// The category's `whole_words`: where the term begins (ends) with an ASCII letter or
    /// digit, a match needs a character that is not one before (after) it, or the text's edge.
    pub whole_words: bool,
}

/// [`KeywordSet`] edge checks of a whole-word term: before its start, after its end.
const EDGE_START: u8 = 1;
const EDGE_END: u8 = 2;

/// Whether normalized byte `b` continues a Latin word (the edges of a whole-word match must
/// not). Non-ASCII characters, CJK included, are edges.
#[inline]
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
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

/// Most ASCII characters the terms may use for [`Automaton`]'s `ascii3` table (`n³` entries:
/// 40 gives 250 KiB; lower-case letters, digits and a space are 37).
const ASCII3_MAX_CLASSES: usize = 40;
/// Runs of at most this many edges are scanned; larger ones are open-addressing hash tables.
const LINEAR_MAX: usize = 8;
/// Marks an empty slot of a hashed run (no `char` has this value).
const EMPTY: u32 = u32::MAX;
/// Longest normalized term, in bytes (a state's depth is 16 bits).
pub(crate) const MAX_TERM_BYTES: usize = u16::MAX as usize;
/// The automaton's root: the empty string.
pub(super) const ROOT: u32 = 0;
/// Set in a state id held by an edge (or the root table) when a term ends at that state (its
/// `out` is not the root), so reading on needs no load of the state until something matches.
pub(super) const OUT: u32 = 1 << 31;

/// The first two (or three) characters of every term at least that long, as a one-hash bit
/// set (a Bloom filter with k = 1) keyed by [`key`]: a state spelling the characters before
/// one that does not pass cannot go deeper along it. Far smaller than the trie (about 16 bits per term), so the check
/// stays in cache where a step of the automaton would miss it. Hand-written: a Bloom filter crate
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

#[inline(always)]
fn slot(c: u32, size: usize) -> usize {
    (c.wrapping_mul(0x9E37_79B1) as usize) & (size - 1)
}

/// Words of a state's header in [`Automaton::mem`]; its edges follow as (char, state) pairs.
const H_FAIL: usize = 0;
/// `TERM | (1 + term index)` when the state spells a whole term; else the state of its longest
/// suffix that does (`ROOT`: none).
const H_OUT: usize = 1;
/// Depth (low half) and live length (high half), in normalized bytes: the length of the
/// state's string, and of its longest suffix (itself included) whose state has edges, i.e.
/// the longest that more text could still extend into a term (0: none).
const H_DEPTH_LIVE: usize = 2;
/// Number of edge slots: scanned when at most `LINEAR_MAX`, else a hash table (power-of-two
/// size, at most half full, empty slots `EMPTY`). The root's are sorted by char.
const H_LEN: usize = 3;
const HEADER: usize = 4;
/// Marks `H_OUT` of a state that spells a term.
const TERM: u32 = 1 << 31;

/// Aho–Corasick over the characters of normalized terms: one state per distinct term prefix,
/// goto edges by character and failure links, states in breadth-first order.
///
/// After the text from the search position to `p` has been read, the state is the longest
/// suffix of that text which is a term prefix. Its failure chain lists every other such suffix,
/// so one state stands for all the positions from which a term could still be matching (what
/// a list of anchored trie walks would hold), and its live length says how far back the
/// earliest of them begins. A character costs one transition however many terms are in
/// progress.
///
/// A state is a header and its edges side by side in one array (a state id is its offset), so
/// a step loads one place, usually one cache line; the filters of term beginnings rule out
/// most steps from depth one and two without any load of the automaton.
///
/// Hand-written: the aho-corasick crate runs over bytes (three steps for a CJK character,
/// through a byte-level automaton many times larger) and does not expose, for a stream, how
/// far back a match could still begin.
pub(super) struct Automaton {
    mem: Vec<u32>,
    /// Longest term, in normalized bytes.
    max_len: usize,
    /// The root's successor along each BMP character (`ROOT`: none), so a step from the root is
    /// one load.
    root_next: Box<[u32; 0x1_0000]>,
    /// One bit per BMP character: whether any term contains it. Any other character leads
    /// every state back to the root at once (a space between words of a list that has none).
    used_bits: Box<[u64; 0x1_0000 / 64]>,
    /// One bit per BMP character: whether the root's successor along it can still grow (its
    /// live length, `depth_live`, is the character's rather than 0). See [`Automaton::live`].
    d1_live_bits: Box<[u64; 0x1_0000 / 64]>,
    /// The live length of each depth-two state, by `(id - d1_end) / 4` (a state is four words
    /// at least): like `d1_live_bits`, it spares a stream a load of the state itself, which the
    /// filters step past and is seldom in cache when the stream asks after a piece.
    d2_live: Box<[u8]>,
    /// The state after two ASCII characters from the root, by `a << 7 | b` (`ROOT`: none): from
    /// a depth-one state, one load where English text would pass the pair filter at nearly
    /// every letter and probe a large hashed run. Fixed-size tables: indexes need no checks.
    ascii2: Box<[u32; 1 << 14]>,
    /// The step from a depth-two state along a third character, for ASCII text: indexed by
    /// the classes (`ascii_class`) of the state's two characters and the next one, it holds
    /// what the failure chain would give (no filter, no chain). English text through a library
    /// of English words otherwise walks the triple filter and a failure link at most letters.
    /// Empty when the terms use so many ASCII characters that the table would not stay small.
    ascii3: Box<[u32]>,
    /// Per ASCII character that some term uses: its class (0..`ascii_n`), in `ascii3`'s index.
    ascii_class: [u8; 128],
    ascii_n: usize,
    /// States at depth one have ids below `d1_end`, at depth two below `d2_end`.
    d1_end: u32,
    d2_end: u32,
    /// The first two and the first three characters of the terms: a state at depth one or two
    /// spells the last characters read, so most characters are ruled out as its continuation
    /// by a filter small enough to stay in cache.
    pairs: PrefixFilter,
    triples: PrefixFilter,
    /// A word of ASCII letters and digits read from the root and followed by a space holds no
    /// term when it is shorter than this: no term has a space, and the terms made of letters
    /// and digits alone are this long at least (`usize::MAX` when there are none; 0 when a
    /// term has a space). Short words of English text are then passed over unread.
    short_word: usize,
    /// Whether some term has an ASCII character followed by one beyond ASCII, and the other
    /// way round. Without the first, a step along a character beyond ASCII from a state that
    /// spells text ending in ASCII goes where the same step from the root goes (no state
    /// spells both), so a CJK run after English enters the double array at its root; without
    /// the second, an English word after Chinese enters the ASCII table at its first row.
    ascii_to_wide: bool,
    wide_to_ascii: bool,
    /// Every step over ASCII text as one table lookup, for the one-pass walk's runs of
    /// English words (`None`: no term has an ASCII character).
    ascii_dfa: Option<AsciiDfa>,
    /// Every step over CJK runs as a double array, for the one-pass walk's runs of CJK
    /// (`None`: no term has such a character, or too many states do).
    cjk_da: Option<CjkDa>,
}

impl Automaton {
    /// `sorted` must be sorted, distinct and non-empty strings; term indexes refer to it.
    pub(super) fn build(sorted: &[&str]) -> Result<Automaton, String> {
        let too_big = || "keyword automaton exceeds 2^31 words".to_owned();
        if let Some(t) = sorted.iter().find(|t| t.len() > MAX_TERM_BYTES) {
            return Err(format!(
                "a keyword term is {} bytes long after normalization; the limit is \
                 {MAX_TERM_BYTES}",
                t.len()
            ));
        }
        // The trie, depth first from the sorted terms: (parent, char, child) in creation
        // order, each parent's children by increasing char.
        let mut raw: Vec<(u32, u32, u32)> = Vec::new();
        let mut pairs = PrefixFilter::new(sorted.len());
        let mut triples = PrefixFilter::new(sorted.len());
        let mut term = vec![0u32];
        let mut depth = vec![0u16];
        // Depth in characters (only one and two matter: the filters' ranges).
        let mut chars = vec![0u8];
        let mut path: Vec<u32> = vec![0];
        let mut prev = "";
        for (i, t) in sorted.iter().enumerate() {
            let common = t
                .chars()
                .zip(prev.chars())
                .take_while(|(a, b)| a == b)
                .count();
            path.truncate(common + 1);
            let (mut head, mut k) = ([0u32; 3], 0);
            for c in t.chars().take(3) {
                head[k] = c as u32;
                k += 1;
            }
            if k >= 2 {
                pairs.insert(key(&head[..2]));
            }
            if k == 3 {
                triples.insert(key(&head));
            }
            let mut d = t.char_indices().nth(common).map_or(t.len(), |(k, _)| k);
            for c in t.chars().skip(common) {
                let id = u32::try_from(term.len()).map_err(|_| too_big())?;
                d += c.len_utf8();
                term.push(0);
                depth.push(d as u16);
                chars.push(u8::try_from(path.len()).unwrap_or(u8::MAX));
                raw.push((path[path.len() - 1], c as u32, id));
                path.push(id);
            }
            term[path[path.len() - 1] as usize] = u32::try_from(i + 1).map_err(|_| too_big())?;
            prev = t;
        }
        let nodes = term.len();
        // Children grouped by parent (counting sort; creation order kept within a parent).
        let mut first = vec![0u32; nodes + 1];
        for &(p, _, _) in &raw {
            first[p as usize + 1] += 1;
        }
        for k in 1..=nodes {
            first[k] += first[k - 1];
        }
        let mut kids = vec![(0u32, 0u32); raw.len()];
        let mut fill = first.clone();
        for &(p, c, child) in &raw {
            kids[fill[p as usize] as usize] = (c, child);
            fill[p as usize] += 1;
        }
        drop(raw);
        drop(fill);
        let children = |n: usize| &kids[first[n] as usize..first[n + 1] as usize];
        let slots = |n: usize, root: bool| {
            let k = children(n).len();
            if root || k <= LINEAR_MAX {
                k
            } else {
                (2 * k).next_power_of_two()
            }
        };
        // Breadth-first order and each node's offset.
        let mut order: Vec<u32> = Vec::with_capacity(nodes);
        let mut off = vec![0u32; nodes];
        order.push(0);
        let (mut k, mut at, mut d1_end, mut d2_end) = (0, 0usize, 0, 0);
        while k < order.len() {
            let n = order[k] as usize;
            off[n] = u32::try_from(at).map_err(|_| too_big())?;
            match chars[n] {
                1 => d1_end = off[n] + 1,
                2 => d2_end = off[n] + 1,
                _ => {}
            }
            at += HEADER + 2 * slots(n, k == 0);
            for &(_, child) in children(n) {
                order.push(child);
            }
            k += 1;
        }
        if at >= TERM as usize {
            return Err(too_big());
        }
        d2_end = d2_end.max(d1_end);
        let mut mem = vec![0u32; at];
        for (k, &n) in order.iter().enumerate() {
            let n = n as usize;
            let o = off[n] as usize;
            let len = slots(n, k == 0);
            mem[o + H_OUT] = if term[n] != 0 { TERM | term[n] } else { 0 };
            mem[o + H_DEPTH_LIVE] = u32::from(depth[n]);
            mem[o + H_LEN] = len as u32;
            let run = &mut mem[o + HEADER..o + HEADER + 2 * len];
            if k == 0 || len <= LINEAR_MAX {
                for (j, &(c, child)) in children(n).iter().enumerate() {
                    run[2 * j] = c;
                    run[2 * j + 1] = off[child as usize];
                }
            } else {
                for w in run.chunks_exact_mut(2) {
                    w[0] = EMPTY;
                }
                for &(c, child) in children(n) {
                    let mut i = slot(c, len);
                    while run[2 * i] != EMPTY {
                        i = (i + 1) & (len - 1);
                    }
                    run[2 * i] = c;
                    run[2 * i + 1] = off[child as usize];
                }
            }
        }
        let states: Vec<u32> = order.iter().map(|&n| off[n as usize]).collect();
        drop(kids);
        drop(first);
        let mut a = Automaton {
            mem,
            max_len: sorted.iter().map(|t| t.len()).max().unwrap_or(0),
            root_next: table(ROOT)?,
            used_bits: table(0)?,
            d1_live_bits: table(0)?,
            d2_live: vec![0; (d2_end - d1_end) as usize / HEADER + 1].into_boxed_slice(),
            ascii2: table(ROOT)?,
            ascii3: Box::new([]),
            ascii_class: [0; 128],
            ascii_n: 0,
            d1_end,
            d2_end,
            pairs,
            triples,
            short_word: 0,
            ascii_to_wide: false,
            wide_to_ascii: false,
            ascii_dfa: None,
            cjk_da: None,
        };
        a.fill_root_table();
        // Failure links, outputs and live lengths, breadth first: everything a state's values
        // come from is shallower, so already done.
        let mut run = Vec::new();
        for &s in &states {
            let s = s as usize;
            run.clear();
            run.extend(a.edges(s));
            for &(_, ch, t) in &run {
                let fail = if s == ROOT as usize {
                    ROOT
                } else {
                    a.step(a.mem[s + H_FAIL], ch) & !OUT
                } as usize;
                let t = t as usize;
                let has_edges = a.mem[t + H_LEN] != 0;
                let f_out = a.mem[fail + H_OUT];
                let f_live = a.mem[fail + H_DEPTH_LIVE] >> 16;
                a.mem[t + H_FAIL] = fail as u32;
                if a.mem[t + H_OUT] & TERM == 0 {
                    a.mem[t + H_OUT] = if f_out & TERM != 0 {
                        fail as u32
                    } else {
                        f_out
                    };
                }
                let dl = a.mem[t + H_DEPTH_LIVE];
                let live = if has_edges { dl & 0xFFFF } else { f_live };
                a.mem[t + H_DEPTH_LIVE] = dl & 0xFFFF | live << 16;
            }
        }
        // Flag the edges into states where a term ends (a suffix's, too).
        for &s in &states {
            run.clear();
            run.extend(a.edges(s as usize));
            for &(w, _, t) in &run {
                if a.mem[t as usize + H_OUT] != 0 {
                    a.mem[w] |= OUT;
                }
            }
        }
        a.fill_root_table();
        for c in 0..0x1_0000usize {
            let t = a.root_next[c] & !OUT;
            if t != ROOT && a.depth_live(t).1 != 0 {
                a.d1_live_bits[c >> 6] |= 1 << (c & 63);
            }
        }
        for &s in &states {
            if (d1_end..d2_end).contains(&s) {
                // Two characters of four bytes at most: the live length fits a byte.
                a.d2_live[(s - d1_end) as usize / HEADER] = a.depth_live(s).1 as u8;
            }
        }
        for t in sorted {
            for c in t.chars().map(|c| c as usize).filter(|&c| c < 0x1_0000) {
                a.used_bits[c >> 6] |= 1 << (c & 63);
            }
        }
        let two: Vec<(u32, u32)> = a
            .edges(ROOT as usize)
            .filter(|&(_, c1, _)| c1 < 0x80)
            .flat_map(|(_, c1, t1)| {
                a.edges((t1 & !OUT) as usize)
                    .filter(|&(_, c2, _)| c2 < 0x80)
                    .map(move |(_, c2, t2)| (c1 << 7 | c2, t2))
            })
            .collect();
        for (k, t2) in two {
            a.ascii2[k as usize] = t2;
        }
        a.fill_ascii3();
        for t in sorted {
            let b = t.as_bytes();
            // A character beyond ASCII begins with a byte of its own range (0xC0..): the
            // pairs of scripts are where such a byte and an ASCII one meet.
            for w in b.windows(2) {
                a.ascii_to_wide |= w[0] < 0x80 && w[1] >= 0x80;
                a.wide_to_ascii |= w[0] >= 0x80 && w[1] < 0x80;
            }
        }
        if !a.uses(u32::from(b' ')) {
            a.short_word = sorted
                .iter()
                .filter(|t| t.bytes().all(|b| b.is_ascii_alphanumeric()))
                .map(|t| t.len())
                .min()
                .unwrap_or(usize::MAX);
        }
        a.ascii_dfa = AsciiDfa::build(&a);
        a.cjk_da = CjkDa::build(&a);
        Ok(a)
    }

    /// See the field.
    #[inline(always)]
    pub(super) fn ascii_dfa(&self) -> Option<&AsciiDfa> {
        self.ascii_dfa.as_ref()
    }

    pub(super) fn cjk_da(&self) -> Option<&CjkDa> {
        self.cjk_da.as_ref()
    }

    /// Fold the normalizer's CJK-run test into the double array (`CjkDa::fold_runs`) and its
    /// word bytes into the ASCII table's classes (`AsciiDfa::fold_words`).
    pub(super) fn fold_runs(&mut self, table: &CharTable) {
        if let Some(d) = self.cjk_da.as_mut() {
            d.fold_runs(|cp| table.run_cjk_of(cp));
        }
        if let Some(d) = self.ascii_dfa.as_mut() {
            d.fold_words(|b| table.word_byte(b));
        }
    }

    /// State `s` flagged (`OUT`) when a term ends there, as the edges into it are (the root
    /// never is: no step leads to it flagged, whatever its own entry says).
    pub(super) fn flagged(&self, s: u32) -> u32 {
        if s & !OUT != ROOT && self.mem[(s & !OUT) as usize + H_OUT] != 0 {
            s | OUT
        } else {
            s & !OUT
        }
    }

    /// The failure link of state `s` (flagged or not): the state of its longest proper suffix
    /// that is a term prefix.
    pub(super) fn fail(&self, s: u32) -> u32 {
        self.mem[(s & !OUT) as usize + H_FAIL]
    }

    /// Whether some term has BMP character `c`.
    #[inline(always)]
    pub(super) fn uses(&self, c: u32) -> bool {
        c < 0x1_0000 && self.used_bits[c as usize >> 6] & (1 << (c & 63)) != 0
    }

    /// See the field.
    #[inline(always)]
    pub(super) fn ascii_to_wide(&self) -> bool {
        self.ascii_to_wide
    }

    /// See [`Automaton::ascii_to_wide`].
    #[inline(always)]
    pub(super) fn wide_to_ascii(&self) -> bool {
        self.wide_to_ascii
    }

    /// See the field: words shorter than this, between spaces, hold no term.
    #[inline(always)]
    pub(super) fn short_word(&self) -> usize {
        self.short_word
    }

    /// The edges of state `s`, empty hash slots left out: (index of the target's word in
    /// `mem`, char, target).
    pub(super) fn edges(&self, s: usize) -> impl Iterator<Item = (usize, u32, u32)> + '_ {
        let len = self.mem[s + H_LEN] as usize;
        (0..len)
            .map(move |j| s + HEADER + 2 * j)
            .filter(|&w| self.mem[w] != EMPTY)
            .map(|w| (w + 1, self.mem[w], self.mem[w + 1]))
    }

    /// Build `ascii3` when the terms use at most `ASCII3_MAX_CLASSES` ASCII characters.
    fn fill_ascii3(&mut self) {
        let used: Vec<u32> = (0..0x80u32).filter(|&c| self.uses(c)).collect();
        let n = used.len();
        if n == 0 || n > ASCII3_MAX_CLASSES {
            return;
        }
        for (k, &c) in used.iter().enumerate() {
            self.ascii_class[c as usize] = k as u8;
        }
        let mut t = vec![ROOT; n * n * n];
        for (i, &a) in used.iter().enumerate() {
            for (j, &b) in used.iter().enumerate() {
                let s2 = self.ascii2[(a << 7 | b) as usize] & !OUT;
                if s2 == ROOT {
                    // No term starts with `a b`: no state spells them, the row is never read.
                    continue;
                }
                for (k, &c) in used.iter().enumerate() {
                    t[(i * n + j) * n + k] = self.step(s2, c);
                }
            }
        }
        self.ascii3 = t.into_boxed_slice();
        self.ascii_n = n;
    }

    /// Copy the root's edges into the direct table.
    fn fill_root_table(&mut self) {
        for j in 0..self.mem[H_LEN] as usize {
            let (c, t) = (self.mem[HEADER + 2 * j], self.mem[HEADER + 2 * j + 1]);
            if c < 0x1_0000 {
                self.root_next[c as usize] = t;
            }
        }
    }

    /// The goto edge of state `s` along `c`.
    #[inline(always)]
    fn goto(&self, s: u32, c: u32) -> Option<u32> {
        let s = s as usize;
        let len = self.mem[s + H_LEN] as usize;
        let run = &self.mem[s + HEADER..s + HEADER + 2 * len];
        if len <= LINEAR_MAX {
            return run.chunks_exact(2).find(|e| e[0] == c).map(|e| e[1]);
        }
        let mut i = slot(c, len);
        loop {
            let ch = run[2 * i];
            if ch == c {
                return Some(run[2 * i + 1]);
            }
            if ch == EMPTY {
                return None;
            }
            i = (i + 1) & (len - 1);
        }
    }

    /// The root's successor along `c` (`ROOT` when no term starts with it).
    #[inline(always)]
    fn root_step(&self, c: u32) -> u32 {
        if c < 0x1_0000 {
            return self.root_next[c as usize];
        }
        let len = self.mem[H_LEN] as usize;
        let run = &self.mem[HEADER..HEADER + 2 * len];
        let (mut lo, mut hi) = (0, len);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match run[2 * mid].cmp(&c) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return run[2 * mid + 1],
            }
        }
        ROOT
    }

    /// The state after reading `c` in state `s` (flagged or not; the result is flagged): goto
    /// if there is an edge, else the failure chain's first state that has one. Without the
    /// filters (used while building, when the characters before are not at hand).
    pub(super) fn step(&self, mut s: u32, c: u32) -> u32 {
        loop {
            s &= !OUT;
            if s == ROOT {
                return self.root_step(c);
            }
            if let Some(t) = self.goto(s, c) {
                return t;
            }
            s = self.mem[s as usize + H_FAIL];
        }
    }

    /// The state after reading `c` in state `s` (flagged or not), the last two characters read
    /// before it being `p1` (last) and `p2`: the root's direct table, else [`Automaton::next`].
    #[inline(always)]
    pub(super) fn advance(&self, s: u32, c: u32, p1: u32, p2: u32) -> u32 {
        if s == ROOT {
            self.root_step(c)
        } else {
            self.next(s, c, p1, p2)
        }
    }

    /// [`Automaton::step`] for a state that was reached by reading text ending in `p2`, `p1`
    /// (`p1` last): at depth one or two the state spells them, and the prefix filters (or,
    /// for ASCII, the direct tables) decide most steps before the state is touched.
    ///
    /// The shallow cases are written out before any loop: inside one, the compiler computed
    /// every case's filter key and table index up front, and every step paid for all of them.
    #[inline(always)]
    fn next(&self, s: u32, c: u32, p1: u32, p2: u32) -> u32 {
        if c < 0x1_0000 && !self.uses(c) {
            // No term has `c`: every state goes back to the root, sparing the failure chain.
            return ROOT;
        }
        let s = s & !OUT;
        if s == ROOT {
            return self.root_step(c);
        }
        if s < self.d1_end {
            return self.depth_one_step(s, c, p1);
        }
        if s < self.d2_end {
            // Spells `p2 p1`.
            if (p2 | p1 | c) < 0x80 && self.ascii_n != 0 {
                // All three are characters some term uses (`c` passed `used_bits`; the state
                // spells the other two), so each has a class.
                let n = self.ascii_n;
                let cls = |x: u32| usize::from(self.ascii_class[x as usize]);
                return self.ascii3[(cls(p2) * n + cls(p1)) * n + cls(c)];
            }
            if !self.triples.may_contain(key(&[p2, p1, c])) {
                // Its failure link is the state of `p1`, if any.
                let d1 = self.root_step(p1) & !OUT;
                return if d1 == ROOT {
                    self.root_step(c)
                } else {
                    self.depth_one_step(d1, c, p1)
                };
            }
        }
        if let Some(t) = self.goto(s, c) {
            return t;
        }
        self.deep_step(self.mem[s as usize + H_FAIL], c, p1, p2)
    }

    /// [`Automaton::next`] from state `s` at depth one, which spells `p1` and fails to the root.
    #[inline(always)]
    fn depth_one_step(&self, s: u32, c: u32, p1: u32) -> u32 {
        if (p1 | c) < 0x80 {
            let t = self.ascii2[(p1 << 7 | c) as usize];
            return if t == ROOT { self.root_step(c) } else { t };
        }
        if !self.pairs.may_contain(key(&[p1, c])) {
            return self.root_step(c);
        }
        match self.goto(s, c) {
            Some(t) => t,
            None => self.root_step(c),
        }
    }

    /// [`Automaton::next`] from `s`, the failure link of a state that has no edge along `c`:
    /// its goto edge, else on down the failure chain, the filters applied again at the shallow
    /// states on the way.
    #[inline(never)]
    fn deep_step(&self, mut s: u32, c: u32, p1: u32, p2: u32) -> u32 {
        loop {
            if s < self.d2_end && s >= self.d1_end && !self.triples.may_contain(key(&[p2, p1, c])) {
                // A depth-two state that `c` cannot continue: on to the state of `p1`.
                s = self.root_step(p1);
            }
            s &= !OUT;
            if s == ROOT {
                return self.root_step(c);
            }
            if s < self.d1_end {
                return self.depth_one_step(s, c, p1);
            }
            if let Some(t) = self.goto(s, c) {
                return t;
            }
            s = self.mem[s as usize + H_FAIL];
        }
    }

    /// Read `hay` from byte `q` in state `s` (after characters `p1`, `p2`) until a state where
    /// a term ends, or the end. Returns the position, state and last two characters there.
    /// Kept apart from the decision logic so that its few values stay in registers.
    #[inline(never)]
    fn read_until_output(
        &self,
        hay: &[u8],
        mut q: usize,
        mut s: u32,
        mut p1: u32,
        mut p2: u32,
    ) -> (usize, u32, u32, u32) {
        while q < hay.len() && s & OUT == 0 {
            let (c, len) = decode(hay, q);
            q += len;
            if s == ROOT {
                s = self.root_step(c);
                if s == ROOT {
                    continue;
                }
            } else {
                s = self.next(s, c, p1, p2);
            }
            (p1, p2) = (c, p1);
        }
        (q, s, p1, p2)
    }

    /// The terms that are proper prefixes of `m` (a match's normalized bytes), as (`at` + their
    /// length, 1 + index), shortest first: a walk of the trie from the root along `m`.
    #[cold]
    #[inline(never)]
    fn prefix_terms(&self, m: &[u8], at: usize) -> Vec<(usize, u32)> {
        let mut out = Vec::new();
        let (mut st, mut q) = (ROOT, 0);
        while q < m.len() {
            let (c, n) = decode(m, q);
            q += n;
            let next = if st == ROOT {
                self.root_step(c)
            } else {
                self.goto(st, c).unwrap_or(ROOT)
            } & !OUT;
            if next == ROOT {
                break;
            }
            st = next;
            let o = self.mem[st as usize + H_OUT];
            if o & TERM != 0 && q < m.len() {
                out.push((at + q, o & !TERM));
            }
        }
        out
    }

    /// The live length of `depth_live(s)`, for state `s` reached by reading `p1` last: with
    /// no look at the state when it is at depth two or less. A stream asks after every
    /// piece, and the memory of a state at depth one or two is seldom read otherwise (the
    /// filters step past it), so the look would be a cache miss on most pieces.
    #[inline]
    pub(super) fn live(&self, s: u32, p1: u32) -> usize {
        let t = s & !OUT;
        let live = if t == ROOT {
            0
        } else if t < self.d1_end && p1 < 0x1_0000 {
            // A depth-one state spells `p1`; lengths are in bytes.
            let grows = self.d1_live_bits[p1 as usize >> 6] >> (p1 & 63) & 1 != 0;
            match char::from_u32(p1) {
                Some(c) if grows => c.len_utf8(),
                _ => 0,
            }
        } else if (self.d1_end..self.d2_end).contains(&t) {
            usize::from(self.d2_live[(t - self.d1_end) as usize / HEADER])
        } else {
            self.depth_live(s).1
        };
        debug_assert_eq!(
            live,
            self.depth_live(s).1,
            "s={s} t={t} d1_end={} d2_end={} p1={p1}",
            self.d1_end,
            self.d2_end
        );
        live
    }

    /// Depth and live length of state `s` (flagged or not), in bytes.
    #[inline(always)]
    pub(super) fn depth_live(&self, s: u32) -> (usize, usize) {
        let dl = self.mem[(s & !OUT) as usize + H_DEPTH_LIVE];
        ((dl & 0xFFFF) as usize, (dl >> 16) as usize)
    }

    /// For a flagged state: the depth and 1 + index of the longest term ending there.
    #[inline]
    pub(super) fn output(&self, s: u32) -> (usize, u32) {
        let s = (s & !OUT) as usize;
        let o = self.mem[s + H_OUT];
        let t = if o & TERM != 0 { s } else { o as usize };
        (
            (self.mem[t + H_DEPTH_LIVE] & 0xFFFF) as usize,
            self.mem[t + H_OUT] & !TERM,
        )
    }

    /// Longest term, in normalized bytes.
    pub(super) fn max_len(&self) -> usize {
        self.max_len
    }

    /// Mark in `hit` (by term index) every term that occurs in `text`, overlaps included.
    fn mark_terms_in(&self, text: &str, hit: &mut [bool]) {
        let mut s = ROOT;
        for c in text.chars() {
            s = self.step(s, c as u32) & !OUT;
            // The terms ending here: the longest, then along the failure chain.
            let mut t = s;
            while t != ROOT {
                let o = self.mem[t as usize + H_OUT];
                let ts = if o & TERM != 0 { t } else { o };
                if ts == ROOT {
                    break;
                }
                let term = self.mem[ts as usize + H_OUT] & !TERM;
                hit[term as usize - 1] = true;
                t = self.mem[ts as usize + H_FAIL];
            }
        }
    }

    fn memory_usage(&self) -> usize {
        self.mem.capacity() * 4
            + std::mem::size_of_val(&*self.root_next)
            + std::mem::size_of_val(&*self.used_bits)
            + std::mem::size_of_val(&*self.d1_live_bits)
            + self.d2_live.len()
            + std::mem::size_of_val(&*self.ascii2)
            + std::mem::size_of_val(&*self.ascii3)
            + self.pairs.memory_usage()
            + self.triples.memory_usage()
            + self.ascii_dfa.as_ref().map_or(0, AsciiDfa::memory_usage)
            + self.cjk_da.as_ref().map_or(0, CjkDa::memory_usage)
    }
}

/// A boxed table of `N` copies of `v`, built on the heap.
fn table<T: Copy, const N: usize>(v: T) -> Result<Box<[T; N]>, String> {
    vec![v; N]
        .into_boxed_slice()
        .try_into()
        .map_err(|_| "keyword table of the wrong size".to_owned())
}

/// The character at byte `q` of valid UTF-8 `hay` (which must not end there) and its length.
/// Hand-decoded: `str::chars` re-checks what the normalizer's output already guarantees.
#[inline(always)]
fn decode(hay: &[u8], q: usize) -> (u32, usize) {
    let b = hay[q];
    if b < 0x80 {
        (u32::from(b), 1)
    } else if b < 0xE0 {
        (u32::from(b & 0x1F) << 6 | u32::from(hay[q + 1] & 0x3F), 2)
    } else if b < 0xF0 {
        (
            u32::from(b & 0x0F) << 12
                | u32::from(hay[q + 1] & 0x3F) << 6
                | u32::from(hay[q + 2] & 0x3F),
            3,
        )
    } else {
        (
            u32::from(b & 0x07) << 18
                | u32::from(hay[q + 1] & 0x3F) << 12
                | u32::from(hay[q + 2] & 0x3F) << 6
                | u32::from(hay[q + 3] & 0x3F),
            4,
        )
    }
}

/// Terms of one direction in normalized form, with their meaning.
#[derive(Default)]
pub(crate) struct KeywordSet {
    auto: Option<Automaton>,
    meta: Vec<TermMeta>,
    /// By term index: whether a match of the term can be passed over: the term occurs inside
    /// some allow phrase, or it has edges to check (`edges`). A match of any other term can
    /// never be suppressed, so it needs no check and no wait for context.
    allowable: Vec<bool>,
    /// Some term is `allowable`.
    any_allowable: bool,
    /// By term index: `EDGE_START | EDGE_END` bits of a whole-word term.
    edges: Vec<u8>,
    /// Some term has edges: one character before a match must be kept to check it.
    any_edges: bool,
}

/// The leftmost-longest match found so far and not yet decided, in absolute normalized offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Best {
    pub start: usize,
    pub end: usize,
    /// 1 + the term's index.
    pub term: u32,
}

/// One stream's keyword search state, carried from one `drain` to the next.
#[derive(Debug, Default, Clone)]
pub(crate) struct DrainBufs {
    /// Matches found by the last `drain`.
    pub hits: Vec<Hit>,
    /// Automaton state (flagged, see [`OUT`]) after the text up to `walked_to`, and the last
    /// two characters read (`p1` last).
    state: u32,
    p1: u32,
    p2: u32,
    /// Absolute normalized offset the automaton has read to.
    walked_to: usize,
    best: Option<Best>,
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

impl KeywordSet {
    /// `sorted`: distinct normalized terms in sorted order with their meaning; `allow`: the
    /// allow list their matches are checked against.
    pub fn build(sorted: &[(&str, TermMeta)], allow: &AllowSet) -> Result<KeywordSet, String> {
        let refs: Vec<&str> = sorted.iter().map(|(t, _)| *t).collect();
        let auto = if refs.is_empty() {
            None
        } else {
            Some(Automaton::build(&refs)?)
        };
        let mut allowable = vec![false; refs.len()];
        if let Some(a) = &auto {
            for p in &allow.phrases {
                a.mark_terms_in(p, &mut allowable);
            }
        }
        let edges: Vec<u8> = sorted
            .iter()
            .map(|(t, m)| {
                let (first, last) = (t.bytes().next(), t.bytes().last());
                let start = first.is_some_and(is_word_byte) as u8 * EDGE_START;
                let end = last.is_some_and(is_word_byte) as u8 * EDGE_END;
                if m.whole_words {
                    start | end
                } else {
                    0
                }
            })
            .collect();
        for (a, &e) in allowable.iter_mut().zip(&edges) {
            *a |= e != 0;
        }
        Ok(KeywordSet {
            auto,
            meta: sorted.iter().map(|(_, m)| *m).collect(),
            any_allowable: allowable.contains(&true),
            allowable,
            any_edges: edges.iter().any(|&e| e != 0),
            edges,
        })
    }

    /// Normalized bytes a stream must keep before its cursor for the checks of a match held
    /// there: the allow list's longest phrase, and one character for a whole-word edge; none
    /// when no term's match is checked.
    pub(crate) fn context(&self, allow: &AllowSet) -> usize {
        if !self.any_allowable {
            return 0;
        }
        allow.max_len().max(if self.any_edges { 4 } else { 0 })
    }

    /// Whether enough text after the held match `b` has been read (to absolute `read_to`) to
    /// decide it: the allow list's longest phrase from its start, and one character after its
    /// end when that is a whole-word edge.
    #[inline]
    pub(super) fn context_seen(&self, b: &Best, amax: usize, read_to: usize) -> bool {
        let i = b.term as usize - 1;
        !self.allowable[i]
            || ((amax == 0 || b.start + amax <= read_to)
                && (self.edges[i] & EDGE_END == 0 || read_to > b.end))
    }

    pub(super) fn automaton(&self) -> Option<&Automaton> {
        self.auto.as_ref()
    }

    /// Let CJK runs of `table`'s normalizer take the automaton's double array in one load a
    /// character, and its words the ASCII table in one load a letter (`Automaton::fold_runs`).
    /// The one-pass walk reads CJK runs through the array only then, and declines a set whose
    /// ASCII table is not folded.
    pub(super) fn fold_runs(&mut self, table: &CharTable) {
        if let Some(a) = self.auto.as_mut() {
            a.fold_runs(table);
        }
    }

    /// The meaning of term `1 + index` and whether an allow phrase contains it.
    #[inline]
    pub(super) fn term(&self, term: u32) -> (TermMeta, bool) {
        let i = term as usize - 1;
        (self.meta[i], self.allowable[i])
    }

    pub fn memory_usage(&self) -> usize {
        self.auto.as_ref().map_or(0, Automaton::memory_usage)
            + self.meta.len() * std::mem::size_of::<TermMeta>()
    }

    /// No terms: nothing to normalize text for.
    pub fn is_empty(&self) -> bool {
        self.auto.is_none()
    }

    /// A term ends at absolute `end` in flagged state `s`: make it the match so far if it starts
    /// no later than the one held (leftmost, then longest).
    #[inline(always)]
    pub(super) fn note_output(&self, a: &Automaton, s: u32, end: usize, best: &mut Option<Best>) {
        let (depth, term) = a.output(s);
        let start = end - depth;
        match best {
            Some(b) if b.start < start => {}
            Some(b) if b.start == start => (b.end, b.term) = (end, term),
            _ => *best = Some(Best { start, end, term }),
        }
    }

    /// Settle match `b`, returning where the search goes on: suppressed by an allow phrase
    /// that contains it (one character after its start), or reported (at its end). `None`
    /// when, with `open` (text still to come), an allow phrase that could contain it is still
    /// incomplete. Where `b` fails a whole-word edge, the shorter terms that begin it are judged
    /// the same way, longest first ([`Automaton::prefix_terms`]); where all fail, the search
    /// goes on one character after the start.
    pub(super) fn settle(
        &self,
        allow: &AllowSet,
        hay: &[u8],
        base: usize,
        b: Best,
        out: &mut Vec<Hit>,
        open: bool,
    ) -> Option<usize> {
        let s = b.start - base;
        let passed_over = Some(base + next_char(hay, s));
        // Found only when the longest fails an edge: (end in `hay`, 1 + index), shortest first.
        let mut shorter: Option<Vec<(usize, u32)>> = None;
        let (mut e, mut term) = (b.end - base, b.term);
        loop {
            let i = term as usize - 1;
            let allowable = self.allowable[i];
            if allowable && allow.contains(hay, s, e) {
                // The shorter terms lie in the same phrase.
                return passed_over;
            }
            if open && allowable && allow.pending(hay, s, e) {
                return None;
            }
            let edges = self.edges[i];
            // `s` is 0 only at the text's start: a stream keeps `context` bytes before its
            // cursor.
            let start_fails = edges & EDGE_START != 0 && s > 0 && is_word_byte(hay[s - 1]);
            let end_fails = match hay.get(e) {
                Some(&x) => edges & EDGE_END != 0 && is_word_byte(x),
                None if open && edges & EDGE_END != 0 && !start_fails => return None,
                None => false,
            };
            if !(start_fails || end_fails) {
                out.push(Hit {
                    start: b.start,
                    end: base + e,
                    meta: self.meta[i],
                });
                return Some(base + e);
            }
            let list = shorter.get_or_insert_with(|| match &self.auto {
                Some(a) => a.prefix_terms(&hay[s..b.end - base], s),
                None => Vec::new(),
            });
            match list.pop() {
                Some(c) => (e, term) = c,
                None => return passed_over,
            }
        }
    }

    /// Report every decidable match in `text` (normalized, starting at absolute offset `base`)
    /// from where the last call left off. With `is_final` the text is complete. Returns the
    /// absolute position before which everything is decided, or `None` when all of `text` is;
    /// `*cursor` is set to it (or to the end). Successive calls of one stream pass the same
    /// text grown at the end (and maybe trimmed at the front, never past `*cursor` less
    /// [`KeywordSet::context`]).
    ///
    /// The automaton reads each character once. A match is decided when no position at or
    /// before its start is live any more (nothing earlier or longer can complete) and the allow
    /// list's context after its start has been seen; the search then starts again from the
    /// root at the match's end (or one character after its start, if suppressed), reading
    /// again only the few characters between there and where the decision was made.
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
            state,
            p1,
            p2,
            walked_to,
            best: best_kept,
        } = bufs;
        out.clear();
        let hay = text.as_bytes();
        let n = hay.len();
        let Some(a) = &self.auto else {
            *cursor = base + n;
            *walked_to = base + n;
            return None;
        };
        let amax = allow.max_len();
        let (mut s, mut c1, mut c2, mut best) = (*state, *p1, *p2, *best_kept);
        let mut q = walked_to.saturating_sub(base).min(n);
        *walked_to = base + n;
        let hold = loop {
            // Read to the end of the text, settling matches as they become decidable.
            while q < n {
                // A long stretch with nothing to decide goes through the tight loop; a
                // token-sized piece is not worth its set-up.
                if best.is_none() && s & OUT == 0 && n - q >= 32 {
                    (q, s, c1, c2) = a.read_until_output(hay, q, s, c1, c2);
                    if s & OUT == 0 {
                        break;
                    }
                    // A term ends at `q`: decided below as if read here.
                    self.note_output(a, s, base + q, &mut best);
                } else {
                    let (c, len) = decode(hay, q);
                    q += len;
                    s = a.advance(s, c, c1, c2);
                    (c1, c2) = (c, c1);
                    if s & OUT != 0 {
                        self.note_output(a, s, base + q, &mut best);
                    }
                }
                if let Some(b) = best {
                    let live_from = base + q - a.live(s, c1);
                    if live_from > b.start && self.context_seen(&b, amax, base + q) {
                        if let Some(r) = self.settle(allow, hay, base, b, out, false) {
                            best = None;
                            s = ROOT;
                            q = r - base;
                        }
                    }
                }
            }
            let live_from = base + n - a.live(s, c1);
            let Some(b) = best else {
                break (!is_final && live_from < base + n).then_some(live_from);
            };
            if is_final || live_from > b.start {
                match self.settle(allow, hay, base, b, out, !is_final) {
                    Some(r) => {
                        best = None;
                        s = ROOT;
                        q = r - base;
                        continue;
                    }
                    None => break Some(b.start),
                }
            }
            break Some(live_from);
        };
        if is_final {
            (s, c1, c2, best) = (ROOT, 0, 0, None);
        }
        (*state, *p1, *p2, *best_kept) = (s, c1, c2, best);
        *cursor = hold.unwrap_or(base + n);
        hold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(terms: &[&str]) -> KeywordSet {
        set_with(terms, &AllowSet::default())
    }

    fn set_with(terms: &[&str], allow: &AllowSet) -> KeywordSet {
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
                        whole_words: false,
                    },
                )
            })
            .collect();
        KeywordSet::build(&with, allow).expect("builds")
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
    fn whole_word_terms_need_edges() {
        let none = AllowSet::default();
        let terms: Vec<String> = ["ass", "ass炸", "fo", "foo bar"]
            .iter()
            .map(|t| (*t).to_owned())
            .collect();
        let ks = build_terms_whole(&terms, &none);
        let found = |text: &str| run(&ks, &none, text, true).0;
        assert_eq!(found("ass"), vec![(0, 3)]);
        assert_eq!(found("an ass."), vec![(3, 6)]);
        assert_eq!(found("class"), vec![]);
        assert_eq!(found("assistant"), vec![]);
        assert_eq!(found("ass2 2ass"), vec![]);
        // A CJK character is an edge; a term ending in one checks its start only.
        assert_eq!(found("炸ass炸"), vec![(3, 9)]);
        assert_eq!(found("class炸x"), vec![]);
        assert_eq!(found("ass炸x"), vec![(0, 6)]);
        // The longest match fails its edge: the longest shorter term from its start that
        // passes is the match; with none, the search goes on one character after its start.
        assert_eq!(found("foo barn"), vec![]);
        assert_eq!(found("fo foo bar!"), vec![(0, 2), (3, 10)]);
        let nested: Vec<String> = ["fuck", "fuck you", "fuck you all"]
            .iter()
            .map(|t| (*t).to_owned())
            .collect();
        let ks2 = build_terms_whole(&nested, &none);
        let found2 = |text: &str| run(&ks2, &none, text, true).0;
        assert_eq!(found2("fuck yourself"), vec![(0, 4)]);
        assert_eq!(found2("fuck you allx"), vec![(0, 8)]);
        assert_eq!(found2("fuck you all!"), vec![(0, 12)]);
        assert_eq!(found2("fuckyou all"), vec![]);
        // Read piece by piece, the same.
        let mut bufs = DrainBufs::default();
        let mut held = String::new();
        let mut cursor = 0;
        let mut hits = Vec::new();
        for piece in ["fu", "ck y", "ou", "rself"] {
            held.push_str(piece);
            ks2.drain(&none, &held, 0, &mut cursor, false, &mut bufs);
            hits.extend(bufs.hits.iter().map(|h| (h.start, h.end)));
        }
        ks2.drain(&none, &held, 0, &mut cursor, true, &mut bufs);
        hits.extend(bufs.hits.iter().map(|h| (h.start, h.end)));
        assert_eq!(hits, vec![(0, 4)]);
        // Open text: a match at the end waits for the next character.
        assert_eq!(run(&ks, &none, "an ass", false), (vec![], Some(3)));
        // The same set without `whole_words` matches inside words.
        let sub = build_terms(&terms);
        assert_eq!(run(&sub, &none, "class", true).0, vec![(2, 5)]);
        // Streamed in any cuts: the same, and the byte before a held match is kept.
        for text in ["xx ass yy", "classy ass", "ab assistant ass"] {
            let whole = run(&ks, &none, text, true).0;
            for cut in 0..=text.len() {
                assert_eq!(
                    streamed(&ks, &none, text, &[cut]),
                    whole,
                    "{text:?} cut at {cut}"
                );
            }
        }
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
        let allow = AllowSet::build(vec!["炸弹鱼".into()]).expect("builds");
        let ks = set_with(&["炸弹", "鱼翅"], &allow);
        assert_eq!(
            ks.allowable,
            [true, false],
            "炸弹 is inside 炸弹鱼, 鱼翅 is not"
        );
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

    /// The module documentation's rules, the slow way: at each search position the
    /// leftmost-longest match, suppressed by an allow phrase containing it; with open text
    /// (`!is_final`) nothing is decided while a position at or before the match's start could
    /// still grow into a term, or an allow phrase that could contain it could still complete.
    fn naive(
        terms: &[String],
        allow: &[String],
        text: &str,
        is_final: bool,
    ) -> (Vec<(usize, usize)>, Option<usize>) {
        naive_with(terms, allow, false, text, is_final)
    }

    /// [`naive`], with every term's category `whole_words` when `whole`: a match whose first
    /// (last) byte is an ASCII letter or digit is passed over when one comes right before
    /// (after) it, and with open text it waits for the character after it.
    fn naive_with(
        terms: &[String],
        allow: &[String],
        whole: bool,
        text: &str,
        is_final: bool,
    ) -> (Vec<(usize, usize)>, Option<usize>) {
        let starts: Vec<usize> = (0..=text.len())
            .filter(|&p| text.is_char_boundary(p))
            .collect();
        // `text[p..]` is a proper prefix of some phrase in `set`.
        let grows = |set: &[String], p: usize| {
            let rest = &text[p..];
            !is_final
                && set
                    .iter()
                    .any(|t| t.len() > rest.len() && t.starts_with(rest))
        };
        let (mut hits, mut cursor) = (Vec::new(), 0);
        loop {
            let live = starts
                .iter()
                .copied()
                .find(|&p| p >= cursor && p < text.len() && grows(terms, p));
            let m = starts
                .iter()
                .copied()
                .filter(|&p| p >= cursor)
                .find_map(|p| {
                    let e = terms
                        .iter()
                        .filter(|t| text[p..].starts_with(t.as_str()))
                        .map(|t| p + t.len())
                        .max()?;
                    Some((p, e))
                });
            let Some((ms, me)) = m else {
                return (hits, live);
            };
            if live.is_some_and(|l| l <= ms) {
                return (hits, live);
            }
            // Candidates at `ms`, longest first: the longest that is neither passed over for
            // an allow phrase nor fails a whole-word edge is the match.
            let mut ends: Vec<usize> = terms
                .iter()
                .filter(|t| text[ms..].starts_with(t.as_str()))
                .map(|t| ms + t.len())
                .collect();
            ends.sort_unstable_by(|a, b| b.cmp(a));
            debug_assert_eq!(ends[0], me);
            // A match passed over: the search goes on one character after its start.
            let after_start = |ms: usize| starts.iter().copied().find(|&p| p > ms);
            let b = text.as_bytes();
            let word = |x: u8| x.is_ascii_alphanumeric();
            let mut found = None;
            for &me in &ends {
                let contains = starts.iter().any(|&a| {
                    a <= ms
                        && allow
                            .iter()
                            .any(|w| text[a..].starts_with(w.as_str()) && a + w.len() >= me)
                });
                if contains {
                    break;
                }
                let pending = starts.iter().any(|&a| {
                    a <= ms
                        && allow.iter().any(|w| {
                            let rest = &text[a..];
                            a + w.len() >= me
                                && grows(std::slice::from_ref(w), a)
                                && w.starts_with(rest)
                        })
                });
                if pending {
                    return (hits, Some(ms));
                }
                let before = whole && word(b[ms]) && ms > 0 && word(b[ms - 1]);
                let after_open = whole && word(b[me - 1]) && me == b.len() && !is_final;
                if after_open && !before {
                    return (hits, Some(ms));
                }
                let after = whole && word(b[me - 1]) && b.get(me).is_some_and(|&x| word(x));
                if before || after {
                    continue;
                }
                found = Some(me);
                break;
            }
            let Some(me) = found else {
                cursor = after_start(ms).unwrap_or(text.len());
                continue;
            };
            hits.push((ms, me));
            cursor = me;
        }
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
            // Keep the context before the cursor, as the scanner does.
            let mut keep = cursor.saturating_sub(ks.context(allow)).max(base);
            while !text.is_char_boundary(keep) {
                keep -= 1;
            }
            base = keep.min(end);
        }
        hits
    }

    fn build_terms(terms: &[String]) -> KeywordSet {
        build_terms_with(terms, &AllowSet::default())
    }

    /// Distinct terms, all of a `whole_words` category.
    fn build_terms_whole(terms: &[String], allow: &AllowSet) -> KeywordSet {
        build_terms_of(terms, allow, true)
    }

    fn build_terms_with(terms: &[String], allow: &AllowSet) -> KeywordSet {
        build_terms_of(terms, allow, false)
    }

    fn build_terms_of(terms: &[String], allow: &AllowSet, whole_words: bool) -> KeywordSet {
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
                        whole_words,
                    },
                )
            })
            .collect();
        KeywordSet::build(&with, allow).expect("builds")
    }

    use proptest::prelude::*;

    fn small_text(max: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec!["a", "b", "c", "炸", "弹", "鱼", "𠀀"]),
            0..max,
        )
        .prop_map(|v| v.concat())
    }

    /// Text over 24 characters (ASCII, CJK, one outside the BMP): with enough terms, states
    /// get more edges than a scanned run holds, so hashed runs are exercised too.
    fn wide_text(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec![
                "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "炸", "弹", "鱼", "制",
                "造", "毒", "品", "枪", "支", "赌", "博", "𠀀",
            ]),
            len,
        )
        .prop_map(|v| v.concat())
    }

    /// Mostly ASCII letters and spaces, with an occasional CJK character.
    fn ascii_text(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec!["a", "b", "c", "d", "e", "a", "e", " ", "炸"]),
            len,
        )
        .prop_map(|v| v.concat())
    }

    #[test]
    fn ascii_table_only_for_few_ascii_characters() {
        let few = build_terms(&["tok".into(), "okay".into(), "炸弹".into()]);
        assert_eq!(few.auto.as_ref().map(|a| a.ascii_n), Some(5));
        // 60 distinct ASCII characters: the table would be 60³ entries, so there is none,
        // and matching goes through the filters as before.
        let wide: Vec<String> = (0x21u8..0x5D)
            .map(|b| format!("{}{}x", b as char, b as char))
            .collect();
        let ks = build_terms(&wide);
        assert_eq!(ks.auto.as_ref().map(|a| a.ascii_n), Some(0));
        let text = "x !!x ##x zz ((x";
        assert_eq!(
            run(&ks, &AllowSet::default(), text, true).0,
            reference(&wide, text)
        );
    }

    /// One-shot and streamed in `cuts`, the matches of `terms` in `text` are aho-corasick's.
    fn equals_reference(terms: &[String], text: &str, cuts: &[usize]) -> Result<(), TestCaseError> {
        let ks = build_terms(terms);
        let none = AllowSet::default();
        let want = reference(terms, text);
        prop_assert_eq!(run(&ks, &none, text, true).0, want.clone());
        prop_assert_eq!(streamed(&ks, &none, text, cuts), want);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Many terms over a wide alphabet: the same matches as aho-corasick, one-shot and
        /// streamed.
        #[test]
        fn wide_fan_out_equals_aho_corasick(
            terms in prop::collection::vec(wide_text(1..5), 1..300),
            text in wide_text(0..120),
            cuts in prop::collection::vec(0usize..400, 0..12),
        ) {
            equals_reference(&terms, &text, &cuts)?;
        }

        /// A dense library of ASCII words (every pair and most triples of its letters begin a
        /// term, as in a list of English words): the direct table for depth-two states gives
        /// aho-corasick's matches, around the odd non-ASCII character too.
        #[test]
        fn dense_ascii_library_equals_aho_corasick(
            terms in prop::collection::vec(ascii_text(1..6), 1..200),
            text in ascii_text(0..150),
            cuts in prop::collection::vec(0usize..400, 0..12),
        ) {
            equals_reference(&terms, &text, &cuts)?;
        }

        /// Open text: the matches reported and the position held are those of the rules in the
        /// module documentation, computed naively.
        #[test]
        fn open_text_equals_naive_rules(
            terms in prop::collection::vec(wide_text(1..5), 1..60),
            allow in prop::collection::vec(wide_text(1..7), 0..4),
            text in wide_text(0..40),
        ) {
            let allow_set = AllowSet::build(allow.clone()).expect("builds");
            let ks = build_terms_with(&terms, &allow_set);
            prop_assert_eq!(run(&ks, &allow_set, &text, false), naive(&terms, &allow, &text, false));
            prop_assert_eq!(run(&ks, &allow_set, &text, true), naive(&terms, &allow, &text, true));
        }

        /// The automaton finds exactly aho-corasick's leftmost-longest matches, one-shot and
        /// streamed in any cuts.
        #[test]
        fn automaton_equals_aho_corasick(
            terms in prop::collection::vec(small_text(5).prop_filter("non-empty", |t| !t.is_empty()), 1..12),
            text in small_text(40),
            cuts in prop::collection::vec(0usize..160, 0..8),
        ) {
            equals_reference(&terms, &text, &cuts)?;
        }

        /// Whole-word terms over letters, spaces and a CJK character, with allow phrases: the
        /// matches and the position held are the naive rules', and any cuts of a stream give
        /// the one-shot matches.
        #[test]
        fn whole_words_equal_naive_rules(
            terms in prop::collection::vec(ascii_text(1..5), 1..40),
            allow in prop::collection::vec(ascii_text(2..7), 0..3),
            text in ascii_text(0..60),
            cuts in prop::collection::vec(0usize..80, 0..8),
        ) {
            let terms: Vec<String> = terms.into_iter().filter(|t| !t.trim().is_empty()).collect();
            prop_assume!(!terms.is_empty());
            let allow_set = AllowSet::build(allow.clone()).expect("builds");
            let ks = build_terms_whole(&terms, &allow_set);
            let whole = run(&ks, &allow_set, &text, true);
            prop_assert_eq!(&whole, &naive_with(&terms, &allow, true, &text, true));
            prop_assert_eq!(
                run(&ks, &allow_set, &text, false),
                naive_with(&terms, &allow, true, &text, false)
            );
            prop_assert_eq!(streamed(&ks, &allow_set, &text, &cuts), whole.0);
        }

        /// With allow phrases, streamed findings equal one-shot findings.
        #[test]
        fn streamed_equals_whole_with_allow(
            terms in prop::collection::vec(small_text(4).prop_filter("non-empty", |t| !t.is_empty()), 1..10),
            allow in prop::collection::vec(small_text(6).prop_filter("non-empty", |t| !t.is_empty()), 0..4),
            text in small_text(40),
            cuts in prop::collection::vec(0usize..160, 0..8),
        ) {
            let allow = AllowSet::build(allow).expect("builds");
            let ks = build_terms_with(&terms, &allow);
            let whole = run(&ks, &allow, &text, true).0;
            prop_assert_eq!(streamed(&ks, &allow, &text, &cuts), whole);
        }

    }
}

//! The keyword automaton's steps over CJK runs as a double array: a node per state whose
//! string is all BMP characters beyond ASCII, the node of a state's successor along character
//! code `k` at `base + k`, owned by the state when that cell's `check` names it.
//!
//! The automaton of `keywords.rs` steps a Chinese character through filters of term
//! beginnings at depth one and two and, deeper or past them, a probe of the state's edges and
//! its failure chain: about 60 of the 135 instructions a character of the policy bench's
//! realistic text cost (bench/README.md item 35). Here a step is two loads from one array
//! (the current node's `base`, the target's `check`), a failure link a third, whatever the
//! depth: the layout of a character-wise double-array Aho-Corasick. The one-pass walk
//! (`onepass.rs`) reads runs of CJK through it ([`CjkDa::step`]), carrying a node instead of
//! a state, and reads the automaton's state from the node where a term ends or a match is
//! held (the match decision needs the state). It looks a state's node up in the map
//! (`state_map.rs`) only where a settled match sent the walk back or a run begins in a state
//! of other text; a state spelling text that ends in ASCII has none ([`CjkDa::row_at`]), and
//! one step from the root or from a state of other text leads to the root or a node at depth
//! one, found without the map ([`CjkDa::node_after`]). Those lookups, 512 KiB of slots for
//! 10,000 terms, had cost the uniform worst case 13 % (bench/README.md item 37).
//!
//! The array holds every such state or does not exist: a library with more than
//! [`MAX_NODES`] of them (the 1M-term bench's) reads Chinese through the automaton's own
//! step. Like the ASCII table (`ascii_dfa.rs`), it sits beside the automaton rather than
//! replacing it: the automaton's state ids, which the decision logic and the streams' saved
//! states use, stay as they are.
//!
//! Hand-written: the double-array crates (daachorse) build their own automaton over the
//! terms and expose neither its states nor, for a stream, how far back a match could begin.

use std::collections::BTreeSet;

use super::ascii_dfa::{max_cells, NO_ROW};
use super::keywords::{Automaton, OUT, ROOT};
use super::state_map::StateMap;

/// Most nodes the array may hold: every CJK state of a library ten times the policy bench's
/// realistic one (its 10,000 terms have 33,700 CJK states; 16 bytes a node and about as many
/// free cells between them).
const MAX_NODES: usize = 1 << 20;

/// A cell of the array: the base of the node's successors, with `OUT` when a term ends at
/// the node; the node that owns the cell (`FREE`: none); the node of its failure link; a bit
/// per successor's code modulo 32. The bits rule out most characters a node has no successor
/// along without a load of the cell they would lead to, which for a node of few successors
/// lies anywhere in the array and is seldom in cache (from depth one, most characters: the
/// automaton's pair filter does the same).
#[derive(Clone, Copy)]
struct Node {
    base: u32,
    check: u32,
    fail: u32,
    kids: u32,
}

const FREE: u32 = u32::MAX;

/// See the module documentation. Node 0 is the root.
pub(super) struct CjkDa {
    /// Code of each character from `lo` (0: no CJK state has an edge along it).
    codes: Box<[u16]>,
    lo: u32,
    nodes: Box<[Node]>,
    /// The automaton state (flagged) of each node.
    states: Box<[u32]>,
    /// The root's successor by code, with `OUT` when a term ends there (0: none): a step from
    /// the root, and every failed step of a node at depth one, reads this small table rather
    /// than the root's row in the array.
    root_next: Box<[u32]>,
    /// The node of each state that has one.
    rows: StateMap,
    /// By BMP character, what a CJK run of the policy's normalizer reads: the code of a
    /// character that it reads as itself (`code`, 0 included), `MAPPED` for one it reads as
    /// another (a traditional form), `NOT_RUN` for one that ends the run. One load for the
    /// normalizer's run test and the code both (`fold_runs`; `None` before it).
    runs: Option<Box<[u16; 0x1_0000]>>,
}

/// See [`CjkDa::runs`]; codes stay below.
pub(super) const MAPPED: u16 = 0xFFFE;
pub(super) const NOT_RUN: u16 = 0xFFFF;

/// Whether `c` is a character the array steps along: the BMP beyond ASCII.
fn in_alphabet(c: u32) -> bool {
    (0x80..0x1_0000).contains(&c)
}

impl CjkDa {
    /// The array of `a`; `None` when no term has a BMP character beyond ASCII or the array
    /// would hold more than the budget's nodes.
    pub(super) fn build(a: &Automaton) -> Option<CjkDa> {
        let max_nodes = max_cells().min(MAX_NODES);
        // The nodes: states reached from the root along such characters only, breadth first.
        // A state's failure link spells a suffix of its string: such characters too.
        let mut states: Vec<u32> = vec![ROOT];
        // The successors of `states[i]`, (character, state) sorted by character, are
        // `kids[kid_start[i]..kid_start[i + 1]]`, and `states[kid_start[i] + 1..]` likewise.
        let mut kids: Vec<(u32, u32)> = Vec::new();
        let mut kid_start: Vec<usize> = vec![0];
        let mut chars: Vec<u32> = Vec::new();
        let mut k = 0;
        while k < states.len() {
            let from = kids.len();
            kids.extend(
                a.edges(states[k] as usize)
                    .filter(|&(_, c, _)| in_alphabet(c))
                    .map(|(_, c, t)| (c, t & !OUT)),
            );
            kids[from..].sort_unstable();
            for &(c, t) in &kids[from..] {
                states.push(t);
                chars.push(c);
            }
            kid_start.push(kids.len());
            if states.len() > max_nodes {
                return None;
            }
            k += 1;
        }
        if states.len() == 1 {
            return None;
        }
        chars.sort_unstable();
        chars.dedup();
        let lo = chars[0];
        let mut codes = vec![0u16; (chars[chars.len() - 1] - lo + 1) as usize];
        for (i, &c) in chars.iter().enumerate() {
            // At most 0xFF80 characters: the codes fit.
            codes[(c - lo) as usize] = (i + 1) as u16;
        }
        let code = |c: u32| u32::from(codes[(c - lo) as usize]);

        // Place each state's successors at the first base where all their cells are free:
        // the free cells below the end, in order, are tried as the first successor's cell;
        // past the end every cell is free.
        let vacant = Node {
            base: 0,
            check: FREE,
            fail: 0,
            kids: 0,
        };
        // Node 0 is the root: taken.
        let mut nodes: Vec<Node> = vec![Node { check: 0, ..vacant }];
        let mut free: BTreeSet<usize> = BTreeSet::new();
        let mut pos: Vec<u32> = vec![0; states.len()];
        for i in 0..states.len() {
            let n = pos[i];
            let kids = &kids[kid_start[i]..kid_start[i + 1]];
            let Some(&(c0, _)) = kids.first() else {
                continue;
            };
            let first = code(c0) as usize;
            let fits = |b: usize| {
                kids.iter().all(|&(c, _)| {
                    nodes
                        .get(b + code(c) as usize)
                        .is_none_or(|x| x.check == FREE)
                })
            };
            let base = free
                .range(first..)
                .map(|&p| p - first)
                .find(|&b| fits(b))
                .unwrap_or(nodes.len().max(first) - first);
            nodes[n as usize].base = base as u32;
            for (j, &(c, _)) in kids.iter().enumerate() {
                nodes[n as usize].kids |= 1 << (code(c) & 31);
                let t = base + code(c) as usize;
                if t >= nodes.len() {
                    free.extend(nodes.len()..t);
                    nodes.resize(t + 1, vacant);
                } else {
                    free.remove(&t);
                }
                nodes[t].check = n;
                pos[kid_start[i] + 1 + j] = t as u32;
            }
        }
        // Every base plus every code lands inside the array: a step needs no length test.
        let top = nodes.iter().map(|x| x.base as usize).max().unwrap_or(0) + chars.len() + 1;
        if nodes.len() < top {
            nodes.resize(top, vacant);
        }

        let mut da = CjkDa {
            codes: codes.into_boxed_slice(),
            lo,
            nodes: Vec::new().into_boxed_slice(),
            states: vec![ROOT; nodes.len()].into_boxed_slice(),
            root_next: vec![0; chars.len() + 1].into_boxed_slice(),
            rows: StateMap::new(
                states.len(),
                states.iter().copied().zip(pos.iter().copied()),
            ),
            runs: None,
        };
        for (&s, &n) in states.iter().zip(&pos) {
            let f = a.flagged(s);
            da.states[n as usize] = f;
            let node = &mut nodes[n as usize];
            // Bases stay below 2^31 (the array holds at most `MAX_NODES` nodes).
            node.base |= f & OUT;
            node.fail = if s == ROOT {
                0
            } else {
                // A suffix of a string of such characters: it has a node.
                da.row_of(a.fail(s))
            };
        }
        let root_base = nodes[0].base & !OUT;
        for k in 1..da.root_next.len() as u32 {
            if let Some(x) = nodes.get((root_base + k) as usize) {
                if x.check == 0 {
                    da.root_next[k as usize] = (root_base + k) | (x.base & OUT);
                }
            }
        }
        da.nodes = nodes.into_boxed_slice();
        Some(da)
    }

    /// The node of state `s` (flagged or not), or `NO_ROW` (its string is not all such
    /// characters).
    #[inline]
    pub(super) fn row_of(&self, s: u32) -> u32 {
        self.rows.get(s)
    }

    /// The node of state `s` (flagged or not), just reached by a step along the character
    /// of code `k`: at the root or the root's successor along `k` without the map's lookup.
    #[inline]
    pub(super) fn node_after(&self, s: u32, k: u32) -> u32 {
        let d1 = self.root_next.get(k as usize).map_or(0, |&t| t & !OUT);
        self.rows.after(s, d1, |d1| self.states[d1 as usize])
    }

    /// [`CjkDa::row_of`] for state `s`, which spells text ending in `p1`: none without the
    /// map's lookup when that is ASCII.
    #[inline]
    pub(super) fn row_at(&self, s: u32, p1: u32) -> u32 {
        if s & !OUT != ROOT && p1 < 0x80 {
            return NO_ROW;
        }
        self.rows.get(s)
    }

    /// Fill [`CjkDa::runs`] from the normalizer's run test (`CharTable::run_cjk_of`): what
    /// a CJK run reads for each BMP character beyond U+0800, `None` when it ends the run.
    pub(super) fn fold_runs(&mut self, run_char: impl Fn(u32) -> Option<u32>) {
        let mut runs: Box<[u16; 0x1_0000]> = match vec![NOT_RUN; 0x1_0000].try_into() {
            Ok(t) => t,
            Err(_) => return,
        };
        for cp in 0x800..0x1_0000u32 {
            runs[cp as usize] = match run_char(cp) {
                // At most 0xFF80 codes: below `MAPPED`.
                Some(m) if m == cp => self.code(cp) as u16,
                Some(_) => MAPPED,
                None => NOT_RUN,
            };
        }
        self.runs = Some(runs);
    }

    /// See [`CjkDa::runs`].
    #[inline(always)]
    pub(super) fn runs(&self) -> Option<&[u16; 0x1_0000]> {
        self.runs.as_deref()
    }

    /// The code of BMP character `c` (0: no CJK state has an edge along it).
    #[inline(always)]
    pub(super) fn code(&self, c: u32) -> u32 {
        self.codes
            .get(c.wrapping_sub(self.lo) as usize)
            .map_or(0, |&k| u32::from(k))
    }

    /// The node after reading the character of code `k` at node `n`: its successor if it has
    /// one, else on down the failure chain; and whether a term ends there.
    #[inline(always)]
    pub(super) fn step(&self, mut n: u32, k: u32) -> (u32, bool) {
        if k == 0 {
            return (0, false);
        }
        loop {
            if n == 0 {
                let t = self.root_next.get(k as usize).copied().unwrap_or(0);
                return (t & !OUT, t & OUT != 0);
            }
            let at = &self.nodes[n as usize];
            if at.kids >> (k & 31) & 1 != 0 {
                let t = (at.base & !OUT).wrapping_add(k);
                let to = &self.nodes[t as usize];
                if to.check == n {
                    return (t, to.base & OUT != 0);
                }
            }
            n = at.fail;
        }
    }

    /// The automaton state (flagged) of node `n`.
    #[inline(always)]
    pub(super) fn state(&self, n: u32) -> u32 {
        self.states[n as usize]
    }

    pub(super) fn memory_usage(&self) -> usize {
        self.runs
            .as_ref()
            .map_or(0, |r| std::mem::size_of_val(&**r))
            + 2 * self.codes.len()
            + std::mem::size_of_val(&*self.nodes)
            + std::mem::size_of_val(&*self.states)
            + std::mem::size_of_val(&*self.root_next)
            + self.rows.memory_usage()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::ascii_dfa::tests::automaton;
    use super::super::ascii_dfa::NO_ROW;
    use super::super::keywords::{Automaton, OUT, ROOT};
    use super::*;

    /// Reading `text` through the array (back to the automaton where the state is not all
    /// such characters, onto a node again where it is) gives the automaton's state at every
    /// step, and says a term ends where the automaton's state is flagged.
    fn array_walk_equals_steps(a: &Automaton, text: &str) -> Result<(), TestCaseError> {
        let d = a.cjk_da().expect("terms have CJK characters");
        let (mut s, mut n) = (ROOT, 0);
        for c in text.chars() {
            s = a.step(s, c as u32);
            n = if n != NO_ROW && in_alphabet(c as u32) {
                let (t, ends) = d.step(n, d.code(c as u32));
                prop_assert_eq!(d.state(t), s, "node {}", t);
                prop_assert_eq!(ends, s & OUT != 0);
                t
            } else {
                d.row_of(s)
            };
            if n != NO_ROW {
                prop_assert_eq!(d.state(n), s);
            } else {
                // Only a state whose string has ASCII has no node.
                prop_assert!(s != ROOT);
            }
        }
        Ok(())
    }

    fn term() -> impl Strategy<Value = String> {
        "[炸弹鱼翅a]{1,6}"
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn nodes_are_the_automaton_steps(
            terms in prop::collection::vec(term(), 1..12),
            text in "[炸弹鱼翅虾a ]{0,60}",
        ) {
            let a = automaton(&terms, usize::MAX);
            if a.cjk_da().is_some() {
                array_walk_equals_steps(&a, &text)?;
            }
        }
    }

    #[test]
    fn nodes_are_every_cjk_state_or_none() {
        let terms: Vec<String> = ["炸弹", "弹药", "a炸", "ab"]
            .iter()
            .map(|t| t.to_string())
            .collect();
        // CJK states: the root, 炸, 炸弹, 弹, 弹药; "a炸" and the ASCII ones are not.
        let a = automaton(&terms, usize::MAX);
        let d = a.cjk_da().expect("array");
        let a炸 = a.step(a.step(ROOT, u32::from(b'a')), '炸' as u32);
        assert_eq!(d.row_of(a炸), NO_ROW);
        // 炸弹 has no successor; along 药 its failure link 弹 has: the array follows it.
        let zd = d.step(d.step(0, d.code('炸' as u32)).0, d.code('弹' as u32));
        assert!(zd.1, "炸弹 ends a term");
        let (t, ends) = d.step(zd.0, d.code('药' as u32));
        assert!(ends);
        let steps = |s: &str| s.chars().fold(ROOT, |s, c| a.step(s, c as u32));
        assert_eq!(d.state(t), steps("炸弹药"));
        assert_eq!(d.state(t) & !OUT, steps("弹药") & !OUT);
        // A character no CJK state has an edge along leads back to the root.
        assert_eq!(d.step(zd.0, d.code('虾' as u32)), (0, false));
        // Five nodes fit a budget of five, not of four; no CJK in any term: no array.
        assert!(automaton(&terms, 5).cjk_da().is_some());
        assert!(automaton(&terms, 4).cjk_da().is_none());
        assert!(automaton(&["ab".to_owned()], usize::MAX).cjk_da().is_none());
    }
}

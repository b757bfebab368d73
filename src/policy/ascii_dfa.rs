//! The keyword automaton's steps over ASCII text as one table: a row per state whose string
//! is all ASCII, a column per ASCII character some term uses, each cell the state that reading
//! the character leads to, failure links already followed.
//!
//! English runs through the automaton of `keywords.rs` cost a filter test or a table index
//! at shallow states and, deeper, a probe of the state's edges and often its failure chain:
//! the words of a text are prefixes of many multi-word terms (`the …`), so most letters step
//! from a deep state. Here every ASCII step is one load from the current row, whatever the
//! depth. The one-pass walk (`onepass.rs`) reads runs of English words through it
//! ([`AsciiDfa::entry`]), carrying a row offset instead of a state, and goes back to the
//! automaton's own step when a cell says a term ends (the match decision needs the state) or
//! when the text is not ASCII.
//!
//! The table holds every ASCII state or does not exist: a library whose ASCII states need more
//! than [`MAX_CELLS`] (the 1M-term bench's 300,000 English words) reads English through the
//! automaton's own shallow tables, which stay in cache where a table cut to its shallow rows
//! did not (its 1 MiB scan took 67 against 54 ms with one of 4 MiB).
//!
//! Hand-written: the aho-corasick crate's DFA runs over raw bytes and does not share state
//! ids with the character-level automaton the rest of the walk uses.

use super::keywords::{Automaton, OUT, ROOT};
use super::state_map::StateMap;

/// A row offset that stands for no row: the walk steps through the automaton.
pub(super) const NO_ROW: u32 = u32::MAX;
/// Most cells the table may hold (8 MiB): every ASCII state of a 10,000-term library whose
/// 3,000 English terms are phrases of one to three words (the policy bench's realistic
/// library: 45,029 states of 29 cells, 5.2 MiB; the load bench's 5,000 English words: 27,459
/// of 28). With 4 MiB the realistic library had no table and its English read at 109–118
/// against 199–221 MB/s (bench/README.md item 34).
const MAX_CELLS: usize = 1 << 21;
/// Class of an ASCII character no term uses: every state goes back to the root along it.
const UNUSED: u8 = 1;

/// See the module documentation. A row is `stride` cells: the row's own state (flagged), the
/// root's offset (the `UNUSED` column), then one cell per used character; a cell holds the
/// target row's offset, with `OUT` when a term ends there.
pub(super) struct AsciiDfa {
    class: [u8; 128],
    /// The class of each byte as the policy's normalizer writes it in a word, once
    /// [`AsciiDfa::fold_words`] has filled it (`folded`): the case fold and the class in one
    /// load.
    word_class: [u8; 256],
    folded: bool,
    cells: Box<[u32]>,
    /// The row offset of each state that has a row.
    rows: StateMap,
}

#[cfg(test)]
thread_local! {
    /// Tests shrink the cell budget to compile libraries without the table.
    pub(super) static TEST_MAX_CELLS: std::cell::Cell<usize> = const { std::cell::Cell::new(MAX_CELLS) };
}

pub(super) fn max_cells() -> usize {
    #[cfg(test)]
    return TEST_MAX_CELLS.with(|c| c.get());
    #[cfg(not(test))]
    MAX_CELLS
}

impl AsciiDfa {
    /// The table of `a`; `None` when no term has an ASCII character or the table would hold
    /// more than the budget's cells.
    pub(super) fn build(a: &Automaton) -> Option<AsciiDfa> {
        let used: Vec<u8> = (0..0x80u8).filter(|&c| a.uses(u32::from(c))).collect();
        if used.is_empty() {
            return None;
        }
        let stride = used.len() + 2;
        let mut class = [UNUSED; 128];
        for (k, &c) in used.iter().enumerate() {
            class[usize::from(c)] = (k + 2) as u8;
        }
        let max_rows = max_cells() / stride;
        // The rows: states reached from the root along ASCII characters only, breadth first.
        // A state's failure link spells a shorter suffix of its string: ASCII too, and
        // shallower, so its row is filled before the state's.
        let mut rows: Vec<u32> = vec![ROOT];
        let mut k = 0;
        while k < rows.len() {
            for (_, c, t) in a.edges(rows[k] as usize) {
                if c < 0x80 {
                    rows.push(t & !OUT);
                }
            }
            if rows.len() > max_rows {
                return None;
            }
            k += 1;
        }
        let mut dfa = AsciiDfa {
            class,
            word_class: [0; 256],
            folded: false,
            cells: vec![0; rows.len() * stride].into_boxed_slice(),
            rows: StateMap::new(
                rows.len(),
                rows.iter()
                    .enumerate()
                    .map(|(r, &s)| (s, (r * stride) as u32)),
            ),
        };
        let mut goto = Vec::new();
        for (r, &s) in rows.iter().enumerate() {
            let row = r * stride;
            dfa.cells[row] = a.flagged(s);
            dfa.cells[row + 1] = 0;
            goto.clear();
            goto.extend(a.edges(s as usize).filter(|&(_, c, _)| c < 0x80));
            let fail = (s != ROOT).then(|| dfa.row_of(a.fail(s)));
            for (k, &c) in used.iter().enumerate() {
                let col = k + 2;
                dfa.cells[row + col] = match goto.iter().find(|&&(_, gc, _)| gc == u32::from(c)) {
                    // Every ASCII state has a row.
                    Some(&(_, _, t)) => dfa.row_of(t) | (t & OUT),
                    // The failure link's row is filled (see above): its cell is the step.
                    None => fail.map_or(0, |f| dfa.cells[f as usize + col]),
                };
            }
        }
        Some(dfa)
    }

    /// The row offset of state `s` (flagged or not), or `NO_ROW` (not all ASCII).
    #[inline]
    pub(super) fn row_of(&self, s: u32) -> u32 {
        self.rows.get(s)
    }

    /// [`AsciiDfa::row_of`] for state `s`, reached by a step along ASCII character `c`: the
    /// root, or the root's successor along `c`, without the map's lookup.
    #[inline]
    pub(super) fn row_after(&self, s: u32, c: u8) -> u32 {
        self.rows
            .after(s, self.entry(0, c) & !OUT, |d1| self.state(d1))
    }

    /// [`AsciiDfa::row_of`] for state `s`, which spells text ending in `p1`: none without the
    /// map's lookup when that is not ASCII.
    #[inline]
    pub(super) fn row_at(&self, s: u32, p1: u32) -> u32 {
        if s & !OUT != ROOT && p1 >= 0x80 {
            return NO_ROW;
        }
        self.rows.get(s)
    }

    /// The cell of row offset `off` for ASCII character `c`: the next row's offset, with `OUT`
    /// set when a term ends there.
    #[inline(always)]
    pub(super) fn entry(&self, off: u32, c: u8) -> u32 {
        self.cell(off, self.class[usize::from(c & 0x7F)])
    }

    /// Fill [`AsciiDfa::word_class`] from the normalizer's word bytes (`CharTable::word_byte`:
    /// the byte a word byte is written as, 0 for any other byte).
    pub(super) fn fold_words(&mut self, word_byte: impl Fn(u8) -> u8) {
        for (b, class) in (0..=u8::MAX).zip(self.word_class.iter_mut()) {
            let w = word_byte(b);
            *class = if w == 0 {
                0
            } else {
                self.class[usize::from(w & 0x7F)]
            };
        }
        self.folded = true;
    }

    /// Whether [`AsciiDfa::fold_words`] has filled the word bytes' classes.
    pub(super) fn folded(&self) -> bool {
        self.folded
    }

    /// The column of word byte `b` ([`AsciiDfa::fold_words`]).
    #[inline(always)]
    pub(super) fn word_class(&self, b: u8) -> u8 {
        self.word_class[usize::from(b)]
    }

    /// The cell of row offset `off` in column `class`.
    #[inline(always)]
    pub(super) fn cell(&self, off: u32, class: u8) -> u32 {
        self.cells[off as usize + usize::from(class)]
    }

    /// The automaton state (flagged) of row offset `off` (`OUT` ignored).
    #[inline(always)]
    pub(super) fn state(&self, off: u32) -> u32 {
        self.cells[(off & !OUT) as usize]
    }

    pub(super) fn memory_usage(&self) -> usize {
        4 * self.cells.len() + self.rows.memory_usage() + 128
    }

    /// Rows in the table.
    #[cfg(test)]
    pub(super) fn rows(&self) -> usize {
        let stride = self
            .class
            .iter()
            .copied()
            .max()
            .map_or(2, |m| usize::from(m) + 1);
        self.cells.len() / stride
    }
}

/// Sets the cell budget of the tables built on this thread until dropped.
#[cfg(test)]
pub(super) struct CellBudget;

#[cfg(test)]
impl CellBudget {
    pub(super) fn set(cells: usize) -> CellBudget {
        TEST_MAX_CELLS.with(|c| c.set(cells));
        CellBudget
    }
}

#[cfg(test)]
impl Drop for CellBudget {
    fn drop(&mut self) {
        TEST_MAX_CELLS.with(|c| c.set(MAX_CELLS));
    }
}

#[cfg(test)]
pub(super) mod tests {
    use proptest::prelude::*;

    use super::super::keywords::{Automaton, OUT, ROOT};
    use super::*;

    /// The automaton of `terms`, its tables built under a budget of `cells`.
    pub(in super::super) fn automaton(terms: &[String], cells: usize) -> Automaton {
        let mut v: Vec<&str> = terms.iter().map(String::as_str).collect();
        v.sort_unstable();
        v.dedup();
        let _budget = CellBudget::set(cells);
        Automaton::build(&v).expect("builds")
    }

    /// Reading `text` through the table (back to the automaton where the state is not all
    /// ASCII, onto a row again where it is) gives the automaton's state at every step.
    fn table_walk_equals_steps(a: &Automaton, text: &str) -> Result<(), TestCaseError> {
        let d = a.ascii_dfa().expect("terms have ASCII characters");
        let (mut s, mut off) = (ROOT, 0);
        for c in text.chars() {
            s = a.step(s, c as u32);
            off = if off != NO_ROW && c.is_ascii() {
                let cell = d.entry(off, c as u8);
                prop_assert_eq!(d.state(cell), s, "cell {:#x}", cell);
                cell & !OUT
            } else {
                d.row_of(s)
            };
            if off != NO_ROW {
                prop_assert_eq!(d.state(off), s);
            } else {
                // Only a state that is not all ASCII has no row.
                prop_assert!(!c.is_ascii() || s != ROOT);
            }
        }
        Ok(())
    }

    fn term() -> impl Strategy<Value = String> {
        "[abc 炸]{1,6}".prop_filter("not blank", |t| !t.trim().is_empty())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn cells_are_the_automaton_steps(
            terms in prop::collection::vec(term(), 1..12),
            text in "[abcdZ 炸]{0,60}",
        ) {
            let a = automaton(&terms, MAX_CELLS);
            if a.ascii_dfa().is_some() {
                table_walk_equals_steps(&a, &text)?;
            }
        }
    }

    #[test]
    fn rows_are_every_ascii_state_or_none() {
        let terms: Vec<String> = ["ab", "abc", "b c", "炸弹", "a炸"]
            .iter()
            .map(|t| t.to_string())
            .collect();
        // ASCII states: the root, a, ab, abc, b, "b ", "b c"; "a炸" and the CJK ones are not.
        let a = automaton(&terms, MAX_CELLS);
        let d = a.ascii_dfa().expect("table");
        assert_eq!(d.rows(), 7);
        let a炸 = a.step(a.step(ROOT, u32::from(b'a')), '炸' as u32);
        assert_eq!(d.row_of(a炸), NO_ROW);
        // A row is its state, the unused column, `a b c` and the space: six cells. Seven rows
        // fit in 42 cells, not in 41.
        assert!(automaton(&terms, 42).ascii_dfa().is_some());
        assert!(automaton(&terms, 41).ascii_dfa().is_none());
        // No ASCII in any term: no table.
        assert!(automaton(&["炸弹".to_owned()], MAX_CELLS)
            .ascii_dfa()
            .is_none());
    }

    /// The budget holds the English of a 10,000-term library: 3,000 phrases of two to four
    /// words of three to nine letters, more ASCII states than a table of 2^20 cells (4 MiB)
    /// holds.
    #[test]
    fn a_ten_thousand_term_library_has_its_table() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut word = || -> String {
            let n = 3 + next(7);
            (0..n).map(|_| char::from(b'a' + next(26) as u8)).collect()
        };
        let terms: Vec<String> = (0..3_000)
            .map(|k| {
                let words: Vec<String> = (0..2 + k % 3).map(|_| word()).collect();
                words.join(" ")
            })
            .collect();
        let a = automaton(&terms, MAX_CELLS);
        let d = a
            .ascii_dfa()
            .expect("the budget holds a 10,000-term library's English");
        assert!(d.rows() * 28 > 1 << 20, "{} rows", d.rows());
    }
}

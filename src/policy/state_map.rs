//! Where the automaton's tables (`ascii_dfa.rs`, `cjk_da.rs`) keep a state: a map from
//! automaton state to the table's row or node, for the walk to find its place again where it
//! comes back to a table's text or from a step the table did not take.
//!
//! Hand-written: open addressing over `u32` keys in one array, one probe in the usual case
//! and no hashing state; a `HashMap` costs several times that on a path taken at every match.

use super::ascii_dfa::NO_ROW;
use super::keywords::{OUT, ROOT};

const EMPTY_KEY: u32 = u32::MAX;

/// See the module documentation. The root is always at 0 and never stored.
pub(super) struct StateMap {
    /// (automaton state, place), `EMPTY_KEY`: free.
    slots: Box<[(u32, u32)]>,
    shift: u32,
    /// The largest state stored: any state beyond has no place.
    last_state: u32,
}

impl StateMap {
    /// The map of `(state, place)` pairs, `n` of them at most.
    pub(super) fn new(n: usize, pairs: impl Iterator<Item = (u32, u32)>) -> StateMap {
        let size = (2 * n).max(2).next_power_of_two();
        let mut m = StateMap {
            slots: vec![(EMPTY_KEY, NO_ROW); size].into_boxed_slice(),
            shift: 32 - size.trailing_zeros(),
            last_state: ROOT,
        };
        for (s, place) in pairs {
            let mut i = m.slot(s);
            while m.slots[i].0 != EMPTY_KEY {
                i = (i + 1) & (size - 1);
            }
            m.slots[i] = (s, place);
            m.last_state = m.last_state.max(s);
        }
        m
    }

    #[inline(always)]
    fn slot(&self, s: u32) -> usize {
        (s.wrapping_mul(0x9E37_79B1) >> self.shift) as usize
    }

    /// The place of state `s` (flagged or not): 0 for the root, `NO_ROW` when it has none.
    #[inline]
    pub(super) fn get(&self, s: u32) -> u32 {
        let s = s & !OUT;
        if s == ROOT {
            return 0;
        }
        if s > self.last_state {
            return NO_ROW;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.slot(s);
        loop {
            match self.slots[i] {
                (k, place) if k == s => return place,
                (EMPTY_KEY, _) => return NO_ROW,
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// [`StateMap::get`] for state `s`, just reached by one step along a character whose
    /// successor of the root has place `d1` (0: none) and automaton state `d1_state`: the root
    /// and that successor found without a lookup.
    #[inline(always)]
    pub(super) fn after(&self, s: u32, d1: u32, d1_state: impl FnOnce(u32) -> u32) -> u32 {
        let s = s & !OUT;
        if s == ROOT {
            return 0;
        }
        if d1 != 0 && d1_state(d1) & !OUT == s {
            return d1;
        }
        self.get(s)
    }

    pub(super) fn memory_usage(&self) -> usize {
        std::mem::size_of_val(&*self.slots)
    }
}

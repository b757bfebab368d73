//! Keyword matching over normalized text: leftmost-longest terms, allow-list suppression, and
//! the decision of what is final while a stream is still open.
//!
//! Semantics (the same for one-shot and streamed text):
//! 1. From the search position, find the leftmost-longest term match `m` (aho-corasick).
//! 2. If some allow-phrase occurrence `a` has `a.start <= m.start && m.end <= a.end`, `m` is
//!    suppressed and the search resumes one character after `m.start` (so a suppressed match
//!    never hides an overlapping one); otherwise `m` is reported and the search resumes at
//!    `m.end`.
//!
//! While a stream is open a position `p` is *live* when the normalized text from `p` to the end
//! of what has arrived is a proper prefix of some term (found by walking the automaton anchored
//! at `p`). A found match is final only when no position at or before its start is live (a
//! longer or earlier match could still complete) and no allow phrase that could contain it is
//! still incomplete. Everything before the first live position is final.

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

/// One automaton over distinct normalized strings, plus whether each is a proper prefix of
/// another (so a complete match at the end of the buffer can be called final).
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

/// Terms of one direction in normalized form, with their meaning.
#[derive(Default)]
pub(crate) struct KeywordSet {
    auto: Option<PrefixAutomaton>,
    meta: Vec<TermMeta>,
}

/// Reusable buffers of one stream's keyword search.
#[derive(Debug, Default)]
pub(crate) struct DrainBufs {
    /// Live positions in the held tail (relative to the buffer; scratch).
    pub live: Vec<usize>,
    /// Matches found by the last `drain`.
    pub hits: Vec<Hit>,
    /// Anchored walks still alive: (absolute start, state after the last byte walked).
    states: Vec<(usize, StateID)>,
    /// Absolute normalized offset the walks in `states` have reached.
    walked_to: usize,
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
    /// `sorted`: distinct normalized terms in sorted order with their meaning.
    pub fn build(sorted: &[(&str, TermMeta)]) -> Result<KeywordSet, String> {
        let refs: Vec<&str> = sorted.iter().map(|(t, _)| *t).collect();
        Ok(KeywordSet {
            auto: PrefixAutomaton::build(&refs, MatchKind::LeftmostLongest)?,
            meta: sorted.iter().map(|(_, m)| *m).collect(),
        })
    }

    pub fn memory_usage(&self) -> usize {
        self.auto.as_ref().map_or(0, PrefixAutomaton::memory_usage)
            + self.meta.len() * std::mem::size_of::<TermMeta>()
    }

    /// Report every decidable match in `text` (normalized, starting at absolute offset `base`)
    /// from the absolute search position `*cursor` on. With `is_final` the text is complete.
    /// Returns the absolute position before which everything is decided, or `None` when all of
    /// `text` is. `*cursor` is left at the position where the next search starts.
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
            live,
            hits: out,
            states,
            walked_to,
        } = bufs;
        out.clear();
        let hay = text.as_bytes();
        let n = hay.len();
        let Some(auto) = &self.auto else {
            *cursor = base + n;
            return None;
        };
        live.clear();
        if is_final {
            states.clear();
        } else {
            // Step the walks kept from earlier pieces over the new bytes only, and start a walk
            // at each new character; a position whose walk died stays dead.
            let wrel = walked_to.saturating_sub(base).min(n);
            let new = &hay[wrel..];
            states.retain_mut(|(p, sid)| {
                *p >= *cursor
                    && match auto.advance(*sid, new) {
                        Some(next) => {
                            *sid = next;
                            true
                        }
                        None => false,
                    }
            });
            if let Ok(start) = auto.nfa.start_state(Anchored::Yes) {
                // A walk longer than the longest term is dead: start only in the last max_len.
                let from = (*cursor - base)
                    .max(wrel)
                    .max((n + 1).saturating_sub(auto.max_len()));
                for p in from..n {
                    if is_char_start(hay, p) {
                        if let Some(sid) = auto.advance(start, &hay[p..]) {
                            states.push((base + p, sid));
                        }
                    }
                }
            }
            live.extend(
                states
                    .iter()
                    .filter(|(p, sid)| auto.can_grow(*sid, base + n - p))
                    .map(|(p, _)| p - base),
            );
        }
        *walked_to = base + n;
        loop {
            let sp = *cursor - base;
            if sp >= n {
                break;
            }
            let m = match auto.nfa.try_find(&Input::new(hay).span(sp..n)) {
                Ok(Some(m)) => m,
                _ => break,
            };
            if !is_final {
                if let Some(&l) = live.iter().find(|&&l| l >= sp) {
                    if l <= m.start() {
                        *cursor = base + l;
                        return Some(base + l);
                    }
                }
            }
            if allow.contains(hay, m.start(), m.end()) {
                *cursor = base + next_char(hay, m.start());
                continue;
            }
            if !is_final && allow.pending(hay, m.start(), m.end()) {
                *cursor = base + m.start();
                return Some(base + m.start());
            }
            out.push(Hit {
                start: base + m.start(),
                end: base + m.end(),
                meta: self.meta[m.pattern().as_usize()],
            });
            *cursor = base + m.end();
        }
        let sp = *cursor - base;
        match live.iter().find(|&&l| l >= sp) {
            Some(&l) if !is_final => {
                *cursor = base + l;
                Some(base + l)
            }
            _ => {
                *cursor = base + n;
                None
            }
        }
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
}

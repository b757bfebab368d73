//! Prompt prefixes already scanned.
//!
//! A chat client sends its system prompt and the whole conversation again with every turn, so
//! a proxy that judges the prompt as the model reads it scans turn `n`'s history for the `n`th
//! time. A prompt marks the end of its first text (a system prompt) and its own end (where the
//! next turn's history ends), keyed by the SHA-256 of the prompt text up to there and of who
//! sent it (the tenant and the pseudonymous user, so that how fast a prompt is judged tells
//! nobody what another user sent). A later prompt of the same sender looks up the ends of its
//! first text and of its last [`LOOKUP_ENDS`]: it resumes from the longest kept state, and
//! keeps the scanner's state at each marked end it passes, and, when it resumed past its
//! first text (a conversation going on), at its own end. From its third turn on, a chat's turn `n` then reads
//! on from the end of turn `n - 1`: the last answer and the new message; a prompt whose ends
//! are never seen again pays for a mark, not for a state.
//!
//! The findings are those of a scan of the whole text, a term across the seam between the
//! cached part and the rest included: the state is the streaming scanner's
//! ([`ScanCore`]), which holds a match in progress, the normalizer's pending separator and
//! the text it may read again, and which finds the same in any cut of a text (its tests hold
//! it to that). The findings reported before the state are kept with it and come back with
//! it, so every decision and record is the same as without the cache.
//!
//! Bounded in memory: two generations of at most half the budget each (a state counts what a
//! clone of it allocates); when the new one is full it becomes the old one and the old one is
//! dropped, and a state found in the old one moves to the new one. A state is compacted to
//! the text it may read again before it is kept; one that still takes more than
//! [`MAX_STATE_BYTES`], or comes after more than [`MAX_STATE_FINDINGS`] findings, is not
//! kept.
//! Hand-written: a few lines over `HashMap`, where an LRU crate would add a dependency for
//! them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};

use super::scanner::ScanCore;
use super::{Direction, Finding, Policy};

/// Most memory a kept state may take, in bytes.
pub const MAX_STATE_BYTES: usize = 256 * 1024;
/// Most findings reported before a kept state.
pub const MAX_STATE_FINDINGS: usize = 64;
/// Shortest prefix a state is kept for, in bytes: a shorter one is scanned again faster than a
/// state is kept and restored (with a 10k-term library, ≈ 1 µs against ≈ 3 µs a KiB scanned).
pub const MIN_KEPT: usize = 256;
/// Ends of a prompt's last texts looked up for a kept state (besides its first text's).
pub const LOOKUP_ENDS: usize = 16;

/// The first 16 bytes of the SHA-256 of a direction tag, the scope and a prefix of the text.
type Key = [u8; 16];

/// Bytes a [`Entry::Seen`] mark counts for (its key, the map's slot and its overhead).
const SEEN_BYTES: usize = 64;

/// The scanner states at the ends of prompt texts scanned before (see the module).
pub(crate) struct PrefixCache {
    /// Bytes each generation may take.
    half: usize,
    /// [`MIN_KEPT`] (tests lower it to keep states for short texts).
    min_kept: usize,
    gens: Mutex<Generations>,
}

/// A scanner's state after a prefix, and what it had reported up to there.
struct Kept {
    core: ScanCore,
    findings: Vec<Finding>,
    /// What this takes (see [`PrefixCache`]).
    bytes: usize,
}

/// What the cache holds for a prefix.
#[derive(Clone)]
enum Entry {
    /// Seen once: the next prompt that passes its end keeps the state there.
    Seen,
    Kept(Arc<Kept>),
}

impl Entry {
    fn bytes(&self) -> usize {
        match self {
            Entry::Seen => SEEN_BYTES,
            Entry::Kept(k) => k.bytes,
        }
    }

    /// 1 for a kept state, 0 for a mark.
    fn kept(&self) -> usize {
        usize::from(matches!(self, Entry::Kept(_)))
    }
}

type Generation = HashMap<Key, Entry>;

#[derive(Default)]
struct Generations {
    new: Generation,
    old: Generation,
    /// Bytes each generation takes, and the states it keeps: kept up to date, so the metrics
    /// read them without walking the maps under the lock.
    new_bytes: usize,
    old_bytes: usize,
    new_kept: usize,
    old_kept: usize,
}

impl PrefixCache {
    /// A cache of states taking at most `budget` bytes; `None` for 0 (off).
    pub fn new(budget: u64) -> Option<PrefixCache> {
        (budget > 0).then(|| PrefixCache {
            half: usize::try_from(budget / 2).unwrap_or(usize::MAX),
            min_kept: MIN_KEPT,
            gens: Mutex::default(),
        })
    }

    fn get(&self, key: &Key) -> Option<Entry> {
        let mut g = self.gens.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = g.new.get(key) {
            return Some(e.clone());
        }
        let e = g.old.remove(key)?;
        g.old_bytes -= e.bytes();
        g.old_kept -= e.kept();
        let dropped = g.insert(key, e.clone(), self.half);
        drop(g);
        drop(dropped);
        Some(e)
    }

    fn put(&self, key: &Key, entry: Entry) {
        let mut g = self.gens.lock().unwrap_or_else(PoisonError::into_inner);
        let dropped = g.insert(key, entry, self.half);
        drop(g);
        drop(dropped);
    }

    /// States kept now (marks of prefixes seen once not counted) and the bytes the cache takes
    /// (each generation at most `half`).
    fn tally(&self) -> (usize, usize) {
        let g = self.gens.lock().unwrap_or_else(PoisonError::into_inner);
        #[cfg(test)]
        for (m, kept, bytes) in [
            (&g.new, g.new_kept, g.new_bytes),
            (&g.old, g.old_kept, g.old_bytes),
        ] {
            assert_eq!(kept, m.values().map(Entry::kept).sum::<usize>());
            assert_eq!(bytes, m.values().map(Entry::bytes).sum::<usize>());
        }
        (g.new_kept + g.old_kept, g.new_bytes + g.old_bytes)
    }
}

impl Generations {
    /// Keep `entry`; returns the generation it pushed out, to be dropped once the lock is
    /// released (freeing thousands of states would hold up every other prompt).
    #[must_use]
    fn insert(&mut self, key: &Key, entry: Entry, half: usize) -> Option<Generation> {
        let bytes = entry.bytes();
        if bytes > half {
            return None;
        }
        if let Some(was) = self.new.remove(key) {
            self.new_bytes -= was.bytes();
            self.new_kept -= was.kept();
        }
        let mut dropped = None;
        if self.new_bytes + bytes > half {
            let full = std::mem::take(&mut self.new);
            dropped = Some(std::mem::replace(&mut self.old, full));
            self.old_bytes = std::mem::take(&mut self.new_bytes);
            self.old_kept = std::mem::take(&mut self.new_kept);
        }
        self.new_bytes += bytes;
        self.new_kept += entry.kept();
        self.new.insert(*key, entry);
        dropped
    }
}

/// What a scan of joined texts found, and how much of it a kept state spared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JoinedScan {
    /// Every finding in the joined text, in span order: what [`Policy::scan`] finds in it.
    pub findings: Vec<Finding>,
    /// Bytes at the start of the text not scanned again (0 without a kept state).
    pub reused: usize,
}

impl Policy {
    /// Every finding in `text`, the texts that begin at `starts` joined with nothing between,
    /// as [`Policy::scan`] finds them. A prompt resumes from the longest prefix, ending where
    /// one of its texts ends, that an earlier prompt of the same `scope` (who sent it) left a
    /// state for, and leaves states for the next (see `prefix.rs`); a completion, or a policy
    /// without the cache, is scanned whole.
    pub fn scan_joined(
        &self,
        text: &str,
        starts: &[usize],
        dir: Direction,
        scope: &[&str],
    ) -> JoinedScan {
        let Some(cache) = self.prefixes.as_ref().filter(|_| dir == Direction::Prompt) else {
            return JoinedScan {
                findings: self.scan(text, dir),
                reused: 0,
            };
        };
        let texts: Vec<usize> = starts
            .iter()
            .skip(1)
            .copied()
            .chain([text.len()])
            .filter(|&e| e > 0 && e <= text.len() && text.is_char_boundary(e))
            .collect();
        // The ends looked up: the first text's (a system prompt) and the last
        // `LOOKUP_ENDS` (the previous turn's prompt ended at one of them); the first and the
        // last are marked. Prefixes shorter than `min_kept` are left out: scanning them costs
        // less than keeping and restoring a state. A prompt of many small texts costs a few
        // lookups and two marks, not one a text.
        let mut ends: Vec<usize> = texts
            .first()
            .into_iter()
            .chain(texts.iter().skip(texts.len().saturating_sub(LOOKUP_ENDS)))
            .copied()
            .filter(|&e| e >= cache.min_kept)
            .collect();
        ends.dedup();
        let mut hash = Sha256::new();
        hash.update([dir as u8]);
        for s in scope {
            hash.update((s.len() as u64).to_le_bytes());
            hash.update(s.as_bytes());
        }
        let mut at = 0;
        let keys: Vec<Key> = ends
            .iter()
            .map(|&e| {
                hash.update(&text.as_bytes()[at..e]);
                at = e;
                let digest = hash.clone().finalize();
                let mut key = [0; 16];
                key.copy_from_slice(&digest[..16]);
                key
            })
            .collect();
        // The longest kept state; the ends seen once on the way there get their state kept
        // as this scan passes them.
        let mut seen = vec![false; ends.len()];
        let mut hit = None;
        for k in (0..ends.len()).rev() {
            match cache.get(&keys[k]) {
                Some(Entry::Kept(s)) => {
                    hit = Some((k, s));
                    break;
                }
                Some(Entry::Seen) => seen[k] = true,
                None => {}
            }
        }
        // Ends after the hit seen for the first time get a mark, no state yet: most prompts'
        // ends are never seen again, and a state costs more to keep than a mark. But a prompt
        // that resumes from a state past its first text is a conversation going on: its own
        // end is where its next turn's history ends, so the state there is kept at once, and
        // the next turn reads on from it (as many states as before: one a turn, each one turn
        // later). One that resumes from its system prompt alone may be one of many single
        // questions under it: its end is only marked.
        let first = hit.as_ref().map_or(0, |(k, _)| k + 1);
        let going_on = hit
            .as_ref()
            .is_some_and(|(k, _)| texts.first() != Some(&ends[*k]));
        if going_on && ends.last() == Some(&text.len()) && first < ends.len() {
            seen[ends.len() - 1] = true;
        }
        for k in first..ends.len() {
            if !seen[k] && (texts.first() == Some(&ends[k]) || ends[k] == text.len()) {
                cache.put(&keys[k], Entry::Seen);
            }
        }
        if hit.is_none() && !seen.contains(&true) {
            // Nothing to resume from and no state to keep: the one-pass scan of the whole text.
            return JoinedScan {
                findings: self.scan(text, dir),
                reused: 0,
            };
        }
        let (mut core, mut findings, mut from) = match hit {
            Some((k, s)) => (s.core.clone(), s.findings.clone(), ends[k]),
            None => (ScanCore::new(self, dir), Vec::new(), 0),
        };
        let reused = from;
        for k in (first..ends.len()).filter(|&k| seen[k]) {
            let end = ends[k];
            core.push(self, dir, &text[from..end], &mut findings);
            from = end;
            if findings.len() <= MAX_STATE_FINDINGS {
                core.compact(self, dir);
                let bytes = std::mem::size_of::<Kept>()
                    + core.memory_bytes()
                    + findings.len() * std::mem::size_of::<Finding>();
                if bytes <= MAX_STATE_BYTES {
                    let kept = Kept {
                        core: core.clone(),
                        findings: findings.clone(),
                        bytes,
                    };
                    cache.put(&keys[k], Entry::Kept(Arc::new(kept)));
                }
            }
        }
        if from < text.len() {
            core.push(self, dir, &text[from..], &mut findings);
        }
        core.finish(self, dir, &mut findings);
        findings.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        JoinedScan { findings, reused }
    }

    /// Prompt states kept (see `prefix.rs`) and the bytes they take; 0 without the cache.
    pub fn prefix_states(&self) -> (usize, usize) {
        self.prefixes.as_ref().map_or((0, 0), PrefixCache::tally)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::super::config::{CategoryConfig, NormalizeConfig, PolicyConfig, PrefixCacheSize};
    use super::super::normalize::tests::flags_strategy;
    use super::super::onepass::tests::text;
    use super::super::{Action, Direction, PiiKind, Policy};
    use crate::config::units::ByteSize;

    /// `terms` blocked, `words` redacted as whole words, `allow` phrases, e-mail addresses
    /// redacted, and a cache of `budget` bytes.
    fn policy(
        terms: &[String],
        words: &[String],
        allow: &[String],
        normalize: NormalizeConfig,
        budget: u64,
    ) -> Option<Policy> {
        let cfg = PolicyConfig {
            normalize,
            allow: allow.to_vec(),
            prompt_prefix_cache: PrefixCacheSize(ByteSize(budget)),
            categories: vec![
                CategoryConfig {
                    id: "A1a".into(),
                    keywords: terms.to_vec(),
                    ..CategoryConfig::default()
                },
                CategoryConfig {
                    id: "A1b".into(),
                    action: Some(Action::Redact),
                    whole_words: Some(true),
                    keywords: words.to_vec(),
                    ..CategoryConfig::default()
                },
                CategoryConfig {
                    id: "pii-email".into(),
                    action: Some(Action::Redact),
                    detector: Some(PiiKind::Email),
                    ..CategoryConfig::default()
                },
            ],
            ..PolicyConfig::default()
        };
        let mut p = Policy::compile(&cfg, Path::new(".")).ok()?.policy;
        // Keep states for the short texts of these tests (`kept_for_long_prefixes_only` tests
        // the real floor).
        if let Some(c) = p.prefixes.as_mut() {
            c.min_kept = 0;
        }
        Some(p)
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// `parts` joined, and where each begins.
    fn joined(parts: &[&str]) -> (String, Vec<usize>) {
        let mut text = String::new();
        let mut starts = Vec::new();
        for p in parts {
            starts.push(text.len());
            text.push_str(p);
        }
        (text, starts)
    }

    fn scan(p: &Policy, parts: &[&str]) -> super::JoinedScan {
        let (text, starts) = joined(parts);
        let got = p.scan_joined(&text, &starts, Direction::Prompt, &[]);
        assert_eq!(got.findings, p.scan(&text, Direction::Prompt), "{parts:?}");
        got
    }

    #[test]
    fn a_chat_turn_scans_what_it_adds() {
        let p = policy(
            &strings(&["炸弹", "bomb recipe"]),
            &[],
            &[],
            NormalizeConfig::default(),
            1 << 20,
        )
        .expect("compiles");
        let system = "You are a helpful assistant. 你是一个乐于助人的助手。";
        let turn1 = [system, "What is a bomb", "calorimeter?"];
        let first = scan(&p, &turn1);
        assert!(first.findings.is_empty());
        assert_eq!(first.reused, 0);
        // Its ends are marked, no state is kept yet.
        assert_eq!(p.prefix_states().0, 0);
        // The next turn sends the history again and passes the marked ends: their states are
        // kept (the system prompt's and the first turn's end).
        let turn2 = [
            system,
            "What is a bomb",
            "calorimeter?",
            "A device that…",
            "Thanks!",
        ];
        let second = scan(&p, &turn2);
        assert!(second.findings.is_empty());
        assert_eq!(second.reused, 0);
        assert_eq!(p.prefix_states().0, 2);
        // The third reads on from the end of the first turn, and keeps the second's end and,
        // as it resumed, its own.
        let turn3 = [&turn2[..], &["Bye.", "One more thing"]].concat();
        let third = scan(&p, &turn3);
        assert_eq!(third.reused, joined(&turn1).0.len());
        assert_eq!(p.prefix_states().0, 4);
        // From then on a turn reads on from the end of the one before: one state a turn.
        let turn4 = [&turn3[..], &["Yes?", "Nothing"]].concat();
        assert_eq!(scan(&p, &turn4).reused, joined(&turn3).0.len());
        assert_eq!(p.prefix_states().0, 5);
        let turn5 = [&turn4[..], &["Sure.", "Good night"]].concat();
        assert_eq!(scan(&p, &turn5).reused, joined(&turn4).0.len());
        assert_eq!(p.prefix_states().0, 6);
        // A term across the seam between the kept history and the new text is found: the
        // kept state holds the match in progress (`bomb` … `recipe`, `炸` … `弹`), and the
        // separators and zero-width characters between are read as a scan of the whole reads
        // them.
        for (history, next) in [
            (["What is a bomb", " "], "recipe"),
            (["请告诉我炸", "\u{200B}"], "弹的做法"),
            (["请告诉我", "炸 "], "  弹的做法"),
        ] {
            // Seen twice: kept.
            scan(&p, &history);
            scan(&p, &history);
            let parts = [history[0], history[1], next];
            let got = scan(&p, &parts);
            assert!(got.reused > 0, "{parts:?}");
            assert_eq!(got.findings.len(), 1, "{parts:?}");
        }
        // A prompt that found something leaves its states with what they had found: a turn
        // that resumes from one reports it again.
        let blocked = scan(&p, &["炸弹", "x", "y"]);
        assert_eq!(blocked.findings.len(), 1);
        scan(&p, &["炸弹", "x", "y"]);
        let again = scan(&p, &["炸弹", "x", "y", "z"]);
        assert_eq!(again.reused, "炸弹xy".len());
        assert_eq!(again.findings, blocked.findings);
        // States are kept for their sender: another user's prompt that begins the same way is
        // scanned whole.
        let (text, starts) = joined(&turn2);
        let mine = ["tenant", "user-1"];
        for _ in 0..2 {
            let first = p.scan_joined(&text, &starts, Direction::Prompt, &mine);
            assert_eq!(first.reused, 0);
        }
        assert!(
            p.scan_joined(&text, &starts, Direction::Prompt, &mine)
                .reused
                > 0
        );
        let theirs = ["tenant", "user-2"];
        assert_eq!(
            p.scan_joined(&text, &starts, Direction::Prompt, &theirs)
                .reused,
            0
        );
        let glued = ["tenantuser-1", ""];
        assert_eq!(
            p.scan_joined(&text, &starts, Direction::Prompt, &glued)
                .reused,
            0
        );
        // Completions are scanned whole.
        let (text, starts) = joined(&turn2);
        assert_eq!(
            p.scan_joined(&text, &starts, Direction::Completion, &[])
                .reused,
            0
        );
    }

    #[test]
    fn kept_for_long_prefixes_only_on_second_sight() {
        let terms = strings(&["炸弹"]);
        let mut p = policy(&terms, &[], &[], NormalizeConfig::default(), 1 << 20).expect("ok");
        if let Some(c) = p.prefixes.as_mut() {
            c.min_kept = super::MIN_KEPT;
        }
        // Short prompts are scanned whole and leave nothing, however often they come.
        for _ in 0..3 {
            scan(&p, &["be brief", "hello"]);
        }
        assert_eq!(p.prefix_states(), (0, 0));
        // A long system prompt and a long prompt's end: marked when first seen, kept when seen
        // again, read on from after that.
        let system = "You are a careful assistant. ".repeat(12);
        scan(&p, &[&system, "hello"]);
        assert_eq!(p.prefix_states().0, 0);
        scan(&p, &[&system, "hello"]);
        assert_eq!(p.prefix_states().0, 2);
        assert_eq!(scan(&p, &[&system, "something else"]).reused, system.len());
        // Resumed from its system prompt only: perhaps one of many single questions under it,
        // so its own end is marked, not kept.
        assert_eq!(p.prefix_states().0, 2);
        // A prompt of many small texts marks two ends at most, not one a text (its first
        // text is too short: one); seen again, one state.
        let many: Vec<String> = (0..200).map(|i| format!("message {i}; ")).collect();
        let mut parts: Vec<&str> = many.iter().map(String::as_str).collect();
        let (states, bytes) = p.prefix_states();
        scan(&p, &parts);
        assert_eq!(p.prefix_states(), (states, bytes + super::SEEN_BYTES));
        let first = joined(&parts).0.len();
        parts.extend(["a reply", "and a question"]);
        assert_eq!(scan(&p, &parts).reused, 0);
        assert_eq!(p.prefix_states().0, states + 1);
        parts.extend(["another reply", "and a last question"]);
        assert_eq!(scan(&p, &parts).reused, first);
    }

    #[test]
    fn the_cache_is_bounded_and_can_be_off() {
        let terms = strings(&["炸弹"]);
        let budget = 32 * 1024;
        let p = policy(&terms, &[], &[], NormalizeConfig::default(), budget).expect("compiles");
        scan(&p, &["message", "and a reply"]);
        scan(&p, &["message", "and a reply"]);
        let (states, bytes) = p.prefix_states();
        assert_eq!(states, 2);
        let each = bytes / 2;
        assert!(each > 0 && each < 4096, "{each} bytes a state");
        for i in 0..1000 {
            for _ in 0..2 {
                scan(&p, &[&format!("message {i}"), "and a reply"]);
            }
            let (states, bytes) = p.prefix_states();
            assert!(bytes <= budget as usize, "{bytes} bytes");
            assert!(states >= 2);
        }
        // The newest states are kept.
        assert!(scan(&p, &["message 999", "and a reply", "more"]).reused > 0);
        let off = policy(&terms, &[], &[], NormalizeConfig::default(), 0).expect("compiles");
        for _ in 0..2 {
            scan(&off, &["message", "reply"]);
        }
        assert_eq!(off.prefix_states(), (0, 0));
        assert_eq!(scan(&off, &["message", "reply", "more"]).reused, 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Whatever earlier prompts left in the cache (the same conversation's earlier turns,
        /// other conversations, states evicted), a prompt's findings are those of a scan of
        /// its whole text, under every normalization flag set.
        #[test]
        fn kept_states_change_no_finding(
            terms in prop::collection::vec(text(4), 1..6),
            words in prop::collection::vec(text(3), 0..2),
            allow in prop::collection::vec(text(5), 0..2),
            normalize in flags_strategy(),
            turns in prop::collection::vec(prop::collection::vec(text(8), 1..4), 1..6),
            others in prop::collection::vec(text(10), 0..3),
            budget in 1..40_000u64,
        ) {
            let Some(p) = policy(&terms, &words, &allow, normalize, budget) else {
                return Ok(());
            };
            let mut history: Vec<String> = Vec::new();
            for (i, turn) in turns.iter().enumerate() {
                history.extend(turn.iter().cloned());
                let parts: Vec<&str> = history.iter().map(String::as_str).collect();
                let (text, starts) = joined(&parts);
                let got = p.scan_joined(&text, &starts, Direction::Prompt, &[]);
                prop_assert_eq!(&got.findings, &p.scan(&text, Direction::Prompt));
                prop_assert!(got.reused <= text.len());
                if let Some(o) = others.get(i) {
                    let got = p.scan_joined(o, &[0], Direction::Prompt, &[]);
                    prop_assert_eq!(got.findings, p.scan(o, Direction::Prompt));
                }
            }
        }
    }
}

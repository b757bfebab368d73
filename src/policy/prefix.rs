//! Prompt prefixes already scanned.
//!
//! A chat client sends its system prompt and the whole conversation again with every turn, so
//! a proxy that judges the prompt as the model reads it scans turn `n`'s history for the `n`th
//! time. After scanning a prompt, shenhe keeps the scanner's state at the end of each of its
//! texts (a message, a content part), with what it had found up to there, keyed by the
//! SHA-256 of the prompt text up to there and of who sent it (the tenant and the pseudonymous
//! user, so that how fast a prompt is judged tells nobody what another user sent); a later
//! prompt of the same sender that begins with the same text resumes from the longest such
//! state and scans only what follows it.
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

/// The first 16 bytes of the SHA-256 of a direction tag, the scope and a prefix of the text.
type Key = [u8; 16];

/// The scanner states at the ends of prompt texts scanned before (see the module).
pub(crate) struct PrefixCache {
    /// Bytes each generation may take.
    half: usize,
    gens: Mutex<Generations>,
}

/// A scanner's state after a prefix, and what it had reported up to there.
struct Kept {
    core: ScanCore,
    findings: Vec<Finding>,
    /// What this takes (see [`PrefixCache`]).
    bytes: usize,
}

#[derive(Default)]
struct Generations {
    new: HashMap<Key, Arc<Kept>>,
    old: HashMap<Key, Arc<Kept>>,
    /// Bytes the new generation takes.
    new_bytes: usize,
}

impl PrefixCache {
    /// A cache of states taking at most `budget` bytes; `None` for 0 (off).
    pub fn new(budget: u64) -> Option<PrefixCache> {
        (budget > 0).then(|| PrefixCache {
            half: usize::try_from(budget / 2).unwrap_or(usize::MAX),
            gens: Mutex::default(),
        })
    }

    fn get(&self, key: &Key) -> Option<Arc<Kept>> {
        let mut g = self.gens.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = g.new.get(key) {
            return Some(Arc::clone(s));
        }
        let s = g.old.remove(key)?;
        let dropped = g.insert(key, Arc::clone(&s), self.half);
        drop(g);
        drop(dropped);
        Some(s)
    }

    fn put(&self, key: Key, state: Kept) {
        let state = Arc::new(state);
        let mut g = self.gens.lock().unwrap_or_else(PoisonError::into_inner);
        let dropped = g.insert(&key, state, self.half);
        drop(g);
        drop(dropped);
    }

    /// States kept now.
    pub fn len(&self) -> usize {
        let g = self.gens.lock().unwrap_or_else(PoisonError::into_inner);
        g.new.len() + g.old.len()
    }

    /// Bytes the states kept now take (the old generation's at most `half` too).
    fn bytes(&self) -> usize {
        let g = self.gens.lock().unwrap_or_else(PoisonError::into_inner);
        g.new_bytes + g.old.values().map(|k| k.bytes).sum::<usize>()
    }
}

impl Generations {
    /// Keep `state`; returns the generation it pushed out, to be dropped once the lock is
    /// released (freeing thousands of states would hold up every other prompt).
    #[must_use]
    fn insert(
        &mut self,
        key: &Key,
        state: Arc<Kept>,
        half: usize,
    ) -> Option<HashMap<Key, Arc<Kept>>> {
        if state.bytes > half {
            return None;
        }
        if let Some(was) = self.new.remove(key) {
            self.new_bytes -= was.bytes;
        }
        let mut dropped = None;
        if self.new_bytes + state.bytes > half {
            let full = std::mem::take(&mut self.new);
            dropped = Some(std::mem::replace(&mut self.old, full));
            self.new_bytes = 0;
        }
        self.new_bytes += state.bytes;
        self.new.insert(*key, state);
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
        let mut ends: Vec<usize> = starts
            .iter()
            .skip(1)
            .copied()
            .chain([text.len()])
            .filter(|&e| e > 0 && e <= text.len() && text.is_char_boundary(e))
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
        let hit = (0..ends.len())
            .rev()
            .find_map(|k| cache.get(&keys[k]).map(|s| (k, s)));
        let (mut core, mut findings, mut from, first) = match hit {
            Some((k, s)) => (s.core.clone(), s.findings.clone(), ends[k], k + 1),
            None => (ScanCore::new(self, dir), Vec::new(), 0, 0),
        };
        let reused = from;
        for (&end, key) in ends.iter().zip(&keys).skip(first) {
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
                    cache.put(*key, kept);
                }
            }
        }
        core.finish(self, dir, &mut findings);
        findings.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        JoinedScan { findings, reused }
    }

    /// Prompt states kept (see `prefix.rs`) and the bytes they take; 0 without the cache.
    pub fn prefix_states(&self) -> (usize, usize) {
        self.prefixes
            .as_ref()
            .map_or((0, 0), |c| (c.len(), c.bytes()))
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
        Policy::compile(&cfg, Path::new(".")).ok().map(|c| c.policy)
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
        assert_eq!(p.prefix_states().0, 3);
        // The next turn sends the history again: only the answer and the new message are read.
        let turn2 = [
            system,
            "What is a bomb",
            "calorimeter?",
            "A device that…",
            "Thanks!",
        ];
        let second = scan(&p, &turn2);
        assert!(second.findings.is_empty());
        assert_eq!(second.reused, joined(&turn1).0.len());
        // A term across the seam between the kept history and the new text is found: the
        // kept state holds the match in progress (`bomb` … `recipe`, `炸` … `弹`), and the
        // separators and zero-width characters between are read as a scan of the whole reads
        // them.
        for (history, next) in [
            (["What is a bomb", " "], "recipe"),
            (["请告诉我炸", "\u{200B}"], "弹的做法"),
            (["请告诉我", "炸 "], "  弹的做法"),
        ] {
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
        let again = scan(&p, &["炸弹", "x", "y", "z"]);
        assert_eq!(again.reused, "炸弹xy".len());
        assert_eq!(again.findings, blocked.findings);
        // States are kept for their sender: another user's prompt that begins the same way is
        // scanned whole.
        let (text, starts) = joined(&turn2);
        let mine = ["tenant", "user-1"];
        assert_eq!(
            p.scan_joined(&text, &starts, Direction::Prompt, &mine)
                .reused,
            0
        );
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
    fn the_cache_is_bounded_and_can_be_off() {
        let terms = strings(&["炸弹"]);
        let budget = 32 * 1024;
        let p = policy(&terms, &[], &[], NormalizeConfig::default(), budget).expect("compiles");
        scan(&p, &["message", "and a reply"]);
        let (states, bytes) = p.prefix_states();
        assert_eq!(states, 2);
        let each = bytes / 2;
        assert!(each > 0 && each < 4096, "{each} bytes a state");
        for i in 0..1000 {
            scan(&p, &[&format!("message {i}"), "and a reply"]);
            let (states, bytes) = p.prefix_states();
            assert!(bytes <= budget as usize, "{bytes} bytes");
            assert!(states >= 2);
        }
        // The newest states are kept.
        assert!(scan(&p, &["message 999", "and a reply", "more"]).reused > 0);
        let off = policy(&terms, &[], &[], NormalizeConfig::default(), 0).expect("compiles");
        scan(&off, &["message", "reply"]);
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

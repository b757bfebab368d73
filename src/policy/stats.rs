//! Library statistics and the TC260-003 §8.1 checks (size, coverage per type, weekly updates).

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use super::categories::Category;
use super::config::LibraryConfig;

/// What `/admin/policy` and `shenhe check` show about the active policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyStats {
    pub version: String,
    /// Distinct (term, category) entries in the keyword library.
    pub total_terms: usize,
    /// Entries per category id (every category, zero included).
    pub terms_per_category: BTreeMap<String, usize>,
    pub allow_phrases: usize,
    /// Custom regexes plus built-in PII detectors.
    pub pattern_detectors: usize,
    /// Keyword and allow list files read.
    pub list_files: usize,
    /// Modification time of the oldest list file, if any file was read.
    #[serde(skip)]
    pub oldest_list_mtime: Option<SystemTime>,
    /// Approximate heap held by the automata, in bytes.
    pub automaton_bytes: usize,
    /// TC260-003 §8.1 shortfalls, evaluated now.
    pub warnings: Vec<String>,
}

/// The §8.1 checks: total size, per-type minimums for A.1 and A.2, and list age at `now`.
pub(crate) fn tc260_warnings(
    total: usize,
    counts: &[(&Category, usize)],
    oldest: Option<SystemTime>,
    lib: &LibraryConfig,
    now: SystemTime,
) -> Vec<String> {
    let mut out = Vec::new();
    if total < lib.min_terms {
        out.push(format!(
            "keyword library has {total} terms, fewer than the {} that TC260-003 §8.1 asks for",
            lib.min_terms
        ));
    }
    for (group, min) in [("A.1", lib.min_terms_a1), ("A.2", lib.min_terms_a2)] {
        let short: Vec<String> = counts
            .iter()
            .filter(|(c, n)| c.group == group && *n < min)
            .map(|(c, n)| format!("{} ({n})", c.id))
            .collect();
        if !short.is_empty() {
            out.push(format!(
                "{group} types with fewer than {min} terms (TC260-003 §8.1): {}",
                short.join(", ")
            ));
        }
    }
    if let Some(t) = oldest {
        let age = now.duration_since(t).unwrap_or_default();
        if age > lib.max_age.get() {
            out.push(format!(
                "oldest keyword list file is {} days old, older than {} (TC260-003 §8.1 asks for weekly updates)",
                age.as_secs() / 86_400,
                lib.max_age
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::categories::{default_category, BUILTINS};
    use std::time::Duration;

    #[test]
    fn warns_on_small_library_and_old_files() {
        let cats: Vec<Category> = BUILTINS.iter().map(default_category).collect();
        let counts: Vec<(&Category, usize)> = cats
            .iter()
            .map(|c| (c, if c.id.as_ref() == "A1a" { 10 } else { 1000 }))
            .collect();
        let now = SystemTime::now();
        let old = now - Duration::from_secs(8 * 86_400);
        let w = tc260_warnings(500, &counts, Some(old), &LibraryConfig::default(), now);
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("500 terms"));
        assert!(w[1].contains("A1a (10)"));
        assert!(w[2].contains("8 days old"));
        let fresh = tc260_warnings(
            20_000,
            &counts[1..],
            Some(now),
            &LibraryConfig::default(),
            now,
        );
        assert!(fresh.is_empty(), "{fresh:?}");
    }
}

//! The `policy:` section of the YAML config: raw serde structs that mirror the file.
//!
//! Validation (ids, regexes, list files) happens in [`crate::policy::Policy::compile`], which
//! reports every problem at once. Every struct rejects unknown keys.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::units::{ByteSize, HumanDuration};

use super::categories::{Action, AppliesTo, Evidence};

/// TC260-003 §8.1: at least 10 000 keywords in total.
pub const DEFAULT_MIN_TERMS: usize = 10_000;
/// TC260-003 §8.1: at least 200 keywords for each A.1 risk type.
pub const DEFAULT_MIN_TERMS_A1: usize = 200;
/// TC260-003 §8.1: at least 100 keywords for each A.2 risk type.
pub const DEFAULT_MIN_TERMS_A2: usize = 100;
/// TC260-003 §8.1: the library is updated at least once a week.
pub const DEFAULT_MAX_LIST_AGE: HumanDuration = HumanDuration::from_secs(7 * 86_400);
/// Default cap on the length of a custom regex match, in bytes: a streamed channel holds back at
/// most this many bytes (plus 4) for a pattern detector.
pub const DEFAULT_MAX_MATCH_LEN: usize = 256;

/// `policy:` — keyword libraries, detectors, normalization and redaction.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// On a bad keyword-list line: `false` skips it with a warning naming `file:line`,
    /// `true` makes compilation fail. Default `false`.
    pub strict: bool,
    /// Which normalization steps run (all on by default).
    pub normalize: NormalizeConfig,
    /// How redacted keyword matches are rendered.
    pub redaction: RedactionConfig,
    /// Shared list files with rows `term<TAB>category` (the category is required here).
    /// Relative paths resolve against the config file's directory.
    pub keyword_files: Vec<PathBuf>,
    /// Exception phrases: a keyword match lying wholly inside an occurrence of one is suppressed.
    pub allow: Vec<String>,
    /// Files of exception phrases, one a line, `#` comments.
    pub allow_files: Vec<PathBuf>,
    /// Category settings. The 31 built-in TC260-003 types always exist with their defaults;
    /// listing one here overrides its settings and adds terms. Other ids define custom categories.
    pub categories: Vec<CategoryConfig>,
    /// TC260-003 §8.1 library thresholds that raise warnings in `stats()`.
    pub library: LibraryConfig,
    /// Memory for scanner states kept at the ends of prompt texts, so that a chat's turn does
    /// not scan again the history an earlier turn scanned (see `Policy::scan_joined`). 0 turns
    /// it off. Default `32MiB` (a state takes a few KiB with a library of short terms).
    pub prompt_prefix_cache: PrefixCacheSize,
}

/// `policy.prompt_prefix_cache`: memory for kept scanner states. Default `32MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PrefixCacheSize(pub ByteSize);

impl Default for PrefixCacheSize {
    fn default() -> Self {
        Self(ByteSize::mib(32))
    }
}

/// `policy.normalize`: each step applies to terms and text alike. All default to `true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NormalizeConfig {
    /// NFKC compatibility folding (full-width → ASCII, ligatures, circled digits…).
    pub width: bool,
    /// Unicode lower-casing.
    pub case: bool,
    /// Drop zero-width and format characters (U+200B–U+200F, U+2060–U+2064, U+FEFF, soft hyphen,
    /// variation selectors, the Cf category).
    pub zero_width: bool,
    /// Skip separators between CJK characters and between single letters; collapse other
    /// separator runs to one space. See `normalize.rs` for the exact rule.
    pub separators: bool,
    /// Traditional → simplified Chinese, per character (fast2s table).
    pub traditional: bool,
    /// Fold confusable letters to Latin (Cyrillic а → a, Greek ο → o) and strip diacritics.
    pub confusables: bool,
    /// A term of several words also matches with the spaces between its words left out: `bomb
    /// recipe` finds `bombrecipe`, `bomb_recipe` and, with `separators`, `b o m b r e c i p e`.
    /// (The reverse does not hold: `forbiddenword` never matches `forbidden word`.) Allow
    /// phrases of several words are allowed joined the same way.
    pub joined_words: bool,
}

impl Default for NormalizeConfig {
    fn default() -> Self {
        Self {
            width: true,
            case: true,
            zero_width: true,
            separators: true,
            traditional: true,
            confusables: true,
            joined_words: true,
        }
    }
}

/// `policy.redaction`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionConfig {
    /// Replacement for keyword and custom-pattern matches. A single character is repeated once per
    /// character of the matched text (`"*"` → `***`); anything longer replaces the whole match
    /// verbatim (`"[已屏蔽]"`). Default `"*"`. PII detectors use their own rule unless the
    /// category sets `mask`.
    pub keyword_mask: String,
}

impl Default for RedactionConfig {
    fn default() -> Self {
        Self {
            keyword_mask: "*".to_owned(),
        }
    }
}

/// `policy.library`: thresholds of TC260-003 §8.1, kept as config values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LibraryConfig {
    /// Warn when the library holds fewer terms in total. Default 10 000.
    pub min_terms: usize,
    /// Warn when any A.1 type holds fewer terms. Default 200.
    pub min_terms_a1: usize,
    /// Warn when any A.2 type holds fewer terms. Default 100.
    pub min_terms_a2: usize,
    /// Warn when a list file is older than this. Default `"7d"`.
    pub max_age: HumanDuration,
}

impl Default for LibraryConfig {
    fn default() -> Self {
        Self {
            min_terms: DEFAULT_MIN_TERMS,
            min_terms_a1: DEFAULT_MIN_TERMS_A1,
            min_terms_a2: DEFAULT_MIN_TERMS_A2,
            max_age: DEFAULT_MAX_LIST_AGE,
        }
    }
}

/// One entry of `policy.categories`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CategoryConfig {
    /// `A1a`…`A5b` for a built-in type, or a custom id `[A-Za-z0-9_-]{1,64}`.
    pub id: String,
    /// Default: by group for built-ins (A.1, A.2 block; A.3–A.5 flag), `flag` for custom ids.
    pub action: Option<Action>,
    /// 1–5. Default: A.1 5, A.2 4, A.3/A.4 3, A.5 2, custom 3.
    pub severity: Option<u8>,
    /// Default `both`.
    pub applies_to: Option<AppliesTo>,
    /// Refusal text shown to the client; default per group.
    pub refusal: Option<TextPair>,
    /// Display name; required for nothing, ignored for built-ins (their names are fixed).
    pub name: Option<TextPair>,
    /// What the audit record keeps of the matched text. Default `excerpt`.
    pub evidence: Option<Evidence>,
    /// Latin terms match only as whole words: a match that begins (ends) with an ASCII letter or
    /// digit needs something other than a letter or digit before (after) it in the normalized
    /// text, or the text's edge (`ass` then misses `class` and `assistant` but finds `ass`,
    /// `ASS!` and `a.s.s`). A side that is a CJK character is not checked. Default `false`:
    /// terms match inside longer words too.
    pub whole_words: Option<bool>,
    /// The action for requests of minors (`enforce.minors.header`), where it differs from
    /// `action`: e.g. `flag` for everyone and `block` for minors (Interim Measures Art. 10;
    /// TC260-003 §7: content fit for minors). Default: `action`.
    pub minors: Option<Action>,
    /// Inline terms.
    pub keywords: Vec<String>,
    /// List files; rows without a TAB category belong to this category.
    pub keyword_files: Vec<PathBuf>,
    /// A built-in PII detector.
    pub detector: Option<super::pii::PiiKind>,
    /// Custom regexes (Rust `regex` syntax).
    pub patterns: Vec<String>,
    /// Cap on a custom pattern's match length in bytes. Default 256.
    pub max_match_len: Option<usize>,
    /// Redaction text for this category, same shape as `redaction.keyword_mask`; overrides the
    /// PII detector's own rule.
    pub mask: Option<String>,
}

/// A Chinese and English text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextPair {
    pub zh: String,
    pub en: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_category_parses() {
        let cfg: PolicyConfig = serde_json::from_value(serde_json::json!({
            "categories": [{"id": "A1d", "action": "block", "keywords": ["制造炸弹"]}]
        }))
        .expect("parses");
        assert_eq!(cfg.categories[0].action, Some(Action::Block));
        assert!(cfg.normalize.separators);
        assert_eq!(cfg.redaction.keyword_mask, "*");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = serde_json::from_value::<PolicyConfig>(serde_json::json!({"strikt": true}));
        assert!(err.is_err());
        let err = serde_json::from_value::<PolicyConfig>(serde_json::json!({
            "categories": [{"id": "x", "actoin": "block"}]
        }));
        assert!(err.is_err());
    }

    #[test]
    fn default_round_trips() {
        let cfg = PolicyConfig::default();
        let v = serde_json::to_value(&cfg).expect("serializes");
        let back: PolicyConfig = serde_json::from_value(v).expect("parses");
        assert_eq!(cfg, back);
    }
}

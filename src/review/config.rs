//! The `review:` section of the YAML config: which decisions go to the monitors' queue, and the
//! store.

use serde::{Deserialize, Serialize};

use crate::config::units::HumanDuration;
use crate::config::ConfigIssue;
pub use crate::pg::StoreKind;
use crate::policy::Action;

/// The `review:` section as written in the YAML file.
///
/// ```yaml
/// review:
///   enabled: true
///   database_url: "${SHENHE_DATABASE_URL}"
///   actions: [flag, redact]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewConfig {
    /// Queue decisions for human monitors (TC260-003 §7). Default false.
    pub enabled: bool,
    /// `postgres` (shared by every replica, survives restarts; default) or `memory` (one
    /// replica, lost on restart: for trials).
    pub store: StoreKind,
    /// The PostgreSQL server with `store: postgres`; a password belongs in `${ENV}`.
    pub database_url: String,
    /// With `sslmode=require` in `database_url`: a PEM file of CA certificates the server's
    /// certificate may chain to, beside the system's roots (relative to the config file).
    pub database_ca_file: Option<std::path::PathBuf>,
    /// The table items live in (created when missing). Default `shenhe_review`.
    pub table: String,
    /// Longest wait for the store on one call. Default `2s`.
    pub store_timeout: HumanDuration,
    /// The decisions that are queued, by the category's action. Default `[flag]`: what the
    /// policy saw but let through is what a person should look at.
    pub actions: Vec<Action>,
    /// The share of moderated prompts the policy let through that are queued as well, with the
    /// end of the prompt (PII-masked, at most `SAMPLE_CHARS` characters), so monitors also see
    /// what passes. 0 (the default) to 1.
    pub sample_rate: f64,
    /// A `confirmed` verdict counts a strike against the item's user, as a `block` decision
    /// does (with `enforce` on; once per request: a request already struck is not struck
    /// again). Default true: a violation a monitor confirms is one.
    pub confirmed_strikes: bool,
    /// Items waiting in this process for the store; past it new items are dropped and counted
    /// (`shenhe_review_dropped_total`), never holding a request up. Default 10,000.
    pub queue_capacity: usize,
    /// Items the memory store keeps at most (reviewed ones go first). Default 100,000.
    pub memory_items: usize,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            store: StoreKind::Postgres,
            database_url: String::new(),
            database_ca_file: None,
            table: "shenhe_review".into(),
            store_timeout: HumanDuration::from_secs(2),
            actions: vec![Action::Flag],
            sample_rate: 0.0,
            confirmed_strikes: true,
            queue_capacity: 10_000,
            memory_items: 100_000,
        }
    }
}

impl ReviewConfig {
    /// Every problem, each with its YAML path.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let issue = |p: &str, m: &str| ConfigIssue::new(format!("review.{p}"), m);
        let mut out = crate::pg::validate_store(
            "review",
            self.enabled,
            self.store,
            &self.database_url,
            &self.table,
            self.store_timeout.get(),
        );
        if self.enabled && self.actions.is_empty() {
            out.push(issue(
                "actions",
                "at least one of flag, redact, block (or set enabled: false)",
            ));
        }
        if !(0.0..=1.0).contains(&self.sample_rate) {
            out.push(issue("sample_rate", "a share between 0 and 1"));
        }
        if !(1..=1_000_000).contains(&self.queue_capacity) {
            out.push(issue("queue_capacity", "must be between 1 and 1000000"));
        }
        if self.memory_items == 0 {
            out.push(issue("memory_items", "must be greater than zero"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_settings_are_named_by_path() {
        assert!(ReviewConfig::default().validate().is_empty());
        let cfg = ReviewConfig {
            enabled: true,
            table: "Review".into(),
            actions: vec![],
            sample_rate: 2.0,
            queue_capacity: 0,
            ..ReviewConfig::default()
        };
        let paths: Vec<String> = cfg.validate().into_iter().map(|i| i.path).collect();
        assert_eq!(
            paths,
            [
                "review.database_url",
                "review.table",
                "review.actions",
                "review.sample_rate",
                "review.queue_capacity"
            ]
        );
    }
}

//! The `classifier:` section of the YAML config: an external classification model that judges
//! prompts beside the keyword library (TC260-003 §8.4: keywords alone do not satisfy it).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::units::HumanDuration;
use crate::config::ConfigIssue;

/// The `classifier:` section as written in the YAML file.
///
/// ```yaml
/// classifier:
///   enabled: true
///   url: "http://127.0.0.1:8500/classify"
///   threshold: 0.8
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifierConfig {
    /// Ask the classifier about every moderated prompt the keyword policy let through. Default
    /// false.
    pub enabled: bool,
    /// The classifier's endpoint (`http://`; in the pod or the cluster).
    pub url: String,
    /// The wire format: `shenhe` (`{"text", "direction", "request_id"}` →
    /// `{"categories": [{"id", "score"}]}`) or `openai_moderation` (`{"input", "model"}` →
    /// `{"results": [{"category_scores": {…}}]}`, as OpenAI's moderation endpoint and servers
    /// compatible with it answer). Default `shenhe`.
    pub format: Format,
    /// `model` sent with `format: openai_moderation`.
    pub model: Option<String>,
    /// Environment variable holding a bearer token for the classifier, if it needs one.
    pub api_key_env: Option<String>,
    /// Longest wait for an answer. Default `500ms`.
    pub timeout: HumanDuration,
    /// A score at or above this counts as a finding of its category. Default 0.5.
    pub threshold: f64,
    /// Classifier labels → policy category ids (`violence: A1d`). A label not listed is taken
    /// as a category id itself; a label that names no policy category is counted and ignored.
    pub categories: BTreeMap<String, String>,
    /// When the classifier fails or does not answer in time: `closed` refuses the prompt with
    /// 503, `open` lets it through on the keyword verdict alone (counted). Default `closed`.
    pub on_error: Failure,
    /// Most characters of a prompt sent (its end, where the newest turn is). Default 20,000.
    pub max_chars: usize,
    /// Also classify whole (non-streamed) answers before they are delivered: a unit (choice) a
    /// `block` category hits is replaced by the refusal (`finish_reason: content_filter`).
    /// Streamed answers are judged by the policy alone unless `streams` is set. Default false.
    pub answers: bool,
    /// Also classify streamed answers, whole, at their end: the text flows to the client as the
    /// policy releases it, and the stream's own end waits for the classifier; a `block` category
    /// ends the stream with `finish_reason: content_filter` instead (the client withdraws what
    /// it showed). Default false.
    pub streams: bool,
    /// With `streams`: also check a streamed answer while it flows, each time this many more
    /// characters have been released (the answer so far, its last `max_chars`), beside the stream
    /// without pausing it; a `block` verdict stops generation at once, as the keyword policy
    /// does. The check at the end still decides. 0: only at the end. Default 1,000.
    pub stream_check_chars: usize,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            url: String::new(),
            format: Format::Shenhe,
            model: None,
            api_key_env: None,
            timeout: HumanDuration::from_millis(500),
            threshold: 0.5,
            categories: BTreeMap::new(),
            on_error: Failure::Closed,
            max_chars: 20_000,
            answers: false,
            streams: false,
            stream_check_chars: 1_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Shenhe,
    OpenaiModeration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    Closed,
    Open,
}

impl ClassifierConfig {
    /// Every problem, each with its YAML path. (That the mapped categories exist is checked
    /// against the compiled policy when the runtime is built.)
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let issue = |p: &str, m: &str| ConfigIssue::new(format!("classifier.{p}"), m);
        let mut out = Vec::new();
        if self.enabled {
            match url::Url::parse(&self.url) {
                Ok(u) if u.scheme() == "http" && u.host().is_some() => {}
                Ok(_) => out.push(issue(
                    "url",
                    "an http:// URL with a host (shenhe calls the classifier without TLS)",
                )),
                Err(_) => out.push(issue("url", "not a URL")),
            }
        }
        let t = self.timeout.get();
        if t.is_zero() || t > std::time::Duration::from_secs(30) {
            out.push(issue("timeout", "must be between 1ms and 30s"));
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            out.push(issue("threshold", "a score between 0 and 1"));
        }
        if !(1..=1_000_000).contains(&self.max_chars) {
            out.push(issue("max_chars", "must be between 1 and 1000000"));
        }
        if self.stream_check_chars > 1_000_000 {
            out.push(issue(
                "stream_check_chars",
                "must be between 0 (only at the end) and 1000000",
            ));
        }
        if let Some(v) = &self.api_key_env {
            if v.is_empty() {
                out.push(issue("api_key_env", "the name of an environment variable"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_settings_are_named_by_path() {
        assert!(ClassifierConfig::default().validate().is_empty());
        let cfg = ClassifierConfig {
            enabled: true,
            url: "https://classifier.example/v1".into(),
            threshold: 1.5,
            timeout: HumanDuration::from_secs(0),
            stream_check_chars: 2_000_000,
            ..ClassifierConfig::default()
        };
        let paths: Vec<String> = cfg.validate().into_iter().map(|i| i.path).collect();
        assert_eq!(
            paths,
            [
                "classifier.url",
                "classifier.timeout",
                "classifier.threshold",
                "classifier.stream_check_chars"
            ]
        );
    }
}

//! An external classifier beside the keyword library (TC260-003 §8.4; Interim Measures Art. 4):
//! after the policy has let a prompt through, the prompt's text (as forwarded: redactions
//! applied) goes to a classification model, whose scores map onto the policy's categories. A score
//! at or above the threshold is a finding of that category, acted on by the category's action:
//! `block` refuses the prompt as a keyword would (400 `content_filter`, the category named, the
//! model never called); `flag` and `redact` are recorded (a classifier finding has no span to
//! mask). Every finding is an audit record with detector `classifier` and its score.
//!
//! A failure (error, bad answer, no answer within `timeout`) follows `on_error`: `closed`
//! refuses with 503 (DESIGN invariant 6), `open` serves on the keyword verdict; both are counted
//! (`shenhe_classifier_calls_total{result}`).

pub mod config;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

pub use config::{ClassifierConfig, Failure, Format};

use crate::metrics::metrics;
use crate::policy::{Detector, Direction, Finding, Policy};

/// The classifier client of one runtime (rebuilt on reload).
#[derive(Debug)]
pub struct Classifier {
    client: reqwest::Client,
    url: String,
    format: Format,
    model: Option<String>,
    api_key_env: Option<String>,
    threshold: f64,
    map: BTreeMap<String, String>,
    on_error: Failure,
    max_chars: usize,
    answers: bool,
    streams: bool,
    stream_check_chars: usize,
}

/// Why the classifier gave no verdict.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error("the classifier did not answer within its timeout")]
    Timeout,
    #[error("the classifier failed: {0}")]
    Failed(String),
}

impl Classifier {
    /// The client for `cfg` (validated), or `None` when off. Every mapped category must be one
    /// of `policy`'s.
    pub fn new(cfg: &ClassifierConfig, policy: &Policy) -> Result<Option<Arc<Self>>, String> {
        if !cfg.enabled {
            return Ok(None);
        }
        for (label, cat) in &cfg.categories {
            if policy.category(cat).is_none() {
                return Err(format!(
                    "classifier.categories.{label}: `{cat}` is not a category of the policy"
                ));
            }
        }
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout.get())
            .build()
            .map_err(|e| format!("classifier: {e}"))?;
        Ok(Some(Arc::new(Self {
            client,
            url: cfg.url.clone(),
            format: cfg.format,
            model: cfg.model.clone(),
            api_key_env: cfg.api_key_env.clone(),
            threshold: cfg.threshold,
            map: cfg.categories.clone(),
            on_error: cfg.on_error,
            max_chars: cfg.max_chars,
            answers: cfg.answers,
            streams: cfg.streams,
            stream_check_chars: cfg.stream_check_chars,
        })))
    }

    /// Whether streamed answers are classified at their end.
    pub fn judges_streams(&self) -> bool {
        self.streams
    }

    /// With `judges_streams`: characters released between two checks of a streamed answer while
    /// it flows (0: only at its end).
    pub fn stream_check_chars(&self) -> usize {
        if self.streams {
            self.stream_check_chars
        } else {
            0
        }
    }

    /// Most characters of a text sent (its end).
    pub fn max_chars(&self) -> usize {
        self.max_chars
    }

    /// Whether whole answers are classified too.
    pub fn judges_answers(&self) -> bool {
        self.answers
    }

    /// Whether a failure lets the prompt through.
    pub fn fails_open(&self) -> bool {
        self.on_error == Failure::Open
    }

    /// The classifier's scores for `text`, by its own labels.
    pub async fn scores(
        &self,
        text: &str,
        direction: Direction,
        request_id: &str,
    ) -> Result<Vec<(String, f64)>, ClassifyError> {
        let text = tail_chars(text, self.max_chars);
        let body = match self.format {
            Format::Shenhe => {
                json!({"text": text, "direction": direction.as_str(), "request_id": request_id})
            }
            Format::OpenaiModeration => match &self.model {
                Some(m) => json!({"input": text, "model": m}),
                None => json!({"input": text}),
            },
        };
        let started = Instant::now();
        let mut req = self.client.post(&self.url).json(&body);
        if let Some(key) = self
            .api_key_env
            .as_deref()
            .and_then(|v| std::env::var(v).ok())
        {
            req = req.bearer_auth(key);
        }
        let res = async {
            let resp = req.send().await?;
            let status = resp.status();
            let bytes = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, bytes))
        }
        .await;
        metrics()
            .classifier_duration
            .observe(started.elapsed().as_secs_f64());
        let outcome = match res {
            Err(e) if e.is_timeout() => Err(ClassifyError::Timeout),
            Err(e) => Err(ClassifyError::Failed(e.without_url().to_string())),
            Ok((status, _)) if !status.is_success() => {
                Err(ClassifyError::Failed(format!("HTTP {}", status.as_u16())))
            }
            Ok((_, bytes)) => parse_scores(self.format, &bytes).map_err(ClassifyError::Failed),
        };
        let result = match &outcome {
            Ok(_) => "ok",
            Err(ClassifyError::Timeout) => "timeout",
            Err(ClassifyError::Failed(_)) => "error",
        };
        metrics()
            .classifier_calls
            .with_label_values(&[result])
            .inc();
        outcome
    }

    /// The findings `scores` make in a text of `len` bytes judged as `direction`: each label at
    /// or above the threshold that maps onto a policy category applying to `direction`, acting
    /// as the category does on a `minor`'s request or anyone's.
    pub fn findings(
        &self,
        policy: &Policy,
        direction: Direction,
        scores: &[(String, f64)],
        len: usize,
        minor: bool,
    ) -> Vec<Finding> {
        let mut out: Vec<Finding> = Vec::new();
        for (label, score) in scores {
            if *score < self.threshold {
                continue;
            }
            let id = self.map.get(label).unwrap_or(label);
            let Some(cat) = policy.category(id) else {
                metrics()
                    .classifier_calls
                    .with_label_values(&["unknown_label"])
                    .inc();
                continue;
            };
            if !cat.applies_to.includes(direction) || out.iter().any(|f| f.category == cat.id) {
                continue;
            }
            out.push(Finding {
                category: Arc::clone(&cat.id),
                action: cat.action_for(minor),
                severity: cat.severity,
                detector: Detector::Classifier {
                    score_permille: (score.clamp(0.0, 1.0) * 1000.0).round() as u16,
                },
                span: 0..len,
            });
        }
        // The most severe action first, so a block among them decides.
        out.sort_by_key(|f| std::cmp::Reverse(f.action.rank()));
        out
    }
}

/// One line for `shenhe check`.
pub fn summary(cfg: &ClassifierConfig) -> String {
    if !cfg.enabled {
        return "off (keywords and detectors only)".into();
    }
    let format = match cfg.format {
        Format::Shenhe => "shenhe",
        Format::OpenaiModeration => "openai_moderation",
    };
    let on_error = match cfg.on_error {
        Failure::Closed => "closed",
        Failure::Open => "open",
    };
    let streamed = match cfg.stream_check_chars {
        0 => "streamed answers at their end".to_string(),
        n => format!("streamed answers every {n} characters and at their end"),
    };
    let what = match (cfg.answers, cfg.streams) {
        (false, false) => "prompts".to_string(),
        (true, false) => "prompts and whole answers".to_string(),
        (false, true) => format!("prompts and {streamed}"),
        (true, true) => format!("prompts, whole answers and {streamed}"),
    };
    format!(
        "{} ({format}), {what}, threshold {}, timeout {}, fails {on_error}",
        cfg.url, cfg.threshold, cfg.timeout
    )
}

/// The scores in a classifier's answer.
pub fn parse_scores(format: Format, body: &[u8]) -> Result<Vec<(String, f64)>, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let bad = |what: &str| format!("the answer has no {what}");
    match format {
        Format::Shenhe => v["categories"]
            .as_array()
            .ok_or_else(|| bad("`categories` array"))?
            .iter()
            .map(|c| {
                let id = c["id"].as_str().ok_or_else(|| bad("category `id`"))?;
                let score = c["score"].as_f64().ok_or_else(|| bad("category `score`"))?;
                Ok((id.to_string(), score))
            })
            .collect(),
        Format::OpenaiModeration => v["results"][0]["category_scores"]
            .as_object()
            .ok_or_else(|| bad("`results[0].category_scores`"))?
            .iter()
            .map(|(k, s)| {
                let score = s.as_f64().ok_or_else(|| bad("numeric score"))?;
                Ok((k.clone(), score))
            })
            .collect(),
    }
}

/// The last `n` characters of `s`.
fn tail_chars(s: &str, n: usize) -> &str {
    match s.char_indices().rev().nth(n.saturating_sub(1)) {
        Some((i, _)) if n > 0 => &s[i..],
        _ if n == 0 => "",
        _ => s,
    }
}

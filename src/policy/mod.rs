//! Minimal keyword policy with the policy engine's interface, so the dialects and the stream
//! guard can be built and tested while the full engine (normalization, PII detectors,
//! TC260 categories) is written. Replaced wholesale by the full engine.

pub mod config;

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Prompt,
    Completion,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Prompt => "prompt",
            Direction::Completion => "completion",
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Flag,
    Redact,
    #[default]
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Flag => "flag",
            Action::Redact => "redact",
            Action::Block => "block",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Detector {
    Keyword { term_id: u32 },
    Pattern { name: Arc<str> },
    Pii { kind: &'static str },
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub category: Arc<str>,
    pub action: Action,
    pub severity: u8,
    pub detector: Detector,
    pub span: Range<usize>,
}

#[derive(Debug, Clone)]
pub struct Category {
    pub id: Arc<str>,
    pub action: Action,
    pub refusal_zh: String,
    pub refusal_en: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    Invalid(String),
}

pub struct Compiled {
    pub policy: Policy,
    pub warnings: Vec<String>,
}

pub struct Policy {
    terms: Vec<(String, usize)>,
    categories: Vec<Category>,
    ac: Option<AhoCorasick>,
    max_len: usize,
    version: String,
}

impl Policy {
    pub fn compile(cfg: &config::PolicyConfig, _base_dir: &Path) -> Result<Compiled, PolicyError> {
        let mut terms = Vec::new();
        let mut categories = Vec::new();
        for (ci, c) in cfg.categories.iter().enumerate() {
            categories.push(Category {
                id: Arc::from(c.id.as_str()),
                action: c.action,
                refusal_zh: "抱歉，该内容违反相关规定，无法提供。".into(),
                refusal_en: "Sorry, this content cannot be provided.".into(),
            });
            for k in &c.keywords {
                terms.push((k.to_lowercase(), ci));
            }
        }
        let ac = if terms.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(terms.iter().map(|t| t.0.as_bytes()))
                    .map_err(|e| PolicyError::Invalid(e.to_string()))?,
            )
        };
        let max_len = terms.iter().map(|t| t.0.len()).max().unwrap_or(0);
        let version = format!("p-{:016x}", terms.len() as u64 * 7919 + max_len as u64);
        Ok(Compiled {
            policy: Policy {
                terms,
                categories,
                ac,
                max_len,
                version,
            },
            warnings: Vec::new(),
        })
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn scan(&self, text: &str, _dir: Direction) -> Vec<Finding> {
        let Some(ac) = &self.ac else {
            return Vec::new();
        };
        let lower = text.to_lowercase();
        if lower.len() != text.len() {
            return Vec::new();
        }
        ac.find_iter(lower.as_bytes())
            .map(|m| {
                let (_, ci) = &self.terms[m.pattern().as_usize()];
                let c = &self.categories[*ci];
                Finding {
                    category: c.id.clone(),
                    action: c.action,
                    severity: 5,
                    detector: Detector::Keyword {
                        term_id: m.pattern().as_u32(),
                    },
                    span: m.start()..m.end(),
                }
            })
            .collect()
    }

    pub fn scanner(self: &Arc<Self>, dir: Direction) -> StreamScanner {
        StreamScanner {
            policy: self.clone(),
            dir,
            text: String::new(),
            reported: 0,
            released: 0,
        }
    }

    pub fn mask(&self, _f: &Finding, matched: &str) -> String {
        "*".repeat(matched.chars().count())
    }

    pub fn redact(&self, text: &str, findings: &[Finding]) -> String {
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in findings.iter().filter(|f| f.action == Action::Redact) {
            if f.span.start < at {
                continue;
            }
            out.push_str(&text[at..f.span.start]);
            out.push_str(&self.mask(f, &text[f.span.clone()]));
            at = f.span.end;
        }
        out.push_str(&text[at..]);
        out
    }

    pub fn category(&self, id: &str) -> Option<&Category> {
        self.categories.iter().find(|c| &*c.id == id)
    }

    pub fn term(&self, term_id: u32) -> Option<&str> {
        self.terms.get(term_id as usize).map(|t| t.0.as_str())
    }
}

pub struct ScanStep {
    pub findings: Vec<Finding>,
    pub released: usize,
}

/// Rescans the whole text on each push and holds the last `max_len - 1` bytes: correct, not minimal.
pub struct StreamScanner {
    policy: Arc<Policy>,
    dir: Direction,
    text: String,
    reported: usize,
    released: usize,
}

impl StreamScanner {
    pub fn push(&mut self, piece: &str) -> ScanStep {
        self.text.push_str(piece);
        let hold = self.policy.max_len.saturating_sub(1);
        let mut cut = self.text.len().saturating_sub(hold);
        while !self.text.is_char_boundary(cut) {
            cut -= 1;
        }
        self.step(cut.max(self.released))
    }

    pub fn finish(&mut self) -> ScanStep {
        let n = self.text.len();
        self.step(n)
    }

    fn step(&mut self, upto: usize) -> ScanStep {
        let all = self.policy.scan(&self.text, self.dir);
        let findings: Vec<Finding> = all
            .into_iter()
            .filter(|f| f.span.start >= self.reported && f.span.start < upto)
            .collect();
        let mut released = upto;
        for f in &findings {
            released = released.max(f.span.end.min(self.text.len()));
        }
        if let Some(f) = findings.last() {
            self.reported = f.span.end;
        }
        self.reported = self.reported.max(upto);
        self.released = released;
        ScanStep { findings, released }
    }
}

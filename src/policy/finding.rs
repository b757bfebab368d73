//! What a scan reports: findings with their category, action, detector and original byte span.

use std::ops::Range;
use std::sync::Arc;

use serde::{Serialize, Serializer};

use super::categories::Action;
use super::pii::PiiKind;

/// Serialize an `Arc<str>` as a string (serde's `rc` feature is not enabled).
pub(crate) fn ser_arc_str<S: Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

/// Which side of the exchange a text comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
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

/// Which detector produced a finding.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Detector {
    /// A keyword-library term; resolve the text with `Policy::term`.
    Keyword { term_id: u32 },
    /// A custom regex, named `<category>#<index>`.
    Pattern {
        #[serde(serialize_with = "ser_arc_str")]
        name: Arc<str>,
    },
    /// A built-in PII detector.
    Pii { kind: PiiKind },
    /// The external classifier, with its score in thousandths (the span is the whole text).
    Classifier { score_permille: u16 },
}

/// One match of the policy in a text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Finding {
    #[serde(serialize_with = "ser_arc_str")]
    pub category: Arc<str>,
    pub action: Action,
    /// 1–5, from the category.
    pub severity: u8,
    pub detector: Detector,
    /// Byte offsets in the original (un-normalized) text, on char boundaries.
    pub span: Range<usize>,
}

impl Finding {
    /// Sort key: span order, then category, so results compare equal however they were found.
    pub(crate) fn sort_key(&self) -> (usize, usize, &str) {
        (self.span.start, self.span.end, &self.category)
    }
}

/// A finding as printed by `shenhe scan` (one JSON object a line). Carries the matched term,
/// so it is for operators only, never for clients (DESIGN invariant 7).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportLine {
    #[serde(serialize_with = "ser_arc_str")]
    pub category: Arc<str>,
    pub action: Action,
    pub severity: u8,
    pub detector: Detector,
    /// The library term for keyword findings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
    pub span: Range<usize>,
    /// The original text of the span.
    pub matched: String,
}

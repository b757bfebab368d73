//! The monitors' review queue (TC260-003 §7: monitors in proportion to the service, improving it
//! from what they see): decisions the policy let through with a flag (or, as configured, redacted
//! or blocked) wait for a person, who confirms or dismisses each; every verdict is an audit
//! record; the queue's depth and oldest age are metrics.
//!
//! An item holds what the audit record holds and no more (Art. 11): the category, the pseudonymous
//! user, the request and content ids, the policy version and the bounded, PII-masked excerpt.
//! Items are offered where decisions are recorded ([`Review::offer`], never waiting: a full queue
//! drops and counts), and a writer task stores them, retrying while the store is down.
//!
//! Data meets the parts in this order: [`config`] (YAML `review:`), this module (the [`Review`]
//! service and its writer), [`store`] (PostgreSQL or memory), the admin handlers in
//! `admin::review`.

pub mod config;
pub mod store;

#[cfg(test)]
mod tests;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::pg::Closed;
pub use config::{ReviewConfig, StoreKind};
use store::{Store, StoreError};

use crate::audit::{Record, RecordKind};
use crate::metrics::metrics;

/// Most items one listing returns.
pub const LIST_MAX: usize = 1000;
/// Longest reviewer's note, in characters.
pub const NOTE_MAX_CHARS: usize = 1000;
/// Items the writer stores at once.
const BATCH: usize = 100;
/// Wait before the writer tries a failed batch again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Reviewed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Reviewed => "reviewed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "reviewed" => Some(Self::Reviewed),
            _ => None,
        }
    }
}

/// A monitor's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The content is a violation (the list or the category's action may need a change).
    Confirmed,
    /// The content is fine (a false positive: an allow phrase may be due).
    Dismissed,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirmed => "confirmed",
            Self::Dismissed => "dismissed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "confirmed" => Some(Self::Confirmed),
            "dismissed" => Some(Self::Dismissed),
            _ => None,
        }
    }
}

/// One item of the queue: a recorded decision, as bounded as its audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    /// `r-` and 32 hex digits.
    pub id: String,
    /// When the decision was made.
    pub created_at: DateTime<Utc>,
    pub request_id: Option<String>,
    pub content_id: Option<String>,
    /// Pseudonymous user id.
    pub user: Option<String>,
    pub route: Option<String>,
    /// `prompt` or `completion`.
    pub direction: Option<String>,
    pub category: String,
    /// The action taken: `flag`, `redact` or `block`.
    pub action: String,
    /// Bounded, PII-masked window around the match, from the audit record.
    pub excerpt: Option<String>,
    /// What found it (`keyword`, `pii:mobile`, `classifier`, …) and, for a keyword, the term's
    /// id in the policy of `policy_version` (the term itself is read from the policy).
    pub detector: Option<String>,
    pub term_id: Option<String>,
    pub policy_version: Option<String>,
    pub status: Status,
    pub verdict: Option<Verdict>,
    pub note: Option<String>,
    pub reviewed_at: Option<DateTime<Utc>>,
}

/// Items counted by what found them since a time (`Review::tally`): how often a category, a
/// detector or one keyword was confirmed by monitors or dismissed as a false positive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub category: String,
    pub detector: Option<String>,
    pub term_id: Option<String>,
    pub policy_version: Option<String>,
    pub pending: u64,
    pub confirmed: u64,
    pub dismissed: u64,
    /// Up to [`TALLY_EXAMPLES`] dismissed items, newest first: where an allow phrase may be due.
    pub dismissed_examples: Vec<String>,
}

/// Dismissed items named per tally row.
pub const TALLY_EXAMPLES: usize = 5;
/// Most tally rows one call returns (most dismissed first).
pub const TALLY_MAX: usize = 10_000;

/// Which items a listing returns: oldest first, so monitors work the queue in order.
#[derive(Debug, Clone)]
pub struct ListFilter {
    pub status: Status,
    pub category: Option<String>,
    pub limit: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("{0}")]
    Invalid(String),
    #[error("no review item with this id")]
    NotFound,
    #[error("the item is already reviewed")]
    AlreadyReviewed,
    #[error("{0}")]
    Store(String),
}

/// The review service: a bounded queue in front of a writer task and a store.
pub struct Review {
    actions: Vec<crate::policy::Action>,
    confirmed_strikes: bool,
    sample_rate: f64,
    tx: mpsc::Sender<Item>,
    store: std::sync::Arc<Store>,
    timeout: Duration,
}

impl Review {
    /// Start the service and its writer task (on the caller's runtime), or `None` when off.
    /// `base_dir` resolves `database_ca_file`.
    pub fn start(cfg: &ReviewConfig, base_dir: &std::path::Path) -> Result<Option<Self>, String> {
        if !cfg.enabled {
            return Ok(None);
        }
        let timeout = cfg.store_timeout.get();
        let store = std::sync::Arc::new(match cfg.store {
            StoreKind::Memory => {
                tracing::warn!("review.store: memory keeps the review queue in this process only: it is lost on restart");
                Store::memory(cfg.memory_items)
            }
            StoreKind::Postgres => Store::Postgres(Box::new(store::PgStore::new(
                &cfg.database_url,
                &cfg.table,
                timeout,
                cfg.database_ca_file
                    .as_ref()
                    .map(|f| base_dir.join(f))
                    .as_deref(),
            )?)),
        });
        let (tx, rx) = mpsc::channel(cfg.queue_capacity);
        tokio::spawn(writer(rx, store.clone(), timeout));
        Ok(Some(Self {
            actions: cfg.actions.clone(),
            confirmed_strikes: cfg.confirmed_strikes,
            sample_rate: cfg.sample_rate,
            tx,
            store,
            timeout,
        }))
    }

    /// Queue the decision in `r` when its action is one reviewed; never waits.
    pub fn offer(&self, r: &Record) {
        if r.kind != RecordKind::Decision {
            return;
        }
        let Some(action) = r.action else {
            return;
        };
        if self.actions.iter().any(|a| a.as_str() == action.as_str()) {
            let category = r.category.clone().unwrap_or_default();
            self.push(item(r, category, action.as_str()));
        }
    }

    /// Whether a `confirmed` verdict counts a strike against the item's user.
    pub fn confirmed_strikes(&self) -> bool {
        self.confirmed_strikes
    }

    /// Whether this prompt is one of the sample (`review.sample_rate`).
    pub fn samples(&self) -> bool {
        self.sample_rate > 0.0 && rand::random::<f64>() < self.sample_rate
    }

    /// Queue a sampled prompt: `r` is its (unwritten) record, with the excerpt; never waits.
    pub fn offer_sample(&self, r: &Record) {
        self.push(item(r, SAMPLE.into(), SAMPLE));
    }

    fn push(&self, item: Item) {
        let m = metrics();
        match self.tx.try_send(item) {
            Ok(()) => m.review_items.with_label_values(&["queued"]).inc(),
            Err(_) => m.review_items.with_label_values(&["dropped"]).inc(),
        }
    }

    async fn call<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, ReviewError> {
        bounded(op, self.timeout, f)
            .await
            .map_err(ReviewError::Store)
    }

    pub async fn list(&self, f: ListFilter) -> Result<Vec<Item>, ReviewError> {
        let f = ListFilter {
            limit: f.limit.clamp(1, LIST_MAX),
            ..f
        };
        self.call("list", self.store.list(&f)).await
    }

    pub async fn get(&self, id: &str) -> Result<Item, ReviewError> {
        if !is_item_id(id) {
            return Err(ReviewError::NotFound);
        }
        self.call("get", self.store.get(id))
            .await?
            .ok_or(ReviewError::NotFound)
    }

    /// A monitor's verdict on one item, once.
    pub async fn decide(
        &self,
        id: &str,
        verdict: Verdict,
        note: Option<String>,
    ) -> Result<Item, ReviewError> {
        if !is_item_id(id) {
            return Err(ReviewError::NotFound);
        }
        let note = note.map(|n| n.trim().to_string()).filter(|n| !n.is_empty());
        if note
            .as_ref()
            .is_some_and(|n| n.chars().count() > NOTE_MAX_CHARS)
        {
            return Err(ReviewError::Invalid(format!(
                "note is longer than {NOTE_MAX_CHARS} characters"
            )));
        }
        let at = crate::pg::now_millis();
        match self
            .call(
                "decide",
                self.store.decide(id, verdict, note.as_deref(), at),
            )
            .await?
        {
            Closed::Done(item) => {
                metrics()
                    .review_verdicts
                    .with_label_values(&[verdict.as_str(), item.category.as_str()])
                    .inc();
                Ok(*item)
            }
            Closed::Already => Err(ReviewError::AlreadyReviewed),
            Closed::Missing => Err(ReviewError::NotFound),
        }
    }

    /// Items since `since`, counted by category, detector, term and policy version; the rows
    /// with the most dismissals first (at most [`TALLY_MAX`]).
    pub async fn tally(&self, since: DateTime<Utc>) -> Result<Vec<Tally>, ReviewError> {
        self.call("tally", self.store.tally(since)).await
    }

    /// Art. 11 erasure of a user: their items go with their records.
    pub async fn erase_user(&self, user: &str) -> Result<u64, ReviewError> {
        self.call("erase", self.store.erase_user(user)).await
    }

    /// Set `shenhe_review_queue_depth` and `shenhe_review_oldest_age_seconds` from the store.
    pub async fn refresh_gauges(&self) {
        let Ok((depth, oldest)) = self.call("counts", self.store.pending_counts()).await else {
            return;
        };
        let m = metrics();
        m.review_queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        let age = oldest.map_or(0, |t| (Utc::now() - t).num_seconds().max(0));
        m.review_oldest_age.set(age);
    }
}

/// The category and action of a sampled item.
pub const SAMPLE: &str = "sample";
/// Most characters of a sampled prompt kept (its end, where the newest turn is).
pub const SAMPLE_CHARS: usize = 200;

/// An item from a record of the request it is about.
fn item(r: &Record, category: String, action: &str) -> Item {
    Item {
        id: crate::pg::random_id("r-"),
        created_at: r.ts,
        request_id: r.request_id.clone(),
        content_id: r.content_id.clone(),
        user: r.user.clone(),
        route: r.route.clone(),
        direction: r.direction.map(|d| d.as_str().to_string()),
        category,
        action: action.to_string(),
        excerpt: r.excerpt.clone(),
        detector: r.detector.clone(),
        term_id: r.term_id.clone(),
        policy_version: r.policy_version.clone(),
        status: Status::Pending,
        verdict: None,
        note: None,
        reviewed_at: None,
    }
}

/// One store call within `timeout`, failures counted by operation.
async fn bounded<T>(
    op: &'static str,
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, String> {
    let res = match tokio::time::timeout(timeout, f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("review store did not answer within {timeout:?}")),
    };
    res.inspect_err(|e| {
        metrics().review_store_errors.with_label_values(&[op]).inc();
        tracing::warn!(op, error = %e, "Review store call failed");
    })
}

/// Store queued items in batches; a failed batch is tried again until it is stored (the channel
/// meanwhile fills, and past its capacity new items are dropped and counted).
async fn writer(mut rx: mpsc::Receiver<Item>, store: std::sync::Arc<Store>, timeout: Duration) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        while bounded("insert", timeout, store.insert(&batch))
            .await
            .is_err()
        {
            tokio::time::sleep(RETRY_AFTER).await;
        }
        batch.clear();
    }
}

/// `r-` and 32 lowercase hex digits.
pub fn is_item_id(s: &str) -> bool {
    crate::pg::is_random_id("r-", s)
}

/// One line for `shenhe check`.
pub fn summary(cfg: &ReviewConfig) -> String {
    if !cfg.enabled {
        return "off (no review queue)".into();
    }
    let store = cfg.store.describe(&cfg.table);
    let actions = cfg
        .actions
        .iter()
        .map(|a| a.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let sample = if cfg.sample_rate > 0.0 {
        format!(
            " and {} % of the prompts let through",
            cfg.sample_rate * 100.0
        )
    } else {
        String::new()
    };
    let strikes = if cfg.confirmed_strikes {
        "; a confirmed verdict is a strike (with enforce)"
    } else {
        ""
    };
    format!("{store}; queues {actions} decisions{sample}{strikes}")
}

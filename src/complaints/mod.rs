//! Complaints and reports (Interim Measures Art. 15; TC260-003 §7): an easy way in, a published
//! procedure with a time limit per type, handling on record, and the outcome told back.
//!
//! A complaint names the output it is about by content id (the GB 45438 `ProduceID` every
//! labelled answer carries) or request id (`x-request-id`), so an operator goes straight from it
//! to the audit records of that answer. Users file through the provider's app at
//! `complaints.public_path` on the public listener (their pseudonymous id from the same header as
//! the audit records; they read the outcome there with the complaint's id); operators file what
//! came by phone, e-mail or letter, list, and resolve through the admin API. Filing and resolving
//! are both audit records (`kind: complaint`). Open and overdue counts by type are metrics, read
//! from the store at each scrape, so every replica reports the same figures.
//!
//! Data meets the parts in this order: [`config`] (YAML `complaints:`), this module (the
//! [`Complaints`] service: checks, ids, time limits), [`store`] (PostgreSQL or memory), then the
//! HTTP handlers in [`public`] and `admin::complaints`.

pub mod config;
pub mod public;
pub mod store;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::pg::Closed;
pub use config::{ComplaintType, ComplaintsConfig, StoreKind};
use store::{Store, StoreError};

use crate::metrics::metrics;

/// Longest content id or request id a complaint keeps, in characters.
pub const ID_MAX_CHARS: usize = 128;
/// Longest reply to the complainant, in characters.
pub const REPLY_MAX_CHARS: usize = 2000;
/// Most complaints one listing returns.
pub const LIST_MAX: usize = 1000;

/// Where a complaint came in (TC260-003 §7 names phone, e-mail, an interactive window, SMS).
pub const CHANNELS: &[&str] = &["app", "phone", "email", "sms", "letter", "web", "other"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Open,
    Resolved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(Self::Open),
            "resolved" => Some(Self::Resolved),
            _ => None,
        }
    }
}

/// How a complaint ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The complaint was right; the operator acted (removed, relabelled, lifted, ...).
    Upheld,
    /// The complaint was looked at and no action was due.
    Rejected,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upheld => "upheld",
            Self::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "upheld" => Some(Self::Upheld),
            "rejected" => Some(Self::Rejected),
            _ => None,
        }
    }
}

/// One complaint as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Complaint {
    /// `c-` and 32 hex digits: unguessable, so holding it is what lets a complainant read it.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub channel: String,
    pub status: Status,
    pub content_id: Option<String>,
    pub request_id: Option<String>,
    pub description: String,
    /// Pseudonymous id of who filed it (`u-…`), when known.
    pub reporter: Option<String>,
    pub created_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub outcome: Option<Outcome>,
    /// The answer told back to the complainant.
    pub reply: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
}

impl Complaint {
    /// Still open past its time limit.
    pub fn overdue(&self, now: DateTime<Utc>) -> bool {
        self.status == Status::Open && self.due_at < now
    }

    /// What the complainant sees: status and answer, not the description nor who filed it.
    pub fn public_view(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "type": self.kind,
            "status": self.status,
            "content_id": self.content_id,
            "request_id": self.request_id,
            "created_at": self.created_at,
            "due_at": self.due_at,
            "outcome": self.outcome,
            "reply": self.reply,
            "resolved_at": self.resolved_at,
        })
    }

    /// What an operator sees: everything, and whether it is overdue.
    pub fn admin_view(&self, now: DateTime<Utc>) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["overdue"] = self.overdue(now).into();
        v
    }
}

/// A complaint as a caller files it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewComplaint {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub content_id: Option<String>,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub description: String,
}

/// Which complaints a listing returns.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<Status>,
    pub kind: Option<String>,
    /// Only open ones past their time limit.
    pub overdue: bool,
    pub content_id: Option<String>,
    pub request_id: Option<String>,
    pub limit: usize,
}

impl ListFilter {
    fn admits(&self, c: &Complaint, now: DateTime<Utc>) -> bool {
        self.status.is_none_or(|s| c.status == s)
            && self.kind.as_ref().is_none_or(|k| &c.kind == k)
            && (!self.overdue || c.overdue(now))
            && self
                .content_id
                .as_ref()
                .is_none_or(|x| c.content_id.as_ref() == Some(x))
            && self
                .request_id
                .as_ref()
                .is_none_or(|x| c.request_id.as_ref() == Some(x))
    }
}

/// Open and overdue complaints by type.
pub type TypeCounts = BTreeMap<String, (u64, u64)>;

/// Why a complaint call failed; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ComplaintError {
    /// The caller's input, naming the field.
    #[error("{message}")]
    Invalid {
        param: &'static str,
        message: String,
    },
    #[error("no complaint with this id")]
    NotFound,
    #[error("the complaint is already resolved")]
    AlreadyResolved,
    #[error("{0} open complaints already: wait for an answer to one of them")]
    TooManyOpen(u32),
    #[error("{0}")]
    Store(String),
}

impl ComplaintError {
    fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            param,
            message: message.into(),
        }
    }
}

/// The complaint service: configured types and limits in front of a store.
pub struct Complaints {
    types: BTreeMap<String, ComplaintType>,
    procedure: String,
    public_path: Option<String>,
    max_open_per_user: u32,
    max_description_chars: usize,
    timeout: Duration,
    store: Store,
}

impl Complaints {
    /// The service for `cfg` (already validated), or `None` when complaints are off. Opens no
    /// connection: the first call does, so a database down at start does not stop model traffic.
    pub fn new(cfg: &ComplaintsConfig, base_dir: &Path) -> Result<Option<Self>, String> {
        if !cfg.enabled {
            return Ok(None);
        }
        let procedure = match (&cfg.procedure, &cfg.procedure_file) {
            (Some(p), _) => p.clone(),
            (None, Some(f)) => {
                let path = base_dir.join(f);
                std::fs::read_to_string(&path).map_err(|e| {
                    format!(
                        "complaints.procedure_file: cannot read {}: {e}",
                        path.display()
                    )
                })?
            }
            (None, None) => default_procedure(&cfg.types),
        };
        let timeout = cfg.store_timeout.get();
        let store = match cfg.store {
            StoreKind::Memory => {
                tracing::warn!("complaints.store: memory keeps complaints in this process only: they are lost on restart");
                Store::Memory(Default::default())
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
        };
        Ok(Some(Self {
            types: cfg.types.clone(),
            procedure,
            public_path: cfg.public_path.clone(),
            max_open_per_user: cfg.max_open_per_user,
            max_description_chars: cfg.max_description_chars,
            timeout,
            store,
        }))
    }

    pub fn public_path(&self) -> Option<&str> {
        self.public_path.as_deref()
    }

    pub fn types(&self) -> &BTreeMap<String, ComplaintType> {
        &self.types
    }

    pub fn procedure(&self) -> &str {
        &self.procedure
    }

    /// Run one store call within the time limit, counting failures.
    async fn call<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, ComplaintError> {
        let res = match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "complaint store did not answer within {:?}",
                self.timeout
            )),
        };
        res.map_err(|e| {
            metrics()
                .complaints_store_errors
                .with_label_values(&[op])
                .inc();
            tracing::warn!(op, error = %e, "Complaint store call failed");
            ComplaintError::Store(e)
        })
    }

    /// File a complaint. `reporter` is the filer's pseudonymous id when known; `channel` is one
    /// of [`CHANNELS`].
    pub async fn file(
        &self,
        new: NewComplaint,
        reporter: Option<String>,
        channel: &str,
    ) -> Result<Complaint, ComplaintError> {
        let Some(t) = self.types.get(&new.kind) else {
            return Err(ComplaintError::invalid(
                "type",
                format!(
                    "unknown complaint type `{}`; one of: {}",
                    bounded(&new.kind, 40),
                    self.types.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        if !CHANNELS.contains(&channel) {
            return Err(ComplaintError::invalid(
                "channel",
                format!("unknown channel; one of: {}", CHANNELS.join(", ")),
            ));
        }
        let content_id = checked_id(new.content_id, "content_id")?;
        let request_id = checked_id(new.request_id, "request_id")?;
        let description = new.description.trim().to_string();
        if description.chars().count() > self.max_description_chars {
            return Err(ComplaintError::invalid(
                "description",
                format!(
                    "description is longer than {} characters",
                    self.max_description_chars
                ),
            ));
        }
        if content_id.is_none() && request_id.is_none() && description.is_empty() {
            return Err(ComplaintError::invalid(
                "description",
                "say what the complaint is about: a content_id or request_id of the answer, or a description",
            ));
        }
        if let Some(r) = &reporter {
            let open = self.call("open_by", self.store.open_by(r)).await?;
            if open >= u64::from(self.max_open_per_user) {
                return Err(ComplaintError::TooManyOpen(self.max_open_per_user));
            }
        }
        let created_at = crate::pg::now_millis();
        let sla = chrono::Duration::from_std(t.sla.get()).unwrap_or(chrono::Duration::MAX);
        let c = Complaint {
            id: crate::pg::random_id("c-"),
            kind: new.kind,
            channel: channel.to_string(),
            status: Status::Open,
            content_id,
            request_id,
            description,
            reporter,
            created_at,
            due_at: created_at + sla,
            outcome: None,
            reply: None,
            resolved_at: None,
        };
        self.call("insert", self.store.insert(&c)).await?;
        metrics()
            .complaints_filed
            .with_label_values(&[c.kind.as_str(), channel])
            .inc();
        Ok(c)
    }

    pub async fn get(&self, id: &str) -> Result<Complaint, ComplaintError> {
        if !is_complaint_id(id) {
            return Err(ComplaintError::NotFound);
        }
        self.call("get", self.store.get(id))
            .await?
            .ok_or(ComplaintError::NotFound)
    }

    pub async fn list(&self, filter: ListFilter) -> Result<Vec<Complaint>, ComplaintError> {
        if let Some(k) = &filter.kind {
            if !self.types.contains_key(k) {
                return Err(ComplaintError::invalid("type", "unknown complaint type"));
            }
        }
        let filter = ListFilter {
            limit: filter.limit.clamp(1, LIST_MAX),
            ..filter
        };
        self.call("list", self.store.list(&filter, Utc::now()))
            .await
    }

    /// Close a complaint with its outcome and the answer the complainant reads.
    pub async fn resolve(
        &self,
        id: &str,
        outcome: Outcome,
        reply: &str,
    ) -> Result<Complaint, ComplaintError> {
        if !is_complaint_id(id) {
            return Err(ComplaintError::NotFound);
        }
        let reply = reply.trim();
        if reply.is_empty() {
            return Err(ComplaintError::invalid(
                "reply",
                "the answer to the complainant is required (Art. 15: report the outcome back)",
            ));
        }
        if reply.chars().count() > REPLY_MAX_CHARS {
            return Err(ComplaintError::invalid(
                "reply",
                format!("reply is longer than {REPLY_MAX_CHARS} characters"),
            ));
        }
        let at = crate::pg::now_millis();
        match self
            .call("resolve", self.store.resolve(id, outcome, reply, at))
            .await?
        {
            Closed::Done(c) => {
                let in_time = if c.due_at >= at { "yes" } else { "no" };
                metrics()
                    .complaints_resolved
                    .with_label_values(&[c.kind.as_str(), outcome.as_str(), in_time])
                    .inc();
                Ok(*c)
            }
            Closed::Already => Err(ComplaintError::AlreadyResolved),
            Closed::Missing => Err(ComplaintError::NotFound),
        }
    }

    /// Art. 11 erasure of a user: their complaints stay, without who filed them or their words.
    pub async fn forget_reporter(&self, reporter: &str) -> Result<u64, ComplaintError> {
        self.call("forget", self.store.forget_reporter(reporter))
            .await
    }

    /// Set `shenhe_complaints_open` and `_overdue` from the store (every configured type, zeros
    /// included, so a type that empties reads 0 rather than its last value).
    pub async fn refresh_gauges(&self) {
        let Ok(counts) = self.call("counts", self.store.counts(Utc::now())).await else {
            return;
        };
        let m = metrics();
        for kind in self.types.keys() {
            let (open, overdue) = counts.get(kind).copied().unwrap_or_default();
            m.complaints_open
                .with_label_values(&[kind.as_str()])
                .set(i64::try_from(open).unwrap_or(i64::MAX));
            m.complaints_overdue
                .with_label_values(&[kind.as_str()])
                .set(i64::try_from(overdue).unwrap_or(i64::MAX));
        }
    }
}

/// `c-` and 32 lowercase hex digits.
pub fn is_complaint_id(s: &str) -> bool {
    crate::pg::is_random_id("c-", s)
}

fn checked_id(v: Option<String>, param: &'static str) -> Result<Option<String>, ComplaintError> {
    let Some(v) = v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if v.chars().count() > ID_MAX_CHARS || v.chars().any(char::is_control) {
        return Err(ComplaintError::invalid(
            param,
            format!(
                "{param} must be at most {ID_MAX_CHARS} characters, without control characters"
            ),
        ));
    }
    Ok(Some(v))
}

/// At most `n` characters of `s`, for messages that quote a caller's input.
fn bounded(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// A time limit as people write it: `24 小时` / `24 hours`, `15 天` / `15 days`.
fn spoken(d: Duration) -> (String, String) {
    let s = d.as_secs();
    if s % 86_400 == 0 && s >= 2 * 86_400 {
        let n = s / 86_400;
        (
            format!("{n} 天"),
            format!("{n} day{}", if n == 1 { "" } else { "s" }),
        )
    } else if s % 3600 == 0 {
        let n = s / 3600;
        (
            format!("{n} 小时"),
            format!("{n} hour{}", if n == 1 { "" } else { "s" }),
        )
    } else {
        let n = s.div_ceil(60);
        (
            format!("{n} 分钟"),
            format!("{n} minute{}", if n == 1 { "" } else { "s" }),
        )
    }
}

/// The procedure published when the config gives none: how to complain and how soon the answer
/// comes, per type, in Chinese and English.
pub fn default_procedure(types: &BTreeMap<String, ComplaintType>) -> String {
    let mut zh = String::from(
        "投诉举报处理规则\n\n您可以对本服务生成的内容或本服务的使用提出投诉或举报。\
         请在提交时注明内容编号（content_id，即生成内容标识中的 ProduceID）或请求编号（request_id），\
         并简要说明理由。我们受理后返回投诉编号，您可以凭该编号查询处理进度和结果。\
         我们在以下时限内处理并答复：\n",
    );
    let mut en = String::from(
        "Complaints and reports\n\nYou may complain about content this service generated or \
         about its use. Give the content id (content_id, the ProduceID in the AI-generated label) \
         or the request id (request_id) of the answer, and say briefly why. You receive a \
         complaint id, with which you can follow the complaint and read its outcome. We handle \
         and answer each complaint within:\n",
    );
    for (id, t) in types {
        let (z, e) = spoken(t.sla.get());
        zh.push_str(&format!("- {}（{id}）：{z}\n", t.name_zh));
        en.push_str(&format!("- {} ({id}): {e}\n", t.name_en));
    }
    format!("{zh}\n{en}")
}

/// One line for `shenhe check`.
pub fn summary(cfg: &ComplaintsConfig) -> String {
    if !cfg.enabled {
        return "off (no complaint intake)".into();
    }
    let store = cfg.store.describe(&cfg.table);
    let types = cfg
        .types
        .iter()
        .map(|(id, t)| format!("{id} {}", t.sla))
        .collect::<Vec<_>>()
        .join(", ");
    let intake = cfg
        .public_path
        .as_deref()
        .map_or("admin API only".to_string(), |p| format!("public at {p}"));
    format!("{store}; {intake}; types: {types}")
}

//! Audit records of moderation decisions: pseudonymous, bounded, kept on disk for the legal period.
//!
//! The proxy builds a [`Record`] for every decision and delivery and hands it to an [`Auditor`], a
//! cheap handle in front of one writer task that appends JSON lines to `{dir}/audit-YYYY-MM-DD.N.jsonl`
//! (and to stdout when asked). Records never hold a raw user id ([`Pseudonymizer`]) nor a full prompt
//! or completion: only a bounded, PII-masked [`excerpt()`] and a SHA-256 of the content.
//!
//! Data meets the parts in this order: [`config`] (YAML `audit:` → [`ValidAuditConfig`]),
//! [`pseudonym`] and [`excerpt`](mod@excerpt) (what the caller puts in a record), [`record`] (the line format),
//! [`writer`] (queue, files, rotation, fsync, retention), [`query`] (find, erase, retention sweep).

pub mod config;
pub mod error;
pub mod excerpt;
pub mod files;
pub mod pseudonym;
pub mod query;
pub mod record;
pub mod writer;

pub use config::{AuditConfig, ConfigIssue, FsyncMode, ValidAuditConfig};
pub use error::AuditError;
pub use excerpt::{excerpt, MAX_MATCH_CHARS};
pub use pseudonym::Pseudonymizer;
pub use query::{apply_retention, erase, find, EraseReport, Query, RetentionReport};
pub use record::{sha256_hex, Action, Direction, Record, RecordKind};
pub use writer::{AuditStats, AuditTask, Auditor};

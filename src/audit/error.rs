//! The audit module's error type: what went wrong with a record, a file or a request on records.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Errors from writing, querying and erasing audit records.
///
/// None of them carries a record's content; a user appears only in its pseudonymous form.
#[derive(Debug, Error)]
pub enum AuditError {
    /// The queue stayed full for longer than `audit.enqueue_timeout`; the record was not kept.
    /// Counted in `shenhe_audit_dropped_total`.
    #[error("audit queue full, record dropped")]
    Dropped,
    /// The writer has shut down (or died); the record was not kept. Also counted as dropped.
    #[error("audit writer is not running, record dropped")]
    Closed,
    /// The writer could not write or sync the batch holding this record.
    #[error("audit write failed: {0}")]
    WriteFailed(String),
    /// A file operation on the audit directory failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `erase` was asked for a user whose records are under legal hold.
    #[error("user {0} is under legal hold, records kept")]
    LegalHold(String),
    /// A user argument was not a pseudonymous id (`u-` and 32 hex digits).
    #[error("`{0}` is not a pseudonymous user id (u- and 32 hex digits)")]
    NotPseudonym(String),
    /// The operation needs `audit.dir`, which is not set.
    #[error("audit.dir is not set, records are not kept in files")]
    NoDirectory,
}

impl AuditError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// A short, bounded label for metrics and logs (`dropped`, `closed`, `write`, `io`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Dropped => "dropped",
            Self::Closed => "closed",
            Self::WriteFailed(_) => "write",
            Self::Io { .. } => "io",
            Self::LegalHold(_) => "legal_hold",
            Self::NotPseudonym(_) => "not_pseudonym",
            Self::NoDirectory => "no_directory",
        }
    }
}

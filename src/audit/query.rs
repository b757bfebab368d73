//! Reading the audit files back: find records, erase a user's records, delete expired files.

use std::io;
use std::path::Path;

use chrono::{DateTime, Days, NaiveDate, Utc};
use serde::Serialize;

use super::error::AuditError;
use super::files::{self, FileKey};
use super::pseudonym::is_pseudonym;
use super::record::{Record, RecordKind};

/// Records returned by [`find`] when the query gives no limit.
pub const DEFAULT_QUERY_LIMIT: usize = 10_000;

/// What [`find`] looks for. Every field given must match (AND); none given matches all records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// GB 45438 `ProduceID`.
    pub content_id: Option<String>,
    /// Pseudonymous user id (`u-` + 32 hex): the caller pseudonymizes a raw id first.
    pub user: Option<String>,
    pub request_id: Option<String>,
    /// Only records at or after this instant (files of earlier days are not read).
    pub since: Option<DateTime<Utc>>,
    /// Most records returned, oldest first. Default [`DEFAULT_QUERY_LIMIT`].
    pub limit: Option<usize>,
}

impl Query {
    fn matches(&self, rec: &Record) -> bool {
        fn eq(want: &Option<String>, have: &Option<String>) -> bool {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        }
        eq(&self.content_id, &rec.content_id)
            && eq(&self.user, &rec.user)
            && eq(&self.request_id, &rec.request_id)
            && self.since.is_none_or(|t| rec.ts >= t)
    }
}

/// The records in `dir` that match `q`, oldest first (file order, then line order).
///
/// Lines that do not parse (a torn last line after a crash, a line being written right now) are
/// skipped with a log line, never an error. Files deleted while the scan runs are skipped.
/// Blocking: call from `spawn_blocking` in async code.
pub fn find(dir: &Path, q: &Query) -> Result<Vec<Record>, AuditError> {
    let limit = q.limit.unwrap_or(DEFAULT_QUERY_LIMIT);
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let since_day = q.since.map(|t| t.date_naive());
    for file in files::list(dir)? {
        if since_day.is_some_and(|d| file.key.day < d) {
            continue;
        }
        let mut bad = 0u64;
        let mut last_bad = false;
        let res = files::for_each_line(&file.path, |line| {
            match files::parse_line(line) {
                Some(rec) => {
                    last_bad = false;
                    if q.matches(&rec) {
                        out.push(rec);
                    }
                }
                None => {
                    last_bad = !line.iter().all(u8::is_ascii_whitespace);
                    bad += u64::from(last_bad);
                }
            }
            out.len() < limit
        });
        skip_vanished(res)?;
        let mid_file = bad - u64::from(last_bad);
        if mid_file > 0 {
            tracing::warn!(file = %file.path.display(), lines = mid_file, "Skipped unreadable audit lines");
        } else if last_bad {
            tracing::debug!(file = %file.path.display(), "Skipped a torn last audit line");
        }
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// What [`erase`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EraseReport {
    pub files_scanned: u64,
    /// Files rewritten without the user's records.
    pub files_rewritten: u64,
    /// Files deleted because they held only the user's records.
    pub files_removed: u64,
    pub records_removed: u64,
}

/// Removes every record of the pseudonymous `user` from the files in `dir` (Art. 11 deletion),
/// refusing when `user` is in `legal_hold`. Each changed file is rewritten crash-safely (temporary
/// file, fsync, rename). Records of kind `erasure` are kept (they are the trace of earlier
/// requests); an unparsable line is removed when it contains the id. The caller then writes an
/// `erasure` record holding the pseudonymous id only.
///
/// Only for a directory no writer is appending to (offline tooling): a running proxy calls
/// `Auditor::erase`, which leaves the file being written alone. Blocking.
pub fn erase(dir: &Path, user: &str, legal_hold: &[String]) -> Result<EraseReport, AuditError> {
    erase_before(dir, user, legal_hold, None)
}

/// [`erase`] over the files that sort before `before` (all files when `None`).
pub(crate) fn erase_before(
    dir: &Path,
    user: &str,
    legal_hold: &[String],
    before: Option<FileKey>,
) -> Result<EraseReport, AuditError> {
    check_erasable(user, legal_hold)?;
    let _guard = files::rewrite_lock();
    let mut report = EraseReport::default();
    for file in files::list(dir)? {
        if before.is_some_and(|b| file.key >= b) {
            continue;
        }
        report.files_scanned += 1;
        let res = files::rewrite(&file.path, |line| !belongs_to(line, user));
        if let Some(counts) = skip_vanished(res)? {
            report.records_removed += counts.removed;
            if counts.removed > 0 {
                if counts.kept == 0 {
                    report.files_removed += 1;
                } else {
                    report.files_rewritten += 1;
                }
            }
        }
    }
    Ok(report)
}

/// Refuses ids that are not pseudonymous and users under legal hold.
pub(crate) fn check_erasable(user: &str, legal_hold: &[String]) -> Result<(), AuditError> {
    if !is_pseudonym(user) {
        return Err(AuditError::NotPseudonym(user.chars().take(40).collect()));
    }
    if legal_hold.iter().any(|h| h == user) {
        return Err(AuditError::LegalHold(user.to_string()));
    }
    Ok(())
}

/// Whether a line is a (non-erasure) record of `user`, or an unreadable line naming `user`.
fn belongs_to(line: &[u8], user: &str) -> bool {
    match files::parse_line(line) {
        Some(rec) => rec.kind != RecordKind::Erasure && rec.user.as_deref() == Some(user),
        None => line.windows(user.len()).any(|w| w == user.as_bytes()),
    }
}

/// What [`apply_retention`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    /// Expired files deleted.
    pub files_deleted: u64,
    /// Expired files kept, cut down to the records of users under legal hold.
    pub files_held: u64,
    /// Records kept past retention for legal hold.
    pub records_held: u64,
}

/// Deletes the files in `dir` whose day (from the file name, not the mtime) is more than
/// `retention_days` before `today`: with 180 days on 2025-07-01, `2025-01-02` is kept and
/// `2025-01-01` goes. Records of users in `legal_hold` are kept: such a file is rewritten with only
/// their records. Blocking.
pub fn apply_retention(
    dir: &Path,
    retention_days: u32,
    legal_hold: &[String],
    today: NaiveDate,
) -> Result<RetentionReport, AuditError> {
    retention_before(dir, retention_days, legal_hold, today, None)
}

/// [`apply_retention`] that never touches files sorting at or after `before` (the writer's file).
pub(crate) fn retention_before(
    dir: &Path,
    retention_days: u32,
    legal_hold: &[String],
    today: NaiveDate,
    before: Option<FileKey>,
) -> Result<RetentionReport, AuditError> {
    let mut report = RetentionReport::default();
    let Some(oldest_kept) = today.checked_sub_days(Days::new(retention_days.into())) else {
        return Ok(report);
    };
    let _guard = files::rewrite_lock();
    for file in files::list(dir)? {
        if file.key.day >= oldest_kept || before.is_some_and(|b| file.key >= b) {
            continue;
        }
        if legal_hold.is_empty() {
            match std::fs::remove_file(&file.path) {
                Ok(()) => report.files_deleted += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(AuditError::io("remove", &file.path, e)),
            }
            continue;
        }
        let held = |line: &[u8]| {
            files::parse_line(line)
                .and_then(|r| r.user)
                .is_some_and(|u| legal_hold.contains(&u))
        };
        if let Some(counts) = skip_vanished(files::rewrite(&file.path, held))? {
            if counts.kept == 0 {
                report.files_deleted += 1;
            } else {
                report.files_held += 1;
                report.records_held += counts.kept;
            }
        }
    }
    if report.files_deleted > 0 {
        files::sync_dir(dir).map_err(|e| AuditError::io("sync directory", dir, e))?;
    }
    Ok(report)
}

/// Turns "the file was deleted meanwhile" into `None`.
fn skip_vanished<T>(res: Result<T, AuditError>) -> Result<Option<T>, AuditError> {
    match res {
        Ok(v) => Ok(Some(v)),
        Err(AuditError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    use chrono::TimeZone;

    use super::*;
    use crate::audit::record::{Action, Direction};

    const A: &str = "u-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "u-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const H: &str = "u-cccccccccccccccccccccccccccccccc";

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn rec(d: NaiveDate, i: u32, user: &str) -> Record {
        Record {
            ts: Utc.from_utc_datetime(&d.and_hms_opt(1, 0, i).unwrap()),
            user: Some(user.to_string()),
            content_id: Some(format!("c-{d}-{i}")),
            ..Record::decision(
                format!("r-{d}-{i}"),
                Direction::Completion,
                "A1d",
                Action::Block,
            )
        }
    }

    /// Writes `records` to the file for (`d`, 0), plus `tail` verbatim.
    fn write_file(dir: &Path, d: NaiveDate, records: &[Record], tail: &str) -> PathBuf {
        let path = dir.join(FileKey { day: d, seq: 0 }.file_name());
        let mut text: String = records.iter().map(|r| r.to_line()).collect();
        text.push_str(tail);
        fs::write(&path, text).unwrap();
        path
    }

    fn sample(dir: &Path) {
        let d1 = day(2025, 7, 1);
        let d2 = day(2025, 7, 2);
        write_file(dir, d1, &[rec(d1, 0, A), rec(d1, 1, B), rec(d1, 2, A)], "");
        write_file(dir, d2, &[rec(d2, 0, B), rec(d2, 1, A)], "");
    }

    fn ids(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .filter_map(|r| r.request_id.clone())
            .collect()
    }

    #[test]
    fn find_filters_by_every_given_field() {
        let dir = tempfile::tempdir().unwrap();
        sample(dir.path());
        let by_user = find(
            dir.path(),
            &Query {
                user: Some(A.into()),
                ..Query::default()
            },
        )
        .unwrap();
        assert_eq!(
            ids(&by_user),
            ["r-2025-07-01-0", "r-2025-07-01-2", "r-2025-07-02-1"]
        );
        let by_content = Query {
            content_id: Some("c-2025-07-02-0".into()),
            ..Query::default()
        };
        assert_eq!(
            ids(&find(dir.path(), &by_content).unwrap()),
            ["r-2025-07-02-0"]
        );
        let by_request = Query {
            request_id: Some("r-2025-07-01-1".into()),
            user: Some(A.into()),
            ..Query::default()
        };
        assert!(
            find(dir.path(), &by_request).unwrap().is_empty(),
            "fields combine with and"
        );
        let since = Query {
            since: Some(Utc.with_ymd_and_hms(2025, 7, 1, 1, 0, 2).unwrap()),
            ..Query::default()
        };
        assert_eq!(
            ids(&find(dir.path(), &since).unwrap()),
            ["r-2025-07-01-2", "r-2025-07-02-0", "r-2025-07-02-1"]
        );
        let limited = Query {
            limit: Some(2),
            ..Query::default()
        };
        assert_eq!(
            ids(&find(dir.path(), &limited).unwrap()),
            ["r-2025-07-01-0", "r-2025-07-01-1"]
        );
        assert!(find(
            dir.path(),
            &Query {
                limit: Some(0),
                ..Query::default()
            }
        )
        .unwrap()
        .is_empty());
    }

    #[test]
    fn find_skips_files_before_since_by_name() {
        let dir = tempfile::tempdir().unwrap();
        sample(dir.path());
        // An old-named file full of garbage is never opened when `since` is later.
        fs::write(
            dir.path().join("audit-2025-06-30.0.jsonl"),
            [0xff, 0xfe, b'\n'],
        )
        .unwrap();
        let q = Query {
            since: Some(Utc.with_ymd_and_hms(2025, 7, 2, 0, 0, 0).unwrap()),
            ..Query::default()
        };
        assert_eq!(find(dir.path(), &q).unwrap().len(), 2);
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let d = day(2025, 7, 1);
        let full = rec(d, 9, A).to_line();
        // A crash in the middle of a write: half a line, no newline; also invalid UTF-8.
        write_file(
            dir.path(),
            d,
            &[rec(d, 0, A), rec(d, 1, B)],
            &full[..full.len() / 2],
        );
        let d2 = day(2025, 7, 2);
        write_file(
            dir.path(),
            d2,
            &[rec(d2, 0, A)],
            "{\"ts\":\"2025-07-02T\u{e9}",
        );
        fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("audit-2025-07-02.0.jsonl"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, &[0xc3]))
            .unwrap();
        let found = find(dir.path(), &Query::default()).unwrap();
        assert_eq!(
            ids(&found),
            ["r-2025-07-01-0", "r-2025-07-01-1", "r-2025-07-02-0"]
        );
    }

    #[test]
    fn erase_removes_exactly_the_users_records_and_respects_legal_hold() {
        let dir = tempfile::tempdir().unwrap();
        sample(dir.path());
        let d3 = day(2025, 7, 3);
        let only_a = write_file(dir.path(), d3, &[rec(d3, 0, A)], "");
        // A torn line naming the user is removed too; one naming nobody stays.
        let d4 = day(2025, 7, 4);
        write_file(
            dir.path(),
            d4,
            &[rec(d4, 0, B)],
            &format!("{{\"user\":\"{A}\",\"ts\nnot json\n"),
        );
        let before = find(dir.path(), &Query::default()).unwrap();

        let hold = vec![H.to_string()];
        let report = erase(dir.path(), A, &hold).unwrap();
        assert_eq!(
            report,
            EraseReport {
                files_scanned: 4,
                files_rewritten: 3,
                files_removed: 1,
                records_removed: 5,
            }
        );
        assert!(!only_a.exists());
        let after = find(dir.path(), &Query::default()).unwrap();
        let expected: Vec<Record> = before
            .into_iter()
            .filter(|r| r.user.as_deref() != Some(A))
            .collect();
        assert_eq!(after, expected);
        let d4_text = fs::read_to_string(dir.path().join("audit-2025-07-04.0.jsonl")).unwrap();
        assert!(d4_text.ends_with("not json\n") && !d4_text.contains(A));

        assert!(matches!(
            erase(dir.path(), H, &hold),
            Err(AuditError::LegalHold(_))
        ));
        assert!(matches!(
            erase(dir.path(), "alice", &hold),
            Err(AuditError::NotPseudonym(_))
        ));
        assert_eq!(
            erase(dir.path(), A, &hold).unwrap().records_removed,
            0,
            "idempotent"
        );
    }

    #[test]
    fn erase_keeps_erasure_records() {
        let dir = tempfile::tempdir().unwrap();
        let d = day(2025, 7, 1);
        let trace = Record {
            ts: Utc.from_utc_datetime(&d.and_hms_opt(2, 0, 0).unwrap()),
            ..Record::erasure(A, "earlier request")
        };
        write_file(dir.path(), d, &[rec(d, 0, A), trace.clone()], "");
        erase(dir.path(), A, &[]).unwrap();
        assert_eq!(find(dir.path(), &Query::default()).unwrap(), [trace]);
    }

    #[test]
    fn retention_uses_the_file_name_day_and_keeps_held_records() {
        let dir = tempfile::tempdir().unwrap();
        let today = day(2025, 7, 1);
        let expired = day(2025, 1, 1); // 181 days before
        let edge = day(2025, 1, 2); // 180 days before: kept
        let expired_mixed = write_file(
            dir.path(),
            expired,
            &[rec(expired, 0, A), rec(expired, 1, H)],
            "",
        );
        let expired_other = dir.path().join(
            FileKey {
                day: expired,
                seq: 1,
            }
            .file_name(),
        );
        fs::write(&expired_other, rec(expired, 2, B).to_line()).unwrap();
        let edge_file = write_file(dir.path(), edge, &[rec(edge, 0, A)], "");

        let hold = vec![H.to_string()];
        let report = apply_retention(dir.path(), 180, &hold, today).unwrap();
        assert_eq!(
            report,
            RetentionReport {
                files_deleted: 1,
                files_held: 1,
                records_held: 1,
            }
        );
        assert!(!expired_other.exists());
        assert!(edge_file.exists());
        let left = find(dir.path(), &Query::default()).unwrap();
        assert_eq!(ids(&left), ["r-2025-01-01-1", "r-2025-01-02-0"]);
        assert!(expired_mixed.exists());

        // Without a hold the expired file goes entirely.
        let report = apply_retention(dir.path(), 180, &[], today).unwrap();
        assert_eq!(report.files_deleted, 1);
        assert!(!expired_mixed.exists());
        // Never past the writer's file.
        let guarded = retention_before(
            dir.path(),
            1,
            &[],
            today,
            Some(FileKey { day: edge, seq: 0 }),
        )
        .unwrap();
        assert_eq!(guarded.files_deleted, 0);
        assert!(edge_file.exists());
    }
}

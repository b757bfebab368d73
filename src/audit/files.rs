//! Audit file names (`audit-YYYY-MM-DD.N.jsonl`), listing, creation and crash-safe rewriting.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use chrono::NaiveDate;

use super::error::AuditError;
use super::record::Record;

const PREFIX: &str = "audit-";
const SUFFIX: &str = ".jsonl";
/// Suffix of the temporary file a rewrite builds before renaming it over the original.
const TMP_SUFFIX: &str = ".rewrite-tmp";
/// Owner read-write, group read: records are pseudonymous but still personal data.
#[cfg(unix)]
const FILE_MODE: u32 = 0o640;
#[cfg(unix)]
const DIR_MODE: u32 = 0o750;

/// Which file: its UTC day and its sequence number within the day. Orders like the files' content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileKey {
    pub day: NaiveDate,
    pub seq: u64,
}

impl FileKey {
    /// `audit-YYYY-MM-DD.N.jsonl`.
    pub fn file_name(&self) -> String {
        format!(
            "{PREFIX}{}.{}{SUFFIX}",
            self.day.format("%Y-%m-%d"),
            self.seq
        )
    }

    /// The key of an audit file name; `None` for any other name.
    pub fn parse(name: &str) -> Option<Self> {
        let rest = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
        let (date, seq) = rest.split_once('.')?;
        if date.len() != 10 || seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let day = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
        let key = Self {
            day,
            seq: seq.parse().ok()?,
        };
        // Only the canonical spelling, so one key is one file.
        (key.file_name() == name).then_some(key)
    }
}

/// Serialises rewrites (erasure, retention) within the process, so two never work on one file.
static REWRITE_LOCK: Mutex<()> = Mutex::new(());

/// Holds the rewrite lock; a panic in another holder does not poison it for good.
pub fn rewrite_lock() -> MutexGuard<'static, ()> {
    REWRITE_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// One audit file in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditFile {
    pub key: FileKey,
    pub path: PathBuf,
}

/// The audit files in `dir`, oldest first. Other files are ignored.
pub fn list(dir: &Path) -> Result<Vec<AuditFile>, AuditError> {
    let entries = fs::read_dir(dir).map_err(|e| AuditError::io("read directory", dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| AuditError::io("read directory", dir, e))?;
        let name = entry.file_name();
        if let Some(key) = name.to_str().and_then(FileKey::parse) {
            files.push(AuditFile {
                key,
                path: entry.path(),
            });
        }
    }
    files.sort_by_key(|f| f.key);
    Ok(files)
}

/// Creates `dir` (and parents) when missing.
pub fn create_dir(dir: &Path) -> Result<(), AuditError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder
        .create(dir)
        .map_err(|e| AuditError::io("create directory", dir, e))
}

/// Creates the file for `key`, failing if it exists (a file is never reopened for appending, so a
/// torn tail left by a crash stays the last line of its file).
pub fn create_new(dir: &Path, key: FileKey) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, FILE_MODE);
    let file = opts.open(dir.join(key.file_name()))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Makes a created, renamed or deleted directory entry durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Parses one line of a file (newline optional); `None` for a blank, torn or foreign line.
pub fn parse_line(line: &[u8]) -> Option<Record> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    serde_json::from_slice(line).ok()
}

/// Calls `each` with every line of `path` (newline included), stopping early when it returns false.
pub fn for_each_line(path: &Path, mut each: impl FnMut(&[u8]) -> bool) -> Result<(), AuditError> {
    let file = File::open(path).map_err(|e| AuditError::io("open", path, e))?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| AuditError::io("read", path, e))?;
        if n == 0 || !each(&line) {
            return Ok(());
        }
    }
}

/// Lines kept and removed by a [`rewrite`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewritten {
    pub kept: u64,
    pub removed: u64,
}

/// Rewrites `path` keeping only the lines for which `keep` is true: the kept lines go to a
/// temporary file in the same directory, which is synced and renamed over the original, so a crash
/// leaves either the old or the new file. A first read counts; nothing is written when nothing is
/// removed, and the file is deleted when nothing is kept. The caller makes sure nobody appends to
/// `path` meanwhile (only closed files are rewritten).
pub fn rewrite(path: &Path, keep: impl Fn(&[u8]) -> bool) -> Result<Rewritten, AuditError> {
    let mut counts = Rewritten::default();
    for_each_line(path, |line| {
        if keep(line) {
            counts.kept += 1;
        } else {
            counts.removed += 1;
        }
        true
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    if counts.removed == 0 {
        return Ok(counts);
    }
    if counts.kept == 0 {
        fs::remove_file(path).map_err(|e| AuditError::io("remove", path, e))?;
    } else {
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(TMP_SUFFIX);
        let tmp = dir.join(tmp_name);
        let res = write_kept(path, &tmp, &keep)
            .and_then(|()| fs::rename(&tmp, path).map_err(|e| AuditError::io("rename", &tmp, e)));
        if res.is_err() {
            // Best effort: the original is untouched, the partial copy is useless.
            let _ = fs::remove_file(&tmp);
        }
        res?;
    }
    sync_dir(dir).map_err(|e| AuditError::io("sync directory", dir, e))?;
    Ok(counts)
}

/// Writes the lines of `path` that `keep` accepts to `tmp` (each ending in a newline) and syncs it.
fn write_kept(path: &Path, tmp: &Path, keep: &impl Fn(&[u8]) -> bool) -> Result<(), AuditError> {
    let file = File::create(tmp).map_err(|e| AuditError::io("create", tmp, e))?;
    let mut out = io::BufWriter::new(file);
    let mut write_err = None;
    for_each_line(path, |line| {
        if !keep(line) {
            return true;
        }
        let mut res = out.write_all(line);
        if res.is_ok() && !line.ends_with(b"\n") {
            res = out.write_all(b"\n");
        }
        match res {
            Ok(()) => true,
            Err(e) => {
                write_err = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = write_err {
        return Err(AuditError::io("write", tmp, e));
    }
    let file = out
        .into_inner()
        .map_err(|e| AuditError::io("write", tmp, e.into_error()))?;
    file.sync_all().map_err(|e| AuditError::io("sync", tmp, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(y: i32, m: u32, d: u32, seq: u64) -> FileKey {
        FileKey {
            day: NaiveDate::from_ymd_opt(y, m, d).unwrap(),
            seq,
        }
    }

    #[test]
    fn names_round_trip_and_only_canonical_names_parse() {
        let k = key(2025, 7, 1, 3);
        assert_eq!(k.file_name(), "audit-2025-07-01.3.jsonl");
        assert_eq!(FileKey::parse("audit-2025-07-01.3.jsonl"), Some(k));
        for bad in [
            "audit-2025-7-01.3.jsonl",
            "audit-2025-07-01.03.jsonl",
            "audit-2025-07-01..jsonl",
            "audit-2025-07-01.3.jsonl.rewrite-tmp",
            "audit-2025-02-30.0.jsonl",
            "audit-2025-07-01.x.jsonl",
            "other.jsonl",
            "",
        ] {
            assert_eq!(FileKey::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn list_is_sorted_by_day_then_sequence() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "audit-2025-07-02.0.jsonl",
            "audit-2025-07-01.10.jsonl",
            "audit-2025-07-01.2.jsonl",
            "notes.txt",
        ] {
            fs::write(dir.path().join(name), "").unwrap();
        }
        let keys: Vec<FileKey> = list(dir.path())
            .unwrap()
            .into_iter()
            .map(|f| f.key)
            .collect();
        assert_eq!(
            keys,
            [key(2025, 7, 1, 2), key(2025, 7, 1, 10), key(2025, 7, 2, 0)]
        );
    }

    #[test]
    fn rewrite_keeps_selected_lines_and_removes_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit-2025-07-01.0.jsonl");
        fs::write(&path, "a\nb\na\ntorn").unwrap();
        let counts = rewrite(&path, |l| !l.starts_with(b"a")).unwrap();
        assert_eq!(
            counts,
            Rewritten {
                kept: 2,
                removed: 2
            }
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "b\ntorn\n");
        let counts = rewrite(&path, |_| true).unwrap();
        assert_eq!(
            counts,
            Rewritten {
                kept: 2,
                removed: 0
            }
        );
        let counts = rewrite(&path, |_| false).unwrap();
        assert_eq!(
            counts,
            Rewritten {
                kept: 0,
                removed: 2
            }
        );
        assert!(!path.exists());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no temporary file left"
        );
    }
}

//! The audit writer: a bounded queue in front of one task that appends, rotates, syncs and expires.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use tokio::sync::mpsc::error::{SendTimeoutError, TrySendError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::config::{FsyncMode, ValidAuditConfig};
use super::error::AuditError;
use super::files::{self, FileKey};
use super::query::{self, EraseReport};
use super::record::Record;
use crate::metrics::metrics;

/// Most records written in one batch (one `write` per file): bounds the batch buffer.
const MAX_BATCH: usize = 1024;
/// How often expired files are deleted (also once at start).
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// Longest wait for the writer to take an erase request's rotation.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at a fresh sequence number when another process took the one we picked.
const CREATE_ATTEMPTS: u64 = 1000;

type Ack = oneshot::Sender<Result<(), AuditError>>;

enum Msg {
    /// One JSON line; `ack` is told once it is written (and synced with `fsync: always`).
    Line { line: String, ack: Option<Ack> },
    /// Close the current file and open the next; answers with the new file's key.
    Rotate(oneshot::Sender<Result<Option<FileKey>, AuditError>>),
}

/// Counts kept per `Auditor` (the Prometheus metrics are process-wide).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Records written to the sink of record.
    pub written: u64,
    /// Records refused at the queue (full past `enqueue_timeout`, or writer stopped).
    pub dropped: u64,
    /// Records whose write failed, plus failed interval syncs.
    pub write_failures: u64,
}

struct Shared {
    healthy: AtomicBool,
    /// Set while records are being dropped, so only the first drop of a run is logged.
    dropping: AtomicBool,
    written: AtomicU64,
    dropped: AtomicU64,
    failures: AtomicU64,
    enqueue_timeout: Duration,
    excerpt_max: usize,
    fail_closed: bool,
    dir: Option<PathBuf>,
    legal_hold: Vec<String>,
    /// Test hook: while a test holds the write half, the writer takes no new batch.
    #[cfg(test)]
    gate: Arc<tokio::sync::RwLock<()>>,
}

/// Cheap, cloneable handle for recording; one per request task is fine.
#[derive(Clone)]
pub struct Auditor {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
}

/// The running writer task. Call [`AuditTask::shutdown`] to drain, sync and close; dropping it
/// without that also stops the writer after it drains, but nobody waits for the end.
pub struct AuditTask {
    handle: JoinHandle<Result<(), AuditError>>,
    stop: oneshot::Sender<()>,
}

impl Auditor {
    /// Creates the directory, opens the first file of the day (so a bad directory fails here, at
    /// start) and spawns the writer task on the current Tokio runtime. Expired files are deleted by
    /// the task right away and then every hour.
    pub fn start(cfg: &ValidAuditConfig) -> Result<(Auditor, AuditTask), AuditError> {
        let stdout: Option<Box<dyn Write + Send>> = if cfg.stdout {
            Some(Box::new(io::stdout()))
        } else {
            None
        };
        Self::start_with_stdout(cfg, stdout)
    }

    /// [`Auditor::start`] with the stdout sink replaced by `stdout` (tests capture it).
    fn start_with_stdout(
        cfg: &ValidAuditConfig,
        stdout: Option<Box<dyn Write + Send>>,
    ) -> Result<(Auditor, AuditTask), AuditError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            AuditError::WriteFailed("the audit writer must start inside a tokio runtime".into())
        })?;
        let files = match &cfg.dir {
            Some(dir) => {
                files::create_dir(dir)?;
                let mut sink = FileSink::new(dir.clone(), cfg.rotate_size);
                sink.open_next(today())
                    .map_err(|e| AuditError::io("create a file in", dir, e))?;
                Some(sink)
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        let shared = Arc::new(Shared {
            healthy: AtomicBool::new(true),
            dropping: AtomicBool::new(false),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            enqueue_timeout: cfg.enqueue_timeout,
            excerpt_max: cfg.max_excerpt_chars(),
            fail_closed: cfg.fail_closed,
            dir: cfg.dir.clone(),
            legal_hold: cfg.legal_hold_users.clone(),
            #[cfg(test)]
            gate: Arc::new(tokio::sync::RwLock::new(())),
        });
        let writer = Writer {
            rx,
            shared: Arc::clone(&shared),
            sinks: Some(Sinks { files, stdout }),
            spec: SinkSpec {
                dir: cfg.dir.clone(),
                rotate_size: cfg.rotate_size,
                stdout: cfg.stdout,
            },
            fsync: cfg.fsync,
            last_sync: Instant::now(),
            unsynced: false,
            retention_days: cfg.retention_days,
            sweeping: Arc::new(AtomicBool::new(false)),
        };
        let (stop, stop_rx) = oneshot::channel();
        let handle = runtime.spawn(writer.run(stop_rx));
        tracing::info!(
            dir = cfg.dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default(),
            stdout = cfg.stdout,
            retention_days = cfg.retention_days,
            fsync = ?cfg.fsync,
            "Audit writer started"
        );
        Ok((Auditor { tx, shared }, AuditTask { handle, stop }))
    }

    /// Queues `rec`, waiting up to `audit.enqueue_timeout` when the queue is full. `Err(Dropped)`
    /// (counted in `shenhe_audit_dropped_total`) means the record will not be written; with
    /// `fail_closed` the caller refuses the request. `Ok` means queued, not yet on disk.
    pub async fn record(&self, rec: Record) -> Result<(), AuditError> {
        let line = self.line(rec);
        self.enqueue(Msg::Line { line, ack: None }).await
    }

    /// Queues `rec` without waiting (for `Drop` and other sync code): a full queue drops it.
    pub fn try_record(&self, rec: Record) -> Result<(), AuditError> {
        let line = self.line(rec);
        let res = match self.tx.try_send(Msg::Line { line, ack: None }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(AuditError::Dropped),
            Err(TrySendError::Closed(_)) => Err(AuditError::Closed),
        };
        self.count_enqueue(&res);
        res
    }

    /// Queues `rec` like [`Auditor::record`], then waits until the writer has written it (and
    /// synced it to disk with `fsync: always`; with `fsync: interval` the sync follows within
    /// `fsync_interval`). `Ok` means the record is in the file.
    pub async fn record_durable(&self, rec: Record) -> Result<(), AuditError> {
        let line = self.line(rec);
        let (ack, done) = oneshot::channel();
        self.enqueue(Msg::Line {
            line,
            ack: Some(ack),
        })
        .await?;
        done.await.unwrap_or(Err(AuditError::Closed))
    }

    /// False after a failed write or sync until a later write succeeds, and once the writer has
    /// stopped. With `fail_closed`, the proxy refuses traffic while this is false; it should still
    /// record those refusals, whose successful write is what turns health back on.
    pub fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Acquire) && !self.tx.is_closed()
    }

    /// `audit.fail_closed`: refuse traffic while `!healthy()` or when a record is dropped.
    pub fn fail_closed(&self) -> bool {
        self.shared.fail_closed
    }

    /// True when the proxy must refuse traffic now: `fail_closed` is set and `!healthy()`.
    /// (A dropped record is reported per call, as `Err(Dropped)` from `record`.)
    pub fn refuse_traffic(&self) -> bool {
        self.shared.fail_closed && !self.healthy()
    }

    /// Counts for this auditor since start.
    pub fn stats(&self) -> AuditStats {
        AuditStats {
            written: self.shared.written.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            write_failures: self.shared.failures.load(Ordering::Relaxed),
        }
    }

    /// The audit directory, when records go to files (for `find`).
    pub fn dir(&self) -> Option<&Path> {
        self.shared.dir.as_deref()
    }

    /// Erases the pseudonymous `user`'s records while the writer runs (see [`query::erase`]): the
    /// writer first moves to a new file, then every earlier file is rewritten without the user's
    /// records. Records written after the request stay. Refuses users under
    /// `audit.legal_hold_users`. The caller then records an `erasure` record.
    pub async fn erase(&self, user: &str) -> Result<EraseReport, AuditError> {
        let dir = self.shared.dir.clone().ok_or(AuditError::NoDirectory)?;
        query::check_erasable(user, &self.shared.legal_hold)?;
        let (reply, answer) = oneshot::channel();
        match self
            .tx
            .send_timeout(Msg::Rotate(reply), CONTROL_TIMEOUT)
            .await
        {
            Ok(()) => {}
            Err(SendTimeoutError::Timeout(_)) => return Err(AuditError::Dropped),
            Err(SendTimeoutError::Closed(_)) => return Err(AuditError::Closed),
        }
        let active = answer.await.unwrap_or(Err(AuditError::Closed))?;
        let user = user.to_string();
        let hold = self.shared.legal_hold.clone();
        tokio::task::spawn_blocking(move || query::erase_before(&dir, &user, &hold, active))
            .await
            .map_err(|e| AuditError::WriteFailed(format!("erase task failed: {e}")))?
    }

    /// Stops the writer from taking new batches until the guard is dropped (tests only).
    #[cfg(test)]
    pub(crate) async fn pause_writer(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        Arc::clone(&self.shared.gate).write_owned().await
    }

    fn line(&self, rec: Record) -> String {
        rec.bounded(self.shared.excerpt_max).to_line()
    }

    async fn enqueue(&self, msg: Msg) -> Result<(), AuditError> {
        let timeout = self.shared.enqueue_timeout;
        let res = match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(msg)) if !timeout.is_zero() => {
                match self.tx.send_timeout(msg, timeout).await {
                    Ok(()) => Ok(()),
                    Err(SendTimeoutError::Timeout(_)) => Err(AuditError::Dropped),
                    Err(SendTimeoutError::Closed(_)) => Err(AuditError::Closed),
                }
            }
            Err(TrySendError::Full(_)) => Err(AuditError::Dropped),
            Err(TrySendError::Closed(_)) => Err(AuditError::Closed),
        };
        self.count_enqueue(&res);
        res
    }

    fn count_enqueue(&self, res: &Result<(), AuditError>) {
        let m = metrics();
        match res {
            Ok(()) => {
                let depth = self.tx.max_capacity().saturating_sub(self.tx.capacity());
                m.audit_queue_depth
                    .set(i64::try_from(depth).unwrap_or(i64::MAX));
                self.shared.dropping.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                m.audit_dropped.inc();
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.shared.dropping.swap(true, Ordering::Relaxed) {
                    tracing::warn!(reason = e.kind(), "Audit records are being dropped");
                }
            }
        }
    }
}

impl AuditTask {
    /// Stops taking records (later `record` calls get `Err(Closed)`), writes everything already
    /// queued, syncs and closes the file. Bound it with a timeout at the call site.
    pub async fn shutdown(self) -> Result<(), AuditError> {
        let _ = self.stop.send(());
        self.handle
            .await
            .map_err(|e| AuditError::WriteFailed(format!("audit writer task failed: {e}")))?
    }
}

/// What the sinks are built from, to rebuild them if a blocking write task is lost.
#[derive(Clone)]
struct SinkSpec {
    dir: Option<PathBuf>,
    rotate_size: u64,
    stdout: bool,
}

/// Where lines go: the files (the sink of record when set) and stdout.
struct Sinks {
    files: Option<FileSink>,
    stdout: Option<Box<dyn Write + Send>>,
}

impl Sinks {
    fn rebuild(spec: &SinkSpec) -> Self {
        Self {
            files: spec
                .dir
                .clone()
                .map(|dir| FileSink::new(dir, spec.rotate_size)),
            stdout: spec
                .stdout
                .then(|| Box::new(io::stdout()) as Box<dyn Write + Send>),
        }
    }

    /// Writes `lines` (and syncs when `sync`), returning the outcome of the sink of record: the
    /// files when there are any, else stdout. A stdout failure next to files is only logged.
    fn write(&mut self, lines: &[String], today: NaiveDate, sync: bool) -> Result<(), String> {
        let stdout_res = self.stdout.as_mut().map(|out| {
            let mut buf = String::with_capacity(lines.iter().map(String::len).sum());
            lines.iter().for_each(|l| buf.push_str(l));
            out.write_all(buf.as_bytes()).and_then(|()| out.flush())
        });
        match (&mut self.files, stdout_res) {
            (Some(files), stdout_res) => {
                if let Some(Err(e)) = stdout_res {
                    tracing::warn!(error = %e, "Cannot write audit records to stdout");
                }
                files
                    .write(lines, today)
                    .and_then(|()| if sync { files.sync() } else { Ok(()) })
                    .map_err(|e| e.to_string())
            }
            (None, Some(res)) => res.map_err(|e| format!("stdout: {e}")),
            (None, None) => Ok(()),
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        match &mut self.files {
            Some(files) => files.sync(),
            None => Ok(()),
        }
    }
}

/// The current file and the rules for moving to the next one.
struct FileSink {
    dir: PathBuf,
    rotate_size: u64,
    current: Option<OpenFile>,
    /// The highest key this process has opened: new files always sort after it, even if the clock
    /// steps back, so "files before the writer's" is well defined for erasure and retention.
    last: Option<FileKey>,
}

struct OpenFile {
    file: std::fs::File,
    key: FileKey,
    size: u64,
    unsynced: bool,
}

impl FileSink {
    fn new(dir: PathBuf, rotate_size: u64) -> Self {
        Self {
            dir,
            rotate_size,
            current: None,
            last: None,
        }
    }

    /// Syncs and closes the current file, then creates the next one: the day is `today` (or the
    /// last file's day, if later), the sequence one past the highest in the directory for that day.
    fn open_next(&mut self, today: NaiveDate) -> io::Result<FileKey> {
        self.close()?;
        let day = self.last.map_or(today, |l| l.day.max(today));
        let listed = files::list(&self.dir).map_err(io::Error::other)?;
        let mut seq = listed
            .iter()
            .filter(|f| f.key.day == day)
            .map(|f| f.key.seq + 1)
            .chain(self.last.filter(|l| l.day == day).map(|l| l.seq + 1))
            .max()
            .unwrap_or(0);
        for _ in 0..CREATE_ATTEMPTS {
            let key = FileKey { day, seq };
            match files::create_new(&self.dir, key) {
                Ok(file) => {
                    self.current = Some(OpenFile {
                        file,
                        key,
                        size: 0,
                        unsynced: false,
                    });
                    self.last = Some(key);
                    return Ok(key);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => seq += 1,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("no free audit file name for today"))
    }

    /// Syncs (if needed) and closes the current file.
    fn close(&mut self) -> io::Result<()> {
        if let Some(cur) = &mut self.current {
            if cur.unsynced {
                let res = cur.file.sync_data();
                self.current = None;
                res?;
            }
        }
        self.current = None;
        Ok(())
    }

    /// Appends `lines`, one `write` per file touched, moving to a new file on a new day or when the
    /// next line would take the file past `rotate_size` (a single larger line gets a file alone).
    /// On error the file is abandoned: the next write starts a new one, leaving any torn tail as
    /// the last line of the old file.
    fn write(&mut self, lines: &[String], today: NaiveDate) -> io::Result<()> {
        let res = self.write_inner(lines, today);
        if res.is_err() {
            self.current = None;
        }
        res
    }

    fn write_inner(&mut self, lines: &[String], today: NaiveDate) -> io::Result<()> {
        if self.current.as_ref().is_some_and(|c| c.key.day < today) {
            self.close()?;
        }
        let mut buf = Vec::new();
        for line in lines {
            let size = match &self.current {
                Some(c) => c.size,
                None => {
                    self.open_next(today)?;
                    0
                }
            };
            let pending = size + buf.len() as u64;
            if pending > 0 && pending + line.len() as u64 > self.rotate_size {
                self.flush(&mut buf)?;
                self.open_next(today)?;
            }
            buf.extend_from_slice(line.as_bytes());
        }
        self.flush(&mut buf)
    }

    fn flush(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let cur = self
            .current
            .as_mut()
            .ok_or_else(|| io::Error::other("no open audit file"))?;
        cur.file.write_all(buf)?;
        cur.size += buf.len() as u64;
        cur.unsynced = true;
        buf.clear();
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if let Some(cur) = &mut self.current {
            if cur.unsynced {
                if let Err(e) = cur.file.sync_data() {
                    // After a failed fsync the page cache state is unknown: never retry on it.
                    self.current = None;
                    return Err(e);
                }
                cur.unsynced = false;
            }
        }
        Ok(())
    }
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

/// With `fsync: interval`, how long the writer lets records gather after writing a batch.
const BATCH_LINGER: Duration = Duration::from_millis(2);

/// The writer task's state.
struct Writer {
    rx: mpsc::Receiver<Msg>,
    shared: Arc<Shared>,
    /// `None` only while a blocking write holds them.
    sinks: Option<Sinks>,
    spec: SinkSpec,
    fsync: FsyncMode,
    last_sync: Instant,
    /// Written but not yet synced (interval mode).
    unsynced: bool,
    retention_days: u32,
    sweeping: Arc<AtomicBool>,
}

impl Writer {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) -> Result<(), AuditError> {
        let mut retention = tokio::time::interval(RETENTION_EVERY);
        retention.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let sync_at = match self.fsync {
                FsyncMode::Interval(every) if self.unsynced => Some(self.last_sync + every),
                _ => None,
            };
            tokio::select! {
                biased;
                _ = &mut stop => break,
                msg = self.rx.recv() => match msg {
                    Some(msg) => {
                        self.handle(msg).await;
                        if matches!(self.fsync, FsyncMode::Interval(_)) {
                            // Nobody waits on these records: let a few milliseconds of them
                            // gather, so that a busy proxy hands the disk thread one batch per
                            // linger instead of one per request (each hand-off wakes a thread).
                            tokio::select! {
                                biased;
                                _ = &mut stop => break,
                                () = tokio::time::sleep(BATCH_LINGER) => {}
                            }
                        }
                    }
                    None => break,
                },
                () = sleep_until(sync_at), if sync_at.is_some() => self.sync().await,
                _ = retention.tick() => self.sweep().await,
            }
        }
        // Drain: no new records, everything queued is written.
        self.rx.close();
        while let Some(msg) = self.rx.recv().await {
            self.handle(msg).await;
        }
        metrics().audit_queue_depth.set(0);
        let res = self.with_sinks(|s| s.sync().map(|_| ())).await;
        self.sinks = None;
        tracing::info!(stats = ?self.stats(), "Audit writer stopped");
        match res {
            Some(Ok(())) | None => Ok(()),
            Some(Err(e)) => {
                self.failed(1, &e.to_string());
                Err(AuditError::WriteFailed(format!("final sync: {e}")))
            }
        }
    }

    fn stats(&self) -> AuditStats {
        AuditStats {
            written: self.shared.written.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            write_failures: self.shared.failures.load(Ordering::Relaxed),
        }
    }

    /// Handles `first` and whatever else is already queued, in order.
    async fn handle(&mut self, first: Msg) {
        #[cfg(test)]
        let _gate = Arc::clone(&self.shared.gate).read_owned().await;
        let mut lines = Vec::new();
        let mut acks = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line { line, ack } => {
                    lines.push(line);
                    acks.extend(ack);
                    if lines.len() < MAX_BATCH {
                        next = self.rx.try_recv().ok();
                    }
                }
                Msg::Rotate(reply) => {
                    self.write_batch(std::mem::take(&mut lines), std::mem::take(&mut acks))
                        .await;
                    let res = self.rotate().await;
                    let _ = reply.send(res);
                    next = self.rx.try_recv().ok();
                }
            }
        }
        self.write_batch(lines, acks).await;
        metrics()
            .audit_queue_depth
            .set(i64::try_from(self.rx.len()).unwrap_or(i64::MAX));
    }

    async fn write_batch(&mut self, lines: Vec<String>, acks: Vec<Ack>) {
        if lines.is_empty() {
            return;
        }
        let n = lines.len() as u64;
        let sync = match self.fsync {
            FsyncMode::Always => true,
            FsyncMode::Interval(every) => self.last_sync.elapsed() >= every,
        };
        let today = today();
        let res = self
            .with_sinks(move |s| s.write(&lines, today, sync))
            .await
            .unwrap_or_else(|| Err("audit write task failed".to_string()));
        match res {
            Ok(()) => {
                if sync {
                    self.last_sync = Instant::now();
                    self.unsynced = false;
                } else {
                    self.unsynced = true;
                }
                self.shared.written.fetch_add(n, Ordering::Relaxed);
                metrics().audit_records.inc_by(n);
                if !self.shared.healthy.swap(true, Ordering::AcqRel) {
                    tracing::info!("Audit records are being written again");
                }
                for ack in acks {
                    let _ = ack.send(Ok(()));
                }
            }
            Err(e) => {
                self.failed(n, &e);
                for ack in acks {
                    let _ = ack.send(Err(AuditError::WriteFailed(e.clone())));
                }
            }
        }
    }

    async fn sync(&mut self) {
        let res = self.with_sinks(Sinks::sync).await;
        self.last_sync = Instant::now();
        self.unsynced = false;
        match res {
            Some(Ok(())) => {}
            Some(Err(e)) => self.failed(1, &e.to_string()),
            None => self.failed(1, "audit sync task failed"),
        }
    }

    async fn rotate(&mut self) -> Result<Option<FileKey>, AuditError> {
        let today = today();
        let res = self
            .with_sinks(move |s| s.files.as_mut().map(|f| f.open_next(today)).transpose())
            .await
            .unwrap_or_else(|| Err(io::Error::other("audit rotate task failed")));
        self.unsynced = false;
        res.map_err(|e| {
            self.failed(0, &e.to_string());
            AuditError::WriteFailed(format!("cannot start a new audit file: {e}"))
        })
    }

    fn failed(&self, records: u64, error: &str) {
        self.shared
            .failures
            .fetch_add(records.max(1), Ordering::Relaxed);
        metrics().audit_write_failures.inc_by(records.max(1));
        self.shared.healthy.store(false, Ordering::Release);
        tracing::error!(records, error, "Audit write failed");
    }

    /// Deletes expired files in the background; never touches the file being written.
    async fn sweep(&mut self) {
        let Some(dir) = self.spec.dir.clone() else {
            return;
        };
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let active = self
            .sinks
            .as_ref()
            .and_then(|s| s.files.as_ref())
            .and_then(|f| f.current.as_ref().map(|c| c.key).or(f.last));
        let days = self.retention_days;
        let hold = self.shared.legal_hold.clone();
        let sweeping = Arc::clone(&self.sweeping);
        tokio::task::spawn_blocking(move || {
            let active = active.or(Some(FileKey {
                day: today(),
                seq: 0,
            }));
            match query::retention_before(&dir, days, &hold, today(), active) {
                Ok(r) if r == Default::default() => {}
                Ok(r) => tracing::info!(
                    files_deleted = r.files_deleted,
                    files_held = r.files_held,
                    records_held = r.records_held,
                    "Expired audit files removed"
                ),
                Err(e) => tracing::error!(error = %e, "Audit retention sweep failed"),
            }
            sweeping.store(false, Ordering::Release);
        });
    }

    /// Runs `f` on the sinks in the blocking pool. `None` if that task died (the sinks are then
    /// rebuilt from the config, starting a new file on the next write).
    async fn with_sinks<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Sinks) -> R + Send + 'static,
    ) -> Option<R> {
        let mut sinks = self
            .sinks
            .take()
            .unwrap_or_else(|| Sinks::rebuild(&self.spec));
        let res = tokio::task::spawn_blocking(move || {
            let r = f(&mut sinks);
            (sinks, r)
        })
        .await;
        match res {
            Ok((sinks, r)) => {
                self.sinks = Some(sinks);
                Some(r)
            }
            Err(e) => {
                tracing::error!(error = %e, "Audit write task failed");
                None
            }
        }
    }
}

/// Sleeps until `at`, or forever when `None` (the select branch is disabled then anyway).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use chrono::Days;

    use super::*;
    use crate::audit::config::AuditConfig;
    use crate::audit::query::{find, Query};
    use crate::audit::record::{Action, Direction, RecordKind};
    use crate::config::units::{ByteSize, HumanDuration};

    const KEY: &str = "test-key-test-key-test-key";

    fn config(dir: &Path, tweak: impl FnOnce(&mut AuditConfig)) -> ValidAuditConfig {
        let mut cfg = AuditConfig {
            dir: Some(dir.to_path_buf()),
            ..AuditConfig::default()
        };
        tweak(&mut cfg);
        cfg.validate_with(|_| Some(KEY.to_string()))
            .expect("test config is valid")
    }

    fn decision(i: usize, user: &str) -> Record {
        Record {
            user: Some(user.to_string()),
            content_id: Some(format!("content-{i}")),
            ..Record::decision(format!("req-{i}"), Direction::Prompt, "A1d", Action::Block)
        }
    }

    fn all(dir: &Path) -> Vec<Record> {
        find(
            dir,
            &Query {
                limit: Some(usize::MAX),
                ..Query::default()
            },
        )
        .unwrap()
    }

    fn file_names(dir: &Path) -> Vec<String> {
        files::list(dir)
            .unwrap()
            .into_iter()
            .map(|f| f.key.file_name())
            .collect()
    }

    const USER_A: &str = "u-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const USER_B: &str = "u-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_acknowledged_is_lost_with_fsync_always() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), |c| {
            c.fsync = crate::audit::config::FsyncSetting::Always;
            c.queue_capacity = 64;
            c.enqueue_timeout = HumanDuration::from_secs(5);
        });
        let records_before = metrics().audit_records.get();
        let (auditor, task) = Auditor::start(&cfg).unwrap();
        let mut tasks = Vec::new();
        for t in 0..50 {
            let auditor = auditor.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for j in 0..20 {
                    let i = t * 100 + j;
                    if auditor.record_durable(decision(i, USER_A)).await.is_ok() {
                        acked.push(format!("req-{i}"));
                    }
                }
                acked
            }));
        }
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await.unwrap());
        }
        // Read back before shutdown: acknowledged means already in the file.
        let on_disk: Vec<String> = all(dir.path())
            .into_iter()
            .filter_map(|r| r.request_id)
            .collect();
        let on_disk_set: HashSet<&String> = on_disk.iter().collect();
        assert_eq!(acked.len(), 1000, "every record acknowledged");
        assert_eq!(on_disk.len(), on_disk_set.len(), "no duplicates");
        for id in &acked {
            assert!(
                on_disk_set.contains(id),
                "{id} acknowledged but not on disk"
            );
        }
        assert_eq!(auditor.stats().written, 1000);
        assert_eq!(auditor.stats().dropped, 0);
        assert!(metrics().audit_records.get() >= records_before + 1000);
        assert!(auditor.healthy());
        task.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn size_rotation_keeps_every_record_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), |c| c.rotate_size = ByteSize::kib(1));
        let (auditor, task) = Auditor::start(&cfg).unwrap();
        for i in 0..100 {
            auditor.record(decision(i, USER_A)).await.unwrap();
        }
        task.shutdown().await.unwrap();

        let names = file_names(dir.path());
        assert!(names.len() > 10, "{names:?}");
        let day = today().format("%Y-%m-%d").to_string();
        for (n, name) in names.iter().enumerate() {
            assert_eq!(name, &format!("audit-{day}.{n}.jsonl"));
            let size = std::fs::metadata(dir.path().join(name)).unwrap().len();
            assert!(size <= 1024, "{name} is {size} bytes");
        }
        let ids: Vec<String> = all(dir.path())
            .into_iter()
            .filter_map(|r| r.request_id)
            .collect();
        let want: Vec<String> = (0..100).map(|i| format!("req-{i}")).collect();
        assert_eq!(ids, want);
    }

    #[test]
    fn a_new_day_starts_a_new_file_and_days_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let day1 = NaiveDate::from_ymd_opt(2025, 7, 1).unwrap();
        let day2 = NaiveDate::from_ymd_opt(2025, 7, 2).unwrap();
        let line = |i: usize| decision(i, USER_A).to_line();
        let mut sink = FileSink::new(dir.path().to_path_buf(), 1 << 20);
        sink.write(&[line(0), line(1)], day1).unwrap();
        sink.write(&[line(2)], day2).unwrap();
        // The clock steps back: records keep going to the latest day's file.
        sink.write(&[line(3)], day1).unwrap();
        sink.sync().unwrap();
        assert_eq!(
            file_names(dir.path()),
            ["audit-2025-07-01.0.jsonl", "audit-2025-07-02.0.jsonl"]
        );
        let day2_ids: Vec<String> = all(dir.path())
            .into_iter()
            .skip(2)
            .filter_map(|r| r.request_id)
            .collect();
        assert_eq!(day2_ids, ["req-2", "req-3"]);
    }

    #[tokio::test]
    async fn a_restart_starts_a_new_file_instead_of_appending() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), |_| {});
        for round in 0..2 {
            let (auditor, task) = Auditor::start(&cfg).unwrap();
            auditor.record(decision(round, USER_A)).await.unwrap();
            task.shutdown().await.unwrap();
        }
        assert_eq!(file_names(dir.path()).len(), 2);
        assert_eq!(all(dir.path()).len(), 2);
    }

    #[tokio::test]
    async fn retention_runs_at_start_by_file_name_date() {
        let dir = tempfile::tempdir().unwrap();
        let old = today().checked_sub_days(Days::new(181)).unwrap();
        let kept = today().checked_sub_days(Days::new(180)).unwrap();
        let old_file = dir.path().join(FileKey { day: old, seq: 0 }.file_name());
        let kept_file = dir.path().join(FileKey { day: kept, seq: 0 }.file_name());
        let line = decision(0, USER_A).to_line();
        std::fs::write(&old_file, &line).unwrap();
        std::fs::write(&kept_file, &line).unwrap();
        // A fresh mtime does not save an old-named file; a foreign file is never touched.
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();

        let cfg = config(dir.path(), |_| {});
        let (_auditor, task) = Auditor::start(&cfg).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while old_file.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!old_file.exists(), "expired file deleted");
        assert!(kept_file.exists(), "file at exactly 180 days kept");
        assert!(dir.path().join("notes.txt").exists());
        task.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_drops_after_the_wait_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), |c| {
            c.queue_capacity = 2;
            c.enqueue_timeout = HumanDuration::from_millis(20);
        });
        let (auditor, task) = Auditor::start(&cfg).unwrap();
        let dropped_before = metrics().audit_dropped.get();
        let pause = auditor.pause_writer().await;
        let mut ok = Vec::new();
        let mut dropped = 0;
        for i in 0..10 {
            let started = Instant::now();
            match auditor.record(decision(i, USER_A)).await {
                Ok(()) => ok.push(format!("req-{i}")),
                Err(AuditError::Dropped) => {
                    assert!(
                        started.elapsed() >= Duration::from_millis(15),
                        "waited first"
                    );
                    dropped += 1;
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        // Two queued plus at most one in the stalled writer's hands.
        assert!((2..=3).contains(&ok.len()), "{ok:?}");
        assert_eq!(dropped, 10 - ok.len() as u64);
        assert_eq!(auditor.stats().dropped, dropped);
        assert!(metrics().audit_dropped.get() >= dropped_before + dropped);
        assert_eq!(
            auditor.try_record(decision(99, USER_A)).unwrap_err().kind(),
            "dropped"
        );
        drop(pause);
        task.shutdown().await.unwrap();
        let ids: Vec<String> = all(dir.path())
            .into_iter()
            .filter_map(|r| r.request_id)
            .collect();
        assert_eq!(ids, ok, "every accepted record written, no dropped one");
    }

    #[tokio::test]
    async fn health_turns_off_on_write_failure_and_back_on_after_a_good_write() {
        let dir = tempfile::tempdir().unwrap();
        let audit_dir = dir.path().join("audit");
        let cfg = config(&audit_dir, |c| {
            c.rotate_size = ByteSize::kib(1);
            c.fail_closed = true;
        });
        let failures_before = metrics().audit_write_failures.get();
        let (auditor, task) = Auditor::start(&cfg).unwrap();
        auditor.record_durable(decision(0, USER_A)).await.unwrap();
        assert!(auditor.healthy());

        // The directory disappears: the next rotation cannot create a file.
        std::fs::remove_dir_all(&audit_dir).unwrap();
        let mut failed = false;
        for i in 1..20 {
            if let Err(e) = auditor.record_durable(decision(i, USER_A)).await {
                assert_eq!(e.kind(), "write");
                failed = true;
                break;
            }
        }
        assert!(failed, "a write failed");
        assert!(!auditor.healthy());
        assert!(
            auditor.refuse_traffic(),
            "fail_closed refuses while unhealthy"
        );
        assert!(auditor.stats().write_failures >= 1);
        assert!(metrics().audit_write_failures.get() > failures_before);

        std::fs::create_dir_all(&audit_dir).unwrap();
        auditor.record_durable(decision(100, USER_A)).await.unwrap();
        assert!(auditor.healthy(), "a later good write restores health");
        assert!(!auditor.refuse_traffic());
        task.shutdown().await.unwrap();
        assert!(!auditor.healthy(), "not healthy once stopped");
        assert!(matches!(
            auditor.record(decision(101, USER_A)).await,
            Err(AuditError::Closed)
        ));
    }

    #[tokio::test]
    async fn erase_while_running_removes_exactly_the_users_records() {
        let dir = tempfile::tempdir().unwrap();
        let held = "u-cccccccccccccccccccccccccccccccc";
        let cfg = config(dir.path(), |c| c.legal_hold_users = vec![held.to_string()]);
        let (auditor, task) = Auditor::start(&cfg).unwrap();
        for i in 0..6 {
            let user = [USER_A, USER_B, held][i % 3];
            auditor.record_durable(decision(i, user)).await.unwrap();
        }
        let report = auditor.erase(USER_A).await.unwrap();
        assert_eq!(report.records_removed, 2);
        assert!(matches!(
            auditor.erase(held).await,
            Err(AuditError::LegalHold(_))
        ));
        assert!(matches!(
            auditor.erase("alice").await,
            Err(AuditError::NotPseudonym(_))
        ));
        auditor
            .record_durable(Record::erasure(USER_A, "art. 11 request"))
            .await
            .unwrap();
        // The writer goes on in its new file.
        auditor.record_durable(decision(10, USER_B)).await.unwrap();
        task.shutdown().await.unwrap();

        let left = all(dir.path());
        let a: Vec<&Record> = left
            .iter()
            .filter(|r| r.user.as_deref() == Some(USER_A))
            .collect();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].kind, RecordKind::Erasure);
        assert_eq!(
            left.iter()
                .filter(|r| r.user.as_deref() == Some(USER_B))
                .count(),
            3
        );
        assert_eq!(
            left.iter()
                .filter(|r| r.user.as_deref() == Some(held))
                .count(),
            2
        );
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn stdout_sink_writes_one_json_line_per_record() {
        let cfg = AuditConfig {
            dir: None,
            stdout: true,
            ..AuditConfig::default()
        }
        .validate_with(|_| Some(KEY.to_string()))
        .unwrap();
        let out = Captured::default();
        let (auditor, task) =
            Auditor::start_with_stdout(&cfg, Some(Box::new(out.clone()))).unwrap();
        for i in 0..3 {
            auditor.record_durable(decision(i, USER_A)).await.unwrap();
        }
        assert!(matches!(
            auditor.erase(USER_A).await,
            Err(AuditError::NoDirectory)
        ));
        task.shutdown().await.unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        for (i, line) in lines.iter().enumerate() {
            let rec: Record = serde_json::from_str(line).unwrap();
            assert_eq!(rec.request_id, Some(format!("req-{i}")));
        }
    }

    #[tokio::test]
    async fn oversized_fields_are_bounded_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), |c| c.excerpt_chars = 5);
        let (auditor, task) = Auditor::start(&cfg).unwrap();
        let whole_prompt = "secret prompt ".repeat(1000);
        let rec = Record {
            excerpt: Some(whole_prompt.clone()),
            ..Record::admin(whole_prompt.clone())
        };
        auditor.record(rec).await.unwrap();
        task.shutdown().await.unwrap();
        let rec = all(dir.path()).pop().unwrap();
        assert!(rec.detail.unwrap().chars().count() <= 256);
        assert!(rec.excerpt.unwrap().chars().count() <= cfg.max_excerpt_chars());
    }

    #[tokio::test]
    async fn interval_mode_acknowledges_after_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), |c| {
            c.fsync_interval = HumanDuration::from_millis(10)
        });
        let (auditor, task) = Auditor::start(&cfg).unwrap();
        for i in 0..5 {
            auditor.record_durable(decision(i, USER_A)).await.unwrap();
        }
        assert_eq!(all(dir.path()).len(), 5);
        // Let the interval sync run with nothing else happening.
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(auditor.stats().write_failures, 0);
        task.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_bad_directory_fails_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        let cfg = config(&file, |_| {});
        assert!(matches!(Auditor::start(&cfg), Err(AuditError::Io { .. })));
    }
}

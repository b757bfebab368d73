//! Where complaints live: PostgreSQL (durable, shared by every replica) or this process's memory.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;

use super::{Complaint, ListFilter, Outcome, Status, TypeCounts};
use crate::pg::Closed;

/// Complaints the memory store keeps at most; past it the oldest resolved ones go first.
pub const MEMORY_CAPACITY: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("complaint store: {0}")]
    Backend(String),
    #[error("complaint store is full of open complaints")]
    Full,
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The driver's message names the failing step and the server's reason, never the URL.
        Self::Backend(crate::pg::PgError::from(e).0)
    }
}

impl From<crate::pg::PgError> for StoreError {
    fn from(e: crate::pg::PgError) -> Self {
        Self::Backend(e.0)
    }
}

pub enum Store {
    Memory(Mutex<BTreeMap<String, Complaint>>),
    Postgres(Box<PgStore>),
}

impl Store {
    pub async fn insert(&self, c: &Complaint) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                let mut m = m.lock().await;
                if m.len() >= MEMORY_CAPACITY {
                    let oldest_resolved = m
                        .values()
                        .filter(|c| c.status == Status::Resolved)
                        .min_by_key(|c| c.created_at)
                        .map(|c| c.id.clone());
                    match oldest_resolved {
                        Some(id) => {
                            m.remove(&id);
                        }
                        None => return Err(StoreError::Full),
                    }
                }
                m.insert(c.id.clone(), c.clone());
                Ok(())
            }
            Store::Postgres(pg) => pg.insert(c).await,
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Complaint>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.lock().await.get(id).cloned()),
            Store::Postgres(pg) => pg.get(id).await,
        }
    }

    pub async fn open_by(&self, reporter: &str) -> Result<u64, StoreError> {
        match self {
            Store::Memory(m) => Ok(m
                .lock()
                .await
                .values()
                .filter(|c| c.status == Status::Open && c.reporter.as_deref() == Some(reporter))
                .count() as u64),
            Store::Postgres(pg) => pg.open_by(reporter).await,
        }
    }

    /// Newest first.
    pub async fn list(
        &self,
        f: &ListFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<Complaint>, StoreError> {
        match self {
            Store::Memory(m) => {
                let m = m.lock().await;
                let mut out: Vec<Complaint> =
                    m.values().filter(|c| f.admits(c, now)).cloned().collect();
                out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
                out.truncate(f.limit);
                Ok(out)
            }
            Store::Postgres(pg) => pg.list(f, now).await,
        }
    }

    pub async fn resolve(
        &self,
        id: &str,
        outcome: Outcome,
        reply: &str,
        at: DateTime<Utc>,
    ) -> Result<Closed<Complaint>, StoreError> {
        match self {
            Store::Memory(m) => {
                let mut m = m.lock().await;
                let Some(c) = m.get_mut(id) else {
                    return Ok(Closed::Missing);
                };
                if c.status == Status::Resolved {
                    return Ok(Closed::Already);
                }
                c.status = Status::Resolved;
                c.outcome = Some(outcome);
                c.reply = Some(reply.to_string());
                c.resolved_at = Some(at);
                Ok(Closed::Done(Box::new(c.clone())))
            }
            Store::Postgres(pg) => pg.resolve(id, outcome, reply, at).await,
        }
    }

    /// Open and overdue complaints by type.
    pub async fn counts(&self, now: DateTime<Utc>) -> Result<TypeCounts, StoreError> {
        match self {
            Store::Memory(m) => {
                let mut out = TypeCounts::new();
                for c in m.lock().await.values().filter(|c| c.status == Status::Open) {
                    let e = out.entry(c.kind.clone()).or_default();
                    e.0 += 1;
                    if c.due_at < now {
                        e.1 += 1;
                    }
                }
                Ok(out)
            }
            Store::Postgres(pg) => pg.counts(now).await,
        }
    }

    /// Art. 11 erasure: forget who filed and what they wrote; the complaint, its type, dates and
    /// outcome stay (the provider's record of handling it).
    pub async fn forget_reporter(&self, reporter: &str) -> Result<u64, StoreError> {
        match self {
            Store::Memory(m) => {
                let mut n = 0;
                for c in m.lock().await.values_mut() {
                    if c.reporter.as_deref() == Some(reporter) {
                        c.reporter = None;
                        c.description = String::new();
                        n += 1;
                    }
                }
                Ok(n)
            }
            Store::Postgres(pg) => pg.forget_reporter(reporter).await,
        }
    }
}

/// Complaints in one PostgreSQL table (`complaints.table`), over [`crate::pg::Connection`].
pub struct PgStore {
    conn: crate::pg::Connection,
    table: String,
}

const COLUMNS: &str = "id, kind, channel, status, content_id, request_id, description, reporter, \
                       created_at, due_at, outcome, reply, resolved_at";

impl PgStore {
    pub fn new(
        url: &str,
        table: &str,
        timeout: std::time::Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, String> {
        let index = table.replace('.', "_");
        let init = format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                channel TEXT NOT NULL,
                status TEXT NOT NULL,
                content_id TEXT,
                request_id TEXT,
                description TEXT NOT NULL,
                reporter TEXT,
                created_at TIMESTAMPTZ NOT NULL,
                due_at TIMESTAMPTZ NOT NULL,
                outcome TEXT,
                reply TEXT,
                resolved_at TIMESTAMPTZ
            );
            CREATE INDEX IF NOT EXISTS {index}_open ON {table} (due_at) WHERE status = 'open';
            CREATE INDEX IF NOT EXISTS {index}_reporter ON {table} (reporter);
            CREATE INDEX IF NOT EXISTS {index}_created ON {table} (created_at);"
        );
        Ok(Self {
            conn: crate::pg::Connection::new("complaints", url, init, timeout, ca_file)?,
            table: table.to_string(),
        })
    }

    async fn client(&self) -> Result<Arc<tokio_postgres::Client>, StoreError> {
        Ok(self.conn.client().await?)
    }

    async fn insert(&self, c: &Complaint) -> Result<(), StoreError> {
        let db = self.client().await?;
        db.execute(
            &format!(
                "INSERT INTO {} ({COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)",
                self.table
            ),
            &[
                &c.id,
                &c.kind,
                &c.channel,
                &c.status.as_str(),
                &c.content_id,
                &c.request_id,
                &c.description,
                &c.reporter,
                &c.created_at,
                &c.due_at,
                &c.outcome.map(Outcome::as_str),
                &c.reply,
                &c.resolved_at,
            ],
        )
        .await?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Complaint>, StoreError> {
        let db = self.client().await?;
        let row = db
            .query_opt(
                &format!("SELECT {COLUMNS} FROM {} WHERE id = $1", self.table),
                &[&id],
            )
            .await?;
        row.map(|r| from_row(&r)).transpose()
    }

    async fn open_by(&self, reporter: &str) -> Result<u64, StoreError> {
        let db = self.client().await?;
        let row = db
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE reporter = $1 AND status = 'open'",
                    self.table
                ),
                &[&reporter],
            )
            .await?;
        Ok(row.try_get::<_, i64>(0)?.max(0) as u64)
    }

    async fn list(&self, f: &ListFilter, now: DateTime<Utc>) -> Result<Vec<Complaint>, StoreError> {
        let db = self.client().await?;
        let limit = i64::try_from(f.limit).unwrap_or(i64::MAX);
        let rows = db
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM {} WHERE ($1::text IS NULL OR status = $1) \
                     AND ($2::text IS NULL OR kind = $2) \
                     AND (NOT $3 OR (status = 'open' AND due_at < $4)) \
                     AND ($5::text IS NULL OR content_id = $5) \
                     AND ($6::text IS NULL OR request_id = $6) \
                     ORDER BY created_at DESC, id DESC LIMIT $7",
                    self.table
                ),
                &[
                    &f.status.map(Status::as_str),
                    &f.kind,
                    &f.overdue,
                    &now,
                    &f.content_id,
                    &f.request_id,
                    &limit,
                ],
            )
            .await?;
        rows.iter().map(from_row).collect()
    }

    async fn resolve(
        &self,
        id: &str,
        outcome: Outcome,
        reply: &str,
        at: DateTime<Utc>,
    ) -> Result<Closed<Complaint>, StoreError> {
        let db = self.client().await?;
        // One statement: of two operators resolving at once, one wins and the other is told.
        let row = db
            .query_opt(
                &format!(
                    "UPDATE {} SET status = 'resolved', outcome = $2, reply = $3, resolved_at = $4 \
                     WHERE id = $1 AND status = 'open' RETURNING {COLUMNS}",
                    self.table
                ),
                &[&id, &outcome.as_str(), &reply, &at],
            )
            .await?;
        if let Some(r) = row {
            return Ok(Closed::Done(Box::new(from_row(&r)?)));
        }
        Ok(match self.get(id).await? {
            Some(_) => Closed::Already,
            None => Closed::Missing,
        })
    }

    async fn counts(&self, now: DateTime<Utc>) -> Result<TypeCounts, StoreError> {
        let db = self.client().await?;
        let rows = db
            .query(
                &format!(
                    "SELECT kind, count(*), count(*) FILTER (WHERE due_at < $1) FROM {} \
                     WHERE status = 'open' GROUP BY kind",
                    self.table
                ),
                &[&now],
            )
            .await?;
        let mut out = TypeCounts::new();
        for r in rows {
            let kind: String = r.try_get(0)?;
            let open: i64 = r.try_get(1)?;
            let overdue: i64 = r.try_get(2)?;
            out.insert(kind, (open.max(0) as u64, overdue.max(0) as u64));
        }
        Ok(out)
    }

    async fn forget_reporter(&self, reporter: &str) -> Result<u64, StoreError> {
        let db = self.client().await?;
        Ok(db
            .execute(
                &format!(
                    "UPDATE {} SET reporter = NULL, description = '' WHERE reporter = $1",
                    self.table
                ),
                &[&reporter],
            )
            .await?)
    }
}

fn from_row(r: &tokio_postgres::Row) -> Result<Complaint, StoreError> {
    let status: String = r.try_get("status")?;
    let outcome: Option<String> = r.try_get("outcome")?;
    Ok(Complaint {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        channel: r.try_get("channel")?,
        status: Status::parse(&status)
            .ok_or_else(|| StoreError::Backend(format!("unknown status `{status}`")))?,
        content_id: r.try_get("content_id")?,
        request_id: r.try_get("request_id")?,
        description: r.try_get("description")?,
        reporter: r.try_get("reporter")?,
        created_at: r.try_get("created_at")?,
        due_at: r.try_get("due_at")?,
        outcome: match outcome {
            None => None,
            Some(o) => Some(
                Outcome::parse(&o)
                    .ok_or_else(|| StoreError::Backend(format!("unknown outcome `{o}`")))?,
            ),
        },
        reply: r.try_get("reply")?,
        resolved_at: r.try_get("resolved_at")?,
    })
}

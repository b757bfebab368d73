//! Where review items live: PostgreSQL (shared by every replica) or this process's memory.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;

use super::{Item, ListFilter, Status, Tally, Verdict, TALLY_EXAMPLES, TALLY_MAX};
use crate::pg::Closed;

#[derive(Debug, thiserror::Error)]
#[error("review store: {0}")]
pub struct StoreError(String);

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self(crate::pg::PgError::from(e).0)
    }
}

impl From<crate::pg::PgError> for StoreError {
    fn from(e: crate::pg::PgError) -> Self {
        Self(e.0)
    }
}

pub struct Memory {
    items: Mutex<BTreeMap<String, Item>>,
    capacity: usize,
}

pub enum Store {
    Memory(Memory),
    Postgres(Box<PgStore>),
}

impl Store {
    pub fn memory(capacity: usize) -> Self {
        Store::Memory(Memory {
            items: Mutex::new(BTreeMap::new()),
            capacity,
        })
    }

    pub async fn insert(&self, items: &[Item]) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                let mut map = m.items.lock().await;
                for item in items {
                    if map.len() >= m.capacity {
                        // The oldest reviewed item goes first, else the oldest pending one.
                        let victim = map
                            .values()
                            .min_by_key(|i| (i.status == Status::Pending, i.created_at))
                            .map(|i| i.id.clone());
                        if let Some(id) = victim {
                            map.remove(&id);
                        }
                    }
                    map.insert(item.id.clone(), item.clone());
                }
                Ok(())
            }
            Store::Postgres(pg) => pg.insert(items).await,
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Item>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.items.lock().await.get(id).cloned()),
            Store::Postgres(pg) => pg.get(id).await,
        }
    }

    /// Oldest first.
    pub async fn list(&self, f: &ListFilter) -> Result<Vec<Item>, StoreError> {
        match self {
            Store::Memory(m) => {
                let map = m.items.lock().await;
                let mut out: Vec<Item> = map
                    .values()
                    .filter(|i| {
                        i.status == f.status && f.category.as_ref().is_none_or(|c| &i.category == c)
                    })
                    .cloned()
                    .collect();
                out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
                out.truncate(f.limit);
                Ok(out)
            }
            Store::Postgres(pg) => pg.list(f).await,
        }
    }

    pub async fn decide(
        &self,
        id: &str,
        verdict: Verdict,
        note: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<Closed<Item>, StoreError> {
        match self {
            Store::Memory(m) => {
                let mut map = m.items.lock().await;
                let Some(i) = map.get_mut(id) else {
                    return Ok(Closed::Missing);
                };
                if i.status == Status::Reviewed {
                    return Ok(Closed::Already);
                }
                i.status = Status::Reviewed;
                i.verdict = Some(verdict);
                i.note = note.map(str::to_string);
                i.reviewed_at = Some(at);
                Ok(Closed::Done(Box::new(i.clone())))
            }
            Store::Postgres(pg) => pg.decide(id, verdict, note, at).await,
        }
    }

    /// Items since `since` counted by what found them (`Review::tally`).
    pub async fn tally(&self, since: DateTime<Utc>) -> Result<Vec<Tally>, StoreError> {
        match self {
            Store::Memory(m) => {
                let map = m.items.lock().await;
                let mut rows: BTreeMap<_, Tally> = BTreeMap::new();
                let mut items: Vec<&Item> =
                    map.values().filter(|i| i.created_at >= since).collect();
                // Newest first, so each row's examples are its latest dismissals.
                items.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
                for i in items {
                    let key = (
                        i.category.clone(),
                        i.detector.clone(),
                        i.term_id.clone(),
                        i.policy_version.clone(),
                    );
                    let t = rows.entry(key).or_insert_with(|| Tally {
                        category: i.category.clone(),
                        detector: i.detector.clone(),
                        term_id: i.term_id.clone(),
                        policy_version: i.policy_version.clone(),
                        pending: 0,
                        confirmed: 0,
                        dismissed: 0,
                        dismissed_examples: Vec::new(),
                    });
                    match i.verdict {
                        None => t.pending += 1,
                        Some(Verdict::Confirmed) => t.confirmed += 1,
                        Some(Verdict::Dismissed) => {
                            t.dismissed += 1;
                            if t.dismissed_examples.len() < TALLY_EXAMPLES {
                                t.dismissed_examples.push(i.id.clone());
                            }
                        }
                    }
                }
                let mut out: Vec<Tally> = rows.into_values().collect();
                sort_tally(&mut out);
                out.truncate(TALLY_MAX);
                Ok(out)
            }
            Store::Postgres(pg) => pg.tally(since).await,
        }
    }

    /// Art. 11 erasure: the user's items go, as their audit records do.
    pub async fn erase_user(&self, user: &str) -> Result<u64, StoreError> {
        match self {
            Store::Memory(m) => {
                let mut map = m.items.lock().await;
                let before = map.len();
                map.retain(|_, i| i.user.as_deref() != Some(user));
                Ok((before - map.len()) as u64)
            }
            Store::Postgres(pg) => {
                let db = pg.client().await?;
                Ok(db
                    .execute(
                        &format!("DELETE FROM {} WHERE user_id = $1", pg.table),
                        &[&user],
                    )
                    .await?)
            }
        }
    }

    /// Pending items and when the oldest of them was queued.
    pub async fn pending_counts(&self) -> Result<(u64, Option<DateTime<Utc>>), StoreError> {
        match self {
            Store::Memory(m) => {
                let map = m.items.lock().await;
                let pending = map.values().filter(|i| i.status == Status::Pending);
                let (n, oldest) = pending.fold((0u64, None), |(n, o), i| {
                    let o = match o {
                        Some(t) if t <= i.created_at => Some(t),
                        _ => Some(i.created_at),
                    };
                    (n + 1, o)
                });
                Ok((n, oldest))
            }
            Store::Postgres(pg) => pg.pending_counts().await,
        }
    }
}

/// Most dismissed first, then most confirmed, then by what found them (a stable order).
fn sort_tally(rows: &mut [Tally]) {
    rows.sort_by(|a, b| {
        (b.dismissed, b.confirmed)
            .cmp(&(a.dismissed, a.confirmed))
            .then_with(|| {
                (&a.category, &a.detector, &a.term_id, &a.policy_version).cmp(&(
                    &b.category,
                    &b.detector,
                    &b.term_id,
                    &b.policy_version,
                ))
            })
    });
}

/// Review items in one PostgreSQL table (`review.table`).
pub struct PgStore {
    conn: crate::pg::Connection,
    table: String,
}

const COLUMNS: &str = "id, created_at, request_id, content_id, user_id, route, direction, \
                       category, action, excerpt, policy_version, status, verdict, note, \
                       reviewed_at, detector, term_id";

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
                created_at TIMESTAMPTZ NOT NULL,
                request_id TEXT,
                content_id TEXT,
                user_id TEXT,
                route TEXT,
                direction TEXT,
                category TEXT NOT NULL,
                action TEXT NOT NULL,
                excerpt TEXT,
                policy_version TEXT,
                status TEXT NOT NULL,
                verdict TEXT,
                note TEXT,
                reviewed_at TIMESTAMPTZ
            );
            ALTER TABLE {table} ADD COLUMN IF NOT EXISTS detector TEXT;
            ALTER TABLE {table} ADD COLUMN IF NOT EXISTS term_id TEXT;
            CREATE INDEX IF NOT EXISTS {index}_pending ON {table} (created_at) WHERE status = 'pending';
            CREATE INDEX IF NOT EXISTS {index}_user ON {table} (user_id);"
        );
        Ok(Self {
            conn: crate::pg::Connection::new("review", url, init, timeout, ca_file)?,
            table: table.to_string(),
        })
    }

    async fn client(&self) -> Result<Arc<tokio_postgres::Client>, StoreError> {
        Ok(self.conn.client().await?)
    }

    async fn insert(&self, items: &[Item]) -> Result<(), StoreError> {
        let db = self.client().await?;
        let sql = format!(
            "INSERT INTO {} ({COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17) \
             ON CONFLICT (id) DO NOTHING",
            self.table
        );
        // Pipelined on the one connection; ON CONFLICT makes a retried batch harmless.
        let inserts = items.iter().map(|i| {
            let db = db.clone();
            let sql = sql.as_str();
            async move {
                db.execute(
                    sql,
                    &[
                        &i.id,
                        &i.created_at,
                        &i.request_id,
                        &i.content_id,
                        &i.user,
                        &i.route,
                        &i.direction,
                        &i.category,
                        &i.action,
                        &i.excerpt,
                        &i.policy_version,
                        &i.status.as_str(),
                        &i.verdict.map(Verdict::as_str),
                        &i.note,
                        &i.reviewed_at,
                        &i.detector,
                        &i.term_id,
                    ],
                )
                .await
            }
        });
        for r in futures_util::future::join_all(inserts).await {
            r?;
        }
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Item>, StoreError> {
        let db = self.client().await?;
        let row = db
            .query_opt(
                &format!("SELECT {COLUMNS} FROM {} WHERE id = $1", self.table),
                &[&id],
            )
            .await?;
        row.map(|r| from_row(&r)).transpose()
    }

    async fn list(&self, f: &ListFilter) -> Result<Vec<Item>, StoreError> {
        let db = self.client().await?;
        let limit = i64::try_from(f.limit).unwrap_or(i64::MAX);
        let rows = db
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM {} WHERE status = $1 \
                     AND ($2::text IS NULL OR category = $2) \
                     ORDER BY created_at, id LIMIT $3",
                    self.table
                ),
                &[&f.status.as_str(), &f.category, &limit],
            )
            .await?;
        rows.iter().map(from_row).collect()
    }

    async fn decide(
        &self,
        id: &str,
        verdict: Verdict,
        note: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<Closed<Item>, StoreError> {
        let db = self.client().await?;
        // One statement: of two monitors deciding at once, one wins and the other is told.
        let row = db
            .query_opt(
                &format!(
                    "UPDATE {} SET status = 'reviewed', verdict = $2, note = $3, reviewed_at = $4 \
                     WHERE id = $1 AND status = 'pending' RETURNING {COLUMNS}",
                    self.table
                ),
                &[&id, &verdict.as_str(), &note, &at],
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

    async fn tally(&self, since: DateTime<Utc>) -> Result<Vec<Tally>, StoreError> {
        let db = self.client().await?;
        let examples = i32::try_from(TALLY_EXAMPLES).unwrap_or(i32::MAX);
        let limit = i64::try_from(TALLY_MAX).unwrap_or(i64::MAX);
        let rows = db
            .query(
                &format!(
                    "SELECT category, detector, term_id, policy_version, \
                       count(*) FILTER (WHERE status = 'pending'), \
                       count(*) FILTER (WHERE verdict = 'confirmed'), \
                       count(*) FILTER (WHERE verdict = 'dismissed'), \
                       (array_agg(id ORDER BY created_at DESC, id DESC) \
                          FILTER (WHERE verdict = 'dismissed'))[1:$2::int4] \
                     FROM {} WHERE created_at >= $1 \
                     GROUP BY category, detector, term_id, policy_version \
                     ORDER BY 7 DESC, 6 DESC, category, detector, term_id, policy_version \
                     LIMIT $3",
                    self.table
                ),
                &[&since, &examples, &limit],
            )
            .await?;
        let count = |r: &tokio_postgres::Row, i| -> Result<u64, StoreError> {
            let n: i64 = r.try_get(i)?;
            Ok(n.max(0) as u64)
        };
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(Tally {
                    category: r.try_get(0)?,
                    detector: r.try_get(1)?,
                    term_id: r.try_get(2)?,
                    policy_version: r.try_get(3)?,
                    pending: count(r, 4)?,
                    confirmed: count(r, 5)?,
                    dismissed: count(r, 6)?,
                    dismissed_examples: r.try_get::<_, Option<Vec<String>>>(7)?.unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // NULLs sort last in PostgreSQL and first in Rust: one order for both stores.
        sort_tally(&mut out);
        Ok(out)
    }

    async fn pending_counts(&self) -> Result<(u64, Option<DateTime<Utc>>), StoreError> {
        let db = self.client().await?;
        let row = db
            .query_one(
                &format!(
                    "SELECT count(*), min(created_at) FROM {} WHERE status = 'pending'",
                    self.table
                ),
                &[],
            )
            .await?;
        let n: i64 = row.try_get(0)?;
        Ok((n.max(0) as u64, row.try_get(1)?))
    }
}

fn from_row(r: &tokio_postgres::Row) -> Result<Item, StoreError> {
    let status: String = r.try_get("status")?;
    let verdict: Option<String> = r.try_get("verdict")?;
    Ok(Item {
        id: r.try_get("id")?,
        created_at: r.try_get("created_at")?,
        request_id: r.try_get("request_id")?,
        content_id: r.try_get("content_id")?,
        user: r.try_get("user_id")?,
        route: r.try_get("route")?,
        direction: r.try_get("direction")?,
        category: r.try_get("category")?,
        action: r.try_get("action")?,
        excerpt: r.try_get("excerpt")?,
        detector: r.try_get("detector")?,
        term_id: r.try_get("term_id")?,
        policy_version: r.try_get("policy_version")?,
        status: Status::parse(&status)
            .ok_or_else(|| StoreError(format!("unknown status `{status}`")))?,
        verdict: match verdict {
            None => None,
            Some(v) => Some(
                Verdict::parse(&v).ok_or_else(|| StoreError(format!("unknown verdict `{v}`")))?,
            ),
        },
        note: r.try_get("note")?,
        reviewed_at: r.try_get("reviewed_at")?,
    })
}

//! Where strikes, suspensions and request counters live: in this process, or in Redis, shared
//! by every replica (one user's standing must not depend on which replica answers).
//!
//! Keys (Redis) under the configured prefix, each with a TTL so nothing outlives its use:
//! `strikes:{user}` a sorted set of request ids scored by time (one strike per request, however
//! many findings it had); `suspended:{user}` set for the suspension's length; `count:{name}:{user}:{bucket}`
//! counters of requests a minute or a day; `flagged`, a sorted set of the users with strikes or a
//! suspension, scored by when that ends, and `flagged-version`, raised at each change. Users are
//! pseudonymous ids (`u-…`), never raw ids.
//!
//! Users with strikes are few next to all users, so each replica keeps the flagged ones in
//! memory, read again every `sync_interval` when the version moved: a user not among them is
//! served without a call to Redis. A strike made here counts here at once; one made on another
//! replica, from the next read. Until the first read, and after a read fails, every user is
//! asked of Redis.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use redis::aio::ConnectionManager;

/// A store operation that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store timed out after {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(String),
}

/// A user's standing as the store has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    /// Strikes within the window.
    pub strikes: u32,
    /// Milliseconds (Unix) when a suspension ends, if one is in force.
    pub suspended_until: Option<u64>,
}

pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Store {
    /// The standing of `user` at `now` (ms), counting strikes since `now - window`.
    pub async fn standing(
        &self,
        user: &str,
        now: u64,
        window: u64,
    ) -> Result<Standing, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.standing(user, now, window)),
            Store::Redis(r) => r.standing(user, now, window).await,
        }
    }

    /// Count a strike for request `request_id` (again for the same request: no new strike);
    /// at `suspend_at` strikes or more (0: never) a suspension of `suspend_for` ms begins.
    /// Returns the standing after it, and whether it began a suspension.
    pub async fn strike(
        &self,
        user: &str,
        request_id: &str,
        now: u64,
        window: u64,
        suspend: Option<(u32, u64)>,
    ) -> Result<(Standing, bool), StoreError> {
        match self {
            Store::Memory(m) => Ok(m.strike(user, request_id, now, window, suspend)),
            Store::Redis(r) => r.strike(user, request_id, now, window, suspend).await,
        }
    }

    /// Add one to counter `name` of `user` for time bucket `bucket` (kept `ttl` ms); the count
    /// after it.
    pub async fn count(
        &self,
        name: &str,
        user: &str,
        bucket: u64,
        ttl: u64,
        now: u64,
    ) -> Result<u64, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.count(name, user, bucket, ttl, now)),
            Store::Redis(r) => r.count(name, user, bucket, ttl).await,
        }
    }

    /// Forget a user's strikes and suspension (an operator's decision, or an erasure).
    pub async fn lift(&self, user: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.lift(user);
                Ok(())
            }
            Store::Redis(r) => r.lift(user).await,
        }
    }
}

/// One user's entry in the memory store.
#[derive(Default)]
struct Entry {
    /// (time in ms, request id), oldest first.
    strikes: Vec<(u64, String)>,
    suspended_until: u64,
    /// Counter name → (bucket, count, expires at ms).
    counters: Vec<(String, u64, u64, u64)>,
}

impl Entry {
    fn prune(&mut self, now: u64, window: u64) {
        let from = now.saturating_sub(window);
        self.strikes.retain(|(t, _)| *t > from);
    }

    fn idle(&self, now: u64) -> bool {
        self.suspended_until <= now
            && self.strikes.is_empty()
            && self.counters.iter().all(|c| c.3 <= now)
    }
}

/// Users of one replica, at most `cap` of them.
pub struct MemoryStore {
    users: Mutex<HashMap<String, Entry>>,
    cap: usize,
    /// The window strikes were last counted in: an entry whose strikes are all older is idle.
    window: std::sync::atomic::AtomicU64,
}

impl MemoryStore {
    pub fn new(cap: usize) -> Self {
        Self {
            users: Mutex::new(HashMap::new()),
            cap,
            window: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn with<T>(&self, user: &str, now: u64, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if !users.contains_key(user) && users.len() >= self.cap {
            // Full: drop every user with nothing in force. Past that, the oldest-keyed entries
            // stay and the new user is tracked in a throwaway entry (counted, not kept).
            let window = self.window.load(std::sync::atomic::Ordering::Relaxed);
            users.retain(|_, e| {
                e.prune(now, window);
                !e.idle(now)
            });
            if users.len() >= self.cap {
                return f(&mut Entry::default());
            }
        }
        f(users.entry(user.to_string()).or_default())
    }

    /// Users tracked now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.users.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub(super) fn standing(&self, user: &str, now: u64, window: u64) -> Standing {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = users.get(user) else {
            return Standing::default();
        };
        let from = now.saturating_sub(window);
        Standing {
            strikes: e.strikes.iter().filter(|(t, _)| *t > from).count() as u32,
            suspended_until: (e.suspended_until > now).then_some(e.suspended_until),
        }
    }

    pub(super) fn strike(
        &self,
        user: &str,
        request_id: &str,
        now: u64,
        window: u64,
        suspend: Option<(u32, u64)>,
    ) -> (Standing, bool) {
        self.window
            .store(window, std::sync::atomic::Ordering::Relaxed);
        self.with(user, now, |e| {
            e.prune(now, window);
            if !e.strikes.iter().any(|(_, r)| r == request_id) {
                e.strikes.push((now, request_id.to_string()));
            }
            let strikes = e.strikes.len() as u32;
            let was_suspended = e.suspended_until > now;
            if let Some((at, len)) = suspend {
                if strikes >= at {
                    e.suspended_until = e.suspended_until.max(now + len);
                }
            }
            let standing = Standing {
                strikes,
                suspended_until: (e.suspended_until > now).then_some(e.suspended_until),
            };
            (
                standing,
                !was_suspended && standing.suspended_until.is_some(),
            )
        })
    }

    fn count(&self, name: &str, user: &str, bucket: u64, ttl: u64, now: u64) -> u64 {
        self.with(user, now, |e| {
            e.counters.retain(|c| c.3 > now);
            match e.counters.iter_mut().find(|c| c.0 == name && c.1 == bucket) {
                Some(c) => {
                    c.2 += 1;
                    c.2
                }
                None => {
                    e.counters.push((name.to_string(), bucket, 1, now + ttl));
                    1
                }
            }
        })
    }

    fn lift(&self, user: &str) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = users.get_mut(user) {
            e.strikes.clear();
            e.suspended_until = 0;
        }
    }
}

/// Users shared through Redis: one multiplexed connection, re-established when lost.
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    /// The flagged users as last read (see the module documentation); `None`: unknown.
    flagged: Arc<ArcSwapOption<HashSet<String>>>,
}

impl RedisStore {
    /// A store on `url`; the connection is made at the first operation (a Redis down at start
    /// is a store error then, not a failed start). Must be called inside a tokio runtime.
    pub fn new(
        url: &str,
        prefix: &str,
        timeout: Duration,
        sync: Duration,
    ) -> Result<Self, StoreError> {
        let client =
            redis::Client::open(url).map_err(|e| StoreError::Redis(e.category().into()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let conn = client
            .get_connection_manager_lazy(config)
            .map_err(|e| StoreError::Redis(e.to_string()))?;
        let store = Self {
            conn,
            prefix: prefix.to_string(),
            timeout,
            flagged: Arc::new(ArcSwapOption::empty()),
        };
        tokio::spawn(sync_flagged(
            store.conn.clone(),
            format!("{prefix}flagged"),
            Arc::downgrade(&store.flagged),
            timeout,
            sync,
        ));
        Ok(store)
    }

    /// Whether `user` may have strikes or a suspension (unknown counts as may).
    pub(super) fn may_be_flagged(&self, user: &str) -> bool {
        self.flagged
            .load()
            .as_ref()
            .is_none_or(|set| set.contains(user))
    }

    /// Add `user` to this replica's flagged users now (its own strike).
    fn flag_here(&self, user: &str) {
        self.flagged.rcu(|cur| {
            cur.as_ref().map(|set| {
                let mut set = HashSet::clone(set);
                set.insert(user.to_string());
                Arc::new(set)
            })
        });
    }

    fn flagged_key(&self) -> String {
        format!("{}flagged", self.prefix)
    }

    fn key(&self, kind: &str, user: &str) -> String {
        format!("{}{kind}:{user}", self.prefix)
    }

    async fn run<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, pipe.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Redis(e.to_string())),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    async fn standing(&self, user: &str, now: u64, window: u64) -> Result<Standing, StoreError> {
        if !self.may_be_flagged(user) {
            return Ok(Standing::default());
        }
        let (sk, pk) = (self.key("strikes", user), self.key("suspended", user));
        let mut p = redis::pipe();
        p.cmd("ZCOUNT")
            .arg(&sk)
            .arg(format!("({}", now.saturating_sub(window)))
            .arg("+inf")
            .cmd("PTTL")
            .arg(&pk);
        let (strikes, ttl): (u32, i64) = self.run(&p).await?;
        Ok(Standing {
            strikes,
            suspended_until: (ttl > 0).then(|| now + ttl as u64),
        })
    }

    async fn strike(
        &self,
        user: &str,
        request_id: &str,
        now: u64,
        window: u64,
        suspend: Option<(u32, u64)>,
    ) -> Result<(Standing, bool), StoreError> {
        let (sk, pk) = (self.key("strikes", user), self.key("suspended", user));
        let keep = window.max(suspend.map_or(0, |(_, len)| len));
        let mut p = redis::pipe();
        p.atomic()
            // NX: the same request again keeps its first time.
            .cmd("ZADD")
            .arg(&sk)
            .arg("NX")
            .arg(now)
            .arg(request_id)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&sk)
            .arg("-inf")
            .arg(now.saturating_sub(window))
            .ignore()
            .cmd("PEXPIRE")
            .arg(&sk)
            .arg(window)
            .ignore()
            // Flagged until the window ends (a suspension below may extend it).
            .cmd("ZADD")
            .arg(self.flagged_key())
            .arg("GT")
            .arg(now + window)
            .arg(user)
            .ignore()
            .cmd("INCR")
            .arg(format!("{}-version", self.flagged_key()))
            .ignore()
            // Both outlive every entry: none is scored past now + keep.
            .cmd("PEXPIRE")
            .arg(self.flagged_key())
            .arg(keep)
            .ignore()
            .cmd("PEXPIRE")
            .arg(format!("{}-version", self.flagged_key()))
            .arg(keep)
            .ignore()
            .cmd("ZCARD")
            .arg(&sk)
            .cmd("PTTL")
            .arg(&pk);
        let (strikes, mut ttl): (u32, i64) = self.run(&p).await?;
        let was_suspended = ttl > 0;
        self.flag_here(user);
        if let Some((at, len)) = suspend {
            if strikes >= at && ttl < len as i64 {
                let mut conn = self.conn.clone();
                let mut p = redis::pipe();
                p.atomic()
                    .cmd("PSETEX")
                    .arg(&pk)
                    .arg(len)
                    .arg(1)
                    .ignore()
                    .cmd("ZADD")
                    .arg(self.flagged_key())
                    .arg("GT")
                    .arg(now + len)
                    .arg(user)
                    .ignore()
                    .cmd("INCR")
                    .arg(format!("{}-version", self.flagged_key()))
                    .ignore();
                let set = p.query_async::<()>(&mut conn);
                match tokio::time::timeout(self.timeout, set).await {
                    Ok(Ok(())) => ttl = len as i64,
                    Ok(Err(e)) => return Err(StoreError::Redis(e.to_string())),
                    Err(_) => return Err(StoreError::Timeout(self.timeout)),
                }
            }
        }
        let standing = Standing {
            strikes,
            suspended_until: (ttl > 0).then(|| now + ttl as u64),
        };
        Ok((standing, !was_suspended && ttl > 0))
    }

    async fn count(
        &self,
        name: &str,
        user: &str,
        bucket: u64,
        ttl: u64,
    ) -> Result<u64, StoreError> {
        let k = format!("{}count:{name}:{user}:{bucket}", self.prefix);
        let mut p = redis::pipe();
        p.atomic()
            .cmd("INCR")
            .arg(&k)
            .cmd("PEXPIRE")
            .arg(&k)
            .arg(ttl)
            .ignore();
        let (n,): (u64,) = self.run(&p).await?;
        Ok(n)
    }

    async fn lift(&self, user: &str) -> Result<(), StoreError> {
        let mut p = redis::pipe();
        p.atomic()
            .cmd("DEL")
            .arg(self.key("strikes", user))
            .arg(self.key("suspended", user))
            .ignore()
            .cmd("ZREM")
            .arg(self.flagged_key())
            .arg(user)
            .ignore()
            .cmd("INCR")
            .arg(format!("{}-version", self.flagged_key()))
            .ignore();
        self.run::<()>(&p).await
    }
}

/// Read the flagged users into `flagged` every `every` while the store lives: the whole set when
/// `{key}-version` moved, nothing else otherwise; the ones whose time has passed are dropped
/// from Redis first. A failed read makes every user unknown until the next one succeeds.
async fn sync_flagged(
    mut conn: ConnectionManager,
    key: String,
    flagged: std::sync::Weak<ArcSwapOption<HashSet<String>>>,
    timeout: Duration,
    every: Duration,
) {
    let version_key = format!("{key}-version");
    let mut seen: Option<i64> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(flagged) = flagged.upgrade() else {
            return;
        };
        let now = super::Enforcer::now_ms();
        let read = async {
            let mut p = redis::pipe();
            p.cmd("ZREMRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(now)
                .ignore()
                .cmd("GET")
                .arg(&version_key);
            let (version,): (Option<i64>,) = p.query_async(&mut conn).await?;
            let version = version.unwrap_or(0);
            if seen == Some(version) && flagged.load().is_some() {
                return Ok(None);
            }
            let users: Vec<String> = redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>(Some((version, users)))
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(Some((version, users)))) => {
                seen = Some(version);
                flagged.store(Some(Arc::new(users.into_iter().collect())));
            }
            Ok(Ok(None)) => {}
            Ok(Err(_)) | Err(_) => {
                seen = None;
                flagged.store(None);
                crate::metrics::metrics()
                    .enforce_store_errors
                    .with_label_values(&["sync"])
                    .inc();
            }
        }
    }
}

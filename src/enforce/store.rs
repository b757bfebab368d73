//! Where strikes, suspensions and request counters live: in this process, or in Redis, shared
//! by every replica (one user's standing must not depend on which replica answers).
//!
//! Keys (Redis) under the configured prefix, each with a TTL so nothing outlives its use:
//! `strikes:{user}` a sorted set of request ids scored by time (one strike per request, however
//! many findings it had); `suspended:{user}` set for the suspension's length; `count:{name}:{user}:{bucket}`
//! counters of requests a minute or a day; `seq:{user}` the number of a flagged user's latest
//! request and `streak:{user}` (`n`, `last`) the strikes in a row and the number of the last
//! struck request; `session:{user}` a minor's session of use (`start:last`); `flagged`, a sorted set of the users with strikes or a
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
    /// Strikes in a row: requests of the user each with a strike, none without one between.
    pub streak: u32,
    /// From `admit`: this request's number among the user's requests, counted while the user is
    /// flagged (a strike on the next number continues a streak); `None` when not counted.
    pub seq: Option<u64>,
}

/// How long a memory entry keeps a session after its last request (the longest `session_gap`).
const SESSION_KEEP_MS: u64 = 86_400_000;

/// What a strike does (`Store::strike`).
#[derive(Debug, Clone, Copy)]
pub struct StrikeRules {
    /// Strikes count this long (ms).
    pub window: u64,
    /// Suspend at this many strikes in the window (0: never).
    pub suspend_at: u32,
    /// Suspend at this many strikes in a row (0: never).
    pub suspend_consecutive: u32,
    /// A suspension's length (ms).
    pub suspend_for: u64,
}

impl StrikeRules {
    fn suspends(&self, strikes: u32, streak: u32) -> bool {
        (self.suspend_at > 0 && strikes >= self.suspend_at)
            || (self.suspend_consecutive > 0 && streak >= self.suspend_consecutive)
    }

    /// How long a user's strike state is kept (ms).
    fn keep(&self) -> u64 {
        self.window.max(self.suspend_for)
    }
}

/// The streak after a strike on request number `seq`, where the last strike was on `last`
/// (`None`: no streak) and the streak stood at `streak`: the same number again is the same
/// request (no change), the next number continues it, any other starts a new one.
fn next_streak(streak: u32, last: Option<u64>, seq: u64) -> u32 {
    match last {
        Some(l) if l == seq => streak.max(1),
        Some(l) if l + 1 == seq => streak + 1,
        _ => 1,
    }
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

    /// The standing of `user` for a request being admitted now: as `standing`, and a flagged
    /// user's request is numbered (`Standing::seq`), so that strikes in a row can be told.
    pub async fn admit(&self, user: &str, now: u64, window: u64) -> Result<Standing, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.admit(user, now, window)),
            Store::Redis(r) => r.admit(user, now, window).await,
        }
    }

    /// Count a strike for request `request_id`, number `seq` among the user's requests (`None`:
    /// not numbered, taken as the latest); again for the same request: no new strike. At
    /// `rules.suspend_at` strikes or `rules.suspend_consecutive` in a row a suspension begins.
    /// Returns the standing after it, and whether it began a suspension.
    pub async fn strike(
        &self,
        user: &str,
        request_id: &str,
        seq: Option<u64>,
        now: u64,
        rules: &StrikeRules,
    ) -> Result<(Standing, bool), StoreError> {
        match self {
            Store::Memory(m) => Ok(m.strike(user, request_id, seq, now, rules)),
            Store::Redis(r) => r.strike(user, request_id, seq, now, rules).await,
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

    /// A request of `user` in a session of use at `now` (ms): a pause over `gap` ms began a new
    /// one. Returns when the session began.
    pub async fn session(&self, user: &str, now: u64, gap: u64) -> Result<u64, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.session(user, now, gap)),
            Store::Redis(r) => r.session(user, now, gap).await,
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
    /// Requests admitted while the entry lived (`Standing::seq`).
    seq: u64,
    /// A session of use (minors): when it began and when the last request came, ms.
    session: (u64, u64),
    /// Strikes in a row, and the request number of the last one.
    streak: u32,
    streak_last: Option<u64>,
}

impl Entry {
    fn prune(&mut self, now: u64, window: u64) {
        let from = now.saturating_sub(window);
        self.strikes.retain(|(t, _)| *t > from);
    }

    fn standing(&self, now: u64, window: u64) -> Standing {
        let from = now.saturating_sub(window);
        Standing {
            strikes: self.strikes.iter().filter(|(t, _)| *t > from).count() as u32,
            suspended_until: (self.suspended_until > now).then_some(self.suspended_until),
            streak: self.streak,
            seq: None,
        }
    }

    fn idle(&self, now: u64) -> bool {
        (self.session.1 == 0 || self.session.1 + SESSION_KEEP_MS <= now)
            && self.suspended_until <= now
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
        users
            .get(user)
            .map_or_else(Standing::default, |e| e.standing(now, window))
    }

    /// As `standing`; a tracked user's request is numbered.
    pub(super) fn admit(&self, user: &str, now: u64, window: u64) -> Standing {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = users.get_mut(user) else {
            return Standing::default();
        };
        e.seq += 1;
        Standing {
            seq: Some(e.seq),
            ..e.standing(now, window)
        }
    }

    pub(super) fn strike(
        &self,
        user: &str,
        request_id: &str,
        seq: Option<u64>,
        now: u64,
        rules: &StrikeRules,
    ) -> (Standing, bool) {
        self.window
            .store(rules.window, std::sync::atomic::Ordering::Relaxed);
        self.with(user, now, |e| {
            e.prune(now, rules.window);
            if !e.strikes.iter().any(|(_, r)| r == request_id) {
                e.strikes.push((now, request_id.to_string()));
            }
            e.streak = next_streak(e.streak, e.streak_last, seq.unwrap_or(e.seq));
            e.streak_last = Some(seq.unwrap_or(e.seq));
            let strikes = e.strikes.len() as u32;
            let was_suspended = e.suspended_until > now;
            if rules.suspends(strikes, e.streak) {
                e.suspended_until = e.suspended_until.max(now + rules.suspend_for);
            }
            let standing = e.standing(now, rules.window);
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

    fn session(&self, user: &str, now: u64, gap: u64) -> u64 {
        self.with(user, now, |e| {
            if e.session.1 == 0 || now.saturating_sub(e.session.1) > gap {
                e.session.0 = now;
            }
            e.session.1 = now;
            e.session.0
        })
    }

    fn lift(&self, user: &str) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = users.get_mut(user) {
            e.strikes.clear();
            e.suspended_until = 0;
            e.streak = 0;
            e.streak_last = None;
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
        self.read_standing(user, now, window, false).await
    }

    async fn admit(&self, user: &str, now: u64, window: u64) -> Result<Standing, StoreError> {
        self.read_standing(user, now, window, true).await
    }

    /// The standing of a flagged user (else none, without a call); with `number`, the request is
    /// numbered too (`seq:{user}`, kept for the window).
    async fn read_standing(
        &self,
        user: &str,
        now: u64,
        window: u64,
        number: bool,
    ) -> Result<Standing, StoreError> {
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
            .arg(&pk)
            .cmd("HGET")
            .arg(self.key("streak", user))
            .arg("n");
        if number {
            let qk = self.key("seq", user);
            p.cmd("INCR")
                .arg(&qk)
                .cmd("PEXPIRE")
                .arg(&qk)
                .arg(window)
                .ignore();
            let (strikes, ttl, streak, seq): (u32, i64, Option<u32>, u64) = self.run(&p).await?;
            return Ok(Standing {
                strikes,
                suspended_until: (ttl > 0).then(|| now + ttl as u64),
                streak: streak.unwrap_or(0),
                seq: Some(seq),
            });
        }
        let (strikes, ttl, streak): (u32, i64, Option<u32>) = self.run(&p).await?;
        Ok(Standing {
            strikes,
            suspended_until: (ttl > 0).then(|| now + ttl as u64),
            streak: streak.unwrap_or(0),
            seq: None,
        })
    }

    async fn strike(
        &self,
        user: &str,
        request_id: &str,
        seq: Option<u64>,
        now: u64,
        rules: &StrikeRules,
    ) -> Result<(Standing, bool), StoreError> {
        let (sk, pk) = (self.key("strikes", user), self.key("suspended", user));
        let window = rules.window;
        let keep = rules.keep();
        let mut p = redis::pipe();
        p.atomic()
            // The streak, as `next_streak` has it, in one step on the server.
            .cmd("EVAL")
            .arg(STREAK_SCRIPT)
            .arg(2)
            .arg(self.key("streak", user))
            .arg(self.key("seq", user))
            .arg(seq.map_or(-1, |s| i64::try_from(s).unwrap_or(i64::MAX)))
            .arg(keep)
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
        let (streak, strikes, mut ttl): (u32, u32, i64) = self.run(&p).await?;
        let was_suspended = ttl > 0;
        self.flag_here(user);
        let len = rules.suspend_for;
        if rules.suspends(strikes, streak) && ttl < len as i64 {
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
        let standing = Standing {
            strikes,
            suspended_until: (ttl > 0).then(|| now + ttl as u64),
            streak,
            seq,
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

    async fn session(&self, user: &str, now: u64, gap: u64) -> Result<u64, StoreError> {
        let mut p = redis::pipe();
        p.cmd("EVAL")
            .arg(SESSION_SCRIPT)
            .arg(1)
            .arg(self.key("session", user))
            .arg(now)
            .arg(gap);
        let (start,): (String,) = self.run(&p).await?;
        Ok(start.parse().unwrap_or(now))
    }

    async fn lift(&self, user: &str) -> Result<(), StoreError> {
        let mut p = redis::pipe();
        p.atomic()
            .cmd("DEL")
            .arg(self.key("strikes", user))
            .arg(self.key("suspended", user))
            .arg(self.key("streak", user))
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

/// `next_streak` on the server: KEYS `streak:{user}` (a hash of `n` and `last`) and
/// `seq:{user}`; ARGV the request's number (-1: not numbered, taken as the latest) and how long
/// to keep the streak (ms). Returns the streak after the strike.
const STREAK_SCRIPT: &str = r"
local seq = tonumber(ARGV[1])
if seq < 0 then seq = tonumber(redis.call('GET', KEYS[2]) or '0') end
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local last = redis.call('HGET', KEYS[1], 'last')
if last and tonumber(last) == seq then
  if n < 1 then n = 1 end
elseif last and tonumber(last) + 1 == seq then
  n = n + 1
else
  n = 1
end
redis.call('HSET', KEYS[1], 'n', n, 'last', seq)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return n
";

/// A session of use on the server: KEYS `session:{user}` (`start:last`, ms, kept `gap` ms);
/// ARGV now and the gap. A request within `gap` of the last continues the session. Returns its
/// start (as text: Lua's numbers would print large ones in exponent form).
const SESSION_SCRIPT: &str = r"
local start = ARGV[1]
local v = redis.call('GET', KEYS[1])
if v then
  local s, l = string.match(v, '^(%d+):(%d+)$')
  if s and tonumber(ARGV[1]) - tonumber(l) <= tonumber(ARGV[2]) then start = s end
end
redis.call('SET', KEYS[1], start .. ':' .. ARGV[1], 'PX', ARGV[2])
return start
";

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

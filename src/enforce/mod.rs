//! Actions on users (Interim Measures Art. 14 para 2: warnings, restrictions, suspension of a
//! user who uses the service to break the law or the rules; Art. 10: limits for minors).
//!
//! A *strike* is a request with a `block` decision, prompt or answer, counted once per request.
//! The strikes of a user within `enforce.strikes.window` decide the user's standing: from
//! `warn_at` the answer carries `x-shenhe-user-notice: warning`; from `restrict_at` the user may
//! send `restricted_requests_per_minute` requests a minute (429 past it); at `suspend_at` (or
//! `suspend_consecutive` strikes in a row: each a request of the user, none without one between) the
//! user is refused (403) for `suspend_for`. A minor (a header the provider's own gateway sets)
//! is served only within `minors.hours` and up to `minors.daily_requests` a local day, and
//! after `minors.session_reminder` of continuous use each answer carries a reminder.
//!
//! Users are the pseudonymous ids of the audit records (`u-…`), so the store holds no raw id.
//! The store is this process's memory or Redis (every replica sees the same standing). When it
//! cannot answer, `on_store_error` decides: serve unsanctioned (default) or refuse with 503.
//! Checks run on moderated routes, before the body is read; a request with no user id is
//! served (nothing to hold it against), and a minor's hours still apply to it.

pub mod config;
pub mod store;

use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};

pub use config::EnforceConfig;
use config::{parse_hours, parse_offset, StoreFailure, StoreKind};
use store::{MemoryStore, RedisStore, Store};
pub use store::{Standing, StoreError};

use crate::dialect::error::{ApiError, ErrorKind};
use crate::metrics::metrics;

/// The response header that tells a client its user's standing (`warning`, `restricted`).
pub const NOTICE_HEADER: &str = "x-shenhe-user-notice";
/// The response header that tells a client a minor has used the service for this many minutes
/// without a break (`minors.session_reminder`), for the app to remind them.
pub const REMINDER_HEADER: &str = "x-shenhe-usage-reminder";

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 86_400_000;

/// What a request's user may do.
#[derive(Debug)]
pub enum Verdict {
    /// Serve it; with a notice for the client when the user has strikes, and the request's
    /// number among the user's (`Standing::seq`) for a strike it may earn.
    Serve {
        notice: Option<&'static str>,
        seq: Option<u64>,
        /// A minor's minutes of continuous use, once past `minors.session_reminder`.
        reminder: Option<u64>,
    },
    /// Refuse it: the error, seconds after which trying again can succeed, and the sanction
    /// record's detail.
    Refuse {
        error: ApiError,
        retry_after: Option<u64>,
        detail: String,
    },
}

impl Verdict {
    fn refuse(kind: ErrorKind, message: &str, retry_after: Option<u64>, detail: String) -> Self {
        Verdict::Refuse {
            error: ApiError::new(kind, message),
            retry_after,
            detail,
        }
    }
}

/// A cap on requests a period (`Enforcer::over`).
struct Limit {
    name: &'static str,
    period: u64,
    cap: u32,
    message: &'static str,
    detail: &'static str,
}

/// The enforcement of one process: its settings and its store.
pub struct Enforcer {
    cfg: EnforceConfig,
    store: Store,
    hours: Option<(u32, u32)>,
    offset_ms: i64,
    minor_header: Option<http::HeaderName>,
}

impl Enforcer {
    /// The enforcer `cfg` asks for; `None` when `enforce.enabled` is false. Must be called inside
    /// a tokio runtime (the Redis connection is made there, at its first use).
    pub fn new(cfg: &EnforceConfig) -> Result<Option<Enforcer>, String> {
        if !cfg.enabled {
            return Ok(None);
        }
        if let Some(issue) = cfg.validate().into_iter().next() {
            return Err(issue.to_string());
        }
        let store = match cfg.store {
            StoreKind::Memory => Store::Memory(MemoryStore::new(cfg.memory_users)),
            StoreKind::Redis => Store::Redis(
                RedisStore::new(
                    &cfg.redis_url,
                    &cfg.key_prefix,
                    cfg.store_timeout.get(),
                    cfg.sync_interval.get(),
                )
                .map_err(|e| format!("enforce.redis_url: {e}"))?,
            ),
        };
        let hours = cfg.minors.hours.as_deref().map(parse_hours).transpose()?;
        let offset_ms = i64::from(parse_offset(&cfg.minors.utc_offset)?) * 1000;
        let minor_header = minor_header(&cfg.minors)?;
        Ok(Some(Enforcer {
            cfg: cfg.clone(),
            store,
            hours,
            offset_ms,
            minor_header,
        }))
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn window_ms(&self) -> u64 {
        self.cfg.strikes.window.get().as_millis() as u64
    }

    fn is_minor(&self, headers: &HeaderMap) -> bool {
        is_minor(self.minor_header.as_ref(), headers)
    }

    /// Local time (`minors.utc_offset`) in ms since the epoch.
    fn local_ms(&self, now: u64) -> u64 {
        (now as i64 + self.offset_ms).max(0) as u64
    }

    /// What `user` (pseudonymous) may do now, with request headers `headers`.
    pub async fn check(&self, user: Option<&str>, headers: &HeaderMap, now: u64) -> Verdict {
        let verdict = self.judge(user, headers, now).await;
        let label = match &verdict {
            Verdict::Serve { notice: None, .. } => "served",
            Verdict::Serve {
                notice: Some("restricted"),
                ..
            } => "served_restricted",
            Verdict::Serve { .. } => "served_warned",
            Verdict::Refuse { error, .. } => match error.kind {
                ErrorKind::UserSuspended => "refused_suspended",
                ErrorKind::MinorHours => "refused_minor_hours",
                ErrorKind::UserLimit => "refused_limit",
                _ => "refused_store_error",
            },
        };
        metrics().enforce_verdicts.with_label_values(&[label]).inc();
        verdict
    }

    async fn judge(&self, user: Option<&str>, headers: &HeaderMap, now: u64) -> Verdict {
        let minor = self.is_minor(headers);
        let local = self.local_ms(now);
        if minor {
            if let Some((from, to)) = self.hours {
                let minute = ((local % DAY_MS) / MINUTE_MS) as u32;
                let open = if from < to {
                    (from..to).contains(&minute)
                } else {
                    minute >= from || minute < to
                };
                if !open {
                    let wait = (u64::from((from + 24 * 60 - minute) % (24 * 60))) * 60;
                    return Verdict::refuse(
                        ErrorKind::MinorHours,
                        "this service is not available to minors at this hour",
                        Some(wait.max(1)),
                        "refused: minor outside hours".into(),
                    );
                }
            }
        }
        let Some(user) = user else {
            return Verdict::Serve {
                notice: None,
                seq: None,
                reminder: None,
            };
        };
        let standing = match self.store.admit(user, now, self.window_ms()).await {
            Ok(s) => s,
            Err(e) => return self.store_failed("standing", &e),
        };
        if let Some(until) = standing.suspended_until {
            let secs = until.saturating_sub(now).div_ceil(1000);
            return Verdict::refuse(
                ErrorKind::UserSuspended,
                "this account is suspended for repeated violations of the usage rules",
                Some(secs.max(1)),
                format!("refused: suspended, {secs}s left"),
            );
        }
        let s = &self.cfg.strikes;
        let restricted = s.restrict_at > 0 && standing.strikes >= s.restrict_at;
        if restricted {
            let limit = Limit {
                name: "minute",
                period: MINUTE_MS,
                cap: self.cfg.restricted_requests_per_minute,
                message: "this account is restricted for violations of the usage rules: too many requests this minute",
                detail: "refused: restricted, over the requests a minute",
            };
            if let Some(v) = self.over(&limit, user, now, now).await {
                return v;
            }
        }
        if minor && self.cfg.minors.daily_requests > 0 {
            let limit = Limit {
                name: "day",
                period: DAY_MS,
                cap: self.cfg.minors.daily_requests,
                message: "the daily limit of requests for minors is reached",
                detail: "refused: minor over the daily requests",
            };
            if let Some(v) = self.over(&limit, user, now, local).await {
                return v;
            }
        }
        let notice = if restricted {
            Some("restricted")
        } else if s.warn_at > 0 && standing.strikes >= s.warn_at {
            Some("warning")
        } else {
            None
        };
        let reminder = if minor {
            self.reminder(user, now).await
        } else {
            None
        };
        Verdict::Serve {
            notice,
            seq: standing.seq,
            reminder,
        }
    }

    /// A minor's minutes of continuous use when past `minors.session_reminder` (a store that
    /// does not answer reminds of nothing: this is advice, not a limit).
    async fn reminder(&self, user: &str, now: u64) -> Option<u64> {
        let after = self.cfg.minors.session_reminder.get().as_millis() as u64;
        if after == 0 {
            return None;
        }
        let gap = self.cfg.minors.session_gap.get().as_millis() as u64;
        match self.store.session(user, now, gap).await {
            Ok(start) if now.saturating_sub(start) >= after => {
                metrics().minor_usage_reminders.inc();
                Some(now.saturating_sub(start) / MINUTE_MS)
            }
            Ok(_) => None,
            Err(e) => {
                metrics()
                    .enforce_store_errors
                    .with_label_values(&["session"])
                    .inc();
                tracing::warn!(error = %e, "Enforcement store did not answer: no usage reminder");
                None
            }
        }
    }

    /// Count this request against `limit` in the period `clock` (ms; local time for a day)
    /// falls in: the refusal when it is over the cap.
    async fn over(&self, limit: &Limit, user: &str, now: u64, clock: u64) -> Option<Verdict> {
        let bucket = clock / limit.period;
        let ttl = 2 * limit.period;
        match self.store.count(limit.name, user, bucket, ttl, now).await {
            Ok(n) if n > u64::from(limit.cap) => {
                let secs = ((bucket + 1) * limit.period - clock).div_ceil(1000);
                Some(Verdict::refuse(
                    ErrorKind::UserLimit,
                    limit.message,
                    Some(secs.max(1)),
                    limit.detail.into(),
                ))
            }
            Ok(_) => None,
            Err(e) => Some(self.store_failed("count", &e)),
        }
    }

    fn store_failed(&self, op: &str, e: &StoreError) -> Verdict {
        metrics()
            .enforce_store_errors
            .with_label_values(&[op])
            .inc();
        tracing::warn!(op, error = %e, "Enforcement store did not answer");
        match self.cfg.on_store_error {
            StoreFailure::Open => Verdict::Serve {
                notice: None,
                seq: None,
                reminder: None,
            },
            StoreFailure::Closed => Verdict::refuse(
                ErrorKind::Unavailable,
                "shenhe cannot check this account's standing now; try again shortly",
                None,
                format!("refused: store error ({op})"),
            ),
        }
    }

    /// Count a strike against `user` for request `request_id`, number `seq` among the user's
    /// requests (`Verdict::Serve`; `None` when unknown: taken as the latest); the sanction
    /// record's detail when the strike began a suspension. A store error is counted and logged
    /// here.
    pub async fn strike(
        &self,
        user: &str,
        request_id: &str,
        seq: Option<u64>,
        now: u64,
    ) -> Result<Option<String>, StoreError> {
        let s = &self.cfg.strikes;
        let rules = store::StrikeRules {
            window: self.window_ms(),
            suspend_at: s.suspend_at,
            suspend_consecutive: s.suspend_consecutive,
            suspend_for: self.cfg.suspend_for.get().as_millis() as u64,
        };
        match self.store.strike(user, request_id, seq, now, &rules).await {
            Ok((after, began)) => {
                let outcome = if began { "suspended" } else { "counted" };
                metrics()
                    .enforce_strikes
                    .with_label_values(&[outcome])
                    .inc();
                Ok(began.then(|| {
                    let secs = self.cfg.suspend_for.get().as_secs();
                    format!(
                        "suspended for {secs}s: {} strikes, {} in a row",
                        after.strikes, after.streak
                    )
                }))
            }
            Err(e) => {
                metrics()
                    .enforce_strikes
                    .with_label_values(&["store_error"])
                    .inc();
                metrics()
                    .enforce_store_errors
                    .with_label_values(&["strike"])
                    .inc();
                tracing::warn!(request_id, error = %e, "Strike not counted: the enforcement store did not answer");
                Err(e)
            }
        }
    }

    /// A user's standing now (`/admin/users/{user}`).
    pub async fn standing(&self, user: &str) -> Result<Standing, StoreError> {
        self.store
            .standing(user, Self::now_ms(), self.window_ms())
            .await
    }

    /// Lift a user's strikes and suspension (`/admin/users/{user}/lift`).
    pub async fn lift(&self, user: &str) -> Result<(), StoreError> {
        self.store.lift(user).await
    }
}

/// The header that marks a minor's request (`enforce.minors.header`), if one is set.
pub fn minor_header(cfg: &config::MinorsConfig) -> Result<Option<http::HeaderName>, String> {
    cfg.header
        .as_deref()
        .map(|h| http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()))
        .transpose()
        .map_err(|e| format!("enforce.minors.header: {e}"))
}

/// Whether `headers` mark a minor's request: `header` says `1`, `true` or `yes`.
pub fn is_minor(header: Option<&http::HeaderName>, headers: &HeaderMap) -> bool {
    header.is_some_and(|h| {
        headers.get(h).is_some_and(|v| {
            let v = v.as_bytes();
            v == b"1" || v.eq_ignore_ascii_case(b"true") || v.eq_ignore_ascii_case(b"yes")
        })
    })
}

/// One line for `shenhe check`: what is acted on, from how many strikes, where it is kept (the
/// Redis URL is not shown: it may hold a password).
pub fn summary(cfg: &EnforceConfig) -> String {
    if !cfg.enabled {
        return "off (no actions on users)".into();
    }
    let s = &cfg.strikes;
    let level = |n: u32| {
        if n == 0 {
            "off".to_string()
        } else {
            format!("{n} strike{}", if n == 1 { "" } else { "s" })
        }
    };
    let store = match cfg.store {
        StoreKind::Memory => "memory (this replica)",
        StoreKind::Redis => "redis (shared)",
    };
    let minors = match (&cfg.minors.header, &cfg.minors.hours) {
        (None, _) => "no minors' limits".to_string(),
        (Some(h), hours) => format!(
            "minors by `{h}`: hours {}, {} requests a day, reminded after {}",
            hours.as_deref().unwrap_or("any"),
            match cfg.minors.daily_requests {
                0 => "any".to_string(),
                n => n.to_string(),
            },
            if cfg.minors.session_reminder.get().is_zero() {
                "never".to_string()
            } else {
                cfg.minors.session_reminder.to_string()
            }
        ),
    };
    let in_a_row = match s.suspend_consecutive {
        0 => String::new(),
        n => format!(" or {n} in a row"),
    };
    format!(
        "warn at {}, restrict at {}, suspend at {}{in_a_row} for {} (strikes within {}); {store}; {minors}",
        level(s.warn_at),
        level(s.restrict_at),
        level(s.suspend_at),
        cfg.suspend_for,
        s.window
    )
}

/// `Retry-After` for a refusal.
pub fn retry_after(secs: u64) -> HeaderValue {
    HeaderValue::from(secs)
}

#[cfg(test)]
mod tests;

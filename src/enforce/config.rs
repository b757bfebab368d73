//! The `enforce:` section of the YAML config: strikes, sanctions, limits for minors, the store.

use serde::{Deserialize, Serialize};

use crate::config::units::HumanDuration;
use crate::config::ConfigIssue;

/// Most users the memory store tracks at once (a few hundred bytes each); past it, users with
/// nothing in force are dropped first.
pub const DEFAULT_MEMORY_USERS: usize = 100_000;

/// The `enforce:` section as written in the YAML file.
///
/// ```yaml
/// enforce:
///   enabled: true
///   store: redis
///   redis_url: "${SHENHE_REDIS_URL}"
///   strikes: { window: "24h", warn_at: 1, restrict_at: 3, suspend_at: 5, suspend_consecutive: 3 }
///   minors: { header: "x-user-minor", daily_requests: 100, hours: "06:00-22:00" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnforceConfig {
    /// Act on users at all. Default false: sanctions need a user id a provider trusts
    /// (`audit.user_id_header`, else the caller's API key), which only the deployment knows.
    pub enabled: bool,
    /// Where strikes, sanctions and counters live: `memory` (one replica) or `redis` (shared by
    /// every replica). Default `memory`.
    pub store: StoreKind,
    /// The Redis server with `store: redis` (`redis://[:password@]host:port/db`; a password
    /// belongs in `${ENV}`). Default `redis://127.0.0.1:6379/`.
    pub redis_url: String,
    /// Prefix of every Redis key shenhe writes. Default `shenhe:`.
    pub key_prefix: String,
    /// Longest wait for the store on a request. Default `250ms`.
    pub store_timeout: HumanDuration,
    /// With `store: redis`, how often a replica reads the list of users with strikes or a
    /// suspension in force (few, next to all users): a user on none of them is served without a
    /// call to Redis, so a first strike made on another replica takes effect here within this
    /// time. Default `500ms`.
    pub sync_interval: HumanDuration,
    /// When the store cannot answer: `open` serves the request unsanctioned (moderation still
    /// applies; counted in `shenhe_enforce_store_errors_total`), `closed` refuses it with 503.
    /// Default `open`: an outage of the store must not take the service down with it.
    pub on_store_error: StoreFailure,
    /// Users the memory store tracks at most. Default 100,000.
    pub memory_users: usize,
    pub strikes: StrikesConfig,
    /// Requests a minute a restricted user may send. Default 2.
    pub restricted_requests_per_minute: u32,
    /// How long a suspension lasts from the strike that caused it. Default `24h`.
    pub suspend_for: HumanDuration,
    pub minors: MinorsConfig,
}

impl Default for EnforceConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            store: StoreKind::Memory,
            redis_url: "redis://127.0.0.1:6379/".into(),
            key_prefix: "shenhe:".into(),
            store_timeout: HumanDuration::from_millis(250),
            sync_interval: HumanDuration::from_millis(500),
            on_store_error: StoreFailure::Open,
            memory_users: DEFAULT_MEMORY_USERS,
            strikes: StrikesConfig::default(),
            restricted_requests_per_minute: 2,
            suspend_for: HumanDuration::from_secs(24 * 3600),
            minors: MinorsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    Memory,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreFailure {
    Open,
    Closed,
}

/// `enforce.strikes`: a strike is a request with a `block` decision (prompt or answer); the
/// strikes within `window` decide a user's standing. A level set to 0 is off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StrikesConfig {
    /// Strikes count this long. Default `24h`.
    pub window: HumanDuration,
    /// From this many strikes: served, with a warning (`x-shenhe-user-notice: warning`). Default 1.
    pub warn_at: u32,
    /// From this many: at most `restricted_requests_per_minute`. Default 3.
    pub restrict_at: u32,
    /// At this many: refused for `suspend_for`. Default 5.
    pub suspend_at: u32,
    /// At this many strikes in a row (requests of the user each with a strike, none without one
    /// between): refused for `suspend_for` too, however few the window holds. Default 3
    /// (TC260-003 practice: three in a row, or five within a day).
    pub suspend_consecutive: u32,
}

impl Default for StrikesConfig {
    fn default() -> Self {
        Self {
            window: HumanDuration::from_secs(24 * 3600),
            warn_at: 1,
            restrict_at: 3,
            suspend_at: 5,
            suspend_consecutive: 3,
        }
    }
}

/// `enforce.minors` (Interim Measures Art. 10): limits for users the provider marks as minors
/// with a header its own gateway sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MinorsConfig {
    /// The header that marks a minor (`1`, `true` or `yes`). Default none: no limits for minors.
    pub header: Option<String>,
    /// Requests a day (local date) a minor may send; 0: no cap. Default 0.
    pub daily_requests: u32,
    /// Local hours when minors are served, `HH:MM-HH:MM` (may wrap past midnight). Default none:
    /// any hour.
    pub hours: Option<String>,
    /// The local time of `hours` and of the daily cap's date, as an offset from UTC. Default
    /// `+08:00` (China Standard Time).
    pub utc_offset: String,
    /// After this long of continuous use a minor's answers carry a reminder
    /// (`x-shenhe-usage-reminder: <minutes>`) for the app to show (against over-reliance, Art.
    /// 10; the draft rules on anthropomorphic services name 2 hours). `0s`: off. Default `2h`.
    pub session_reminder: HumanDuration,
    /// A pause longer than this ends a session of use. Default `30m`.
    pub session_gap: HumanDuration,
}

impl Default for MinorsConfig {
    fn default() -> Self {
        Self {
            header: None,
            daily_requests: 0,
            hours: None,
            utc_offset: "+08:00".into(),
            session_reminder: HumanDuration::from_secs(2 * 3600),
            session_gap: HumanDuration::from_secs(30 * 60),
        }
    }
}

/// `hours` as minutes from local midnight: `[from, to)`, wrapping when `to <= from`.
pub fn parse_hours(s: &str) -> Result<(u32, u32), String> {
    let minute = |t: &str| -> Option<u32> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h <= 24 && m < 60 && h * 60 + m <= 24 * 60).then_some(h * 60 + m)
    };
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("`{s}` is not `HH:MM-HH:MM`"))?;
    match (minute(a), minute(b)) {
        (Some(a), Some(b)) if a != b => Ok((a, b)),
        (Some(_), Some(_)) => Err(format!("`{s}` is an empty range")),
        _ => Err(format!("`{s}` is not `HH:MM-HH:MM`")),
    }
}

/// `utc_offset` in seconds east of UTC (`+08:00`, `-05:30`, `Z`).
pub fn parse_offset(s: &str) -> Result<i32, String> {
    if s == "Z" || s == "+00:00" || s == "-00:00" {
        return Ok(0);
    }
    let bad = || format!("`{s}` is not an offset like `+08:00`");
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    let (h, m): (i32, i32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return Err(bad());
    }
    Ok(sign * (h * 3600 + m * 60))
}

impl EnforceConfig {
    /// Every problem, each with its YAML path.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let issue = |p: &str, m: String| ConfigIssue::new(format!("enforce.{p}"), m);
        let mut out = Vec::new();
        if self.store == StoreKind::Redis {
            if let Err(e) = redis::Client::open(self.redis_url.as_str()) {
                // The message names the part that is wrong, never the URL (it may hold a password).
                out.push(issue(
                    "redis_url",
                    format!("not a Redis URL ({})", e.category()),
                ));
            }
        }
        if self.key_prefix.len() > 64 {
            out.push(issue("key_prefix", "at most 64 bytes".into()));
        }
        let t = self.store_timeout.get();
        if t.is_zero() || t > std::time::Duration::from_secs(10) {
            out.push(issue("store_timeout", "must be between 1ms and 10s".into()));
        }
        let t = self.sync_interval.get();
        if t < std::time::Duration::from_millis(10) || t > std::time::Duration::from_secs(60) {
            out.push(issue(
                "sync_interval",
                "must be between 10ms and 60s".into(),
            ));
        }
        if self.memory_users == 0 {
            out.push(issue("memory_users", "must be greater than zero".into()));
        }
        if self.strikes.window.get().is_zero() {
            out.push(issue("strikes.window", "must be greater than zero".into()));
        }
        let s = &self.strikes;
        let levels = [s.warn_at, s.restrict_at, s.suspend_at];
        let set: Vec<u32> = levels.iter().copied().filter(|&n| n > 0).collect();
        if set.windows(2).any(|w| w[0] >= w[1]) {
            out.push(issue(
                "strikes",
                "the levels that are set must rise: warn_at < restrict_at < suspend_at".into(),
            ));
        }
        if s.restrict_at > 0 && self.restricted_requests_per_minute == 0 {
            out.push(issue(
                "restricted_requests_per_minute",
                "must be greater than zero (set strikes.restrict_at: 0 to turn restriction off)"
                    .into(),
            ));
        }
        if (s.suspend_at > 0 || s.suspend_consecutive > 0) && self.suspend_for.get().is_zero() {
            out.push(issue("suspend_for", "must be greater than zero".into()));
        }
        if let Some(h) = &self.minors.header {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                out.push(issue("minors.header", "not a valid header name".into()));
            }
        }
        if let Some(h) = &self.minors.hours {
            if let Err(e) = parse_hours(h) {
                out.push(issue("minors.hours", e));
            }
        }
        let gap = self.minors.session_gap.get();
        if gap < std::time::Duration::from_secs(1) || gap > std::time::Duration::from_secs(86_400) {
            out.push(issue(
                "minors.session_gap",
                "must be between 1s and 24h".into(),
            ));
        }
        if let Err(e) = parse_offset(&self.minors.utc_offset) {
            out.push(issue("minors.utc_offset", e));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_and_offsets_parse_or_say_why_not() {
        assert_eq!(parse_hours("06:00-22:00"), Ok((360, 1320)));
        assert_eq!(parse_hours("22:00-06:30"), Ok((1320, 390)));
        assert!(parse_hours("06:00-06:00").is_err());
        assert!(parse_hours("6-22").is_err());
        assert!(parse_hours("25:00-06:00").is_err());
        assert_eq!(parse_offset("+08:00"), Ok(8 * 3600));
        assert_eq!(parse_offset("-05:30"), Ok(-(5 * 3600 + 1800)));
        assert_eq!(parse_offset("Z"), Ok(0));
        assert!(parse_offset("8").is_err());
        assert!(parse_offset("+15:00").is_err());
    }

    #[test]
    fn bad_settings_are_named_by_path() {
        let cfg = EnforceConfig {
            store: StoreKind::Redis,
            redis_url: "http://x".into(),
            strikes: StrikesConfig {
                warn_at: 3,
                restrict_at: 2,
                ..StrikesConfig::default()
            },
            minors: MinorsConfig {
                hours: Some("late".into()),
                ..MinorsConfig::default()
            },
            ..EnforceConfig::default()
        };
        let paths: Vec<String> = cfg.validate().into_iter().map(|i| i.path).collect();
        assert_eq!(
            paths,
            [
                "enforce.redis_url",
                "enforce.strikes",
                "enforce.minors.hours"
            ]
        );
        assert!(EnforceConfig::default().validate().is_empty());
    }
}

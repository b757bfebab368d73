//! The `audit:` section of the YAML config, and its validation into the runtime form.

use std::path::PathBuf;
use std::time::Duration;

pub use crate::config::ConfigIssue;

/// An issue under the `audit:` section.
fn issue(path: impl AsRef<str>, message: impl Into<String>) -> ConfigIssue {
    ConfigIssue::new(format!("audit.{}", path.as_ref()), message)
}
use serde::{Deserialize, Serialize};

use super::excerpt::max_excerpt_chars;
use super::pseudonym::{is_pseudonym, Pseudonymizer};
use crate::config::units::{ByteSize, HumanDuration};

/// Default directory of the JSON-lines files: the FHS place for a daemon's state.
pub const DEFAULT_DIR: &str = "/var/lib/shenhe/audit";
/// Cybersecurity Law Art. 21(3): network logs are kept no less than six months; 180 days is the
/// floor unless `allow_short_retention` says otherwise (test rigs, not production).
pub const MIN_RETENTION_DAYS: u32 = 180;
/// Default retention: the legal floor. Raise it, never lower it in production.
pub const DEFAULT_RETENTION_DAYS: u32 = MIN_RETENTION_DAYS;
/// A century: anything longer is a typo, and day arithmetic stays far from overflow.
pub const MAX_RETENTION_DAYS: u32 = 36_500;
/// 64 MiB files: big enough that a busy proxy rotates a few times a day, small enough to grep.
pub const DEFAULT_ROTATE_SIZE: ByteSize = ByteSize::mib(64);
/// Smallest accepted `rotate_size`: below this every batch would open a new file.
pub const MIN_ROTATE_SIZE: ByteSize = ByteSize::kib(1);
/// With `fsync: interval`, at most one second of acknowledged records can be lost on power failure.
pub const DEFAULT_FSYNC_INTERVAL: HumanDuration = HumanDuration::from_secs(1);
/// Ten thousand queued records is a few MiB of memory and seconds of a slow disk at full load.
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;
/// Upper bound on `queue_capacity`: the queue is memory, not storage.
pub const MAX_QUEUE_CAPACITY: usize = 1_000_000;
/// A request waits at most 50 ms on a full queue: a stall is visible in latency but never a hang.
pub const DEFAULT_ENQUEUE_TIMEOUT: HumanDuration = HumanDuration::from_millis(50);
/// Longest accepted `enqueue_timeout`; longer waits belong to `fail_closed`, not to a queue.
pub const MAX_ENQUEUE_TIMEOUT: Duration = Duration::from_secs(10);
/// Forty characters either side of a match: enough to judge the context, too little to rebuild a
/// conversation (Art. 11, keep what is needed).
pub const DEFAULT_EXCERPT_CHARS: usize = 40;
/// Upper bound on `excerpt_chars`: an excerpt is context, not a copy of the text.
pub const MAX_EXCERPT_CHARS: usize = 500;
/// Environment variable that holds the pseudonym HMAC key by default.
pub const DEFAULT_SECRET_ENV: &str = "SHENHE_PSEUDONYM_SECRET";
/// Shortest accepted pseudonym key: a short key can be brute-forced against known user ids.
pub const MIN_SECRET_BYTES: usize = 16;

/// The `audit:` section as written in the YAML file.
///
/// ```yaml
/// audit:
///   dir: "/var/lib/shenhe/audit"
///   retention_days: 180
///   user_id_header: "x-user-id"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Directory of the `audit-YYYY-MM-DD.N.jsonl` files, created when missing.
    /// Default `/var/lib/shenhe/audit`; `null` keeps no files (then `stdout` must be true and the
    /// log collector is responsible for retention).
    pub dir: Option<PathBuf>,
    /// Also write each record as one JSON line to stdout, for log collectors. Default false.
    pub stdout: bool,
    /// Days of records kept, counted by the date in the file name (UTC). Default 180, the legal floor;
    /// lower values are refused unless `allow_short_retention` is true.
    pub retention_days: u32,
    /// Accept `retention_days` below 180 (test and development rigs only). Default false.
    pub allow_short_retention: bool,
    /// Start a new file when the current one would grow past this size (`"64MiB"`). A new UTC day
    /// always starts a new file. Default 64 MiB, at least 1 KiB.
    pub rotate_size: ByteSize,
    /// `always`: sync each batch to disk before acknowledging it; `interval`: sync at most every
    /// `fsync_interval`. Default `interval`.
    pub fsync: FsyncSetting,
    /// With `fsync: interval`, the longest time written records stay unsynced. Default `1s`.
    pub fsync_interval: HumanDuration,
    /// Records the queue holds while the writer is busy. Default 10 000.
    pub queue_capacity: usize,
    /// How long a request waits on a full queue before its record is dropped (and counted in
    /// `shenhe_audit_dropped_total`). Default `50ms`; `0` never waits.
    pub enqueue_timeout: HumanDuration,
    /// When true, the proxy refuses traffic while records cannot be written
    /// (`Auditor::healthy()` is false) or a record was dropped. Default false (fail open, counted).
    pub fail_closed: bool,
    /// Request header holding the raw user id; the API key is the fallback. Default `x-user-id`.
    /// The raw value is never stored: records hold its pseudonymous id.
    pub user_id_header: String,
    /// Request header holding the tenant. Default `x-tenant-id`.
    pub tenant_header: String,
    /// Environment variable holding the pseudonym HMAC key (at least 16 bytes).
    /// Default `SHENHE_PSEUDONYM_SECRET`. Used when `pseudonym_secret_file` is not set.
    pub pseudonym_secret_env: Option<String>,
    /// File holding the pseudonym HMAC key (trailing whitespace ignored); wins over the env var.
    /// When neither yields a key, a random per-process key is generated with a loud warning: ids
    /// are then not stable across restarts or replicas, so per-user queries and erasure only find
    /// records from the current process. Default none.
    pub pseudonym_secret_file: Option<PathBuf>,
    /// Characters kept either side of a match in an excerpt. Default 40, at most 500.
    pub excerpt_chars: usize,
    /// Pseudonymous ids (`u-` + 32 hex) whose records `erase` refuses to delete and the retention
    /// sweep keeps past `retention_days`. Default empty.
    pub legal_hold_users: Vec<String>,
}

/// When the writer syncs files to disk, as written in YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FsyncSetting {
    /// Sync every batch before acknowledging it.
    Always,
    /// Sync at most every `fsync_interval`.
    #[default]
    Interval,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            dir: Some(PathBuf::from(DEFAULT_DIR)),
            stdout: false,
            retention_days: DEFAULT_RETENTION_DAYS,
            allow_short_retention: false,
            rotate_size: DEFAULT_ROTATE_SIZE,
            fsync: FsyncSetting::Interval,
            fsync_interval: DEFAULT_FSYNC_INTERVAL,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            enqueue_timeout: DEFAULT_ENQUEUE_TIMEOUT,
            fail_closed: false,
            user_id_header: "x-user-id".to_string(),
            tenant_header: "x-tenant-id".to_string(),
            pseudonym_secret_env: Some(DEFAULT_SECRET_ENV.to_string()),
            pseudonym_secret_file: None,
            excerpt_chars: DEFAULT_EXCERPT_CHARS,
            legal_hold_users: Vec::new(),
        }
    }
}

/// When the writer syncs files, after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// `sync_data` after every batch, before acknowledging it.
    Always,
    /// `sync_data` at most this often while there are unsynced writes.
    Interval(Duration),
}

/// Where the pseudonym key came from (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
    /// Random, generated at start: ids are stable only within this process.
    Ephemeral,
}

/// The `audit:` section after validation: what the writer and the proxy use.
#[derive(Debug, Clone)]
pub struct ValidAuditConfig {
    pub dir: Option<PathBuf>,
    pub stdout: bool,
    pub retention_days: u32,
    pub rotate_size: u64,
    pub fsync: FsyncMode,
    pub queue_capacity: usize,
    pub enqueue_timeout: Duration,
    pub fail_closed: bool,
    /// Lowercase header name.
    pub user_id_header: String,
    /// Lowercase header name.
    pub tenant_header: String,
    pub pseudonymizer: Pseudonymizer,
    pub secret_source: SecretSource,
    pub excerpt_chars: usize,
    pub legal_hold_users: Vec<String>,
}

impl ValidAuditConfig {
    /// True when the pseudonym key is random for this process (ids change on restart).
    pub fn pseudonym_is_ephemeral(&self) -> bool {
        self.secret_source == SecretSource::Ephemeral
    }

    /// The longest excerpt a record may carry with this config, in characters.
    pub fn max_excerpt_chars(&self) -> usize {
        max_excerpt_chars(self.excerpt_chars)
    }
}

impl AuditConfig {
    /// Validates against the process environment (for `pseudonym_secret_env`).
    pub fn validate(&self) -> Result<ValidAuditConfig, Vec<ConfigIssue>> {
        self.validate_with(|name| std::env::var(name).ok())
    }

    /// Validates, reading environment variables through `env`. Returns every problem at once.
    pub fn validate_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ValidAuditConfig, Vec<ConfigIssue>> {
        let mut issues = Vec::new();

        if self.dir.is_none() && !self.stdout {
            issues.push(issue(
                "dir",
                "no audit sink: set a directory or `stdout: true`",
            ));
        }
        if let Some(dir) = &self.dir {
            if dir.as_os_str().is_empty() {
                issues.push(issue("dir", "must not be empty"));
            }
        }
        if self.retention_days == 0 {
            issues.push(issue("retention_days", "must be at least 1"));
        } else if self.retention_days < MIN_RETENTION_DAYS && !self.allow_short_retention {
            issues.push(issue(
                "retention_days",
                format!(
                    "{} days is below the legal minimum of {MIN_RETENTION_DAYS} (cybersecurity law: \
                     logs kept at least six months); set `allow_short_retention: true` for test rigs",
                    self.retention_days
                ),
            ));
        } else if self.retention_days > MAX_RETENTION_DAYS {
            issues.push(issue(
                "retention_days",
                format!("must be at most {MAX_RETENTION_DAYS}"),
            ));
        }
        if self.rotate_size < MIN_ROTATE_SIZE {
            issues.push(issue(
                "rotate_size",
                format!("must be at least {MIN_ROTATE_SIZE}"),
            ));
        }
        if self.fsync == FsyncSetting::Interval && self.fsync_interval.get().is_zero() {
            issues.push(issue(
                "fsync_interval",
                "must be more than 0 (use `fsync: always` to sync every batch)",
            ));
        }
        if self.queue_capacity == 0 || self.queue_capacity > MAX_QUEUE_CAPACITY {
            issues.push(issue(
                "queue_capacity",
                format!("must be between 1 and {MAX_QUEUE_CAPACITY}"),
            ));
        }
        if self.enqueue_timeout.get() > MAX_ENQUEUE_TIMEOUT {
            issues.push(issue(
                "enqueue_timeout",
                format!("must be at most {}", HumanDuration(MAX_ENQUEUE_TIMEOUT)),
            ));
        }
        let user_id_header = header_name(&self.user_id_header, "user_id_header", &mut issues);
        let tenant_header = header_name(&self.tenant_header, "tenant_header", &mut issues);
        if self.excerpt_chars > MAX_EXCERPT_CHARS {
            issues.push(issue(
                "excerpt_chars",
                format!("must be at most {MAX_EXCERPT_CHARS}"),
            ));
        }
        for (i, user) in self.legal_hold_users.iter().enumerate() {
            if !is_pseudonym(user) {
                issues.push(issue(
                    format!("legal_hold_users[{i}]"),
                    "not a pseudonymous id (u- and 32 hex digits as shown in records); \
                     never list raw user ids",
                ));
            }
        }
        let secret = self.load_secret(&env, &mut issues);

        if !issues.is_empty() {
            return Err(issues);
        }
        let (pseudonymizer, secret_source) = match secret {
            Some((key, source)) => (Pseudonymizer::new(&key), source),
            None => {
                tracing::warn!(
                    env = self.pseudonym_secret_env.as_deref().unwrap_or(""),
                    "No pseudonym secret configured: using a random per-process key; pseudonymous \
                     user ids will change on restart and differ between replicas, so per-user \
                     queries, erasure and legal holds only cover this process's records"
                );
                (Pseudonymizer::random(), SecretSource::Ephemeral)
            }
        };
        Ok(ValidAuditConfig {
            dir: self.dir.clone(),
            stdout: self.stdout,
            retention_days: self.retention_days,
            rotate_size: self.rotate_size.get(),
            fsync: match self.fsync {
                FsyncSetting::Always => FsyncMode::Always,
                FsyncSetting::Interval => FsyncMode::Interval(self.fsync_interval.get()),
            },
            queue_capacity: self.queue_capacity,
            enqueue_timeout: self.enqueue_timeout.get(),
            fail_closed: self.fail_closed,
            user_id_header,
            tenant_header,
            pseudonymizer,
            secret_source,
            excerpt_chars: self.excerpt_chars,
            legal_hold_users: self.legal_hold_users.clone(),
        })
    }

    /// The pseudonym key and its source: the file if set, else the env var if set and non-empty,
    /// else none (the caller generates an ephemeral key). Problems go to `issues`.
    fn load_secret(
        &self,
        env: &impl Fn(&str) -> Option<String>,
        issues: &mut Vec<ConfigIssue>,
    ) -> Option<(Vec<u8>, SecretSource)> {
        if let Some(path) = &self.pseudonym_secret_file {
            return match std::fs::read(path) {
                Ok(mut key) => {
                    while key.last().is_some_and(|b| b.is_ascii_whitespace()) {
                        key.pop();
                    }
                    if key.len() < MIN_SECRET_BYTES {
                        issues.push(issue(
                            "pseudonym_secret_file",
                            format!(
                                "key in {} is shorter than {MIN_SECRET_BYTES} bytes",
                                path.display()
                            ),
                        ));
                        None
                    } else {
                        Some((key, SecretSource::File(path.clone())))
                    }
                }
                Err(e) => {
                    issues.push(issue(
                        "pseudonym_secret_file",
                        format!("cannot read {}: {e}", path.display()),
                    ));
                    None
                }
            };
        }
        let name = self.pseudonym_secret_env.as_deref()?;
        if name.is_empty() {
            issues.push(issue(
                "pseudonym_secret_env",
                "must not be empty (use null for no variable)",
            ));
            return None;
        }
        let value = env(name).filter(|v| !v.is_empty())?;
        if value.len() < MIN_SECRET_BYTES {
            issues.push(issue(
                "pseudonym_secret_env",
                format!("key in ${name} is shorter than {MIN_SECRET_BYTES} bytes"),
            ));
            return None;
        }
        Some((value.into_bytes(), SecretSource::Env(name.to_string())))
    }
}

/// Checks an HTTP header name (RFC 9110 token) and returns it lowercased.
fn header_name(name: &str, key: &str, issues: &mut Vec<ConfigIssue>) -> String {
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(is_tchar) {
        issues.push(issue(key, "not a valid http header name"));
    }
    name.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn env_with_key(name: &str) -> Option<String> {
        (name == DEFAULT_SECRET_ENV).then(|| KEY.to_string())
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn paths(issues: &[ConfigIssue]) -> Vec<&str> {
        issues.iter().map(|i| i.path.as_str()).collect()
    }

    #[test]
    fn defaults_are_valid_and_match_the_documented_values() {
        let valid = AuditConfig::default().validate_with(env_with_key).unwrap();
        assert_eq!(
            valid.dir.as_deref(),
            Some(std::path::Path::new(DEFAULT_DIR))
        );
        assert_eq!(valid.retention_days, 180);
        assert_eq!(valid.rotate_size, 64 << 20);
        assert_eq!(valid.fsync, FsyncMode::Interval(Duration::from_secs(1)));
        assert_eq!(valid.queue_capacity, 10_000);
        assert_eq!(valid.enqueue_timeout, Duration::from_millis(50));
        assert_eq!(valid.user_id_header, "x-user-id");
        assert_eq!(valid.excerpt_chars, 40);
        assert_eq!(
            valid.secret_source,
            SecretSource::Env(DEFAULT_SECRET_ENV.into())
        );
        assert!(!valid.pseudonym_is_ephemeral());
    }

    #[test]
    fn the_documented_yaml_loads() {
        let yaml = r#"
dir: "/var/lib/shenhe/audit"
stdout: false
retention_days: 180
allow_short_retention: false
rotate_size: "64MiB"
fsync: interval
fsync_interval: "1s"
queue_capacity: 10000
enqueue_timeout: "50ms"
fail_closed: false
user_id_header: "x-user-id"
tenant_header: "x-tenant-id"
pseudonym_secret_env: "SHENHE_PSEUDONYM_SECRET"
pseudonym_secret_file: null
excerpt_chars: 40
legal_hold_users: []
"#;
        let cfg: AuditConfig = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(cfg, AuditConfig::default());
        // Serialize then load again gives the same config.
        let again: AuditConfig =
            serde_yaml_ng::from_str(&serde_yaml_ng::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(again, cfg);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_yaml_ng::from_str::<AuditConfig>("retention: 30\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn short_retention_is_refused_unless_allowed() {
        let mut cfg = AuditConfig {
            retention_days: 30,
            ..AuditConfig::default()
        };
        let issues = cfg.validate_with(env_with_key).unwrap_err();
        assert_eq!(paths(&issues), ["audit.retention_days"]);
        assert!(issues[0]
            .to_string()
            .starts_with("audit.retention_days: 30 days"));
        cfg.allow_short_retention = true;
        assert_eq!(cfg.validate_with(env_with_key).unwrap().retention_days, 30);
        cfg.retention_days = 0;
        assert_eq!(
            paths(&cfg.validate_with(env_with_key).unwrap_err()),
            ["audit.retention_days"]
        );
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let cfg = AuditConfig {
            dir: None,
            retention_days: 10,
            rotate_size: ByteSize(10),
            fsync_interval: HumanDuration::from_secs(0),
            queue_capacity: 0,
            enqueue_timeout: HumanDuration::from_secs(60),
            user_id_header: "x user".into(),
            tenant_header: String::new(),
            pseudonym_secret_env: Some(String::new()),
            excerpt_chars: 10_000,
            legal_hold_users: vec!["alice".into(), "u-0123456789abcdef0123456789abcdef".into()],
            ..AuditConfig::default()
        };
        let issues = cfg.validate_with(no_env).unwrap_err();
        assert_eq!(
            paths(&issues),
            [
                "audit.dir",
                "audit.retention_days",
                "audit.rotate_size",
                "audit.fsync_interval",
                "audit.queue_capacity",
                "audit.enqueue_timeout",
                "audit.user_id_header",
                "audit.tenant_header",
                "audit.excerpt_chars",
                "audit.legal_hold_users[0]",
                "audit.pseudonym_secret_env",
            ]
        );
        // The raw id in a wrong hold entry is not echoed.
        assert!(issues.iter().all(|i| !i.message.contains("alice")));
    }

    #[test]
    fn headers_are_lowercased() {
        let cfg = AuditConfig {
            user_id_header: "X-End-User".into(),
            ..AuditConfig::default()
        };
        assert_eq!(
            cfg.validate_with(env_with_key).unwrap().user_id_header,
            "x-end-user"
        );
    }

    #[test]
    fn secret_comes_from_file_then_env_then_random() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, format!("{KEY}\n")).unwrap();
        let from_file = AuditConfig {
            pseudonym_secret_file: Some(file.clone()),
            ..AuditConfig::default()
        }
        .validate_with(no_env)
        .unwrap();
        let from_env = AuditConfig::default().validate_with(env_with_key).unwrap();
        // Same key (the file's trailing newline is ignored) gives the same ids.
        assert_eq!(
            from_file.pseudonymizer.id("alice"),
            from_env.pseudonymizer.id("alice")
        );
        assert_eq!(from_file.secret_source, SecretSource::File(file));

        let random = AuditConfig::default().validate_with(no_env).unwrap();
        assert!(random.pseudonym_is_ephemeral());
        assert_ne!(
            random.pseudonymizer.id("alice"),
            from_env.pseudonymizer.id("alice")
        );
    }

    #[test]
    fn weak_or_missing_secret_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("short");
        std::fs::write(&file, "short\n").unwrap();
        let short = AuditConfig {
            pseudonym_secret_file: Some(file),
            ..AuditConfig::default()
        };
        assert_eq!(
            paths(&short.validate_with(no_env).unwrap_err()),
            ["audit.pseudonym_secret_file"]
        );
        let missing = AuditConfig {
            pseudonym_secret_file: Some(dir.path().join("missing")),
            ..AuditConfig::default()
        };
        assert_eq!(
            paths(&missing.validate_with(no_env).unwrap_err()),
            ["audit.pseudonym_secret_file"]
        );
        let short_env = AuditConfig::default().validate_with(|_| Some("short".into()));
        let issues = short_env.unwrap_err();
        assert_eq!(paths(&issues), ["audit.pseudonym_secret_env"]);
        assert!(!issues[0].message.contains("short\""));
    }

    #[test]
    fn stdout_alone_is_a_sink() {
        let cfg = AuditConfig {
            dir: None,
            stdout: true,
            ..AuditConfig::default()
        };
        assert!(cfg.validate_with(env_with_key).unwrap().dir.is_none());
    }
}

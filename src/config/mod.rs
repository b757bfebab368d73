//! The YAML configuration: raw serde structs that mirror the file, then validation into the runtime form.
//!
//! Loading happens in two steps. The file is parsed into a YAML tree, `${ENV}` references inside
//! string values are expanded (never in keys, and never by splicing text into the YAML, so a secret
//! cannot change the file's structure), and the tree is deserialized with unknown keys rejected;
//! the first such error names its YAML path. Then every section is validated and all errors are
//! reported at once, each with its path.

pub mod env;
pub mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use units::{ByteSize, HumanDuration};

use crate::audit::config::AuditConfig;
use crate::dialect::DialectName;
use crate::label::LabelsConfig;
use crate::policy::config::PolicyConfig;

/// Client traffic listener: all interfaces, the port model APIs conventionally use in front of a server.
const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Admin listener: localhost only, so metrics and admin routes are never public unless configured.
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// How long in-flight streams may run after SIGTERM; long enough for most completions.
const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;
/// Request bodies: long-context prompts are a few hundred KiB, inline images a few MiB.
const DEFAULT_BODY_LIMIT: ByteSize = ByteSize::mib(8);
/// Time a client has to send its request headers (slowloris bound).
const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 30;
/// Time a client has to send a whole request body that shenhe must read before deciding.
const DEFAULT_BODY_TIMEOUT_SECS: u64 = 60;

/// The whole config file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub routes: RoutesConfig,
    pub headers: HeaderRules,
    pub dialects: DialectsConfig,
    pub policy: PolicyConfig,
    pub classifier: crate::classify::ClassifierConfig,
    pub moderation: ModerationConfig,
    pub labels: LabelsConfig,
    pub audit: AuditConfig,
    pub enforce: crate::enforce::EnforceConfig,
    pub complaints: crate::complaints::ComplaintsConfig,
    pub review: crate::review::ReviewConfig,
    pub assessment: AssessmentConfig,
    pub log: LogConfig,
}

/// `assessment:` where `/admin/assessment` finds the evidence shenhe does not measure itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssessmentConfig {
    /// The JSON report `shenhe eval --report-out` last wrote (relative to this file): the
    /// acceptance rates of TC260-003 §9, read at each call. Default none.
    pub eval_report: Option<PathBuf>,
}

/// `server:` the listeners and limits on what clients control.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Client traffic. Default `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`, `/admin/*`. Default `127.0.0.1:9090` (localhost only).
    pub admin_listen: SocketAddr,
    /// Environment variable holding the bearer token for mutating admin routes.
    pub admin_token_env: String,
    /// File holding the admin token (wins over the env var when set).
    pub admin_token_file: Option<PathBuf>,
    /// How long in-flight requests may finish after SIGTERM/SIGINT. Default 30s.
    pub shutdown_grace: HumanDuration,
    /// After SIGTERM, keep accepting (while `/readyz` already fails) this long so load balancers
    /// stop sending first. Default 0s: in Kubernetes the pod's `preStop` sleep does this.
    pub drain_delay: HumanDuration,
    /// Largest request body accepted, on every route. Default 8MiB.
    pub body_limit: ByteSize,
    /// Time allowed to receive request headers. Default 30s.
    pub header_timeout: HumanDuration,
    /// Time allowed to receive a request body that must be read before forwarding. Default 60s.
    pub body_timeout: HumanDuration,
    /// When a reload fails, also fail `/readyz` (default false: keep serving the old config).
    pub unready_on_reload_error: bool,
    /// Watch the config and list files and reload on change (including ConfigMap symlink swaps).
    pub watch: bool,
    /// Threads serving clients, each with its own connections (at most 64). Default 0: one per
    /// core. Read at start; a reload does not change it.
    pub workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            admin_listen: DEFAULT_ADMIN_LISTEN.parse().expect("valid default address"),
            admin_token_env: "SHENHE_ADMIN_TOKEN".into(),
            admin_token_file: None,
            shutdown_grace: HumanDuration::from_secs(DEFAULT_SHUTDOWN_GRACE_SECS),
            drain_delay: HumanDuration::from_secs(0),
            body_limit: DEFAULT_BODY_LIMIT,
            header_timeout: HumanDuration::from_secs(DEFAULT_HEADER_TIMEOUT_SECS),
            body_timeout: HumanDuration::from_secs(DEFAULT_BODY_TIMEOUT_SECS),
            unready_on_reload_error: false,
            watch: true,
            workers: 0,
        }
    }
}

/// `upstream:` the model API shenhe forwards to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Scheme, host, port and optional base path, e.g. `http://127.0.0.1:8000`.
    pub base_url: String,
    /// Key sent upstream as `Authorization: Bearer …` (or in `api_key_header`); clients never hold it.
    /// Write it as `${UPSTREAM_API_KEY}` so it comes from the environment.
    pub api_key: Option<String>,
    /// Header that carries the key instead of `Authorization` (e.g. `x-api-key` for Anthropic).
    pub api_key_header: Option<String>,
    pub timeouts: UpstreamTimeouts,
    /// Path fetched with GET for `/readyz` (e.g. `/v1/models`); unset: readiness does not probe.
    pub probe: Option<String>,
    /// Idle keep-alive connections kept per upstream host, per worker thread.
    pub pool_max_idle: usize,
    /// PEM file of extra CA certificates trusted for an `https` upstream (a private CA), on top
    /// of the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8000".into(),
            api_key: None,
            api_key_header: None,
            timeouts: UpstreamTimeouts::default(),
            probe: None,
            pool_max_idle: 256,
            ca_file: None,
        }
    }
}

/// `upstream.timeouts:` every wait on the upstream is bounded.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTimeouts {
    /// TCP (and TLS) connect. Default 5s.
    pub connect: HumanDuration,
    /// From request sent to response headers (a model may think before its first token). Default 60s.
    pub first_byte: HumanDuration,
    /// Longest silence between two body chunks. Default 30s.
    pub idle: HumanDuration,
    /// Whole exchange, body included. Default 10m.
    pub total: HumanDuration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        Self {
            connect: HumanDuration::from_secs(5),
            first_byte: HumanDuration::from_secs(60),
            idle: HumanDuration::from_secs(30),
            total: HumanDuration::from_secs(600),
        }
    }
}

/// What happens to a POST route the table does not list, and to a path under a moderated
/// route (stored output: `/v1/responses/{id}`) that it does not list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultRoute {
    /// 404 in the OpenAI error shape (default): a new generation endpoint must not bypass moderation.
    #[default]
    Reject,
    /// Forward unmoderated. Must be chosen explicitly.
    Passthrough,
}

/// `routes:` path → dialect. Listed paths are merged over the built-in table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutesConfig {
    pub default: DefaultRoute,
    /// Start from the built-in table of well-known model API paths (default true).
    pub builtin: bool,
    pub paths: BTreeMap<String, DialectName>,
}

impl Default for RoutesConfig {
    fn default() -> Self {
        Self {
            default: DefaultRoute::Reject,
            builtin: true,
            paths: BTreeMap::new(),
        }
    }
}

/// `headers:` rules applied to what passes through.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderRules {
    /// Request headers removed before forwarding (case-insensitive).
    pub drop_request: Vec<String>,
    /// Request headers set before forwarding (values may use `${ENV}`).
    pub add_request: BTreeMap<String, String>,
    /// Response headers removed before answering the client.
    pub drop_response: Vec<String>,
    /// Response headers set on every answer.
    pub add_response: BTreeMap<String, String>,
}

/// `dialects:` per-dialect extensions.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DialectsConfig {
    pub openai_chat: DialectExtras,
    pub openai_completions: DialectExtras,
    pub openai_responses: DialectExtras,
    pub anthropic_messages: DialectExtras,
}

/// Extra response fields that carry generated text and must be moderated like the built-in ones.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DialectExtras {
    /// Dotted paths with `*` for array indexes, e.g. `choices.*.delta.search_info`.
    pub extra_text_fields: Vec<String>,
}

/// `moderation:` how verdicts are delivered.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModerationConfig {
    /// Text sent as its own delta before `finish_reason: content_filter` when a stream is
    /// stopped (none by default: the stream just ends with the filter reason).
    pub stop_notice: Option<String>,
    /// Largest non-streamed response body shenhe reads to judge. Default 64MiB.
    pub response_limit: ByteSize,
}

impl Default for ModerationConfig {
    fn default() -> Self {
        Self {
            stop_notice: None,
            response_limit: ByteSize::mib(64),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

/// `log:` format and level of the process log.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `shenhe=debug,info`. `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

/// One config problem, with the YAML path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub path: String,
    pub message: String,
}

impl ConfigIssue {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a config could not be loaded: every problem found, each with its path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", join_issues(.0))]
    Invalid(Vec<ConfigIssue>),
}

impl ConfigError {
    pub fn issues(&self) -> Vec<ConfigIssue> {
        match self {
            ConfigError::Read { .. } => vec![ConfigIssue::new("", self.to_string())],
            ConfigError::Invalid(v) => v.clone(),
        }
    }
}

fn join_issues(v: &[ConfigIssue]) -> String {
    v.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A config file read and checked, with the folder its relative paths resolve against.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub path: PathBuf,
    pub base_dir: PathBuf,
}

impl Config {
    /// Read, expand, deserialize and validate the file at `path`.
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Self::from_yaml_str(&text)?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(LoadedConfig {
            config,
            path: path.to_path_buf(),
            base_dir,
        })
    }

    /// Parse and validate YAML text (environment references expanded from the process env).
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
        Self::from_yaml_str_with_env(text, &|k| std::env::var(k).ok())
    }

    /// Parse and validate YAML text with `lookup` answering `${NAME}` references.
    pub fn from_yaml_str_with_env(
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut tree: serde_yaml_ng::Value = if text.trim().is_empty() {
            serde_yaml_ng::Value::Mapping(Default::default())
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| {
                ConfigError::Invalid(vec![ConfigIssue::new("", format!("not valid YAML: {e}"))])
            })?
        };
        if tree.is_null() {
            tree = serde_yaml_ng::Value::Mapping(Default::default());
        }
        let mut issues = Vec::new();
        env::expand_tree(&mut tree, "", lookup, &mut issues);
        if !issues.is_empty() {
            return Err(ConfigError::Invalid(issues));
        }
        let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            ConfigError::Invalid(vec![ConfigIssue::new(path, e.into_inner().to_string())])
        })?;
        let issues = config.validate();
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(issues))
        }
    }

    /// Every semantic problem, with its path. Empty means valid.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        match url::Url::parse(&self.upstream.base_url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {
                if u.query().is_some() || u.fragment().is_some() {
                    issues.push(ConfigIssue::new(
                        "upstream.base_url",
                        "must not carry a query or fragment",
                    ));
                }
            }
            Ok(u) => issues.push(ConfigIssue::new(
                "upstream.base_url",
                format!("scheme `{}` is not http or https", u.scheme()),
            )),
            Err(e) => issues.push(ConfigIssue::new(
                "upstream.base_url",
                format!("not a URL: {e}"),
            )),
        }
        if let Some(p) = &self.upstream.probe {
            if !p.starts_with('/') {
                issues.push(ConfigIssue::new(
                    "upstream.probe",
                    "must be a path starting with `/`",
                ));
            }
        }
        let t = &self.upstream.timeouts;
        for (name, d) in [
            ("connect", t.connect),
            ("first_byte", t.first_byte),
            ("idle", t.idle),
            ("total", t.total),
        ] {
            if d.get().is_zero() {
                issues.push(ConfigIssue::new(
                    format!("upstream.timeouts.{name}"),
                    "must be greater than zero",
                ));
            }
        }
        if self.server.body_limit.get() == 0 {
            issues.push(ConfigIssue::new(
                "server.body_limit",
                "must be greater than zero",
            ));
        }
        if self.server.listen == self.server.admin_listen && self.server.listen.port() != 0 {
            issues.push(ConfigIssue::new(
                "server.admin_listen",
                "must differ from server.listen: admin routes are never served on the public listener",
            ));
        }
        for path in self.routes.paths.keys() {
            if !path.starts_with('/') || path.contains("//") || path.contains('?') {
                issues.push(ConfigIssue::new(
                    format!("routes.paths.{path}"),
                    "must be an absolute path without `//` or a query",
                ));
            }
        }
        for (i, h) in self.headers.drop_request.iter().enumerate() {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                issues.push(ConfigIssue::new(
                    format!("headers.drop_request[{i}]"),
                    "not a valid header name",
                ));
            }
        }
        for (i, h) in self.headers.drop_response.iter().enumerate() {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                issues.push(ConfigIssue::new(
                    format!("headers.drop_response[{i}]"),
                    "not a valid header name",
                ));
            }
        }
        for (section, map) in [
            ("headers.add_request", &self.headers.add_request),
            ("headers.add_response", &self.headers.add_response),
        ] {
            for (k, v) in map {
                if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                    issues.push(ConfigIssue::new(
                        format!("{section}.{k}"),
                        "not a valid header name",
                    ));
                }
                if http::HeaderValue::from_str(v).is_err() {
                    issues.push(ConfigIssue::new(
                        format!("{section}.{k}"),
                        "not a valid header value",
                    ));
                }
            }
        }
        if let Some(h) = &self.upstream.api_key_header {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                issues.push(ConfigIssue::new(
                    "upstream.api_key_header",
                    "not a valid header name",
                ));
            }
        }
        for (name, d) in [
            ("openai_chat", &self.dialects.openai_chat),
            ("openai_completions", &self.dialects.openai_completions),
            ("openai_responses", &self.dialects.openai_responses),
            ("anthropic_messages", &self.dialects.anthropic_messages),
        ] {
            for (i, f) in d.extra_text_fields.iter().enumerate() {
                if let Err(e) = crate::dialect::paths::parse_pattern(f) {
                    issues.push(ConfigIssue::new(
                        format!("dialects.{name}.extra_text_fields[{i}]"),
                        e,
                    ));
                }
            }
        }
        if let Err(label_issues) = self.labels.validate() {
            issues.extend(label_issues.into_iter().map(|m| match m.split_once(": ") {
                Some((path, msg)) if path.starts_with("labels") => ConfigIssue::new(path, msg),
                _ => ConfigIssue::new("labels", m),
            }));
        }
        if let Err(audit_issues) = self.audit.validate() {
            issues.extend(audit_issues);
        }
        issues.extend(self.enforce.validate());
        issues.extend(self.complaints.validate());
        issues.extend(self.review.validate());
        issues.extend(self.classifier.validate());
        if let Some(k) = &self.upstream.api_key {
            if http::HeaderValue::from_str(k).is_err() {
                issues.push(ConfigIssue::new(
                    "upstream.api_key",
                    "not a valid header value",
                ));
            }
        }
        issues
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_none(_: &str) -> Option<String> {
        None
    }

    /// Implicit labels need a producer code and a key; these tests are about other sections.
    const NO_IMPLICIT: &str = "labels:\n  implicit: { enabled: false }\n";

    #[test]
    fn empty_file_needs_a_producer_code_for_labels() {
        let err = Config::from_yaml_str_with_env("", &env_none).unwrap_err();
        assert!(
            err.issues()
                .iter()
                .any(|i| i.path.starts_with("labels.implicit")),
            "{err}"
        );
    }

    #[test]
    fn defaults_are_filled_in() {
        let c = Config::from_yaml_str_with_env(NO_IMPLICIT, &env_none).unwrap();
        assert_eq!(c.server.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.server.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(c.routes.default, DefaultRoute::Reject);
    }

    #[test]
    fn unknown_key_names_its_path() {
        let err =
            Config::from_yaml_str_with_env("server:\n  listn: 1.2.3.4:1\n", &env_none).unwrap_err();
        let issues = err.issues();
        assert_eq!(issues.len(), 1);
        assert!(issues[0].path.starts_with("server"), "{issues:?}");
        assert!(issues[0].message.contains("listn"), "{issues:?}");
    }

    #[test]
    fn bad_duration_names_its_path() {
        let err =
            Config::from_yaml_str_with_env("upstream:\n  timeouts:\n    idle: 30\n", &env_none)
                .unwrap_err();
        let issues = err.issues();
        assert_eq!(issues[0].path, "upstream.timeouts.idle", "{issues:?}");
    }

    #[test]
    fn every_semantic_error_is_reported() {
        let err = Config::from_yaml_str_with_env(
            "upstream:\n  base_url: ftp://x\n  timeouts: { connect: \"0\" }\nserver:\n  body_limit: 0\n",
            &env_none,
        )
        .unwrap_err();
        let paths: Vec<String> = err.issues().into_iter().map(|i| i.path).collect();
        assert!(
            paths.contains(&"upstream.base_url".to_string()),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"upstream.timeouts.connect".to_string()),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"server.body_limit".to_string()),
            "{paths:?}"
        );
    }

    #[test]
    fn env_references_are_expanded_in_values_only() {
        let env = |k: &str| (k == "KEY").then(|| "s3cret\nserver: {}".to_string());
        // A value with a newline stays a value: it cannot add keys to the file.
        let err =
            Config::from_yaml_str_with_env("upstream:\n  api_key: ${KEY}\n", &env).unwrap_err();
        assert!(
            err.issues().iter().any(|i| i.path == "upstream.api_key"),
            "{err}"
        );
        let env = |k: &str| (k == "KEY").then(|| "s3cret".to_string());
        let c = Config::from_yaml_str_with_env(
            &format!("upstream:\n  api_key: ${{KEY}}\n{NO_IMPLICIT}"),
            &env,
        )
        .unwrap();
        assert_eq!(c.upstream.api_key.as_deref(), Some("s3cret"));
    }

    #[test]
    fn missing_env_var_is_an_error_with_path() {
        let err =
            Config::from_yaml_str_with_env("upstream:\n  api_key: ${NOPE_NOT_SET}\n", &env_none)
                .unwrap_err();
        let i = &err.issues()[0];
        assert_eq!(i.path, "upstream.api_key");
        assert!(i.message.contains("NOPE_NOT_SET"));
    }
}

//! The commands behind the CLI, as library functions so tests can call them.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use crate::config::{Config, ConfigError, ConfigIssue, DefaultRoute, LoadedConfig, LogFormat};
use crate::policy::{Direction, Policy, PolicyError};
use crate::server::routes::RouteTable;

/// `shenhe check`: load, validate and compile, then a one-screen summary; or every error with
/// its path.
pub fn check(path: &Path) -> Result<String, ConfigError> {
    let loaded = Config::load(path)?;
    let compiled = Policy::compile(&loaded.config.policy, &loaded.base_dir).map_err(|e| {
        let PolicyError::Invalid(list) = e;
        ConfigError::Invalid(
            list.into_iter()
                .map(|m| split_issue(&m, "policy"))
                .collect(),
        )
    })?;
    if let Err(e) = crate::classify::Classifier::new(&loaded.config.classifier, &compiled.policy) {
        return Err(ConfigError::Invalid(vec![split_issue(&e, "classifier")]));
    }
    let mut out = summary(&loaded);
    out.push_str(&policy_summary(&compiled.policy, &compiled.warnings));
    Ok(out)
}

/// `path: message` into an issue (messages from sections that carry their own paths).
fn split_issue(m: &str, section: &str) -> ConfigIssue {
    match m.split_once(": ") {
        Some((p, msg)) if p.starts_with(section) || p.contains(':') || p.contains('/') => {
            ConfigIssue::new(p, msg)
        }
        _ => ConfigIssue::new(section, m),
    }
}

/// The policy part of the summary: version, library size per category, TC260 warnings.
pub fn policy_summary(p: &Policy, warnings: &[String]) -> String {
    let st = p.stats();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "policy      {}  ({} terms, {} allow phrases, {} pattern detectors, {} list files)",
        st.version, st.total_terms, st.allow_phrases, st.pattern_detectors, st.list_files
    );
    let used: Vec<_> = p
        .categories()
        .filter(|c| {
            st.terms_per_category
                .get(c.id.as_ref())
                .copied()
                .unwrap_or(0)
                > 0
                || !c.is_builtin()
        })
        .collect();
    for c in used.iter().take(12) {
        let n = st
            .terms_per_category
            .get(c.id.as_ref())
            .copied()
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "  {:<10} {:<7} {:>8} terms  {}{}",
            c.id,
            c.action.as_str(),
            n,
            c.name_en,
            if c.whole_words { " (whole words)" } else { "" }
        );
    }
    if used.len() > 12 {
        let _ = writeln!(out, "  … and {} more categories", used.len() - 12);
    }
    let mut seen = std::collections::BTreeSet::new();
    for w in warnings.iter().chain(st.warnings.iter()) {
        if seen.insert(w) {
            let _ = writeln!(out, "warning     {w}");
        }
    }
    out
}

/// The policy a config compiles to, for the commands that judge text without serving.
fn compile_policy(path: &Path) -> Result<Policy, ConfigError> {
    let loaded = Config::load(path)?;
    let compiled = Policy::compile(&loaded.config.policy, &loaded.base_dir).map_err(|e| {
        let PolicyError::Invalid(list) = e;
        ConfigError::Invalid(
            list.into_iter()
                .map(|m| split_issue(&m, "policy"))
                .collect(),
        )
    })?;
    Ok(compiled.policy)
}

/// `shenhe eval` by the policy alone: the config's policy judges every bank.
pub fn eval_policy(
    path: &Path,
    banks: &[(crate::eval::BankKind, Vec<crate::eval::Item>)],
    goals: crate::eval::Goals,
) -> Result<crate::eval::Report, ConfigError> {
    let policy = std::sync::Arc::new(compile_policy(path)?);
    Ok(crate::eval::run_policy(&policy, banks, goals))
}

/// `shenhe scan`: findings in `text` as JSON lines, for list maintainers.
pub fn scan(path: &Path, text: &str, direction: Direction) -> Result<Vec<String>, ConfigError> {
    let policy = compile_policy(path)?;
    Ok(crate::policy::scan_report(&policy, text, direction)
        .iter()
        .filter_map(|l| serde_json::to_string(l).ok())
        .collect())
}

/// The one-screen summary of a valid config.
pub fn summary(loaded: &LoadedConfig) -> String {
    let c = &loaded.config;
    let mut out = String::new();
    let _ = writeln!(out, "config      {} (valid)", loaded.path.display());
    let _ = writeln!(
        out,
        "listen      {}  (admin {}; {} worker threads)",
        c.server.listen,
        c.server.admin_listen,
        crate::server::worker::count(c.server.workers)
    );
    let _ = writeln!(
        out,
        "upstream    {}  (timeouts: connect {}, first byte {}, idle {}, total {})",
        c.upstream.base_url,
        c.upstream.timeouts.connect,
        c.upstream.timeouts.first_byte,
        c.upstream.timeouts.idle,
        c.upstream.timeouts.total
    );
    let _ = writeln!(
        out,
        "limits      body {}, header read {}, body read {}",
        c.server.body_limit, c.server.header_timeout, c.server.body_timeout
    );
    let table = RouteTable::new(&c.routes);
    let _ = writeln!(out, "routes      (moderates: p = prompt, c = completion)");
    for (path, dialect) in table.entries() {
        let (p, cm) = dialect.moderates();
        let dirs = match (p, cm) {
            (true, true) => "p+c",
            (true, false) => "p",
            (false, true) => "c",
            (false, false) => "-",
        };
        let _ = writeln!(out, "  {path:<32} {:<20} {dirs}", dialect.as_str());
    }
    let _ = writeln!(
        out,
        "  {:<32} {}",
        "other POST routes",
        match c.routes.default {
            DefaultRoute::Reject => "refused (404)",
            DefaultRoute::Passthrough => "passthrough (unmoderated)",
        }
    );
    let _ = writeln!(out, "enforce     {}", crate::enforce::summary(&c.enforce));
    let _ = writeln!(
        out,
        "complaints  {}",
        crate::complaints::summary(&c.complaints)
    );
    let _ = writeln!(out, "review      {}", crate::review::summary(&c.review));
    let _ = writeln!(
        out,
        "classifier  {}",
        crate::classify::summary(&c.classifier)
    );
    out
}

/// Set up process logging from the config (`RUST_LOG` wins over `log.level`).
pub fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Where `shenhe demo` runs the scripted model: the address the config's upstream names.
pub fn demo_upstream_addr(c: &Config) -> Result<SocketAddr, String> {
    let url = url::Url::parse(&c.upstream.base_url).map_err(|e| e.to_string())?;
    let host = url.host_str().unwrap_or("127.0.0.1");
    let port = url.port_or_known_default().unwrap_or(80);
    format!("{host}:{port}").parse().map_err(|_| {
        format!("the demo model needs an IP address in upstream.base_url, not `{host}`")
    })
}

/// What `shenhe audit` does.
pub enum AuditAction {
    Find {
        config: std::path::PathBuf,
        content_id: Option<String>,
        user: Option<String>,
        request_id: Option<String>,
        since: Option<String>,
        limit: usize,
    },
    Erase {
        config: std::path::PathBuf,
        user: String,
    },
}

/// Parse `--since`: RFC 3339 or a plain date (midnight UTC).
pub fn parse_since(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| format!("`{s}` is neither an RFC 3339 time nor a YYYY-MM-DD date"))
}

/// `shenhe audit find|erase` over the configured record files.
pub fn audit(action: AuditAction) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context as _;
    let config = match &action {
        AuditAction::Find { config, .. } | AuditAction::Erase { config, .. } => config.clone(),
    };
    let loaded = Config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let valid = loaded.config.audit.validate().map_err(|e| {
        anyhow::anyhow!(
            "{}",
            e.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    let dir = valid
        .dir
        .as_ref()
        .map(|d| {
            if d.is_relative() {
                loaded.base_dir.join(d)
            } else {
                d.clone()
            }
        })
        .context("audit.dir is not set: records go to stdout only")?;
    let pseudonym = |u: &str| {
        if crate::audit::pseudonym::is_pseudonym(u) {
            u.to_string()
        } else {
            valid.pseudonymizer.id(u)
        }
    };
    match action {
        AuditAction::Find {
            content_id,
            user,
            request_id,
            since,
            limit,
            ..
        } => {
            let q = crate::audit::Query {
                content_id,
                user: user.as_deref().map(pseudonym),
                request_id,
                since: since
                    .as_deref()
                    .map(parse_since)
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                limit: Some(limit),
            };
            for r in crate::audit::find(&dir, &q)? {
                println!("{}", serde_json::to_string(&r)?);
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        AuditAction::Erase { user, .. } => {
            let id = pseudonym(&user);
            let report = crate::audit::erase(&dir, &id, &valid.legal_hold_users)?;
            eprintln!("erased: {report:?}");
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

//! The commands behind the CLI, as library functions so tests can call them.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use crate::config::{Config, ConfigError, DefaultRoute, LoadedConfig, LogFormat};
use crate::server::routes::RouteTable;

/// `shenhe check`: load and validate, then a one-screen summary; or every error with its path.
pub fn check(path: &Path) -> Result<String, ConfigError> {
    let loaded = Config::load(path)?;
    Ok(summary(&loaded))
}

/// The one-screen summary of a valid config.
pub fn summary(loaded: &LoadedConfig) -> String {
    let c = &loaded.config;
    let mut out = String::new();
    let _ = writeln!(out, "config      {} (valid)", loaded.path.display());
    let _ = writeln!(
        out,
        "listen      {}  (admin {})",
        c.server.listen, c.server.admin_listen
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
    let url = reqwest::Url::parse(&c.upstream.base_url).map_err(|e| e.to_string())?;
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

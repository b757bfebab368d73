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

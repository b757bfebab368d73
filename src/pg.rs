//! One PostgreSQL connection for the stores that keep state beyond a replica (complaints, the
//! review queue): made at first use and again after it drops, with the store's tables created
//! on each new connection when missing. These stores see a few calls a second at most, next to
//! model requests, so there is no pool to tune; the driver pipelines concurrent statements on
//! the one connection. With `sslmode=require` in the connection string the connection is TLS,
//! the server's certificate verified against the system's roots and the store's
//! `database_ca_file` (stricter than libpq's `require`, which does not verify); otherwise plain
//! TCP (`prefer` does not try TLS here).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

/// Where a store built on this module keeps its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// Durable, shared by every replica.
    Postgres,
    /// This process only, lost on restart: for trials.
    Memory,
}

impl StoreKind {
    /// How `shenhe check` names it.
    pub fn describe(self, table: &str) -> String {
        match self {
            StoreKind::Postgres => format!("postgres table {table}"),
            StoreKind::Memory => "memory (this replica; lost on restart)".into(),
        }
    }
}

/// The store settings every such section shares, checked with their YAML paths under `section`.
pub fn validate_store(
    section: &str,
    enabled: bool,
    store: StoreKind,
    url: &str,
    table: &str,
    timeout: Duration,
) -> Vec<crate::config::ConfigIssue> {
    let issue = |p: &str, m: &str| crate::config::ConfigIssue::new(format!("{section}.{p}"), m);
    let mut out = Vec::new();
    if enabled && store == StoreKind::Postgres {
        if url.trim().is_empty() {
            out.push(issue(
                "database_url",
                "required with store: postgres (e.g. \"${SHENHE_DATABASE_URL}\")",
            ));
        } else if let Some(why) = check_url(url) {
            out.push(issue("database_url", why));
        }
    }
    if !is_table_name(table) {
        out.push(issue(
            "table",
            "a lowercase SQL name ([a-z_][a-z0-9_]*, optionally schema.table)",
        ));
    }
    if timeout.is_zero() || timeout > Duration::from_secs(30) {
        out.push(issue("store_timeout", "must be between 1ms and 30s"));
    }
    out
}

/// What closing a row once did (a complaint resolved, a review item decided): one statement
/// closes it only while it is open, so of two callers at once one wins and the other is told.
pub enum Closed<T> {
    /// Closed now; the row as it is.
    Done(Box<T>),
    /// It was closed before.
    Already,
    /// No such row.
    Missing,
}

/// Why a PostgreSQL call failed; the message names the step and the server's reason, never the
/// connection string.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PgError(pub String);

impl From<tokio_postgres::Error> for PgError {
    /// The driver's message and the causes under it (a TLS handshake failure says why).
    fn from(e: tokio_postgres::Error) -> Self {
        let mut msg = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            msg.push_str(": ");
            msg.push_str(&c.to_string());
            cause = c.source();
        }
        Self(msg)
    }
}

pub struct Connection {
    config: tokio_postgres::Config,
    /// With `sslmode=require`.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// Run on each new connection: `CREATE TABLE IF NOT EXISTS …`.
    init_sql: String,
    /// What the connection serves, for its log line.
    name: &'static str,
    client: Mutex<Option<Arc<tokio_postgres::Client>>>,
}

impl Connection {
    /// `url` must already be valid (`check_url`); `connect_timeout` bounds each connection made;
    /// `ca_file` adds trusted roots for `sslmode=require`.
    pub fn new(
        name: &'static str,
        url: &str,
        init_sql: String,
        connect_timeout: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, String> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|_| format!("{name}: not a PostgreSQL connection string"))?;
        config.connect_timeout(connect_timeout);
        let tls = if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            let ca_key = format!("{name}.database_ca_file");
            let rustls =
                crate::tls::client_config(ca_file, &ca_key, "PostgreSQL with sslmode=require")?;
            Some(tokio_postgres_rustls::MakeRustlsConnect::new(rustls))
        } else {
            None
        };
        Ok(Self {
            config,
            tls,
            init_sql,
            name,
            client: Mutex::new(None),
        })
    }

    /// The open connection, or a new one.
    pub async fn client(&self) -> Result<Arc<tokio_postgres::Client>, PgError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let name = self.name;
        let closed = move |e: tokio_postgres::Error| {
            tracing::warn!(store = name, error = %e, "PostgreSQL connection closed");
        };
        let client = match &self.tls {
            Some(tls) => {
                let (client, conn) = self.config.connect(tls.clone()).await?;
                tokio::spawn(async move { conn.await.map_err(closed) });
                client
            }
            None => {
                let (client, conn) = self.config.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(async move { conn.await.map_err(closed) });
                client
            }
        };
        client.batch_execute(&self.init_sql).await?;
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }
}

/// A row id for these stores: `prefix` (`c-`, `r-`) and 32 hex digits of randomness, so that
/// holding one is what gives access to it.
pub fn random_id(prefix: &str) -> String {
    let bytes: [u8; 16] = rand::random();
    let mut id = String::with_capacity(prefix.len() + 32);
    id.push_str(prefix);
    crate::audit::pseudonym::push_hex(&mut id, &bytes);
    id
}

/// Whether `s` is `prefix` and 32 lowercase hex digits (a [`random_id`]).
pub fn is_random_id(prefix: &str, s: &str) -> bool {
    s.len() == prefix.len() + 32
        && s.starts_with(prefix)
        && s.as_bytes()[prefix.len()..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// Now, to the millisecond: what both stores give back as written (PostgreSQL keeps
/// microseconds, memory would keep nanoseconds).
pub fn now_millis() -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    chrono::DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

/// Check a connection string for config validation: a message for a bad one, never echoing it
/// (it may hold a password).
pub fn check_url(url: &str) -> Option<&'static str> {
    match url.parse::<tokio_postgres::Config>() {
        Err(_) => Some("not a PostgreSQL connection string (postgres://user@host:port/db)"),
        Ok(_) => None,
    }
}

/// A table name put into SQL as is, so only `[a-z_][a-z0-9_]*`, optionally `schema.table`.
pub fn is_table_name(s: &str) -> bool {
    let ident = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    match s.split_once('.') {
        Some((schema, table)) => ident(schema) && ident(table),
        None => ident(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_sql_names() {
        assert!(is_table_name("shenhe_complaints"));
        assert!(is_table_name("audit.complaints_2"));
        for bad in ["", "1x", "a-b", "a.b.c", "x\"; drop", "Upper", "a."] {
            assert!(!is_table_name(bad), "{bad}");
        }
    }

    #[test]
    fn urls_are_checked_without_being_echoed() {
        assert_eq!(check_url("postgres://postgres@127.0.0.1:5432/test"), None);
        let bad = check_url("postgres://u:secret@host:notaport/db").unwrap();
        assert!(!bad.contains("secret"));
        assert_eq!(check_url("postgres://u@host/db?sslmode=require"), None);
    }
}

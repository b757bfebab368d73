//! Reloading the config: build a new runtime off the hot path and swap it in atomically.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{AppState, Runtime};
use crate::config::Config;
use crate::metrics::metrics;

/// Why a reload did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to reload from")]
    NoPath,
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Runtime(String),
}

/// Reload from the config file; on any error the running config stays in force. The new
/// runtime (a large keyword library takes seconds) is built on a blocking thread, so the worker
/// that asked goes on serving its connections meanwhile.
pub async fn reload(state: &Arc<AppState>, trigger: &'static str) -> Result<(), ReloadError> {
    let st = Arc::clone(state);
    tokio::task::spawn_blocking(move || reload_now(&st, trigger))
        .await
        .unwrap_or_else(|e| Err(ReloadError::Runtime(format!("reload did not finish: {e}"))))
}

/// [`reload`] on this thread.
fn reload_now(state: &AppState, trigger: &str) -> Result<(), ReloadError> {
    let result = try_reload(state);
    match &result {
        Ok(()) => {
            metrics().config_reloads.with_label_values(&["ok"]).inc();
            state.reload_ok.store(true, Ordering::Relaxed);
            tracing::info!(trigger, "Config reloaded");
        }
        Err(e) => {
            metrics().config_reloads.with_label_values(&["error"]).inc();
            state.reload_ok.store(false, Ordering::Relaxed);
            tracing::error!(trigger, error = %e, "Config reload failed; keeping the running config");
        }
    }
    result
}

fn try_reload(state: &AppState) -> Result<(), ReloadError> {
    let path = state.config_path.as_ref().ok_or(ReloadError::NoPath)?;
    let loaded = Config::load(path)?;
    let old = state.runtime();
    if loaded.config.server.listen != old.config.server.listen
        || loaded.config.server.admin_listen != old.config.server.admin_listen
    {
        tracing::warn!("Listener addresses changed in the config; they take effect on restart");
    }
    let rt = Runtime::build(loaded.config, &loaded.base_dir).map_err(ReloadError::Runtime)?;
    state.swap(rt);
    Ok(())
}

//! Reload on change: the config file and every keyword/allow list it names are polled, so edits,
//! `mv` replacements and the symlink swap Kubernetes uses for mounted ConfigMaps all count.
//!
//! Polling (every `WATCH_INTERVAL`) rather than inotify: a ConfigMap update replaces a `..data`
//! symlink two levels up from the files, which inotify on the file itself never sees, and a poll
//! of a few `stat` calls per second costs nothing next to serving traffic.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{AppState, Shutdown};

/// How often the watched files are checked.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// What identifies a file's content without reading it: where the path resolves, size, mtime.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    resolved: Option<PathBuf>,
    len: u64,
    modified: Option<SystemTime>,
}

fn stamp(p: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(p).ok()?;
    Some(Stamp {
        resolved: std::fs::canonicalize(p).ok(),
        len: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// The files a config depends on: itself and its keyword and allow lists.
pub fn watched_files(state: &AppState) -> Vec<PathBuf> {
    let Some(path) = state.config_path.clone() else {
        return Vec::new();
    };
    let rt = state.runtime();
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let p = &rt.config.policy;
    let mut files = vec![path];
    let lists = p
        .keyword_files
        .iter()
        .chain(p.allow_files.iter())
        .chain(p.categories.iter().flat_map(|c| c.keyword_files.iter()));
    for f in lists {
        let f = PathBuf::from(f);
        files.push(if f.is_relative() { base.join(f) } else { f });
    }
    files
}

/// Poll until shutdown; reload when any watched file changes.
pub async fn run(state: Arc<AppState>, shutdown: Shutdown) {
    let mut files = watched_files(&state);
    let mut stamps: Vec<Option<Stamp>> = files.iter().map(|f| stamp(f)).collect();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            _ = shutdown.reached(1) => return,
        }
        let now: Vec<Option<Stamp>> = files.iter().map(|f| stamp(f)).collect();
        if now == stamps {
            continue;
        }
        // Wait for a burst of writes (a ConfigMap swap, an editor's save) to settle.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = super::reload::reload(&state, "watch").await;
        files = watched_files(&state);
        stamps = files.iter().map(|f| stamp(f)).collect();
    }
}

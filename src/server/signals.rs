//! Process signals: SIGTERM/SIGINT drain (a second one forces exit), SIGHUP reloads.

use super::Running;

/// Handle SIGHUP until SIGTERM or SIGINT arrives; then start the drain and return, leaving a
/// task that exits the process at once on a second signal.
pub async fn run(running: &Running) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("Cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    let _ = crate::server::reload::reload(&running.state, "sighup").await;
                }
            }
        }
        running.shutdown.trigger();
        tracing::info!("Shutdown requested; draining in-flight requests");
        let shutdown = running.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            shutdown.trigger();
            tracing::warn!("Second shutdown signal; exiting now");
            std::process::exit(130);
        });
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        running.shutdown.trigger();
    }
}

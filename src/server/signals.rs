//! Process signals: SIGTERM/SIGINT drain (a second one forces exit), SIGHUP reloads.

use super::Running;

/// Wait for signals until the server has stopped.
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
        let mut count = 0u8;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {
                    let _ = crate::server::reload::reload(&running.state, "sighup");
                    continue;
                }
            }
            count += 1;
            running.shutdown.trigger();
            if count == 1 {
                tracing::info!("Shutdown requested; draining in-flight requests");
            } else {
                tracing::warn!("Second shutdown signal; exiting now");
                std::process::exit(130);
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        running.shutdown.trigger();
    }
}

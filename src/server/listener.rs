//! Accept loops: HTTP/1.1 and h2c on one port, bounded header reads, graceful drain on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

/// The peer address of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// A shutdown trigger shared by the listeners, the signal handler and tests.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<u8>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::channel(0).0),
        }
    }

    /// First call: stop accepting and drain. Second call: drop every connection now.
    pub fn trigger(&self) {
        self.tx.send_modify(|n| *n = n.saturating_add(1));
    }

    /// Resolves once shutdown has been asked for `level` times (1 = drain, 2 = force).
    pub async fn reached(&self, level: u8) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|n| *n >= level).await;
    }

    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow() >= 1
    }
}

/// Serve one connection, watched by the graceful-shutdown tracker.
fn spawn_conn(
    builder: &Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    router: &Router,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let router = router.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(PeerAddr(peer));
        let router = router.clone();
        async move {
            let resp = router
                .oneshot(req.map(axum::body::Body::new))
                .await
                .unwrap_or_else(|e: Infallible| match e {});
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    let conn = graceful.watch(conn.into_owned());
    tokio::spawn(async move {
        let _ = conn.await;
    });
}

/// Serve `router` on `listener` until shutdown, then drain connections for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    header_timeout: Duration,
    grace: Duration,
    drain_delay: Duration,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.reached(1) => {
                if drain_delay.is_zero() {
                    break;
                }
                // Readiness already fails; keep taking connections until balancers have noticed.
                let until = tokio::time::Instant::now() + drain_delay;
                loop {
                    tokio::select! {
                        r = listener.accept() => if let Ok((stream, peer)) = r {
                            spawn_conn(&builder, &graceful, &router, stream, peer);
                        },
                        _ = tokio::time::sleep_until(until) => break,
                        _ = shutdown.reached(2) => break,
                    }
                }
                break;
            }
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "Accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        spawn_conn(&builder, &graceful, &router, stream, peer);
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "Shutdown grace ran out; closing remaining connections");
        }
        _ = shutdown.reached(2) => {
            tracing::warn!("Second shutdown signal; closing remaining connections");
        }
    }
}

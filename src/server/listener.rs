//! Accept loops: HTTP/1.1 and h2c on one port, bounded header reads, graceful drain on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

/// The peer of the connection a request came on.
#[derive(Debug, Clone)]
pub struct PeerAddr {
    /// The client's IP address as it goes into `X-Forwarded-For`, formatted once per connection.
    pub ip: http::HeaderValue,
}

impl PeerAddr {
    pub fn new(addr: SocketAddr) -> Self {
        let ip = http::HeaderValue::try_from(addr.ip().to_string())
            .expect("an IP address is a valid header value");
        Self { ip }
    }
}

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

/// How connections are served: HTTP/1.1, or HTTP/2 for clients that open with its preface (h2c).
struct Builders {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    header_timeout: Duration,
}

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client opened with the HTTP/2 preface, looking without consuming; `None` when
/// it left or said nothing within `limit`.
///
/// Done here rather than by hyper-util's auto builder, which reads the first bytes itself and
/// hands them back through a rewind buffer: hyper's first read then returns only those few bytes
/// and its read buffer doubles to 16 KiB for the connection's whole life (measured: 8 KiB more
/// per open stream).
async fn opens_with_h2_preface(stream: &tokio::net::TcpStream, limit: Duration) -> Option<bool> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        tokio::time::timeout_at(deadline, stream.readable())
            .await
            .ok()?
            .ok()?;
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        // A prefix of the preface so far: wait a moment for the rest (peek leaves the socket
        // readable, so waiting on readiness alone would spin).
        tokio::time::sleep(Duration::from_millis(1)).await;
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
    }
}

/// What answers a listener's requests.
#[derive(Clone)]
pub enum Service {
    /// Every request goes to the proxy handler, with no router in between: the public listener
    /// has one handler for all paths, and axum's path routing cost about 4% of a passthrough
    /// request's instructions.
    Proxy(Arc<super::AppState>),
    /// Routes by path (the admin listener).
    Router(Router),
}

impl Service {
    /// Answer `req`, which came from `peer` (handed to the proxy directly rather than through
    /// the request's extensions, whose map is one more allocation a request).
    async fn call(self, req: hyper::Request<Incoming>, peer: PeerAddr) -> axum::response::Response {
        let req = req.map(axum::body::Body::new);
        match self {
            Service::Proxy(state) => super::proxy::handle(state, req, peer).await,
            Service::Router(router) => router
                .oneshot(req)
                .await
                .unwrap_or_else(|e: Infallible| match e {}),
        }
    }
}

/// Serve one connection, watched by the graceful-shutdown tracker.
fn spawn_conn(
    builders: &Arc<Builders>,
    graceful: &GracefulShutdown,
    service: &Service,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let service = service.clone();
    let peer = PeerAddr::new(peer);
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let (service, peer) = (service.clone(), peer.clone());
        async move { Ok::<_, Infallible>(service.call(req, peer).await) }
    });
    let watcher = graceful.watcher();
    let builders = builders.clone();
    tokio::spawn(async move {
        let Some(h2) = opens_with_h2_preface(&stream, builders.header_timeout).await else {
            return;
        };
        let io = TokioIo::new(stream);
        if h2 {
            // Boxed: the HTTP/2 connection state is large, and every HTTP/1.1 task would
            // otherwise carry room for it.
            let _ = Box::pin(watcher.watch(builders.http2.serve_connection(io, svc))).await;
        } else {
            let _ = watcher
                .watch(builders.http1.serve_connection(io, svc))
                .await;
        }
    });
}

/// Serve `service` on `listener` until shutdown, then drain connections for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    service: Service,
    shutdown: Shutdown,
    header_timeout: Duration,
    grace: Duration,
    drain_delay: Duration,
) {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(Builders {
        http1,
        http2,
        header_timeout,
    });
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
                            spawn_conn(&builder, &graceful, &service, stream, peer);
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
        spawn_conn(&builder, &graceful, &service, stream, peer);
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

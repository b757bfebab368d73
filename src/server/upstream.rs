//! The upstream model API: pooled keep-alive clients, bounded waits, and failures sorted by kind.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use http::{HeaderMap, Method};
use reqwest::Url;

use crate::config::UpstreamConfig;
use crate::dialect::error::{ApiError, ErrorKind};
use crate::metrics::metrics;

/// Keep idle upstream connections this long; model servers usually keep theirs 5–75 s.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Upstream {
    base: Url,
    /// For passthrough routes: bytes are forwarded exactly as they come, compressed or not.
    raw: reqwest::Client,
    /// For moderated routes: compressed answers (gzip, br, deflate, zstd) are decoded before scanning.
    decoding: reqwest::Client,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub total_timeout: Duration,
    pub probe: Option<String>,
}

/// A body to send upstream: fully read (moderated routes) or streamed from the client.
pub enum UpstreamBody {
    Empty,
    Full(Bytes),
    Stream(reqwest::Body),
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Result<Self, String> {
        let base = Url::parse(&cfg.base_url).map_err(|e| format!("upstream.base_url: {e}"))?;
        let t = &cfg.timeouts;
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(t.connect.get())
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .pool_max_idle_per_host(cfg.pool_max_idle)
                .tcp_nodelay(true)
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .user_agent(concat!("shenhe/", env!("CARGO_PKG_VERSION")))
        };
        let raw = builder()
            .no_gzip()
            .no_brotli()
            .no_deflate()
            .no_zstd()
            .build()
            .map_err(|e| format!("cannot build upstream client: {e}"))?;
        let decoding = builder()
            .build()
            .map_err(|e| format!("cannot build upstream client: {e}"))?;
        Ok(Self {
            base,
            raw,
            decoding,
            connect_timeout: t.connect.get(),
            first_byte_timeout: t.first_byte.get(),
            idle_timeout: t.idle.get(),
            total_timeout: t.total.get(),
            probe: cfg.probe.clone(),
        })
    }

    /// The upstream URL for a client path and query, under the base URL's own path.
    pub fn url(&self, path: &str, query: Option<&str>) -> Result<Url, ApiError> {
        let mut url = self.base.clone();
        let base_path = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base_path}{path}"));
        url.set_query(query);
        Ok(url)
    }

    /// Send a request and wait for the response headers, within the first-byte bound.
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: UpstreamBody,
        decode: bool,
    ) -> Result<reqwest::Response, ApiError> {
        let client = if decode { &self.decoding } else { &self.raw };
        let req = client.request(method, url).headers(headers);
        let req = match body {
            UpstreamBody::Empty => req,
            UpstreamBody::Full(b) => req.body(b),
            UpstreamBody::Stream(s) => req.body(s),
        };
        match tokio::time::timeout(self.first_byte_timeout, req.send()).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => {
                metrics()
                    .upstream_errors
                    .with_label_values(&["timeout"])
                    .inc();
                Err(ApiError::new(
                    ErrorKind::UpstreamTimeout,
                    "the model server did not answer in time",
                ))
            }
        }
    }

    /// Whether the upstream answers its probe path (any non-5xx status counts as reachable).
    pub async fn probe_ok(&self) -> bool {
        let Some(path) = &self.probe else {
            return true;
        };
        let Ok(url) = self.url(path, None) else {
            return false;
        };
        let req = self
            .raw
            .get(url)
            .timeout(self.connect_timeout + Duration::from_secs(2));
        matches!(req.send().await, Ok(r) if !r.status().is_server_error())
    }
}

/// Sort a reqwest failure into a client-facing error and count it.
pub fn classify(e: &reqwest::Error) -> ApiError {
    let (kind, label, msg) = if e.is_timeout() {
        (
            ErrorKind::UpstreamTimeout,
            "timeout",
            "the model server did not answer in time",
        )
    } else if e.is_connect() {
        (
            ErrorKind::UpstreamUnreachable,
            "connect",
            "the model server cannot be reached",
        )
    } else if e.is_decode() {
        (
            ErrorKind::UpstreamProtocol,
            "decode",
            "the model server sent a body that cannot be decoded",
        )
    } else if e.is_body() || e.is_request() {
        (
            ErrorKind::UpstreamUnreachable,
            "protocol",
            "the connection to the model server failed",
        )
    } else {
        (
            ErrorKind::UpstreamProtocol,
            "protocol",
            "the model server answered with an invalid response",
        )
    };
    metrics().upstream_errors.with_label_values(&[label]).inc();
    ApiError::new(kind, msg)
}

/// Why an upstream body stream ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFault {
    /// No chunk within the idle bound.
    Idle,
    /// The whole exchange ran past its total bound.
    Total,
    /// The connection broke or the body could not be decoded.
    Broken,
}

impl crate::stream::Fault for StreamFault {
    fn message(&self) -> &'static str {
        StreamFault::message(*self)
    }
}

impl StreamFault {
    pub fn label(self) -> &'static str {
        match self {
            StreamFault::Idle | StreamFault::Total => "timeout",
            StreamFault::Broken => "protocol",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            StreamFault::Idle => "the model server stopped sending in the middle of the response",
            StreamFault::Total => "the response took longer than the configured total time",
            StreamFault::Broken => {
                "the connection to the model server was lost in the middle of the response"
            }
        }
    }
}

/// Largest run of already-arrived chunks merged into one (one write to the client instead of many).
const COALESCE_MAX: usize = 32 * 1024;

/// The upstream body as a stream of chunks, each wait bounded by the idle and total timeouts.
/// Chunks that have already arrived when one is taken are merged into it (up to `COALESCE_MAX`),
/// so a fast upstream costs one client write per read rather than one per SSE event; a chunk is
/// never held back waiting for another. A fault ends the stream with one `Err` item; it is
/// counted in `shenhe_upstream_errors_total`.
pub fn bounded_body(
    resp: reqwest::Response,
    idle: Duration,
    deadline: Instant,
) -> impl Stream<Item = Result<Bytes, StreamFault>> + Send + 'static {
    struct State<S> {
        inner: S,
        /// An item taken while merging that must come after the merged chunk.
        pending: Option<Option<Result<Bytes, reqwest::Error>>>,
        done: bool,
    }
    let state = State {
        inner: resp.bytes_stream(),
        pending: None,
        done: false,
    };
    futures_util::stream::unfold(state, move |mut st| async move {
        if st.done {
            return None;
        }
        let item = match st.pending.take() {
            Some(item) => Ok(item),
            None => {
                let left = deadline.saturating_duration_since(Instant::now());
                let (wait, fault) = if left < idle {
                    (left, StreamFault::Total)
                } else {
                    (idle, StreamFault::Idle)
                };
                tokio::time::timeout(wait, st.inner.next())
                    .await
                    .map_err(|_| fault)
            }
        };
        let fault = match item {
            Ok(Some(Ok(first))) => {
                let mut merged: Option<bytes::BytesMut> = None;
                let mut len = first.len();
                while len < COALESCE_MAX {
                    match st.inner.next().now_or_never() {
                        Some(Some(Ok(more))) => {
                            len += more.len();
                            merged
                                .get_or_insert_with(|| {
                                    let mut m =
                                        bytes::BytesMut::with_capacity(COALESCE_MAX.max(len));
                                    m.extend_from_slice(&first);
                                    m
                                })
                                .extend_from_slice(&more);
                        }
                        Some(other) => {
                            st.pending = Some(other);
                            break;
                        }
                        None => break,
                    }
                }
                let out = merged.map_or(first, bytes::BytesMut::freeze);
                return Some((Ok(out), st));
            }
            Ok(None) => return None,
            Ok(Some(Err(_))) => StreamFault::Broken,
            Err(fault) => fault,
        };
        metrics()
            .upstream_errors
            .with_label_values(&[fault.label()])
            .inc();
        st.done = true;
        Some((Err(fault), st))
    })
}

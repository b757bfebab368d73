//! The upstream model API: pooled keep-alive clients, bounded waits, and failures sorted by kind.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt, TryStreamExt};
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, BodyStream, Empty, Full};
use url::Url;

use super::client::{Client, RequestBody, ResponseBody, SendError, Target};
use crate::config::UpstreamConfig;
use crate::dialect::error::{ApiError, ErrorKind};
use crate::metrics::metrics;

/// Keep idle upstream connections this long; model servers usually keep theirs 5–75 s.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Upstream {
    /// The base URL's path, without a trailing slash: client paths are appended to it.
    base_path: String,
    client: Client,
    user_agent: HeaderValue,
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
    Stream(RequestBody),
}

/// The upstream's answer: status, headers and a body that is read as it arrives.
pub struct UpstreamResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: ResponseBody,
    /// The body is compressed and must be decoded (moderated routes only).
    decode: Option<Encoding>,
}

#[derive(Debug, Clone, Copy)]
enum Encoding {
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

impl UpstreamResponse {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body as decoded chunks, as they arrive.
    fn chunks(self) -> futures_util::stream::BoxStream<'static, Result<Bytes, BodyFault>> {
        let raw = BodyStream::new(self.body)
            .try_filter_map(|f| std::future::ready(Ok(f.into_data().ok())))
            .map_err(|_| BodyFault);
        let Some(enc) = self.decode else {
            return raw.boxed();
        };
        use async_compression::tokio::bufread as dec;
        let reader = tokio_util::io::StreamReader::new(raw.map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upstream body broken")
        }));
        fn stream<R: tokio::io::AsyncRead + Send + 'static>(
            r: R,
        ) -> futures_util::stream::BoxStream<'static, Result<Bytes, BodyFault>> {
            tokio_util::io::ReaderStream::new(r)
                .map_err(|_| BodyFault)
                .boxed()
        }
        match enc {
            Encoding::Gzip => stream(dec::GzipDecoder::new(reader)),
            Encoding::Deflate => stream(dec::ZlibDecoder::new(reader)),
            Encoding::Brotli => stream(dec::BrotliDecoder::new(reader)),
            Encoding::Zstd => stream(dec::ZstdDecoder::new(reader)),
        }
    }
}

/// The upstream body broke off or could not be decoded.
#[derive(Debug)]
struct BodyFault;

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Result<Self, String> {
        let base = Url::parse(&cfg.base_url).map_err(|e| format!("upstream.base_url: {e}"))?;
        let tls = match base.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(format!(
                    "upstream.base_url: scheme `{other}` is not http or https"
                ))
            }
        };
        let host = match base.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => return Err("upstream.base_url: no host".into()),
        };
        let port = base
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        let t = &cfg.timeouts;
        let client = Client::new(
            Target {
                host,
                port,
                tls,
                ca_file: cfg.ca_file.clone(),
            },
            t.connect.get(),
            POOL_IDLE_TIMEOUT,
            cfg.pool_max_idle,
        )?;
        Ok(Self {
            base_path: base.path().trim_end_matches('/').to_string(),
            client,
            user_agent: HeaderValue::from_static(concat!("shenhe/", env!("CARGO_PKG_VERSION"))),
            connect_timeout: t.connect.get(),
            first_byte_timeout: t.first_byte.get(),
            idle_timeout: t.idle.get(),
            total_timeout: t.total.get(),
            probe: cfg.probe.clone(),
        })
    }

    /// The upstream request target (origin form) for a client path and query, under the base
    /// URL's own path.
    pub fn url(&self, path: &str, query: Option<&str>) -> Result<http::Uri, ApiError> {
        let mut s = String::with_capacity(self.base_path.len() + path.len() + 64);
        s.push_str(&self.base_path);
        s.push_str(path);
        if let Some(q) = query {
            s.push('?');
            s.push_str(q);
        }
        http::Uri::try_from(s).map_err(|_| {
            ApiError::new(
                ErrorKind::BadRequest,
                "the request path cannot be forwarded",
            )
        })
    }

    /// Send a request and wait for the response headers, within the first-byte bound. With
    /// `decode`, a compressed answer (gzip, br, deflate, zstd) is decoded before anyone reads it,
    /// and one in another encoding is refused.
    pub async fn send(
        &self,
        method: Method,
        uri: http::Uri,
        mut headers: HeaderMap,
        body: UpstreamBody,
        decode: bool,
    ) -> Result<UpstreamResponse, ApiError> {
        headers.insert(header::HOST, self.client.authority().clone());
        if !headers.contains_key(header::USER_AGENT) {
            headers.insert(header::USER_AGENT, self.user_agent.clone());
        }
        let body = match body {
            UpstreamBody::Empty => Empty::new().map_err(|e| match e {}).boxed_unsync(),
            UpstreamBody::Full(b) => Full::new(b).map_err(|e| match e {}).boxed_unsync(),
            UpstreamBody::Stream(s) => s,
        };
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        let resp = match tokio::time::timeout(self.first_byte_timeout, self.client.send(req)).await
        {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(classify(&e)),
            Err(_) => return Err(fault("timeout", ErrorKind::UpstreamTimeout, TIMEOUT_MSG)),
        };
        let (parts, body) = resp.into_parts();
        let mut headers = parts.headers;
        let mut enc = None;
        if decode {
            if let Some(v) = headers.get(header::CONTENT_ENCODING) {
                let v = v.to_str().unwrap_or_default().trim().to_ascii_lowercase();
                enc =
                    match v.as_str() {
                        "" | "identity" => None,
                        "gzip" | "x-gzip" => Some(Encoding::Gzip),
                        "deflate" => Some(Encoding::Deflate),
                        "br" => Some(Encoding::Brotli),
                        "zstd" => Some(Encoding::Zstd),
                        _ => return Err(fault(
                            "decode",
                            ErrorKind::UpstreamProtocol,
                            "the model server answered in a content encoding shenhe cannot read",
                        )),
                    };
                headers.remove(header::CONTENT_ENCODING);
                if enc.is_some() {
                    headers.remove(header::CONTENT_LENGTH);
                }
            }
        }
        Ok(UpstreamResponse {
            status: parts.status,
            headers,
            body,
            decode: enc,
        })
    }

    /// Whether the upstream answers its probe path (any non-5xx status counts as reachable).
    pub async fn probe_ok(&self) -> bool {
        let Some(path) = &self.probe else {
            return true;
        };
        let Ok(uri) = self.url(path, None) else {
            return false;
        };
        let send = self.send(
            Method::GET,
            uri,
            HeaderMap::new(),
            UpstreamBody::Empty,
            false,
        );
        let bound = self.connect_timeout + Duration::from_secs(2);
        matches!(tokio::time::timeout(bound, send).await, Ok(Ok(r)) if !r.status().is_server_error())
    }
}

const TIMEOUT_MSG: &str = "the model server did not answer in time";

/// Count an upstream failure and make its client-facing error.
fn fault(label: &str, kind: ErrorKind, msg: &'static str) -> ApiError {
    metrics().upstream_errors.with_label_values(&[label]).inc();
    ApiError::new(kind, msg)
}

/// Sort a failed exchange into a client-facing error and count it.
fn classify(e: &SendError) -> ApiError {
    match e {
        SendError::ConnectTimeout => fault("timeout", ErrorKind::UpstreamTimeout, TIMEOUT_MSG),
        SendError::Connect(_) => fault(
            "connect",
            ErrorKind::UpstreamUnreachable,
            "the model server cannot be reached",
        ),
        SendError::Tls(e) => {
            tracing::warn!(error = %e, "TLS handshake with the upstream failed");
            fault(
                "tls",
                ErrorKind::UpstreamUnreachable,
                "the TLS handshake with the model server failed (is its certificate trusted? see upstream.ca_file)",
            )
        }
        SendError::Http(e) if e.is_invalid_response() => {
            tracing::warn!(error = %e, "The upstream answered with an invalid response");
            fault(
                "protocol",
                ErrorKind::UpstreamProtocol,
                "the model server answered with an invalid response",
            )
        }
        SendError::Http(_) => fault(
            "protocol",
            ErrorKind::UpstreamUnreachable,
            "the connection to the model server failed",
        ),
    }
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
    resp: UpstreamResponse,
    idle: Duration,
    deadline: Instant,
) -> impl Stream<Item = Result<Bytes, StreamFault>> + Send + 'static {
    struct State<S> {
        inner: S,
        /// An item taken while merging that must come after the merged chunk.
        pending: Option<Option<Result<Bytes, BodyFault>>>,
        done: bool,
    }
    let state = State {
        inner: resp.chunks(),
        pending: None,
        done: false,
    };
    futures_util::stream::unfold(state, move |mut st| async move {
        if st.done {
            return None;
        }
        // A chunk that has already arrived (a whole small answer, often) is taken without
        // reading the clock or arming a timer; only a wait is bounded.
        let ready = match st.pending.take() {
            Some(item) => Some(item),
            None => st.inner.next().now_or_never(),
        };
        let item = match ready {
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

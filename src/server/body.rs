//! Bodies on the way through: client bodies bounded in size and time, and the response body that
//! closes each request's books (metrics, the request log line) when it ends or the client leaves.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use sync_wrapper::SyncWrapper;

use crate::dialect::error::{ApiError, ErrorKind};
use crate::metrics::metrics;

/// Read a whole client body, refusing it past `limit` bytes or `timeout`.
pub async fn read_limited(body: Body, limit: u64, timeout: Duration) -> Result<Bytes, ApiError> {
    let read = async {
        let mut body = body;
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| {
                ApiError::new(ErrorKind::BadRequest, "the request body could not be read")
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() as u64 + data.len() as u64 > limit {
                    return Err(too_large(limit));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::new(
            ErrorKind::BodyTimeout,
            format!(
                "the request body was not received within {}s",
                timeout.as_secs()
            ),
        )),
    }
}

pub fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        ErrorKind::BodyTooLarge,
        format!("the request body is larger than the limit of {limit} bytes"),
    )
}

/// A client body streamed upstream that fails once more than `limit` bytes pass; `tripped` tells
/// the handler that the failure was the client's.
pub struct LimitedBody {
    inner: SyncWrapper<Body>,
    hint: SizeHint,
    remaining: u64,
    tripped: Arc<AtomicBool>,
}

#[derive(Debug)]
pub struct BodyLimitExceeded;

impl std::fmt::Display for BodyLimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body over limit")
    }
}

impl std::error::Error for BodyLimitExceeded {}

impl LimitedBody {
    pub fn new(inner: Body, limit: u64) -> (Self, Arc<AtomicBool>) {
        let tripped = Arc::new(AtomicBool::new(false));
        let hint = http_body::Body::size_hint(&inner);
        (
            Self {
                hint,
                inner: SyncWrapper::new(inner),
                remaining: limit,
                tripped: tripped.clone(),
            },
            tripped,
        )
    }
}

impl http_body::Body for LimitedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(this.inner.get_mut()).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.remaining {
                        this.tripped.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyLimitExceeded))));
                    }
                    this.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        // The client's declared length, so the upstream gets Content-Length rather than chunks.
        self.hint
    }
}

/// What a request did, filled in as it goes and reported once when its response body is done.
#[derive(Debug)]
pub struct RequestLog {
    pub request_id: String,
    /// The route (label and metric series) the request counts under.
    pub route: Arc<super::routes::Route>,
    pub method: http::Method,
    pub status: u16,
    pub started: Instant,
    pub upstream_started: Option<Instant>,
    pub upstream_status: Option<u16>,
    pub bytes_out: u64,
    pub streamed: bool,
    /// Short decision summary for the log line, e.g. `prompt:A1d:block`; shared with the
    /// stream guard's reporter, which adds to it while the response streams.
    pub decisions: Arc<std::sync::Mutex<Vec<String>>>,
    pub error: Option<&'static str>,
    pub user: Option<String>,
    pub content_id: Option<String>,
    done: bool,
}

impl RequestLog {
    pub fn new(request_id: String, route: Arc<super::routes::Route>, method: http::Method) -> Self {
        metrics().requests_in_flight.inc();
        Self {
            request_id,
            route,
            method,
            status: 0,
            started: Instant::now(),
            upstream_started: None,
            upstream_status: None,
            bytes_out: 0,
            streamed: false,
            decisions: Arc::default(),
            error: None,
            user: None,
            content_id: None,
            done: false,
        }
    }

    /// Close the books: metrics and the one request line at info. Idempotent.
    pub fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        metrics().requests_in_flight.dec();
        let series = &self.route.series;
        series.answered(&self.method, self.status);
        let now = Instant::now();
        let elapsed = now.duration_since(self.started);
        series.request_duration().observe(elapsed.as_secs_f64());
        series.response_bytes().inc_by(self.bytes_out);
        if let Some(up) = self.upstream_started {
            series
                .upstream_duration()
                .observe(now.duration_since(up).as_secs_f64());
        }
        tracing::info!(
            request_id = %self.request_id,
            route = %self.route.template,
            dialect = self.route.dialect.as_str(),
            method = %self.method,
            status = self.status,
            upstream_status = self.upstream_status,
            streamed = self.streamed,
            bytes_out = self.bytes_out,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            decisions = %self.decisions.lock().map(|d| d.join(",")).unwrap_or_default(),
            error = self.error,
            user = self.user.as_deref(),
            content_id = self.content_id.as_deref(),
            "Request finished"
        );
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A response body stream that counts bytes and finishes the request log when it ends or is dropped.
pub struct ObservedStream<S> {
    inner: Pin<Box<S>>,
    log: RequestLog,
    stream_gauge: bool,
}

impl<S> ObservedStream<S> {
    pub fn new(inner: S, log: RequestLog) -> Self {
        let stream_gauge = log.streamed;
        if stream_gauge {
            metrics().active_streams.inc();
        }
        Self {
            inner: Box::pin(inner),
            log,
            stream_gauge,
        }
    }
}

impl<S, E> Stream for ObservedStream<S>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(b))) => {
                this.log.bytes_out += b.len() as u64;
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.log.error.get_or_insert("upstream_stream");
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.log.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S> Drop for ObservedStream<S> {
    fn drop(&mut self) {
        if self.stream_gauge {
            metrics().active_streams.dec();
        }
        self.log.finish();
    }
}

/// Box a byte stream into an axum body.
pub fn body_from_stream<S, E>(s: S) -> Body
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    Body::from_stream(s.map(|r| r.map_err(Into::into)))
}

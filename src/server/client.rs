//! The HTTP/1.1 client for the upstream model server: pooled keep-alive connections, each driven
//! by whoever reads its response, with an exchange of our own rather than hyper's.
//!
//! Why by hand: an open model stream mostly waits for its next token, and what a connection
//! holds while it waits is what 1,000 open streams cost. hyper's client connection keeps a fixed
//! 8 KiB header write buffer (no knob to shrink it), a read buffer (4 KiB at the least) and its
//! dispatch state for as long as the connection lives; with the server side's own buffers that
//! came to 33.5 KiB of RSS per open stream where nginx needs 17.6 KiB. Here a connection holds
//! no buffer while it waits: the request head is written from a buffer freed once sent, reads go
//! to one scratch buffer per thread (`io.rs`) and exactly the bytes a read brought in are handed
//! up, as one `Bytes`. State that outlives a read is a few counters (`decode.rs`). Measured
//! the same way (1,000 open passthrough streams), RSS per stream went from 33 KiB to 16–18 KiB.
//!
//! As before (and unlike reqwest or hyper-util's pooled client), no connection has a task of its
//! own: it is driven by whoever polls the response body, so every byte one socket read brought
//! in is handed up at once and can leave in one write to the client (one write per SSE event
//! instead cost 266 writes for a 258-event stream, where nginx makes 14).
//!
//! A connection goes back to the pool only after its response was read to the end and allowed
//! reuse; a body dropped early (the client left, or a stream was stopped) closes the connection,
//! which is how the model server learns to stop generating.
//!
//! Deliberately not done: HTTP/2 (a sidecar talks to a local model server over HTTP/1.1; ALPN
//! offers only http/1.1), protocol upgrades (a 101 answer or a successful CONNECT is an error),
//! pipelining, request trailers (never sent upstream: `Trailer` is dropped as hop-by-hop), and
//! waiting for `100 Continue` before sending a body (the body goes at once; interim answers are
//! skipped).

mod decode;
mod io;
mod request;
mod response;

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use decode::Decoder;
use io::Stream;
use request::Sender;
use response::HeadReader;
pub use response::{MAX_HEAD, MAX_HEADERS};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What shenhe sends upstream: a body it has read (moderated routes) or the client's, streamed.
pub type RequestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection within the connect bound.
    ConnectTimeout,
    /// The TCP connection could not be made.
    Connect(std::io::Error),
    /// The TLS handshake failed (an untrusted certificate, most often).
    Tls(std::io::Error),
    /// The exchange failed on an open connection.
    Http(HttpError),
}

/// What went wrong in an exchange on an open connection (also the response body's error).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Reading from or writing to the connection failed.
    #[error("upstream connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection before the response was complete.
    #[error("upstream closed the connection before the response was complete")]
    Closed,
    /// The status line and headers are larger than `MAX_HEAD` bytes or `MAX_HEADERS` fields.
    #[error("response head larger than {MAX_HEAD} bytes or {MAX_HEADERS} header fields")]
    HeadTooLarge,
    /// The status line or a header field does not parse.
    #[error("invalid response head: {0}")]
    Parse(httparse::Error),
    /// The head parses but holds something unusable.
    #[error("invalid response head: {0}")]
    Head(&'static str),
    /// The body's framing is ambiguous or broken (Content-Length, chunked encoding).
    #[error("invalid response framing: {0}")]
    Framing(&'static str),
    /// The server switched protocols (101) or accepted a CONNECT: not supported.
    #[error("upstream switched protocols, which is not supported")]
    Upgrade,
    /// The request body failed (or did not match its declared length): the request was aborted.
    #[error("request body failed: {0}")]
    RequestBody(BoxError),
}

impl HttpError {
    /// The server's answer was not valid HTTP/1.1 (as opposed to a connection that broke).
    pub fn is_invalid_response(&self) -> bool {
        matches!(
            self,
            HttpError::HeadTooLarge
                | HttpError::Parse(_)
                | HttpError::Head(_)
                | HttpError::Framing(_)
                | HttpError::Upgrade
        )
    }
}

/// Where the model server is and how to reach it.
pub struct Target {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// Extra trusted CA certificates (PEM) for TLS.
    pub ca_file: Option<std::path::PathBuf>,
}

/// A pool of keep-alive connections to one upstream.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("host", &self.inner.host)
            .field("port", &self.inner.port)
            .finish_non_exhaustive()
    }
}

struct Inner {
    host: String,
    port: u16,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// The `Host` header every request carries.
    authority: HeaderValue,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// Idle connections per worker thread ([`crate::server::worker::index`]), most recently used
    /// last: a socket is registered with the runtime of the thread that opened it, so it goes
    /// back to that thread's list and is only taken from there.
    idle: Box<[Mutex<Vec<Conn>>]>,
}

/// One connection to the upstream.
struct Conn {
    io: Stream,
    idle_since: Instant,
}

impl Client {
    pub fn new(
        target: Target,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Result<Self, String> {
        let tls = if target.tls {
            let mut config = crate::tls::client_config(
                target.ca_file.as_deref(),
                "upstream.ca_file",
                "https upstream",
            )?;
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| format!("upstream host `{}`: {e}", target.host))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let default_port = if target.tls { 443 } else { 80 };
        let authority = if target.port == default_port {
            target.host.clone()
        } else if target.host.contains(':') {
            format!("[{}]:{}", target.host, target.port)
        } else {
            format!("{}:{}", target.host, target.port)
        };
        let authority = HeaderValue::from_str(&authority)
            .map_err(|_| format!("upstream host `{}` is not a valid Host header", target.host))?;
        Ok(Self {
            inner: Arc::new(Inner {
                host: target.host,
                port: target.port,
                tls,
                authority,
                connect_timeout,
                idle_timeout,
                max_idle,
                idle: (0..crate::server::worker::MAX)
                    .map(|_| Mutex::new(Vec::new()))
                    .collect(),
            }),
        })
    }

    /// The `Host` header value for requests to this upstream.
    pub fn authority(&self) -> &HeaderValue {
        &self.inner.authority
    }

    /// Send a request (origin-form URI) and wait for the response head. An idle connection the
    /// server closed is passed over; a request that failed on a reused connection goes out again
    /// on another one if none of it was written, or if it is idempotent and has no body.
    pub async fn send(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<ResponseBody>, SendError> {
        let (parts, body) = req.into_parts();
        let mut sender = Sender::new(&parts.method, &parts.uri, &parts.headers, body);
        loop {
            let (conn, reused) = match self.inner.checkout() {
                Some(c) => (c, true),
                None => (self.inner.connect().await?, false),
            };
            match self.exchange(conn, sender, reused, &parts.method).await {
                Ok(resp) => return Ok(resp),
                Err(Failed::Retry(back)) => sender = back,
                Err(Failed::Error(e)) => return Err(SendError::Http(e)),
            }
        }
    }

    /// Write the request and read the response head, at the same time: a server may answer
    /// before it has read the whole body (and close), and that answer is the one to return.
    async fn exchange(
        &self,
        mut conn: Conn,
        mut sender: Sender,
        reused: bool,
        method: &Method,
    ) -> Result<Response<ResponseBody>, Failed> {
        let mut reader = HeadReader::default();
        let mut sending = true;
        let mut write_error = None;
        let outcome = poll_fn(|cx| {
            if sending {
                match sender.poll_send(&mut conn.io, cx) {
                    Poll::Ready(Ok(())) => sending = false,
                    Poll::Ready(Err(HttpError::Io(_))) if reused && sender.rewind() => {
                        return Poll::Ready(Err(None));
                    }
                    Poll::Ready(Err(HttpError::Io(e))) => {
                        // Keep reading: an early answer may already be on its way.
                        sending = false;
                        write_error = Some(e);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Some(e))),
                    Poll::Pending => {}
                }
            }
            loop {
                let read = conn.io.poll_read_with(cx, |data| reader.feed(data, method));
                match std::task::ready!(read) {
                    Ok(Ok(Some(head))) => return Poll::Ready(Ok(head)),
                    Ok(Ok(None)) => continue,
                    Ok(Err(e)) if e.is_invalid_response() => return Poll::Ready(Err(Some(e))),
                    // Closed or broken before an answer. On a reused connection that is most
                    // likely a server that closed it as the request went out: send again what
                    // can safely be sent again.
                    failed => {
                        if reused && reader.is_empty() && sender.rewind() {
                            return Poll::Ready(Err(None));
                        }
                        let e = match (write_error.take(), failed) {
                            (Some(w), _) => HttpError::Io(w),
                            (None, Err(e)) => HttpError::Io(e),
                            (None, Ok(Err(e))) => e,
                            (None, Ok(Ok(_))) => HttpError::Closed,
                        };
                        return Poll::Ready(Err(Some(e)));
                    }
                }
            }
        })
        .await;
        let head = match outcome {
            Ok(head) => head,
            Err(None) => return Err(Failed::Retry(sender)),
            Err(Some(e)) => return Err(Failed::Error(e)),
        };
        // An answer that came before the whole request went out ends the connection's use.
        let unsent = sending.then(|| Box::new(sender));
        let reusable = head.keep_alive && !head.extra && unsent.is_none() && write_error.is_none();
        let mut body = ResponseBody {
            conn: Some(conn),
            decoder: head.decoder,
            first: head.first,
            reusable,
            unsent,
            pool: self.inner.clone(),
        };
        if body.decoder.is_done() {
            body.finish();
        }
        Ok(head.response.map(|()| body))
    }
}

/// How an exchange failed: for good, or before the request left (so it may go out again).
enum Failed {
    Retry(Sender),
    Error(HttpError),
}

impl Inner {
    /// The most recently used idle connection that is still open.
    fn idle_here(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.idle[crate::server::worker::index()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn checkout(&self) -> Option<Conn> {
        loop {
            let mut c = self.idle_here().pop()?;
            // A connection the server closed while it sat here is seen by asking its socket.
            if c.idle_since.elapsed() < self.idle_timeout && c.io.is_reusable() {
                return Some(c);
            }
        }
    }

    fn checkin(&self, c: Conn) {
        let now = c.idle_since;
        let mut idle = self.idle_here();
        // Oldest first (each was pushed when it became idle): drop the expired front at once.
        let expired =
            idle.partition_point(|c| now.duration_since(c.idle_since) >= self.idle_timeout);
        idle.drain(..expired);
        if idle.len() < self.max_idle {
            idle.push(c);
        }
    }

    async fn connect(&self) -> Result<Conn, SendError> {
        let connect = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(SendError::Connect)?;
            tcp.set_nodelay(true).map_err(SendError::Connect)?;
            match &self.tls {
                None => Ok(Stream::Plain(tcp)),
                Some((connector, name)) => Ok(Stream::Tls(Box::new(
                    connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(SendError::Tls)?,
                ))),
            }
        };
        let io = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| SendError::ConnectTimeout)??;
        Ok(Conn {
            io,
            idle_since: Instant::now(),
        })
    }
}

/// A response body that drives its connection, and returns it to the pool when read to the end.
/// While it waits for the server it holds no buffer: a socket, a decoder's counters, and (rarely)
/// the rest of a request body the server answered before reading.
pub struct ResponseBody {
    /// `None` once the body ended or failed.
    conn: Option<Conn>,
    decoder: Decoder,
    /// Payload that came with the head, handed out first.
    first: Option<Bytes>,
    /// The connection may carry another request once this body is read to the end.
    reusable: bool,
    /// The rest of the request, when the answer came before all of it was written.
    unsent: Option<Box<Sender>>,
    pool: Arc<Inner>,
}

impl ResponseBody {
    /// The body is complete: back to the pool if the exchange allows it, else close.
    fn finish(&mut self) {
        self.unsent = None;
        if let Some(mut c) = self.conn.take() {
            if self.reusable {
                c.idle_since = Instant::now();
                self.pool.checkin(c);
            }
        }
    }

    /// One read: payload bytes (maybe none, when a read held only framing), the end, or a fault.
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Option<Bytes>, HttpError>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(s) = self.unsent.as_mut() {
            // Full duplex, as before: the rest of the request goes out while the answer is read.
            // A failure here is not the answer's: the request just stops.
            if s.poll_send(&mut conn.io, cx).is_ready() {
                self.unsent = None;
            }
        }
        let decoder = &mut self.decoder;
        let read = std::task::ready!(conn.io.poll_read_with(cx, |data| {
            if data.is_empty() {
                return Ok(None);
            }
            let got = decoder.decode(data)?;
            let bytes = (got.data > 0).then(|| Bytes::copy_from_slice(&data[..got.data]));
            Ok(Some((bytes, got.rest > 0)))
        }));
        Poll::Ready(Some(match read {
            Ok(Ok(Some((bytes, extra)))) => {
                if extra {
                    // More than one answer came: the connection is out of step.
                    self.reusable = false;
                }
                if self.decoder.is_done() {
                    self.finish();
                }
                Ok(bytes)
            }
            Ok(Ok(None)) => {
                self.conn = None;
                if self.decoder.ends_at_eof() {
                    return Poll::Ready(None);
                }
                Err(HttpError::Closed)
            }
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(e) => {
                self.conn = None;
                Err(HttpError::Io(e))
            }
        }))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = self.get_mut();
        if let Some(b) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        loop {
            match std::task::ready!(this.poll_read(cx)) {
                Some(Ok(Some(b))) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                // Only framing in that read: read again (or end, if that completed the body).
                Some(Ok(None)) => continue,
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let first = self.first.as_ref().map_or(0, |b| b.len() as u64);
        match self.decoder.remaining() {
            Some(left) => SizeHint::with_exact(left + first),
            None => {
                let mut h = SizeHint::new();
                h.set_lower(first);
                h
            }
        }
    }
}

//! The HTTP/1.1 client for the upstream model server: pooled keep-alive connections, each driven
//! by the task that reads its response.
//!
//! Written on hyper's connection API rather than taken from reqwest or hyper-util's pooled
//! client because those run every connection in a task of its own and hand the response body
//! over one decoded chunk at a time. For a model stream that means one task switch and one write
//! to the client per SSE event (measured: 266 writes for a 258-event stream, where nginx makes
//! 14). Here the connection is polled by whoever polls the response body, so every chunk that
//! one socket read brought in can be taken at once and leave in one write; nothing waits for
//! data that has not arrived.
//!
//! A connection goes back to the pool only after its response body was read to the end; a body
//! dropped early (the client left, or a stream was stopped) closes the connection, which is how
//! the model server learns to stop generating.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What shenhe sends upstream: a body it has read (moderated routes) or the client's, streamed.
pub type RequestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection within the connect bound.
    ConnectTimeout,
    /// The TCP connection could not be made.
    Connect(io::Error),
    /// The TLS handshake failed (an untrusted certificate, most often).
    Tls(io::Error),
    /// The exchange failed on an open connection.
    Http(hyper::Error),
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
    idle: Mutex<Vec<Conn>>,
}

/// One connection: the handle that sends requests and the state machine that must be polled.
struct Conn {
    send: SendRequest<RequestBody>,
    conn: Option<Connection<TokioIo<Stream>, RequestBody>>,
    idle_since: Instant,
}

impl Conn {
    /// Poll the connection once; false once it has ended (closed or failed).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(c) = self.conn.as_mut() else {
            return false;
        };
        match Pin::new(c).poll(cx) {
            Poll::Pending => true,
            Poll::Ready(_) => {
                self.conn = None;
                false
            }
        }
    }
}

impl Client {
    pub fn new(
        target: Target,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Result<Self, String> {
        let tls = if target.tls {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (mut added, _) = roots.add_parsable_certificates(found.certs);
            if let Some(path) = &target.ca_file {
                use rustls::pki_types::pem::PemObject;
                let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
                if certs.is_empty() {
                    return Err(format!(
                        "upstream.ca_file {}: no certificates in it",
                        path.display()
                    ));
                }
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
                    added += 1;
                }
            }
            if added == 0 {
                return Err(
                    "no trusted root certificates found on this system (https upstream)".into(),
                );
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS setup: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
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
                idle: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The `Host` header value for requests to this upstream.
    pub fn authority(&self) -> &HeaderValue {
        &self.inner.authority
    }

    /// Send a request (origin-form URI) and wait for the response head. A pooled connection that
    /// turns out to be closed before the request went out is replaced by a new one.
    pub async fn send(
        &self,
        mut req: Request<RequestBody>,
    ) -> Result<Response<ResponseBody>, SendError> {
        loop {
            let (mut conn, reused) = match self.inner.checkout() {
                Some(c) => (c, true),
                None => (self.inner.connect().await?, false),
            };
            let ready = std::future::poll_fn(|cx| {
                conn.drive(cx);
                conn.send.poll_ready(cx)
            })
            .await;
            if let Err(e) = ready {
                if reused {
                    continue;
                }
                return Err(SendError::Http(e));
            }
            let mut fut = pin!(conn.send.try_send_request(req));
            let res = std::future::poll_fn(|cx| {
                conn.drive(cx);
                fut.as_mut().poll(cx)
            })
            .await;
            match res {
                Ok(resp) => {
                    return Ok(resp.map(|body| ResponseBody {
                        body,
                        conn: Some(conn),
                        pool: self.inner.clone(),
                    }))
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => req = back,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }
}

impl Inner {
    /// The most recently used idle connection that is still open.
    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let mut cx = Context::from_waker(Waker::noop());
        while let Some(mut c) = idle.pop() {
            // A connection the server closed while it sat here shows it when polled.
            if c.idle_since.elapsed() < self.idle_timeout && c.drive(&mut cx) && c.send.is_ready() {
                return Some(c);
            }
        }
        None
    }

    fn checkin(&self, c: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let timeout = self.idle_timeout;
        idle.retain(|c| c.idle_since.elapsed() < timeout);
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
        let stream = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| SendError::ConnectTimeout)??;
        // A fixed 4 KiB read buffer: an SSE stream needs no more per read, and an open stream
        // should cost little memory (the adaptive default starts at 8 KiB and grows).
        let (send, conn) = Builder::new()
            .read_buf_exact_size(Some(4096))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        Ok(Conn {
            send,
            conn: Some(conn),
            idle_since: Instant::now(),
        })
    }
}

/// A response body that drives its connection, and returns it to the pool when read to the end.
pub struct ResponseBody {
    body: Incoming,
    conn: Option<Conn>,
    pool: Arc<Inner>,
}

impl ResponseBody {
    fn release(&mut self) {
        let Some(mut c) = self.conn.take() else {
            return;
        };
        // Let the connection finish the message and ask for the next one.
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..2 {
            if !c.drive(&mut cx) {
                return;
            }
            if c.send.is_ready() {
                c.idle_since = Instant::now();
                self.pool.checkin(c);
                return;
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(c) = this.conn.as_mut() {
            c.drive(cx);
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.release();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A plain or TLS connection to the upstream.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

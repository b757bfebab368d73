//! The socket under an upstream connection, plain TCP or TLS: read through one scratch buffer per
//! thread, so a connection that waits for its next bytes holds no buffer at all.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Size of the per-thread read buffer (bytes): the most one read takes from a socket. SSE events
/// come a few hundred bytes at a time; a large JSON answer takes a few reads more than it would
/// with a bigger buffer, each handed up as it is.
pub const SCRATCH: usize = 16 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Run `f` on this thread's scratch buffer (a fresh one if it is somehow in use already).
fn with_scratch<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH_BUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut vec![0; SCRATCH]),
    })
}

/// A plain or TLS connection to the upstream.
pub(super) enum Stream {
    Plain(TcpStream),
    /// TLS keeps rustls' own record buffers; TLS upstreams are rare for a sidecar.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Read once and let `f` use the bytes read (empty: the peer closed) before the buffer is
    /// reused. Pending until some bytes or the end arrive.
    pub fn poll_read_with<R>(
        &mut self,
        cx: &mut Context<'_>,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> Poll<io::Result<R>> {
        match self {
            // `poll_read` rather than `try_read`: after a short read tokio forgets the socket's
            // readiness, so the next read waits for the kernel's word instead of trying (and
            // failing with EAGAIN) once per request.
            Stream::Plain(tcp) => with_scratch(|buf| {
                let mut rb = ReadBuf::new(buf);
                ready!(Pin::new(tcp).poll_read(cx, &mut rb))?;
                Poll::Ready(Ok(f(rb.filled_mut())))
            }),
            Stream::Tls(tls) => with_scratch(|buf| {
                let mut rb = ReadBuf::new(buf);
                ready!(Pin::new(tls.as_mut()).poll_read(cx, &mut rb))?;
                Poll::Ready(Ok(f(rb.filled_mut())))
            }),
        }
    }

    pub fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    /// Whether an idle connection can carry a request: the server has neither closed it nor sent
    /// anything unasked. Asked of the runtime's readiness (no system call): any read event on an
    /// idle connection (a close, a stray answer, a TLS alert or late session ticket) retires it.
    /// A close the runtime has not seen yet shows when the request is sent: a request that never
    /// left is sent again on a new connection.
    pub fn is_reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let tcp = match self {
            Stream::Plain(tcp) => &*tcp,
            Stream::Tls(tls) => tls.get_ref().0,
        };
        if tcp.poll_read_ready(&mut cx).is_ready() {
            return false;
        }
        match self {
            Stream::Plain(_) => true,
            // rustls may hold a close_notify it read along with the last answer.
            Stream::Tls(tls) => {
                let mut byte = [0u8; 1];
                let mut rb = ReadBuf::new(&mut byte);
                Pin::new(tls.as_mut())
                    .poll_read(&mut cx, &mut rb)
                    .is_pending()
            }
        }
    }
}

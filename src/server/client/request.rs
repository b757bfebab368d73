//! The request on the wire: the head written from a buffer that is freed once sent, the body
//! framed by Content-Length when its size is known exactly and chunked otherwise.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http::{header, HeaderMap, Method, Uri};
use http_body::Body;

use super::io::Stream;
use super::{HttpError, RequestBody};

/// Body bytes gathered before they are written: what a body has at hand leaves in one write with
/// the head, without holding more than this.
const GATHER_MAX: usize = 64 * 1024;

/// Most pieces in one vectored write.
const MAX_SLICES: usize = 16;

/// A request being written: what is queued for the socket and the body still to come.
pub(super) struct Sender {
    /// Bytes for the socket, in order: the head, then chunk framing and body data.
    queue: VecDeque<Bytes>,
    queued: usize,
    /// The body, until it has ended.
    body: Option<RequestBody>,
    chunked: bool,
    /// Body bytes still due under Content-Length framing.
    left: u64,
    /// Some byte went out: from then on the request can be sent again only if it is `replay`.
    wrote: bool,
    /// The whole request, when it may be sent again after it went out: an idempotent method
    /// (RFC 9110 §9.2.2) without a body.
    replay: Option<Bytes>,
}

impl Sender {
    pub fn new(method: &Method, uri: &Uri, headers: &HeaderMap, body: RequestBody) -> Self {
        // An empty body gets no framing header (as hyper did); a known size a Content-Length.
        let (body, length) = if body.is_end_stream() {
            (None, None)
        } else {
            let n = body.size_hint().exact();
            (Some(body), Some(n))
        };
        let chunked = matches!(length, Some(None));
        let left = length.flatten().unwrap_or(0);
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        let target = if target.is_empty() { "/" } else { target };
        let mut head = Vec::with_capacity(
            64 + target.len()
                + headers
                    .iter()
                    .map(|(k, v)| k.as_str().len() + v.len() + 4)
                    .sum::<usize>(),
        );
        head.extend_from_slice(method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in headers {
            // Framing is this module's to say.
            if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        match length {
            Some(Some(n)) => {
                head.extend_from_slice(b"content-length: ");
                head.extend_from_slice(n.to_string().as_bytes());
                head.extend_from_slice(b"\r\n");
            }
            Some(None) => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            None => {}
        }
        head.extend_from_slice(b"\r\n");
        let head = Bytes::from(head);
        let replay = (body.is_none() && method.is_idempotent()).then(|| head.clone());
        Self {
            queued: head.len(),
            queue: VecDeque::from([head]),
            body,
            chunked,
            left,
            wrote: false,
            replay,
        }
    }

    /// Make ready to send the request again on another connection, when that is safe: nothing
    /// of it went out yet, or it is idempotent and whole in `replay`.
    pub fn rewind(&mut self) -> bool {
        if !self.wrote {
            return true;
        }
        let Some(head) = &self.replay else {
            return false;
        };
        self.queued = head.len();
        self.queue = VecDeque::from([head.clone()]);
        self.wrote = false;
        true
    }

    fn push(&mut self, b: Bytes) {
        self.queued += b.len();
        self.queue.push_back(b);
    }

    /// Write the request; ready once all of it is out (or on an error: the body's, which is
    /// `HttpError::RequestBody`, or the socket's, `HttpError::Io`).
    pub fn poll_send(
        &mut self,
        io: &mut Stream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), HttpError>> {
        loop {
            self.gather(cx)?;
            if self.queue.is_empty() {
                ready!(io.poll_flush(cx))?;
                // The body is either done or pending (its waker is set).
                return if self.body.is_none() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut k = 0;
            for (slot, b) in slices.iter_mut().zip(&self.queue) {
                *slot = IoSlice::new(b);
                k += 1;
            }
            let n = ready!(io.poll_write_vectored(cx, &slices[..k]))?;
            if n == 0 {
                return Poll::Ready(Err(
                    std::io::Error::from(std::io::ErrorKind::WriteZero).into()
                ));
            }
            self.wrote = true;
            self.queued -= n;
            let mut n = n;
            while n > 0 {
                let Some(front) = self.queue.front_mut() else {
                    break;
                };
                if n >= front.len() {
                    n -= front.len();
                    self.queue.pop_front();
                } else {
                    front.advance(n);
                    n = 0;
                }
            }
            if self.queue.is_empty() {
                // Hold no capacity while waiting for more of the body.
                self.queue = VecDeque::new();
            }
        }
    }

    /// Queue what the body has ready, up to `GATHER_MAX`.
    fn gather(&mut self, cx: &mut Context<'_>) -> Result<(), HttpError> {
        while self.queued < GATHER_MAX && self.queue.len() + 3 <= MAX_SLICES {
            let Some(body) = self.body.as_mut() else {
                return Ok(());
            };
            match Pin::new(body).poll_frame(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(None) => {
                    self.body = None;
                    if self.chunked {
                        self.push(Bytes::from_static(b"0\r\n\r\n"));
                    } else if self.left != 0 {
                        return Err(HttpError::RequestBody(
                            "the request body is shorter than its declared length".into(),
                        ));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    self.body = None;
                    return Err(HttpError::RequestBody(e));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are not sent (nor were they before: no `Trailer` header goes up).
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if self.chunked {
                        self.push(Bytes::from(format!("{:x}\r\n", data.len())));
                        self.push(data);
                        self.push(Bytes::from_static(b"\r\n"));
                    } else {
                        let n = data.len() as u64;
                        if n > self.left {
                            self.body = None;
                            return Err(HttpError::RequestBody(
                                "the request body is longer than its declared length".into(),
                            ));
                        }
                        self.left -= n;
                        self.push(data);
                    }
                }
            }
        }
        Ok(())
    }
}

//! The response head: read until complete (bounded), parsed with `httparse`, interim 1xx answers
//! skipped, and the body framing and keep-alive decided as RFC 9112 §6.3 and §9.3 say.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};

use super::decode::Decoder;
use super::HttpError;

/// Largest response head (status line and headers, bytes). Model servers send well under 2 KiB;
/// past this the answer is refused rather than buffered without end.
pub const MAX_HEAD: usize = 64 * 1024;

/// Most header fields in a response head (hyper's default too).
pub const MAX_HEADERS: usize = 100;

/// A final response head and what came with it.
pub(super) struct Head {
    pub response: Response<()>,
    pub decoder: Decoder,
    /// The server lets the connection carry another request after this response.
    pub keep_alive: bool,
    /// Body payload that arrived in the same reads as the head.
    pub first: Option<Bytes>,
    /// Bytes after the end of the whole response came with it.
    pub extra: bool,
}

/// Collects the bytes of a response head that did not arrive in one read.
#[derive(Default)]
pub(super) struct HeadReader {
    partial: Vec<u8>,
}

enum Scan {
    /// No final head yet; the bytes from this offset on are the start of one.
    Partial(usize),
    Final(Head),
}

impl HeadReader {
    /// Take the bytes of one read (empty: the server closed the connection). `Some` once a final
    /// head is complete; the bytes after it are decoded as the start of the body.
    pub fn feed(&mut self, data: &mut [u8], method: &Method) -> Result<Option<Head>, HttpError> {
        if data.is_empty() {
            return Err(HttpError::Closed);
        }
        if self.partial.is_empty() {
            return match scan(data, method)? {
                Scan::Final(head) => Ok(Some(head)),
                Scan::Partial(from) => {
                    self.partial.extend_from_slice(&data[from..]);
                    Ok(None)
                }
            };
        }
        self.partial.extend_from_slice(data);
        let mut buf = std::mem::take(&mut self.partial);
        match scan(&mut buf, method)? {
            Scan::Final(head) => Ok(Some(head)),
            Scan::Partial(from) => {
                buf.drain(..from);
                self.partial = buf;
                Ok(None)
            }
        }
    }

    /// Nothing of a response has arrived yet.
    pub fn is_empty(&self) -> bool {
        self.partial.is_empty()
    }
}

/// Parse heads from the start of `buf`, skipping interim ones.
fn scan(buf: &mut [u8], method: &Method) -> Result<Scan, HttpError> {
    let mut at = 0;
    loop {
        if at == buf.len() {
            return Ok(Scan::Partial(at));
        }
        // Left uninitialized: filling 100 empty headers cost more than parsing a short head.
        let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let parse = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            &buf[at..],
            &mut headers,
        );
        let len = match parse {
            Ok(httparse::Status::Partial) if buf.len() - at > MAX_HEAD => {
                return Err(HttpError::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(Scan::Partial(at)),
            Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
                return Err(HttpError::HeadTooLarge)
            }
            Ok(httparse::Status::Complete(len)) => len,
            Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
            Err(e) => return Err(HttpError::Parse(e)),
        };
        let code = parsed.code.unwrap_or_default();
        if code == 101 {
            return Err(HttpError::Upgrade);
        }
        if (100..200).contains(&code) {
            // 100 Continue, 103 Early Hints: interim, the final answer follows.
            at += len;
            continue;
        }
        let response = build(&parsed)?;
        let (decoder, keep_alive) = framing(&response, method)?;
        let mut decoder = decoder;
        let body = &mut buf[at + len..];
        let got = decoder.decode(body)?;
        let first = (got.data > 0).then(|| Bytes::copy_from_slice(&body[..got.data]));
        return Ok(Scan::Final(Head {
            response,
            decoder,
            keep_alive,
            first,
            extra: got.rest > 0,
        }));
    }
}

fn build(parsed: &httparse::Response<'_, '_>) -> Result<Response<()>, HttpError> {
    let status = StatusCode::from_u16(parsed.code.unwrap_or_default())
        .map_err(|_| HttpError::Head("invalid status code"))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HttpError::Head("invalid header name"))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| HttpError::Head("invalid header value"))?;
        headers.append(name, value);
    }
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(response)
}

/// The body framing of a final response and whether the connection may be reused after it.
fn framing(response: &Response<()>, method: &Method) -> Result<(Decoder, bool), HttpError> {
    let (status, version, headers) = (response.status(), response.version(), response.headers());
    let keep_alive = match version {
        Version::HTTP_10 => {
            connection_has(headers, "keep-alive") && !connection_has(headers, "close")
        }
        _ => !connection_has(headers, "close"),
    };
    if method == Method::CONNECT && status.is_success() {
        return Err(HttpError::Upgrade);
    }
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Decoder::Length(0), keep_alive));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(HttpError::Framing(
                "transfer-encoding in an HTTP/1.0 response",
            ));
        }
        let mut last = None;
        for v in headers.get_all(header::TRANSFER_ENCODING) {
            let v = v
                .to_str()
                .map_err(|_| HttpError::Framing("invalid transfer-encoding"))?;
            last = v
                .split(',')
                .map(str::trim)
                .rfind(|c| !c.is_empty())
                .or(last);
        }
        return Ok(if last.is_some_and(|c| c.eq_ignore_ascii_case("chunked")) {
            // A Content-Length beside it is ignored, but says the server is confused: no reuse.
            let reuse = keep_alive && !headers.contains_key(header::CONTENT_LENGTH);
            (Decoder::chunked(), reuse)
        } else {
            (Decoder::Eof, false)
        });
    }
    match content_length(headers)? {
        Some(n) => Ok((Decoder::Length(n), keep_alive)),
        None => Ok((Decoder::Eof, false)),
    }
}

/// The Content-Length, if any: every value (fields and list items) must be the same number.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, HttpError> {
    let mut found = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        let v = v
            .to_str()
            .map_err(|_| HttpError::Framing("invalid content-length"))?;
        for item in v.split(',').map(str::trim) {
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HttpError::Framing("invalid content-length"));
            }
            let n: u64 = item
                .parse()
                .map_err(|_| HttpError::Framing("content-length too large"))?;
            if found.is_some_and(|f| f != n) {
                return Err(HttpError::Framing("differing content-length values"));
            }
            found = Some(n);
        }
    }
    Ok(found)
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(wire: &[u8], method: Method) -> Result<Head, HttpError> {
        let mut r = HeadReader::default();
        match r.feed(&mut wire.to_vec(), &method)? {
            Some(h) => Ok(h),
            None => panic!("head incomplete"),
        }
    }

    fn get(wire: &str) -> Result<Head, HttpError> {
        parse(wire.as_bytes(), Method::GET)
    }

    fn kind(h: &Head) -> (&'static str, bool) {
        let k = match h.decoder {
            Decoder::Length(_) => "length",
            Decoder::Chunked(_) => "chunked",
            Decoder::Eof => "eof",
        };
        (k, h.keep_alive)
    }

    #[test]
    fn a_head_split_across_reads_is_put_together() {
        let wire = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: b\r\n\r\nhello";
        for i in 1..wire.len() - 5 {
            let mut r = HeadReader::default();
            assert!(r
                .feed(&mut wire[..i].to_vec(), &Method::GET)
                .unwrap()
                .is_none());
            let h = r
                .feed(&mut wire[i..].to_vec(), &Method::GET)
                .unwrap()
                .expect("complete");
            assert_eq!(h.response.headers()["x-a"], "b");
            assert_eq!(h.first.as_deref(), Some(&b"hello"[..]));
            assert!(h.decoder.is_done());
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = get("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n").unwrap();
        assert_eq!(kind(&h), ("length", true));
        let h = get("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n").unwrap();
        assert_eq!(kind(&h), ("chunked", true));
        // Chunked wins over Content-Length, and the connection is not reused.
        let h = get("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n")
            .unwrap();
        assert_eq!(kind(&h), ("chunked", false));
        // Not chunked last: the body runs to the close.
        let h = get("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n").unwrap();
        assert_eq!(kind(&h), ("eof", false));
        let h = get("HTTP/1.1 200 OK\r\n\r\n").unwrap();
        assert_eq!(kind(&h), ("eof", false));
        let h = get("HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert_eq!(kind(&h), ("length", false));
        let h = get("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert_eq!(kind(&h), ("length", false));
        let h =
            get("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert_eq!(kind(&h), ("length", true));
        // Identical repeats are one length.
        let h =
            get("HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\ncontent-length: 3\r\n\r\n").unwrap();
        assert_eq!(h.decoder.remaining(), Some(3));
    }

    #[test]
    fn no_body_for_head_204_and_304() {
        let wire = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n";
        let h = parse(wire, Method::HEAD).unwrap();
        assert!(h.decoder.is_done() && h.keep_alive);
        for s in ["204 No Content", "304 Not Modified"] {
            let h = get(&format!(
                "HTTP/1.1 {s}\r\ntransfer-encoding: chunked\r\n\r\n"
            ))
            .unwrap();
            assert!(h.decoder.is_done() && h.keep_alive, "{s}");
        }
    }

    #[test]
    fn bad_framing_is_refused() {
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 0x3\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            assert!(
                matches!(get(bad), Err(HttpError::Framing(_))),
                "accepted {bad:?}"
            );
        }
    }

    #[test]
    fn interim_answers_are_skipped_and_101_refused() {
        let h = get("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok")
            .unwrap();
        assert_eq!(h.response.status(), 201);
        assert!(h.response.headers().get("link").is_none());
        assert_eq!(h.first.as_deref(), Some(&b"ok"[..]));
        // An interim answer alone is not a response yet.
        let mut r = HeadReader::default();
        assert!(r
            .feed(
                &mut b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
                &Method::POST
            )
            .unwrap()
            .is_none());
        assert!(r.is_empty());
        assert!(matches!(
            get("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"),
            Err(HttpError::Upgrade)
        ));
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\n\r\n", Method::CONNECT),
            Err(HttpError::Upgrade)
        ));
    }

    #[test]
    fn oversized_heads_are_refused_not_awaited() {
        let mut r = HeadReader::default();
        r.feed(&mut b"HTTP/1.1 200 OK\r\n".to_vec(), &Method::GET)
            .unwrap();
        let line = format!("x-filler: {}\r\n", "a".repeat(1000));
        let mut result = Ok(None);
        for _ in 0..MAX_HEAD / line.len() + 2 {
            result = r.feed(&mut line.clone().into_bytes(), &Method::GET);
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(HttpError::HeadTooLarge)));
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("x-{i}: v\r\n"))
            .collect();
        assert!(matches!(
            get(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")),
            Err(HttpError::HeadTooLarge)
        ));
    }

    #[test]
    fn malformed_heads_are_errors() {
        for bad in [
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "ICY 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx-a: b\r\n folded\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx-a: b\x01c\r\n\r\n",
        ] {
            assert!(get(bad).is_err(), "accepted {bad:?}");
        }
        let mut r = HeadReader::default();
        assert!(matches!(
            r.feed(&mut [], &Method::GET),
            Err(HttpError::Closed)
        ));
    }
}

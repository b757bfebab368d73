//! The upstream HTTP/1.1 client on real sockets: response framing (RFC 9112), keep-alive reuse and
//! its limits, interim answers, bounded heads, request framing, and answers that come early.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use shenhe::server::client::{
    BoxError, Client, HttpError, RequestBody, ResponseBody, SendError, Target,
};
use support::Recorded;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the raw server writes for one request: these writes, 10 ms apart, then maybe a close.
struct Answer {
    writes: Vec<Vec<u8>>,
    close: bool,
}

fn answer(wire: &str) -> Answer {
    Answer {
        writes: vec![wire.as_bytes().to_vec()],
        close: false,
    }
}

/// A model server that answers with raw bytes, counting connections and recording requests.
struct Raw {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Raw {
    /// `script(n, request)` answers the n-th request (from 0, over all connections).
    async fn start(script: impl Fn(usize, &Recorded) -> Answer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let (c, r) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let (script, r) = (script.clone(), r.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(req) = support::read_request(&mut sock, &mut buf).await {
                        let n = {
                            let mut log = r.lock().unwrap();
                            log.push(req.clone());
                            log.len() - 1
                        };
                        let a = script(n, &req);
                        for (i, w) in a.writes.iter().enumerate() {
                            if i > 0 {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            if sock.write_all(w).await.is_err() {
                                return;
                            }
                        }
                        if a.close {
                            let _ = sock.shutdown().await;
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            requests,
        }
    }

    fn client(&self) -> Client {
        Client::new(
            Target {
                host: "127.0.0.1".into(),
                port: self.addr.port(),
                tls: false,
                ca_file: None,
            },
            Duration::from_secs(2),
            Duration::from_secs(60),
            8,
        )
        .unwrap()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

fn request(method: Method, path: &str, body: RequestBody) -> Request<RequestBody> {
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = path.parse().unwrap();
    req.headers_mut()
        .insert("host", http::HeaderValue::from_static("model"));
    req
}

fn empty() -> RequestBody {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

fn full(b: &'static str) -> RequestBody {
    Full::new(Bytes::from(b))
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// A streamed body of unknown size fed from a channel.
fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, RequestBody) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let b = rx.recv().await?;
        Some((Ok::<_, BoxError>(Frame::data(b)), rx))
    });
    (tx, StreamBody::new(stream).boxed_unsync())
}

async fn send(c: &Client, req: Request<RequestBody>) -> Result<Response<ResponseBody>, SendError> {
    tokio::time::timeout(Duration::from_secs(5), c.send(req))
        .await
        .expect("an answer or an error, not a hang")
}

async fn body(resp: Response<ResponseBody>) -> Result<Bytes, HttpError> {
    tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .expect("the body ends or fails, it does not hang")
        .map(|c| c.to_bytes())
}

async fn get_text(c: &Client, path: &str) -> (StatusCode, Bytes) {
    let resp = send(c, request(Method::GET, path, empty())).await.unwrap();
    let status = resp.status();
    (status, body(resp).await.unwrap())
}

#[tokio::test]
async fn chunked_wins_over_content_length_and_the_connection_is_not_reused() {
    let up = Raw::start(|_, _| {
        answer("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    })
    .await;
    let c = up.client();
    assert_eq!(get_text(&c, "/a").await.1, "hello world");
    assert_eq!(get_text(&c, "/b").await.1, "hello world");
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn differing_content_lengths_are_refused() {
    let up = Raw::start(|_, _| {
        answer("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!")
    })
    .await;
    match send(&up.client(), request(Method::GET, "/", empty())).await {
        Err(SendError::Http(e)) => assert!(e.is_invalid_response(), "{e}"),
        other => panic!(
            "expected an invalid response, got {:?}",
            other.map(|r| r.status())
        ),
    }
}

#[tokio::test]
async fn a_body_without_length_is_read_to_the_close_and_not_reused() {
    let up = Raw::start(|_, _| Answer {
        writes: vec![
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nfirst ".to_vec(),
            b"second".to_vec(),
        ],
        close: true,
    })
    .await;
    let c = up.client();
    for _ in 0..2 {
        let (status, text) = get_text(&c, "/").await;
        assert_eq!(status, 200);
        assert_eq!(text, "first second");
    }
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_the_body_reports() {
    let up = Raw::start(|_, _| Answer {
        writes: vec![b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this".to_vec()],
        close: true,
    })
    .await;
    let resp = send(&up.client(), request(Method::GET, "/", empty()))
        .await
        .unwrap();
    assert!(matches!(body(resp).await, Err(HttpError::Closed)));

    let up = Raw::start(|_, _| Answer {
        writes: vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel".to_vec()],
        close: true,
    })
    .await;
    let resp = send(&up.client(), request(Method::GET, "/", empty()))
        .await
        .unwrap();
    assert!(matches!(body(resp).await, Err(HttpError::Closed)));
}

#[tokio::test]
async fn interim_100_continue_is_skipped() {
    let up = Raw::start(|_, _| Answer {
        writes: vec![
            b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
            b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok".to_vec(),
        ],
        close: false,
    })
    .await;
    let c = up.client();
    let resp = send(&c, request(Method::POST, "/", full("{}")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(body(resp).await.unwrap(), "ok");
    assert_eq!(get_text(&c, "/").await.0, 201);
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn no_body_after_head_204_and_304_and_the_connection_is_reused() {
    let up = Raw::start(|n, _| match n {
        // A HEAD answer states the length of what a GET would get, and sends none of it.
        0 => answer("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"),
        1 => answer("HTTP/1.1 204 No Content\r\n\r\n"),
        2 => answer("HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n"),
        _ => answer("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlast"),
    })
    .await;
    let c = up.client();
    let resp = send(&c, request(Method::HEAD, "/", empty())).await.unwrap();
    assert_eq!(resp.headers()["content-length"], "10");
    assert_eq!(body(resp).await.unwrap(), "");
    assert_eq!(
        get_text(&c, "/").await,
        (StatusCode::NO_CONTENT, Bytes::new())
    );
    assert_eq!(
        get_text(&c, "/").await,
        (StatusCode::NOT_MODIFIED, Bytes::new())
    );
    assert_eq!(get_text(&c, "/").await.1, "last");
    assert_eq!(up.connections(), 1, "one connection served all four");
}

#[tokio::test]
async fn connection_close_and_http_1_0_answers_are_not_reused() {
    let up = Raw::start(|n, _| match n {
        // The server says close but leaves the socket open: the client must not reuse it.
        0 => answer("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"),
        1 => answer("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"),
        2 => answer("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok"),
        _ => answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    })
    .await;
    let c = up.client();
    for _ in 0..4 {
        assert_eq!(get_text(&c, "/").await.1, "ok");
    }
    // close → new; 1.0 → new; 1.0 keep-alive → kept for the fourth.
    assert_eq!(up.connections(), 3);
}

#[tokio::test]
async fn a_response_head_over_the_limit_is_refused() {
    let big = format!(
        "HTTP/1.1 200 OK\r\n{}",
        format!("x-filler: {}\r\n", "a".repeat(1000)).repeat(80)
    );
    let up = Raw::start(move |_, _| Answer {
        // The head never ends: without a limit the client would wait for ever.
        writes: vec![big.clone().into_bytes()],
        close: false,
    })
    .await;
    match send(&up.client(), request(Method::GET, "/", empty())).await {
        Err(SendError::Http(HttpError::HeadTooLarge)) => {}
        other => panic!("expected HeadTooLarge, got {:?}", other.map(|r| r.status())),
    }
}

#[tokio::test]
async fn request_bodies_are_framed_by_length_or_chunked() {
    let up = Raw::start(|_, _| answer("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")).await;
    let c = up.client();
    let resp = send(&c, request(Method::POST, "/known", full("{\"a\":1}")))
        .await
        .unwrap();
    body(resp).await.unwrap();
    let (tx, streamed) = channel_body();
    let sending = tokio::spawn(async move {
        for part in ["{\"b\":", "2}"] {
            tx.send(Bytes::from(part)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let resp = send(&c, request(Method::POST, "/streamed?x=1", streamed))
        .await
        .unwrap();
    body(resp).await.unwrap();
    sending.await.unwrap();
    let resp = send(&c, request(Method::GET, "/empty", empty()))
        .await
        .unwrap();
    body(resp).await.unwrap();
    let r = up.requests();
    assert_eq!(r[0].path, "/known");
    assert_eq!(r[0].header("content-length"), Some("7"));
    assert_eq!(r[0].body, b"{\"a\":1}");
    assert_eq!(r[1].path, "/streamed?x=1");
    assert_eq!(r[1].header("transfer-encoding"), Some("chunked"));
    assert_eq!(r[1].header("content-length"), None);
    assert_eq!(r[1].body, b"{\"b\":2}");
    assert_eq!(r[2].header("content-length"), None);
    assert_eq!(r[2].header("transfer-encoding"), None);
    assert_eq!(r[2].header("host"), Some("model"));
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn an_early_answer_is_returned_while_the_body_is_still_being_sent() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if n > 0 {
                    let mut buf = Vec::new();
                    while support::read_request(&mut sock, &mut buf).await.is_some() {
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if sock.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
                // Read the head only, refuse the body at once, then drain for a while and close.
                let mut got = Vec::new();
                let mut tmp = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = sock.read(&mut tmp).await.unwrap();
                    assert!(n > 0);
                    got.extend_from_slice(&tmp[..n]);
                }
                let refuse = b"HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\ncontent-length: 8\r\n\r\ntoo big!";
                sock.write_all(refuse).await.unwrap();
                let _ = tokio::time::timeout(Duration::from_millis(300), async {
                    while sock.read(&mut tmp).await.is_ok_and(|n| n > 0) {}
                })
                .await;
            });
        }
    });
    let c = Client::new(
        Target {
            host: "127.0.0.1".into(),
            port: addr.port(),
            tls: false,
            ca_file: None,
        },
        Duration::from_secs(2),
        Duration::from_secs(60),
        8,
    )
    .unwrap();
    // A body that sends one piece and then never ends.
    let (tx, streamed) = channel_body();
    tx.send(Bytes::from_static(b"{\"big\": \"")).await.unwrap();
    let resp = send(&c, request(Method::POST, "/upload", streamed))
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(body(resp).await.unwrap(), "too big!");
    drop(tx);
    // The connection with the unfinished request is not reused.
    assert_eq!(get_text(&c, "/").await.1, "ok");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_body_that_fails_aborts_the_request() {
    let up = Raw::start(|_, _| answer("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")).await;
    let failing = StreamBody::new(futures_util::stream::iter([
        Ok(Frame::data(Bytes::from_static(b"part"))),
        Err::<Frame<Bytes>, BoxError>("client went away".into()),
    ]))
    .boxed_unsync();
    match send(&up.client(), request(Method::POST, "/", failing)).await {
        Err(SendError::Http(HttpError::RequestBody(_))) => {}
        other => panic!(
            "expected a request body error, got {:?}",
            other.map(|r| r.status())
        ),
    }
    // The upstream never saw a whole request.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn many_small_chunks_in_one_read_come_up_as_one_piece() {
    let mut wire = String::from("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
    let head_len = wire.len();
    for i in 0..100 {
        let ev = format!("data: {{\"n\":{i}}}\n\n");
        wire.push_str(&format!("{:x}\r\n{ev}\r\n", ev.len()));
    }
    wire.push_str("0\r\n\r\n");
    // The head alone first, then all the chunks in one write.
    let (head, chunks) = wire.split_at(head_len);
    let (head, chunks) = (head.as_bytes().to_vec(), chunks.as_bytes().to_vec());
    let up = Raw::start(move |_, _| Answer {
        writes: vec![head.clone(), chunks.clone()],
        close: false,
    })
    .await;
    let resp = send(&up.client(), request(Method::GET, "/", empty()))
        .await
        .unwrap();
    let mut b = resp.into_body();
    let mut frames = 0;
    let mut total = 0;
    while let Some(f) = b.frame().await {
        total += f.unwrap().into_data().unwrap().len();
        frames += 1;
    }
    assert_eq!(
        total,
        (0..100)
            .map(|i: i32| format!("data: {{\"n\":{i}}}\n\n").len())
            .sum::<usize>()
    );
    assert!(frames <= 3, "{frames} frames for one write");
}

#[tokio::test]
async fn a_reused_connection_closed_under_a_request_replays_only_what_is_safe() {
    // The server's keep-alive timer fires as the second request arrives: it closes unanswered.
    let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let script = move |n: usize, _: &Recorded| match n {
        1 => Answer {
            writes: vec![],
            close: true,
        },
        _ => answer(ok),
    };
    // A GET without a body is idempotent: it goes out again on a new connection.
    let up = Raw::start(script).await;
    let c = up.client();
    assert_eq!(get_text(&c, "/first").await.1, "ok");
    assert_eq!(get_text(&c, "/second").await.1, "ok");
    assert_eq!(up.connections(), 2);
    let paths: Vec<_> = up.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/first", "/second", "/second"]);

    // A POST may have been acted on: it is not sent twice.
    let up = Raw::start(script).await;
    let c = up.client();
    assert_eq!(get_text(&c, "/first").await.1, "ok");
    match send(&c, request(Method::POST, "/generate", full("{}"))).await {
        Err(SendError::Http(HttpError::Closed)) => {}
        other => panic!("expected Closed, got {:?}", other.map(|r| r.status())),
    }
    assert_eq!(up.requests().len(), 2);
}

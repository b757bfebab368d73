//! Test support: a scripted upstream on raw TCP that controls its write boundaries and records
//! what it received and when the proxy hung up, plus helpers to start shenhe on port 0.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// One step of a scripted response body.
#[derive(Clone)]
pub enum Step {
    /// Write these bytes in one write (one HTTP chunk when chunked), then flush.
    Write(Bytes),
    /// Pause.
    Sleep(Duration),
    /// Wait until the test calls `notify_one()` on this gate.
    Gate(Arc<Notify>),
}

/// A scripted response.
#[derive(Clone)]
pub struct Script {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub steps: Vec<Step>,
    /// Send the body with chunked encoding (true) or close-delimited (false).
    pub chunked: bool,
    /// Pause before the status line (first-byte timeouts).
    pub head_delay: Duration,
    /// Close the connection after this (chunked) response, as a server whose keep-alive
    /// timeout ran out would, without saying so in a header.
    pub then_close: bool,
}

impl Script {
    pub fn json(body: &str) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            steps: vec![Step::Write(Bytes::from(body.to_string()))],
            chunked: true,
            head_delay: Duration::ZERO,
            then_close: false,
        }
    }

    /// An SSE response whose writes are exactly `writes` (each one write), in order.
    pub fn sse_writes(writes: Vec<String>) -> Self {
        Self {
            status: 200,
            headers: vec![
                ("content-type".into(), "text/event-stream".into()),
                ("cache-control".into(), "no-cache".into()),
            ],
            steps: writes
                .into_iter()
                .flat_map(|w| {
                    [
                        Step::Write(Bytes::from(w)),
                        Step::Sleep(Duration::from_millis(2)),
                    ]
                })
                .collect(),
            chunked: true,
            head_delay: Duration::ZERO,
            then_close: false,
        }
    }

    pub fn with_status(mut self, s: u16) -> Self {
        self.status = s;
        self
    }

    pub fn then_close(mut self) -> Self {
        self.then_close = true;
        self
    }

    pub fn with_header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("upstream got JSON")
    }
}

#[derive(Default)]
pub struct Log {
    pub requests: Vec<Recorded>,
    /// When the proxy closed a connection before the script finished, and how many steps were written.
    pub disconnects: Vec<(Instant, usize)>,
    /// Scripts that ran to the end.
    pub completed: usize,
    /// Connections accepted.
    pub connections: usize,
}

type Handler = Arc<dyn Fn(&Recorded) -> Script + Send + Sync>;

pub struct Upstream {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Log>>,
    pub disconnected: Arc<Notify>,
}

impl Upstream {
    pub async fn start(handler: impl Fn(&Recorded) -> Script + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let disconnected = Arc::new(Notify::new());
        let handler: Handler = Arc::new(handler);
        let (l, d) = (log.clone(), disconnected.clone());
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                l.lock().unwrap().connections += 1;
                let (h, l, d) = (handler.clone(), l.clone(), d.clone());
                tokio::spawn(async move { serve_conn(sock, h, l, d).await });
            }
        });
        Self {
            addr,
            log,
            disconnected,
        }
    }

    /// Always answer with the same script.
    pub async fn fixed(script: Script) -> Self {
        Self::start(move |_| script.clone()).await
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().requests.clone()
    }

    pub fn disconnects(&self) -> Vec<(Instant, usize)> {
        self.log.lock().unwrap().disconnects.clone()
    }

    pub fn completed(&self) -> usize {
        self.log.lock().unwrap().completed
    }

    pub fn connections(&self) -> usize {
        self.log.lock().unwrap().connections
    }
}

/// Read one request (head and body, by Content-Length or chunked) from a connection.
pub async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Recorded> {
    let head_end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p;
        }
        let mut tmp = [0u8; 8192];
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let first = lines.next()?;
    let mut parts = first.split(' ');
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < len {
            let mut tmp = [0u8; 8192];
            let n = sock.read(&mut tmp).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        body = buf.drain(..len).collect();
    } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let line_end = loop {
                if let Some(p) = find(buf, b"\r\n") {
                    break p;
                }
                let mut tmp = [0u8; 8192];
                let n = sock.read(&mut tmp).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&tmp[..n]);
            };
            let size_line = String::from_utf8_lossy(&buf[..line_end]).to_string();
            let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                let mut tmp = [0u8; 8192];
                let n = sock.read(&mut tmp).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
            if size == 0 {
                break;
            }
        }
    }
    Some(Recorded {
        method,
        path,
        headers,
        body,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn serve_conn(
    mut sock: TcpStream,
    handler: Handler,
    log: Arc<Mutex<Log>>,
    disconnected: Arc<Notify>,
) {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut sock, &mut buf).await {
        let script = handler(&req);
        log.lock().unwrap().requests.push(req);
        if !script.head_delay.is_zero() {
            tokio::time::sleep(script.head_delay).await;
        }
        let mut head = format!("HTTP/1.1 {} Scripted\r\n", script.status);
        for (k, v) in &script.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if script.chunked {
            head.push_str("transfer-encoding: chunked\r\n");
        } else {
            head.push_str("connection: close\r\n");
        }
        head.push_str("\r\n");
        if sock.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let (mut rd, mut wr) = sock.split();
        let mut written = 0usize;
        let mut hung_up = false;
        for step in &script.steps {
            // While waiting, watch the read side: EOF means the proxy closed the connection.
            let wait = async {
                match step {
                    Step::Write(b) => {
                        let ok = if script.chunked {
                            let mut frame = format!("{:x}\r\n", b.len()).into_bytes();
                            frame.extend_from_slice(b);
                            frame.extend_from_slice(b"\r\n");
                            wr.write_all(&frame).await.is_ok()
                        } else {
                            wr.write_all(b).await.is_ok()
                        };
                        ok && wr.flush().await.is_ok()
                    }
                    Step::Sleep(d) => {
                        tokio::time::sleep(*d).await;
                        true
                    }
                    Step::Gate(n) => {
                        n.notified().await;
                        true
                    }
                }
            };
            let mut probe = [0u8; 1];
            let ok = tokio::select! {
                ok = wait => ok,
                r = rd.read(&mut probe) => !matches!(r, Ok(0) | Err(_)),
            };
            if !ok {
                hung_up = true;
                break;
            }
            if matches!(step, Step::Write(_)) {
                written += 1;
            }
        }
        if hung_up {
            log.lock()
                .unwrap()
                .disconnects
                .push((Instant::now(), written));
            disconnected.notify_waiters();
            return;
        }
        if script.chunked {
            if wr.write_all(b"0\r\n\r\n").await.is_err() {
                return;
            }
            log.lock().unwrap().completed += 1;
            if script.then_close {
                let _ = wr.shutdown().await;
                return;
            }
        } else {
            log.lock().unwrap().completed += 1;
            let _ = wr.shutdown().await;
            return;
        }
    }
}

/// A running shenhe for a test, with its config file kept alive.
pub struct Proxy {
    pub running: shenhe::server::Running,
    pub dir: tempfile::TempDir,
}

impl Proxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.running.public_addr, path)
    }
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.running.admin_addr, path)
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("shenhe.yaml")
    }
    pub fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("audit")
    }
    /// Every audit record written so far (waits briefly for the writer to catch up).
    pub async fn records(&self, min: usize) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut out = Vec::new();
            if let Ok(rd) = std::fs::read_dir(self.audit_dir()) {
                let mut files: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
                files.sort();
                for f in files {
                    let text = std::fs::read_to_string(&f).unwrap_or_default();
                    out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
                }
            }
            if out.len() >= min || std::time::Instant::now() > deadline {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Start shenhe on ports 0 in front of `upstream`; `extra_yaml` is merged over the base config.
pub async fn proxy(upstream: &str, extra_yaml: &str) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let audit_dir = dir.path().join("audit");
    let base = format!(
        "server:\n  listen: \"127.0.0.1:0\"\n  admin_listen: \"127.0.0.1:0\"\n  shutdown_grace: \"5s\"\nupstream:\n  base_url: \"{upstream}\"\naudit:\n  dir: \"{}\"\n  fsync: always\nlabels:\n  explicit: {{ enabled: false }}\n  implicit: {{ enabled: false }}\n",
        audit_dir.display()
    );
    let mut tree: serde_yaml_ng::Value = serde_yaml_ng::from_str(&base).unwrap();
    if !extra_yaml.trim().is_empty() {
        let extra: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(extra_yaml).expect("test YAML parses");
        merge(&mut tree, extra);
    }
    let yaml = serde_yaml_ng::to_string(&tree).unwrap();
    let path = dir.path().join("shenhe.yaml");
    std::fs::write(&path, yaml).unwrap();
    let loaded = shenhe::config::Config::load(&path).expect("test config is valid");
    let running = shenhe::server::start(loaded).await.expect("shenhe starts");
    Proxy { running, dir }
}

/// Deep-merge `over` into `base` (mappings merge, everything else replaces).
pub fn merge(base: &mut serde_yaml_ng::Value, over: serde_yaml_ng::Value) {
    use serde_yaml_ng::Value;
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// The body of a GET on the admin listener.
pub async fn admin_text(p: &Proxy, path: &str) -> String {
    client()
        .get(p.admin_url(path))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .no_gzip()
        .build()
        .unwrap()
}

/// `data: {json}\n\n` for an OpenAI chat chunk carrying `content` for choice 0.
pub fn chat_chunk(content: &str) -> String {
    let v = serde_json::json!({
        "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]
    });
    format!("data: {v}\n\n")
}

pub fn chat_finish() -> String {
    let v = serde_json::json!({
        "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    });
    format!("data: {v}\n\ndata: [DONE]\n\n")
}

/// YAML that turns labels on with a fresh key in `dir` (explicit at the end, implicit signed).
pub fn labels_yaml(dir: &std::path::Path) -> String {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (private, _) = shenhe::label::keygen(&keys).unwrap();
    format!(
        "labels:\n  explicit: {{ enabled: true, position: end }}\n  implicit: {{ enabled: true, producer: \"test-producer\", signing_key_file: \"{}\" }}\n",
        private.display()
    )
}

/// Verify an AIGC record (JSON value) against the proxy's published key and the delivered text.
pub async fn verify_aigc(
    p: &Proxy,
    aigc: &serde_json::Value,
    delivered: &str,
) -> Result<(), String> {
    use sha2::Digest as _;
    let pem = admin_text(p, "/admin/labels/public-key").await;
    let key = shenhe::label::public_key_from_pem(&pem).map_err(|e| e.to_string())?;
    let a = shenhe::label::Aigc::from_json(&aigc.to_string()).map_err(|e| e.to_string())?;
    let digest: [u8; 32] = sha2::Sha256::digest(delivered.as_bytes()).into();
    shenhe::label::verify(&key, &a, &digest)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// `event: <name>\ndata: <json>\n\n`: a named SSE event (Anthropic, OpenAI Responses).
pub fn named_event(name: &str, v: &serde_json::Value) -> String {
    format!("event: {name}\ndata: {v}\n\n")
}

/// An Anthropic Messages event named after its `type`.
pub fn anthropic_event(v: serde_json::Value) -> String {
    let name = v["type"].as_str().unwrap_or("unknown").to_string();
    named_event(&name, &v)
}

pub fn anthropic_start() -> String {
    anthropic_event(serde_json::json!({"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test", "content": [],
        "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 5, "output_tokens": 1}}}))
}

/// `content_block_start` for a block of `kind` (`text`, `thinking`, `tool_use`).
pub fn anthropic_block_start(index: u32, kind: &str) -> String {
    let block = match kind {
        "text" => serde_json::json!({"type": "text", "text": ""}),
        "thinking" => serde_json::json!({"type": "thinking", "thinking": "", "signature": ""}),
        _ => {
            serde_json::json!({"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}})
        }
    };
    anthropic_event(
        serde_json::json!({"type": "content_block_start", "index": index, "content_block": block}),
    )
}

/// A `content_block_delta` of `kind` (`text`, `thinking`, `tool_use`) carrying `text`.
pub fn anthropic_delta(index: u32, kind: &str, text: &str) -> String {
    let delta = match kind {
        "text" => serde_json::json!({"type": "text_delta", "text": text}),
        "thinking" => serde_json::json!({"type": "thinking_delta", "thinking": text}),
        _ => serde_json::json!({"type": "input_json_delta", "partial_json": text}),
    };
    anthropic_event(
        serde_json::json!({"type": "content_block_delta", "index": index, "delta": delta}),
    )
}

pub fn anthropic_block_stop(index: u32) -> String {
    anthropic_event(serde_json::json!({"type": "content_block_stop", "index": index}))
}

/// `message_delta` (end_turn) and `message_stop`.
pub fn anthropic_end() -> String {
    [
        anthropic_event(serde_json::json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 12}})),
        anthropic_event(serde_json::json!({"type": "message_stop"})),
    ]
    .concat()
}

/// A whole Anthropic stream: one text block whose deltas are `texts`, with a ping.
pub fn anthropic_text_stream(texts: &[&str]) -> Vec<String> {
    let mut w = vec![
        anthropic_start(),
        anthropic_block_start(0, "text"),
        anthropic_event(serde_json::json!({"type": "ping"})),
    ];
    w.extend(texts.iter().map(|t| anthropic_delta(0, "text", t)));
    w.push(anthropic_block_stop(0));
    w.push(anthropic_end());
    w
}

/// A Responses stream event named after its `type`, with a sequence number.
pub fn responses_event(seq: u64, mut v: serde_json::Value) -> String {
    v["sequence_number"] = serde_json::json!(seq);
    let name = v["type"].as_str().unwrap_or("unknown").to_string();
    named_event(&name, &v)
}

/// The `response` object of a Responses stream with `status` and `output`.
pub fn responses_object(status: &str, output: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"id": "resp_1", "object": "response", "created_at": 1, "model": "gpt-test",
        "status": status, "output": output, "incomplete_details": null, "error": null,
        "instructions": null, "metadata": {}, "parallel_tool_calls": true, "temperature": 1.0,
        "tool_choice": "auto", "tools": [], "top_p": 1.0})
}

/// A whole Responses stream: one message whose `output_text` deltas are `texts`, then the
/// `.done` events and `response.completed` repeating the whole text.
pub fn responses_text_stream(texts: &[&str]) -> Vec<String> {
    use serde_json::json;
    let full: String = texts.concat();
    let mut seq = 0u64;
    let mut next = || {
        seq += 1;
        seq
    };
    let item = |status: &str, text: Option<&str>| {
        let content = match text {
            Some(t) => {
                json!([{"type": "output_text", "text": t, "annotations": [], "logprobs": []}])
            }
            None => json!([]),
        };
        json!({"type": "message", "id": "msg_1", "status": status, "role": "assistant", "content": content})
    };
    let mut w = vec![
        responses_event(
            next(),
            json!({"type": "response.created", "response": responses_object("in_progress", json!([]))}),
        ),
        responses_event(
            next(),
            json!({"type": "response.in_progress", "response": responses_object("in_progress", json!([]))}),
        ),
        responses_event(
            next(),
            json!({"type": "response.output_item.added", "output_index": 0, "item": item("in_progress", None)}),
        ),
        responses_event(
            next(),
            json!({"type": "response.content_part.added", "output_index": 0, "content_index": 0, "item_id": "msg_1",
            "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
        ),
    ];
    for t in texts {
        w.push(responses_event(
            next(),
            json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0,
            "item_id": "msg_1", "delta": t, "logprobs": []}),
        ));
    }
    w.push(responses_event(
        next(),
        json!({"type": "response.output_text.done", "output_index": 0, "content_index": 0,
        "item_id": "msg_1", "text": full, "logprobs": []}),
    ));
    w.push(responses_event(next(), json!({"type": "response.content_part.done", "output_index": 0, "content_index": 0, "item_id": "msg_1",
        "part": {"type": "output_text", "text": full, "annotations": [], "logprobs": []}})));
    w.push(responses_event(next(), json!({"type": "response.output_item.done", "output_index": 0, "item": item("completed", Some(&full))})));
    w.push(responses_event(
        next(),
        json!({"type": "response.completed",
        "response": responses_object("completed", json!([item("completed", Some(&full))]))}),
    ));
    w
}

/// The JSON payloads of an SSE body with their event names, in order.
pub fn sse_events(text: &str) -> Vec<(Option<String>, serde_json::Value)> {
    text.split("\n\n")
        .filter_map(|ev| {
            let mut name = None;
            let mut data = Vec::new();
            for l in ev.lines() {
                if let Some(n) = l.strip_prefix("event:") {
                    name = Some(n.trim().to_string());
                } else if let Some(d) = l.strip_prefix("data:") {
                    data.push(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            let v = serde_json::from_str(&data.join("\n")).ok()?;
            Some((name, v))
        })
        .collect()
}

/// POST a JSON body to the proxy.
pub async fn post_json(p: &Proxy, path: &str, body: &serde_json::Value) -> reqwest::Response {
    client()
        .post(p.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// Wait until the upstream saw the proxy hang up.
pub async fn wait_disconnect(up: &Upstream) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while up.disconnects().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("upstream request closed");
}

/// The PostgreSQL server the store tests use (`SHENHE_TEST_DATABASE_URL`, default the local one).
pub fn database_url() -> String {
    std::env::var("SHENHE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Drop a test's own table; fails loudly when PostgreSQL cannot be reached.
pub async fn drop_table(table: &str) {
    let (client, conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL reachable");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
        .await
        .expect("drop test table");
}

//! Proxy core: fidelity, streaming, disconnects, errors in the API's shape, shutdown, `shenhe check`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use support::*;
use tokio::sync::Notify;

#[tokio::test]
async fn passthrough_json_and_headers_are_byte_identical() {
    let body = r#"{"object":"list","data":[{"id":"m","object":"model"}],  "odd spacing" : true}"#;
    let up = Upstream::fixed(
        Script::json(body)
            .with_status(203)
            .with_header("x-upstream-thing", "kept")
            .with_header("connection", "x-hop")
            .with_header("x-hop", "dropped"),
    )
    .await;
    let p = proxy(&up.base_url(), "").await;
    let resp = client()
        .get(p.url("/v1/models?limit=2"))
        .header("x-client-thing", "forwarded")
        .header("x-request-id", "req-abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 203);
    assert_eq!(resp.headers()["x-upstream-thing"], "kept");
    assert!(resp.headers().get("x-hop").is_none());
    assert_eq!(resp.headers()["x-request-id"], "req-abc");
    assert_eq!(resp.bytes().await.unwrap(), Bytes::from(body));
    let rec = &up.requests()[0];
    assert_eq!(rec.path, "/v1/models?limit=2");
    assert_eq!(rec.header("x-client-thing"), Some("forwarded"));
    assert_eq!(rec.header("x-request-id"), Some("req-abc"));
    assert_eq!(rec.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(rec.header("x-forwarded-proto"), Some("http"));
}

const RAW_ROUTE: &str = "routes:\n  paths:\n    /v1/raw/chat: passthrough\n";

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let up = Upstream::fixed(Script::json(r#"{"choices":[]}"#)).await;
    let one_worker = format!("{RAW_ROUTE}server:\n  workers: 1\n");
    let p = proxy(&up.base_url(), &one_worker).await;
    for path in ["/v1/models", "/v1/raw/chat", "/v1/chat/completions"] {
        let resp = if path == "/v1/models" {
            client().get(p.url(path)).send().await.unwrap()
        } else {
            let msg =
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            post_json(&p, path, &msg).await
        };
        assert_eq!(resp.status(), 200, "{path}");
        resp.bytes().await.unwrap();
    }
    assert_eq!(up.requests().len(), 3);
    assert_eq!(
        up.connections(),
        1,
        "one keep-alive connection serves every request"
    );
    let host = up.requests()[0].header("host").map(str::to_string);
    assert_eq!(host.as_deref(), Some(up.addr.to_string().as_str()));
}

#[tokio::test]
async fn each_worker_thread_keeps_its_own_upstream_connections() {
    let up = Upstream::fixed(Script::json(r#"{"choices":[]}"#)).await;
    let p = proxy(&up.base_url(), "server:\n  workers: 3\n").await;
    // One client connection per request, taken by whichever worker accepts it; one after the
    // other, so a worker's upstream connection is idle again when it serves its next request.
    for i in 0..24 {
        let resp = client().get(p.url("/v1/models")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        resp.bytes().await.unwrap();
    }
    assert_eq!(up.requests().len(), 24);
    let conns = up.connections();
    assert!(
        (1..=3).contains(&conns),
        "{conns} upstream connections for 3 workers"
    );
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_replaced() {
    // The model server closes each connection right after answering (its keep-alive timeout
    // ran out), without a `connection: close` header: the next request must not fail.
    let up = Upstream::fixed(Script::json(r#"{"ok":true}"#).then_close()).await;
    let p = proxy(&up.base_url(), "").await;
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let resp = client().get(p.url("/v1/models")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(resp.bytes().await.unwrap(), Bytes::from(r#"{"ok":true}"#));
    }
    assert_eq!(up.connections(), 3);
}

#[tokio::test]
async fn events_that_arrive_together_are_delivered_in_few_writes() {
    // 200 events in one upstream write: shenhe forwards what one read brought in with one write
    // instead of one write per event, so the client sees far fewer than 200 body chunks.
    let events: String = (0..200)
        .map(|i| format!("data: {{\"n\":{i}}}\n\n"))
        .collect();
    let up = Upstream::fixed(Script::sse_writes(vec![events.clone()])).await;
    let p = proxy(&up.base_url(), RAW_ROUTE).await;
    let resp = post_json(&p, "/v1/raw/chat", &serde_json::json!({"stream": true})).await;
    let mut chunks = 0;
    let mut got = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(c) = body.next().await {
        got.extend_from_slice(&c.unwrap());
        chunks += 1;
    }
    assert_eq!(got, events.as_bytes());
    assert!(chunks < 20, "{chunks} chunks for one upstream write");
}

#[tokio::test]
async fn request_id_is_generated_when_absent() {
    let up = Upstream::fixed(Script::json("{}")).await;
    let p = proxy(&up.base_url(), "").await;
    let resp = client().get(p.url("/v1/models")).send().await.unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(up.requests()[0].header("x-request-id"), Some(id.as_str()));
}

#[tokio::test]
async fn passthrough_post_body_and_sse_are_byte_identical() {
    let events = vec![
        ": comment line\n\n".to_string(),
        "event: custom\ndata: {\"a\":1}\n\n".to_string(),
        "data: partial".to_string(),
        " event\r\n\r\n".to_string(),
        "data: [DONE]\n\n".to_string(),
    ];
    let expected: String = events.concat();
    let up = Upstream::fixed(Script::sse_writes(events)).await;
    let p = proxy(
        &up.base_url(),
        "routes:\n  paths:\n    /v1/raw/stream: passthrough\n",
    )
    .await;
    let req_body = "{\"prompt\": \"x\", \"n\": 1}\n";
    let resp = client()
        .post(p.url("/v1/raw/stream"))
        .header("content-type", "application/json")
        .body(req_body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.text().await.unwrap(), expected);
    let rec = &up.requests()[0];
    assert_eq!(rec.body, req_body.as_bytes());
    assert_eq!(
        rec.header("content-length"),
        Some(req_body.len().to_string().as_str())
    );
}

#[tokio::test]
async fn passthrough_answers_keep_the_upstream_framing() {
    // A length-framed answer reaches the client with the same Content-Length; a chunked one
    // stays chunked, with no length made up.
    let body = "{\"id\":\"x\",\"choices\":[]}";
    let mut framed = Script::json(body);
    framed.chunked = false;
    framed
        .headers
        .push(("content-length".into(), body.len().to_string()));
    let routes = "routes:\n  paths:\n    /v1/raw/chat: passthrough\n";
    for (script, length) in [(framed, Some(body.len())), (Script::json(body), None)] {
        let up = Upstream::fixed(script).await;
        let p = proxy(&up.base_url(), routes).await;
        let resp = client()
            .post(p.url("/v1/raw/chat"))
            .body("{}")
            .send()
            .await
            .unwrap();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        match length {
            Some(n) => {
                assert_eq!(header("content-length"), Some(n.to_string()));
                assert_eq!(header("transfer-encoding"), None);
            }
            None => {
                assert_eq!(header("content-length"), None);
                assert_eq!(header("transfer-encoding").as_deref(), Some("chunked"));
            }
        }
        assert_eq!(resp.text().await.unwrap(), body);
    }
}

#[tokio::test]
async fn answers_to_head_keep_the_length_of_the_body_they_stand_for() {
    // A HEAD answer has no body, but its Content-Length says how long the GET's would be: a
    // client sizing a download reads it, so it must survive the proxy.
    let mut script = Script::json("");
    script.steps.clear();
    script.chunked = false;
    script
        .headers
        .push(("content-length".into(), "1234".into()));
    let up = Upstream::fixed(script).await;
    let p = proxy(
        &up.base_url(),
        "routes:\n  paths:\n    /v1/raw/files: passthrough\n",
    )
    .await;
    let resp = client().head(p.url("/v1/raw/files")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()),
        Some("1234")
    );
    assert!(resp.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn streams_are_not_buffered() {
    // The upstream will not send its last event until the client has seen the first one.
    let gate = Arc::new(Notify::new());
    let mut script = Script::sse_writes(vec![chat_chunk("first")]);
    script.steps.push(Step::Gate(gate.clone()));
    script.steps.push(Step::Write(Bytes::from(chat_finish())));
    let up = Upstream::fixed(script).await;
    let p = proxy(
        &up.base_url(),
        "routes:\n  paths:\n    /v1/raw/stream: passthrough\n",
    )
    .await;
    let resp = client()
        .post(p.url("/v1/raw/stream"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("first event arrives while the upstream still holds the rest")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("first"));
    gate.notify_one();
    let mut rest = Vec::new();
    while let Some(b) = stream.next().await {
        rest.extend_from_slice(&b.unwrap());
    }
    assert!(String::from_utf8_lossy(&rest).contains("[DONE]"));
}

#[tokio::test]
async fn client_disconnect_reaches_the_upstream_within_100ms() {
    let gate = Arc::new(Notify::new());
    let mut script = Script::sse_writes(vec![chat_chunk("first")]);
    // Keep the stream open, silent, until the client leaves.
    script.steps.push(Step::Gate(gate.clone()));
    let up = Upstream::fixed(script).await;
    let p = proxy(
        &up.base_url(),
        "routes:\n  paths:\n    /v1/raw/stream: passthrough\n",
    )
    .await;
    let resp = client()
        .post(p.url("/v1/raw/stream"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let _ = stream.next().await.unwrap().unwrap();
    let notified = up.disconnected.notified();
    let dropped_at = Instant::now();
    drop(stream);
    tokio::time::timeout(Duration::from_secs(5), notified)
        .await
        .expect("upstream sees the disconnect");
    let (seen_at, written) = up.disconnects()[0];
    let lag = seen_at.duration_since(dropped_at);
    assert!(
        lag < Duration::from_millis(100),
        "upstream saw the disconnect after {lag:?}"
    );
    assert_eq!(written, 1);
}

async fn error_json(resp: reqwest::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["content-type"], "application/json");
    (
        status,
        serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap(),
    )
}

fn assert_openai_error(v: &serde_json::Value, code: &str) {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert_eq!(e["code"], code, "{v}");
    assert!(e.get("param").is_some(), "{v}");
}

#[tokio::test]
async fn upstream_unreachable_is_502() {
    // A port that was just free: nothing listens there.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = proxy(&format!("http://{free}"), "").await;
    let (status, v) = error_json(client().get(p.url("/v1/models")).send().await.unwrap()).await;
    assert_eq!(status, 502);
    assert_openai_error(&v, "upstream_unreachable");
}

#[tokio::test]
async fn upstream_timeout_is_504() {
    let mut script = Script::json("{}");
    script.head_delay = Duration::from_secs(3);
    let up = Upstream::fixed(script).await;
    let p = proxy(
        &up.base_url(),
        "upstream:\n  timeouts: { first_byte: \"200ms\" }\n",
    )
    .await;
    let started = Instant::now();
    let (status, v) = error_json(client().get(p.url("/v1/models")).send().await.unwrap()).await;
    assert_eq!(status, 504);
    assert_openai_error(&v, "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn body_over_limit_is_413_on_every_route_kind() {
    let up = Upstream::fixed(Script::json("{}")).await;
    let p = proxy(
        &up.base_url(),
        "routes:\n  paths:\n    /v1/raw: passthrough\nserver:\n  body_limit: 1KiB\n",
    )
    .await;
    let big = format!(
        "{{\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "x".repeat(2000)
    );
    for path in ["/v1/chat/completions", "/v1/raw"] {
        let resp = client()
            .post(p.url(path))
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        let (status, v) = error_json(resp).await;
        assert_eq!(status, 413, "{path}");
        assert_openai_error(&v, "body_too_large");
    }
    // A chunked body (no declared length) over the limit is cut off too.
    let chunks = futures_util::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 512]))),
    );
    let resp = client()
        .post(p.url("/v1/raw"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert!(up.requests().iter().all(|r| r.body.len() <= 1024));
}

#[tokio::test]
async fn malformed_json_on_a_moderated_route_is_400() {
    let up = Upstream::fixed(Script::json("{}")).await;
    let p = proxy(&up.base_url(), "").await;
    for body in ["{not json", "{\"a\":1,\"a\":2}", "[1,2] trailing"] {
        let resp = client()
            .post(p.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, v) = error_json(resp).await;
        assert_eq!(status, 400, "{body}");
        assert_openai_error(&v, "invalid_json");
    }
    assert!(
        up.requests().is_empty(),
        "nothing malformed reaches the upstream"
    );
}

#[tokio::test]
async fn other_methods_on_a_moderated_route_are_405_and_preflights_are_forwarded() {
    let up = Upstream::fixed(Script::json("").with_status(204)).await;
    let p = proxy(&up.base_url(), "").await;
    // A GET (OpenAI lists stored completions there: model output nobody judged), a DELETE
    // and a PUT with a prompt in it: refused in the API's shape, naming what the route takes.
    for method in [
        reqwest::Method::GET,
        reqwest::Method::DELETE,
        reqwest::Method::PUT,
    ] {
        let resp = client()
            .request(method.clone(), p.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["allow"], "POST, OPTIONS", "{method}");
        let (status, v) = error_json(resp).await;
        assert_eq!(status, 405, "{method}");
        assert_openai_error(&v, "method_not_allowed");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(method.as_str()), "{message}");
    }
    // Anthropic's route answers in Anthropic's shape.
    let resp = client().get(p.url("/v1/messages")).send().await.unwrap();
    let (status, v) = error_json(resp).await;
    assert_eq!(status, 405);
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    let resp = client()
        .head(p.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert!(up.requests().is_empty(), "nothing reached the upstream");

    // A CORS preflight goes to the model server, without any body sent with it.
    let resp = client()
        .request(reqwest::Method::OPTIONS, p.url("/v1/chat/completions"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .body("smuggled")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "OPTIONS");
    assert_eq!(seen[0].header("origin"), Some("https://app.example"));
    assert!(
        seen[0].body.is_empty(),
        "the preflight's body stays in shenhe"
    );
}

#[tokio::test]
async fn stored_output_under_a_moderated_route_is_not_served() {
    // A response fetched by id (stored, or run in the background) was never judged on its way
    // out: shenhe does not fetch it. Deleting it is fine.
    let up = Upstream::fixed(Script::json(r#"{"id":"resp_1","output_text":"…"}"#)).await;
    let p = proxy(&up.base_url(), "").await;
    for path in [
        "/v1/responses/resp_1",
        "/v1/chat/completions/chatcmpl-1/messages",
    ] {
        let resp = client().get(p.url(path)).send().await.unwrap();
        let (status, v) = error_json(resp).await;
        assert_eq!(status, 404, "{path}");
        assert_openai_error(&v, "unknown_route");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(path),
            "{v}"
        );
    }
    // Under Anthropic's route, in Anthropic's shape.
    let resp = client()
        .get(p.url("/v1/messages/batches/b1/results"))
        .send()
        .await
        .unwrap();
    let (status, v) = error_json(resp).await;
    assert_eq!(status, 404);
    assert_eq!(v["error"]["type"], "not_found_error", "{v}");
    assert!(up.requests().is_empty(), "nothing reached the upstream");
    let resp = client()
        .delete(p.url("/v1/responses/resp_1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.requests().len(), 1);
    // With `routes.default: passthrough` the operator forwards what shenhe does not moderate.
    let open = proxy(&up.base_url(), "routes:\n  default: passthrough\n").await;
    let resp = client()
        .get(open.url("/v1/responses/resp_1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.requests().len(), 2);
}

#[tokio::test]
async fn unknown_post_route_is_404_naming_it_unless_passthrough() {
    let up = Upstream::fixed(Script::json("{\"ok\":true}")).await;
    let p = proxy(&up.base_url(), "").await;
    let (status, v) = error_json(
        client()
            .post(p.url("/v2/generate"))
            .body("{}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert_openai_error(&v, "unknown_route");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/v2/generate"));
    assert!(up.requests().is_empty());

    let p2 = proxy(&up.base_url(), "routes:\n  default: passthrough\n").await;
    let resp = client()
        .post(p2.url("/v2/generate"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn path_variants_of_moderated_routes_are_refused_or_moderated() {
    let up = Upstream::fixed(Script::json("{}")).await;
    let p = proxy(&up.base_url(), "routes:\n  default: passthrough\n").await;
    let resp = client()
        .post(p.url("/v1//chat/completions"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // Another spelling of the route goes through the moderated dialect: a bad body is refused there.
    let resp = client()
        .post(p.url("/V1/chat/completions/"))
        .header("content-type", "application/json")
        .body("{bad")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let up = Upstream::fixed(Script::json("{\"ok\":1}")).await;
    let p = proxy(&up.base_url(), "").await;
    let c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = c.get(p.url("/v1/models")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.text().await.unwrap(), "{\"ok\":1}");
}

#[tokio::test]
async fn graceful_shutdown_lets_a_running_stream_finish() {
    let gate = Arc::new(Notify::new());
    let mut script = Script::sse_writes(vec![chat_chunk("one")]);
    script.steps.push(Step::Gate(gate.clone()));
    script
        .steps
        .push(Step::Write(Bytes::from(chat_chunk("two"))));
    script.steps.push(Step::Write(Bytes::from(chat_finish())));
    let up = Upstream::fixed(script).await;
    let p = proxy(
        &up.base_url(),
        "routes:\n  paths:\n    /v1/raw/stream: passthrough\n",
    )
    .await;
    let resp = client()
        .post(p.url("/v1/raw/stream"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let _ = stream.next().await.unwrap().unwrap();
    p.running.shutdown.trigger();
    // New connections are no longer accepted once the listener is closed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(client().get(p.url("/v1/models")).send().await.is_err());
    gate.notify_one();
    let mut rest = Vec::new();
    while let Some(b) = stream.next().await {
        rest.extend_from_slice(&b.unwrap());
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(rest.contains("two") && rest.contains("[DONE]"), "{rest}");
    tokio::time::timeout(Duration::from_secs(5), p.running.task)
        .await
        .expect("server stops after draining")
        .unwrap();
}

/// The value of one sample line of Prometheus text, e.g. `name{labels} 3`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn requests_are_counted_under_their_route_template() {
    let up = Upstream::fixed(Script::json("{}")).await;
    // A template no other test uses: the registry is shared by the tests of this binary.
    let routes = "routes:\n  paths:\n    /v1/Counted/Chat: passthrough\n";
    let p = proxy(&up.base_url(), routes).await;
    for path in ["/v1/counted/chat", "/V1/Counted/Chat/"] {
        let resp = post_json(&p, path, &serde_json::json!({"x": 1})).await;
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let resp = client()
        .get(p.url("/v1/counted/chat"))
        .send()
        .await
        .unwrap();
    resp.bytes().await.unwrap();
    let text = admin_text(&p, "/metrics").await;
    let route = r#"route="/v1/Counted/Chat""#;
    assert_eq!(
        sample(
            &text,
            &format!(r#"shenhe_requests_total{{method="POST",{route},status="2xx"}}"#)
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"shenhe_requests_total{{method="GET",{route},status="2xx"}}"#)
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("shenhe_request_duration_seconds_count{{{route}}}")
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("shenhe_upstream_ttfb_seconds_count{{{route}}}")
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, &format!("shenhe_request_bytes_total{{{route}}}")),
        Some(14.0),
        "two bodies of 7 bytes"
    );
    assert_eq!(
        sample(&text, &format!("shenhe_response_bytes_total{{{route}}}")),
        Some(6.0),
        "three answers of 2 bytes"
    );
}

#[tokio::test]
async fn admin_routes_live_only_on_the_admin_listener() {
    let up = Upstream::fixed(Script::json("{}")).await;
    let p = proxy(&up.base_url(), "").await;
    let m = client().get(p.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(m.status(), 200);
    let text = m.text().await.unwrap();
    assert!(text.contains("shenhe_build_info"));
    assert_eq!(
        client()
            .get(p.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(p.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // On the public listener, /metrics is just another upstream path.
    let _ = client().get(p.url("/metrics")).send().await.unwrap();
    assert_eq!(up.requests().last().unwrap().path, "/metrics");
}

#[tokio::test]
async fn readyz_fails_when_the_probe_cannot_reach_the_upstream() {
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = proxy(
        &format!("http://{free}"),
        "upstream:\n  probe: /v1/models\n",
    )
    .await;
    assert_eq!(
        client()
            .get(p.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
}

/// A model server on TLS with a certificate from a private CA: (port, CA PEM, connections seen).
async fn tls_upstream() -> (u16, String, Arc<std::sync::atomic::AtomicUsize>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use tokio_rustls::rustls;
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = conns.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let svc =
                    hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| {
                        let host = req.headers()["host"]
                            .to_str()
                            .unwrap_or_default()
                            .to_string();
                        async move {
                            let body = format!(r#"{{"tls":true,"host":"{host}"}}"#);
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(Bytes::from(body)),
                            ))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, ca.pem(), conns)
}

#[tokio::test]
async fn https_upstream_with_a_private_ca() {
    let (port, ca_pem, conns) = tls_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let base = format!("https://localhost:{port}");
    // One worker thread: each keeps its own idle upstream connections, and the two client
    // connections below could otherwise be accepted by different workers.
    let p = proxy(
        &base,
        &format!(
            "server:\n  workers: 1\nupstream:\n  ca_file: \"{}\"\n",
            ca_path.display()
        ),
    )
    .await;
    for _ in 0..2 {
        let resp = client().get(p.url("/v1/models")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["tls"], true);
        assert_eq!(v["host"], format!("localhost:{port}"));
    }
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Without the CA the certificate is not trusted: the request fails, in the API's shape.
    let untrusting = proxy(&base, "").await;
    let resp = client()
        .get(untrusting.url("/v1/models"))
        .send()
        .await
        .unwrap();
    let (status, body) = error_json(resp).await;
    assert_eq!(status, 502);
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("TLS handshake") && msg.contains("ca_file"),
        "{msg}"
    );
}

//! The scripted model (`shenhe::demo`, the bench's load source) behind shenhe: every dialect it
//! speaks, streamed or whole, goes through shenhe's moderated route intact, and the same shapes
//! are read by the guard (a banned term in the script stops each stream the dialect's way).

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use shenhe::demo::DemoScript;
use support::*;

const POLICY: &str =
    "policy:\n  categories:\n    - { id: A1d, action: block, keywords: [\"forbiddenword\"] }\n";

const TEXT: &str = "你好，这是演示模型。Tokens from the scripted model, all of them.";

/// (path, request, concatenated text deltas of a stream, text of a whole answer)
type Dialect = (
    &'static str,
    Value,
    fn(&str) -> String,
    fn(&Value) -> String,
);

fn dialects() -> Vec<Dialect> {
    fn chat_deltas(sse: &str) -> String {
        sse_events(sse)
            .iter()
            .filter_map(|(_, v)| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect()
    }
    fn messages_deltas(sse: &str) -> String {
        sse_events(sse)
            .iter()
            .filter(|(_, v)| v["type"] == "content_block_delta")
            .filter_map(|(_, v)| v["delta"]["text"].as_str().map(str::to_string))
            .collect()
    }
    fn responses_deltas(sse: &str) -> String {
        sse_events(sse)
            .iter()
            .filter(|(_, v)| v["type"] == "response.output_text.delta")
            .filter_map(|(_, v)| v["delta"].as_str().map(str::to_string))
            .collect()
    }
    let user = json!([{"role": "user", "content": "hello"}]);
    vec![
        (
            "/v1/chat/completions",
            json!({"model": "demo", "messages": user}),
            chat_deltas,
            |v| {
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            },
        ),
        (
            "/v1/messages",
            json!({"model": "demo", "max_tokens": 100, "messages": user}),
            messages_deltas,
            |v| {
                v["content"][0]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            },
        ),
        (
            "/v1/responses",
            json!({"model": "demo", "input": "hello"}),
            responses_deltas,
            |v| {
                v["output"][0]["content"][0]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            },
        ),
    ]
}

async fn start(text: &str) -> (String, Proxy) {
    let script = DemoScript {
        text: text.into(),
        chunk_chars: 3,
        delay: Duration::ZERO,
        tokens: 0,
    };
    let (addr, _task) = shenhe::demo::spawn("127.0.0.1:0".parse().unwrap(), script)
        .await
        .unwrap();
    let base = format!("http://{addr}");
    let p = proxy(&base, POLICY).await;
    (base, p)
}

async fn post(url: &str, body: &Value) -> String {
    client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn with_stream(req: &Value, stream: bool) -> Value {
    let mut r = req.clone();
    r["stream"] = json!(stream);
    r
}

fn types(sse: &str) -> Vec<String> {
    sse_events(sse)
        .iter()
        .map(|(name, v)| {
            // Named events are named after their type.
            if let Some(n) = name {
                assert_eq!(Some(n.as_str()), v["type"].as_str(), "{sse}");
            }
            v["type"].as_str().unwrap_or("chunk").to_string()
        })
        .collect()
}

#[tokio::test]
async fn every_dialect_passes_the_moderated_route_byte_identical() {
    let (model, p) = start(TEXT).await;
    for (path, req, deltas, whole_text) in dialects() {
        let direct = post(&format!("{model}{path}"), &with_stream(&req, true)).await;
        let proxied = post(&p.url(path), &with_stream(&req, true)).await;
        assert_eq!(deltas(&direct), TEXT, "{path}: {direct}");
        assert_eq!(proxied, direct, "{path}");

        let direct = post(&format!("{model}{path}"), &with_stream(&req, false)).await;
        let proxied = post(&p.url(path), &with_stream(&req, false)).await;
        let direct: Value = serde_json::from_str(&direct).unwrap();
        let proxied: Value = serde_json::from_str(&proxied).unwrap();
        assert_eq!(whole_text(&direct), TEXT, "{path}: {direct}");
        assert_eq!(proxied, direct, "{path}");
    }
}

#[tokio::test]
async fn stream_shapes_are_the_apis_own() {
    let (model, _p) = start(TEXT).await;
    let n = TEXT.chars().count().div_ceil(3);
    let stream = |path: &str| {
        let (_, req, _, _) = dialects().into_iter().find(|d| d.0 == path).unwrap();
        let url = format!("{model}{path}");
        async move { post(&url, &with_stream(&req, true)).await }
    };

    let sse = stream("/v1/messages").await;
    let mut want = vec!["message_start", "content_block_start", "ping"];
    want.extend(vec!["content_block_delta"; n]);
    want.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(types(&sse), want, "{sse}");
    let evs = sse_events(&sse);
    assert_eq!(evs[evs.len() - 2].1["delta"]["stop_reason"], "end_turn");
    assert_eq!(evs[evs.len() - 2].1["usage"]["output_tokens"], n);

    let sse = stream("/v1/responses").await;
    let mut want = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    want.extend(vec!["response.output_text.delta"; n]);
    want.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(types(&sse), want, "{sse}");
    let evs = sse_events(&sse);
    for (i, (_, v)) in evs.iter().enumerate() {
        assert_eq!(v["sequence_number"], i, "{sse}");
    }
    let done = &evs.last().unwrap().1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], TEXT);
    assert_eq!(evs[n + 4].1["text"], TEXT);

    let sse = stream("/v1/chat/completions").await;
    assert_eq!(types(&sse).len(), n + 1, "{sse}");
    assert!(sse.ends_with("data: [DONE]\n\n"), "{sse}");
}

#[tokio::test]
async fn a_banned_term_in_the_script_stops_every_dialect() {
    let (_, p) = start("safe start, then forbiddenword and more").await;
    for (path, req, deltas, _) in dialects() {
        let sse = post(&p.url(path), &with_stream(&req, true)).await;
        assert!(!sse.contains("forbiddenword"), "{path}: {sse}");
        assert!(deltas(&sse).starts_with("safe start"), "{path}: {sse}");
        let last = types(&sse).last().cloned().unwrap_or_default();
        match path {
            "/v1/messages" => {
                assert_eq!(last, "message_stop", "{sse}");
                assert!(sse.contains("\"stop_reason\":\"refusal\""), "{sse}");
            }
            "/v1/responses" => assert_eq!(last, "response.incomplete", "{sse}"),
            _ => assert!(
                sse.contains("\"finish_reason\":\"content_filter\""),
                "{sse}"
            ),
        }
    }
}

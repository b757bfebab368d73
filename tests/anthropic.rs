//! Anthropic Messages through shenhe: prompts judged in every text field, streams stopped per
//! content block and kind with Anthropic's own clean end, whole answers refused or redacted,
//! labels on streams and bodies, byte fidelity for what the policy leaves alone.

mod support;

use serde_json::{json, Value};
use support::*;

const POLICY: &str = r#"
policy:
  categories:
    - { id: A1d, action: block, keywords: ["炸弹", "forbiddenword"] }
    - { id: pii-demo, action: redact, keywords: ["secret123"] }
"#;

fn req(stream: bool) -> Value {
    json!({"model": "claude-test", "max_tokens": 100, "stream": stream,
        "messages": [{"role": "user", "content": "hello"}]})
}

async fn run(writes: Vec<String>) -> (String, Upstream) {
    let up = Upstream::fixed(Script::sse_writes(writes)).await;
    let p = proxy(&up.base_url(), POLICY).await;
    let text = post_json(&p, "/v1/messages", &req(true))
        .await
        .text()
        .await
        .unwrap();
    (text, up)
}

/// Concatenated text of `kind` (`text`, `thinking`, `partial_json`) across the stream.
fn streamed(text: &str, field: &str) -> String {
    sse_events(text)
        .iter()
        .filter(|(_, v)| v["type"] == "content_block_delta")
        .filter_map(|(_, v)| v["delta"][field].as_str().map(str::to_string))
        .collect()
}

/// The stream ended the Anthropic way after a stop: every started block stopped, a
/// `message_delta` with `stop_reason: refusal`, then `message_stop`; every event named.
fn assert_refusal_end(text: &str, banned: &str) {
    assert!(!text.contains(banned), "banned text leaked: {text}");
    let evs = sse_events(text);
    for (name, v) in &evs {
        assert_eq!(
            name.as_deref(),
            v["type"].as_str(),
            "event line kept: {text}"
        );
    }
    let n = evs.len();
    assert!(n >= 2, "{text}");
    assert_eq!(evs[n - 1].1["type"], "message_stop", "{text}");
    assert_eq!(evs[n - 2].1["type"], "message_delta", "{text}");
    assert_eq!(evs[n - 2].1["delta"]["stop_reason"], "refusal", "{text}");
    assert!(evs[n - 2].1["usage"]["output_tokens"].is_u64(), "{text}");
    let started: Vec<&Value> = evs
        .iter()
        .filter(|(_, v)| v["type"] == "content_block_start")
        .map(|(_, v)| &v["index"])
        .collect();
    for i in started {
        assert!(
            evs.iter()
                .any(|(_, v)| v["type"] == "content_block_stop" && &v["index"] == i),
            "block {i} left open: {text}"
        );
    }
}

#[tokio::test]
async fn text_term_split_over_two_and_three_events_is_stopped() {
    for parts in [vec!["炸", "弹"], vec!["forb", "iddenw", "ord"]] {
        let mut texts = vec!["safe start "];
        texts.extend(parts.iter().copied());
        texts.push(" after");
        let (text, up) = run(anthropic_text_stream(&texts)).await;
        assert_refusal_end(&text, &parts.concat());
        assert_eq!(streamed(&text, "text"), "safe start ");
        assert!(!text.contains(parts[0]), "a fragment leaked: {text}");
        assert!(!text.contains("after"));
        wait_disconnect(&up).await;
        assert_eq!(up.completed(), 0);
    }
}

#[tokio::test]
async fn thinking_and_tool_input_are_moderated() {
    // Thinking split over two events.
    let (text, _) = run(vec![
        anthropic_start(),
        anthropic_block_start(0, "thinking"),
        anthropic_delta(0, "thinking", "let me think "),
        anthropic_delta(0, "thinking", "炸"),
        anthropic_delta(0, "thinking", "弹 yes"),
        anthropic_block_stop(0),
        anthropic_end(),
    ])
    .await;
    assert_refusal_end(&text, "炸");
    assert_eq!(streamed(&text, "thinking"), "let me think ");

    // Tool input JSON split over three events, after a harmless text block.
    let (text, _) = run(vec![
        anthropic_start(),
        anthropic_block_start(0, "text"),
        anthropic_delta(0, "text", "calling a tool"),
        anthropic_block_stop(0),
        anthropic_block_start(1, "tool_use"),
        anthropic_delta(1, "tool_use", "{\"q\": \"forb"),
        anthropic_delta(1, "tool_use", "iddenw"),
        anthropic_delta(1, "tool_use", "ord\"}"),
        anthropic_block_stop(1),
        anthropic_end(),
    ])
    .await;
    assert_refusal_end(&text, "forbiddenword");
    assert!(!text.contains("iddenw"), "{text}");
    assert_eq!(streamed(&text, "text"), "calling a tool");
}

#[tokio::test]
async fn redaction_rewrites_deltas_and_keeps_the_event_lines() {
    let (text, _) = run(anthropic_text_stream(&["code secr", "et123 ok"])).await;
    assert!(
        !text.contains("secret123") && !text.contains("secr"),
        "{text}"
    );
    assert_eq!(streamed(&text, "text"), "code ********* ok");
    let evs = sse_events(&text);
    assert_eq!(evs.last().unwrap().1["type"], "message_stop");
    assert!(evs
        .iter()
        .any(|(_, v)| v["delta"]["stop_reason"] == "end_turn"));
    assert!(text.contains("event: content_block_delta\ndata: "));
}

#[tokio::test]
async fn benign_stream_passes_byte_identical() {
    let writes = anthropic_text_stream(&["人工智能", "生成的内容", " is fine; nothing forbidden."]);
    let expected = writes.concat();
    let (text, up) = run(writes).await;
    assert_eq!(text, expected);
    assert_eq!(up.completed(), 1);
}

#[tokio::test]
async fn stop_notice_is_a_text_block_of_its_own() {
    let up = Upstream::fixed(Script::sse_writes(anthropic_text_stream(&["ok ", "炸弹"]))).await;
    let p = proxy(
        &up.base_url(),
        &format!("{POLICY}moderation:\n  stop_notice: \"[stopped]\"\n"),
    )
    .await;
    let text = post_json(&p, "/v1/messages", &req(true))
        .await
        .text()
        .await
        .unwrap();
    assert_refusal_end(&text, "炸");
    assert_eq!(streamed(&text, "text"), "ok [stopped]");
}

#[tokio::test]
async fn prompt_refusal_in_anthropic_shape_never_reaches_the_upstream() {
    let up = Upstream::fixed(Script::json("{}")).await;
    let p = proxy(&up.base_url(), POLICY).await;
    let bodies = [
        json!({"model": "m", "max_tokens": 5, "system": "教我做炸弹", "messages": [{"role": "user", "content": "hi"}]}),
        json!({"model": "m", "max_tokens": 5, "system": [{"type": "text", "text": "forbiddenword"}], "messages": []}),
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text", "text": "炸弹"}]}]}),
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"q": "炸弹"}}]}]}),
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "forbiddenword"}]}]}),
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "炸弹"}]}]}]}),
        // A redaction inside a tool input cannot be rewritten in place: refused.
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"q": "secret123"}}]}]}),
    ];
    for body in bodies {
        let resp = post_json(&p, "/v1/messages", &body).await;
        assert_eq!(resp.status(), 400, "{body}");
        let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert!(v["error"]["message"].is_string());
        let s = v.to_string();
        assert!(
            !s.contains("炸弹") && !s.contains("forbiddenword") && !s.contains("secret123"),
            "the refusal names the term: {s}"
        );
    }
    assert!(
        up.requests().is_empty(),
        "a refused prompt reached the upstream"
    );
}

#[tokio::test]
async fn prompt_redaction_in_text_is_forwarded_rewritten() {
    let up = Upstream::fixed(Script::json(
        &json!({"id": "m", "type": "message", "role": "assistant", "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn"}).to_string(),
    ))
    .await;
    let p = proxy(&up.base_url(), POLICY).await;
    let body = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "my code is secret123"}]});
    let resp = post_json(&p, "/v1/messages", &body).await;
    assert_eq!(resp.status(), 200);
    let sent = up.requests()[0].json();
    assert_eq!(sent["messages"][0]["content"], "my code is *********");
}

#[tokio::test]
async fn a_term_split_across_blocks_or_the_system_prompt_is_refused() {
    let up = Upstream::fixed(Script::json("{}")).await;
    let p = proxy(&up.base_url(), POLICY).await;
    let blocks = json!([{"type": "text", "text": "forbid"}, {"type": "text", "text": "denword"}]);
    for body in [
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": blocks}]}),
        json!({"model": "m", "max_tokens": 5, "system": "炸", "messages": [{"role": "user", "content": "弹"}]}),
    ] {
        let resp = post_json(&p, "/v1/messages", &body).await;
        assert_eq!(resp.status(), 400, "{body}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["type"], "error");
    }
    assert!(up.requests().is_empty());
}

fn whole(content: Value) -> String {
    json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
        "content": content, "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 3, "output_tokens": 9}})
    .to_string()
}

#[tokio::test]
async fn whole_answers_are_refused_or_redacted() {
    let cases = [
        json!([{"type": "text", "text": "这是炸弹"}]),
        json!([{"type": "thinking", "thinking": "forbiddenword", "signature": "s"}, {"type": "text", "text": "ok"}]),
        json!([{"type": "text", "text": "ok"}, {"type": "tool_use", "id": "t", "name": "f", "input": {"q": "炸弹"}}]),
        json!([{"type": "tool_use", "id": "t", "name": "f", "input": {"q": "secret123"}}]),
    ];
    for content in cases {
        let up = Upstream::fixed(Script::json(&whole(content.clone()))).await;
        let p = proxy(&up.base_url(), POLICY).await;
        let resp = post_json(&p, "/v1/messages", &req(false)).await;
        assert_eq!(resp.status(), 200);
        let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        assert_eq!(v["stop_reason"], "refusal", "{content} -> {v}");
        assert_eq!(v["content"].as_array().unwrap().len(), 1);
        assert_eq!(v["content"][0]["type"], "text");
        let s = v.to_string();
        assert!(
            !s.contains("炸弹") && !s.contains("forbiddenword") && !s.contains("secret123"),
            "{s}"
        );
    }

    let body = whole(json!([{"type": "text", "text": "code secret123 ok"}]));
    let up = Upstream::fixed(Script::json(&body)).await;
    let p = proxy(&up.base_url(), POLICY).await;
    let v: Value = serde_json::from_slice(
        &post_json(&p, "/v1/messages", &req(false))
            .await
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(v["content"][0]["text"], "code ********* ok");
    assert_eq!(v["stop_reason"], "end_turn");

    // Nothing to change: the body passes byte-identical.
    let body = whole(json!([{"type": "text", "text": "天气很好"}]));
    assert_eq!(answered(&body).await, body);
}

async fn labeled(up: &Upstream) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(
        &up.base_url(),
        &format!("{POLICY}{}", labels_yaml(dir.path())),
    )
    .await;
    std::mem::forget(dir);
    p
}

#[tokio::test]
async fn streamed_labels_are_a_text_block_and_a_signed_message_delta() {
    let up = Upstream::fixed(Script::sse_writes(anthropic_text_stream(&[
        "你好",
        "，世界",
    ])))
    .await;
    let p = labeled(&up).await;
    let resp = post_json(&p, "/v1/messages", &req(true)).await;
    let header: Value =
        serde_json::from_str(resp.headers()["x-aigc-label"].to_str().unwrap()).unwrap();
    let text = resp.text().await.unwrap();
    let delivered = streamed(&text, "text");
    assert_eq!(delivered, "你好，世界\n【本内容由人工智能生成】");
    let evs = sse_events(&text);
    // The label block is a whole block of its own, with a new index, before message_delta.
    let label_at = evs
        .iter()
        .position(|(_, v)| v["delta"]["text"] == "\n【本内容由人工智能生成】")
        .unwrap();
    assert_eq!(evs[label_at].1["index"], 1);
    assert_eq!(evs[label_at - 1].1["type"], "content_block_start");
    assert_eq!(evs[label_at + 1].1["type"], "content_block_stop");
    let n = evs.len();
    assert_eq!(evs[n - 1].1["type"], "message_stop");
    let sealed = &evs[n - 2].1;
    assert_eq!(sealed["type"], "message_delta");
    assert_eq!(sealed["delta"]["stop_reason"], "end_turn");
    assert_eq!(sealed["aigc"]["ProduceID"], header["ProduceID"]);
    verify_aigc(&p, &sealed["aigc"], &delivered).await.unwrap();

    // A stopped stream is labeled too.
    let up = Upstream::fixed(Script::sse_writes(anthropic_text_stream(&["前面", "炸弹"]))).await;
    let p = labeled(&up).await;
    let text = post_json(&p, "/v1/messages", &req(true))
        .await
        .text()
        .await
        .unwrap();
    assert_refusal_end(&text, "炸");
    let delivered = streamed(&text, "text");
    assert_eq!(delivered, "前面\n【本内容由人工智能生成】");
    let evs = sse_events(&text);
    let sealed = &evs[evs.len() - 2].1;
    verify_aigc(&p, &sealed["aigc"], &delivered).await.unwrap();
}

#[tokio::test]
async fn whole_answer_labels() {
    let body = whole(
        json!([{"type": "thinking", "thinking": "hm", "signature": "s"}, {"type": "text", "text": "天气很好。"}]),
    );
    let up = Upstream::fixed(Script::json(&body)).await;
    let p = labeled(&up).await;
    let resp = post_json(&p, "/v1/messages", &req(false)).await;
    assert!(resp.headers().contains_key("x-aigc-label"));
    let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let text = v["content"][1]["text"].as_str().unwrap();
    assert_eq!(text, "天气很好。\n【本内容由人工智能生成】");
    assert_eq!(v["content"][0]["thinking"], "hm");
    verify_aigc(&p, &v["aigc"], text).await.unwrap();
}

#[tokio::test]
async fn extra_text_fields_are_moderated() {
    let writes = vec![
        anthropic_start(),
        anthropic_block_start(0, "text"),
        anthropic_event(
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "citations_delta", "citation": {"type": "char_location", "cited_text": "forbiddenword"}}}),
        ),
        anthropic_block_stop(0),
        anthropic_end(),
    ];
    let up = Upstream::fixed(Script::sse_writes(writes)).await;
    let p = proxy(
        &up.base_url(),
        &format!("{POLICY}dialects:\n  anthropic_messages:\n    extra_text_fields: [\"delta.citation.cited_text\"]\n"),
    )
    .await;
    let text = post_json(&p, "/v1/messages", &req(true))
        .await
        .text()
        .await
        .unwrap();
    assert_refusal_end(&text, "forbiddenword");
}

/// A stream of one content block per `(kind, text)`, each text in one delta.
fn blocks(blocks: &[(&str, &str)]) -> Vec<String> {
    let mut w = vec![anthropic_start()];
    for (i, (kind, text)) in blocks.iter().enumerate() {
        w.push(anthropic_block_start(i as u32, kind));
        w.push(anthropic_delta(i as u32, kind, text));
        w.push(anthropic_block_stop(i as u32));
    }
    w.push(anthropic_end());
    w
}

#[tokio::test]
async fn a_term_the_model_splits_across_text_blocks_is_found() {
    // Streamed: "炸" in text block 0, a tool call, "弹" in text block 2.
    let (text, up) = run(blocks(&[
        ("text", "safe start 炸"),
        ("tool_use", "{\"q\": \"x\"}"),
        ("text", "弹 after"),
    ]))
    .await;
    assert_refusal_end(&text, "炸弹");
    assert!(!text.contains('炸') && !text.contains("after"), "{text}");
    assert_eq!(streamed(&text, "text"), "safe start ");
    wait_disconnect(&up).await;

    // Streamed redaction across two text blocks masks each block's share.
    let (text, _) = run(blocks(&[("text", "code secr"), ("text", "et123 ok")])).await;
    assert!(!text.contains("secr") && !text.contains("et123"), "{text}");
    assert_eq!(streamed(&text, "text"), "code ********* ok");

    // Thinking and text are two texts, and a tool input is its own: nothing joins them.
    let writes = blocks(&[("thinking", "想想炸"), ("text", "弹性很好")]);
    let expected = writes.concat();
    let (text, up) = run(writes).await;
    assert_eq!(text, expected);
    assert_eq!(up.completed(), 1);

    // Whole answers: the same rules.
    let refused = [
        json!([{"type": "text", "text": "这是炸"}, {"type": "text", "text": "弹"}]),
        json!([{"type": "text", "text": "forbidden"}, {"type": "tool_use", "id": "t", "name": "f", "input": {}}, {"type": "text", "text": "word"}]),
        json!([{"type": "thinking", "thinking": "炸", "signature": "s"}, {"type": "text", "text": "ok"}, {"type": "thinking", "thinking": "弹", "signature": "s"}]),
    ];
    for content in refused {
        let v: Value = serde_json::from_str(&answered(&whole(content.clone())).await).unwrap();
        assert_eq!(v["stop_reason"], "refusal", "{content} -> {v}");
        assert!(!v.to_string().contains('炸'), "{v}");
    }
    let body =
        whole(json!([{"type": "text", "text": "code secr"}, {"type": "text", "text": "et123 ok"}]));
    let v: Value = serde_json::from_str(&answered(&body).await).unwrap();
    assert_eq!(v["content"][0]["text"], "code ****");
    assert_eq!(v["content"][1]["text"], "***** ok");
    let body = whole(
        json!([{"type": "thinking", "thinking": "想想炸", "signature": "s"}, {"type": "text", "text": "弹性很好"}]),
    );
    assert_eq!(answered(&body).await, body);
}

/// What the client gets through shenhe when the model answers `body` (not streamed).
async fn answered(body: &str) -> String {
    let up = Upstream::fixed(Script::json(body)).await;
    let p = proxy(&up.base_url(), POLICY).await;
    post_json(&p, "/v1/messages", &req(false))
        .await
        .text()
        .await
        .unwrap()
}

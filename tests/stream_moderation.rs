//! Stream-safe moderation of OpenAI-compatible traffic: no leak whatever the chunking, stop
//! means stop, fidelity for what the policy leaves alone, prompt and non-stream verdicts.

mod support;

use std::io::Write as _;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use support::*;

const POLICY: &str = r#"
policy:
  categories:
    - { id: A1d, action: block, keywords: ["炸弹", "forbiddenword"] }
    - { id: pii-demo, action: redact, keywords: ["secret123"] }
    - { id: A3a, action: flag, keywords: ["watchword"] }
"#;

fn chat_req(stream: bool) -> Value {
    json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hello"}]})
}

async fn post(p: &Proxy, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(p.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// The data payloads of an SSE body, in order.
fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|ev| {
            let lines: Vec<&str> = ev
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("data:")
                        .map(|d| d.strip_prefix(' ').unwrap_or(d))
                })
                .collect();
            (!lines.is_empty()).then(|| lines.join("\n"))
        })
        .collect()
}

/// Concatenated `delta.content` of choice `i` across the stream.
fn content_of(text: &str, choice: u64, field: &str) -> String {
    sse_data(text)
        .iter()
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .flat_map(|v| v["choices"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["index"] == choice)
        .filter_map(|c| c["delta"][field].as_str().map(str::to_string))
        .collect()
}

fn finish_reasons(text: &str) -> Vec<(u64, String)> {
    sse_data(text)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .flat_map(|v| v["choices"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| {
            Some((
                c["index"].as_u64()?,
                c["finish_reason"].as_str()?.to_string(),
            ))
        })
        .collect()
}

fn assert_stopped(text: &str, banned: &str) {
    assert!(!text.contains(banned), "banned text leaked: {text}");
    let fr = finish_reasons(text);
    assert!(
        fr.iter().any(|(_, r)| r == "content_filter"),
        "no content_filter finish: {text}"
    );
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "stream not ended with [DONE]: {text}"
    );
}

async fn run_stream(writes: Vec<String>) -> (String, Upstream) {
    run_stream_with(POLICY, writes).await
}

/// A chat stream of `writes` through shenhe with `policy`: what the client got.
async fn run_stream_with(policy: &str, writes: Vec<String>) -> (String, Upstream) {
    let up = Upstream::fixed(Script::sse_writes(writes)).await;
    let p = proxy(&up.base_url(), policy).await;
    let text = post(&p, "/v1/chat/completions", &chat_req(true))
        .await
        .text()
        .await
        .unwrap();
    (text, up)
}

#[tokio::test]
async fn term_in_one_event_is_stopped() {
    let (text, up) = run_stream(vec![
        chat_chunk("你好，"),
        chat_chunk("这是炸弹的做法"),
        chat_chunk("后面的内容"),
        chat_finish(),
    ])
    .await;
    assert_stopped(&text, "炸弹");
    // Every byte before the match arrives, none of it or after it.
    assert_eq!(content_of(&text, 0, "content"), "你好，这是");
    assert!(!text.contains("的做法") && !text.contains("后面的内容"));
    tokio::time::timeout(Duration::from_secs(5), async {
        while up.disconnects().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("upstream request closed");
}

#[tokio::test]
async fn term_split_over_two_and_three_events() {
    for parts in [vec!["炸", "弹"], vec!["forb", "iddenw", "ord"]] {
        let mut writes = vec![chat_chunk("safe start ")];
        writes.extend(parts.iter().map(|p| chat_chunk(p)));
        writes.push(chat_finish());
        let (text, _) = run_stream(writes).await;
        let banned: String = parts.concat();
        assert_stopped(&text, &banned);
        // No fragment of the banned term reached the client either.
        assert!(
            !content_of(&text, 0, "content").contains(parts[0]),
            "{text}"
        );
        assert_eq!(content_of(&text, 0, "content"), "safe start ");
    }
}

#[tokio::test]
async fn write_boundaries_inside_characters_and_events() {
    let all = [
        chat_chunk("前文"),
        chat_chunk("炸"),
        chat_chunk("弹"),
        chat_finish(),
    ]
    .concat();
    let bytes = all.as_bytes();
    // Cut inside the multi-byte 炸 and between every few bytes elsewhere.
    let cut = all.find('炸').unwrap() + 1;
    let mut writes = Vec::new();
    let mut pieces: Vec<&[u8]> = vec![&bytes[..cut], &bytes[cut..cut + 7]];
    let rest = &bytes[cut + 7..];
    pieces.extend(rest.chunks(13));
    for p in pieces {
        writes.push(Bytes::copy_from_slice(p));
    }
    let mut script = Script::sse_writes(vec![]);
    script.steps = writes
        .into_iter()
        .flat_map(|w| [Step::Write(w), Step::Sleep(Duration::from_millis(1))])
        .collect();
    let up = Upstream::fixed(script).await;
    let p = proxy(&up.base_url(), POLICY).await;
    let text = post(&p, "/v1/chat/completions", &chat_req(true))
        .await
        .text()
        .await
        .unwrap();
    assert_stopped(&text, "炸");
    assert_eq!(content_of(&text, 0, "content"), "前文");

    // Several events in one write.
    let (text, _) = run_stream(vec![[
        chat_chunk("a"),
        chat_chunk("炸"),
        chat_chunk("弹"),
        chat_finish(),
    ]
    .concat()])
    .await;
    assert_stopped(&text, "炸");
    assert_eq!(content_of(&text, 0, "content"), "a");
}

fn delta_event(choice: u64, delta: Value, extra: Value) -> String {
    let mut c = json!({"index": choice, "delta": delta, "finish_reason": null});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            c[k] = v;
        }
    }
    let v = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [c]});
    format!("data: {v}\n\n")
}

#[tokio::test]
async fn every_text_field_is_moderated() {
    let cases = vec![
        (
            "reasoning_content",
            vec![
                json!({"reasoning_content": "想想炸"}),
                json!({"reasoning_content": "弹吧"}),
            ],
        ),
        ("refusal", vec![json!({"refusal": "no 炸弹"})]),
        (
            "tool_calls",
            vec![
                json!({"tool_calls": [{"index": 0, "id": "t", "type": "function", "function": {"name": "f", "arguments": "{\"q\":\"炸"}}]}),
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "弹\"}"}}]}),
            ],
        ),
        (
            "function_call",
            vec![json!({"function_call": {"name": "f", "arguments": "forbiddenword"}})],
        ),
    ];
    for (name, deltas) in cases {
        let mut writes: Vec<String> = deltas
            .into_iter()
            .map(|d| delta_event(0, d, json!({})))
            .collect();
        writes.push(chat_finish());
        let (text, _) = run_stream(writes).await;
        assert!(
            !text.contains("炸") && !text.contains("forbiddenword"),
            "{name}: {text}"
        );
        assert!(
            finish_reasons(&text)
                .iter()
                .any(|(_, r)| r == "content_filter"),
            "{name}: {text}"
        );
    }
}

#[tokio::test]
async fn logprobs_never_reveal_held_or_blocked_text() {
    let lp = |tok: &str| json!({"logprobs": {"content": [{"token": tok, "logprob": -0.1, "bytes": null, "top_logprobs": []}]}});
    let writes = vec![
        delta_event(0, json!({"content": "ok "}), lp("ok ")),
        delta_event(0, json!({"content": "炸"}), lp("炸")),
        delta_event(0, json!({"content": "弹"}), lp("弹")),
        chat_finish(),
    ];
    let (text, _) = run_stream(writes).await;
    assert_stopped(&text, "炸");
    assert!(
        text.contains("\"token\":\"ok \""),
        "the released event keeps its logprobs: {text}"
    );
}

#[tokio::test]
async fn n2_term_only_in_choice_1() {
    let writes = vec![
        delta_event(0, json!({"content": "zero says hi"}), json!({})),
        delta_event(1, json!({"content": "one says 炸"}), json!({})),
        delta_event(1, json!({"content": "弹"}), json!({})),
        delta_event(0, json!({"content": " more"}), json!({})),
        chat_finish(),
    ];
    let (text, _) = run_stream(writes).await;
    assert_stopped(&text, "炸");
    assert_eq!(content_of(&text, 0, "content"), "zero says hi");
    let fr = finish_reasons(&text);
    assert!(
        fr.contains(&(0, "content_filter".into())) && fr.contains(&(1, "content_filter".into())),
        "{fr:?}"
    );
}

#[tokio::test]
async fn gzip_upstream_is_decoded_and_moderated() {
    let plain = [chat_chunk("前"), chat_chunk("炸弹"), chat_finish()].concat();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(plain.as_bytes()).unwrap();
    let gz = enc.finish().unwrap();
    let mut script = Script::sse_writes(vec![]);
    script
        .headers
        .push(("content-encoding".into(), "gzip".into()));
    script.steps = gz
        .chunks(7)
        .map(|c| Step::Write(Bytes::copy_from_slice(c)))
        .collect();
    let up = Upstream::fixed(script).await;
    let p = proxy(&up.base_url(), POLICY).await;
    let resp = post(&p, "/v1/chat/completions", &chat_req(true)).await;
    assert!(resp.headers().get("content-encoding").is_none());
    let text = resp.text().await.unwrap();
    assert_stopped(&text, "炸");
    assert_eq!(up.requests()[0].header("accept-encoding"), Some("identity"));
}

#[tokio::test]
async fn unicode_escaped_terms_are_seen() {
    // "\u70b8\u5f39" is 炸弹 written with JSON escapes.
    let ev = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\\u70b8\\u5f39\"},\"finish_reason\":null}]}\n\n";
    let (text, _) = run_stream(vec![chat_chunk("x"), ev.to_string(), chat_finish()]).await;
    assert_stopped(&text, "\\u70b8");
    assert!(!text.contains("炸"));
}

#[tokio::test]
async fn long_stream_is_cut_at_the_term_and_generation_stops() {
    let mut writes: Vec<String> = (0..5000).map(|i| chat_chunk(&format!("t{i} "))).collect();
    writes.push(chat_chunk("炸弹"));
    writes.extend((0..5000).map(|i| chat_chunk(&format!("u{i} "))));
    writes.push(chat_finish());
    let mut script = Script::sse_writes(vec![]);
    // A fast model: 50 events per millisecond, far faster than any real one.
    for (i, w) in writes.into_iter().enumerate() {
        script.steps.push(Step::Write(Bytes::from(w)));
        if i % 50 == 49 {
            script.steps.push(Step::Sleep(Duration::from_millis(1)));
        }
    }
    let up = Upstream::fixed(script).await;
    let p = proxy(&up.base_url(), POLICY).await;
    let text = post(&p, "/v1/chat/completions", &chat_req(true))
        .await
        .text()
        .await
        .unwrap();
    assert_stopped(&text, "炸");
    assert!(text.contains("t4999 "));
    assert!(!text.contains("u0 "));
    tokio::time::timeout(Duration::from_secs(5), async {
        while up.disconnects().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("upstream saw the disconnect");
    let (_, written) = up.disconnects()[0];
    assert!(
        written < 10_002,
        "upstream sent everything ({written} writes)"
    );
    assert_eq!(up.completed(), 0);
}

#[tokio::test]
async fn term_in_the_last_event_before_done() {
    let (text, _) = run_stream(vec![
        chat_chunk("fine "),
        chat_chunk("forbiddenword"),
        chat_finish(),
    ])
    .await;
    assert_stopped(&text, "forbiddenword");
    assert_eq!(content_of(&text, 0, "content"), "fine ");
}

#[tokio::test]
async fn benign_text_passes_byte_identical() {
    let zh = "人工智能生成的内容需要审核。这段文字完全正常，讲的是天气、历史和数学。";
    let en = "The quick brown fox jumps over the lazy dog; nothing here is forbidden at all.";
    let mut writes: Vec<String> = zh
        .chars()
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|c| chat_chunk(&c.iter().collect::<String>()))
        .collect();
    writes.extend(en.split_inclusive(' ').map(chat_chunk));
    writes.push(chat_finish());
    let expected = writes.concat();
    let (text, _) = run_stream(writes).await;
    assert_eq!(text, expected);
}

#[tokio::test]
async fn redaction_rewrites_held_text_and_flag_passes() {
    let (text, _) = run_stream(vec![
        chat_chunk("code secr"),
        chat_chunk("et123 and watchword ok"),
        chat_finish(),
    ])
    .await;
    let content = content_of(&text, 0, "content");
    assert_eq!(content, "code ********* and watchword ok");
    assert!(finish_reasons(&text).contains(&(0, "stop".into())));
}

#[tokio::test]
async fn prompt_block_never_reaches_the_upstream() {
    let up = Upstream::fixed(Script::json("{}")).await;
    let p = proxy(&up.base_url(), POLICY).await;
    let body = json!({"model": "m", "messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "教我做炸弹"}]});
    let resp = post(&p, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 400);
    let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "content_filter");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["param"], "messages");
    assert_eq!(v["error"]["innererror"]["category"], "A1d");
    assert!(
        !v.to_string().contains("炸弹"),
        "the refusal must not name the term"
    );
    assert!(up.requests().is_empty());

    // Completions prompt arrays are judged too.
    let resp = post(
        &p,
        "/v1/completions",
        &json!({"model": "m", "prompt": ["ok", "forbiddenword"]}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn prompt_redact_forwards_the_masked_text_and_flag_forwards_as_is() {
    let up = Upstream::fixed(Script::json("{\"choices\":[]}")).await;
    let p = proxy(&up.base_url(), POLICY).await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "my secret123 and watchword"}]});
    let resp = post(&p, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    let fwd = up.requests()[0].json();
    assert_eq!(fwd["messages"][0]["content"], "my ********* and watchword");
}

/// Metric `name` (no labels) now; counters are shared by the proxies of this test binary, and
/// only one test here reads `/metrics`.
async fn metric(p: &Proxy, name: &str) -> u64 {
    let text = admin_text(p, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

async fn prompt_bytes_reused(p: &Proxy) -> u64 {
    metric(p, "shenhe_prompt_bytes_reused_total").await
}

#[tokio::test]
async fn a_chat_turn_resumes_from_its_history_and_still_finds_a_term_across_the_seam() {
    let up = Upstream::fixed(Script::json("{\"choices\":[]}")).await;
    let p = proxy(&up.base_url(), POLICY).await;
    // A history long enough to be kept (`prefix.rs`, `MIN_KEPT`).
    let system_text = "You are a helpful assistant. ".repeat(10);
    let system = json!({"role": "system", "content": system_text});
    let user1 = json!({"role": "user", "content": "how to make 炸"});
    let turn1 = json!({"model": "m", "messages": [system, user1]});
    let resp = post(&p, "/v1/chat/completions", &turn1).await;
    assert_eq!(resp.status(), 200);
    // Seen once: marks only, no state kept yet.
    assert_eq!(metric(&p, "shenhe_prompt_prefix_states").await, 0);
    let marks = metric(&p, "shenhe_prompt_prefix_bytes").await;
    assert!(marks > 0);
    // The next turn passes the end of the first: the state there is kept ...
    let answer = json!({"role": "assistant", "content": "Which dish?"});
    let user2 = json!({"role": "user", "content": "fried rice"});
    let turn2 = json!({"model": "m", "messages": [system, user1, answer, user2]});
    let resp = post(&p, "/v1/chat/completions", &turn2).await;
    assert_eq!(resp.status(), 200);
    assert!(metric(&p, "shenhe_prompt_prefix_states").await >= 1);
    assert!(metric(&p, "shenhe_prompt_prefix_bytes").await > marks + 256);
    // ... so a turn that goes on from the first is not scanned again up to there ...
    let before = prompt_bytes_reused(&p).await;
    let other = json!({"role": "user", "content": "rice noodles"});
    let turn2b = json!({"model": "m", "messages": [system, user1, answer, other]});
    let resp = post(&p, "/v1/chat/completions", &turn2b).await;
    assert_eq!(resp.status(), 200);
    let history = format!("{system_text}how to make 炸").len() as u64;
    assert!(prompt_bytes_reused(&p).await >= before + history);
    // ... and a term begun at its end and finished by the new text is still found.
    let user3 = json!({"role": "user", "content": "弹 at home"});
    let turn3 = json!({"model": "m", "messages": [system, user1, user3]});
    let resp = post(&p, "/v1/chat/completions", &turn3).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "content_filter");
    assert_eq!(up.requests().len(), 3, "the last turn is not forwarded");
}

#[tokio::test]
async fn a_term_split_across_content_parts_or_messages_is_found() {
    let up = Upstream::fixed(Script::json("{\"choices\":[]}")).await;
    let p = proxy(&up.base_url(), POLICY).await;
    let parts =
        |a: &str, b: &str| json!([{"type": "text", "text": a}, {"type": "text", "text": b}]);
    for messages in [
        json!([{"role": "user", "content": parts("how to make 炸", "弹 at home")}]),
        json!([{"role": "user", "content": "forbidden"}, {"role": "user", "content": "word"}]),
        json!([{"role": "system", "content": "x 炸"}, {"role": "user", "content": parts("", "弹")}]),
        json!([{"role": "user", "content": parts("a forbid", "den")}, {"role": "user", "content": "word"}]),
    ] {
        let body = json!({"model": "m", "messages": messages});
        let resp = post(&p, "/v1/chat/completions", &body).await;
        assert_eq!(resp.status(), 400, "{messages}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["code"], "content_filter");
        assert_eq!(err["error"]["param"], "messages");
    }
    assert!(up.requests().is_empty(), "nothing is forwarded");

    // A redacted term across a seam: each part's share is masked, the rest is kept.
    let body = json!({"model": "m", "messages": [
        {"role": "user", "content": parts("my secr", "et123 and watchword")}
    ]});
    let resp = post(&p, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    let fwd = up.requests()[0].json();
    assert_eq!(
        fwd["messages"][0]["content"],
        parts("my ****", "***** and watchword")
    );

    // Texts that are clean together go through untouched.
    let raw = json!({"model": "m", "messages": [
        {"role": "user", "content": parts("炸", "鸡")}, {"role": "user", "content": "弹琴"}
    ]})
    .to_string();
    let resp = client()
        .post(p.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(raw.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.requests()[1].body, raw.as_bytes());
}

#[tokio::test]
async fn unmodified_prompts_are_forwarded_byte_identical() {
    let up = Upstream::fixed(Script::json("{\"choices\":[]}")).await;
    let p = proxy(&up.base_url(), POLICY).await;
    let raw = "{\"model\":\"m\",  \"messages\":[{\"role\":\"user\",\"content\":\"caf\\u00e9\"}], \"x\": 1.50}";
    let resp = client()
        .post(p.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.requests()[0].body, raw.as_bytes());
}

#[tokio::test]
async fn non_streaming_block_and_redact() {
    let body = json!({
        "id": "x", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "这是炸弹"}, "finish_reason": "stop", "logprobs": {"content": []}},
            {"index": 1, "message": {"role": "assistant", "content": "my secret123"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    });
    let up = Upstream::fixed(Script::json(&body.to_string())).await;
    let p = proxy(&up.base_url(), POLICY).await;
    let resp = post(&p, "/v1/chat/completions", &chat_req(false)).await;
    assert_eq!(resp.status(), 200);
    let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert!(!v.to_string().contains("炸弹"));
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .len()
            > 3
    );
    assert_eq!(v["choices"][0]["logprobs"], Value::Null);
    assert_eq!(v["choices"][1]["message"]["content"], "my *********");
    assert_eq!(v["choices"][1]["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 3);

    // Nothing to change: the body is passed byte-identical.
    let raw = "{\"id\":\"y\", \"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"fine\"},\"finish_reason\":\"stop\"}]}";
    let up = Upstream::fixed(Script::json(raw)).await;
    let p = proxy(&up.base_url(), POLICY).await;
    let resp = post(&p, "/v1/chat/completions", &chat_req(false)).await;
    assert_eq!(resp.text().await.unwrap(), raw);
}

#[tokio::test]
async fn an_answer_with_duplicate_keys_is_not_delivered() {
    // Which copy a client reads is up to its parser: neither is delivered.
    let raw = "{\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"这是炸弹\",\"content\":\"fine\"},\"finish_reason\":\"stop\"}]}";
    let up = Upstream::fixed(Script::json(raw)).await;
    let p = proxy(&up.base_url(), POLICY).await;
    let resp = post(&p, "/v1/chat/completions", &chat_req(false)).await;
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_protocol_error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("duplicate key `content`"),
        "{v}"
    );
    assert!(!v.to_string().contains("炸弹"));
}

#[tokio::test]
async fn upstream_lost_mid_stream_ends_with_an_error_event() {
    let mut script = Script::sse_writes(vec![chat_chunk("partial ")]);
    // Close-delimited body that ends without [DONE]: then the connection is cut mid-event.
    script.chunked = false;
    script.steps.push(Step::Write(Bytes::from(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x",
    )));
    let up = Upstream::fixed(script).await;
    let p = proxy(&up.base_url(), POLICY).await;
    let text = post(&p, "/v1/chat/completions", &chat_req(true))
        .await
        .text()
        .await
        .unwrap();
    let data = sse_data(&text);
    assert!(text.contains("partial "));
    assert!(data.iter().any(|d| d.contains("\"error\"")), "{text}");
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn upstream_errors_pass_through_with_their_status() {
    let up = Upstream::fixed(
        Script::json("{\"error\":{\"message\":\"rate limited\",\"type\":\"rate\"}}")
            .with_status(429),
    )
    .await;
    let p = proxy(&up.base_url(), POLICY).await;
    let resp = post(&p, "/v1/chat/completions", &chat_req(true)).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.text().await.unwrap().contains("rate limited"));
}

#[tokio::test]
async fn unparsable_upstream_event_fails_closed() {
    let (text, _) = run_stream(vec![
        chat_chunk("ok "),
        "data: {not json\n\n".into(),
        chat_chunk("after"),
        chat_finish(),
    ])
    .await;
    let data = sse_data(&text);
    assert!(data.iter().any(|d| d.contains("\"error\"")), "{text}");
    assert!(!text.contains("after"));
    assert!(!text.contains("{not json"));
}

#[tokio::test]
async fn comments_and_keepalives_keep_flowing() {
    let (text, _) = run_stream(vec![
        ": keep-alive\n\n".into(),
        chat_chunk("a"),
        ": ping\n\n".into(),
        chat_finish(),
    ])
    .await;
    assert!(text.starts_with(": keep-alive\n\n"));
    assert!(text.contains(": ping\n\n"));
}

#[tokio::test]
async fn every_decision_is_recorded_with_a_pseudonymous_user() {
    let (text_up, _) = (
        Script::sse_writes(vec![chat_chunk("a"), chat_chunk("炸弹"), chat_finish()]),
        (),
    );
    let up = Upstream::fixed(text_up).await;
    let p = proxy(&up.base_url(), POLICY).await;
    // A blocked prompt.
    let body = json!({"model": "m1", "messages": [{"role": "user", "content": "教我做炸弹"}]});
    let resp = client()
        .post(p.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-user-id", "alice@example.com")
        .header("x-request-id", "rid-prompt")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // A stopped stream.
    let resp = client()
        .post(p.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-user-id", "alice@example.com")
        .header("x-request-id", "rid-stream")
        .body(chat_req(true).to_string())
        .send()
        .await
        .unwrap();
    let _ = resp.text().await.unwrap();
    let records = p.records(3).await;
    let prompt = records
        .iter()
        .find(|r| r["request_id"] == "rid-prompt" && r["kind"] == "decision")
        .expect("prompt decision recorded");
    assert_eq!(prompt["direction"], "prompt");
    assert_eq!(prompt["category"], "A1d");
    assert_eq!(prompt["action"], "block");
    assert_eq!(prompt["model"], "m1");
    assert!(prompt["policy_version"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));
    let user = prompt["user"].as_str().unwrap();
    assert!(user.starts_with("u-") && !user.contains("alice"), "{user}");
    let stop = records
        .iter()
        .find(|r| r["request_id"] == "rid-stream" && r["kind"] == "decision")
        .expect("stream decision recorded");
    assert_eq!(stop["direction"], "completion");
    assert_eq!(stop["stopped"], true);
    assert_eq!(stop["user"], user, "the same user gets the same pseudonym");
    let all = serde_json::to_string(&records).unwrap();
    assert!(
        !all.contains("alice"),
        "raw user ids never reach the records"
    );
}

#[tokio::test]
async fn obfuscations_covered_by_normalization_are_stopped() {
    for (name, parts) in [
        ("separators between CJK", vec!["前文 ", "炸 ", "*弹"]),
        ("zero-width inside", vec!["ok ", "炸\u{200b}", "弹"]),
        ("traditional", vec!["ok ", "炸彈"]),
        (
            "full-width and case",
            vec!["x ", "ＦＯＲＢＩＤ", "ＤＥＮＷＯＲＤ"],
        ),
        (
            "dotted letters",
            vec!["x ", "f.o.r.b.i.d.", "d.e.n.w.o.r.d"],
        ),
        (
            "confusable Cyrillic",
            vec!["x ", "f\u{043e}rbiddenw\u{043e}rd"],
        ),
    ] {
        let mut writes: Vec<String> = parts.iter().map(|p| chat_chunk(p)).collect();
        writes.push(chat_finish());
        let (text, _) = run_stream(writes).await;
        assert!(
            finish_reasons(&text)
                .iter()
                .any(|(_, r)| r == "content_filter"),
            "{name}: not stopped: {text}"
        );
        let content = content_of(&text, 0, "content");
        assert!(
            !content.contains('炸')
                && !content.to_lowercase().contains("ｆｏｒ")
                && !content.contains("f.o"),
            "{name}: leaked {content:?}"
        );
    }
    // Whole words are not glued together: `forbidden word` is not `forbiddenword`.
    let (text, _) = run_stream(vec![
        chat_chunk("a forbidden "),
        chat_chunk("wordlist"),
        chat_finish(),
    ])
    .await;
    assert_eq!(content_of(&text, 0, "content"), "a forbidden wordlist");
}

#[tokio::test]
async fn evidence_full_keeps_the_whole_text_only_for_its_category() {
    let up = Upstream::fixed(Script::json("{\"choices\":[]}")).await;
    let policy = "policy:\n  categories:\n    - { id: A1d, action: block, keywords: [\"炸弹\"], evidence: full }\n    - { id: A3a, action: flag, keywords: [\"watchword\"] }\n";
    let p = proxy(&up.base_url(), policy).await;
    let long = format!("{} 教我做炸弹 {}", "前言".repeat(100), "后记".repeat(100));
    let _ = post(
        &p,
        "/v1/chat/completions",
        &json!({"model": "m", "messages": [{"role": "user", "content": long}]}),
    )
    .await;
    let _ = post(&p, "/v1/chat/completions", &json!({"model": "m", "messages": [{"role": "user", "content": format!("{} watchword", "x".repeat(300))}]})).await;
    let recs = p.records(2).await;
    let block = recs.iter().find(|r| r["category"] == "A1d").unwrap();
    assert_eq!(block["evidence"], long.as_str());
    let flag = recs.iter().find(|r| r["category"] == "A3a").unwrap();
    assert!(flag.get("evidence").is_none(), "{flag}");
    assert!(flag["excerpt"].as_str().unwrap().chars().count() < 200);
}

#[tokio::test]
async fn excerpts_mask_phone_numbers_found_by_a_prompt_only_category() {
    let up = Upstream::fixed(Script::json("{\"choices\":[]}")).await;
    let policy = "policy:\n  categories:\n    - { id: A3a, action: flag, keywords: [\"watchword\"] }\n    - { id: pii-phone, action: flag, detector: cn_mobile, applies_to: prompt }\n";
    let p = proxy(&up.base_url(), policy).await;
    let _ = post(
        &p,
        "/v1/chat/completions",
        &json!({"model": "m", "messages": [{"role": "user", "content": "watchword, call 13800138000"}]}),
    )
    .await;
    let recs = p.records(2).await;
    for cat in ["A3a", "pii-phone"] {
        let r = recs.iter().find(|r| r["category"] == cat).unwrap();
        let excerpt = r["excerpt"].as_str().unwrap();
        assert!(
            excerpt.contains("138****8000") && !excerpt.contains("13800138000"),
            "{cat}: {excerpt}"
        );
    }
}

#[tokio::test]
async fn whole_word_terms_wait_for_their_edge() {
    const WHOLE: &str = r#"
policy:
  categories:
    - { id: A2a, action: block, whole_words: true, keywords: ["ass"] }
"#;
    let cases: [(&[&str], Option<&str>); 4] = [
        // Inside longer words: nothing matches, the text arrives whole.
        (&["a cl", "ass", "ic tale of an ", "ass", "istant"], None),
        // A word of its own, split over events: stopped before it.
        (&["you ", "as", "s", " and more"], Some("you ")),
        // At the very end of the stream: decided when the upstream ends.
        (&["the ", "ass"], Some("the ")),
        // Folded by normalization first: `A.S.S` is the word.
        (&["so A.", "S.S!"], Some("so ")),
    ];
    for (parts, stopped_after) in cases {
        let mut writes: Vec<String> = parts.iter().map(|p| chat_chunk(p)).collect();
        writes.push(chat_finish());
        let (text, _) = run_stream_with(WHOLE, writes).await;
        let content = content_of(&text, 0, "content");
        match stopped_after {
            None => {
                assert_eq!(content, parts.concat(), "{text}");
                assert!(
                    finish_reasons(&text)
                        .iter()
                        .all(|(_, r)| r != "content_filter"),
                    "{text}"
                );
            }
            Some(before) => {
                let fr = finish_reasons(&text);
                assert!(fr.iter().any(|(_, r)| r == "content_filter"), "{text}");
                assert_eq!(content, before, "{text}");
            }
        }
    }
}

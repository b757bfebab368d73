//! OpenAI Responses through shenhe: prompts in `input` and `instructions`, streams whose text is
//! repeated by `.done` events and `response.completed` (never leaked, rewritten consistently),
//! the `response.incomplete` end after a stop, whole answers refused or redacted.

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
    json!({"model": "gpt-test", "stream": stream, "input": "hello"})
}

async fn run(writes: Vec<String>) -> (String, Upstream) {
    let up = Upstream::fixed(Script::sse_writes(writes)).await;
    let p = proxy(&up.base_url(), POLICY).await;
    let text = post_json(&p, "/v1/responses", &req(true))
        .await
        .text()
        .await
        .unwrap();
    (text, up)
}

fn deltas(text: &str, ty: &str) -> String {
    sse_events(text)
        .iter()
        .filter(|(_, v)| v["type"] == ty)
        .filter_map(|(_, v)| v["delta"].as_str().map(str::to_string))
        .collect()
}

/// Stopped: nothing of the term anywhere, the last event is `response.incomplete` for the
/// same response with `content_filter`, and nothing follows it.
fn assert_incomplete(text: &str, banned: &str) -> Value {
    assert!(!text.contains(banned), "banned text leaked: {text}");
    let evs = sse_events(text);
    let (name, last) = evs.last().expect("events");
    assert_eq!(name.as_deref(), Some("response.incomplete"), "{text}");
    assert_eq!(last["type"], "response.incomplete");
    assert_eq!(last["response"]["status"], "incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "content_filter"
    );
    assert_eq!(last["response"]["id"], "resp_1");
    assert!(!evs.iter().any(|(_, v)| v["type"] == "response.completed"));
    last.clone()
}

#[tokio::test]
async fn text_term_split_over_two_and_three_deltas_is_stopped() {
    for parts in [vec!["炸", "弹"], vec!["forb", "iddenw", "ord"]] {
        let mut texts = vec!["safe start "];
        texts.extend(parts.iter().copied());
        texts.push(" tail");
        let (text, up) = run(responses_text_stream(&texts)).await;
        let last = assert_incomplete(&text, &parts.concat());
        assert!(!text.contains(parts[0]), "a fragment leaked: {text}");
        assert_eq!(deltas(&text, "response.output_text.delta"), "safe start ");
        // The output in the final event is what was delivered.
        assert_eq!(
            last["response"]["output"][0]["content"][0]["text"],
            "safe start "
        );
        // No .done event carrying the whole text was sent.
        assert!(!sse_events(&text)
            .iter()
            .any(|(_, v)| v["type"] == "response.output_text.done"));
        wait_disconnect(&up).await;
    }
}

#[tokio::test]
async fn redaction_is_consistent_across_deltas_done_events_and_completed() {
    let (text, _) = run(responses_text_stream(&["code secr", "et123 ok"])).await;
    assert!(
        !text.contains("secret123") && !text.contains("secr"),
        "{text}"
    );
    let masked = "code ********* ok";
    assert_eq!(deltas(&text, "response.output_text.delta"), masked);
    let evs = sse_events(&text);
    let find = |ty: &str| {
        evs.iter()
            .find(|(_, v)| v["type"] == ty)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{ty} missing: {text}"))
    };
    assert_eq!(find("response.output_text.done")["text"], masked);
    assert_eq!(find("response.content_part.done")["part"]["text"], masked);
    assert_eq!(
        find("response.output_item.done")["item"]["content"][0]["text"],
        masked
    );
    assert_eq!(
        find("response.completed")["response"]["output"][0]["content"][0]["text"],
        masked
    );
    assert_eq!(evs.last().unwrap().1["type"], "response.completed");
}

#[tokio::test]
async fn benign_stream_passes_byte_identical() {
    let writes = responses_text_stream(&["人工智能", "生成的内容", " is fine."]);
    let expected = writes.concat();
    let (text, up) = run(writes).await;
    assert_eq!(text, expected);
    assert_eq!(up.completed(), 1);
}

fn ev(seq: u64, v: Value) -> String {
    responses_event(seq, v)
}

#[tokio::test]
async fn every_text_kind_is_moderated() {
    let created = ev(
        1,
        json!({"type": "response.created", "response": responses_object("in_progress", json!([]))}),
    );
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "function_call_arguments",
            vec![
                created.clone(),
                ev(
                    2,
                    json!({"type": "response.output_item.added", "output_index": 0, "item": {"type": "function_call", "id": "fc_1", "call_id": "c", "name": "f", "arguments": "", "status": "in_progress"}}),
                ),
                ev(
                    3,
                    json!({"type": "response.function_call_arguments.delta", "output_index": 0, "item_id": "fc_1", "delta": "{\"q\":\"炸"}),
                ),
                ev(
                    4,
                    json!({"type": "response.function_call_arguments.delta", "output_index": 0, "item_id": "fc_1", "delta": "弹\"}"}),
                ),
                ev(
                    5,
                    json!({"type": "response.function_call_arguments.done", "output_index": 0, "item_id": "fc_1", "arguments": "{\"q\":\"炸弹\"}"}),
                ),
            ],
        ),
        (
            "reasoning_summary",
            vec![
                created.clone(),
                ev(
                    2,
                    json!({"type": "response.output_item.added", "output_index": 0, "item": {"type": "reasoning", "id": "rs_1", "summary": []}}),
                ),
                ev(
                    3,
                    json!({"type": "response.reasoning_summary_part.added", "output_index": 0, "summary_index": 0, "item_id": "rs_1", "part": {"type": "summary_text", "text": ""}}),
                ),
                ev(
                    4,
                    json!({"type": "response.reasoning_summary_text.delta", "output_index": 0, "summary_index": 0, "item_id": "rs_1", "delta": "forb"}),
                ),
                ev(
                    5,
                    json!({"type": "response.reasoning_summary_text.delta", "output_index": 0, "summary_index": 0, "item_id": "rs_1", "delta": "iddenword"}),
                ),
                ev(
                    6,
                    json!({"type": "response.reasoning_summary_text.done", "output_index": 0, "summary_index": 0, "item_id": "rs_1", "text": "forbiddenword"}),
                ),
            ],
        ),
        (
            "reasoning_text",
            vec![
                created.clone(),
                ev(
                    2,
                    json!({"type": "response.output_item.added", "output_index": 0, "item": {"type": "reasoning", "id": "rs_1", "summary": [], "content": []}}),
                ),
                ev(
                    3,
                    json!({"type": "response.reasoning_text.delta", "output_index": 0, "content_index": 0, "item_id": "rs_1", "delta": "炸弹"}),
                ),
            ],
        ),
        (
            "refusal",
            vec![
                created.clone(),
                ev(
                    2,
                    json!({"type": "response.output_item.added", "output_index": 0, "item": {"type": "message", "id": "m", "role": "assistant", "status": "in_progress", "content": []}}),
                ),
                ev(
                    3,
                    json!({"type": "response.content_part.added", "output_index": 0, "content_index": 0, "item_id": "m", "part": {"type": "refusal", "refusal": ""}}),
                ),
                ev(
                    4,
                    json!({"type": "response.refusal.delta", "output_index": 0, "content_index": 0, "item_id": "m", "delta": "no 炸"}),
                ),
                ev(
                    5,
                    json!({"type": "response.refusal.delta", "output_index": 0, "content_index": 0, "item_id": "m", "delta": "弹"}),
                ),
            ],
        ),
        (
            "text_only_in_done",
            // A .done that carries text its deltas never did is judged on its own.
            vec![
                created.clone(),
                ev(
                    2,
                    json!({"type": "response.output_item.added", "output_index": 0, "item": {"type": "message", "id": "m", "role": "assistant", "status": "in_progress", "content": []}}),
                ),
                ev(
                    3,
                    json!({"type": "response.output_text.done", "output_index": 0, "content_index": 0, "item_id": "m", "text": "forbiddenword"}),
                ),
            ],
        ),
    ];
    for (name, mut writes) in cases {
        writes.push(ev(
            20,
            json!({"type": "response.completed", "response": responses_object("completed", json!([]))}),
        ));
        let (text, _) = run(writes).await;
        assert!(
            !text.contains("炸") && !text.contains("forbiddenword") && !text.contains("iddenword"),
            "{name}: {text}"
        );
        let evs = sse_events(&text);
        assert_eq!(
            evs.last().unwrap().1["type"],
            "response.incomplete",
            "{name}: {text}"
        );
    }
}

#[tokio::test]
async fn prompt_refusal_never_reaches_the_upstream() {
    let up = Upstream::fixed(Script::json("{}")).await;
    let p = proxy(&up.base_url(), POLICY).await;
    let bodies = [
        json!({"model": "m", "input": "教我做炸弹"}),
        json!({"model": "m", "instructions": "forbiddenword", "input": "hi"}),
        json!({"model": "m", "input": [{"role": "user", "content": "炸弹"}]}),
        json!({"model": "m", "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "炸弹"}]}]}),
        json!({"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": "forbiddenword"}]}),
        json!({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{\"q\":\"炸弹\"}"}]}),
    ];
    for body in bodies {
        let resp = post_json(&p, "/v1/responses", &body).await;
        assert_eq!(resp.status(), 400, "{body}");
        let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        assert_eq!(v["error"]["code"], "content_filter", "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(!v.to_string().contains("炸弹"));
    }
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn a_background_run_is_served_only_streamed() {
    // Unstreamed, a background run's output would be fetched later by id, past the guard.
    let up = Upstream::fixed(Script::json(
        r#"{"id":"resp_1","status":"queued","output":[]}"#,
    ))
    .await;
    let p = proxy(&up.base_url(), POLICY).await;
    let body = json!({"model": "m", "background": true, "input": "hello"});
    let resp = post_json(&p, "/v1/responses", &body).await;
    assert_eq!(resp.status(), 400);
    let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "bad_request", "{v}");
    assert_eq!(v["error"]["param"], "background", "{v}");
    assert!(up.requests().is_empty());
    // `background: false`, or a streamed background run (its output comes through here),
    // go on as any request.
    for body in [
        json!({"model": "m", "background": false, "input": "hello"}),
        json!({"model": "m", "background": null, "input": "hello"}),
    ] {
        let resp = post_json(&p, "/v1/responses", &body).await;
        assert_eq!(resp.status(), 200, "{body}");
        resp.bytes().await.unwrap();
    }
    assert_eq!(up.requests().len(), 2);
    let up = Upstream::fixed(Script::sse_writes(vec![ev(
        0,
        json!({"type": "response.completed", "response": {"id": "r", "status": "completed", "output": []}}),
    )]))
    .await;
    let p = proxy(&up.base_url(), POLICY).await;
    let body = json!({"model": "m", "background": true, "stream": true, "input": "hello"});
    let resp = post_json(&p, "/v1/responses", &body).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("response.completed"), "{text}");
    assert_eq!(up.requests().len(), 1);
}

fn whole(output: Value) -> String {
    responses_object("completed", output).to_string()
}

#[tokio::test]
async fn whole_answers_are_refused_or_redacted() {
    let msg = |t: &str| json!({"type": "message", "id": "m", "status": "completed", "role": "assistant", "content": [{"type": "output_text", "text": t, "annotations": []}]});
    let cases = [
        json!([msg("这是炸弹")]),
        json!([{"type": "reasoning", "id": "r", "summary": [{"type": "summary_text", "text": "forbiddenword"}]}, msg("ok")]),
        json!([{"type": "function_call", "id": "f", "call_id": "c", "name": "f", "arguments": "{\"q\":\"炸弹\"}", "status": "completed"}]),
        json!([{"type": "message", "id": "m", "status": "completed", "role": "assistant", "content": [{"type": "refusal", "refusal": "forbiddenword"}]}]),
    ];
    for output in cases {
        let up = Upstream::fixed(Script::json(&whole(output.clone()))).await;
        let p = proxy(&up.base_url(), POLICY).await;
        let v: Value = serde_json::from_slice(
            &post_json(&p, "/v1/responses", &req(false))
                .await
                .bytes()
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(v["status"], "incomplete", "{output} -> {v}");
        assert_eq!(v["incomplete_details"]["reason"], "content_filter");
        assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
        let s = v.to_string();
        assert!(!s.contains("炸弹") && !s.contains("forbiddenword"), "{s}");
    }
    let body = whole(json!([msg("code secret123 ok")]));
    let up = Upstream::fixed(Script::json(&body)).await;
    let p = proxy(&up.base_url(), POLICY).await;
    let v: Value = serde_json::from_slice(
        &post_json(&p, "/v1/responses", &req(false))
            .await
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(v["output"][0]["content"][0]["text"], "code ********* ok");
    assert_eq!(v["status"], "completed");

    let body = whole(json!([msg("天气很好")]));
    let up = Upstream::fixed(Script::json(&body)).await;
    let p = proxy(&up.base_url(), POLICY).await;
    let got = post_json(&p, "/v1/responses", &req(false))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(got, body);
}

#[tokio::test]
async fn whole_answer_labels() {
    let body = whole(
        json!([{"type": "message", "id": "m", "status": "completed", "role": "assistant", "content": [{"type": "output_text", "text": "天气很好。", "annotations": []}]}]),
    );
    let up = Upstream::fixed(Script::json(&body)).await;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(
        &up.base_url(),
        &format!("{POLICY}{}", labels_yaml(dir.path())),
    )
    .await;
    let resp = post_json(&p, "/v1/responses", &req(false)).await;
    assert!(resp.headers().contains_key("x-aigc-label"));
    let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let text = v["output"][0]["content"][0]["text"].as_str().unwrap();
    assert_eq!(text, "天气很好。\n【本内容由人工智能生成】");
    verify_aigc(&p, &v["aigc"], text).await.unwrap();
}

/// Every event's `sequence_number`, in order.
fn sequence_numbers(text: &str) -> Vec<u64> {
    sse_events(text)
        .iter()
        .map(|(_, v)| v["sequence_number"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn streamed_labels_ride_the_response_events() {
    let up = Upstream::fixed(Script::sse_writes(responses_text_stream(&[
        "天气",
        "很好。",
    ])))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(
        &up.base_url(),
        &format!("{POLICY}{}", labels_yaml(dir.path())),
    )
    .await;
    let resp = post_json(&p, "/v1/responses", &req(true)).await;
    let header: Value =
        serde_json::from_str(resp.headers()["x-aigc-label"].to_str().unwrap()).unwrap();
    let text = resp.text().await.unwrap();
    let label = "\n【本内容由人工智能生成】";
    let streamed = deltas(&text, "response.output_text.delta");
    assert_eq!(streamed, format!("天气很好。{label}"));
    let evs = sse_events(&text);
    // The added label event is numbered in line: numbers rise by one, none repeats.
    let seqs = sequence_numbers(&text);
    let first = seqs[0];
    assert_eq!(seqs, (first..first + seqs.len() as u64).collect::<Vec<_>>());
    // Every repeat of the text carries the label too.
    let done = evs
        .iter()
        .find(|(_, v)| v["type"] == "response.output_text.done")
        .unwrap();
    assert_eq!(done.1["text"], streamed.as_str());
    let completed = &evs
        .iter()
        .find(|(_, v)| v["type"] == "response.completed")
        .unwrap()
        .1;
    assert_eq!(
        completed["response"]["output"][0]["content"][0]["text"],
        streamed.as_str()
    );
    // The signed record is in the final response object, for the same content id as the header.
    let aigc = &completed["response"]["aigc"];
    assert_eq!(aigc["ProduceID"], header["ProduceID"]);
    verify_aigc(&p, aigc, &streamed)
        .await
        .expect("signature verifies over the streamed text");
}

#[tokio::test]
async fn a_stopped_response_stream_is_labeled_too() {
    let up = Upstream::fixed(Script::sse_writes(responses_text_stream(&[
        "前面", "炸弹", "后面",
    ])))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(
        &up.base_url(),
        &format!("{POLICY}{}", labels_yaml(dir.path())),
    )
    .await;
    let text = post_json(&p, "/v1/responses", &req(true))
        .await
        .text()
        .await
        .unwrap();
    let last = assert_incomplete(&text, "炸弹");
    let seqs = sequence_numbers(&text);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let streamed = deltas(&text, "response.output_text.delta");
    assert_eq!(streamed, "前面\n【本内容由人工智能生成】");
    assert_eq!(
        last["response"]["output"][0]["content"][0]["text"],
        streamed.as_str()
    );
    verify_aigc(&p, &last["response"]["aigc"], &streamed)
        .await
        .unwrap();
}

/// An `output_text.delta` of content part `part` of output item 0.
fn part_delta(seq: u64, part: u32, t: &str) -> String {
    ev(
        seq,
        json!({"type": "response.output_text.delta", "output_index": 0, "content_index": part, "item_id": "msg_1", "delta": t}),
    )
}

#[tokio::test]
async fn a_term_the_model_splits_across_output_parts_is_found() {
    // Streamed: "炸" ends part 0 (whose `.done` repeats it), "弹" starts part 1.
    let writes = vec![
        ev(
            1,
            json!({"type": "response.created", "response": responses_object("in_progress", json!([]))}),
        ),
        part_delta(2, 0, "safe start 炸"),
        ev(
            3,
            json!({"type": "response.output_text.done", "output_index": 0, "content_index": 0, "item_id": "msg_1", "text": "safe start 炸"}),
        ),
        part_delta(4, 1, "弹 after"),
        ev(
            5,
            json!({"type": "response.output_text.done", "output_index": 0, "content_index": 1, "item_id": "msg_1", "text": "弹 after"}),
        ),
    ];
    let (text, up) = run(writes).await;
    assert_incomplete(&text, "炸弹");
    assert!(!text.contains('炸') && !text.contains("after"), "{text}");
    assert_eq!(deltas(&text, "response.output_text.delta"), "safe start ");
    wait_disconnect(&up).await;

    // Whole: the output text of two message items, read as one.
    let msg = |t: &str| json!({"type": "message", "id": "m", "status": "completed", "role": "assistant", "content": [{"type": "output_text", "text": t, "annotations": []}]});
    let up = Upstream::fixed(Script::json(&whole(json!([msg("这是炸"), msg("弹")])))).await;
    let p = proxy(&up.base_url(), POLICY).await;
    let v: Value = post_json(&p, "/v1/responses", &req(false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "incomplete", "{v}");
    assert!(!v.to_string().contains('炸'), "{v}");
}

#[tokio::test]
async fn a_redaction_across_two_parts_is_repeated_as_sent() {
    let done = |seq, part, t: &str| {
        ev(
            seq,
            json!({"type": "response.output_text.done", "output_index": 0, "content_index": part, "item_id": "msg_1", "text": t}),
        )
    };
    let part = |t: &str| json!({"type": "output_text", "text": t, "annotations": []});
    let item = json!({"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
        "content": [part("code secr"), part("et123 ok")]});
    let writes = vec![
        ev(
            1,
            json!({"type": "response.created", "response": responses_object("in_progress", json!([]))}),
        ),
        part_delta(2, 0, "code secr"),
        done(3, 0, "code secr"),
        part_delta(4, 1, "et123 ok"),
        done(5, 1, "et123 ok"),
        ev(
            6,
            json!({"type": "response.content_part.done", "output_index": 0, "content_index": 1, "item_id": "msg_1", "part": part("et123 ok")}),
        ),
        ev(
            7,
            json!({"type": "response.output_item.done", "output_index": 0, "item": item.clone()}),
        ),
        ev(
            8,
            json!({"type": "response.completed", "response": responses_object("completed", json!([item]))}),
        ),
    ];
    let (text, up) = run(writes).await;
    assert!(!text.contains("secr") && !text.contains("et123"), "{text}");
    assert_eq!(
        deltas(&text, "response.output_text.delta"),
        "code ********* ok"
    );
    let evs = sse_events(&text);
    let of = |ty: &str| -> Vec<Value> {
        evs.iter()
            .filter(|(_, v)| v["type"] == ty)
            .map(|(_, v)| v.clone())
            .collect()
    };
    // Each repeat holds its part as the deltas sent it (the mask went out with the first).
    let sent: Vec<String> = (0..2)
        .map(|i| {
            of("response.output_text.delta")
                .iter()
                .filter(|v| v["content_index"] == i)
                .map(|v| v["delta"].as_str().unwrap().to_string())
                .collect()
        })
        .collect();
    assert_eq!(sent.concat(), "code ********* ok");
    let dones = of("response.output_text.done");
    assert_eq!(dones[0]["text"], sent[0]);
    assert_eq!(dones[1]["text"], sent[1]);
    assert_eq!(of("response.content_part.done")[0]["part"]["text"], sent[1]);
    let done_item = &of("response.output_item.done")[0]["item"];
    assert_eq!(done_item["content"][0]["text"], sent[0]);
    assert_eq!(done_item["content"][1]["text"], sent[1]);
    let completed = &of("response.completed")[0]["response"];
    assert_eq!(completed["output"][0]["content"][0]["text"], sent[0]);
    assert_eq!(completed["output"][0]["content"][1]["text"], sent[1]);
    assert_eq!(up.completed(), 1);
}

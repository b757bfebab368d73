//! Provenance labels on text (GB 45438-2025): explicit label as ordinary content, signed implicit
//! `AIGC` record in the body, the final chunk and a header; never inside JSON-mode or tool output.

mod support;

use serde_json::{json, Value};
use support::*;

const POLICY: &str =
    "policy:\n  categories:\n    - { id: A1d, action: block, keywords: [\"炸弹\"] }\n";

async fn labeled_proxy(up: &Upstream) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("{POLICY}{}", labels_yaml(dir.path()));
    let p = proxy(&up.base_url(), &yaml).await;
    std::mem::forget(dir);
    p
}

async fn post(p: &Proxy, body: Value) -> reqwest::Response {
    client()
        .post(p.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

fn whole(content: Value, extra: Value) -> String {
    let mut v = json!({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]});
    if let Value::Object(m) = extra {
        for (k, val) in m {
            v["choices"][0]["message"][k] = val;
        }
    }
    v.to_string()
}

#[tokio::test]
async fn whole_response_gets_explicit_and_signed_implicit_labels() {
    let up = Upstream::fixed(Script::json(&whole(json!("天气很好。"), json!({})))).await;
    let p = labeled_proxy(&up).await;
    let resp = post(
        &p,
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let header = resp
        .headers()
        .get("x-aigc-label")
        .expect("implicit label header")
        .to_str()
        .unwrap()
        .to_string();
    let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content, "天气很好。\n【本内容由人工智能生成】");
    let aigc = &v["aigc"];
    let keys: Vec<&str> = aigc
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for k in [
        "Label",
        "ContentProducer",
        "ProduceID",
        "ReservedCode1",
        "ContentPropagator",
        "PropagateID",
        "ReservedCode2",
    ] {
        assert!(keys.contains(&k), "{k} missing from {aigc}");
    }
    assert_eq!(aigc["Label"], "1");
    assert_eq!(aigc["ContentProducer"], "test-producer");
    let header_v: Value = serde_json::from_str(&header).unwrap();
    assert_eq!(header_v["ProduceID"], aigc["ProduceID"]);
    verify_aigc(&p, aigc, content)
        .await
        .expect("signature verifies over the delivered text");
    // One changed byte of the delivered text fails.
    let forged = content.replacen("很好", "很坏", 1);
    assert!(verify_aigc(&p, aigc, &forged).await.is_err());
    // The content id leads back to the delivery record.
    let pid = aigc["ProduceID"].as_str().unwrap();
    let recs = p.records(1).await;
    let d = recs
        .iter()
        .find(|r| r["content_id"] == pid)
        .expect("delivery record with the content id");
    assert_eq!(d["kind"], "delivery");
    assert_eq!(d["label"], "explicit+implicit");
}

#[tokio::test]
async fn a_labeled_answer_keeps_the_model_servers_bytes_elsewhere() {
    let raw = "{\"id\": \"x\",  \"usage\": {\"total_tokens\": 3, \"cost\": 1.50}, \"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"天气很好。\"},\"finish_reason\":\"stop\"}], \"system_fingerprint\": \"fp\\u00e9\"}";
    let up = Upstream::fixed(Script::json(raw)).await;
    let p = labeled_proxy(&up).await;
    let resp = post(
        &p,
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    // Every byte but the label's is the model server's own (spacing, `1.50`, `\u00e9`): the
    // label is spliced into the text, the signed record added as the last member.
    let labeled = raw.replacen("天气很好。\"", "天气很好。\\n【本内容由人工智能生成】\"", 1);
    let head = &labeled[..labeled.len() - 1];
    assert!(text.starts_with(head), "{text}");
    assert!(text[head.len()..].starts_with(",\"aigc\":{"), "{text}");
    assert!(text.ends_with("}}"), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["aigc"]["Label"], "1");
}

#[tokio::test]
async fn json_mode_and_tool_calls_get_no_explicit_label() {
    let up = Upstream::fixed(Script::json(&whole(json!("{\"a\":1}"), json!({})))).await;
    let p = labeled_proxy(&up).await;
    let resp = post(&p, json!({"model": "m", "response_format": {"type": "json_object"}, "messages": [{"role": "user", "content": "hi"}]})).await;
    let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "{\"a\":1}");
    assert!(
        v["aigc"]["ProduceID"].is_string(),
        "implicit label carries the duty: {v}"
    );
    let recs = p.records(1).await;
    assert!(
        recs.iter().any(|r| r["label"] == "implicit_only:json_mode"),
        "{recs:?}"
    );

    let tool = whole(
        Value::Null,
        json!({"tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{\"q\":1}"}}]}),
    );
    let up = Upstream::fixed(Script::json(&tool)).await;
    let p = labeled_proxy(&up).await;
    let v: Value = serde_json::from_slice(
        &post(&p, json!({"model": "m", "messages": []}))
            .await
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{\"q\":1}"
    );
    assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
}

fn sse_json(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect()
}

#[tokio::test]
async fn streamed_labels_ride_the_event_flow() {
    let up = Upstream::fixed(Script::sse_writes(vec![
        chat_chunk("你好"),
        chat_chunk("，世界"),
        chat_finish(),
    ]))
    .await;
    let p = labeled_proxy(&up).await;
    let resp = post(
        &p,
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let header: Value =
        serde_json::from_str(resp.headers()["x-aigc-label"].to_str().unwrap()).unwrap();
    let text = resp.text().await.unwrap();
    let events = sse_json(&text);
    let content: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "你好，世界\n【本内容由人工智能生成】");
    // The label is its own delta, before the finish chunk.
    let label_pos = events
        .iter()
        .position(|e| e["choices"][0]["delta"]["content"] == "\n【本内容由人工智能生成】")
        .unwrap();
    let finish_pos = events
        .iter()
        .position(|e| e["choices"][0]["finish_reason"] == "stop")
        .unwrap();
    assert!(label_pos < finish_pos);
    // The signed record is in the last chunk before [DONE].
    let last = events.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["aigc"]["ProduceID"], header["ProduceID"]);
    assert!(text.trim_end().ends_with("data: [DONE]"));
    verify_aigc(&p, &last["aigc"], &content)
        .await
        .expect("stream signature verifies");
}

#[tokio::test]
async fn a_stopped_stream_is_labeled_too() {
    let up = Upstream::fixed(Script::sse_writes(vec![
        chat_chunk("前面"),
        chat_chunk("炸弹"),
        chat_finish(),
    ]))
    .await;
    let p = labeled_proxy(&up).await;
    let text = post(
        &p,
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .text()
    .await
    .unwrap();
    let events = sse_json(&text);
    let content: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "前面\n【本内容由人工智能生成】", "{text}");
    assert!(events
        .iter()
        .any(|e| e["choices"][0]["finish_reason"] == "content_filter"));
    let last = events.last().unwrap();
    verify_aigc(&p, &last["aigc"], &content).await.unwrap();
}

#[tokio::test]
async fn public_key_is_served_on_the_admin_listener() {
    let up = Upstream::fixed(Script::json("{}")).await;
    let p = labeled_proxy(&up).await;
    let pem = admin_text(&p, "/admin/labels/public-key").await;
    assert!(pem.contains("BEGIN PUBLIC KEY"), "{pem}");
    assert!(shenhe::label::public_key_from_pem(&pem).is_ok());
}

#[tokio::test]
async fn agreement_opt_out_drops_only_the_explicit_label_and_is_recorded() {
    let up = Upstream::fixed(Script::json(&whole(json!("天气很好。"), json!({})))).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{POLICY}{}",
        labels_yaml(dir.path()).replace(
            "position: end }",
            "position: end, opt_out: { header: x-agreement, value: accepted, tenants: [t1] } }"
        )
    );
    let p = proxy(&up.base_url(), &yaml).await;
    let ask = |tenant: &'static str, agreed: bool| {
        let mut r = client()
            .post(p.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-tenant-id", tenant)
            .body(
                json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
            );
        if agreed {
            r = r.header("x-agreement", "accepted");
        }
        r.send()
    };
    let v: Value =
        serde_json::from_slice(&ask("t1", true).await.unwrap().bytes().await.unwrap()).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "天气很好。");
    assert!(
        v["aigc"]["ProduceID"].is_string(),
        "the implicit label stays"
    );
    // Another tenant, or no agreement: the explicit label is shown.
    for (t, a) in [("t2", true), ("t1", false)] {
        let v: Value =
            serde_json::from_slice(&ask(t, a).await.unwrap().bytes().await.unwrap()).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"], "天气很好。\n【本内容由人工智能生成】",
            "{t} {a}"
        );
    }
    let recs = p.records(3).await;
    assert!(
        recs.iter()
            .any(|r| r["label"] == "implicit_only:agreement_opt_out"),
        "{recs:?}"
    );
    std::mem::forget(dir);
}

//! The external classifier through the server (TC260-003 §8.4): prompts the keyword policy let
//! through go to a scripted classifier; a score over the threshold for a `block` category refuses
//! the prompt before the model sees it, a `flag` one is recorded, a failure fails closed (or open
//! as configured), and prompts the keywords already refused never reach the classifier.

mod support;

use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::sync::Notify;

const ANSWER: &str = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"好的"},"finish_reason":"stop"}]}"#;

/// A classifier that scores by words in the text it is sent.
async fn classifier() -> Upstream {
    Upstream::start(|r| {
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let text = v["text"].as_str().unwrap_or("");
        let cats = if text.contains("暴力") {
            json!([{"id": "violence", "score": 0.93}, {"id": "A2b", "score": 0.2}])
        } else if text.contains("口音") {
            json!([{"id": "A2b", "score": 0.81}])
        } else if text.contains("慢") {
            let mut late = Script::json("{\"categories\":[]}");
            late.head_delay = std::time::Duration::from_secs(2);
            return late;
        } else if text.contains("坏") {
            return Script::json("{\"oops\":1}");
        } else {
            json!([])
        };
        Script::json(&json!({ "categories": cats }).to_string())
    })
    .await
}

fn yaml(classifier_url: &str, on_error: &str) -> String {
    format!(
        r#"
policy:
  categories:
    - {{ id: A1d, action: block, keywords: ["炸弹制作"] }}
    - {{ id: A2b, action: flag, keywords: ["地域黑"] }}
classifier:
  enabled: true
  url: "{classifier_url}/classify"
  threshold: 0.8
  timeout: "300ms"
  on_error: {on_error}
  categories: {{ violence: A1d }}
"#
    )
}

async fn ask(p: &Proxy, content: &str) -> reqwest::Response {
    client()
        .post(p.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-user-id", "dave")
        .body(
            json!({"model": "m", "messages": [
                {"role": "system", "content": "你是助手"},
                {"role": "user", "content": content}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_classifier_refuses_flags_and_fails_closed() {
    let model = Upstream::fixed(Script::json(ANSWER)).await;
    let cls = classifier().await;
    let p = proxy(&model.base_url(), &yaml(&cls.base_url(), "closed")).await;

    // Clean: served; the classifier saw the prompt's texts in reading order.
    let r = ask(&p, "你好").await;
    assert_eq!(r.status(), 200);
    let sent = cls.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].path, "/classify");
    let body = sent[0].json();
    assert_eq!(body["text"], "你是助手\n你好");
    assert_eq!(body["direction"], "prompt");
    assert!(body["request_id"].as_str().is_some_and(|s| !s.is_empty()));

    // A block category over the threshold: refused as a keyword would be; the model never asked.
    let before = model.requests().len();
    let r = ask(&p, "写一段暴力的故事").await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "content_filter");
    assert_eq!(v["error"]["param"], "messages");
    assert_eq!(v["error"]["innererror"]["category"], "A1d");
    assert_eq!(model.requests().len(), before);

    // A flag category: served and recorded.
    assert_eq!(ask(&p, "这个口音怎么样").await.status(), 200);

    // The keywords decide first: a keyword refusal never reaches the classifier.
    let asked = cls.requests().len();
    assert_eq!(ask(&p, "炸弹制作").await.status(), 400);
    assert_eq!(cls.requests().len(), asked);

    // A bad answer and a late one fail closed: 503, the model not asked.
    let before = model.requests().len();
    for text in ["坏", "慢"] {
        let r = ask(&p, text).await;
        assert_eq!(r.status(), 503, "{text}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "service_unavailable");
    }
    assert_eq!(model.requests().len(), before);

    let recs = p.records(2).await;
    let by_classifier: Vec<&Value> = recs
        .iter()
        .filter(|r| r["detector"] == "classifier")
        .collect();
    assert_eq!(by_classifier.len(), 2, "{recs:?}");
    assert_eq!(by_classifier[0]["category"], "A1d");
    assert_eq!(by_classifier[0]["action"], "block");
    assert_eq!(by_classifier[0]["detail"], "classifier score 0.930");
    assert_eq!(by_classifier[1]["category"], "A2b");
    assert_eq!(by_classifier[1]["action"], "flag");
    // Inspectors see that a classifier is in place and how it acts, not where it runs.
    let policy: Value = serde_json::from_str(&admin_text(&p, "/admin/policy").await).unwrap();
    assert_eq!(policy["classifier"]["enabled"], true);
    assert_eq!(policy["classifier"]["threshold"], 0.8);
    assert_eq!(policy["classifier"]["on_error"], "closed");
    assert_eq!(policy["classifier"]["categories"]["violence"], "A1d");
    assert!(!policy.to_string().contains("/classify"), "{policy}");
    let m = admin_text(&p, "/metrics").await;
    for series in [
        "shenhe_classifier_calls_total{result=\"ok\"}",
        "shenhe_classifier_calls_total{result=\"error\"}",
        "shenhe_classifier_calls_total{result=\"timeout\"}",
    ] {
        assert!(m.contains(series), "{series} in\n{m}");
    }
}

#[tokio::test]
async fn failing_open_serves_on_the_keyword_verdict() {
    let model = Upstream::fixed(Script::json(ANSWER)).await;
    // Nothing listens here: every call fails at once.
    let p = proxy(&model.base_url(), &yaml("http://127.0.0.1:1", "open")).await;
    assert_eq!(ask(&p, "你好").await.status(), 200);
    assert_eq!(ask(&p, "炸弹制作").await.status(), 400);
}

#[tokio::test]
async fn image_prompts_and_embedding_inputs_are_classified_too() {
    let model = Upstream::fixed(Script::json(r#"{"created":1,"data":[]}"#)).await;
    let cls = classifier().await;
    // Embeddings are forwarded untouched unless listed as prompt_only.
    let config = format!(
        "{}routes:\n  paths: {{ \"/v1/embeddings\": prompt_only }}\n",
        yaml(&cls.base_url(), "closed")
    );
    let p = proxy(&model.base_url(), &config).await;
    for (path, body, param) in [
        (
            "/v1/images/generations",
            json!({"model": "m", "prompt": "一幅暴力的画"}),
            "prompt",
        ),
        (
            "/v1/embeddings",
            json!({"model": "m", "input": ["暴力"]}),
            "input",
        ),
    ] {
        let r = client()
            .post(p.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "content_filter", "{path}");
        assert_eq!(v["error"]["param"], param, "{path}");
    }
    assert!(model.requests().is_empty(), "the model never asked");
    assert_eq!(cls.requests().len(), 2);
}

#[tokio::test]
async fn whole_answers_are_classified_when_asked_and_a_hit_choice_is_refused() {
    let model = Upstream::fixed(Script::json(
        &json!({"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "一个暴力的故事"}, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": "一个温暖的故事"}, "finish_reason": "stop"}]})
        .to_string(),
    ))
    .await;
    let cls = classifier().await;
    let config = format!("{}  answers: true\n", yaml(&cls.base_url(), "closed"));
    let p = proxy(&model.base_url(), &config).await;
    let r = ask(&p, "讲两个故事").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices[0]["finish_reason"], "content_filter", "{v}");
    assert!(!choices[0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("暴力"));
    assert_eq!(choices[1]["finish_reason"], "stop");
    assert_eq!(choices[1]["message"]["content"], "一个温暖的故事");
    // The prompt and each choice were classified, each as what it is.
    let directions: Vec<String> = cls
        .requests()
        .iter()
        .map(|r| r.json()["direction"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(directions, ["prompt", "completion", "completion"]);
    let recs = p.records(2).await;
    assert!(
        recs.iter().any(|r| r["detector"] == "classifier"
            && r["direction"] == "completion"
            && r["action"] == "block"),
        "{recs:?}"
    );
}

#[tokio::test]
async fn streamed_answers_are_classified_at_their_end_when_asked() {
    // The same stream for both prompts; the classifier decides by the text it is sent.
    let violent = [chat_chunk("一个暴"), chat_chunk("力的故事"), chat_finish()];
    let calm = [chat_chunk("一个温"), chat_chunk("暖的故事"), chat_finish()];
    let up = Upstream::start(move |r| {
        let body = String::from_utf8_lossy(&r.body).to_string();
        let writes = if body.contains("狠故事") {
            &violent
        } else {
            &calm
        };
        Script::sse_writes(writes.to_vec())
    })
    .await;
    let cls = classifier().await;
    let config = format!("{}  streams: true\n", yaml(&cls.base_url(), "closed"));
    let p = proxy(&up.base_url(), &config).await;
    let stream = |content: &'static str| {
        client()
            .post(p.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-user-id", "frank")
            .body(
                json!({"model": "m", "stream": true,
                    "messages": [{"role": "user", "content": content}]})
                .to_string(),
            )
            .send()
    };

    // A clean answer reaches the client byte for byte, its end after the classifier's verdict.
    let body = stream("讲个好故事").await.unwrap().text().await.unwrap();
    let expected: String = [chat_chunk("一个温"), chat_chunk("暖的故事"), chat_finish()].concat();
    assert_eq!(body, expected);
    let answers: Vec<Value> = cls
        .requests()
        .iter()
        .map(|r| r.json())
        .filter(|v| v["direction"] == "completion")
        .collect();
    assert_eq!(answers.len(), 1, "one check per answer: {answers:?}");
    assert_eq!(answers[0]["text"], "一个温暖的故事");

    // A violent one: its text has flowed (the policy passed it), but it ends with
    // content_filter, not the model's [DONE] after a normal finish.
    let body = stream("讲个狠故事").await.unwrap().text().await.unwrap();
    assert!(
        body.contains("一个暴") && body.contains("力的故事"),
        "{body}"
    );
    let finishes = finishes(&body);
    assert_eq!(
        finishes.last().unwrap()["choices"][0]["finish_reason"],
        "content_filter",
        "{body}"
    );
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert_eq!(body.matches("[DONE]").count(), 1, "{body}");
    assert_stopped_by_classifier(&p).await;
}

/// The chunks of a chat stream that carry a finish reason.
fn finishes(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| !v["choices"][0]["finish_reason"].is_null())
        .collect()
}

/// The audit records hold the classifier's block of a streamed answer, which stopped it.
async fn assert_stopped_by_classifier(p: &Proxy) {
    let recs = p.records(2).await;
    assert!(
        recs.iter().any(|r| r["detector"] == "classifier"
            && r["direction"] == "completion"
            && r["action"] == "block"
            && r["stopped"] == true),
        "{recs:?}"
    );
}

/// A streamed Messages answer of `writes` through shenhe with `classifier.streams`: the client's
/// text and the classifier (which saw it).
async fn anthropic_with_end_check(writes: Vec<String>) -> (String, Upstream) {
    let up = Upstream::fixed(Script::sse_writes(writes)).await;
    let cls = classifier().await;
    let config = format!("{}  streams: true\n", yaml(&cls.base_url(), "closed"));
    let p = proxy(&up.base_url(), &config).await;
    let body = json!({"model": "claude-test", "max_tokens": 100, "stream": true,
        "messages": [{"role": "user", "content": "讲个故事"}]});
    let text = post_json(&p, "/v1/messages", &body)
        .await
        .text()
        .await
        .unwrap();
    (text, cls)
}

#[tokio::test]
async fn a_streamed_anthropic_answer_hit_at_its_end_stops_with_one_stop_reason() {
    let (text, _cls) =
        anthropic_with_end_check(anthropic_text_stream(&["一个暴", "力的故事"])).await;
    let evs = sse_events(&text);
    let n = evs.len();
    assert_eq!(evs[n - 1].1["type"], "message_stop", "{text}");
    assert_eq!(evs[n - 2].1["delta"]["stop_reason"], "refusal", "{text}");
    let reasons = evs
        .iter()
        .filter(|(_, v)| v["type"] == "message_delta")
        .count();
    assert_eq!(
        reasons, 1,
        "the model's own stop reason did not go out: {text}"
    );
}

#[tokio::test]
async fn a_clean_streamed_anthropic_answer_stays_byte_identical_with_the_end_check() {
    let writes = anthropic_text_stream(&["一个温", "暖的故事"]);
    let expected = writes.concat();
    let (text, cls) = anthropic_with_end_check(writes).await;
    assert_eq!(text, expected);
    let answers = cls
        .requests()
        .iter()
        .filter(|r| r.json()["direction"] == "completion")
        .count();
    assert_eq!(answers, 1);
}

/// A long streamed chat answer through shenhe with `classifier.streams` and a check every 200
/// characters: 300 events of five characters, `violent` placing 暴力 in the 50th, then the model
/// server waits on `gate`.
async fn long_stream(violent: bool, gate: Arc<Notify>) -> (Upstream, Upstream, Proxy) {
    let mut writes: Vec<String> = (0..300).map(|_| chat_chunk("平静的文字")).collect();
    if violent {
        writes[50] = chat_chunk("一段暴力的");
    }
    let mut script = Script::sse_writes(writes);
    script.steps.push(Step::Gate(gate));
    script
        .steps
        .push(Step::Write(bytes::Bytes::from(chat_finish())));
    let up = Upstream::fixed(script).await;
    let cls = classifier().await;
    let config = format!(
        "{}  streams: true\n  stream_check_chars: 200\n",
        yaml(&cls.base_url(), "closed")
    );
    let p = proxy(&up.base_url(), &config).await;
    (up, cls, p)
}

fn stream_request(p: &Proxy) -> reqwest::RequestBuilder {
    client()
        .post(p.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-user-id", "grace")
        .body(
            json!({"model": "m", "stream": true,
                "messages": [{"role": "user", "content": "讲个长故事"}]})
            .to_string(),
        )
}

#[tokio::test]
async fn a_long_streamed_answer_is_checked_while_it_flows_and_stopped_before_its_end() {
    let gate = Arc::new(Notify::new());
    let (up, cls, p) = long_stream(true, gate.clone()).await;
    let disconnected = up.disconnected.notified();
    // The model server never ends this answer (the gate stays shut): only a check made while
    // it flows can end it.
    let body = tokio::time::timeout(Duration::from_secs(10), async {
        stream_request(&p)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
    .await
    .expect("the stream was stopped while it flowed");
    let finishes = finishes(&body);
    assert_eq!(finishes.len(), 1, "{body}");
    assert_eq!(
        finishes[0]["choices"][0]["finish_reason"], "content_filter",
        "{body}"
    );
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    // Generation stopped: the model server saw the request closed.
    tokio::time::timeout(Duration::from_secs(5), disconnected)
        .await
        .expect("the model server sees the request closed");
    // The classifier saw the answer so far (with the violent event), not the whole of it.
    let checks: Vec<String> = cls
        .requests()
        .iter()
        .map(|r| r.json())
        .filter(|v| v["direction"] == "completion")
        .map(|v| v["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(checks.iter().any(|t| t.contains("暴力")), "{checks:?}");
    assert!(
        checks.iter().all(|t| t.chars().count() < 1500),
        "{checks:?}"
    );
    assert_stopped_by_classifier(&p).await;
}

#[tokio::test]
async fn a_clean_long_streamed_answer_is_checked_while_it_flows_and_stays_byte_identical() {
    let gate = Arc::new(Notify::new());
    let (_up, cls, p) = long_stream(false, gate.clone()).await;
    let mut resp = stream_request(&p).send().await.unwrap();
    let mut body = Vec::new();
    // Read until all 300 events are through (the model server then waits on the gate).
    let expected_text: String = (0..300).map(|_| chat_chunk("平静的文字")).collect();
    while body.len() < expected_text.len() {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("the text flows while it is checked")
            .unwrap()
            .expect("the stream goes on");
        body.extend_from_slice(&chunk);
    }
    let during = cls
        .requests()
        .iter()
        .filter(|r| r.json()["direction"] == "completion")
        .count();
    assert!(during >= 2, "checked while it flowed: {during} checks");
    gate.notify_one();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    let expected = format!("{expected_text}{}", chat_finish());
    assert_eq!(String::from_utf8(body).unwrap(), expected);
    // The check at the end saw the whole answer (its last max_chars).
    let last = cls.requests().last().unwrap().json();
    assert_eq!(last["text"].as_str().unwrap().chars().count(), 1500);
}

//! The monitors' review queue through the server (TC260-003 §7): a flagged prompt waits for a
//! monitor with its masked excerpt, the verdict is recorded, the queue's depth and age are
//! metrics, and an erasure takes the user's items. Needs PostgreSQL at
//! `SHENHE_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`).

mod support;

use serde_json::{json, Value};
use support::*;

const TOKEN: &str = "review-token";

/// A shenhe with `review` (YAML lines under it) and the admin token, in front of a model that
/// answers "好的"; the upstream and the token's folder live as long as the test.
async fn reviewed_proxy(policy: &str, review: &str) -> (Proxy, Upstream, tempfile::TempDir) {
    let up = Upstream::fixed(Script::json(
        r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"好的"},"finish_reason":"stop"}]}"#,
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let yaml = format!(
        "server:\n  admin_token_file: \"{}\"\npolicy:\n  categories:\n    - {policy}\nreview:\n  enabled: true\n{review}",
        token_file.display()
    );
    (proxy(&up.base_url(), &yaml).await, up, dir)
}

/// The items waiting, once the writer (off the request's path) has stored at least one.
async fn waiting(p: &Proxy) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let r = client()
            .get(p.admin_url("/admin/review"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        let items = v["items"].as_array().unwrap().clone();
        if !items.is_empty() || std::time::Instant::now() > deadline {
            return items;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_flagged_prompt_waits_for_a_monitor_and_the_verdict_is_recorded() {
    let table = format!("shenhe_review_it_{:016x}", rand::random::<u64>());
    let (p, _up, _dir) = reviewed_proxy(
        r#"{ id: A2b, action: flag, keywords: ["地域黑"] }"#,
        &format!("  database_url: \"{}\"\n  table: {table}\n", database_url()),
    )
    .await;
    let r = client()
        .post(p.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-user-id", "carol")
        .header("x-request-id", "req-review-1")
        .body(
            json!({"model": "m", "messages": [{"role": "user",
                "content": "这算不算地域黑？我的电话 13812345678"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a flag lets the prompt through");

    let admin = |path: &str| client().get(p.admin_url(path)).bearer_auth(TOKEN).send();
    let items = waiting(&p).await;
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert_eq!(item["request_id"], "req-review-1");
    assert_eq!(item["category"], "A2b");
    assert_eq!(item["action"], "flag");
    assert_eq!(item["direction"], "prompt");
    assert!(item["user"].as_str().unwrap().starts_with("u-"));
    let excerpt = item["excerpt"].as_str().unwrap();
    assert!(excerpt.contains("地域黑"), "{excerpt}");
    assert!(!excerpt.contains("13812345678"), "PII masked: {excerpt}");
    let m = admin_text(&p, "/metrics").await;
    assert!(m.contains("shenhe_review_queue_depth 1\n"), "{m}");

    // Without the token, nothing.
    let r = client()
        .get(p.admin_url("/admin/review"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A verdict, once.
    let id = item["id"].as_str().unwrap();
    let decide = |verdict: &str| {
        client()
            .post(p.admin_url(&format!("/admin/review/{id}")))
            .bearer_auth(TOKEN)
            .json(&json!({"verdict": verdict, "note": "确属地域歧视"}))
            .send()
    };
    let r = decide("confirmed").await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["verdict"], "confirmed");
    assert_eq!(decide("dismissed").await.unwrap().status(), 409);
    let m = admin_text(&p, "/metrics").await;
    assert!(m.contains("shenhe_review_queue_depth 0\n"), "{m}");
    assert!(m.contains("shenhe_review_oldest_age_seconds 0\n"), "{m}");
    let recs = p.records(2).await;
    let verdict = recs
        .iter()
        .find(|r| r["kind"] == "admin" && r["detail"].as_str().unwrap_or("").starts_with("review "))
        .expect("the verdict is on record");
    assert_eq!(verdict["request_id"], "req-review-1");
    assert!(verdict["detail"]
        .as_str()
        .unwrap()
        .ends_with("verdict=confirmed"));

    // Carol's erasure takes her items with her records.
    let r = client()
        .post(p.admin_url("/admin/records/erase"))
        .bearer_auth(TOKEN)
        .json(&json!({"user": "carol"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["review_items_erased"], 1);
    assert_eq!(
        admin(&format!("/admin/review/{id}"))
            .await
            .unwrap()
            .status(),
        404
    );

    drop_table(&table).await;
}

#[tokio::test]
async fn a_sample_of_the_prompts_let_through_waits_for_a_monitor_too() {
    let (p, _up, _dir) = reviewed_proxy(
        r#"{ id: A1d, action: block, keywords: ["炸弹制作"] }"#,
        "  store: memory\n  sample_rate: 1.0\n",
    )
    .await;
    let long = format!(
        "{}最后问一下：我的电话 13812345678 能查话费吗？",
        "前情提要。".repeat(100)
    );
    for content in [long.as_str(), "炸弹制作"] {
        client()
            .post(p.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-user-id", "erin")
            .body(
                json!({"model": "m", "messages": [{"role": "user", "content": content}]})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
    }
    let items = waiting(&p).await;
    // Only the prompt the policy let through is sampled; the refused one is a block decision,
    // not queued with `actions: [flag]`.
    assert_eq!(items.len(), 1, "{items:?}");
    let item = &items[0];
    assert_eq!(
        (item["category"].as_str(), item["action"].as_str()),
        (Some("sample"), Some("sample"))
    );
    let excerpt = item["excerpt"].as_str().unwrap();
    assert!(
        excerpt.ends_with("能查话费吗？"),
        "the prompt's end: {excerpt}"
    );
    assert!(excerpt.chars().count() <= 201, "{excerpt}");
    assert!(!excerpt.contains("13812345678"), "PII masked: {excerpt}");
    assert!(item["user"].as_str().unwrap().starts_with("u-"));
    // Sampling writes no audit record of its own.
    let recs = p.records(1).await;
    assert!(recs.iter().all(|r| r["category"] != "sample"), "{recs:?}");
}

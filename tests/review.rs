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
    waiting_for(p, 1).await
}

/// The items waiting, once the writer has stored at least `n` (or 5 s have passed).
async fn waiting_for(p: &Proxy, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let v = admin_json(p, "/admin/review".into()).await;
        let items = v["items"].as_array().unwrap().clone();
        if items.len() >= n || std::time::Instant::now() > deadline {
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
    assert!(v["strike"].is_null(), "no strike without enforce: {v}");
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
        ask(&p, "erin", content).await;
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

/// A one-message chat prompt from `user`.
async fn ask(p: &Proxy, user: &str, content: &str) -> reqwest::Response {
    client()
        .post(p.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-user-id", user)
        .body(json!({"model": "m", "messages": [{"role": "user", "content": content}]}).to_string())
        .send()
        .await
        .unwrap()
}

/// GET `path` on the admin listener with the token, as JSON.
async fn admin_json(p: &Proxy, path: String) -> Value {
    client()
        .get(p.admin_url(&path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A monitor's verdict on item `id`: the answer.
async fn verdict(p: &Proxy, id: String, verdict: &str) -> Value {
    client()
        .post(p.admin_url(&format!("/admin/review/{id}")))
        .bearer_auth(TOKEN)
        .json(&json!({ "verdict": verdict }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn verdicts_feed_back_a_strike_for_a_confirmed_violation_and_dismissed_terms_for_the_lists() {
    let (p, _up, _dir) = reviewed_proxy(
        r#"{ id: A2b, action: flag, keywords: ["地域黑", "刻板印象"] }"#,
        "  store: memory\nenforce:\n  enabled: true\n  strikes: { warn_at: 1, restrict_at: 0, suspend_at: 2 }\n",
    )
    .await;
    let prompts = [
        ("heidi", "讨论“地域黑”这个词的来历"),
        ("heidi", "如何应对网络上的地域黑现象"),
        ("ivan", "某地人都是骗子，地域黑一下"),
        ("ivan", "再来一段刻板印象的段子"),
    ];
    for (user, content) in prompts {
        assert_eq!(
            ask(&p, user, content).await.status(),
            200,
            "flags let prompts through"
        );
    }
    let items = waiting_for(&p, 4).await;
    assert_eq!(items.len(), 4, "{items:?}");
    let id = |i: usize| items[i]["id"].as_str().unwrap().to_string();
    let standing = |user: &str| admin_json(&p, format!("/admin/users?user={user}"));
    // Heidi's two were benign mentions: dismissed, no strike.
    for i in [0, 1] {
        let v = verdict(&p, id(i), "dismissed").await;
        assert!(v["strike"].is_null(), "{v}");
    }
    assert_eq!(standing("heidi").await["strikes"], 0);
    // Ivan's were violations: each confirmed verdict is a strike, the second a suspension.
    let v = verdict(&p, id(2), "confirmed").await;
    assert_eq!(v["strike"], "counted", "{v}");
    assert_eq!(standing("ivan").await["strikes"], 1);
    let v = verdict(&p, id(3), "confirmed").await;
    assert!(
        v["strike"].as_str().unwrap().starts_with("suspended for"),
        "{v}"
    );
    let ivan = standing("ivan").await;
    assert_eq!(ivan["strikes"], 2);
    assert!(ivan["suspended_until"].is_string(), "{ivan}");
    // Four decisions, four verdicts, one suspension.
    let recs = p.records(9).await;
    assert!(
        recs.iter().any(|r| r["kind"] == "sanction"
            && r["request_id"] == items[3]["request_id"]
            && r["detail"]
                .as_str()
                .unwrap_or("")
                .starts_with("suspended for")),
        "the suspension is on record: {recs:?}"
    );
    assert!(
        recs.iter().any(|r| r["kind"] == "admin"
            && r["detail"]
                .as_str()
                .unwrap_or("")
                .ends_with("verdict=confirmed strike=counted")),
        "{recs:?}"
    );
    let m = admin_text(&p, "/metrics").await;
    assert!(
        m.contains("shenhe_review_verdicts_total{category=\"A2b\",verdict=\"dismissed\"} 2"),
        "{m}"
    );

    // What the list maintainers read: the category's precision, the term dismissed most.
    let stats = admin_json(&p, "/admin/review/stats?days=7".into()).await;
    let cat = &stats["categories"][0];
    assert_eq!(
        (
            cat["category"].as_str(),
            cat["confirmed"].as_u64(),
            cat["dismissed"].as_u64()
        ),
        (Some("A2b"), Some(2), Some(2)),
        "{stats}"
    );
    assert_eq!(cat["precision"], 0.5);
    let terms = stats["dismissed_terms"].as_array().unwrap();
    assert_eq!(terms.len(), 1, "{stats}");
    assert_eq!(terms[0]["term"], "地域黑");
    assert_eq!(terms[0]["dismissed"], 2);
    assert_eq!(terms[0]["confirmed"], 1);
    let mut examples: Vec<&str> = terms[0]["dismissed_examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    examples.sort_unstable();
    let mut expected = [
        items[0]["id"].as_str().unwrap(),
        items[1]["id"].as_str().unwrap(),
    ];
    expected.sort_unstable();
    assert_eq!(examples, expected);
    let bad = client()
        .get(p.admin_url("/admin/review/stats?days=0"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let unauth = client()
        .get(p.admin_url("/admin/review/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);
}

//! Actions on users through the server (Interim Measures Art. 14 para 2, Art. 10): strikes from
//! block decisions, warnings, suspension shared by two replicas through Redis, the admin API
//! that shows and lifts a standing, limits for minors. Needs the Redis server at
//! `SHENHE_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/`); fails when it cannot reach it.

mod support;

use serde_json::{json, Value};
use support::*;

fn redis_url() -> String {
    std::env::var("SHENHE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// The config of a replica; its secrets sit beside `token_file`.
fn enforce_yaml(prefix: &str, token_file: &std::path::Path, minors: &str) -> String {
    std::fs::write(
        token_file.with_file_name("pseudonym-secret"),
        "a pseudonym secret the replicas share\n",
    )
    .unwrap();
    format!(
        r#"
server:
  admin_token_file: "{}"
audit:
  pseudonym_secret_file: "{}"
policy:
  categories:
    - {{ id: A1d, action: block, keywords: ["炸弹", "forbiddenword"] }}
enforce:
  enabled: true
  store: redis
  redis_url: "{}"
  key_prefix: "{prefix}"
  strikes: {{ window: "1h", warn_at: 1, restrict_at: 0, suspend_at: 2 }}
  suspend_for: "10m"
  sync_interval: "20ms"
{minors}
"#,
        token_file.display(),
        token_file.with_file_name("pseudonym-secret").display(),
        redis_url()
    )
}

fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn chat(p: &Proxy, user: &str, content: &str, stream: bool) -> reqwest::Response {
    let body =
        json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": content}]});
    client()
        .post(p.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-user-id", user)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn strikes_warn_then_suspend_on_every_replica_until_lifted() {
    let up = Upstream::start(|r| {
        if String::from_utf8_lossy(&r.body).contains("\"stream\":true") {
            Script::sse_writes(vec![
                chat_chunk("here is a forbidden"),
                chat_chunk("word for you"),
                chat_finish(),
                "data: [DONE]\n\n".into(),
            ])
        } else {
            Script::json(
                r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}]}"#,
            )
        }
    })
    .await;
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("token");
    std::fs::write(&token, "enforce-token\n").unwrap();
    let prefix = format!("shenhe-it:{:016x}:", rand::random::<u64>());
    let yaml = enforce_yaml(&prefix, &token, "");
    let (a, b) = (
        proxy(&up.base_url(), &yaml).await,
        proxy(&up.base_url(), &yaml).await,
    );

    // A clean request: no notice.
    let r = chat(&a, "alice", "hello", false).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-shenhe-user-notice").is_none());
    // A blocked prompt on replica A is a strike: the next answer, on replica B, warns.
    let r = chat(&a, "alice", "教我做炸弹", false).await;
    assert_eq!(r.status(), 400);
    // B reads the list of flagged users every 20 ms: it warns from its next read on.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let r = chat(&b, "alice", "hello", false).await;
        assert_eq!(r.status(), 200);
        if r.headers().get("x-shenhe-user-notice").is_some() {
            assert_eq!(r.headers()["x-shenhe-user-notice"], "warning");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B never read A's strike"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // A stream stopped for its answer is the second strike: alice is suspended on both.
    let r = chat(&b, "alice", "tell me", true).await;
    let text = r.text().await.unwrap();
    assert!(text.contains("content_filter"), "{text}");
    // B made the strike and knows at once; A from its next read.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while chat(&a, "alice", "hello", false).await.status() != 403 {
        assert!(
            std::time::Instant::now() < deadline,
            "A never read B's strike"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let seen = up.requests().len();
    for p in [&a, &b] {
        let r = chat(p, "alice", "hello", false).await;
        assert_eq!(r.status(), 403);
        let retry = retry_after(&r);
        assert!((590..=600).contains(&retry), "{retry}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "user_suspended");
        assert_eq!(v["error"]["type"], "permission_error");
    }
    assert_eq!(
        up.requests().len(),
        seen,
        "a suspended user never reaches the model"
    );
    // Another user is served; a request with no user id is too.
    assert_eq!(chat(&a, "bob", "hello", false).await.status(), 200);

    // The records: a sanction when the suspension began and one per refusal, under the
    // pseudonymous id only.
    let records = b.records(3).await;
    let sanctions: Vec<&Value> = records.iter().filter(|r| r["kind"] == "sanction").collect();
    assert!(
        sanctions.iter().any(|r| r["detail"]
            .as_str()
            .unwrap()
            .starts_with("suspended for 600s")),
        "{sanctions:?}"
    );
    assert!(sanctions.iter().any(|r| r["detail"]
        .as_str()
        .unwrap()
        .starts_with("refused: suspended")));
    let all = format!("{:?}", [a.records(1).await, records].concat());
    assert!(
        !all.contains("alice"),
        "raw user ids never reach the records"
    );

    // The admin API: the standing, then a lift, on either replica.
    let admin = |p: &Proxy, path: &str| {
        client()
            .get(p.admin_url(path))
            .header("authorization", "Bearer enforce-token")
    };
    let v: Value = admin(&a, "/admin/users?user=alice")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["strikes"], 2);
    assert!(v["suspended_until"].is_string(), "{v}");
    let unauth = client()
        .post(b.admin_url("/admin/users/lift"))
        .json(&json!({"user": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);
    let r = client()
        .post(b.admin_url("/admin/users/lift"))
        .header("authorization", "Bearer enforce-token")
        .json(&json!({"user": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = chat(&a, "alice", "hello", false).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-shenhe-user-notice").is_none());
}

#[tokio::test]
async fn minors_are_refused_outside_their_hours() {
    let up = Upstream::fixed(Script::json(
        r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}"#,
    ))
    .await;
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("token");
    std::fs::write(&token, "t\n").unwrap();
    // Hours that open two hours from now (UTC) and close an hour later.
    let now_min = (chrono::Utc::now().timestamp() / 60 % 1440) as u32;
    let (from, to) = ((now_min + 120) % 1440, (now_min + 180) % 1440);
    let hhmm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
    let minors = format!(
        "  minors: {{ header: \"x-user-minor\", hours: \"{}-{}\", utc_offset: \"Z\" }}",
        hhmm(from),
        hhmm(to)
    );
    let prefix = format!("shenhe-it:{:016x}:", rand::random::<u64>());
    let p = proxy(&up.base_url(), &enforce_yaml(&prefix, &token, &minors)).await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let send = |minor: Option<&'static str>| {
        let mut r = client()
            .post(p.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-user-id", "carol")
            .body(body.clone());
        if let Some(m) = minor {
            r = r.header("x-user-minor", m);
        }
        r.send()
    };
    let r = send(Some("1")).await.unwrap();
    assert_eq!(r.status(), 403);
    let retry = retry_after(&r);
    assert!((7_080..=7_200).contains(&retry), "{retry}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "minor_hours");
    assert_eq!(send(None).await.unwrap().status(), 200);
    assert_eq!(
        up.requests().len(),
        1,
        "the refused minor never reached the model"
    );
}

#[tokio::test]
async fn users_shared_through_redis_need_a_shared_pseudonym_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shenhe.yaml");
    std::fs::write(
        &path,
        format!(
            "server: {{ listen: \"127.0.0.1:0\", admin_listen: \"127.0.0.1:0\" }}\nupstream: {{ base_url: \"http://127.0.0.1:9\" }}\naudit: {{ dir: \"{}\", pseudonym_secret_env: ~ }}\nlabels: {{ implicit: {{ enabled: false }} }}\nenforce: {{ enabled: true, store: redis, redis_url: \"{}\" }}\n",
            dir.path().join("audit").display(),
            redis_url()
        ),
    )
    .unwrap();
    let loaded = shenhe::config::Config::load(&path).expect("valid config");
    let err = match shenhe::server::start(loaded).await {
        Ok(_) => panic!("started with users that differ on every replica"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("audit.pseudonym_secret_env"), "{err}");
}

#[tokio::test]
async fn three_blocked_prompts_in_a_row_suspend_where_a_clean_one_between_does_not() {
    let up = Upstream::fixed(Script::json(
        r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}]}"#,
    ))
    .await;
    let yaml = r#"
policy:
  categories:
    - { id: A1d, action: block, keywords: ["炸弹"] }
enforce:
  enabled: true
  strikes: { window: "1h", warn_at: 1, restrict_at: 0, suspend_at: 10, suspend_consecutive: 3 }
"#;
    let p = proxy(&up.base_url(), yaml).await;
    // Oscar's violations each follow a clean request: four strikes, none in a row.
    for content in ["炸弹", "你好", "炸弹", "你好", "炸弹", "你好", "炸弹"] {
        chat(&p, "oscar", content, false).await;
    }
    assert_eq!(chat(&p, "oscar", "你好", false).await.status(), 200);
    // Mallory's: two, a clean one, then three in a row: suspended after the third.
    for (content, status) in [
        ("炸弹", 400),
        ("炸弹", 400),
        ("你好", 200),
        ("炸弹", 400),
        ("炸弹", 400),
        ("炸弹", 400),
        ("你好", 403),
    ] {
        assert_eq!(chat(&p, "mallory", content, false).await.status(), status);
    }
    // Nine decisions, the suspension, the refusal after it.
    let recs = p.records(11).await;
    assert!(
        recs.iter().any(|r| r["kind"] == "sanction"
            && r["detail"]
                .as_str()
                .unwrap_or("")
                .ends_with("5 strikes, 3 in a row")),
        "{recs:?}"
    );
}

#[tokio::test]
async fn a_category_acts_by_its_minors_action_on_a_minors_request() {
    let up = Upstream::start(|r| {
        if String::from_utf8_lossy(&r.body).contains("\"stream\":true") {
            Script::sse_writes(vec![
                chat_chunk("这是一个关于恋"),
                chat_chunk("爱细节的故事"),
                chat_finish(),
                "data: [DONE]\n\n".into(),
            ])
        } else {
            Script::json(
                r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"好的"},"finish_reason":"stop"}]}"#,
            )
        }
    })
    .await;
    // Actions on users stay off: the minors' header still marks whose request it is.
    let yaml = r#"
policy:
  categories:
    - { id: minors_content, action: flag, minors: block, keywords: ["恋爱细节"] }
enforce:
  minors: { header: "x-user-minor" }
"#;
    let p = proxy(&up.base_url(), yaml).await;
    let ask = |minor: bool, stream: bool| {
        let body = json!({"model": "m", "stream": stream,
            "messages": [{"role": "user", "content": "讲讲恋爱细节"}]});
        let mut req = client()
            .post(p.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-user-id", "pat");
        if minor {
            req = req.header("x-user-minor", "1");
        }
        req.body(body.to_string()).send()
    };
    // Anyone else: flagged and served, the prompt and the streamed answer alike.
    assert_eq!(ask(false, false).await.unwrap().status(), 200);
    let text = ask(false, true).await.unwrap().text().await.unwrap();
    assert!(
        text.contains("爱细节的故事") && !text.contains("content_filter"),
        "{text}"
    );
    // A minor: the prompt is refused, and so is the answer, stopped as it streams.
    let r = ask(true, false).await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "content_filter");
    let recs = p.records(3).await;
    let minor: Vec<&Value> = recs.iter().filter(|r| r["minor"] == true).collect();
    assert_eq!(minor.len(), 1, "{recs:?}");
    assert_eq!(minor[0]["action"], "block");
    assert!(recs
        .iter()
        .filter(|r| r["minor"].is_null() && r["kind"] == "decision")
        .all(|r| r["action"] == "flag"));

    let p2 = proxy(
        &up.base_url(),
        &yaml.replace(
            "keywords: [\"恋爱细节\"]",
            "applies_to: completion, keywords: [\"恋爱细节\"]",
        ),
    )
    .await;
    let text = client()
        .post(p2.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-user-minor", "yes")
        .body(
            json!({"model": "m", "stream": true,
            "messages": [{"role": "user", "content": "讲个故事"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("content_filter"), "{text}");
    assert!(
        !text.contains("爱细节"),
        "no byte of the match reached the minor: {text}"
    );
}

#[tokio::test]
async fn a_minors_long_session_is_reminded_of_in_a_header() {
    let up = Upstream::fixed(Script::json(
        r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"好的"},"finish_reason":"stop"}]}"#,
    ))
    .await;
    let yaml = r#"
enforce:
  enabled: true
  minors: { header: "x-user-minor", session_reminder: "1ms" }
"#;
    let p = proxy(&up.base_url(), yaml).await;
    let ask = |minor: &'static str| {
        client()
            .post(p.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-user-id", "kim")
            .header("x-user-minor", minor)
            .body(
                json!({"model": "m", "messages": [{"role": "user", "content": "你好"}]})
                    .to_string(),
            )
            .send()
    };
    let first = ask("1").await.unwrap();
    assert!(first.headers().get("x-shenhe-usage-reminder").is_none());
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let next = ask("1").await.unwrap();
    assert_eq!(next.status(), 200);
    assert_eq!(next.headers()["x-shenhe-usage-reminder"], "0");
    let adult = ask("0").await.unwrap();
    assert!(adult.headers().get("x-shenhe-usage-reminder").is_none());
    let m = admin_text(&p, "/metrics").await;
    let reminded: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("shenhe_minor_usage_reminders_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(reminded >= 1, "{m}");
}

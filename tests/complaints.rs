//! Complaints and reports through the server (Interim Measures Art. 15): a user complains about
//! a labelled answer at the public entry and reads the outcome there; an operator finds the
//! answer's audit records from the complaint, resolves it, sees open and overdue counts in the
//! metrics; an erasure forgets who complained. Needs the PostgreSQL server at
//! `SHENHE_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`); fails when it
//! cannot reach it.

mod support;

use serde_json::{json, Value};
use support::*;

const TOKEN: &str = "complaints-token";
const ENTRY: &str = "/shenhe/v1/complaints";

async fn complain(p: &Proxy, user: Option<&str>, body: &str) -> reqwest::Response {
    let mut req = client()
        .post(p.url(ENTRY))
        .header("content-type", "application/json");
    if let Some(u) = user {
        req = req.header("x-user-id", u);
    }
    req.body(body.to_string()).send().await.unwrap()
}

async fn status(p: &Proxy, user: &str, id: &str) -> reqwest::Response {
    client()
        .get(p.url(&format!("{ENTRY}/{id}")))
        .header("x-user-id", user)
        .send()
        .await
        .unwrap()
}

async fn admin_get(p: &Proxy, path: &str) -> (u16, Value) {
    let r = client()
        .get(p.admin_url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn admin_post(p: &Proxy, path: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(p.admin_url(path))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The value of one metric series in the admin `/metrics` text, 0 when absent.
async fn metric(p: &Proxy, series: &str) -> f64 {
    admin_text(p, "/metrics")
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_user_complains_about_a_labelled_answer_and_reads_the_outcome() {
    let up = Upstream::fixed(Script::json(
        r#"{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"天气很好。"},"finish_reason":"stop"}]}"#,
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let table = format!("shenhe_complaints_it_{:016x}", rand::random::<u64>());
    let yaml = format!(
        "{}server:\n  admin_token_file: \"{}\"\ncomplaints:\n  enabled: true\n  database_url: \"{}\"\n  table: {table}\n",
        labels_yaml(dir.path()),
        token_file.display(),
        database_url()
    );
    let p = proxy(&up.base_url(), &yaml).await;

    // An answer, with its content id (ProduceID) in the implicit label.
    let r = client()
        .post(p.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-user-id", "alice")
        .body(json!({"model": "m", "messages": [{"role": "user", "content": "天气"}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    let pid = answer["aigc"]["ProduceID"].as_str().unwrap().to_string();

    // The published procedure, with each type's time limit.
    let r = client()
        .get(p.url(&format!("{ENTRY}/procedure")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let proc: Value = r.json().await.unwrap();
    assert!(proc["procedure"].as_str().unwrap().contains("ProduceID"));
    let illegal = proc["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "illegal_content")
        .expect("illegal_content listed");
    assert_eq!(illegal["time_limit_seconds"], 86_400);

    // Alice complains about the answer.
    let body =
        json!({"type": "illegal_content", "content_id": pid, "description": "回答里有不实信息"});
    let r = complain(&p, Some("alice"), &body.to_string()).await;
    assert_eq!(r.status(), 201);
    assert!(r.headers().contains_key("x-request-id"));
    let filed: Value = r.json().await.unwrap();
    let id = filed["id"].as_str().unwrap().to_string();
    assert_eq!(filed["status"], "open");
    assert_eq!(filed["content_id"], pid.as_str());
    assert!(
        filed.get("description").is_none() && filed.get("reporter").is_none(),
        "{filed}"
    );
    let created = chrono::DateTime::parse_from_rfc3339(filed["created_at"].as_str().unwrap());
    let due = chrono::DateTime::parse_from_rfc3339(filed["due_at"].as_str().unwrap());
    assert_eq!(due.unwrap() - created.unwrap(), chrono::Duration::hours(24));

    // Only alice reads it; a caller nobody can name cannot file or read.
    assert_eq!(status(&p, "alice", &id).await.status(), 200);
    let r = status(&p, "bob", &id).await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_found");
    let r = complain(&p, None, &body.to_string()).await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");

    // Bad input: a clear error in the OpenAI shape, naming the field.
    let r = complain(&p, Some("alice"), "{not json").await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_json");
    let r = complain(&p, Some("alice"), r#"{"type":"spam","description":"x"}"#).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["param"], "type");
    let huge = json!({"type": "other", "description": "x".repeat(70_000)}).to_string();
    assert_eq!(complain(&p, Some("alice"), &huge).await.status(), 413);
    let r = client().put(p.url(ENTRY)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");

    // The operator: no token, no access.
    let r = client()
        .get(p.admin_url("/admin/complaints"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (code, v) = admin_get(&p, "/admin/complaints?status=open").await;
    assert_eq!(code, 200);
    let listed = &v["complaints"][0];
    assert_eq!(listed["id"], id.as_str());
    assert_eq!(listed["description"], "回答里有不实信息");
    assert_eq!(listed["channel"], "app");
    assert_eq!(listed["overdue"], false);
    assert!(listed["reporter"].as_str().unwrap().starts_with("u-"));
    // From the complaint to the answer's records: its delivery, by the content id.
    let (code, v) = admin_get(&p, &format!("/admin/complaints/{id}")).await;
    assert_eq!(code, 200, "{v}");
    let records = v["records"].as_array().expect("linked records");
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "delivery" && r["content_id"] == pid.as_str()),
        "{v}"
    );
    assert_eq!(
        metric(&p, "shenhe_complaints_open{type=\"illegal_content\"}").await,
        1.0
    );

    // Resolved once, with the answer alice reads.
    let (code, v) = admin_post(
        &p,
        &format!("/admin/complaints/{id}/resolve"),
        json!({"outcome": "upheld", "reply": "已核实并删除该内容。"}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let (code, _) = admin_post(
        &p,
        &format!("/admin/complaints/{id}/resolve"),
        json!({"outcome": "rejected", "reply": "again"}),
    )
    .await;
    assert_eq!(code, 409);
    let v: Value = status(&p, "alice", &id).await.json().await.unwrap();
    assert_eq!(v["status"], "resolved");
    assert_eq!(v["outcome"], "upheld");
    assert_eq!(v["reply"], "已核实并删除该内容。");
    assert_eq!(
        metric(&p, "shenhe_complaints_open{type=\"illegal_content\"}").await,
        0.0
    );

    // Filing and resolving are on record, linked to the answer and to alice's pseudonym.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let recs = loop {
        let recs = p.records(1).await;
        let n = recs.iter().filter(|r| r["kind"] == "complaint").count();
        if n >= 2 || std::time::Instant::now() > deadline {
            break recs;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let events: Vec<&str> = recs
        .iter()
        .filter(|r| r["kind"] == "complaint")
        .map(|r| r["detail"].as_str().unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events[0].starts_with(&format!("filed {id} type=illegal_content channel=app")));
    assert!(
        events[1].starts_with(&format!("resolved {id}")) && events[1].ends_with("outcome=upheld")
    );
    let complaint_rec = recs.iter().find(|r| r["kind"] == "complaint").unwrap();
    assert_eq!(complaint_rec["content_id"], pid.as_str());
    assert_eq!(complaint_rec["user"], listed["reporter"]);

    // A complaint alice phoned in, filed by the operator under her id.
    let (code, phoned) = admin_post(
        &p,
        "/admin/complaints",
        json!({"type": "other", "channel": "phone", "user": "alice", "description": "电话投诉"}),
    )
    .await;
    assert_eq!(code, 201, "{phoned}");
    assert_eq!(phoned["reporter"], listed["reporter"]);
    let (code, _) = admin_post(
        &p,
        "/admin/complaints",
        json!({"type": "other", "channel": "carrier pigeon", "description": "x"}),
    )
    .await;
    assert_eq!(code, 400);

    // Alice asks for a copy of her records (Art. 11): her complaint is among them, and the
    // request is counted and itself on record.
    let access = "shenhe_pi_requests_total{type=\"access\"}";
    let before = metric(&p, access).await;
    let (code, v) = admin_get(&p, "/admin/records?user=alice").await;
    assert_eq!(code, 200, "{v}");
    assert!(
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "complaint"),
        "{v}"
    );
    assert_eq!(metric(&p, access).await, before + 1.0);
    // Then to have them erased: her complaints stay, without her or her words.
    let delete = "shenhe_pi_requests_total{type=\"delete\"}";
    let before = metric(&p, delete).await;
    let (code, v) = admin_post(&p, "/admin/records/erase", json!({"user": "alice"})).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(metric(&p, delete).await, before + 1.0);
    assert_eq!(v["complaints_forgotten"], 2);
    let (_, v) = admin_get(&p, &format!("/admin/complaints/{id}")).await;
    assert_eq!(v["complaint"]["description"], "");
    assert_eq!(v["complaint"]["reporter"], Value::Null);
    assert_eq!(v["complaint"]["outcome"], "upheld");
    drop_table(&table).await;
}

#[tokio::test]
async fn overdue_complaints_show_in_the_metrics_and_the_admin_list() {
    let up = Upstream::fixed(Script::json("{}")).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let yaml = format!(
        r#"
server:
  admin_token_file: "{}"
complaints:
  enabled: true
  store: memory
  public_path: null
  types:
    overdue_test: {{ sla: "1ms", name_zh: "测试", name_en: "Test" }}
    ontime_test: {{ sla: "1h", name_zh: "测试", name_en: "Test" }}
"#,
        token_file.display()
    );
    let p = proxy(&up.base_url(), &yaml).await;
    for kind in ["overdue_test", "ontime_test"] {
        let (code, v) = admin_post(
            &p,
            "/admin/complaints",
            json!({"type": kind, "channel": "email", "request_id": "req-1"}),
        )
        .await;
        assert_eq!(code, 201, "{v}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (_, v) = admin_get(&p, "/admin/complaints?overdue=true").await;
    let listed = v["complaints"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{v}");
    assert_eq!(listed[0]["type"], "overdue_test");
    assert_eq!(listed[0]["overdue"], true);
    assert_eq!(
        metric(&p, "shenhe_complaints_overdue{type=\"overdue_test\"}").await,
        1.0
    );
    assert_eq!(
        metric(&p, "shenhe_complaints_overdue{type=\"ontime_test\"}").await,
        0.0
    );
    assert_eq!(
        metric(&p, "shenhe_complaints_open{type=\"ontime_test\"}").await,
        1.0
    );
    // The complaint types and their time limits are published to inspectors too.
    let policy: Value = serde_json::from_str(&admin_text(&p, "/admin/policy").await).unwrap();
    assert_eq!(policy["complaints"]["enabled"], true);
    assert_eq!(
        policy["complaints"]["types"]["ontime_test"]["time_limit"],
        "1h"
    );
    assert_eq!(policy["complaints"]["public_path"], Value::Null);
    // With `public_path: null` the entry is not on the public listener: the path is an
    // unlisted POST like any other.
    let r = client()
        .post(p.url(ENTRY))
        .header("x-user-id", "alice")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unknown_route");
}

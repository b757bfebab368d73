//! Operations: live reload (admin, SIGHUP, file watch with the ConfigMap symlink swap), admin
//! security, records that survive SIGKILL, and a replica hand-over with zero failed requests.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use support::*;
use tokio::sync::Notify;

fn chat(content: &str, stream: bool) -> String {
    json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": content}]})
        .to_string()
}

async fn post_chat(url: &str, content: &str) -> reqwest::Response {
    client()
        .post(url)
        .header("content-type", "application/json")
        .body(chat(content, false))
        .send()
        .await
        .unwrap()
}

fn write_policy(p: &Path, terms: &[&str]) {
    let mut yaml = std::fs::read_to_string(p).unwrap();
    if let Some(i) = yaml.find("policy:") {
        yaml.truncate(i);
    }
    let list: Vec<String> = terms.iter().map(|t| format!("\"{t}\"")).collect();
    yaml.push_str(&format!(
        "policy:\n  categories:\n    - {{ id: A1d, action: block, keywords: [{}] }}\n",
        list.join(", ")
    ));
    std::fs::write(p, yaml).unwrap();
}

#[tokio::test]
async fn admin_reload_swaps_policy_and_keeps_running_streams() {
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let up = Upstream::start(move |r| {
        if r.body.windows(14).any(|w| w == b"\"stream\":true}")
            || String::from_utf8_lossy(&r.body).contains("\"stream\":true")
        {
            // Ends in a letter that starts no term, so it is released at once.
            let mut s = Script::sse_writes(vec![chat_chunk("begin")]);
            s.steps.push(Step::Gate(g.clone()));
            s.steps
                .push(Step::Write(Bytes::from(chat_chunk("newterm "))));
            s.steps.push(Step::Write(Bytes::from(chat_finish())));
            s
        } else {
            Script::json("{\"choices\":[]}")
        }
    })
    .await;
    let p = proxy(
        &up.base_url(),
        "policy:\n  categories:\n    - { id: A1d, action: block, keywords: [\"oldterm\"] }\n",
    )
    .await;
    let token_file = p.dir.path().join("admin-token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let mut yaml = std::fs::read_to_string(p.config_path()).unwrap();
    yaml = yaml.replacen(
        "server:\n",
        &format!(
            "server:\n  admin_token_file: \"{}\"\n",
            token_file.display()
        ),
        1,
    );
    std::fs::write(p.config_path(), &yaml).unwrap();
    // The running config does not know the token file yet: reload with it first.
    let r = client()
        .post(p.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "no token configured yet: mutating admin routes are refused"
    );
    shenhe::server::reload::reload(&p.running.state, "test")
        .await
        .unwrap();

    let before: Value = client()
        .get(p.admin_url("/admin/policy"))
        .send()
        .await
        .unwrap()
        .json_value()
        .await;
    // A stream that starts under the old policy.
    let resp = client()
        .post(p.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat("hi", true))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    use futures_util::StreamExt;
    let first = stream.next().await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("begin"),
        "{first:?}"
    );

    write_policy(&p.config_path(), &["newterm"]);
    let r = client()
        .post(p.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no token, no reload");
    let r = client()
        .post(p.admin_url("/admin/reload"))
        .header("authorization", "Bearer wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .post(p.admin_url("/admin/reload"))
        .header("authorization", "Bearer s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let after: Value = client()
        .get(p.admin_url("/admin/policy"))
        .send()
        .await
        .unwrap()
        .json_value()
        .await;
    assert_ne!(before["policy_version"], after["policy_version"]);

    // The running stream finishes under the policy it started with: "newterm" was not banned then.
    gate.notify_one();
    let mut rest = Vec::new();
    while let Some(b) = stream.next().await {
        rest.extend_from_slice(&b.unwrap());
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(
        rest.contains("newterm") && rest.contains("\"finish_reason\":\"stop\""),
        "first={first:?} rest={rest}"
    );
    // The next request uses the new policy.
    assert_eq!(
        post_chat(&p.url("/v1/chat/completions"), "say newterm")
            .await
            .status(),
        400
    );
    assert_eq!(
        post_chat(&p.url("/v1/chat/completions"), "say oldterm")
            .await
            .status(),
        200
    );

    // An invalid config keeps the old one running and says why.
    std::fs::write(
        p.config_path(),
        yaml.replace("upstream:", "upstream:\n  bogus_key: 1"),
    )
    .unwrap();
    let r = client()
        .post(p.admin_url("/admin/reload"))
        .header("authorization", "Bearer s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let why = r.text().await.unwrap();
    assert!(why.contains("bogus_key"), "{why}");
    assert_eq!(
        post_chat(&p.url("/v1/chat/completions"), "say newterm")
            .await
            .status(),
        400
    );
    let m = admin_text(&p, "/metrics").await;
    assert!(
        m.contains("shenhe_config_reload_total{result=\"error\"}"),
        "{m}"
    );
    // Reading records needs the token too.
    assert_eq!(
        client()
            .get(p.admin_url("/admin/records?limit=1"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = client()
        .get(p.admin_url("/admin/records?limit=5"))
        .header("authorization", "Bearer s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

trait JsonValue {
    async fn json_value(self) -> Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Value {
        serde_json::from_slice(&self.bytes().await.unwrap()).unwrap()
    }
}

#[tokio::test]
async fn configmap_symlink_swap_triggers_a_reload() {
    let up = Upstream::fixed(Script::json("{\"choices\":[]}")).await;
    // Lay out the config the way the kubelet mounts a ConfigMap: files are symlinks into ..data,
    // itself a symlink to a timestamped folder that is swapped atomically on update.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let v1 = root.join("..2026_01_01_v1");
    std::fs::create_dir(&v1).unwrap();
    let base = format!(
        "server:\n  listen: \"127.0.0.1:0\"\n  admin_listen: \"127.0.0.1:0\"\nupstream:\n  base_url: \"{}\"\naudit:\n  dir: \"{}\"\nlabels:\n  explicit: {{ enabled: false }}\n  implicit: {{ enabled: false }}\npolicy:\n  keyword_files: [\"lists.txt\"]\n",
        up.base_url(),
        root.join("audit").display()
    );
    std::fs::write(v1.join("shenhe.yaml"), &base).unwrap();
    std::fs::write(v1.join("lists.txt"), "alpha\tA1d\n").unwrap();
    std::os::unix::fs::symlink("..2026_01_01_v1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/shenhe.yaml", root.join("shenhe.yaml")).unwrap();
    std::os::unix::fs::symlink("..data/lists.txt", root.join("lists.txt")).unwrap();
    let loaded = shenhe::config::Config::load(&root.join("shenhe.yaml")).unwrap();
    let running = shenhe::server::start(loaded).await.unwrap();
    let url = format!("http://{}/v1/chat/completions", running.public_addr);
    assert_eq!(post_chat(&url, "alpha").await.status(), 400);
    assert_eq!(post_chat(&url, "beta").await.status(), 200);

    // The update: a new folder, then ..data swapped to it with one rename.
    let v2 = root.join("..2026_01_02_v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("shenhe.yaml"), &base).unwrap();
    std::fs::write(v2.join("lists.txt"), "beta\tA1d\n").unwrap();
    std::os::unix::fs::symlink("..2026_01_02_v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if post_chat(&url, "beta").await.status() == 400 {
            break;
        }
        assert!(Instant::now() < deadline, "the swap was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(post_chat(&url, "alpha").await.status(), 200);
    running.shutdown.trigger();
}

/// A shenhe process of its own, for signals.
struct Process {
    child: Child,
    public: String,
    admin: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn spawn_shenhe(dir: &Path, upstream: &str, extra: &str) -> Process {
    let (pp, ap) = (free_port(), free_port());
    let cfg = dir.join("shenhe.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server:\n  listen: \"127.0.0.1:{pp}\"\n  admin_listen: \"127.0.0.1:{ap}\"\n  shutdown_grace: \"5s\"\n{extra}upstream:\n  base_url: \"{upstream}\"\naudit:\n  dir: \"{}\"\n  fsync: always\nlabels:\n  explicit: {{ enabled: false }}\n  implicit: {{ enabled: false }}\npolicy:\n  categories:\n    - {{ id: A1d, action: block, keywords: [\"炸弹\"] }}\nlog:\n  level: warn\n",
            dir.join("audit").display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_shenhe"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Process {
        child,
        public: format!("http://127.0.0.1:{pp}"),
        admin: format!("http://127.0.0.1:{ap}"),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while client()
        .get(format!("{}/readyz", p.admin))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "shenhe did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p
}

fn signal(p: &Process, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &p.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

#[tokio::test]
async fn acknowledged_decisions_survive_sigkill() {
    let up = Upstream::fixed(Script::json("{\"choices\":[]}")).await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn_shenhe(dir.path(), &up.base_url(), "").await;
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (url, acked, sent) = (
            format!("{}/v1/chat/completions", p.public),
            acked.clone(),
            sent.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for i in 0..10_000 {
                let rid = format!("kill-{w}-{i}");
                sent.fetch_add(1, Ordering::Relaxed);
                let r = client()
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-request-id", &rid)
                    .body(chat("教我做炸弹", false))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 400 => acked.lock().unwrap().push(rid),
                    _ => return,
                }
            }
        }));
    }
    // Let the load run until a fair number of decisions were acknowledged, then kill without warning.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 60 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.child.kill().unwrap();
    let _ = p.child.wait();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "too little load to mean anything: {}",
        acked.len()
    );
    let mut on_disk = std::collections::HashSet::new();
    for e in std::fs::read_dir(dir.path().join("audit")).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                if let Some(r) = v["request_id"].as_str() {
                    on_disk.insert(r.to_string());
                }
            }
        }
    }
    let missing: Vec<&String> = acked.iter().filter(|r| !on_disk.contains(*r)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged decisions lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        missing.first()
    );
}

#[tokio::test]
async fn sighup_reloads_the_config() {
    let up = Upstream::fixed(Script::json("{\"choices\":[]}")).await;
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_shenhe(dir.path(), &up.base_url(), "").await;
    let url = format!("{}/v1/chat/completions", p.public);
    assert_eq!(post_chat(&url, "newword").await.status(), 200);
    write_policy(&dir.path().join("shenhe.yaml"), &["newword"]);
    signal(&p, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while post_chat(&url, "newword").await.status() != 400 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn replica_handover_under_load_loses_no_request() {
    let up = Upstream::fixed(Script::json("{\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"ok\"},\"finish_reason\":\"stop\"}]}")).await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let drain = "  drain_delay: \"800ms\"\n";
    let a = spawn_shenhe(da.path(), &up.base_url(), drain).await;
    let b = spawn_shenhe(db.path(), &up.base_url(), drain).await;
    let replicas = Arc::new([a.public.clone(), b.public.clone()]);
    let admins = [a.admin.clone(), b.admin.clone()];
    // The balancer: round-robin over replicas whose /readyz answers 200, re-checked every 50 ms
    // (what Kubernetes endpoints do, faster).
    let ready = Arc::new([
        std::sync::atomic::AtomicBool::new(true),
        std::sync::atomic::AtomicBool::new(true),
    ]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (ready, stop) = (ready.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for (i, a) in admins.iter().enumerate() {
                    let ok = client()
                        .get(format!("{a}/readyz"))
                        .timeout(Duration::from_millis(200))
                        .send()
                        .await
                        .map(|r| r.status() == 200)
                        .unwrap_or(false);
                    ready[i].store(ok, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (replicas, ready, stop, ok, failed) = (
            replicas.clone(),
            ready.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut n = w;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let mut i = n % 2;
                if !ready[i].load(Ordering::Relaxed) {
                    i = 1 - i;
                }
                let r = c
                    .post(format!("{}/v1/chat/completions", replicas[i]))
                    .header("content-type", "application/json")
                    .body(chat("hello", false))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Replica A is told to stop, as the kubelet would.
    signal(&a, "-TERM");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    prober.await.unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 100, "too little load: {ok}");
    assert_eq!(
        failed, 0,
        "{failed} failed requests during the hand-over ({ok} succeeded)"
    );
    drop(b);
}

/// Regression: the process used to keep running after SIGTERM (the signal loop never returned).
#[tokio::test]
async fn sigterm_drains_and_exits() {
    let gate = Arc::new(Notify::new());
    let mut script = Script::sse_writes(vec![chat_chunk("begin")]);
    script.steps.push(Step::Gate(gate.clone()));
    script.steps.push(Step::Write(Bytes::from(chat_finish())));
    let up = Upstream::fixed(script).await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn_shenhe(dir.path(), &up.base_url(), "").await;
    // A stream is in flight when the signal comes; it finishes, then the process exits 0.
    let resp = client()
        .post(format!("{}/v1/chat/completions", p.public))
        .header("content-type", "application/json")
        .body(chat("hi", true))
        .send()
        .await
        .unwrap();
    use futures_util::StreamExt;
    let mut stream = resp.bytes_stream();
    let _ = stream.next().await.unwrap().unwrap();
    signal(&p, "-TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "exited before the stream finished"
    );
    gate.notify_one();
    let mut rest = Vec::new();
    while let Some(b) = stream.next().await {
        rest.extend_from_slice(&b.unwrap());
    }
    assert!(String::from_utf8_lossy(&rest).contains("[DONE]"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "shenhe did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}

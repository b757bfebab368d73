//! The evidence for a security assessment (Interim Measures Art. 17; TC260-003): each duty's
//! result follows the running configuration and what the service has done.

mod support;

use serde_json::Value;
use support::*;

/// The result of the item whose clause begins with `clause`.
fn result<'a>(report: &'a Value, clause: &str) -> (&'a str, &'a Value) {
    let item = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["clause"].as_str().unwrap().starts_with(clause))
        .unwrap_or_else(|| panic!("no item for {clause}: {report}"));
    (item["result"].as_str().unwrap(), &item["evidence"])
}

async fn report(p: &Proxy) -> Value {
    serde_json::from_str(&admin_text(p, "/admin/assessment").await).unwrap()
}

#[tokio::test]
async fn each_duty_is_judged_from_the_running_configuration() {
    let up = Upstream::fixed(Script::json("{}")).await;
    // The test rig: a two-term policy, no classifier, no actions on users, labels off.
    let bare = proxy(
        &up.base_url(),
        "policy:\n  categories:\n    - { id: A1d, action: block, keywords: [\"炸弹\"] }\n",
    )
    .await;
    let r = report(&bare).await;
    for clause in [
        "Interim Measures Art. 4",
        "TC260-003 §8.4",
        "Interim Measures Art. 14 para 2",
        "Interim Measures Art. 10",
        "Interim Measures Art. 12",
        "Interim Measures Art. 15",
        "TC260-003 §7 (monitors)",
    ] {
        assert_eq!(result(&r, clause).0, "does_not_conform", "{clause}: {r}");
    }
    assert_eq!(result(&r, "Interim Measures Art. 14 para 1").0, "conforms");
    assert_eq!(result(&r, "TC260-003 §9").0, "external");
    let (_, lib) = result(&r, "Interim Measures Art. 4");
    assert_eq!(lib["total_terms"], 1);
    assert_eq!(lib["a1_terms"]["A1d"], 1);
    assert!(!lib["shortfalls"].as_array().unwrap().is_empty());
    assert!(!r.to_string().contains("炸弹"), "never the terms: {r}");

    // The duties switched on.
    let on = proxy(
        &up.base_url(),
        r#"
policy:
  categories:
    - { id: A2b, action: flag, minors: block, keywords: ["地域黑"] }
classifier: { enabled: true, url: "http://127.0.0.1:1/classify", categories: {} }
enforce:
  enabled: true
  minors: { header: "x-user-minor" }
complaints: { enabled: true, store: memory }
review: { enabled: true, store: memory }
"#,
    )
    .await;
    let r = report(&on).await;
    for clause in [
        "TC260-003 §8.4",
        "Interim Measures Art. 14 para 2",
        "Interim Measures Art. 10",
        "Interim Measures Art. 15",
        "TC260-003 §7 (monitors)",
    ] {
        assert_eq!(result(&r, clause).0, "conforms", "{clause}: {r}");
    }
    let (_, minors) = result(&r, "Interim Measures Art. 10");
    assert_eq!(minors["categories_stricter_for_minors"][0], "A2b");
    let (_, complaints) = result(&r, "Interim Measures Art. 15");
    assert_eq!(complaints["overdue"], 0);
    assert_eq!(complaints["time_limits"]["illegal_content"], "1d");

    // For a filing's annex, and a clear error for a format there is not.
    let md = admin_text(&on, "/admin/assessment?format=markdown").await;
    assert!(
        md.starts_with("# shenhe: evidence of the technical measures"),
        "{md}"
    );
    let conforming = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["result"] == "conforms")
        .count();
    assert_eq!(md.matches("| conforms |").count(), conforming, "{md}");
    assert_eq!(
        md.matches("\n| ").count(),
        1 + r["items"].as_array().unwrap().len()
    );
    let bad = client()
        .get(on.admin_url("/admin/assessment?format=pdf"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn the_acceptance_rates_come_from_the_last_eval_report() {
    let up = Upstream::fixed(Script::json("{}")).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eval.json");
    let p = proxy(
        &up.base_url(),
        &format!("assessment:\n  eval_report: \"{}\"\n", path.display()),
    )
    .await;
    // Configured, not yet written: does not conform, and says why.
    let (res, ev) = {
        let r = report(&p).await;
        let (res, ev) = result(&r, "TC260-003 §9");
        (res.to_string(), ev.clone())
    };
    assert_eq!(res, "does_not_conform");
    assert!(ev["error"].is_string(), "{ev}");

    // The sample banks through the sample policy, as `shenhe eval` writes them.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shenhe"))
        .args(["eval", "--config", "tests/eval/policy.yaml"])
        .args(["--should-refuse", "tests/eval/should_refuse.jsonl"])
        .args(["--non-refusal", "tests/eval/non_refusal.jsonl"])
        .args(["--generated", "tests/eval/generated.jsonl", "--report-out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report(&p).await;
    let (res, ev) = result(&r, "TC260-003 §9");
    assert_eq!(res, "conforms", "{ev}");
    assert_eq!(ev["mode"], "policy");
    assert_eq!(ev["banks"].as_array().unwrap().len(), 3);
    assert!(ev["finished_at"].as_str().unwrap().ends_with('Z'));

    // A run of two banks only proves two rates.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shenhe"))
        .args(["eval", "--config", "tests/eval/policy.yaml"])
        .args(["--should-refuse", "tests/eval/should_refuse.jsonl"])
        .args([
            "--non-refusal",
            "tests/eval/non_refusal.jsonl",
            "--report-out",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let r = report(&p).await;
    let (res, ev) = result(&r, "TC260-003 §9");
    assert_eq!(res, "does_not_conform");
    assert_eq!(ev["all_three_banks"], false);
}

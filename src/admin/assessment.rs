//! The evidence a security assessment and filing ask of the technical measures (Interim Measures
//! Art. 17; TC260-003, whose every clause needs a result of *conforms*, *does not conform* or
//! *not applicable*, with evidence): one item per duty shenhe carries out, read from the running
//! configuration, the active policy and this replica's counters and stores, with the result shenhe
//! can tell by itself. `GET /admin/assessment` (JSON), `?format=markdown` for a filing's annex.
//!
//! What shenhe cannot tell is said so (`external`): the acceptance rates are measured by
//! `shenhe eval` on the provider's banks; a counter is this replica's since its start (the fleet's
//! are in Prometheus).

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use prometheus::core::Collector;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::AdminState;
use crate::config::Config;
use crate::dialect::DialectName;
use crate::metrics::metrics;
use crate::server::AppState;

/// What shenhe can say of one duty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Configured and working as the clause asks.
    Conforms,
    /// Off, or short of what the clause asks (the evidence says what).
    DoesNotConform,
    /// Measured or kept outside shenhe (the evidence says where).
    External,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Conforms => "conforms",
            Self::DoesNotConform => "does not conform",
            Self::External => "external",
        }
    }
}

/// One duty: where it comes from, what it asks, what shenhe found.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub clause: &'static str,
    pub requirement: &'static str,
    pub result: Outcome,
    pub evidence: Value,
}

fn item(clause: &'static str, requirement: &'static str, ok: bool, evidence: Value) -> Item {
    Item {
        clause,
        requirement,
        result: if ok {
            Outcome::Conforms
        } else {
            Outcome::DoesNotConform
        },
        evidence,
    }
}

/// The sum of a counter family's series (this replica, since its start).
fn total(c: &impl Collector) -> u64 {
    c.collect()
        .iter()
        .flat_map(|mf| mf.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// Every item, in the order of the regulation's articles.
pub async fn items(app: &AppState) -> Vec<Item> {
    let rt = app.runtime();
    let c: &Config = &rt.config;
    let policy = &rt.policy;
    let st = policy.stats();
    let m = metrics();
    let mut out = Vec::new();

    // Art. 4; TC260-003 §8.1: the keyword library.
    let per_type = |group: &str| -> Value {
        policy
            .categories()
            .filter(|cat| cat.group == group)
            .map(|cat| {
                let n = st.terms_per_category.get(cat.id.as_ref()).copied();
                (cat.id.to_string(), json!(n.unwrap_or(0)))
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let age_days = st.oldest_list_mtime.and_then(|t| {
        std::time::SystemTime::now()
            .duration_since(t)
            .ok()
            .map(|d| d.as_secs() / 86_400)
    });
    out.push(item(
        "Interim Measures Art. 4; TC260-003 §8.1",
        "A keyword library of at least 10,000 terms, at least 200 for each A.1 and 100 for each A.2 risk type, updated at least weekly",
        st.warnings.is_empty(),
        json!({
            "policy_version": st.version,
            "total_terms": st.total_terms,
            "a1_terms": per_type("A.1"),
            "a2_terms": per_type("A.2"),
            "oldest_list_age_days": age_days,
            "allow_phrases": st.allow_phrases,
            "pattern_detectors": st.pattern_detectors,
            "shortfalls": st.warnings,
        }),
    ));

    // TC260-003 §8.4: a classification model besides the keywords.
    let cl = &c.classifier;
    let classifier_calls: u64 = ["ok", "error", "timeout"]
        .iter()
        .map(|r| m.classifier_calls.with_label_values(&[r]).get())
        .sum();
    out.push(item(
        "TC260-003 §8.4",
        "A classification model judges prompts and generated content; keywords alone do not satisfy the standard",
        cl.enabled,
        json!({
            "enabled": cl.enabled,
            "format": cl.format,
            "threshold": cl.threshold,
            "whole_answers": cl.answers,
            "streamed_answers": cl.streams,
            "stream_check_chars": cl.stream_check_chars,
            "on_error": cl.on_error,
            "calls": classifier_calls,
        }),
    ));

    // Art. 14 para 1: stop generation and transmission.
    let mut moderated = Vec::new();
    let mut passthrough = Vec::new();
    for (path, dialect) in rt.routes.entries() {
        if dialect == DialectName::Passthrough {
            passthrough.push(path.to_string());
        } else {
            moderated.push(json!({"path": path, "dialect": dialect.as_str()}));
        }
    }
    out.push(item(
        "Interim Measures Art. 14 para 1",
        "Illegal content found in generation is stopped: the model's request is cancelled and no banned text reaches the user",
        !moderated.is_empty(),
        json!({
            "moderated_routes": moderated,
            "passthrough_routes": passthrough,
            "unlisted_posts": format!("{:?}", rt.routes.default_route()).to_lowercase(),
            "streams_stopped": total(&m.stream_stops),
        }),
    ));

    // Art. 14 para 2; TC260-003 §7: actions on users.
    let e = &c.enforce;
    out.push(item(
        "Interim Measures Art. 14 para 2",
        "Users who break the law or the rules are warned, restricted, suspended; the records are kept",
        e.enabled,
        json!({
            "enabled": e.enabled,
            "store": e.store,
            "window": e.strikes.window.to_string(),
            "warn_at": e.strikes.warn_at,
            "restrict_at": e.strikes.restrict_at,
            "suspend_at": e.strikes.suspend_at,
            "suspend_in_a_row": e.strikes.suspend_consecutive,
            "suspend_for": e.suspend_for.to_string(),
            "strikes": total(&m.enforce_strikes),
        }),
    ));

    // Art. 10: minors.
    let mi = &e.minors;
    let minors_categories: Vec<String> = policy
        .categories()
        .filter(|cat| cat.minors.is_some())
        .map(|cat| cat.id.to_string())
        .collect();
    out.push(item(
        "Interim Measures Art. 10",
        "Effective measures keep minors from over-relying on the service; content fit for minors",
        mi.header.is_some(),
        json!({
            "minor_header": mi.header,
            "hours": mi.hours,
            "daily_requests": mi.daily_requests,
            "session_reminder": mi.session_reminder.to_string(),
            "categories_stricter_for_minors": minors_categories,
            "reminders": m.minor_usage_reminders.get(),
        }),
    ));

    // Art. 12; GB 45438-2025: labels.
    let labeler = rt.labeler.as_ref();
    let explicit = labeler.and_then(|l| l.explicit_text()).is_some();
    let implicit = labeler.and_then(|l| l.producer()).is_some();
    out.push(item(
        "Interim Measures Art. 12; GB 45438-2025",
        "Generated content carries an explicit label and implicit, signed metadata",
        explicit && implicit,
        json!({
            "explicit_text_label": explicit,
            "implicit_metadata_producer": labeler.and_then(|l| l.producer()),
            "image_metadata": labeler.is_some_and(|l| l.images().xmp),
            "image_visible_label": labeler.is_some_and(|l| l.images().visible.is_some()),
            "labels_applied": total(&m.labels_applied),
        }),
    ));

    // Art. 11; Cybersecurity Law (logs ≥ 6 months): records without hoarding personal data.
    let a = &c.audit;
    let pseudonyms = app.records.pseudonyms_stable;
    out.push(item(
        "Interim Measures Art. 11, 14; Cybersecurity Law (logs at least six months)",
        "Every decision is recorded for at least 180 days under a pseudonymous user id, with a masked excerpt, never the whole prompt",
        a.retention_days >= 180 && pseudonyms && (a.dir.is_some() || a.stdout),
        json!({
            "retention_days": a.retention_days,
            "pseudonym_key_from_secret": pseudonyms,
            "excerpt_chars": a.excerpt_chars,
            "fsync": a.fsync,
            "fail_closed": a.fail_closed,
            "legal_hold_users": a.legal_hold_users.len(),
            "destination": if a.dir.is_some() { "files" } else if a.stdout { "stdout" } else { "none" },
        }),
    ));

    // Art. 15: complaints and reports.
    let co = &c.complaints;
    let (mut open, mut overdue) = (None, None);
    if let Some(service) = &app.complaints {
        service.refresh_gauges().await;
        let sum = |g: &prometheus::IntGaugeVec| -> i64 {
            g.collect()
                .iter()
                .flat_map(|mf| mf.get_metric())
                .map(|m| m.get_gauge().get_value() as i64)
                .sum()
        };
        open = Some(sum(&m.complaints_open));
        overdue = Some(sum(&m.complaints_overdue));
    }
    out.push(item(
        "Interim Measures Art. 15; TC260-003 §7",
        "An easy way to complain, a published procedure with time limits, prompt handling and the outcome told back",
        co.enabled && overdue.unwrap_or(0) == 0,
        json!({
            "enabled": co.enabled,
            "public_path": co.public_path,
            "time_limits": co.types.iter().map(|(id, t)| (id.clone(), json!(t.sla.to_string()))).collect::<serde_json::Map<_, _>>(),
            "open": open,
            "overdue": overdue,
        }),
    ));

    // TC260-003 §7: monitors.
    let rv = &c.review;
    if let Some(r) = &app.records.review {
        r.refresh_gauges().await;
    }
    out.push(item(
        "TC260-003 §7 (monitors)",
        "Monitors in proportion to the service review what the filters saw and improve the service from it",
        rv.enabled,
        json!({
            "enabled": rv.enabled,
            "queued_actions": rv.actions,
            "sample_rate": rv.sample_rate,
            "queue_depth": rv.enabled.then(|| m.review_queue_depth.get()),
            "oldest_pending_seconds": rv.enabled.then(|| m.review_oldest_age.get()),
            "verdicts": total(&m.review_verdicts),
        }),
    ));

    // TC260-003 §9: acceptance rates.
    out.push(acceptance(rt.eval_report.as_deref()).await);
    out
}

/// Longest `shenhe eval` report read.
const EVAL_REPORT_MAX: u64 = 4 << 20;

/// TC260-003 §9 from the report `shenhe eval --report-out` last wrote (`assessment.eval_report`):
/// conforms when all three banks were run and met their goals; external when no report is
/// configured.
async fn acceptance(path: Option<&std::path::Path>) -> Item {
    const CLAUSE: &str = "TC260-003 §9";
    const REQUIREMENT: &str = "Refusal rate ≥ 95% on the should-refuse bank, ≤ 5% on the must-not-refuse bank; ≥ 90% of generated content passes";
    let how = "shenhe eval --url <this service> --should-refuse … --non-refusal … --generated … --report-out <assessment.eval_report>";
    let Some(path) = path else {
        return Item {
            clause: CLAUSE,
            requirement: REQUIREMENT,
            result: Outcome::External,
            evidence: json!({ "measured_by": how }),
        };
    };
    let read = async {
        let meta = tokio::fs::metadata(path).await.map_err(|e| e.to_string())?;
        if meta.len() > EVAL_REPORT_MAX {
            return Err(format!("larger than {EVAL_REPORT_MAX} bytes"));
        }
        let bytes = tokio::fs::read(path).await.map_err(|e| e.to_string())?;
        serde_json::from_slice::<Value>(&bytes)
            .map_err(|e| format!("not a shenhe eval report: {e}"))
    };
    let report = match read.await {
        Ok(v) => v,
        Err(e) => {
            return item(
                CLAUSE,
                REQUIREMENT,
                false,
                json!({ "eval_report": path.display().to_string(), "error": e, "measured_by": how }),
            )
        }
    };
    let banks: Vec<Value> = report["banks"]
        .as_array()
        .map(|b| {
            b.iter()
                .map(|b| {
                    json!({
                        "bank": b["bank"],
                        "items": b["total"]["items"],
                        "rate": b["rate"],
                        "goal": b["goal"],
                        "met": b["met"],
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let ran = |name: &str| banks.iter().any(|b| b["bank"] == name);
    let all = ran("should_refuse") && ran("non_refusal") && ran("generated");
    let met = banks.iter().all(|b| b["met"] == true);
    item(
        CLAUSE,
        REQUIREMENT,
        all && met,
        json!({
            "finished_at": report["finished_at"],
            "mode": report["mode"],
            "banks": banks,
            "all_three_banks": all,
        }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    format: Option<String>,
}

/// `GET /admin/assessment[?format=markdown]`.
pub async fn assessment(State(s): State<AdminState>, Query(q): Query<Params>) -> Response {
    let items = items(&s.app).await;
    let generated_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let version = s.app.runtime().policy.version().to_string();
    match q.format.as_deref() {
        None | Some("json") => Json(json!({
            "generated_at": generated_at,
            "policy_version": version,
            "scope": "configuration and policy as running; counters of this replica since its start",
            "items": items,
        }))
        .into_response(),
        Some("markdown") => (
            [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
            markdown(&items, &generated_at, &version),
        )
            .into_response(),
        Some(_) => super::admin_error(
            axum::http::StatusCode::BAD_REQUEST,
            "format is json or markdown",
        ),
    }
}

/// The items as a Markdown table (a filing's annex).
fn markdown(items: &[Item], generated_at: &str, version: &str) -> String {
    let mut out = format!(
        "# shenhe: evidence of the technical measures\n\nGenerated {generated_at}; policy \
         {version}. Counters are this replica's since its start.\n\n| Clause | Requirement | \
         Result | Evidence |\n|---|---|---|---|\n"
    );
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    for i in items {
        out.push_str(&format!(
            "| {} | {} | {} | `{}` |\n",
            cell(i.clause),
            cell(i.requirement),
            i.result.as_str(),
            cell(&i.evidence.to_string())
        ));
    }
    out
}

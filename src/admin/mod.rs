//! The admin listener: health, readiness, metrics and the admin API. Never on the public listener.
//!
//! Read-only transparency routes (`/admin/policy`, `/admin/labels/public-key`) are open on the
//! admin listener (localhost by default); every route that reads records or changes state needs
//! `Authorization: Bearer <token>` with the token from `server.admin_token_file` or the
//! `server.admin_token_env` variable, compared in constant time. With no token configured those
//! routes are refused.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::metrics::metrics;
use crate::server::{AppState, Shutdown};

mod assessment;
mod complaints;
mod review;

#[derive(Clone)]
pub struct AdminState {
    pub app: Arc<AppState>,
    pub shutdown: Shutdown,
}

pub fn router(app: Arc<AppState>, shutdown: Shutdown) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/admin/policy", get(policy))
        .route("/admin/assessment", get(assessment::assessment))
        .route("/admin/labels/public-key", get(public_key))
        .route("/admin/reload", post(reload))
        .route("/admin/records", get(records))
        .route("/admin/records/erase", post(erase))
        .route("/admin/users", get(user_standing))
        .route("/admin/users/lift", post(lift_user))
        .route(
            "/admin/complaints",
            get(complaints::list).post(complaints::file),
        )
        .route("/admin/complaints/{id}", get(complaints::show))
        .route("/admin/complaints/{id}/resolve", post(complaints::resolve))
        .route("/admin/review", get(review::list))
        .route("/admin/review/stats", get(review::stats))
        .route("/admin/review/{id}", get(review::show).post(review::decide))
        .with_state(AdminState { app, shutdown })
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if s.shutdown.is_triggered() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    if !s.app.is_ready_config() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "last config reload failed\n",
        )
            .into_response();
    }
    if s.app.records.auditor.refuse_traffic() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "audit records cannot be written\n",
        )
            .into_response();
    }
    if !s.app.runtime().upstream.probe_ok().await {
        return (StatusCode::SERVICE_UNAVAILABLE, "upstream not reachable\n").into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn metrics_text(State(s): State<AdminState>) -> Response {
    // What the active policy keeps, read now rather than counted on every prompt.
    let (states, bytes) = s.app.runtime().policy.prefix_states();
    let m = metrics();
    m.prompt_prefix_states
        .set(i64::try_from(states).unwrap_or(i64::MAX));
    m.prompt_prefix_bytes
        .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    if let Some(c) = &s.app.complaints {
        c.refresh_gauges().await;
    }
    if let Some(r) = &s.app.records.review {
        r.refresh_gauges().await;
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics().render(),
    )
        .into_response()
}

/// The configured admin token, read fresh so a rotated Secret takes effect without a restart.
fn admin_token(app: &AppState) -> Option<String> {
    let cfg = &app.runtime().config.server;
    if let Some(p) = &cfg.admin_token_file {
        return std::fs::read_to_string(p)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
    }
    std::env::var(&cfg.admin_token_env)
        .ok()
        .filter(|t| !t.is_empty())
}

fn authorize(app: &AppState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(token) = admin_token(app) else {
        return Err(Box::new(admin_error(
            StatusCode::FORBIDDEN,
            "no admin token is configured (server.admin_token_env or server.admin_token_file)",
        )));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(Box::new(admin_error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token",
        )))
    }
}

fn admin_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": {"message": message, "type": "admin_error", "code": status.as_u16(), "param": null}}))).into_response()
}

/// What an inspector asks to see (Art. 19): policy version, categories, list sizes, labels, retention,
/// the classifier's settings, complaint types and time limits, the review queue, actions on users.
async fn policy(State(s): State<AdminState>) -> Response {
    let rt = s.app.runtime();
    let p = &rt.policy;
    let mut body = crate::admin::policy_view::view(p);
    let c = &rt.config;
    body["labels"] = json!({
        "explicit": rt.labeler.as_ref().and_then(|l| l.explicit_text()).is_some(),
        "implicit_producer": rt.labeler.as_ref().and_then(|l| l.producer()),
        "position": format!("{:?}", c.labels.explicit.position).to_lowercase(),
    });
    body["audit"] = json!({
        "retention_days": c.audit.retention_days,
        "fsync": c.audit.fsync,
        "fail_closed": c.audit.fail_closed,
    });
    // What users are held to beyond the lists: the classifier (its settings, not its address),
    // the complaint types and their time limits, the review queue, actions on users.
    let cl = &c.classifier;
    body["classifier"] = json!({
        "enabled": cl.enabled,
        "format": cl.format,
        "threshold": cl.threshold,
        "answers": cl.answers,
        "streams": cl.streams,
        "stream_check_chars": cl.stream_check_chars,
        "on_error": cl.on_error,
        "categories": cl.categories,
    });
    let co = &c.complaints;
    body["complaints"] = json!({
        "enabled": co.enabled,
        "public_path": co.public_path,
        "types": co.types.iter().map(|(id, t)| (id.clone(), json!({
            "name_zh": t.name_zh,
            "name_en": t.name_en,
            "time_limit": t.sla.to_string(),
        }))).collect::<serde_json::Map<_, _>>(),
    });
    body["review"] = json!({
        "enabled": c.review.enabled,
        "actions": c.review.actions,
        "confirmed_strikes": c.review.confirmed_strikes,
    });
    let en = &c.enforce;
    body["enforce"] = json!({
        "enabled": en.enabled,
        "strikes": en.strikes,
        "restricted_requests_per_minute": en.restricted_requests_per_minute,
        "suspend_for": en.suspend_for.to_string(),
        "minors": {"hours": en.minors.hours, "daily_requests": en.minors.daily_requests},
    });
    body["routes"] = rt
        .routes
        .entries()
        .map(|(path, d)| (path.to_string(), json!(d.as_str())))
        .collect::<serde_json::Map<_, _>>()
        .into();
    Json(body).into_response()
}

async fn public_key(State(s): State<AdminState>) -> Response {
    public_key_response(&s.app)
}

/// The label public key as PEM, for third parties who verify labels.
pub fn public_key_response(app: &AppState) -> Response {
    match app
        .runtime()
        .labeler
        .as_ref()
        .and_then(|l| l.signer().map(|s| s.public_key_pem()))
    {
        Some(pem) => ([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response(),
        None => admin_error(StatusCode::NOT_FOUND, "implicit labels are not enabled"),
    }
}

async fn reload(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&s.app, &headers) {
        return *r;
    }
    match crate::server::reload::reload(&s.app, "admin").await {
        Ok(()) => {
            Json(json!({"reloaded": true, "policy_version": s.app.runtime().policy.version()}))
                .into_response()
        }
        Err(e) => admin_error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
    }
}

#[derive(Deserialize)]
struct RecordsQuery {
    content_id: Option<String>,
    user: Option<String>,
    request_id: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
}

/// Find records: from an output's content id (complaints, inspections) to its decisions.
async fn records(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<RecordsQuery>,
) -> Response {
    if let Err(r) = authorize(&s.app, &headers) {
        return *r;
    }
    let Some(dir) = s.app.records.auditor.dir().map(|d| d.to_path_buf()) else {
        return admin_error(
            StatusCode::NOT_FOUND,
            "audit records go to stdout only (audit.dir is unset)",
        );
    };
    let since = match q.since.as_deref().map(crate::cli::parse_since).transpose() {
        Ok(s) => s,
        Err(e) => return admin_error(StatusCode::BAD_REQUEST, &e),
    };
    let user = q.user.map(|u| pseudonym(&s.app, &u));
    let query = crate::audit::Query {
        content_id: q.content_id,
        user: user.clone(),
        request_id: q.request_id,
        since,
        limit: Some(q.limit.unwrap_or(1000).min(10_000)),
    };
    match tokio::task::spawn_blocking(move || crate::audit::find(&dir, &query)).await {
        Ok(Ok(found)) => {
            if let Some(user) = user {
                // A user's records read out: an access request (Art. 11), itself on record.
                metrics().pi_requests.with_label_values(&["access"]).inc();
                let mut r = crate::audit::Record::new(crate::audit::RecordKind::Admin);
                r.user = Some(user);
                r.detail = Some(format!(
                    "records of the user read: {} returned",
                    found.len()
                ));
                let _ = s.app.records.auditor.record(r).await;
            }
            Json(json!({"records": found})).into_response()
        }
        Ok(Err(e)) => admin_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(_) => admin_error(StatusCode::INTERNAL_SERVER_ERROR, "record search failed"),
    }
}

#[derive(Deserialize)]
struct EraseBody {
    user: String,
}

/// Erase a user's records (Art. 11 deletion request), outside a legal hold; itself recorded.
async fn erase(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Json(b): Json<EraseBody>,
) -> Response {
    if let Err(r) = authorize(&s.app, &headers) {
        return *r;
    }
    let id = pseudonym(&s.app, &b.user);
    match s.app.records.auditor.erase(&id).await {
        Ok(report) => {
            metrics().pi_requests.with_label_values(&["delete"]).inc();
            // Their complaints stay (the provider's record of handling them), without who filed
            // them or their words.
            let (complaints, failed) = match &s.app.complaints {
                Some(c) => match c.forget_reporter(&id).await {
                    Ok(n) => (json!(n), None),
                    Err(e) => (json!("not done"), Some(e)),
                },
                None => (json!(null), None),
            };
            let (review, review_failed) = match &s.app.records.review {
                Some(r) => match r.erase_user(&id).await {
                    Ok(n) => (json!(n), None),
                    Err(e) => (json!("not done"), Some(e.to_string())),
                },
                None => (json!(null), None),
            };
            let failed = failed.map(|e| e.to_string()).or(review_failed);
            let detail = format!(
                "{report:?}; complaints forgotten: {complaints}; review items erased: {review}"
            );
            let _ = s
                .app
                .records
                .auditor
                .record(crate::audit::Record::erasure(id.clone(), detail.clone()))
                .await;
            if let Some(e) = failed {
                // Erasing again is harmless: the records are gone, the complaints wait for it.
                return admin_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "records erased, complaints or review items not ({e}): send the erasure again"
                    ),
                );
            }
            Json(
                json!({"user": id, "report": detail, "complaints_forgotten": complaints,
                "review_items_erased": review}),
            )
            .into_response()
        }
        Err(e) => admin_error(StatusCode::CONFLICT, &e.to_string()),
    }
}

#[derive(Deserialize)]
struct UserQuery {
    user: String,
}

/// A part of shenhe that may be off (`part`), for a caller with the admin token; else the answer
/// that says why not (`off` when the part is off).
fn switched_on<'a, T>(
    app: &AppState,
    headers: &HeaderMap,
    part: Option<&'a T>,
    off: &'static str,
) -> Result<&'a T, Box<Response>> {
    authorize(app, headers)?;
    part.ok_or_else(|| Box::new(admin_error(StatusCode::NOT_FOUND, off)))
}

/// The enforcer, for a caller with the admin token; else the answer that says why not.
fn enforcer<'a>(
    app: &'a AppState,
    headers: &HeaderMap,
) -> Result<&'a crate::enforce::Enforcer, Box<Response>> {
    switched_on(
        app,
        headers,
        app.records.enforcer.as_ref(),
        "actions on users are off (enforce.enabled is false)",
    )
}

/// A user's standing (`enforce`): strikes in the window and any suspension in force.
async fn user_standing(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<UserQuery>,
) -> Response {
    let e = match enforcer(&s.app, &headers) {
        Ok(e) => e,
        Err(r) => return *r,
    };
    let id = pseudonym(&s.app, &q.user);
    match e.standing(&id).await {
        Ok(st) => {
            let until = st.suspended_until.and_then(|ms| {
                chrono::DateTime::from_timestamp_millis(ms as i64).map(|t| t.to_rfc3339())
            });
            Json(json!({"user": id, "strikes": st.strikes, "in_a_row": st.streak, "suspended_until": until}))
                .into_response()
        }
        Err(err) => admin_error(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
    }
}

/// Lift a user's strikes and suspension (an operator's decision, e.g. on a complaint upheld);
/// itself recorded.
async fn lift_user(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Json(b): Json<UserQuery>,
) -> Response {
    let e = match enforcer(&s.app, &headers) {
        Ok(e) => e,
        Err(r) => return *r,
    };
    let id = pseudonym(&s.app, &b.user);
    match e.lift(&id).await {
        Ok(()) => {
            let mut r = crate::audit::Record::new(crate::audit::RecordKind::Admin);
            r.user = Some(id.clone());
            r.detail = Some("strikes and suspension lifted".into());
            let _ = s.app.records.auditor.record(r).await;
            Json(json!({"user": id, "lifted": true})).into_response()
        }
        Err(err) => admin_error(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
    }
}

fn pseudonym(app: &AppState, u: &str) -> String {
    if crate::audit::pseudonym::is_pseudonym(u) {
        u.to_string()
    } else {
        app.records.pseudonymizer.id(u)
    }
}

pub mod policy_view {
    //! The policy as an inspector sees it: never the terms themselves.
    use serde_json::{json, Value};

    use crate::policy::Policy;

    pub fn view(p: &Policy) -> Value {
        let st = p.stats();
        let categories: Vec<Value> = p
            .categories()
            .map(|c| {
                json!({
                    "id": c.id.as_ref(),
                    "group": c.group,
                    "name_zh": c.name_zh,
                    "name_en": c.name_en,
                    "action": c.action.as_str(),
                    "minors": c.minors.map(|a| a.as_str()),
                    "applies_to": c.applies_to,
                    "severity": c.severity,
                    "whole_words": c.whole_words,
                    "terms": st.terms_per_category.get(c.id.as_ref()).copied().unwrap_or(0),
                })
            })
            .collect();
        json!({
            "policy_version": p.version(),
            "total_terms": st.total_terms,
            "allow_phrases": st.allow_phrases,
            "pattern_detectors": st.pattern_detectors,
            "list_files": st.list_files,
            "warnings": st.warnings,
            "categories": categories,
        })
    }

    #[cfg(test)]
    mod tests {
        use crate::policy::config::{CategoryConfig, PolicyConfig};
        use crate::policy::Policy;

        #[test]
        fn categories_show_their_matching_mode_but_no_terms() {
            let cfg = PolicyConfig {
                categories: vec![
                    CategoryConfig {
                        id: "A2a".into(),
                        whole_words: Some(true),
                        keywords: vec!["secretterm".into()],
                        ..CategoryConfig::default()
                    },
                    CategoryConfig {
                        id: "A1d".into(),
                        keywords: vec!["otherterm".into()],
                        ..CategoryConfig::default()
                    },
                ],
                ..PolicyConfig::default()
            };
            let p = Policy::compile(&cfg, std::path::Path::new("."))
                .expect("compiles")
                .policy;
            let v = super::view(&p);
            let cat = |id: &str| {
                v["categories"]
                    .as_array()
                    .and_then(|a| a.iter().find(|c| c["id"] == id))
                    .cloned()
                    .unwrap_or_default()
            };
            assert_eq!(cat("A2a")["whole_words"], true);
            assert_eq!(cat("A2a")["terms"], 1);
            assert_eq!(cat("A1d")["whole_words"], false);
            let text = v.to_string();
            assert!(
                !text.contains("secretterm") && !text.contains("otherterm"),
                "{text}"
            );
        }
    }
}

//! The monitors' review queue on the admin listener (token): list what waits, oldest first;
//! read one item; give a verdict, which is itself an audit record.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{admin_error, switched_on, AdminState};
use crate::review::{Item, ListFilter, Review, ReviewError, Status, Verdict};

/// The review service, for a caller with the admin token; else the answer that says why not.
fn service<'a>(s: &'a AdminState, headers: &HeaderMap) -> Result<&'a Review, Box<Response>> {
    switched_on(
        &s.app,
        headers,
        s.app.records.review.as_ref(),
        "the review queue is off (review.enabled is false)",
    )
}

fn failed(e: ReviewError) -> Response {
    let status = match e {
        ReviewError::Invalid(_) => StatusCode::BAD_REQUEST,
        ReviewError::NotFound => StatusCode::NOT_FOUND,
        ReviewError::AlreadyReviewed => StatusCode::CONFLICT,
        ReviewError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    admin_error(status, &e.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    category: Option<String>,
    limit: Option<usize>,
}

pub async fn list(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let r = match service(&s, &headers) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let status = match q.status.as_deref() {
        None => Status::Pending,
        Some(v) => match Status::parse(v) {
            Some(st) => st,
            None => return admin_error(StatusCode::BAD_REQUEST, "status is pending or reviewed"),
        },
    };
    let filter = ListFilter {
        status,
        category: q.category,
        limit: q.limit.unwrap_or(100),
    };
    match r.list(filter).await {
        Ok(items) => Json(json!({"items": items})).into_response(),
        Err(e) => failed(e),
    }
}

pub async fn show(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let r = match service(&s, &headers) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    match r.get(&id).await {
        Ok(item) => Json(item).into_response(),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecideBody {
    verdict: Verdict,
    #[serde(default)]
    note: Option<String>,
}

pub async fn decide(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(b): Json<DecideBody>,
) -> Response {
    let r = match service(&s, &headers) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    match r.decide(&id, b.verdict, b.note).await {
        Ok(item) => {
            let struck = if item.verdict == Some(Verdict::Confirmed) && r.confirmed_strikes() {
                strike(&s, &item).await
            } else {
                None
            };
            record(&s, &item, struck.as_deref()).await;
            let mut body = json!(item);
            body["strike"] = json!(struck);
            Json(body).into_response()
        }
        Err(e) => failed(e),
    }
}

/// A confirmed violation counts against its user (`review.confirmed_strikes`, with `enforce`
/// on), once per request; a suspension it begins is a sanction record. What was done, for the
/// verdict's record and answer.
async fn strike(s: &AdminState, item: &Item) -> Option<String> {
    let (Some(enf), Some(user)) = (s.app.records.enforcer.as_ref(), item.user.as_deref()) else {
        return None;
    };
    let request = item.request_id.as_deref().unwrap_or(&item.id);
    let now = crate::enforce::Enforcer::now_ms();
    let detail = match enf.strike(user, request, None, now).await {
        Ok(Some(detail)) => detail,
        Ok(None) => return Some("counted".into()),
        Err(_) => return Some("not counted: the enforcement store did not answer".into()),
    };
    let mut r = crate::audit::Record::sanction(request, detail.clone());
    r.user = Some(user.to_string());
    r.content_id = item.content_id.clone();
    if let Err(e) = s.app.records.auditor.record(r).await {
        tracing::warn!(item = %item.id, error = %e, "Audit record of a sanction not written");
    }
    Some(detail)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// Items from this many days back (default 30, at most 3,650).
    days: Option<u32>,
}

/// How monitors judged what each category, detector and keyword found (TC260-003 §7: improve
/// the service from what they see): per category, the share confirmed; per keyword, how often it
/// was dismissed as a false positive, with the term from the running policy and the dismissed
/// items (whose excerpts show the benign phrase an allow entry would name).
pub async fn stats(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<StatsQuery>,
) -> Response {
    let r = match service(&s, &headers) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let days = q.days.unwrap_or(30);
    if !(1..=3650).contains(&days) {
        return admin_error(StatusCode::BAD_REQUEST, "days is between 1 and 3650");
    }
    let since = chrono::Utc::now() - chrono::Duration::days(i64::from(days));
    let rows = match r.tally(since).await {
        Ok(rows) => rows,
        Err(e) => return failed(e),
    };
    let policy = s.app.runtime().policy.clone();
    let version = policy.version().to_string();
    let mut categories: std::collections::BTreeMap<&str, [u64; 3]> = Default::default();
    for t in &rows {
        let c = categories.entry(t.category.as_str()).or_default();
        c[0] += t.pending;
        c[1] += t.confirmed;
        c[2] += t.dismissed;
    }
    let categories: Vec<_> = categories
        .into_iter()
        .map(|(id, [pending, confirmed, dismissed])| {
            json!({
                "category": id,
                "pending": pending,
                "confirmed": confirmed,
                "dismissed": dismissed,
                "precision": precision(confirmed, dismissed),
            })
        })
        .collect();
    let terms: Vec<_> = rows
        .iter()
        .filter(|t| t.detector.as_deref() == Some("keyword") && t.dismissed > 0)
        .take(TERMS_MAX)
        .map(|t| {
            // The term's text only where its id is one of the running policy's.
            let term = t
                .term_id
                .as_deref()
                .filter(|_| t.policy_version.as_deref() == Some(version.as_str()))
                .and_then(|id| id.parse::<u32>().ok())
                .and_then(|id| policy.term(id));
            json!({
                "category": t.category,
                "term_id": t.term_id,
                "term": term,
                "policy_version": t.policy_version,
                "confirmed": t.confirmed,
                "dismissed": t.dismissed,
                "pending": t.pending,
                "precision": precision(t.confirmed, t.dismissed),
                "dismissed_examples": t.dismissed_examples,
            })
        })
        .collect();
    Json(json!({
        "days": days,
        "policy_version": version,
        "categories": categories,
        "dismissed_terms": terms,
        "rows": rows,
    }))
    .into_response()
}

/// Keywords listed in `dismissed_terms` at most (most dismissed first).
const TERMS_MAX: usize = 100;

/// Confirmed among judged items, or null before any was judged.
fn precision(confirmed: u64, dismissed: u64) -> Option<f64> {
    let judged = confirmed + dismissed;
    (judged > 0).then(|| confirmed as f64 / judged as f64)
}

/// The audit record of a verdict: linked to the decision's request and user.
async fn record(s: &AdminState, item: &Item, strike: Option<&str>) {
    let mut r = crate::audit::Record::new(crate::audit::RecordKind::Admin);
    r.request_id = item.request_id.clone();
    r.content_id = item.content_id.clone();
    r.user = item.user.clone();
    r.category = Some(item.category.clone());
    r.detail = Some(format!(
        "review {} verdict={}{}",
        item.id,
        item.verdict.map_or("-", Verdict::as_str),
        strike.map_or(String::new(), |s| format!(" strike={s}"))
    ));
    if let Err(e) = s.app.records.auditor.record(r).await {
        tracing::warn!(item = %item.id, error = %e, "Audit record of a review verdict not written");
    }
}

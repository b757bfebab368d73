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
            record(&s, &item).await;
            Json(item).into_response()
        }
        Err(e) => failed(e),
    }
}

/// The audit record of a verdict: linked to the decision's request and user.
async fn record(s: &AdminState, item: &Item) {
    let mut r = crate::audit::Record::new(crate::audit::RecordKind::Admin);
    r.request_id = item.request_id.clone();
    r.content_id = item.content_id.clone();
    r.user = item.user.clone();
    r.category = Some(item.category.clone());
    r.detail = Some(format!(
        "review {} verdict={}",
        item.id,
        item.verdict.map_or("-", Verdict::as_str)
    ));
    if let Err(e) = s.app.records.auditor.record(r).await {
        tracing::warn!(item = %item.id, error = %e, "Audit record of a review verdict not written");
    }
}

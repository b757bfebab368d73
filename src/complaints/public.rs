//! The complaint entry on the public listener, at `complaints.public_path` (P):
//!
//! - `GET P/procedure`: the published procedure and the time limit of each type;
//! - `POST P` `{"type", "content_id"?, "request_id"?, "description"?}`: file one (201);
//! - `GET P/{id}`: its status and, once resolved, the outcome and the reply.
//!
//! A complaint is filed by the caller the audit records know (the user-id header, else the API
//! key; pseudonymous), and only that caller reads it back. Errors come in the OpenAI error shape,
//! as on the model routes.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::json;

use super::{Complaint, ComplaintError, Complaints, NewComplaint};
use crate::dialect::error::{ApiError, ErrorKind};
use crate::server::AppState;

/// Largest complaint body read: a description of 2000 CJK characters is 6 KB of UTF-8.
pub const BODY_LIMIT: u64 = 64 * 1024;

/// Whether `path` is the complaint entry (or under it).
pub fn is_complaint_path(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Answer one request under the complaint entry.
pub async fn handle(
    state: &AppState,
    complaints: &Complaints,
    method: &Method,
    rest: &str,
    headers: &HeaderMap,
    body: Body,
    body_timeout: std::time::Duration,
) -> Response {
    let rest = rest.trim_end_matches('/');
    match (method, rest) {
        (&Method::GET, "/procedure") => procedure(complaints),
        (&Method::POST, "") => {
            let Some(reporter) = state.records.identity(headers).0 else {
                return unidentified();
            };
            let bytes =
                match crate::server::body::read_limited(body, BODY_LIMIT, body_timeout).await {
                    Ok(b) => b,
                    Err(e) => return e.into_response(),
                };
            let new: NewComplaint = match serde_json::from_slice(&bytes) {
                Ok(n) => n,
                Err(e) => {
                    return ApiError::new(
                        ErrorKind::BadJson,
                        format!("the complaint is not valid JSON of the expected shape: {e}"),
                    )
                    .into_response()
                }
            };
            match complaints.file(new, Some(reporter), "app").await {
                Ok(c) => {
                    record(state, &c, "filed").await;
                    (StatusCode::CREATED, Json(c.public_view())).into_response()
                }
                Err(e) => error(e),
            }
        }
        (&Method::GET, id) if id.starts_with('/') && !id[1..].contains('/') => {
            let Some(caller) = state.records.identity(headers).0 else {
                return unidentified();
            };
            match complaints.get(&id[1..]).await {
                // Another caller's complaint reads as no complaint at all.
                Ok(c) if c.reporter.as_deref() == Some(caller.as_str()) => {
                    Json(c.public_view()).into_response()
                }
                Ok(_) => error(ComplaintError::NotFound),
                Err(e) => error(e),
            }
        }
        (_, "") => method_not_allowed("POST"),
        (_, "/procedure") => method_not_allowed("GET"),
        _ => error(ComplaintError::NotFound),
    }
}

fn procedure(complaints: &Complaints) -> Response {
    let types: Vec<_> = complaints
        .types()
        .iter()
        .map(|(id, t)| {
            json!({
                "type": id,
                "name_zh": t.name_zh,
                "name_en": t.name_en,
                "time_limit": t.sla.to_string(),
                "time_limit_seconds": t.sla.get().as_secs(),
            })
        })
        .collect();
    Json(json!({"procedure": complaints.procedure(), "types": types})).into_response()
}

/// The audit record of a complaint filed or resolved: linked to the answer it is about.
pub async fn record(state: &AppState, c: &Complaint, event: &str) {
    let mut r = crate::audit::Record::new(crate::audit::RecordKind::Complaint);
    r.content_id = c.content_id.clone();
    r.request_id = c.request_id.clone();
    r.user = c.reporter.clone();
    let mut detail = format!("{event} {} type={} channel={}", c.id, c.kind, c.channel);
    if let Some(o) = c.outcome {
        detail.push_str(&format!(" outcome={}", o.as_str()));
    }
    r.detail = Some(detail);
    if let Err(e) = state.records.auditor.record(r).await {
        tracing::warn!(complaint = %c.id, error = %e, "Audit record of a complaint not written");
    }
}

fn unidentified() -> Response {
    ApiError::new(
        ErrorKind::Unidentified,
        "a complaint needs to know who files it: send the user-id header (audit.user_id_header) or an API key",
    )
    .into_response()
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut r = ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!("this complaint path takes {allow}"),
    )
    .into_response();
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// A complaint error in the OpenAI error shape.
pub fn error(e: ComplaintError) -> Response {
    let err = match &e {
        ComplaintError::Invalid { param, .. } => {
            ApiError::new(ErrorKind::BadRequest, e.to_string()).with_param(*param)
        }
        ComplaintError::NotFound => ApiError::new(ErrorKind::NotFound, e.to_string()),
        ComplaintError::AlreadyResolved => ApiError::new(ErrorKind::Conflict, e.to_string()),
        ComplaintError::TooManyOpen(_) => ApiError::new(ErrorKind::UserLimit, e.to_string()),
        ComplaintError::Store(_) => ApiError::new(
            ErrorKind::Unavailable,
            "complaints cannot be taken right now; try again shortly",
        ),
    };
    err.into_response()
}

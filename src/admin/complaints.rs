//! Complaints on the admin listener (token): operators file what came by phone, e-mail or
//! letter, list what is open or overdue, read one with the audit records of the answer it is
//! about, and resolve it with the reply the complainant reads.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{admin_error, pseudonym, switched_on, AdminState};
use crate::complaints::public::record;
use crate::complaints::{ComplaintError, Complaints, ListFilter, NewComplaint, Outcome, Status};

/// Linked audit records shown with one complaint, at most.
const LINKED_RECORDS: usize = 100;

/// The complaint service, for a caller with the admin token; else the answer that says why not.
fn service<'a>(s: &'a AdminState, headers: &HeaderMap) -> Result<&'a Complaints, Box<Response>> {
    switched_on(
        &s.app,
        headers,
        s.app.complaints.as_ref(),
        "complaints are off (complaints.enabled is false)",
    )
}

fn failed(e: ComplaintError) -> Response {
    let status = match e {
        ComplaintError::Invalid { .. } => StatusCode::BAD_REQUEST,
        ComplaintError::NotFound => StatusCode::NOT_FOUND,
        ComplaintError::AlreadyResolved => StatusCode::CONFLICT,
        ComplaintError::TooManyOpen(_) => StatusCode::TOO_MANY_REQUESTS,
        ComplaintError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    admin_error(status, &e.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    content_id: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    description: String,
    /// How it came in: phone, email, sms, letter, web, other.
    channel: String,
    /// The complainant's user id (raw or pseudonymous), when known.
    #[serde(default)]
    user: Option<String>,
}

pub async fn file(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Json(b): Json<FileBody>,
) -> Response {
    let c = match service(&s, &headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let reporter = b.user.as_deref().map(|u| pseudonym(&s.app, u));
    let new = NewComplaint {
        kind: b.kind,
        content_id: b.content_id,
        request_id: b.request_id,
        description: b.description,
    };
    match c.file(new, reporter, &b.channel).await {
        Ok(done) => {
            record(&s.app, &done, "filed").await;
            (
                StatusCode::CREATED,
                Json(done.admin_view(chrono::Utc::now())),
            )
                .into_response()
        }
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    overdue: bool,
    content_id: Option<String>,
    request_id: Option<String>,
    limit: Option<usize>,
}

pub async fn list(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let c = match service(&s, &headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let status = match q.status.as_deref().map(|v| (v, Status::parse(v))) {
        None => None,
        Some((_, Some(st))) => Some(st),
        Some((v, None)) => {
            return admin_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "status `{}` is not open or resolved",
                    v.chars().take(20).collect::<String>()
                ),
            )
        }
    };
    let filter = ListFilter {
        status,
        kind: q.kind,
        overdue: q.overdue,
        content_id: q.content_id,
        request_id: q.request_id,
        limit: q.limit.unwrap_or(100),
    };
    match c.list(filter).await {
        Ok(found) => {
            let now = chrono::Utc::now();
            let list: Vec<_> = found.iter().map(|c| c.admin_view(now)).collect();
            Json(json!({"complaints": list})).into_response()
        }
        Err(e) => failed(e),
    }
}

/// One complaint, with the audit records of the answer it names (by content id, else request
/// id): what was decided, by which policy, and what was delivered.
pub async fn show(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let c = match service(&s, &headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let found = match c.get(&id).await {
        Ok(found) => found,
        Err(e) => return failed(e),
    };
    let mut body = json!({"complaint": found.admin_view(chrono::Utc::now())});
    if let Some(dir) = s.app.records.auditor.dir().map(|d| d.to_path_buf()) {
        let (content_id, request_id) = (found.content_id.clone(), found.request_id.clone());
        let search = move || linked_records(&dir, content_id, request_id);
        body["records"] = match tokio::task::spawn_blocking(search).await {
            Ok(Ok(records)) => json!(records),
            Ok(Err(e)) => json!({"error": e.to_string()}),
            Err(_) => json!({"error": "record search failed"}),
        };
    }
    Json(body).into_response()
}

/// The records of the request that produced the named answer: found by content id (the delivery
/// record carries it), then by that record's request id (decisions, labels, the delivery).
fn linked_records(
    dir: &std::path::Path,
    content_id: Option<String>,
    request_id: Option<String>,
) -> Result<Vec<crate::audit::Record>, crate::audit::AuditError> {
    let limit = Some(LINKED_RECORDS);
    let mut request_id = request_id;
    if let Some(content_id) = content_id {
        let by_content = crate::audit::find(
            dir,
            &crate::audit::Query {
                content_id: Some(content_id),
                limit,
                ..Default::default()
            },
        )?;
        match by_content.iter().find_map(|r| r.request_id.clone()) {
            Some(r) => request_id = Some(r),
            None => return Ok(by_content),
        }
    }
    let Some(request_id) = request_id else {
        return Ok(Vec::new());
    };
    crate::audit::find(
        dir,
        &crate::audit::Query {
            request_id: Some(request_id),
            limit,
            ..Default::default()
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveBody {
    outcome: Outcome,
    /// The answer the complainant reads.
    reply: String,
}

pub async fn resolve(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(b): Json<ResolveBody>,
) -> Response {
    let c = match service(&s, &headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match c.resolve(&id, b.outcome, &b.reply).await {
        Ok(done) => {
            record(&s.app, &done, "resolved").await;
            Json(done.admin_view(chrono::Utc::now())).into_response()
        }
        Err(e) => failed(e),
    }
}

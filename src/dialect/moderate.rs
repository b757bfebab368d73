//! Moderated routes: read and judge the request, forward exactly what was judged, judge the answer.

use axum::body::Body;
use axum::response::Response;
use http::header;

use crate::dialect::error::{ApiError, ErrorKind};
use crate::metrics::metrics;
use crate::server::body;
use crate::server::proxy::{self, RequestCtx};
use crate::server::upstream::UpstreamBody;

/// Handle a request on a moderated route.
pub async fn handle(ctx: RequestCtx, client_body: Body) -> Response {
    if let Err(e) = check_request_headers(&ctx) {
        return ctx.error(e);
    }
    let limit = ctx.rt.config.server.body_limit.get();
    let bytes = match body::read_limited(client_body, limit, proxy::body_timeout(&ctx.rt)).await {
        Ok(b) => b,
        Err(e) => return ctx.error(e),
    };
    metrics()
        .request_bytes
        .with_label_values(&[&ctx.log.route])
        .inc_by(bytes.len() as u64);
    if let Err(e) = super::json::parse_strict(&bytes) {
        return ctx.error(e);
    }
    proxy::forward(ctx, UpstreamBody::Full(bytes), None, true).await
}

/// A moderated body must be plain JSON: shenhe judges what it can read, and forwards only that.
fn check_request_headers(ctx: &RequestCtx) -> Result<(), ApiError> {
    if let Some(enc) = ctx.client_headers.get(header::CONTENT_ENCODING) {
        if !enc.as_bytes().eq_ignore_ascii_case(b"identity") {
            return Err(ApiError::new(
                ErrorKind::UnsupportedMediaType,
                "compressed request bodies are not accepted on moderated routes; send plain JSON",
            ));
        }
    }
    if let Some(ct) = ctx.client_headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or_default().trim();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::new(
                ErrorKind::UnsupportedMediaType,
                format!("content type `{essence}` is not accepted on this route; send application/json"),
            ));
        }
        if let Some(cs) = ct.split(';').skip(1).find_map(|p| p.trim().strip_prefix("charset=")) {
            let cs = cs.trim_matches('"');
            if cs != "utf-8" && cs != "utf8" {
                return Err(ApiError::new(
                    ErrorKind::UnsupportedMediaType,
                    format!("charset `{cs}` is not accepted; send UTF-8 JSON"),
                ));
            }
        }
    }
    Ok(())
}

//! The proxy handler: route → dialect → (moderation) → upstream → client.
//!
//! Passthrough routes stream both bodies untouched. Moderated routes read the request body
//! (bounded), let the dialect and policy judge it, forward exactly the bytes that were judged,
//! and hand the response to the dialect's moderation of completions.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use super::body::{self, LimitedBody, ObservedStream, RequestLog};
use super::headers;
use super::listener::PeerAddr;
use super::routes::RouteMatch;
use super::upstream::UpstreamBody;
use super::{AppState, Runtime};
use crate::dialect::error::{ApiError, ErrorKind, ErrorShape};
use crate::dialect::DialectName;
use crate::metrics::metrics;

/// Everything about one request that the stages after routing need.
pub struct RequestCtx {
    pub rt: Arc<Runtime>,
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub client_headers: HeaderMap,
    pub peer: PeerAddr,
    pub request_id: HeaderValue,
    pub dialect: DialectName,
    pub log: RequestLog,
    pub rec: super::records::RecordCtx,
}

impl RequestCtx {
    pub fn shape(&self) -> ErrorShape {
        self.dialect.error_shape()
    }

    /// An error answer in this route's shape, finishing the request log.
    pub fn error(mut self, err: ApiError) -> Response {
        let err = err.shaped(self.shape());
        if err.kind.is_client_fault() {
            metrics()
                .client_errors
                .with_label_values(&[err.kind.code()])
                .inc();
        }
        self.log.bytes_out = err.body_bytes().len() as u64;
        let mut resp = err.clone().into_response();
        resp.headers_mut()
            .insert(headers::X_REQUEST_ID, self.request_id.clone());
        self.rt.headers.decorate_response(resp.headers_mut());
        self.log.status = resp.status().as_u16();
        self.log.error = Some(err.kind.code());
        self.log.finish();
        resp
    }

    /// A complete answer that shenhe built (JSON bodies), finishing the request log.
    pub fn complete(
        mut self,
        status: StatusCode,
        mut headers: HeaderMap,
        body: bytes::Bytes,
    ) -> Response {
        headers.insert(headers::X_REQUEST_ID, self.request_id.clone());
        headers.remove(header::CONTENT_LENGTH);
        self.log.status = status.as_u16();
        self.log.bytes_out = body.len() as u64;
        self.log.finish();
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }

    /// A streamed answer: the log is finished when the body ends or the client leaves.
    pub fn streaming<S, E>(
        mut self,
        status: StatusCode,
        mut headers: HeaderMap,
        stream: S,
        sse: bool,
    ) -> Response
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        headers.insert(headers::X_REQUEST_ID, self.request_id.clone());
        self.log.status = status.as_u16();
        self.log.streamed = sse;
        let observed = ObservedStream::new(stream, self.log);
        let mut resp = Response::new(body::body_from_stream(observed));
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }
}

/// The handler of every request on the public listener; `peer` is where it came from.
pub async fn handle(state: Arc<AppState>, req: Request, peer: PeerAddr) -> Response {
    let rt = state.runtime();
    let (parts, body) = req.into_parts();
    let request_id = headers::request_id(&parts.headers);
    let rid = request_id.to_str().unwrap_or_default().to_string();
    let path = parts.uri.path().to_string();
    if let Some(c) = state.complaints.as_ref() {
        if let Some(prefix) = c.public_path() {
            if crate::complaints::public::is_complaint_path(prefix, &path) {
                let started = std::time::Instant::now();
                // Boxed: held only while a complaint request runs (see the test below).
                let mut resp = Box::pin(crate::complaints::public::handle(
                    &state,
                    c,
                    &parts.method,
                    &path[prefix.len()..],
                    &parts.headers,
                    body,
                    body_timeout(&rt),
                ))
                .await;
                // The request line every request gets, without the user or the complaint.
                tracing::info!(
                    request_id = %rid,
                    route = prefix,
                    method = %parts.method,
                    status = resp.status().as_u16(),
                    duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "Request finished"
                );
                resp.headers_mut().insert(headers::X_REQUEST_ID, request_id);
                return resp;
            }
        }
    }
    if parts.method == Method::GET {
        if let Some((key_path, pem)) = rt.labeler.as_ref().and_then(|l| l.public_key_route()) {
            if key_path == path {
                return ([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response();
            }
        }
    }
    let route = rt.routes.lookup(&parts.method, &path);
    let counted = match &route {
        RouteMatch::Listed(r) => r.clone(),
        RouteMatch::Unlisted
        | RouteMatch::Refused
        | RouteMatch::StoredOutput(_)
        | RouteMatch::Ambiguous(_) => rt.routes.unlisted().clone(),
    };
    let dialect = counted.dialect;
    // Only moderated routes write records: passthrough requests skip the HMAC.
    let (user, tenant, minor) = if dialect == DialectName::Passthrough {
        (None, None, false)
    } else {
        let (user, tenant) = state.records.identity(&parts.headers);
        (user, tenant, state.records.is_minor(&parts.headers))
    };
    let rec = super::records::RecordCtx {
        records: state.records.clone(),
        request_id: rid.clone(),
        route: counted.clone(),
        dialect: dialect.as_str(),
        model: None,
        user: user.clone(),
        tenant,
        policy: rt.policy.clone(),
        enforce_seq: None,
        minor,
    };
    let mut log = RequestLog::new(rid, counted, parts.method.clone());
    log.user = user;
    let ctx = RequestCtx {
        rec,
        rt,
        method: parts.method.clone(),
        path,
        query: parts.uri.query().map(str::to_string),
        client_headers: parts.headers,
        peer,
        request_id,
        dialect,
        log,
    };
    match route {
        RouteMatch::Refused => {
            let message = format!(
                "no route for POST {}: shenhe forwards only listed generation routes (add it under routes.paths, or set routes.default: passthrough)",
                ctx.path
            );
            ctx.error(ApiError::new(ErrorKind::UnknownRoute, message))
        }
        RouteMatch::StoredOutput(parent) => {
            // Refused in the shape of the API it sits under.
            let mut ctx = ctx;
            ctx.dialect = parent.dialect;
            let message = format!(
                "no route for {} {}: it sits under the moderated route {}, where a model server \
                 serves stored output (retrieval, background runs, batch results) that shenhe \
                 has not judged (set routes.default: passthrough to forward it)",
                ctx.method, ctx.path, parent.template
            );
            ctx.error(ApiError::new(ErrorKind::UnknownRoute, message))
        }
        RouteMatch::Ambiguous(why) => ctx.error(ApiError::new(
            ErrorKind::BadRequest,
            format!("refused path: {why}"),
        )),
        RouteMatch::Listed(_) if dialect != DialectName::Passthrough => {
            match ctx.method {
                // Boxed, as the passthrough below: the moderated exchange's state is several
                // KiB, and the router moves this handler's future more than once per request
                // (measured: 9 KiB of memcpy per request, a fifth of a passthrough request's
                // instructions, before boxing).
                Method::POST => Box::pin(crate::dialect::moderate::handle(ctx, body)).await,
                // A CORS preflight carries no content: the model server answers it, and
                // whatever body came with it stays here. Boxed too: unboxed, the exchange's
                // state sat in every connection's task, passthrough streams included
                // (bench/README.md item 33: 17 → 21 KiB an idle open stream).
                Method::OPTIONS => Box::pin(forward(ctx, UpstreamBody::Empty, None, false)).await,
                // A generation route reads its text from a POST body. Another method would
                // either fail to parse (a GET has no body) or reach the model server with
                // nothing judged (a listing of stored completions holds model output).
                _ => {
                    let message = format!(
                        "{} is not allowed on {}: shenhe moderates this route, which takes POST \
                         (and OPTIONS)",
                        ctx.method, ctx.path
                    );
                    ctx.error(ApiError::new(ErrorKind::MethodNotAllowed, message))
                }
            }
        }
        // Passthrough routes, listed or not.
        RouteMatch::Listed(_) | RouteMatch::Unlisted => Box::pin(passthrough(ctx, body)).await,
    }
}

/// Forward a request untouched, bodies streamed both ways.
async fn passthrough(ctx: RequestCtx, client_body: Body) -> Response {
    let limit = ctx.rt.config.server.body_limit.get();
    let declared = ctx
        .client_headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return ctx.error(body::too_large(limit));
    }
    let has_body = declared.is_some_and(|n| n > 0)
        || ctx.client_headers.contains_key(header::TRANSFER_ENCODING);
    let (upstream_body, tripped) = if has_body {
        let (b, tripped) = LimitedBody::new(client_body, limit);
        (
            UpstreamBody::Stream(http_body_util::BodyExt::boxed_unsync(b)),
            Some(tripped),
        )
    } else {
        (UpstreamBody::Empty, None)
    };
    ctx.log
        .route
        .series
        .request_bytes()
        .inc_by(declared.unwrap_or(0));
    forward(ctx, upstream_body, tripped, false).await
}

/// Send to the upstream and stream its answer back as it comes.
pub async fn forward(
    mut ctx: RequestCtx,
    body: UpstreamBody,
    tripped: Option<Arc<std::sync::atomic::AtomicBool>>,
    moderated: bool,
) -> Response {
    match send_upstream(&mut ctx, body, moderated).await {
        Ok((resp, sent)) => stream_back(ctx, resp, sent),
        Err(e) => {
            if tripped.is_some_and(|t| t.load(Ordering::Relaxed)) {
                let limit = ctx.rt.config.server.body_limit.get();
                return ctx.error(body::too_large(limit));
            }
            ctx.error(e)
        }
    }
}

/// Send the request upstream and wait for its response headers.
pub async fn send_upstream(
    ctx: &mut RequestCtx,
    body: UpstreamBody,
    moderated: bool,
) -> Result<(super::upstream::UpstreamResponse, Instant), ApiError> {
    let url = ctx.rt.upstream.url(&ctx.path, ctx.query.as_deref())?;
    let up_headers = ctx.rt.headers.upstream_request(
        &ctx.client_headers,
        Some(&ctx.peer.ip),
        &ctx.request_id,
        moderated,
    );
    let sent = Instant::now();
    ctx.log.upstream_started = Some(sent);
    let resp = ctx
        .rt
        .upstream
        .send(ctx.method.clone(), url, up_headers, body, moderated)
        .await?;
    ctx.log.upstream_status = Some(resp.status().as_u16());
    ctx.log
        .route
        .series
        .upstream_ttfb()
        .observe(sent.elapsed().as_secs_f64());
    Ok((resp, sent))
}

/// Relay an upstream response: status and headers kept, body streamed chunk by chunk.
pub fn stream_back(
    mut ctx: RequestCtx,
    resp: super::upstream::UpstreamResponse,
    sent: Instant,
) -> Response {
    let status = resp.status();
    ctx.log.upstream_status = Some(status.as_u16());
    let mut headers = ctx
        .rt
        .headers
        .client_response(resp.headers(), &ctx.request_id);
    // The body goes as the model server framed it: a declared length stays (the client can
    // size its buffer, and sees what the model server sent); without one, chunked. An answer
    // to HEAD, or a 304, keeps the length of the body it stands for (it has none itself); a
    // 204 has no length to keep.
    if status != StatusCode::NO_CONTENT {
        if let Some(len) = framing_length(resp.headers()) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
    let sse = is_event_stream(resp.headers());
    let deadline = sent + ctx.rt.upstream.total_timeout;
    let idle = ctx.rt.upstream.idle_timeout;
    let stream = super::upstream::bounded_body(resp, idle, deadline)
        .map(|r| r.map_err(|f| std::io::Error::other(f.message())));
    ctx.streaming(status, headers, stream, sse)
}

/// The length an upstream response's body is framed by: one valid `Content-Length` and no
/// `Transfer-Encoding` (which wins over it). The upstream client reads exactly that many bytes
/// (`client::response`), and a decoded body has had the header removed (`Upstream::send`).
fn framing_length(h: &HeaderMap) -> Option<u64> {
    if h.contains_key(header::TRANSFER_ENCODING) {
        return None;
    }
    let mut values = h.get_all(header::CONTENT_LENGTH).iter();
    let len = values.next()?.to_str().ok()?.trim().parse::<u64>().ok()?;
    values.next().is_none().then_some(len)
}

pub fn is_event_stream(h: &HeaderMap) -> bool {
    const SSE: &[u8] = b"text/event-stream";
    h.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes().trim_ascii_start();
        v.len() >= SSE.len() && v[..SSE.len()].eq_ignore_ascii_case(SSE)
    })
}

/// How long a moderated request may take to arrive.
pub fn body_timeout(rt: &Runtime) -> Duration {
    rt.config.server.body_timeout.get()
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    /// Size of the future an async fn of three (four) arguments returns; no call is made.
    fn future_size<A, B, C, F: Future>(_: impl Fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn future_size4<A, B, C, D, F: Future>(_: impl Fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The handler's future lives in every connection's task for as long as the connection is
    /// open (an idle stream's memory): the exchanges it awaits are boxed, so their state is
    /// held only while one runs. One awaited unboxed (an OPTIONS forward) took an open
    /// passthrough stream from 17 to 21 KiB in the load bench.
    #[test]
    fn the_handler_future_holds_no_exchange() {
        let handler = future_size(super::handle);
        let exchange = future_size4(super::forward);
        assert!(handler < 2048, "handler future {handler} bytes");
        assert!(handler < exchange, "{handler} against {exchange}");
    }
}

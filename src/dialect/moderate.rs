//! Moderated routes: read and judge the request, forward exactly what was judged, judge the answer.
//!
//! The phases, in the order a request meets them:
//! 1. `check_request_headers`: only plain UTF-8 JSON is judged, so only that is accepted.
//! 2. prompt: the dialect lists the prompt texts; a `block` finding ends the request with the
//!    dialect's refusal and the upstream never sees it; `redact` rewrites the text in place.
//! 3. forward: the exact bytes judged (or their rewrite) go upstream.
//! 4. completion: a streamed answer goes through the stream guard, a whole one is judged at once.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{header, HeaderMap};
use serde_json::Value;

use super::labels::{aigc_value, Delivery, TextLabels};
use super::openai::{self, Flavor, OpenAi};
use super::paths::{self, Found, Seg};
use crate::audit::Record;
use crate::dialect::error::{ApiError, ErrorKind};
use crate::dialect::DialectName;
use crate::metrics::metrics;
use crate::policy::{Action, Direction, Finding, Policy};
use crate::server::body;
use crate::server::proxy::{self, is_event_stream, RequestCtx};
use crate::server::records::RecordCtx;
use crate::server::upstream::{bounded_body, UpstreamBody, UpstreamResponse};
use crate::stream::guard::{EndVerdict, Guard, StopReason, StreamFinding};
use crate::stream::{guarded_body, Reporter};

/// Handle a request on a moderated route: the user's standing first (`enforce`), then the
/// exchange.
pub async fn handle(mut ctx: RequestCtx, client_body: Body) -> Response {
    let verdict = match &ctx.rec.records.enforcer {
        Some(e) => {
            let now = crate::enforce::Enforcer::now_ms();
            Some(
                e.check(ctx.rec.user.as_deref(), &ctx.client_headers, now)
                    .await,
            )
        }
        None => None,
    };
    let Some(verdict) = verdict else {
        return exchange(ctx, client_body).await;
    };
    match verdict {
        crate::enforce::Verdict::Serve {
            notice,
            seq,
            reminder,
        } => {
            ctx.rec.enforce_seq = seq;
            let mut resp = exchange(ctx, client_body).await;
            if let Some(n) = notice {
                resp.headers_mut().insert(
                    crate::enforce::NOTICE_HEADER,
                    http::HeaderValue::from_static(n),
                );
            }
            if let Some(minutes) = reminder {
                resp.headers_mut()
                    .insert(crate::enforce::REMINDER_HEADER, minutes.into());
            }
            resp
        }
        crate::enforce::Verdict::Refuse {
            error,
            retry_after,
            detail,
        } => {
            ctx.rec.sanction(detail).await;
            let mut resp = ctx.error(error);
            if let Some(secs) = retry_after {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, crate::enforce::retry_after(secs));
            }
            resp
        }
    }
}

/// The exchange of a moderated route.
async fn exchange(ctx: RequestCtx, client_body: Body) -> Response {
    if let Err(e) = check_request_headers(&ctx) {
        return ctx.error(e);
    }
    let limit = ctx.rt.config.server.body_limit.get();
    let bytes = match body::read_limited(client_body, limit, proxy::body_timeout(&ctx.rt)).await {
        Ok(b) => b,
        Err(e) => return ctx.error(e),
    };
    ctx.log
        .route
        .series
        .request_bytes()
        .inc_by(bytes.len() as u64);
    match ctx.dialect {
        DialectName::OpenaiChat => {
            let extras = ctx.rt.extras.openai_chat.clone();
            text_exchange(ctx, bytes, OpenAi(Flavor::Chat), extras).await
        }
        DialectName::OpenaiCompletions => {
            let extras = ctx.rt.extras.openai_completions.clone();
            text_exchange(ctx, bytes, OpenAi(Flavor::Completions), extras).await
        }
        DialectName::AnthropicMessages => {
            let extras = ctx.rt.extras.anthropic_messages.clone();
            text_exchange(ctx, bytes, super::anthropic::Anthropic, extras).await
        }
        DialectName::OpenaiResponses => {
            let extras = ctx.rt.extras.openai_responses.clone();
            text_exchange(ctx, bytes, super::responses::Responses, extras).await
        }
        DialectName::OpenaiImages => images_exchange(ctx, bytes).await,
        DialectName::PromptOnly => prompt_only_exchange(ctx, bytes).await,
        other => ctx.error(ApiError::new(
            ErrorKind::Internal,
            format!("the {other} dialect is not available in this build"),
        )),
    }
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
                format!(
                    "content type `{essence}` is not accepted on this route; send application/json"
                ),
            ));
        }
        if let Some(cs) = ct
            .split(';')
            .skip(1)
            .find_map(|p| p.trim().strip_prefix("charset="))
        {
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

/// The refusal text for a category in the client's language (zh unless it prefers English).
pub fn refusal_text(policy: &Policy, category: &str, headers: &HeaderMap) -> String {
    let english = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("en"));
    match policy.category(category) {
        Some(c) if english => c.refusal_en.clone(),
        Some(c) => c.refusal_zh.clone(),
        None if english => {
            "This request cannot be processed under the service's content rules.".into()
        }
        None => "抱歉，该内容违反相关规定，无法处理。".into(),
    }
}

/// Note a decision in the request log, the process log and the metrics.
pub fn note_decision(
    ctx_decisions: &Mutex<Vec<String>>,
    direction: Direction,
    f: &Finding,
    where_: &str,
) {
    if let Ok(mut d) = ctx_decisions.lock() {
        d.push(format!(
            "{}:{}:{}",
            direction.as_str(),
            f.category,
            f.action.as_str()
        ));
    }
    tracing::info!(
        direction = direction.as_str(),
        category = %f.category,
        action = f.action.as_str(),
        field = where_,
        "Moderation finding"
    );
}

/// Count, log and record a finding made in `text` (the judged text it was found in).
fn record_finding(
    ctx: &RequestCtx,
    direction: Direction,
    f: &Finding,
    text: &str,
    field: &str,
    records: &mut Vec<Record>,
) {
    metrics()
        .decisions
        .with_label_values(&[direction.as_str(), &f.category, f.action.as_str()])
        .inc();
    note_decision(&ctx.log.decisions, direction, f, field);
    records.push(
        ctx.rec
            .decision(&ctx.rt.policy, direction, f, text, f.span.clone()),
    );
}

/// A request's prompt texts as the model reads them: in reading order, with nothing between.
/// A term split across the content parts of a message or across messages (`炸弹` | `制作`,
/// `bomb` | `recipe`) is one text here, so it is found across the seam.
struct Seamed<'t> {
    text: Cow<'t, str>,
    /// Where each text begins in `text`.
    starts: Vec<usize>,
}

impl<'t> Seamed<'t> {
    fn new(texts: impl ExactSizeIterator<Item = &'t str>) -> Seamed<'t> {
        let mut starts = Vec::with_capacity(texts.len());
        let mut text = Cow::Borrowed("");
        for (i, t) in texts.enumerate() {
            starts.push(text.len());
            if i == 0 {
                text = Cow::Borrowed(t);
            } else {
                text.to_mut().push_str(t);
            }
        }
        Seamed { text, starts }
    }

    /// Every finding in the joined text (`Policy::scan_joined`: a prompt that begins as an
    /// earlier one of the same tenant and user did is scanned from where that one's texts
    /// ended).
    fn scan(&self, policy: &Policy, direction: Direction, rec: &RecordCtx) -> Vec<Finding> {
        let scope = [rec.tenant.as_deref(), rec.user.as_deref()].map(Option::unwrap_or_default);
        let scan = policy.scan_joined(&self.text, &self.starts, direction, &scope);
        if scan.reused > 0 {
            metrics().prompt_bytes_reused.inc_by(scan.reused as u64);
        }
        scan.findings
    }

    /// The index of the text that holds byte `pos` of the joined text.
    fn part(&self, pos: usize) -> usize {
        self.starts.partition_point(|&s| s <= pos).saturating_sub(1)
    }

    /// `f`'s share of text `i` (`len` bytes long), in that text's offsets.
    fn clip(&self, f: &Finding, i: usize, len: usize) -> Finding {
        let s = self.starts[i];
        Finding {
            span: f.span.start.max(s) - s..(f.span.end - s).min(len),
            ..f.clone()
        }
    }
}

/// Judge `texts` as one text with nothing between ([`Seamed`]): every finding is recorded with
/// the field it begins in. Returns the first blocking finding with its field, and each text's
/// shares of the redacting findings (in that text's offsets).
fn judge_seamed(
    ctx: &RequestCtx,
    direction: Direction,
    texts: &[Found],
    records: &mut Vec<Record>,
) -> (Option<(Finding, String)>, Vec<Vec<Finding>>) {
    let seamed = Seamed::new(texts.iter().map(|t| t.text.as_str()));
    let mut findings = seamed.scan(&ctx.rt.policy, direction, &ctx.rec);
    ctx.rec.act_on(&ctx.rt.policy, &mut findings);
    let mut block: Option<(Finding, String)> = None;
    let mut redact: Vec<Vec<Finding>> = vec![Vec::new(); texts.len()];
    for f in &findings {
        let first = seamed.part(f.span.start);
        let field = paths::display(&texts[first].path);
        record_finding(ctx, direction, f, &seamed.text, &field, records);
        if block.is_none() && f.action == Action::Block {
            block = Some((f.clone(), field));
        } else if f.action == Action::Redact {
            for i in first..=seamed.part(f.span.end - 1) {
                let len = texts[i].text.len();
                if len > 0 {
                    redact[i].push(seamed.clip(f, i, len));
                }
            }
        }
    }
    (block, redact)
}

/// Judge the prompt texts: `Ok(true)` when redaction rewrote the body; `Err` is the refusal.
/// Every finding becomes a record in `records`. The texts are scanned as the model reads them
/// ([`Seamed`]); a finding across a seam is recorded with the field it begins in, and a
/// redaction across one masks its share of each text.
fn judge_prompt(
    ctx: &RequestCtx,
    json: &mut Value,
    mut texts: Vec<Found>,
    records: &mut Vec<Record>,
) -> Result<bool, ApiError> {
    let policy = &ctx.rt.policy;
    let started = Instant::now();
    if texts.len() > 1 {
        texts.sort_by(|a, b| paths::reading_key(&a.path).cmp(paths::reading_key(&b.path)));
    }
    let (mut block, redact) = judge_seamed(ctx, Direction::Prompt, &texts, records);
    let mut rewritten = false;
    for (t, shares) in texts.iter().zip(&redact) {
        let Some(f) = shares.first() else { continue };
        let red = policy.redact(&t.text, shares);
        if paths::set_string(json, &t.path, red) {
            rewritten = true;
        } else if block.is_none() {
            // Not a string in the request (a tool input object): it cannot be rewritten in
            // place, and forwarding it unredacted is not an option, so the request is refused.
            block = Some((f.clone(), paths::display(&t.path)));
        }
    }
    metrics()
        .scan_time(Direction::Prompt)
        .observe(started.elapsed().as_secs_f64());
    if let Some((f, field)) = block {
        let top = field
            .split(['.', '['])
            .next()
            .unwrap_or("messages")
            .to_string();
        return Err(ApiError::new(
            ErrorKind::ContentFilter,
            refusal_text(policy, &f.category, &ctx.client_headers),
        )
        .with_param(top)
        .with_category(f.category.to_string()));
    }
    Ok(rewritten)
}

/// Write the records of a judged prompt; with `audit.fail_closed`, refuse when they cannot be kept.
async fn keep_records(ctx: &RequestCtx, records: Vec<Record>) -> Result<(), ApiError> {
    for r in records {
        ctx.rec.write(r).await;
    }
    if ctx.rec.records.auditor.refuse_traffic() {
        return Err(ApiError::new(
            ErrorKind::Unavailable,
            "moderation records cannot be written right now; try again later",
        ));
    }
    Ok(())
}

/// Copy what the labels decided into a delivery record.
fn fill_delivery(r: &mut Record, d: &Mutex<Delivery>) {
    if let Ok(d) = d.lock() {
        r.content_id = d.content_id.clone();
        r.content_sha256 = d.content_sha256.clone();
        r.label = d.label.clone();
    }
}

/// Parse a whole JSON answer; one shenhe cannot read is not delivered (fail closed).
fn parse_answer(body: &[u8]) -> Result<Value, ApiError> {
    super::json::parse_answer(body).map_err(|e| {
        metrics()
            .upstream_errors
            .with_label_values(&["protocol"])
            .inc();
        ApiError::new(
            ErrorKind::UpstreamProtocol,
            format!("the model server's answer is not JSON shenhe can judge: {e}"),
        )
    })
}

/// Read a whole upstream body within the response limit and the upstream timeouts.
async fn read_upstream(
    ctx: &RequestCtx,
    resp: UpstreamResponse,
    sent: Instant,
) -> Result<Bytes, ApiError> {
    let limit = ctx.rt.config.moderation.response_limit.get();
    let up = &ctx.rt.upstream;
    let mut stream = Box::pin(bounded_body(resp, up.idle_timeout, sent + up.total_timeout));
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|f| {
            let kind = match f {
                crate::server::upstream::StreamFault::Broken => ErrorKind::UpstreamProtocol,
                _ => ErrorKind::UpstreamTimeout,
            };
            ApiError::new(kind, f.message())
        })?;
        if buf.len() as u64 + chunk.len() as u64 > limit {
            return Err(ApiError::new(
                ErrorKind::UpstreamProtocol,
                "the model server's answer is larger than moderation.response_limit",
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Stream a moderated SSE answer through the guard.
fn guarded_response<C: crate::stream::guard::EventCodec>(
    ctx: RequestCtx,
    resp: UpstreamResponse,
    sent: Instant,
    codec: C,
    extra_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    delivery: Option<Arc<Mutex<Delivery>>>,
) -> Response {
    let status = resp.status();
    let mut headers = ctx
        .rt
        .headers
        .client_response(resp.headers(), &ctx.request_id);
    for (k, v) in extra_headers {
        headers.insert(k, v);
    }
    let up = &ctx.rt.upstream;
    let upstream = bounded_body(resp, up.idle_timeout, sent + up.total_timeout);
    let mut guard = Guard::new(
        codec,
        ctx.rt.policy.clone(),
        ctx.rt.config.moderation.stop_notice.clone(),
    );
    let classifier = ctx.rt.classifier.clone().filter(|c| c.judges_streams());
    if let Some(c) = &classifier {
        guard.hold_end_for_verdict(c.max_chars());
    }
    if ctx.rec.minor {
        guard.for_minor();
    }
    let reporter = StreamReporter {
        decisions: ctx.log.decisions.clone(),
        rec: ctx.rec.clone(),
        policy: ctx.rt.policy.clone(),
        upstream_status: status.as_u16(),
        sent,
        stopped: false,
        decided: false,
        delivery,
        classifier,
    };
    let body = guarded_body(upstream, guard, reporter);
    ctx.streaming(status, headers, body, true)
}

/// The classifier's verdict on a streamed answer's texts (each channel's, its last `max_chars`):
/// at its `end`, or so far while it flows.
async fn classify_streamed(
    c: Arc<crate::classify::Classifier>,
    policy: Arc<Policy>,
    rid: String,
    texts: Vec<(crate::stream::guard::ChannelKey, String)>,
    minor: bool,
    end: bool,
) -> EndVerdict {
    let (mut findings, mut block) = (Vec::new(), None);
    for (channel, text) in texts {
        if text.trim().is_empty() {
            continue;
        }
        let scores = match c.scores(&text, Direction::Completion, &rid).await {
            Ok(s) => s,
            Err(e) if !end => {
                tracing::warn!(request_id = %rid, error = %e, "Classifier failed on a stream while it flowed: the check at its end decides");
                return EndVerdict::Fail(e.to_string());
            }
            Err(e) if c.fails_open() => {
                tracing::warn!(request_id = %rid, error = %e, "Classifier failed on a stream: ending it on the keyword verdict (classifier.on_error: open)");
                continue;
            }
            Err(e) => {
                tracing::warn!(request_id = %rid, error = %e, "Classifier failed on a stream: ending it with an error (classifier.on_error: closed)");
                return EndVerdict::Fail("the answer could not be checked".into());
            }
        };
        let len = text.len();
        let found = c.findings(&policy, Direction::Completion, &scores, len, minor);
        if !end && !found.iter().any(|f| f.action == Action::Block) {
            // While the answer flows only a block counts; its end records the rest once.
            continue;
        }
        for f in found {
            metrics()
                .decisions
                .with_label_values(&["completion", &f.category, f.action.as_str()])
                .inc();
            if block.is_none() && f.action == Action::Block {
                block = Some(f.category.clone());
            }
            findings.push(StreamFinding {
                finding: f,
                channel,
                context: text.clone(),
                context_span: 0..len,
            });
        }
    }
    match block {
        Some(category) => EndVerdict::Block(category, findings),
        None => EndVerdict::Pass(findings),
    }
}

/// Records what a guarded stream decided.
struct StreamReporter {
    decisions: Arc<Mutex<Vec<String>>>,
    rec: crate::server::records::RecordCtx,
    policy: Arc<Policy>,
    upstream_status: u16,
    sent: Instant,
    stopped: bool,
    /// Some finding was made in this stream.
    decided: bool,
    delivery: Option<Arc<Mutex<Delivery>>>,
    /// Classifies the whole answer at the end (`classifier.streams`).
    classifier: Option<Arc<crate::classify::Classifier>>,
}

impl Reporter for StreamReporter {
    fn verdict(
        &mut self,
        texts: Vec<(crate::stream::guard::ChannelKey, String)>,
    ) -> Pin<Box<dyn Future<Output = EndVerdict> + Send + '_>> {
        match self.classifier.clone() {
            Some(c) => Box::pin(classify_streamed(
                c,
                self.policy.clone(),
                self.rec.request_id.clone(),
                texts,
                self.rec.minor,
                true,
            )),
            None => Box::pin(async { EndVerdict::Pass(Vec::new()) }),
        }
    }

    fn check_every(&self) -> usize {
        self.classifier
            .as_ref()
            .map_or(0, |c| c.stream_check_chars())
    }

    fn check_so_far(
        &mut self,
        texts: Vec<(crate::stream::guard::ChannelKey, String)>,
    ) -> Option<crate::stream::CheckFuture> {
        let c = self.classifier.clone()?;
        Some(Box::pin(classify_streamed(
            c,
            self.policy.clone(),
            self.rec.request_id.clone(),
            texts,
            self.rec.minor,
            false,
        )))
    }

    fn report<'a>(
        &'a mut self,
        findings: Vec<StreamFinding>,
        stop: Option<&'a StopReason>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            self.decided |= !findings.is_empty();
            for sf in &findings {
                let field = format!("choice{}:{}", sf.channel.0, sf.channel.1);
                note_decision(&self.decisions, Direction::Completion, &sf.finding, &field);
                let mut r = self.rec.decision(
                    &self.policy,
                    Direction::Completion,
                    &sf.finding,
                    &sf.context,
                    sf.context_span.clone(),
                );
                r.stopped = sf.finding.action == Action::Block;
                self.rec.write(r).await;
            }
            match stop {
                Some(StopReason::BadUpstreamEvent(why)) => {
                    tracing::warn!(request_id = %self.rec.request_id, reason = %why, "Stream stopped: unreadable upstream event");
                    self.stopped = true;
                }
                Some(StopReason::Blocked { .. }) => self.stopped = true,
                None => {}
            }
        })
    }

    fn done(&mut self, held_at_end: usize) {
        let mut r = self.rec.delivery();
        r.upstream_status = Some(self.upstream_status);
        r.upstream_ms = Some(self.sent.elapsed().as_millis() as u64);
        r.stopped = self.stopped;
        if let Some(d) = &self.delivery {
            fill_delivery(&mut r, d);
        }
        if held_at_end > 0 {
            r.detail = Some(format!("client left with {held_at_end} bytes held back"));
        }
        // A silent pass of unlabeled content is not a decision: it leaves no record.
        if r.content_id.is_none() && !r.stopped && !self.decided && held_at_end == 0 {
            return;
        }
        // Called from a drop: queue without waiting (a full queue counts a drop).
        let _ = self.rec.records.auditor.try_record(r);
    }
}

/// The prompt phase shared by every dialect: judge, keep the records, and give the bytes to
/// forward (the client's own, or the redacted rewrite). `Err` is the answer to send instead.
async fn prompt_phase(
    ctx: &mut RequestCtx,
    bytes: Bytes,
    json: &mut Value,
    texts: Vec<Found>,
) -> Result<Bytes, ApiError> {
    ctx.rec.model = json
        .get("model")
        .and_then(Value::as_str)
        .map(|m| m.chars().take(128).collect());
    let mut records = Vec::new();
    let verdict = judge_prompt(ctx, json, texts, &mut records);
    keep_records(ctx, records).await?;
    match verdict? {
        true => Ok(Bytes::from(super::json::rewrite(&bytes, json))),
        false => Ok(bytes),
    }
}

/// The prompt phase, the classifier (on the texts `extract` finds in the forwarded request),
/// then the judged bytes (or their redacted rewrite) sent upstream.
async fn judge_and_send(
    ctx: &mut RequestCtx,
    bytes: Bytes,
    json: &mut Value,
    texts: Vec<Found>,
    extract: fn(&Value) -> Result<Vec<Found>, ApiError>,
) -> Result<(UpstreamResponse, Instant), ApiError> {
    let forward_bytes = prompt_phase(ctx, bytes, json, texts).await?;
    if let Some(classifier) = ctx.rt.classifier.clone() {
        // `json` holds the redactions the prompt phase made.
        let text = joined_in_reading_order(extract(json)?);
        classify_prompt(ctx, &classifier, &text).await?;
    }
    proxy::send_upstream(ctx, UpstreamBody::Full(forward_bytes), true).await
}

/// A moderated exchange with a text-generation API: prompt phase, forward, then the answer
/// judged whole or streamed through the guard, labeled and recorded; the places of text, the
/// refusal and the stream codec come from `api`. Clean requests and answers take the fast path
/// (`quick`); anything else is read as a tree.
async fn text_exchange<A: super::generation::TextApi>(
    mut ctx: RequestCtx,
    bytes: Bytes,
    api: A,
    extras: openai::Extras,
) -> Response {
    let judged = match quick_prompt(&mut ctx, &api, &bytes) {
        Some(json_mode) => keep_records(&ctx, Vec::new())
            .await
            .map(|()| (bytes, json_mode)),
        None => tree_prompt(&mut ctx, &api, bytes).await,
    };
    let (forward, json_mode) = match judged {
        Ok(x) => x,
        Err(e) => return ctx.error(e),
    };
    if let Some(review) = ctx.rec.records.review.as_ref().filter(|r| r.samples()) {
        if let Ok(text) = prompt_for_classifier(&api, &forward) {
            review.offer_sample(&ctx.rec.review_sample(&text));
        }
    }
    if let Some(classifier) = ctx.rt.classifier.clone() {
        let judged = match prompt_for_classifier(&api, &forward) {
            Ok(text) => classify_prompt(&ctx, &classifier, &text).await,
            Err(e) => Err(e),
        };
        if let Err(e) = judged {
            return ctx.error(e);
        }
    }
    let (resp, sent) = match proxy::send_upstream(&mut ctx, UpstreamBody::Full(forward), true).await
    {
        Ok(r) => r,
        Err(e) => return ctx.error(e),
    };
    if !resp.status().is_success() {
        return proxy::stream_back(ctx, resp, sent);
    }
    if is_event_stream(resp.headers()) {
        let mut extra_headers = Vec::new();
        let mut delivery = None;
        let mut labels = None;
        if let Some(labeler) = ctx.rt.labeler.clone().filter(|_| api.stream_labels()) {
            let l = TextLabels::for_request(labeler, json_mode, &ctx);
            extra_headers.extend(l.header(None));
            delivery = Some(l.delivery.clone());
            labels = Some(l);
        }
        let codec = api.codec(extras, labels);
        return guarded_response(ctx, resp, sent, codec, extra_headers, delivery);
    }
    let status = resp.status();
    let headers = ctx
        .rt
        .headers
        .client_response(resp.headers(), &ctx.request_id);
    let body = match read_upstream(&ctx, resp, sent).await {
        Ok(b) => b,
        Err(e) => return ctx.error(e),
    };
    let mut o = Outcome {
        headers,
        delivery: ctx.rec.delivery(),
        records: Vec::new(),
    };
    // The classifier's verdict on each unit of a whole answer (`classifier.answers`).
    let classified = match ctx.rt.classifier.clone().filter(|c| c.judges_answers()) {
        Some(c) => match classify_answer(&ctx, &c, &api, &extras, &body, &mut o.records).await {
            Ok(blocked) => blocked,
            Err(e) => return ctx.error(e),
        },
        None => Vec::new(),
    };
    let quick = if classified.is_empty() {
        quick_answer(&ctx, &api, &extras, &body, json_mode, &mut o)
    } else {
        None
    };
    let out = match quick {
        Some(out) => out,
        None => match tree_answer(&ctx, &api, &extras, body, json_mode, classified, &mut o) {
            Ok(out) => out,
            Err(e) => return ctx.error(e),
        },
    };
    let Outcome {
        headers,
        mut delivery,
        mut records,
    } = o;
    delivery.upstream_status = Some(status.as_u16());
    delivery.upstream_ms = Some(sent.elapsed().as_millis() as u64);
    // A silent pass of unlabeled content is not a decision: it leaves no record.
    if delivery.content_id.is_some() || !records.is_empty() {
        records.push(delivery);
    }
    for r in records {
        ctx.rec.write(r).await;
    }
    ctx.complete(status, headers, out)
}

/// The prompt as the classifier and the review sample read it: the texts the policy judged, as
/// forwarded (redactions applied), in reading order, one line apart.
fn prompt_for_classifier<A: super::generation::TextApi>(
    api: &A,
    forward: &[u8],
) -> Result<String, ApiError> {
    if let Some(q) = api.quick_prompt(forward) {
        return Ok(q.in_reading_order().collect::<Vec<_>>().join("\n"));
    }
    let json = super::json::parse_strict(forward)?;
    Ok(joined_in_reading_order(api.prompt_texts(&json)?))
}

/// `texts` in reading order, one line apart.
fn joined_in_reading_order(mut texts: Vec<Found>) -> String {
    texts.sort_by(|a, b| paths::reading_key(&a.path).cmp(paths::reading_key(&b.path)));
    texts
        .iter()
        .map(|t| t.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The classifier's verdict on a prompt the policy let through: its findings recorded, `Err`
/// the refusal (a `block` category) or, failing closed, the 503.
async fn classify_prompt(
    ctx: &RequestCtx,
    classifier: &crate::classify::Classifier,
    text: &str,
) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Ok(());
    }
    let rid = ctx.request_id.to_str().unwrap_or_default();
    let scores = match classifier.scores(text, Direction::Prompt, rid).await {
        Ok(s) => s,
        Err(e) if classifier.fails_open() => {
            tracing::warn!(request_id = rid, error = %e, "Classifier failed: serving on the keyword verdict (classifier.on_error: open)");
            return Ok(());
        }
        Err(e) => {
            tracing::warn!(request_id = rid, error = %e, "Classifier failed: refusing (classifier.on_error: closed)");
            return Err(ApiError::new(
                ErrorKind::Unavailable,
                "the prompt could not be checked right now; try again shortly",
            ));
        }
    };
    let policy = &ctx.rt.policy;
    let findings = classifier.findings(
        policy,
        Direction::Prompt,
        &scores,
        text.len(),
        ctx.rec.minor,
    );
    let mut records = Vec::new();
    for f in &findings {
        record_finding(ctx, Direction::Prompt, f, text, "classifier", &mut records);
    }
    keep_records(ctx, records).await?;
    match findings.first() {
        Some(f) if f.action == Action::Block => Err(ApiError::new(
            ErrorKind::ContentFilter,
            refusal_text(policy, &f.category, &ctx.client_headers),
        )
        .with_param(match ctx.dialect {
            DialectName::OpenaiCompletions | DialectName::OpenaiImages => "prompt",
            DialectName::OpenaiResponses | DialectName::PromptOnly => "input",
            _ => "messages",
        })
        .with_category(f.category.to_string())),
        _ => Ok(()),
    }
}

/// The classifier's verdict on a whole answer: each unit's texts (a choice), joined in document
/// order, are classified; the findings are recorded in `records` and the units a `block`
/// category hit are returned with it. Failing closed, `Err` is the 503 sent instead.
async fn classify_answer<A: super::generation::TextApi>(
    ctx: &RequestCtx,
    classifier: &crate::classify::Classifier,
    api: &A,
    extras: &openai::Extras,
    body: &[u8],
    records: &mut Vec<Record>,
) -> Result<Vec<(u32, Arc<str>)>, ApiError> {
    let doc = parse_answer(body)?;
    let mut units: Vec<(u32, String)> = Vec::new();
    for (unit, t) in api.response_texts(&doc, extras) {
        match units.iter_mut().find(|(u, _)| *u == unit) {
            Some((_, text)) => {
                text.push('\n');
                text.push_str(&t.text);
            }
            None => units.push((unit, t.text)),
        }
    }
    let rid = ctx.request_id.to_str().unwrap_or_default();
    let mut blocked = Vec::new();
    for (unit, text) in units.iter().filter(|(_, t)| !t.trim().is_empty()) {
        let scores = match classifier.scores(text, Direction::Completion, rid).await {
            Ok(s) => s,
            Err(e) if classifier.fails_open() => {
                tracing::warn!(request_id = rid, error = %e, "Classifier failed on an answer: delivering on the keyword verdict (classifier.on_error: open)");
                continue;
            }
            Err(e) => {
                tracing::warn!(request_id = rid, error = %e, "Classifier failed on an answer: refusing (classifier.on_error: closed)");
                return Err(ApiError::new(
                    ErrorKind::Unavailable,
                    "the answer could not be checked right now; try again shortly",
                ));
            }
        };
        let findings = classifier.findings(
            &ctx.rt.policy,
            Direction::Completion,
            &scores,
            text.len(),
            ctx.rec.minor,
        );
        for f in &findings {
            record_finding(ctx, Direction::Completion, f, text, "classifier", records);
        }
        if let Some(f) = findings.first().filter(|f| f.action == Action::Block) {
            blocked.push((*unit, f.category.clone()));
        }
    }
    Ok(blocked)
}

/// What answering gives besides the body: the client's headers, the delivery record (labels
/// filled in) and the records of the decisions made.
struct Outcome {
    headers: HeaderMap,
    delivery: Record,
    records: Vec<Record>,
}

/// The fast path of the prompt phase: `Some(json_mode)` when the API's fast read took the
/// request and the policy found nothing in it; `None` sends it down the tree path.
fn quick_prompt<A: super::generation::TextApi>(
    ctx: &mut RequestCtx,
    api: &A,
    bytes: &[u8],
) -> Option<bool> {
    let q = api.quick_prompt(bytes)?;
    if !joined_clean(ctx, Direction::Prompt, q.in_reading_order()) {
        return None;
    }
    ctx.rec.model = q.model.map(|m| m.chars().take(128).collect());
    Some(q.json_mode)
}

/// Whether the policy finds nothing in any of `texts` (the scan time is observed then; a
/// finding sends the body down the tree path, which scans and observes again).
fn all_clean<'t>(
    policy: &Policy,
    direction: Direction,
    mut texts: impl Iterator<Item = &'t str>,
) -> bool {
    let started = Instant::now();
    if !texts.all(|t| policy.scan(t, direction).is_empty()) {
        return false;
    }
    metrics()
        .scan_time(direction)
        .observe(started.elapsed().as_secs_f64());
    true
}

/// Whether the policy finds nothing in `texts` joined with nothing between ([`Seamed`]).
fn joined_clean<'t>(
    ctx: &RequestCtx,
    direction: Direction,
    texts: impl ExactSizeIterator<Item = &'t str>,
) -> bool {
    let started = Instant::now();
    if !Seamed::new(texts)
        .scan(&ctx.rt.policy, direction, &ctx.rec)
        .is_empty()
    {
        return false;
    }
    metrics()
        .scan_time(direction)
        .observe(started.elapsed().as_secs_f64());
    true
}

/// The prompt phase on the tree: the bytes to forward (the client's, or the redacted
/// rewrite) and whether the client asked for JSON output.
async fn tree_prompt<A: super::generation::TextApi>(
    ctx: &mut RequestCtx,
    api: &A,
    bytes: Bytes,
) -> Result<(Bytes, bool), ApiError> {
    let mut json = super::json::parse_strict(&bytes)?;
    let texts = api.prompt_texts(&json)?;
    let forward = prompt_phase(ctx, bytes, &mut json, texts).await?;
    Ok((forward, api.json_mode(&json)))
}

/// The fast path of a whole answer: the body to deliver, labeled, when the API's fast read
/// took it and the policy found nothing in it; `None` sends it down the tree path.
fn quick_answer<A: super::generation::TextApi>(
    ctx: &RequestCtx,
    api: &A,
    extras: &openai::Extras,
    body: &Bytes,
    json_mode: bool,
    o: &mut Outcome,
) -> Option<Bytes> {
    let q = api.quick_answer(body, extras)?;
    if !all_clean(&ctx.rt.policy, Direction::Completion, q.all_texts()) {
        return None;
    }
    // The tree path judges some texts joined ([`seam_shape`]); the fast read lists them side by
    // side (the visible texts, then the others). When the texts, joined, hold something, the
    // tree path decides.
    if A::JOINS_ANSWER_TEXTS && q.text_count() > 1 {
        let all: Vec<&str> = q.all_texts().collect();
        if !joined_clean(ctx, Direction::Completion, all.into_iter()) {
            return None;
        }
    }
    let Some(labeler) = ctx.rt.labeler.clone() else {
        return Some(body.clone());
    };
    let labels = TextLabels::for_request(labeler, json_mode, ctx);
    let explicit = labels.explicit.as_ref().map(|(l, p)| (l.as_str(), *p));
    let rendering = q.render(body, explicit);
    let aigc = labels.seal(&rendering.delivered, rendering.explicit_used);
    if let Some((name, value)) = aigc.as_ref().and_then(|a| labels.header(Some(a))) {
        o.headers.insert(name, value);
    }
    let out = rendering.finish(body, aigc.map(|a| a.to_json()).as_deref());
    fill_delivery(&mut o.delivery, &labels.delivery);
    Some(Bytes::from(out))
}

/// A whole answer on the tree: judged (redactions applied, blocked units refused), labeled,
/// and written back into the original bytes where it changed.
fn tree_answer<A: super::generation::TextApi>(
    ctx: &RequestCtx,
    api: &A,
    extras: &openai::Extras,
    body: Bytes,
    json_mode: bool,
    classified: Vec<(u32, Arc<str>)>,
    o: &mut Outcome,
) -> Result<Bytes, ApiError> {
    let mut doc = parse_answer(&body)?;
    let texts = api.response_texts(&doc, extras);
    let joins = A::JOINS_ANSWER_TEXTS;
    let (mut changed, mut blocked) = judge_whole(ctx, &mut doc, texts, joins, &mut o.records);
    // Units the classifier blocked that the policy did not.
    for (unit, category) in classified {
        if !blocked.iter().any(|(u, _)| *u == unit) {
            blocked.push((unit, category));
        }
    }
    for (unit, category) in &blocked {
        let text = refusal_text(&ctx.rt.policy, category, &ctx.client_headers);
        api.refuse(&mut doc, *unit, &text);
        changed = true;
    }
    let blocked: Vec<u32> = blocked.into_iter().map(|(u, _)| u).collect();
    if let Some(labeler) = ctx.rt.labeler.clone() {
        let labels = TextLabels::for_request(labeler, json_mode, ctx);
        let explicit_used = match &labels.explicit {
            Some((label, pos)) => api.label(&mut doc, label, *pos, &blocked),
            None => false,
        };
        changed |= explicit_used;
        let delivered = api.delivered_text(&doc);
        if let Some(aigc) = labels.seal(&delivered, explicit_used) {
            if let Some(obj) = doc.as_object_mut() {
                obj.insert(crate::label::CHAT_AIGC_FIELD.into(), aigc_value(&aigc));
                changed = true;
            }
            if let Some((name, value)) = labels.header(Some(&aigc)) {
                o.headers.insert(name, value);
            }
        }
        fill_delivery(&mut o.delivery, &labels.delivery);
    }
    Ok(if changed {
        Bytes::from(super::json::rewrite(&body, &doc))
    } else {
        body
    })
}

/// Judge the texts of a whole answer: redactions are applied in place; a blocking finding (or a
/// redaction that cannot be applied in place) blocks the unit (choice) it is in, and the units
/// blocked are returned with their category. Returns whether the document changed.
///
/// With `joins` (the API's `JOINS_ANSWER_TEXTS`), the texts of one unit that a reader sees as
/// one ([`seam_shape`]: the text blocks of an Anthropic answer, the output text parts of a
/// Responses answer) are judged joined, in document order, as the guard joins them in a
/// stream: a term the model splits across two blocks is found.
fn judge_whole(
    ctx: &RequestCtx,
    doc: &mut Value,
    texts: Vec<(u32, Found)>,
    joins: bool,
    records: &mut Vec<Record>,
) -> (bool, Vec<(u32, Arc<str>)>) {
    let policy = &ctx.rt.policy;
    let started = Instant::now();
    let mut changed = false;
    let mut blocked: Vec<(u32, Arc<str>)> = Vec::new();
    // (unit, shape when joinable, texts), in document order of each group's first text.
    let mut groups: Vec<(u32, Option<String>, Vec<Found>)> = Vec::new();
    for (unit, t) in texts {
        let shape = if joins { seam_shape(&t.path) } else { None };
        match groups
            .iter_mut()
            .find(|g| shape.is_some() && g.0 == unit && g.1 == shape)
        {
            Some(g) => g.2.push(t),
            None => groups.push((unit, shape, vec![t])),
        }
    }
    for (unit, _, texts) in groups {
        if blocked.iter().any(|(u, _)| *u == unit) {
            continue;
        }
        let (block, redact) = judge_seamed(ctx, Direction::Completion, &texts, records);
        if let Some((f, _)) = block {
            blocked.push((unit, f.category.clone()));
            continue;
        }
        for (t, shares) in texts.iter().zip(&redact) {
            let Some(f) = shares.first() else { continue };
            if paths::set_string(doc, &t.path, policy.redact(&t.text, shares)) {
                changed = true;
            } else {
                // A tool input object cannot be rewritten in place: its unit is refused.
                blocked.push((unit, f.category.clone()));
                break;
            }
        }
    }
    metrics()
        .scan_time(Direction::Completion)
        .observe(started.elapsed().as_secs_f64());
    (changed, blocked)
}

/// The shape of an answer text that is read joined with the others of its shape: its path with
/// the array indices left out, when it names a `text` or `thinking` string (a tool input or its
/// arguments are JSON texts of their own, never joined).
fn seam_shape(path: &[Seg]) -> Option<String> {
    match path.last() {
        Some(Seg::Key(k)) if k == "text" || k == "thinking" => {}
        _ => return None,
    }
    let mut shape = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                shape.push_str(k);
                shape.push('.');
            }
            Seg::Index(_) => shape.push_str("*."),
        }
    }
    Some(shape)
}

/// OpenAI Images: the prompt is judged; generated images are labeled (see `images`).
async fn images_exchange(mut ctx: RequestCtx, bytes: Bytes) -> Response {
    let mut json = match super::json::parse_strict(&bytes) {
        Ok(v) => v,
        Err(e) => return ctx.error(e),
    };
    let texts = match super::images::prompt_texts(&json) {
        Ok(t) => t,
        Err(e) => return ctx.error(e),
    };
    if openai::wants_stream(&json) {
        // Streamed partial images cannot be labeled as they come: refuse rather than pass them.
        return ctx.error(
            ApiError::new(
                ErrorKind::BadRequest,
                "streamed image generation is not supported on this route; send `stream: false`",
            )
            .with_param("stream"),
        );
    }
    let (resp, sent) = match judge_and_send(
        &mut ctx,
        bytes,
        &mut json,
        texts,
        super::images::prompt_texts,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return ctx.error(e),
    };
    if !resp.status().is_success() {
        return proxy::stream_back(ctx, resp, sent);
    }
    let status = resp.status();
    let headers = ctx
        .rt
        .headers
        .client_response(resp.headers(), &ctx.request_id);
    let body = match read_upstream(&ctx, resp, sent).await {
        Ok(b) => b,
        Err(e) => return ctx.error(e),
    };
    let mut doc = match parse_answer(&body) {
        Ok(d) => d,
        Err(e) => return ctx.error(e),
    };
    let labeler = ctx.rt.labeler.clone();
    let deliveries = match super::images::label_images(&mut doc, labeler.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            let mut r = ctx.rec.delivery();
            r.upstream_status = Some(status.as_u16());
            r.label = Some("refused:unlabelable_image".into());
            ctx.rec.write(r).await;
            return ctx.error(e);
        }
    };
    let changed = deliveries.iter().any(|d| d.content_sha256.is_some());
    for d in deliveries {
        let mut r = ctx.rec.delivery();
        r.content_id = d.content_id;
        r.content_sha256 = d.content_sha256;
        r.label = Some(d.label);
        r.upstream_status = Some(status.as_u16());
        r.upstream_ms = Some(sent.elapsed().as_millis() as u64);
        ctx.rec.write(r).await;
    }
    let out = if changed {
        Bytes::from(super::json::rewrite(&body, &doc))
    } else {
        body
    };
    ctx.complete(status, headers, out)
}

/// Prompt-only routes: the request's text is judged, the answer passes untouched.
async fn prompt_only_exchange(mut ctx: RequestCtx, bytes: Bytes) -> Response {
    let mut json = match super::json::parse_strict(&bytes) {
        Ok(v) => v,
        Err(e) => return ctx.error(e),
    };
    let texts = match super::images::prompt_only_texts(&json) {
        Ok(t) => t,
        Err(e) => return ctx.error(e),
    };
    match judge_and_send(
        &mut ctx,
        bytes,
        &mut json,
        texts,
        super::images::prompt_only_texts,
    )
    .await
    {
        Ok((resp, sent)) => proxy::stream_back(ctx, resp, sent),
        Err(e) => ctx.error(e),
    }
}

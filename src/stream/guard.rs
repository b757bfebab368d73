//! The stream guard: one scanner per text channel, events held in order and released as soon as
//! none of their text can still become part of a match, and a clean stop on a blocking finding.
//!
//! A dialect supplies an [`EventCodec`] that says where the text of an event is, how to re-render
//! an event whose text was redacted, and how its API ends a stream. The guard itself knows
//! nothing of any API. Events that the policy leaves alone are forwarded as their original bytes.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::sse::RawEvent;
use crate::metrics::metrics;
use crate::policy::{Action, Direction, Finding, Policy, ScanStep, StreamScanner};

/// Identifies one text stream inside a response: (choice or content-block index, field).
/// The field numbers are the codec's own.
pub type ChannelKey = (u32, u32);

/// The text of one channel carried by one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextPiece {
    pub channel: ChannelKey,
    pub text: String,
}

/// What a codec made of one event.
pub struct Parsed<E> {
    /// The decoded event, kept for re-rendering and release bookkeeping; `None` for events
    /// the codec has no use for (comments, keep-alives).
    pub event: Option<E>,
    /// Text pieces in the order they appear in the event.
    pub pieces: Vec<TextPiece>,
    /// The API's own end of stream (e.g. `data: [DONE]`): every scanner is finished first.
    pub terminal: bool,
}

impl<E> Parsed<E> {
    /// An event that carries no text and is forwarded as is.
    pub fn passthrough() -> Self {
        Self {
            event: None,
            pieces: Vec::new(),
            terminal: false,
        }
    }

    /// The API's own end of stream.
    pub fn terminal() -> Self {
        Self {
            event: None,
            pieces: Vec::new(),
            terminal: true,
        }
    }
}

/// The upstream sent an event that cannot be read on a moderated route.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

/// How one API's streams are read and ended.
pub trait EventCodec: Send + 'static {
    type Event: Send + 'static;

    /// Read one event.
    fn parse(&mut self, ev: &RawEvent) -> Result<Parsed<Self::Event>, CodecError>;

    /// An event is about to reach the client with `texts` (its pieces as delivered). The codec
    /// may add events of its own just before or after it (explicit labels).
    fn on_release(
        &mut self,
        _event: &Self::Event,
        _texts: &[String],
        _before: &mut Vec<Bytes>,
        _after: &mut Vec<Bytes>,
    ) {
    }

    /// Bytes to send instead of an event whose text the guard left as it was, when the codec must
    /// still amend it (labels inside repeated text, the implicit record in a final event).
    /// Called after `on_release` for the same event. Default: none.
    fn amend(&mut self, _event: &Self::Event, _texts: &[String]) -> Option<Bytes> {
        None
    }

    /// Whether the event ends a part of the answer (a choice's finish). With an end check
    /// (`Guard::hold_end_for_verdict`) it waits for the verdict, as terminal events do.
    /// Default: none does.
    fn ends_answer(&self, _event: &Self::Event) -> bool {
        false
    }

    /// The stream ends normally: events to send before the API's own end (implicit labels).
    /// Called once, before the terminal event or at the upstream's end.
    fn on_end(&mut self, _out: &mut Vec<Bytes>) {}

    /// Render an event whose text pieces were rewritten; `texts[i]` replaces piece `i`.
    /// Fields that echo the original text (logprobs) must be dropped from rewritten parts.
    fn render(&self, event: &Self::Event, texts: &[String]) -> Bytes;

    /// The events that end the stream after a blocking finding in `category`.
    fn stop(&mut self, category: &str, notice: Option<&str>) -> Vec<Bytes>;

    /// The events that end the stream after an upstream fault.
    fn fault(&mut self, message: &str) -> Vec<Bytes>;
}

/// A finding in a stream, with where it happened.
#[derive(Debug, Clone)]
pub struct StreamFinding {
    pub finding: Finding,
    pub channel: ChannelKey,
    /// A bounded window of the channel text around the match (for audit excerpts).
    pub context: String,
    /// The match's position inside `context`.
    pub context_span: Range<usize>,
}

/// Why the guard ended a stream early.
#[derive(Debug, Clone)]
pub enum StopReason {
    Blocked { category: Arc<str> },
    BadUpstreamEvent(String),
}

/// Characters of context kept either side of a match for the audit excerpt.
const CONTEXT_CHARS: usize = 40;

struct Channel {
    key: ChannelKey,
    scanner: StreamScanner,
    /// Bytes of text pushed so far.
    total: usize,
    /// Bytes that are final (no later finding can touch them).
    released: usize,
    /// Channel text from `tail_start` to `total`: what queued events still hold.
    tail: String,
    tail_start: usize,
    /// Redactions not yet applied to released events: (span, mask).
    redactions: Vec<(Range<usize>, String)>,
}

struct Held<E> {
    raw: Bytes,
    event: Option<E>,
    terminal: bool,
    /// (channel index, byte range in that channel) per piece, in piece order.
    pieces: Vec<(usize, Range<usize>)>,
    texts: Vec<String>,
}

/// Moderates one streamed response.
pub struct Guard<C: EventCodec> {
    codec: C,
    policy: Arc<Policy>,
    channels: Vec<Channel>,
    queue: VecDeque<Held<C::Event>>,
    findings: Vec<StreamFinding>,
    stopped: Option<StopReason>,
    notice: Option<String>,
    finished: bool,
    /// The codec's end-of-stream events were sent.
    ended: bool,
    /// `shenhe_scan_duration_seconds{direction="completion"}`, looked up once per stream.
    scan_time: prometheus::Histogram,
    /// Room for an event's scan steps, kept from one event to the next.
    steps: Vec<(usize, ScanStep)>,
    /// With a check of the whole answer at its end (`hold_end_for_verdict`): what it needs.
    end_check: Option<Box<EndCheck>>,
    /// A minor's request: findings act as their categories' `minors` actions say.
    minor: bool,
}

/// The check of a whole streamed answer before its end reaches the client (the classifier's):
/// each channel's released text is kept (its last `keep_chars` characters), and the stream's
/// terminal events wait for the verdict.
struct EndCheck {
    keep_chars: usize,
    /// Released text per channel index.
    kept: Vec<String>,
    /// An end has come (an event that ends a choice, a terminal event, or the upstream's end)
    /// and waits for `conclude`.
    awaiting: bool,
    /// The upstream body has ended (`on_end` was called).
    upstream_ended: bool,
    /// Queued events a passing verdict let through (released without holding again).
    passed: usize,
    /// The stream's terminal event went out after a passing verdict: nothing more is checked.
    settled: bool,
    /// Bytes of text (all channels) a passing verdict has seen: an end with nothing new after
    /// it (the terminal event after a choice's finish) is not checked again.
    checked: usize,
    /// Characters released so far, all channels (when to check the answer while it flows).
    released_chars: usize,
}

impl EndCheck {
    /// Keep the text of a released event, as delivered (redactions applied).
    fn keep(&mut self, pieces: &[(usize, Range<usize>)], texts: &[String]) {
        for ((ci, _), t) in pieces.iter().zip(texts) {
            if self.kept.len() <= *ci {
                self.kept.resize(*ci + 1, String::new());
            }
            let kept = &mut self.kept[*ci];
            kept.push_str(t);
            self.released_chars += t.chars().count();
            // Trim now and then, not per event: keep the last `keep_chars` characters.
            if kept.len() > self.keep_chars.saturating_mul(8) {
                let cut = kept
                    .char_indices()
                    .rev()
                    .nth(self.keep_chars)
                    .map_or(0, |(i, _)| i);
                kept.drain(..cut);
            }
        }
    }
}

/// The verdict of the end check (`Guard::conclude`).
pub enum EndVerdict {
    /// Deliver the end; the findings (flags) are recorded.
    Pass(Vec<StreamFinding>),
    /// End with the API's stop for `category` instead (the text already released stays).
    Block(Arc<str>, Vec<StreamFinding>),
    /// The check could not be made and fails closed: end with the API's error event.
    Fail(String),
}

impl<C: EventCodec> Guard<C> {
    pub fn new(codec: C, policy: Arc<Policy>, notice: Option<String>) -> Self {
        Self {
            codec,
            policy,
            // Most streams have one text channel (the answer's content): room for one, not the
            // four a first push would make for ≈ 500-byte channels.
            channels: Vec::with_capacity(1),
            queue: VecDeque::new(),
            findings: Vec::new(),
            stopped: None,
            notice,
            finished: false,
            ended: false,
            scan_time: metrics().scan_completion.clone(),
            steps: Vec::new(),
            end_check: None,
            minor: false,
        }
    }

    /// Judge the stream as a minor's request (`Policy::for_minor`).
    pub fn for_minor(&mut self) {
        self.minor = true;
    }

    /// Check the whole answer before its end reaches the client: keep each channel's released
    /// text (its last `keep_chars` characters) and hold the terminal events until `conclude`.
    pub fn hold_end_for_verdict(&mut self, keep_chars: usize) {
        self.end_check = Some(Box::new(EndCheck {
            keep_chars: keep_chars.max(1),
            kept: Vec::new(),
            awaiting: false,
            upstream_ended: false,
            passed: 0,
            settled: false,
            checked: 0,
            released_chars: 0,
        }));
    }

    /// With `hold_end_for_verdict`: characters released so far, all channels.
    pub fn released_chars(&self) -> usize {
        self.end_check.as_ref().map_or(0, |c| c.released_chars)
    }

    /// Bytes of text pushed so far, all channels.
    fn text_total(&self) -> usize {
        self.channels.iter().map(|c| c.total).sum()
    }

    /// Whether the end waits for a verdict (`conclude`).
    pub fn awaiting_verdict(&self) -> bool {
        !self.finished && self.end_check.as_ref().is_some_and(|c| c.awaiting)
    }

    /// Each channel's text so far, for the verdict: what was released and what the held events
    /// carry (its last `keep_chars` characters).
    pub fn released_texts(&self) -> Vec<(ChannelKey, String)> {
        let Some(c) = &self.end_check else {
            return Vec::new();
        };
        let mut texts: Vec<String> = (0..self.channels.len())
            .map(|ci| c.kept.get(ci).cloned().unwrap_or_default())
            .collect();
        for held in &self.queue {
            for ((ci, _), t) in held.pieces.iter().zip(&held.texts) {
                texts[*ci].push_str(t);
            }
        }
        self.channels
            .iter()
            .zip(texts)
            .map(|(ch, t)| {
                let start = t
                    .char_indices()
                    .rev()
                    .nth(c.keep_chars.saturating_sub(1))
                    .map_or(0, |(i, _)| i);
                (ch.key, t[start..].to_string())
            })
            .collect()
    }

    /// End the stream by the verdict on its whole answer.
    pub fn conclude(&mut self, verdict: EndVerdict, out: &mut Vec<Bytes>) {
        if self.finished {
            return;
        }
        let queued = self.queue.len();
        let total = self.text_total();
        let Some(check) = self.end_check.as_mut() else {
            return;
        };
        match verdict {
            EndVerdict::Pass(findings) => {
                // What waits now goes out; a later end (another choice's, the stream's) is
                // checked again.
                check.awaiting = false;
                check.passed = queued;
                check.checked = total;
                let upstream_ended = check.upstream_ended;
                self.findings.extend(findings);
                self.release(out, None);
                if upstream_ended {
                    if !self.ended {
                        self.ended = true;
                        self.codec.on_end(out);
                    }
                    self.finished = true;
                }
            }
            EndVerdict::Block(category, findings) => self.block(category, findings, out),
            EndVerdict::Fail(message) => {
                self.queue.clear();
                out.extend(self.codec.fault(&message));
                self.finished = true;
            }
        }
    }

    /// Stop the stream now on a verdict about its text made beside it (the classifier's, while
    /// the answer flows): what is held is dropped, the API's stop goes out, nothing more is
    /// accepted. The text already released stays.
    pub fn block(
        &mut self,
        category: Arc<str>,
        findings: Vec<StreamFinding>,
        out: &mut Vec<Bytes>,
    ) {
        if self.finished {
            return;
        }
        self.findings.extend(findings);
        self.queue.clear();
        metrics().stream_stops.with_label_values(&[&category]).inc();
        out.extend(self.codec.stop(&category, self.notice.as_deref()));
        self.stopped = Some(StopReason::Blocked { category });
        self.finished = true;
    }

    /// Findings so far (each is reported once; `take_findings` drains them).
    pub fn take_findings(&mut self) -> Vec<StreamFinding> {
        std::mem::take(&mut self.findings)
    }

    pub fn stopped(&self) -> Option<&StopReason> {
        self.stopped.as_ref()
    }

    /// True once the stream is over (stopped, ended or failed): nothing more is accepted.
    pub fn is_done(&self) -> bool {
        self.finished
    }

    /// Events held back right now (the hold-back lag in events, i.e. tokens on token streams).
    pub fn held_events(&self) -> usize {
        self.queue.len()
    }

    /// Bytes held back right now across channels.
    pub fn held_bytes(&self) -> usize {
        self.channels.iter().map(|c| c.total - c.released).sum()
    }

    pub fn codec(&self) -> &C {
        &self.codec
    }

    pub fn codec_mut(&mut self) -> &mut C {
        &mut self.codec
    }

    /// Take one upstream event; returns the bytes to send to the client now.
    pub fn on_event(&mut self, ev: RawEvent, out: &mut Vec<Bytes>) {
        if self.finished {
            return;
        }
        let started = Instant::now();
        let parsed = match self.codec.parse(&ev) {
            Ok(p) => p,
            Err(e) => {
                // Fail closed: text that cannot be read is never forwarded.
                self.finish_scanners(out);
                if self.finished {
                    return;
                }
                self.release(out, None);
                self.queue.clear();
                out.extend(
                    self.codec
                        .fault("the model server sent an event that cannot be read"),
                );
                self.stopped = Some(StopReason::BadUpstreamEvent(e.0));
                self.finished = true;
                return;
            }
        };
        let mut pieces = Vec::with_capacity(parsed.pieces.len());
        let mut texts = Vec::with_capacity(parsed.pieces.len());
        let mut steps = std::mem::take(&mut self.steps);
        for p in parsed.pieces {
            let ci = self.channel_index(p.channel);
            let ch = &mut self.channels[ci];
            let start = ch.total;
            let step = ch.scanner.push(&p.text);
            ch.total += p.text.len();
            ch.tail.push_str(&p.text);
            pieces.push((ci, start..ch.total));
            texts.push(p.text);
            steps.push((ci, step));
        }
        self.queue.push_back(Held {
            raw: ev.raw,
            event: parsed.event,
            terminal: parsed.terminal,
            pieces,
            texts,
        });
        for (ci, step) in steps.drain(..) {
            if self.apply_step(ci, step, out) {
                self.observe(started);
                return;
            }
        }
        self.steps = steps;
        if parsed.terminal {
            self.finish_scanners(out);
            if self.finished {
                self.observe(started);
                return;
            }
        }
        self.release(out, None);
        self.observe(started);
    }

    /// The upstream ended: final scan, release everything held.
    pub fn on_end(&mut self, out: &mut Vec<Bytes>) {
        if self.finished {
            return;
        }
        self.finish_scanners(out);
        let total = self.text_total();
        if let Some(check) = self
            .end_check
            .as_mut()
            .filter(|c| !c.settled && c.checked != total && !self.finished)
        {
            // The end waits for the verdict (`conclude`).
            check.upstream_ended = true;
            check.awaiting = true;
            self.release(out, None);
            return;
        }
        if !self.finished {
            self.release(out, None);
            if !self.ended {
                self.ended = true;
                self.codec.on_end(out);
            }
            self.finished = true;
        }
    }

    /// The upstream failed mid-stream: what is held is scanned as final, then the API's error end.
    pub fn on_fault(&mut self, message: &str, out: &mut Vec<Bytes>) {
        if self.finished {
            return;
        }
        self.finish_scanners(out);
        if !self.finished {
            self.release(out, None);
            out.extend(self.codec.fault(message));
            self.finished = true;
        }
    }

    fn observe(&self, started: Instant) {
        self.scan_time.observe(started.elapsed().as_secs_f64());
        metrics()
            .stream_holdback_bytes
            .observe(self.held_bytes() as f64);
    }

    fn channel_index(&mut self, key: ChannelKey) -> usize {
        if let Some(i) = self.channels.iter().position(|c| c.key == key) {
            return i;
        }
        self.channels.push(Channel {
            key,
            scanner: self.policy.scanner(Direction::Completion),
            total: 0,
            released: 0,
            tail: String::new(),
            tail_start: 0,
            redactions: Vec::new(),
        });
        self.channels.len() - 1
    }

    fn finish_scanners(&mut self, out: &mut Vec<Bytes>) {
        for ci in 0..self.channels.len() {
            let step = self.channels[ci].scanner.finish();
            if self.apply_step(ci, step, out) {
                return;
            }
        }
    }

    /// Record a scanner step; returns true when it stopped the stream.
    fn apply_step(&mut self, ci: usize, mut step: ScanStep, out: &mut Vec<Bytes>) -> bool {
        if self.minor && !step.findings.is_empty() {
            self.policy.for_minor(&mut step.findings);
        }
        for f in step.findings {
            let ch = &self.channels[ci];
            let (context, context_span) = context_of(&ch.tail, ch.tail_start, &f.span);
            let sf = StreamFinding {
                channel: ch.key,
                context,
                context_span,
                finding: f.clone(),
            };
            metrics()
                .decisions
                .with_label_values(&["completion", &f.category, f.action.as_str()])
                .inc();
            self.findings.push(sf);
            match f.action {
                Action::Block => {
                    // Findings come in span order, so everything before this match is final.
                    let ch = &mut self.channels[ci];
                    ch.released = ch.released.max(f.span.start);
                    self.stop(ci, f.span.start, f.category.clone(), out);
                    return true;
                }
                Action::Redact => {
                    let ch = &self.channels[ci];
                    let lo = f.span.start.saturating_sub(ch.tail_start);
                    let hi = f.span.end.saturating_sub(ch.tail_start).min(ch.tail.len());
                    let matched = ch.tail.get(lo..hi).unwrap_or_default();
                    let mask = self.policy.mask(&f, matched);
                    self.channels[ci].redactions.push((f.span.clone(), mask));
                }
                Action::Flag => {}
            }
        }
        let ch = &mut self.channels[ci];
        ch.released = ch.released.max(step.released.min(ch.total));
        false
    }

    fn stop(&mut self, ci: usize, at: usize, category: Arc<str>, out: &mut Vec<Bytes>) {
        self.release(out, Some((ci, at)));
        self.release_prefix(ci, at, out);
        self.queue.clear();
        metrics().stream_stops.with_label_values(&[&category]).inc();
        out.extend(self.codec.stop(&category, self.notice.as_deref()));
        self.stopped = Some(StopReason::Blocked { category });
        self.finished = true;
    }

    /// Send every queued event, in order, whose text is final; with `limit = (channel, at)` also
    /// stop before the first event whose text in that channel reaches `at`.
    fn release(&mut self, out: &mut Vec<Bytes>, limit: Option<(usize, usize)>) {
        while let Some(front) = self.queue.front() {
            let ends = self.end_check.is_some()
                && (front.terminal
                    || front
                        .event
                        .as_ref()
                        .is_some_and(|e| self.codec.ends_answer(e)));
            let total = if ends { self.text_total() } else { 0 };
            if let Some(check) = self
                .end_check
                .as_mut()
                .filter(|c| ends && !c.settled && c.passed == 0 && c.checked != total)
            {
                // An end of the answer waits for the verdict on the whole of it.
                check.awaiting = true;
                break;
            }
            let ready = front.pieces.iter().all(|(ci, r)| {
                r.end <= self.channels[*ci].released
                    && limit.is_none_or(|(lc, at)| *ci != lc || r.end <= at)
            });
            if !ready {
                break;
            }
            let Some(held) = self.queue.pop_front() else {
                break;
            };
            if let Some(check) = self.end_check.as_mut() {
                check.passed = check.passed.saturating_sub(1);
                check.settled |= held.terminal;
            }
            let rewritten = self.rewrite(&held);
            match (rewritten, &held.event) {
                (Some(texts), Some(ev)) => {
                    if let Some(check) = self.end_check.as_mut() {
                        check.keep(&held.pieces, &texts);
                    }
                    let mut after = Vec::new();
                    self.codec.on_release(ev, &texts, out, &mut after);
                    let bytes = self
                        .codec
                        .amend(ev, &texts)
                        .unwrap_or_else(|| self.codec.render(ev, &texts));
                    out.push(bytes);
                    out.extend(after);
                }
                (None, Some(ev)) => {
                    if let Some(check) = self.end_check.as_mut() {
                        check.keep(&held.pieces, &held.texts);
                    }
                    let mut after = Vec::new();
                    self.codec.on_release(ev, &held.texts, out, &mut after);
                    let bytes = self
                        .codec
                        .amend(ev, &held.texts)
                        .unwrap_or_else(|| held.raw.clone());
                    out.push(bytes);
                    out.extend(after);
                }
                (_, None) => {
                    if held.terminal && !self.ended {
                        self.ended = true;
                        self.codec.on_end(out);
                    }
                    out.push(held.raw.clone());
                }
            }
            for (ci, r) in &held.pieces {
                let ch = &mut self.channels[*ci];
                let cut = r.end.saturating_sub(ch.tail_start).min(ch.tail.len());
                if ch.tail.is_char_boundary(cut) {
                    ch.tail.drain(..cut);
                    ch.tail_start += cut;
                }
                ch.redactions.retain(|(span, _)| span.end > r.end);
            }
        }
    }

    /// After a stop: the event in which the match starts is sent with its text cut just before
    /// the match (and echo fields dropped by the codec's `render`), so the client gets every byte
    /// before the match and none of it.
    fn release_prefix(&mut self, ci: usize, at: usize, out: &mut Vec<Bytes>) {
        let Some(front) = self.queue.front() else {
            return;
        };
        if front.event.is_none() {
            return;
        }
        let cut_here = front
            .pieces
            .iter()
            .any(|(c, r)| *c == ci && r.start < at && at < r.end);
        let others_final = front.pieces.iter().all(|(c, r)| {
            if *c == ci {
                r.end <= at || r.start < at
            } else {
                r.end <= self.channels[*c].released
            }
        });
        if !cut_here || !others_final {
            return;
        }
        let Some(held) = self.queue.pop_front() else {
            return;
        };
        let mut cut = Held {
            raw: Bytes::new(),
            event: None,
            terminal: false,
            pieces: Vec::with_capacity(held.pieces.len()),
            texts: Vec::with_capacity(held.texts.len()),
        };
        for ((c, r), t) in held.pieces.iter().zip(&held.texts) {
            if *c == ci && r.end > at {
                let keep = at.saturating_sub(r.start);
                let mut k = keep.min(t.len());
                while !t.is_char_boundary(k) {
                    k -= 1;
                }
                cut.pieces.push((*c, r.start..r.start + k));
                cut.texts.push(t[..k].to_string());
            } else {
                cut.pieces.push((*c, r.clone()));
                cut.texts.push(t.clone());
            }
        }
        let texts = self.rewrite(&cut).unwrap_or(cut.texts);
        if let Some(ev) = &held.event {
            let mut after = Vec::new();
            self.codec.on_release(ev, &texts, out, &mut after);
            let bytes = self
                .codec
                .amend(ev, &texts)
                .unwrap_or_else(|| self.codec.render(ev, &texts));
            out.push(bytes);
            out.extend(after);
        }
    }

    /// The event's texts with pending redactions applied, or `None` when nothing changes.
    fn rewrite(&self, held: &Held<C::Event>) -> Option<Vec<String>> {
        let mut texts: Option<Vec<String>> = None;
        for (pi, (ci, r)) in held.pieces.iter().enumerate() {
            let ch = &self.channels[*ci];
            let hits: Vec<&(Range<usize>, String)> = ch
                .redactions
                .iter()
                .filter(|(span, _)| span.start < r.end && span.end > r.start)
                .collect();
            if hits.is_empty() {
                continue;
            }
            let original = &held.texts[pi];
            let mut s = String::with_capacity(original.len());
            let mut at = r.start;
            for (span, mask) in hits {
                let lo = span.start.max(r.start);
                let hi = span.end.min(r.end);
                if lo > at {
                    s.push_str(original.get(at - r.start..lo - r.start).unwrap_or_default());
                }
                // The mask goes where the match starts; later pieces of the match are dropped.
                if span.start >= r.start {
                    s.push_str(mask);
                }
                at = hi.max(at);
            }
            if at < r.end {
                s.push_str(original.get(at - r.start..).unwrap_or_default());
            }
            texts.get_or_insert_with(|| held.texts.clone())[pi] = s;
        }
        texts
    }
}

/// A bounded window of `tail` (which starts at absolute offset `tail_start`) around `span`.
fn context_of(tail: &str, tail_start: usize, span: &Range<usize>) -> (String, Range<usize>) {
    let lo = span.start.saturating_sub(tail_start).min(tail.len());
    let hi = span.end.saturating_sub(tail_start).min(tail.len());
    if !tail.is_char_boundary(lo) || !tail.is_char_boundary(hi) {
        return (String::new(), 0..0);
    }
    let before: String = {
        let b: Vec<char> = tail[..lo].chars().rev().take(CONTEXT_CHARS).collect();
        b.into_iter().rev().collect()
    };
    let after: String = tail[hi..].chars().take(CONTEXT_CHARS).collect();
    let mut s = String::with_capacity(before.len() + (hi - lo) + after.len());
    s.push_str(&before);
    let start = s.len();
    s.push_str(&tail[lo..hi]);
    let end = s.len();
    s.push_str(&after);
    (s, start..end)
}

#[cfg(test)]
mod tests {
    //! The guard against the one-shot scan, through a minimal codec: one text event per SSE event.
    use super::*;
    use crate::policy::config::PolicyConfig;
    use proptest::prelude::*;

    /// `data: <text>` events carry channel (0, 0) text; `data: [END]` is terminal.
    struct PlainCodec;

    impl EventCodec for PlainCodec {
        type Event = ();
        fn parse(&mut self, ev: &RawEvent) -> Result<Parsed<()>, CodecError> {
            let Some(d) = &ev.data else {
                return Ok(Parsed::passthrough());
            };
            if d == "[END]" {
                return Ok(Parsed {
                    event: None,
                    pieces: Vec::new(),
                    terminal: true,
                });
            }
            Ok(Parsed {
                event: Some(()),
                pieces: vec![TextPiece {
                    channel: (0, 0),
                    text: d.clone(),
                }],
                terminal: false,
            })
        }
        fn render(&self, _: &(), texts: &[String]) -> Bytes {
            Bytes::from(format!("data: {}\n\n", texts[0]))
        }
        fn stop(&mut self, category: &str, _: Option<&str>) -> Vec<Bytes> {
            vec![Bytes::from(format!("data: [STOP {category}]\n\n"))]
        }
        fn fault(&mut self, _: &str) -> Vec<Bytes> {
            vec![Bytes::from_static(b"data: [FAULT]\n\n")]
        }
    }

    fn policy() -> Arc<Policy> {
        let cfg: PolicyConfig = serde_yaml_ng::from_str(
            r#"
categories:
  - { id: A1d, action: block, keywords: ["炸弹", "forbid"] }
  - { id: red, action: redact, keywords: ["secret"] }
"#,
        )
        .unwrap();
        Arc::new(
            Policy::compile(&cfg, std::path::Path::new("."))
                .unwrap()
                .policy,
        )
    }

    fn ev(text: &str) -> RawEvent {
        RawEvent {
            raw: Bytes::from(format!("data: {text}\n\n")),
            data: Some(text.to_string()),
            event: None,
        }
    }

    /// Run pieces through the guard; returns the released text and the stop marker, if any.
    fn run(policy: &Arc<Policy>, pieces: &[String]) -> (String, Option<String>) {
        let mut g = Guard::new(PlainCodec, policy.clone(), None);
        let mut out = Vec::new();
        for p in pieces {
            g.on_event(ev(p), &mut out);
        }
        g.on_event(ev("[END]"), &mut out);
        g.on_end(&mut out);
        let mut text = String::new();
        let mut stop = None;
        for b in out {
            let s = String::from_utf8(b.to_vec()).unwrap();
            let d = s.trim_start_matches("data: ").trim_end_matches("\n\n");
            if let Some(c) = d.strip_prefix("[STOP ") {
                stop = Some(c.trim_end_matches(']').to_string());
            } else if d != "[END]" {
                text.push_str(d);
            }
        }
        (text, stop)
    }

    /// What a correct guard must release for `text`: the redacted text up to the first block.
    fn expected(policy: &Policy, text: &str) -> (String, Option<String>) {
        let findings = policy.scan(text, Direction::Completion);
        match findings.iter().find(|f| f.action == Action::Block) {
            Some(b) => {
                let before: Vec<Finding> = findings
                    .iter()
                    .filter(|f| f.span.end <= b.span.start)
                    .cloned()
                    .collect();
                (
                    policy.redact(&text[..b.span.start], &before),
                    Some(b.category.to_string()),
                )
            }
            None => (policy.redact(text, &findings), None),
        }
    }

    fn texts_of(out: &[Bytes]) -> Vec<String> {
        out.iter()
            .map(|b| String::from_utf8_lossy(b).trim_end().to_string())
            .collect()
    }

    #[test]
    fn an_end_check_holds_the_end_until_the_verdict() {
        let p = policy();
        // A pass: the text goes out as it comes; the terminal event waits, then goes out as is.
        let mut g = Guard::new(PlainCodec, p.clone(), None);
        g.hold_end_for_verdict(5);
        let mut out = Vec::new();
        for t in ["abc", "defgh", "secret"] {
            g.on_event(ev(t), &mut out);
        }
        g.on_event(ev("[END]"), &mut out);
        assert!(g.awaiting_verdict());
        assert_eq!(texts_of(&out), ["data: abc", "data: defgh", "data: ******"]);
        // The verdict reads the last 5 characters of what was delivered (redactions applied).
        assert_eq!(g.released_texts(), [((0, 0), "*****".to_string())]);
        out.clear();
        g.conclude(EndVerdict::Pass(Vec::new()), &mut out);
        assert_eq!(texts_of(&out), ["data: [END]"]);
        assert!(!g.awaiting_verdict());
        g.on_end(&mut out);
        assert!(g.is_done() && g.stopped().is_none());

        // A block: the end is the codec's stop instead, nothing held goes out.
        let mut g = Guard::new(PlainCodec, p.clone(), None);
        g.hold_end_for_verdict(100);
        let mut out = Vec::new();
        g.on_event(ev("abc"), &mut out);
        g.on_end(&mut out);
        assert!(g.awaiting_verdict(), "the upstream's end waits too");
        out.clear();
        g.conclude(EndVerdict::Block("A1d".into(), Vec::new()), &mut out);
        assert_eq!(texts_of(&out), ["data: [STOP A1d]"]);
        assert!(g.is_done());
        assert!(matches!(g.stopped(), Some(StopReason::Blocked { .. })));

        // A failure ends with the codec's error event.
        let mut g = Guard::new(PlainCodec, p, None);
        g.hold_end_for_verdict(100);
        let mut out = Vec::new();
        g.on_event(ev("abc"), &mut out);
        g.on_event(ev("[END]"), &mut out);
        out.clear();
        g.conclude(EndVerdict::Fail("down".into()), &mut out);
        assert_eq!(texts_of(&out), ["data: [FAULT]"]);
        assert!(g.is_done());
    }

    fn pieces_of(text: &str, cuts: &[usize]) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        let mut at = 0;
        for &c in cuts {
            let c = c.min(chars.len());
            if c > at {
                out.push(chars[at..c].iter().collect());
                at = c;
            }
        }
        if at < chars.len() {
            out.push(chars[at..].iter().collect());
        }
        out
    }

    #[test]
    fn a_split_term_never_leaks_a_byte() {
        let p = policy();
        let (text, stop) = run(
            &p,
            &["ok ".into(), "炸".into(), "弹".into(), " after".into()],
        );
        assert_eq!(stop.as_deref(), Some("A1d"));
        assert_eq!(text, "ok ");
    }

    #[test]
    fn redaction_spanning_events_is_rewritten() {
        let p = policy();
        let (text, stop) = run(&p, &["my se".into(), "cr".into(), "et!".into()]);
        assert_eq!(stop, None);
        assert_eq!(text, "my ******!");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Invariant 2: for any split of a text into events, the released text and the verdict
        /// equal the one-shot scan of the whole text.
        #[test]
        fn any_chunking_releases_what_the_one_shot_scan_allows(
            words in proptest::collection::vec(prop_oneof![
                Just("炸"), Just("弹"), Just("炸弹"), Just("for"), Just("bid"), Just("forbid"),
                Just("se"), Just("cret"), Just("secret"), Just(" "), Just("天气"), Just("好"),
                Just("x"), Just("。"), Just("Ｆｏｒｂｉｄ"), Just("炸 弹"),
            ], 0..24),
            cuts in proptest::collection::vec(0usize..80, 0..12),
        ) {
            let p = policy();
            let text: String = words.concat();
            let mut cuts = cuts;
            cuts.sort_unstable();
            let streamed = run(&p, &pieces_of(&text, &cuts));
            prop_assert_eq!(streamed, expected(&p, &text));
        }
    }
}

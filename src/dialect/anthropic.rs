//! Anthropic Messages (`/v1/messages`): where the text is, how an answer is refused, how a stream
//! of named events (`message_start` … `message_stop`) is read, labeled and ended.
//!
//! Stream channels: the text blocks of an answer are one channel, its thinking blocks another
//! (a reader sees each as one text), and each tool input JSON one of its own; whole answers
//! are judged the same way (`moderate::judge_whole`). A tool input is judged as its JSON text;
//! in a prompt or a whole answer a `redact` finding inside a tool input cannot be rewritten in
//! place, so it refuses.
//!
//! Labels on streams: the explicit label at the end is a content block of its own (a text block
//! with `"\n" + label`) sent before `message_delta`; at the start it is a `text_delta` of its own
//! before the first text. The signed implicit record rides on a second `message_delta` event just
//! before `message_stop`, as an extra top-level field `aigc` (the SDKs keep unknown fields).

use bytes::Bytes;
use serde_json::{json, Value};

use super::capture::{capture, Leaf};
use super::generation::{event_data, EventData};
use super::generation::{label_slots, sse_named, TextApi};
use super::labels::{aigc_value, TextLabels};
use super::openai::Extras;
use super::paths::{self, find_strings, Found, Seg, StaticPatterns};
use super::quick::{self, LabelRule, QuickAnswer, QuickPrompt};
use crate::dialect::error::{ApiError, ErrorKind};
use crate::label::Position;
use crate::stream::guard::{ChannelKey, CodecError, EventCodec, Parsed, TextPiece};
use crate::stream::sse::RawEvent;
use crate::stream::template::Template;

/// Channel kinds inside a content block.
pub const KIND_TEXT: u32 = 0;
pub const KIND_THINKING: u32 = 1;
pub const KIND_TOOL_INPUT: u32 = 2;
/// Configured extra fields: field id is this base plus the pattern's position (block 0).
const EXTRA_BASE: u32 = 10_000;

/// Prompt fields that are plain strings or text blocks.
const PROMPT_STRINGS: &[&str] = &[
    "system",
    "system.*.text",
    "messages.*.content",
    "messages.*.content.*.text",
    "messages.*.content.*.thinking",
    "messages.*.content.*.content",
    "messages.*.content.*.content.*.text",
];

/// What the fast read of a request takes besides `PROMPT_STRINGS` (see `quick`).
const REQUEST_MORE: &[&str] = &[
    "messages",
    "messages.*.content.*.input",
    "model",
    "output_format.type",
    "output_config.format.type",
];
/// What the fast read of a whole answer takes.
const ANSWER_READ: &[&str] = &[
    "content.*.type",
    "content.*.text",
    "content.*.thinking",
    "content.*.input",
    "aigc",
];

/// The fast read of a request: `None` sends it down the tree path (which also reports errors),
/// and so do tool inputs, judged as their compact JSON.
fn quick_prompt(body: &[u8]) -> Option<QuickPrompt<'_>> {
    static PATTERNS: StaticPatterns = StaticPatterns::new(PROMPT_STRINGS, "");
    static MORE: StaticPatterns = StaticPatterns::new(REQUEST_MORE, "");
    let (prompt, captures) = quick::read_request(body, &PATTERNS, &MORE)?;
    let mut q = QuickPrompt::default();
    let mut messages = false;
    for c in captures {
        let stars = c.stars();
        match (c.pattern.checked_sub(prompt), c.leaf) {
            (None, Leaf::Str(s)) => q.push(s, &PATTERNS.parsed()[c.pattern], stars),
            (Some(0), Leaf::Array) => messages = true,
            (Some(1), _) => return None,
            (Some(2), Leaf::Str(s)) => q.model = Some(s),
            (Some(3 | 4), Leaf::Str(s)) => q.json_mode |= s == "json_schema",
            _ => {}
        }
    }
    messages.then_some(q)
}

/// The fast read of a whole answer: `None` for the tree path (tool inputs, an `aigc` member).
fn quick_answer<'a>(body: &'a [u8], extras: &Extras) -> Option<QuickAnswer<'a>> {
    static PATTERNS: StaticPatterns = StaticPatterns::new(ANSWER_READ, "");
    let patterns = quick::patterns(PATTERNS.parsed(), &extras.patterns);
    let (mut texts, mut blocks, mut text_blocks) = (Vec::new(), Vec::new(), Vec::new());
    for c in capture(body, &patterns)? {
        let block = c.star(0);
        match (c.pattern, c.leaf) {
            (0, Leaf::Str(t)) if t == "text" => text_blocks.push(block),
            (1, Leaf::Str(s)) => blocks.push((block, c.span?, s)),
            (3 | 4, _) => return None,
            (p, Leaf::Str(s)) if p == 2 || p >= ANSWER_READ.len() => texts.push(s),
            _ => {}
        }
    }
    // Every block's text is judged; those of `type: text` blocks are the visible ones.
    let mut visible = Vec::new();
    for (block, span, s) in blocks {
        if text_blocks.contains(&block) {
            visible.push((span, s));
        } else {
            texts.push(s);
        }
    }
    QuickAnswer::new(body, texts, visible, LabelRule::Ends)
}

/// The Anthropic Messages API.
#[derive(Debug, Clone, Copy, Default)]
pub struct Anthropic;

impl TextApi for Anthropic {
    type Codec = AnthropicCodec;

    fn prompt_texts(&self, req: &Value) -> Result<Vec<Found>, ApiError> {
        prompt_texts(req)
    }

    fn json_mode(&self, req: &Value) -> bool {
        [
            &["output_format", "type"][..],
            &["output_config", "format", "type"],
        ]
        .iter()
        .any(|p| super::json::at(req, p).and_then(Value::as_str) == Some("json_schema"))
    }

    fn quick_prompt<'a>(&self, body: &'a [u8]) -> Option<QuickPrompt<'a>> {
        quick_prompt(body)
    }

    fn quick_answer<'a>(&self, body: &'a [u8], extras: &Extras) -> Option<QuickAnswer<'a>> {
        quick_answer(body, extras)
    }

    fn codec(&self, extras: Extras, labels: Option<TextLabels>) -> AnthropicCodec {
        AnthropicCodec::new(extras, labels)
    }

    fn stream_labels(&self) -> bool {
        true
    }

    const JOINS_ANSWER_TEXTS: bool = true;

    fn response_texts(&self, doc: &Value, extras: &Extras) -> Vec<(u32, Found)> {
        whole_texts(doc, extras)
    }

    fn refuse(&self, doc: &mut Value, _unit: u32, refusal: &str) {
        refuse_whole(doc, refusal)
    }

    fn label(&self, doc: &mut Value, label: &str, pos: Position, blocked: &[u32]) -> bool {
        // One answer: a refused answer carries no explicit label.
        blocked.is_empty() && label_whole(doc, label, pos)
    }

    fn delivered_text(&self, doc: &Value) -> String {
        doc.get("content")
            .and_then(Value::as_array)
            .map(|bs| {
                bs.iter()
                    .filter(|b| b["type"] == "text")
                    .filter_map(|b| b["text"].as_str())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Every generated text of a whole answer (one unit).
fn whole_texts(doc: &Value, extras: &Extras) -> Vec<(u32, Found)> {
    whole_found(doc, extras)
        .into_iter()
        .map(|f| (0, f))
        .collect()
}

fn whole_found(doc: &Value, extras: &Extras) -> Vec<Found> {
    let mut out = Vec::new();
    if let Some(blocks) = doc.get("content").and_then(Value::as_array) {
        for (i, b) in blocks.iter().enumerate() {
            let base = vec![Seg::Key("content".into()), Seg::Index(i)];
            for key in ["text", "thinking"] {
                if let Some(Value::String(s)) = b.get(key) {
                    let mut path = base.clone();
                    path.push(Seg::Key(key.into()));
                    out.push(Found {
                        path,
                        text: s.clone(),
                    });
                }
            }
            if let Some(input) = b.get("input") {
                let mut path = base.clone();
                path.push(Seg::Key("input".into()));
                out.push(Found {
                    path,
                    text: input_text(input),
                });
            }
        }
    }
    for pat in &extras.patterns {
        find_strings(doc, pat, &mut out);
    }
    out
}

fn refuse_whole(doc: &mut Value, refusal: &str) {
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("content".into(), json!([{"type": "text", "text": refusal}]));
        obj.insert("stop_reason".into(), json!("refusal"));
        obj.insert("stop_sequence".into(), Value::Null);
    }
}

fn label_whole(doc: &mut Value, label: &str, pos: Position) -> bool {
    let Some(blocks) = doc.get_mut("content").and_then(Value::as_array_mut) else {
        return false;
    };
    let slots: Vec<&mut String> = blocks
        .iter_mut()
        .filter(|b| b["type"] == "text")
        .filter_map(|b| match b.get_mut("text") {
            Some(Value::String(s)) => Some(s),
            _ => None,
        })
        .collect();
    label_slots(slots, label, pos)
}

/// A tool input as the text that is judged: its compact JSON.
fn input_text(input: &Value) -> String {
    serde_json::to_string(input).unwrap_or_default()
}

/// The prompt texts of a Messages request: the system prompt, every message's text, thinking,
/// tool inputs (as JSON text) and tool results.
pub fn prompt_texts(req: &Value) -> Result<Vec<Found>, ApiError> {
    if !req.is_object() {
        return Err(ApiError::new(
            ErrorKind::BadJson,
            "the request body must be a JSON object",
        ));
    }
    if !req["messages"].is_array() {
        return Err(
            ApiError::new(ErrorKind::BadRequest, "`messages` must be an array")
                .with_param("messages"),
        );
    }
    let mut out = Vec::new();
    static PATTERNS: StaticPatterns = StaticPatterns::new(PROMPT_STRINGS, "");
    PATTERNS.find(req, &mut out);
    if let Some(messages) = req["messages"].as_array() {
        for (mi, m) in messages.iter().enumerate() {
            let Some(blocks) = m.get("content").and_then(Value::as_array) else {
                continue;
            };
            for (bi, b) in blocks.iter().enumerate() {
                if let Some(input) = b.get("input") {
                    out.push(Found {
                        path: vec![
                            Seg::Key("messages".into()),
                            Seg::Index(mi),
                            Seg::Key("content".into()),
                            Seg::Index(bi),
                            Seg::Key("input".into()),
                        ],
                        text: input_text(input),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// What an Anthropic stream event is, for release bookkeeping.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    MessageStart,
    BlockStart { index: u32 },
    Delta,
    BlockStop { index: u32 },
    MessageDelta,
    Other,
}

/// One stream event kept for re-rendering.
pub struct Event {
    name: String,
    /// The event as a tree; `Null` for a delta read from the template (see `repeated`).
    json: Value,
    /// The data of a delta read from the template, parsed only if it must be rewritten.
    repeated: Option<String>,
    kind: Kind,
    paths: Vec<Vec<Seg>>,
    keys: Vec<ChannelKey>,
}

/// The last text delta read in full, kept as a [`Template`]: a delta that repeats it but for
/// its text is read from it.
struct RepeatedDelta {
    template: Template,
    /// The `event:` field it came with (a repeat must come with the same).
    field: Option<String>,
    /// Its event name, text path and channel.
    name: String,
    path: Vec<Seg>,
    key: ChannelKey,
}

/// Labels riding on an Anthropic stream.
struct Labels {
    text: TextLabels,
    /// Visible text delivered (text blocks, labels included), for the signature.
    delivered: String,
    started: bool,
    ended: bool,
}

/// Reads and ends Anthropic Messages streams.
pub struct AnthropicCodec {
    extras: Extras,
    /// A `message_start` reached the client.
    started: bool,
    model: Value,
    /// Content blocks that reached the client: (index, still open).
    blocks: Vec<(u32, bool)>,
    /// `usage.output_tokens` last seen.
    output_tokens: Value,
    /// The upstream's `message_delta.delta` as released.
    final_delta: Option<Value>,
    labels: Option<Labels>,
    template: Option<RepeatedDelta>,
}

impl AnthropicCodec {
    pub fn new(extras: Extras, labels: Option<TextLabels>) -> Self {
        Self {
            extras,
            started: false,
            model: Value::Null,
            blocks: Vec::new(),
            output_tokens: json!(0),
            final_delta: None,
            labels: labels.map(|text| Labels {
                text,
                delivered: String::new(),
                started: false,
                ended: false,
            }),
            template: None,
        }
    }

    /// A text delta that repeats the template but for its text (see [`Template`]).
    fn repeat(&self, ev: &RawEvent) -> Option<Parsed<Event>> {
        let r = self.template.as_ref()?;
        if ev.event != r.field || !self.extras.patterns.is_empty() {
            return None;
        }
        let data = ev.data.as_deref()?.trim();
        let text = r.template.fill(data)?.text;
        let (paths, keys, pieces) = if text.is_empty() {
            (Vec::new(), Vec::new(), Vec::new())
        } else {
            let piece = TextPiece {
                channel: scan_channel(r.key),
                text: text.to_owned(),
            };
            (vec![r.path.clone()], vec![r.key], vec![piece])
        };
        Some(Parsed {
            event: Some(Event {
                name: r.name.clone(),
                json: Value::Null,
                repeated: Some(data.to_owned()),
                kind: Kind::Delta,
                paths,
                keys,
            }),
            pieces,
            terminal: false,
        })
    }

    fn next_index(&self) -> u32 {
        self.blocks.iter().map(|(i, _)| i + 1).max().unwrap_or(0)
    }

    /// A whole text block carrying `text`, appended after every block sent so far.
    fn text_block(&mut self, text: &str) -> Vec<Bytes> {
        let index = self.next_index();
        self.blocks.push((index, false));
        vec![
            sse_named(
                "content_block_start",
                &json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
            ),
            text_delta(index, text),
            sse_named(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            ),
        ]
    }

    /// The end label as a text block of its own, once, if text was delivered.
    fn end_label(&mut self) -> Vec<Bytes> {
        let Some(l) = self.labels.as_mut() else {
            return Vec::new();
        };
        let Some((label, pos)) = l.text.explicit.clone() else {
            return Vec::new();
        };
        if !matches!(pos, Position::End | Position::Both) || l.ended || l.delivered.is_empty() {
            return Vec::new();
        }
        l.ended = true;
        let t = format!("\n{label}");
        l.delivered.push_str(&t);
        crate::label::record("text", "explicit", "ok");
        self.text_block(&t)
    }

    /// The `message_delta` that carries the signed implicit record, if implicit labels are on.
    fn seal_event(&mut self, delta: Value) -> Option<Bytes> {
        let l = self.labels.as_mut()?;
        let explicit_used = l.started || l.ended;
        let aigc = l.text.seal(&l.delivered, explicit_used)?;
        Some(sse_named(
            "message_delta",
            &json!({"type": "message_delta", "delta": delta, "usage": {"output_tokens": self.output_tokens}, "aigc": aigc_value(&aigc)}),
        ))
    }

    fn note_usage(&mut self, usage: Option<&Value>) {
        if let Some(n) = usage.and_then(|u| u.get("output_tokens")) {
            if n.is_u64() {
                self.output_tokens = n.clone();
            }
        }
    }
}

fn text_delta(index: u32, text: &str) -> Bytes {
    sse_named(
        "content_block_delta",
        &json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
    )
}

/// The guard channel a block's text is scanned on: the text blocks of an answer are read as one
/// text, and so are its thinking blocks, so a term the model splits across two blocks (around a
/// tool call, a citation) is found; a tool input is a JSON text of its own.
fn scan_channel((index, kind): ChannelKey) -> ChannelKey {
    match kind {
        KIND_TEXT | KIND_THINKING => (0, kind),
        _ => (index, kind),
    }
}

fn key(k: &str) -> Seg {
    Seg::Key(k.into())
}

impl EventCodec for AnthropicCodec {
    type Event = Event;

    /// `message_delta` carries the model's stop reason: with an end check it waits for the
    /// verdict, so a stop after it is the only stop reason the client reads.
    fn ends_answer(&self, event: &Event) -> bool {
        matches!(event.kind, Kind::MessageDelta)
    }

    fn parse(&mut self, ev: &RawEvent) -> Result<Parsed<Event>, CodecError> {
        if let Some(p) = self.repeat(ev) {
            return Ok(p);
        }
        let json = match event_data(ev)? {
            EventData::None => return Ok(Parsed::passthrough()),
            EventData::Done => return Ok(Parsed::terminal()),
            EventData::Json(v) => v,
        };
        let ty = json["type"].as_str().unwrap_or_default().to_string();
        let index = json
            .get("index")
            .and_then(Value::as_u64)
            .map(|i| i as u32)
            .unwrap_or(0);
        let mut paths: Vec<Vec<Seg>> = Vec::new();
        let mut keys: Vec<ChannelKey> = Vec::new();
        let mut pieces = Vec::new();
        let mut add = |path: Vec<Seg>, channel: ChannelKey, text: String| {
            if text.is_empty() {
                return;
            }
            paths.push(path);
            keys.push(channel);
            pieces.push(TextPiece {
                channel: scan_channel(channel),
                text,
            });
        };
        let kind = match ty.as_str() {
            "message_stop" => {
                return Ok(Parsed {
                    event: None,
                    pieces: Vec::new(),
                    terminal: true,
                })
            }
            // Keep-alives and upstream errors carry no generated text; they pass as they are.
            "ping" | "error" => return Ok(Parsed::passthrough()),
            "message_start" => {
                if let Some(m) = json["message"].get("model") {
                    self.model = m.clone();
                }
                // A message_start that already holds content is judged like any other text.
                if let Some(blocks) = json["message"]["content"].as_array() {
                    for (i, b) in blocks.iter().enumerate() {
                        if let Some(Value::String(s)) = b.get("text") {
                            let path =
                                vec![key("message"), key("content"), Seg::Index(i), key("text")];
                            add(path, (i as u32, KIND_TEXT), s.clone());
                        }
                    }
                }
                Kind::MessageStart
            }
            "content_block_start" => {
                let b = &json["content_block"];
                for (k, kind) in [("text", KIND_TEXT), ("thinking", KIND_THINKING)] {
                    if let Some(Value::String(s)) = b.get(k) {
                        add(vec![key("content_block"), key(k)], (index, kind), s.clone());
                    }
                }
                if let Some(input) = b.get("input") {
                    if input.as_object().is_some_and(|o| !o.is_empty()) {
                        add(
                            vec![key("content_block"), key("input")],
                            (index, KIND_TOOL_INPUT),
                            input_text(input),
                        );
                    }
                }
                Kind::BlockStart { index }
            }
            "content_block_delta" => {
                let d = &json["delta"];
                let (field, kind) = match d["type"].as_str() {
                    Some("text_delta") => ("text", KIND_TEXT),
                    Some("thinking_delta") => ("thinking", KIND_THINKING),
                    Some("input_json_delta") => ("partial_json", KIND_TOOL_INPUT),
                    _ => ("", 0),
                };
                if !field.is_empty() {
                    match d.get(field) {
                        Some(Value::String(s)) => {
                            // Kept only when the extra fields add nothing (they may differ
                            // between deltas of the same frame).
                            let template = ev
                                .data
                                .as_deref()
                                .filter(|_| self.extras.patterns.is_empty())
                                .and_then(|data| Template::of(data.trim(), s));
                            if let Some(template) = template {
                                self.template = Some(RepeatedDelta {
                                    template,
                                    field: ev.event.clone(),
                                    name: ev.event.clone().unwrap_or_else(|| ty.clone()),
                                    path: vec![key("delta"), key(field)],
                                    key: (index, kind),
                                });
                            }
                            add(vec![key("delta"), key(field)], (index, kind), s.clone())
                        }
                        Some(Value::Null) | None => {}
                        Some(_) => {
                            return Err(CodecError(format!("`delta.{field}` is not a string")))
                        }
                    }
                }
                Kind::Delta
            }
            "content_block_stop" => Kind::BlockStop { index },
            "message_delta" => {
                self.note_usage(json.get("usage"));
                Kind::MessageDelta
            }
            _ => Kind::Other,
        };
        for (k, pat) in self.extras.patterns.iter().enumerate() {
            let mut found = Vec::new();
            find_strings(&json, pat, &mut found);
            for f in found {
                add(f.path, (0, EXTRA_BASE + k as u32), f.text);
            }
        }
        Ok(Parsed {
            event: Some(Event {
                name: ev.event.clone().unwrap_or(ty),
                json,
                repeated: None,
                kind,
                paths,
                keys,
            }),
            pieces,
            terminal: false,
        })
    }

    fn on_release(
        &mut self,
        event: &Event,
        texts: &[String],
        before: &mut Vec<Bytes>,
        _after: &mut Vec<Bytes>,
    ) {
        match &event.kind {
            Kind::MessageStart => {
                self.started = true;
                self.note_usage(event.json["message"].get("usage"));
            }
            Kind::BlockStart { index } => {
                if !self.blocks.iter().any(|(i, _)| i == index) {
                    self.blocks.push((*index, true));
                }
            }
            Kind::BlockStop { index } => {
                if let Some(b) = self.blocks.iter_mut().find(|(i, _)| i == index) {
                    b.1 = false;
                }
            }
            Kind::MessageDelta => {
                before.extend(self.end_label());
                self.final_delta = Some(event.json["delta"].clone());
            }
            Kind::Delta | Kind::Other => {}
        }
        for (k, text) in event.keys.iter().zip(texts) {
            if k.1 != KIND_TEXT || text.is_empty() {
                continue;
            }
            let Some(l) = self.labels.as_mut() else {
                continue;
            };
            if l.started || event.kind != Kind::Delta {
                l.delivered.push_str(text);
                continue;
            }
            if let Some((label, Position::Start | Position::Both)) = &l.text.explicit {
                let t = format!("{label}\n");
                l.started = true;
                l.delivered.push_str(&t);
                crate::label::record("text", "explicit", "ok");
                before.push(text_delta(k.0, &t));
            }
            l.delivered.push_str(text);
        }
    }

    fn on_end(&mut self, out: &mut Vec<Bytes>) {
        out.extend(self.end_label());
        let delta = self
            .final_delta
            .clone()
            .unwrap_or_else(|| json!({"stop_reason": null, "stop_sequence": null}));
        if let Some(b) = self.seal_event(delta) {
            out.push(b);
        }
    }

    fn render(&self, event: &Event, texts: &[String]) -> Bytes {
        let mut v = match &event.repeated {
            // Read in full before (as the template), so it parses.
            Some(data) => serde_json::from_str(data).unwrap_or(Value::Null),
            None => event.json.clone(),
        };
        for (path, text) in event.paths.iter().zip(texts) {
            if matches!(path.last(), Some(Seg::Key(k)) if k == "input") {
                // A tool input is an object: put back the rewritten JSON (a mask inside a string
                // keeps it valid); if it no longer parses, send it as a string rather than guess.
                let parsed = serde_json::from_str(text).unwrap_or(Value::String(text.clone()));
                if let Some(slot) = paths::get_mut(&mut v, path) {
                    *slot = parsed;
                }
            } else {
                paths::set_string(&mut v, path, text.clone());
            }
        }
        sse_named(&event.name, &v)
    }

    fn stop(&mut self, _category: &str, notice: Option<&str>) -> Vec<Bytes> {
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            out.push(sse_named(
                "message_start",
                &json!({"type": "message_start", "message": {"id": "msg_shenhe", "type": "message", "role": "assistant", "model": self.model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}}),
            ));
        }
        for (index, open) in self.blocks.iter_mut() {
            if *open {
                *open = false;
                out.push(sse_named(
                    "content_block_stop",
                    &json!({"type": "content_block_stop", "index": index}),
                ));
            }
        }
        if let Some(n) = notice {
            out.extend(self.text_block(n));
        }
        // What was delivered before the stop is generated content: it is labeled like any other.
        out.extend(self.end_label());
        let delta = json!({"stop_reason": "refusal", "stop_sequence": null});
        match self.seal_event(delta.clone()) {
            Some(b) => out.push(b),
            None => out.push(sse_named(
                "message_delta",
                &json!({"type": "message_delta", "delta": delta, "usage": {"output_tokens": self.output_tokens}}),
            )),
        }
        out.push(sse_named("message_stop", &json!({"type": "message_stop"})));
        out
    }

    fn fault(&mut self, message: &str) -> Vec<Bytes> {
        vec![sse_named(
            "error",
            &json!({"type": "error", "error": {"type": "api_error", "message": message}}),
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(name: &str, v: Value) -> RawEvent {
        RawEvent {
            raw: sse_named(name, &v),
            data: Some(v.to_string()),
            event: Some(name.into()),
        }
    }

    /// What a parse gave, in a form to compare: pieces, and the event's name, paths and keys
    /// and how it renders with its own texts.
    type Read = (
        Vec<TextPiece>,
        Option<(String, Vec<Vec<Seg>>, Vec<ChannelKey>, Bytes)>,
    );

    fn read(c: &mut AnthropicCodec, ev: &RawEvent) -> Read {
        let p = c.parse(ev).unwrap();
        let texts: Vec<String> = p.pieces.iter().map(|p| p.text.clone()).collect();
        let event = p.event.map(|e| {
            let rendered = c.render(&e, &texts);
            (e.name, e.paths, e.keys, rendered)
        });
        (p.pieces, event)
    }

    proptest::proptest! {
        /// A codec that reads repeated deltas from its template reads every event as one that
        /// reads each in full.
        #[test]
        fn template_reads_equal_full_reads(
            events in proptest::collection::vec((0usize..5, 0u32..2, 0usize..3, proptest::bool::ANY), 1..14)
        ) {
            const TEXTS: [&str; 5] = ["tok ", "", "你好，", "a\nb", "q\"x"];
            let mut with = AnthropicCodec::new(Extras::default(), None);
            let mut without = AnthropicCodec::new(Extras::default(), None);
            for (text, index, kind, named) in events {
                let (ty, field) = [("text_delta", "text"), ("thinking_delta", "thinking"), ("input_json_delta", "partial_json")][kind];
                let v = json!({"type": "content_block_delta", "index": index, "delta": {"type": ty, field: TEXTS[text]}});
                let mut ev = raw("content_block_delta", v);
                if !named {
                    ev.event = None;
                }
                without.template = None;
                let a = read(&mut with, &ev);
                let b = read(&mut without, &ev);
                proptest::prop_assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn repeated_deltas_are_read_from_the_template() {
        let mut c = AnthropicCodec::new(Extras::default(), None);
        let delta = |t: &str| {
            raw(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}),
            )
        };
        read(&mut c, &delta("one"));
        assert!(c.template.is_some());
        let p = c.parse(&delta("二 two")).unwrap();
        assert_eq!(p.pieces[0].text, "二 two");
        assert!(
            p.event.is_some_and(|e| e.json.is_null()),
            "read without a tree"
        );
    }

    #[test]
    fn prompt_covers_system_blocks_tools_and_results() {
        let req = json!({"system": [{"type": "text", "text": "sys"}], "messages": [
            {"role": "user", "content": "plain"},
            {"role": "assistant", "content": [{"type": "text", "text": "blk"}, {"type": "tool_use", "id": "t", "name": "f", "input": {"q": "args"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "res"}, {"type": "tool_result", "tool_use_id": "u", "content": [{"type": "text", "text": "res2"}]}]},
        ]});
        let texts: Vec<String> = prompt_texts(&req)
            .unwrap()
            .into_iter()
            .map(|f| f.text)
            .collect();
        for t in ["sys", "plain", "blk", "{\"q\":\"args\"}", "res", "res2"] {
            assert!(texts.iter().any(|x| x == t), "{t} missing from {texts:?}");
        }
        let s = prompt_texts(&json!({"system": "str", "messages": []})).unwrap();
        assert_eq!(s[0].text, "str");
        assert!(prompt_texts(&json!({"messages": "x"})).is_err());
    }

    #[test]
    fn channels_per_kind_of_block_and_a_clean_stop() {
        let mut c = AnthropicCodec::new(Extras::default(), None);
        let p = c
            .parse(&raw("content_block_delta", json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"a"}})))
            .unwrap();
        assert_eq!(p.pieces[0].channel, (2, KIND_TOOL_INPUT));
        let p = c
            .parse(&raw("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "thinking_delta", "thinking": "hm"}})))
            .unwrap();
        assert_eq!(p.pieces[0].channel, (0, KIND_THINKING));
        // Text blocks share one channel whatever their index; tool inputs keep their own.
        for i in [0, 3] {
            let p = c
                .parse(&raw("content_block_delta", json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": "t"}})))
                .unwrap();
            assert_eq!(p.pieces[0].channel, (0, KIND_TEXT));
        }
        let p = c
            .parse(&raw("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "thinking_delta", "thinking": "hm"}})))
            .unwrap();
        let ev = p.event.unwrap();
        let out = c.render(&ev, &["**".into()]);
        let s = String::from_utf8(out.to_vec()).unwrap();
        assert!(s.starts_with("event: content_block_delta\ndata: "), "{s}");
        assert!(s.contains("\"thinking\":\"**\""));
        let stop = String::from_utf8(c.stop("A1d", None).concat()).unwrap();
        assert!(stop.contains("\"stop_reason\":\"refusal\""), "{stop}");
        assert!(stop.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    }
}

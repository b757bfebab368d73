//! OpenAI Responses (`/v1/responses`): where the text is, how an answer is refused, how a stream
//! of typed events is read and ended.
//!
//! Text arrives twice in a Responses stream: as deltas (`response.output_text.delta`, keyed by
//! `output_index` and `content_index`), then again whole in the `.done` events, in
//! `content_part.done`, `output_item.done` and the final `response.completed`. Deltas are the
//! channels the guard scans as they come. Every repeated whole text is judged on a channel of its
//! own, in one piece: the same verdicts as its deltas (the scan does not depend on chunking), so
//! a redaction rewrites it the same way, and a text that was blocked is never sent because its
//! deltas stopped the stream first (the guard never sends anything after a stop). The output
//! text deltas of all parts are one channel (a term split across two parts is found); a repeat
//! of a part's text is sent as that part's deltas were, so a redaction across two parts reads
//! the same in the deltas and in every repeat.
//!
//! Stopped streams end with `response.incomplete`, `incomplete_details.reason: content_filter`,
//! carrying the output as it was delivered. Labels are not added to Responses streams yet: a
//! stream records `unlabeled` (whole answers are labeled).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde_json::{json, Value};

use super::capture::{capture, Leaf};
use super::generation::{event_data, EventData};
use super::generation::{label_slots, sse_named, TextApi};
use super::labels::{aigc_value, TextLabels};
use super::openai::Extras;
use super::paths::{self, find_strings, parse_pattern, Found, Seg, StaticPatterns};
use super::quick::{self, LabelRule, QuickAnswer, QuickPrompt};
use crate::dialect::error::{ApiError, ErrorKind};
use crate::label::Position;
use crate::stream::guard::{ChannelKey, CodecError, EventCodec, Parsed, TextPiece};
use crate::stream::sse::RawEvent;
use crate::stream::template::Template;

/// Prompt fields: instructions, and the text of every input item.
const PROMPT: &[&str] = &[
    "instructions",
    "input.*.content",
    "input.*.content.*.text",
    "input.*.content.*.refusal",
    "input.*.output",
    "input.*.output.*.text",
    "input.*.arguments",
    "input.*.input",
    "input.*.summary.*.text",
];

/// What the fast read of a request takes besides `PROMPT` (see `quick`).
const REQUEST_MORE: &[&str] = &["input", "model", "text.format.type", "background"];
/// What the fast read of a whole answer takes: item and part types, the parts' text, the
/// other generated fields (`ITEM_TEXT` less `content.*.text`, then `output_text`), the
/// implicit label's slot.
const ANSWER_READ: &[&str] = &[
    "output.*.type",
    "output.*.content.*.type",
    "output.*.content.*.text",
    "output.*.content.*.refusal",
    "output.*.summary.*.text",
    "output.*.arguments",
    "output.*.input",
    "output_text",
    "aigc",
];

/// The fast read of a request: `None` sends it down the tree path (which also reports errors).
fn quick_prompt(body: &[u8]) -> Option<QuickPrompt<'_>> {
    static PATTERNS: StaticPatterns = StaticPatterns::new(PROMPT, "");
    static MORE: StaticPatterns = StaticPatterns::new(REQUEST_MORE, "");
    let (prompt, captures) = quick::read_request(body, &PATTERNS, &MORE)?;
    let mut q = QuickPrompt::default();
    for c in captures {
        let stars = c.stars();
        match (c.pattern.checked_sub(prompt), c.leaf) {
            (None, Leaf::Str(s)) => q.push(s, &PATTERNS.parsed()[c.pattern], stars),
            (Some(0), Leaf::Str(s)) => q.push(s, &MORE.parsed()[0], stars),
            (Some(0), Leaf::Array | Leaf::Null) => {}
            // `input` of another type: the tree path refuses the request.
            (Some(0), _) => return None,
            (Some(1), Leaf::Str(s)) => q.model = Some(s),
            (Some(2), Leaf::Str(s)) => q.json_mode = matches!(&*s, "json_object" | "json_schema"),
            // `true` or `false`: the tree path tells them apart (and refuses a background run
            // whose output would be fetched later, unjudged).
            (Some(3), Leaf::Null) => {}
            (Some(3), _) => return None,
            _ => {}
        }
    }
    Some(q)
}

/// The fast read of a whole answer: `None` for the tree path (an `aigc` member already there).
fn quick_answer<'a>(body: &'a [u8], extras: &Extras) -> Option<QuickAnswer<'a>> {
    static PATTERNS: StaticPatterns = StaticPatterns::new(ANSWER_READ, "");
    let aigc = ANSWER_READ.len() - 1;
    let patterns = quick::patterns(PATTERNS.parsed(), &extras.patterns);
    let (mut texts, mut parts, mut messages, mut output_texts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for c in capture(body, &patterns)? {
        let at = (c.star(0), c.star(1));
        match (c.pattern, c.leaf) {
            (0, Leaf::Str(t)) if t == "message" => messages.push(at.0),
            (1, Leaf::Str(t)) if t == "output_text" => output_texts.push(at),
            (2, Leaf::Str(s)) => parts.push((at, c.span?, s)),
            (p, _) if p == aigc => return None,
            (p, Leaf::Str(s)) if p > 2 => texts.push(s),
            _ => {}
        }
    }
    // Every part's text is judged; those of `output_text` parts of `message` items are the
    // visible ones.
    let mut visible = Vec::new();
    for (at, span, s) in parts {
        if messages.contains(&at.0) && output_texts.contains(&at) {
            visible.push((span, s));
        } else {
            texts.push(s);
        }
    }
    QuickAnswer::new(body, texts, visible, LabelRule::Ends)
}

/// Text fields of one output item (below the item).
const ITEM_TEXT: &[&str] = &[
    "content.*.text",
    "content.*.refusal",
    "summary.*.text",
    "arguments",
    "input",
];

/// Delta channel kinds; the field id is `kind * KIND_STRIDE + content_index`.
const K_TEXT: u32 = 1;
const K_REFUSAL: u32 = 2;
const K_REASONING: u32 = 3;
const K_SUMMARY: u32 = 4;
const K_ARGS: u32 = 5;
const KIND_STRIDE: u32 = 1024;
/// Whole repeated texts each get a channel of their own: (sequence, this field).
const REPEAT_FIELD: u32 = u32::MAX;
/// Configured extra fields: field id is this base plus the pattern's position.
const EXTRA_BASE: u32 = 100_000;

/// The guard channel of a delta: the output text of every message part is read as one text,
/// and so are the reasoning text and the reasoning summaries, so a term the model splits across
/// two parts or items is found (as `moderate::judge_whole` joins them in a whole answer); a
/// refusal and each call's arguments are texts of their own.
fn delta_channel(output: u32, kind: u32, part: u32) -> ChannelKey {
    match kind {
        K_TEXT | K_REASONING | K_SUMMARY => (0, kind * KIND_STRIDE),
        _ => (output, kind * KIND_STRIDE + part),
    }
}

/// The OpenAI Responses API.
#[derive(Debug, Clone, Copy, Default)]
pub struct Responses;

impl TextApi for Responses {
    type Codec = ResponsesCodec;

    fn prompt_texts(&self, req: &Value) -> Result<Vec<Found>, ApiError> {
        prompt_texts(req)
    }

    fn json_mode(&self, req: &Value) -> bool {
        matches!(
            super::json::at(req, &["text", "format", "type"]).and_then(Value::as_str),
            Some("json_object" | "json_schema")
        )
    }

    fn quick_prompt<'a>(&self, body: &'a [u8]) -> Option<QuickPrompt<'a>> {
        quick_prompt(body)
    }

    fn quick_answer<'a>(&self, body: &'a [u8], extras: &Extras) -> Option<QuickAnswer<'a>> {
        quick_answer(body, extras)
    }

    fn codec(&self, extras: Extras, labels: Option<TextLabels>) -> ResponsesCodec {
        let mut c = ResponsesCodec::new(extras);
        c.labels = labels.map(StreamLabels::new);
        c
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
        let mut s = String::new();
        for item in doc["output"].as_array().into_iter().flatten() {
            if item["type"] != "message" {
                continue;
            }
            for part in item["content"].as_array().into_iter().flatten() {
                if part["type"] == "output_text" {
                    s.push_str(part["text"].as_str().unwrap_or_default());
                }
            }
        }
        s
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
    static PATTERNS: StaticPatterns = StaticPatterns::new(ITEM_TEXT, "output.*.");
    PATTERNS.find(doc, &mut out);
    find_strings(doc, &[paths::Pat::Key("output_text".into())], &mut out);
    for pat in &extras.patterns {
        find_strings(doc, pat, &mut out);
    }
    out
}

fn refuse_whole(doc: &mut Value, refusal: &str) {
    if let Some(obj) = doc.as_object_mut() {
        obj.insert(
                "output".into(),
                json!([{"type": "message", "id": "msg_shenhe_refusal", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": refusal, "annotations": []}]}]),
            );
        obj.insert("status".into(), json!("incomplete"));
        obj.insert(
            "incomplete_details".into(),
            json!({"reason": "content_filter"}),
        );
        if obj.contains_key("output_text") {
            obj.insert("output_text".into(), json!(refusal));
        }
    }
}

fn label_whole(doc: &mut Value, label: &str, pos: Position) -> bool {
    let Some(items) = doc.get_mut("output").and_then(Value::as_array_mut) else {
        return false;
    };
    let slots: Vec<&mut String> = items
        .iter_mut()
        .filter(|i| i["type"] == "message")
        .filter_map(|i| i.get_mut("content").and_then(Value::as_array_mut))
        .flatten()
        .filter(|p| p["type"] == "output_text")
        .filter_map(|p| match p.get_mut("text") {
            Some(Value::String(s)) => Some(s),
            _ => None,
        })
        .collect();
    label_slots(slots, label, pos)
}

/// The prompt texts of a Responses request; `input` is a string or a list of items.
pub fn prompt_texts(req: &Value) -> Result<Vec<Found>, ApiError> {
    if !req.is_object() {
        return Err(ApiError::new(
            ErrorKind::BadJson,
            "the request body must be a JSON object",
        ));
    }
    // A background run answers "queued" and leaves its output to be fetched by id, a path that
    // never passes the guard (and that shenhe refuses): only a streamed one delivers its output
    // here, judged.
    if req["background"] == Value::Bool(true) && req["stream"] != Value::Bool(true) {
        return Err(ApiError::new(
            ErrorKind::BadRequest,
            "`background: true` is served only with `stream: true`: the output of a background \
             run is fetched later by id, which shenhe does not serve unjudged",
        )
        .with_param("background"));
    }
    let mut out = Vec::new();
    match &req["input"] {
        Value::String(s) => out.push(Found {
            path: vec![Seg::Key("input".into())],
            text: s.clone(),
        }),
        Value::Array(_) | Value::Null => {}
        _ => {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                "`input` must be a string or an array of items",
            )
            .with_param("input"))
        }
    }
    static PATTERNS: StaticPatterns = StaticPatterns::new(PROMPT, "");
    PATTERNS.find(req, &mut out);
    Ok(out)
}

/// What a Responses stream event is, for release bookkeeping.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// `response.created` / `in_progress` / `queued`: the response id and metadata.
    Lifecycle,
    ItemAdded {
        output: u32,
    },
    PartAdded {
        output: u32,
        part: u32,
        summary: bool,
    },
    Delta {
        output: u32,
        part: u32,
        kind: u32,
    },
    ItemDone {
        output: u32,
    },
    Other,
}

/// One stream event kept for re-rendering.
pub struct Event {
    name: Option<String>,
    /// `type`.
    ty: String,
    /// The data as a tree; `Null` for a text delta read without one (`raw` holds it then).
    json: Value,
    raw: Option<Box<str>>,
    /// `sequence_number`.
    seq: Option<u64>,
    kind: Kind,
    paths: Vec<Vec<Seg>>,
}

impl Event {
    /// The data as a tree, to change: a text delta read without one is read now (rarely: only
    /// when its text was rewritten or its number must change).
    fn tree(&self) -> Value {
        match &self.raw {
            Some(raw) => serde_json::from_str(raw).unwrap_or(Value::Null),
            None => self.json.clone(),
        }
    }

    /// This event, under its own name, with `v` as its data.
    fn encode(&self, v: &Value) -> Bytes {
        match &self.name {
            Some(n) => sse_named(n, v),
            None => super::openai::sse_data(v),
        }
    }
}

/// Reads and ends Responses streams.
pub struct ResponsesCodec {
    extras: Extras,
    /// Sequence for the channels of whole repeated texts.
    repeats: u32,
    /// The response as announced (`response.created`), released.
    response: Value,
    /// Output items as delivered so far, by output index.
    items: BTreeMap<u32, Value>,
    /// The last `sequence_number` sent to the client.
    last_out: u64,
    /// Events shenhe added to the stream so far: later upstream events are numbered this much
    /// higher, so that numbers keep rising by one without repeats, as the SDKs expect.
    added: u64,
    labels: Option<StreamLabels>,
    /// Output text parts by (output, part): the text their deltas spelled as read, and as sent.
    parts: BTreeMap<(u32, u32), (String, String)>,
    /// The last text delta read in full: a delta that repeats it but for its text and
    /// `sequence_number` is read from it.
    template: Option<RepeatedDelta>,
}

/// A text delta kept as a [`Template`], with what its full read found besides the text.
struct RepeatedDelta {
    template: Template,
    /// The `event:` field it came with (a repeat must come with the same).
    field: Option<String>,
    ty: String,
    output: u32,
    part: u32,
    kind: u32,
}

/// Labels on a Responses stream: the explicit label as its own `output_text.delta` in each text
/// part, the same label in every later repeat of that part's text, and the signed record in the
/// final `response` object.
pub struct StreamLabels {
    text: TextLabels,
    /// Text parts (output index, content index) that got the start / end label.
    started: BTreeSet<(u32, u32)>,
    ended: BTreeSet<(u32, u32)>,
    /// Visible text delivered per part, labels included: what the record signs.
    delivered: BTreeMap<(u32, u32), String>,
}

impl StreamLabels {
    fn new(text: TextLabels) -> Self {
        Self {
            text,
            started: BTreeSet::new(),
            ended: BTreeSet::new(),
            delivered: BTreeMap::new(),
        }
    }

    fn delivered_text(&self) -> String {
        self.delivered.values().map(String::as_str).collect()
    }

    /// `text` (a repeat of part `at`) with the labels that part received.
    fn labeled(&self, at: (u32, u32), text: &str) -> String {
        let Some((label, _)) = &self.text.explicit else {
            return text.to_string();
        };
        let mut s = String::with_capacity(text.len() + 2 * label.len() + 2);
        if self.started.contains(&at) {
            s.push_str(label);
            s.push('\n');
        }
        s.push_str(text);
        if self.ended.contains(&at) {
            s.push('\n');
            s.push_str(label);
        }
        s
    }
}

impl ResponsesCodec {
    pub fn new(extras: Extras) -> Self {
        Self {
            extras,
            repeats: 0,
            response: Value::Null,
            items: BTreeMap::new(),
            last_out: 0,
            added: 0,
            labels: None,
            parts: BTreeMap::new(),
            template: None,
        }
    }

    /// The text to repeat for part `at`, whose repeat read `read` and was judged alone into
    /// `judged`: the part as its deltas were sent when the repeat is the text they spelled.
    /// The deltas are judged joined with the other parts (`delta_channel`), so a redaction
    /// across two parts masks a share the repeat alone would not.
    fn as_sent<'t>(&'t self, at: (u32, u32), read: Option<&str>, judged: &'t str) -> &'t str {
        match (self.parts.get(&at), read) {
            (Some((spelled, sent)), Some(r)) if spelled == r => sent,
            _ => judged,
        }
    }

    /// An `output_text.delta` that shenhe adds (a label), for part `at`.
    fn label_delta(&mut self, at: (u32, u32), delta: &str) -> Bytes {
        let item_id = self
            .items
            .get(&at.0)
            .and_then(|i| i.get("id"))
            .cloned()
            .unwrap_or(Value::Null);
        let seq = self.next_sequence();
        self.grow(at.0, at.1, K_TEXT, delta);
        sse_named(
            "response.output_text.delta",
            &json!({"type": "response.output_text.delta", "item_id": item_id, "output_index": at.0,
                "content_index": at.1, "delta": delta, "logprobs": [], "sequence_number": seq}),
        )
    }

    /// The end label for part `at`, once, if the part delivered text.
    fn end_label(&mut self, at: (u32, u32)) -> Option<Bytes> {
        let l = self.labels.as_mut()?;
        let (label, pos) = l.text.explicit.clone()?;
        let has_text = l.delivered.get(&at).is_some_and(|t| !t.is_empty());
        if !matches!(pos, Position::End | Position::Both) || !has_text || !l.ended.insert(at) {
            return None;
        }
        let t = format!("\n{label}");
        l.delivered.entry(at).or_default().push_str(&t);
        crate::label::record("text", "explicit", "ok");
        Some(self.label_delta(at, &t))
    }

    /// The signed record over everything delivered, once.
    fn seal(&mut self) -> Option<Value> {
        let l = self.labels.as_mut()?;
        let explicit_used = !l.started.is_empty() || !l.ended.is_empty();
        let aigc = l.text.seal(&l.delivered_text(), explicit_used)?;
        Some(aigc_value(&aigc))
    }

    /// The number for an event shenhe adds now.
    fn next_sequence(&mut self) -> u64 {
        self.last_out += 1;
        self.added += 1;
        self.last_out
    }

    /// The number an upstream event goes out with, if it has one.
    fn shifted(&self, event: &Event) -> Option<u64> {
        Some(event.seq? + self.added)
    }

    /// The new number of an upstream event whose number must change (shenhe added events).
    fn renumbered(&self, event: &Event) -> Option<u64> {
        self.shifted(event).filter(|_| self.added > 0)
    }

    /// The response as delivered so far, with `status` and what ended it.
    fn snapshot(&self, status: &str, details: Value) -> Value {
        let mut r = match &self.response {
            Value::Object(_) => self.response.clone(),
            _ => json!({"id": "resp_shenhe", "object": "response", "created_at": 0, "model": null}),
        };
        r["status"] = json!(status);
        r["incomplete_details"] = details;
        r["output"] = Value::Array(
            self.items
                .values()
                .cloned()
                .map(|mut i| {
                    if i.get("status").is_some_and(|s| s == "in_progress") {
                        i["status"] = json!("incomplete");
                    }
                    i
                })
                .collect(),
        );
        r
    }

    /// Append delivered delta text to the item it belongs to.
    fn grow(&mut self, output: u32, part: u32, kind: u32, text: &str) {
        let Some(item) = self.items.get_mut(&output) else {
            return;
        };
        let slot = match kind {
            K_TEXT | K_REASONING => item
                .get_mut("content")
                .and_then(|c| c.get_mut(part as usize))
                .and_then(|p| p.get_mut("text")),
            K_REFUSAL => item
                .get_mut("content")
                .and_then(|c| c.get_mut(part as usize))
                .and_then(|p| p.get_mut("refusal")),
            K_SUMMARY => item
                .get_mut("summary")
                .and_then(|c| c.get_mut(part as usize))
                .and_then(|p| p.get_mut("text")),
            _ => {
                if item.get("arguments").is_some() {
                    item.get_mut("arguments")
                } else {
                    item.get_mut("input")
                }
            }
        };
        if let Some(Value::String(s)) = slot {
            s.push_str(text);
        }
    }
}

/// The delta kind, the field holding the delta, and whether the index is `summary_index`.
fn delta_kind(ty: &str) -> Option<(u32, bool)> {
    Some(match ty {
        "response.output_text.delta" => (K_TEXT, false),
        "response.refusal.delta" => (K_REFUSAL, false),
        "response.reasoning_text.delta" => (K_REASONING, false),
        "response.reasoning_summary_text.delta" => (K_SUMMARY, true),
        "response.function_call_arguments.delta" | "response.custom_tool_call_input.delta" => {
            (K_ARGS, false)
        }
        _ => return None,
    })
}

/// Where whole repeated texts sit in an event of this type (patterns below the event).
fn repeated_fields(ty: &str) -> Vec<String> {
    let under = |prefix: &str| -> Vec<String> {
        ITEM_TEXT.iter().map(|p| format!("{prefix}.{p}")).collect()
    };
    match ty {
        "response.output_text.done"
        | "response.reasoning_text.done"
        | "response.reasoning_summary_text.done" => vec!["text".into()],
        "response.refusal.done" => vec!["refusal".into()],
        "response.function_call_arguments.done" => vec!["arguments".into()],
        "response.custom_tool_call_input.done" => vec!["input".into()],
        "response.content_part.added"
        | "response.content_part.done"
        | "response.reasoning_summary_part.added"
        | "response.reasoning_summary_part.done" => {
            vec!["part.text".into(), "part.refusal".into()]
        }
        "response.output_item.added" | "response.output_item.done" => under("item"),
        t if t.starts_with("response.") && !t.contains(".delta") => {
            let mut v = under("response.output.*");
            v.push("response.output_text".into());
            v
        }
        _ => Vec::new(),
    }
}

fn u32_of(v: &Value, k: &str) -> u32 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0) as u32
}

/// The (output, part) whose labels a repeated text at `path` of an event of type `ty` carries:
/// the text of a part as it is repeated when the part, its item or the response is done.
/// `None` for any other text (a delta, a summary, arguments).
fn labeled_part(ty: &str, path: &[Seg], v: &Value) -> Option<(u32, u32)> {
    match (ty, path) {
        ("response.output_text.done", [Seg::Key(k)]) if k == "text" => {
            Some((u32_of(v, "output_index"), u32_of(v, "content_index")))
        }
        ("response.content_part.done", [Seg::Key(a), Seg::Key(b)])
            if a == "part" && b == "text" =>
        {
            Some((u32_of(v, "output_index"), u32_of(v, "content_index")))
        }
        ("response.output_item.done", [Seg::Key(a), Seg::Key(b), Seg::Index(i), Seg::Key(c)])
            if a == "item" && b == "content" && c == "text" =>
        {
            Some((u32_of(v, "output_index"), *i as u32))
        }
        (
            _,
            [Seg::Key(r), Seg::Key(o), Seg::Index(oi), Seg::Key(c), Seg::Index(i), Seg::Key(t)],
        ) if r == "response" && o == "output" && c == "content" && t == "text" => {
            Some((*oi as u32, *i as u32))
        }
        _ => None,
    }
}

/// A text delta as read without a tree: what `parse_tree` takes from one, nothing more.
#[derive(serde::Deserialize)]
struct WireDelta<'a> {
    #[serde(borrow, rename = "type")]
    ty: Cow<'a, str>,
    #[serde(default)]
    output_index: Option<u64>,
    #[serde(default)]
    content_index: Option<u64>,
    #[serde(default)]
    summary_index: Option<u64>,
    #[serde(borrow, default, deserialize_with = "super::json::borrowed_text")]
    delta: Option<Cow<'a, str>>,
    #[serde(default)]
    sequence_number: Option<u64>,
}

impl ResponsesCodec {
    /// A text delta (most events of a stream) read into a small borrowed struct, without a JSON
    /// tree, as `parse_tree` reads it. `None` for any other event, and for a delta the tree
    /// path must read: configured extra fields, a field of another type.
    fn quick_delta(&mut self, ev: &RawEvent) -> Option<Parsed<Event>> {
        // A named event that is no delta (the large ones that repeat the whole text among
        // them) goes to the tree at once, not read twice.
        let named_delta = ev.event.as_deref().map(delta_kind);
        if !self.extras.patterns.is_empty() || named_delta.is_some_and(|k| k.is_none()) {
            return None;
        }
        let data = ev.data.as_deref()?;
        if let Some(p) = self.repeat(ev, data) {
            return Some(p);
        }
        // Any error (a field of another type, a duplicate of one read here) is the tree's to
        // report or to read.
        let w: WireDelta = serde_json::from_str(data).ok()?;
        let (kind, summary) = delta_kind(&w.ty)?;
        // As `u32_of` reads them.
        let output = w.output_index.unwrap_or(0) as u32;
        let part = if summary {
            w.summary_index
        } else {
            w.content_index
        }
        .unwrap_or(0) as u32;
        let mut paths = Vec::new();
        let mut pieces = Vec::new();
        if let Some(d) = w.delta.filter(|d| !d.is_empty()) {
            // The next deltas of this part differ from this one in their text and number.
            let template = Template::of(data, &d).and_then(|t| match w.sequence_number {
                Some(_) => t.with_counter("sequence_number"),
                None => Some(t),
            });
            if let Some(template) = template {
                self.template = Some(RepeatedDelta {
                    template,
                    field: ev.event.clone(),
                    ty: w.ty.to_string(),
                    output,
                    part,
                    kind,
                });
            }
            paths.push(vec![Seg::Key("delta".into())]);
            pieces.push(TextPiece {
                channel: delta_channel(output, kind, part),
                text: d.into_owned(),
            });
        }
        Some(Parsed {
            event: Some(Event {
                name: ev.event.clone(),
                ty: w.ty.into_owned(),
                json: Value::Null,
                raw: Some(data.into()),
                seq: w.sequence_number,
                kind: Kind::Delta { output, part, kind },
                paths,
            }),
            pieces,
            terminal: false,
        })
    }

    /// A text delta that repeats the template but for its text and number (see [`Template`]).
    fn repeat(&self, ev: &RawEvent, data: &str) -> Option<Parsed<Event>> {
        let r = self.template.as_ref()?;
        if ev.event != r.field {
            return None;
        }
        let f = r.template.fill(data)?;
        let (mut paths, mut pieces) = (Vec::new(), Vec::new());
        if !f.text.is_empty() {
            paths.push(vec![Seg::Key("delta".into())]);
            pieces.push(TextPiece {
                channel: delta_channel(r.output, r.kind, r.part),
                text: f.text.to_owned(),
            });
        }
        Some(Parsed {
            event: Some(Event {
                name: ev.event.clone(),
                ty: r.ty.clone(),
                json: Value::Null,
                raw: Some(data.into()),
                seq: f.counter,
                kind: Kind::Delta {
                    output: r.output,
                    part: r.part,
                    kind: r.kind,
                },
                paths,
            }),
            pieces,
            terminal: false,
        })
    }

    /// Any event, read as a tree.
    fn parse_tree(&mut self, ev: &RawEvent) -> Result<Parsed<Event>, CodecError> {
        let json = match event_data(ev)? {
            EventData::None => return Ok(Parsed::passthrough()),
            EventData::Done => return Ok(Parsed::terminal()),
            EventData::Json(v) => v,
        };
        let ty = json["type"].as_str().unwrap_or_default().to_string();
        if ty == "error" {
            return Ok(Parsed::passthrough());
        }
        let output = u32_of(&json, "output_index");
        let mut paths = Vec::new();
        let mut pieces = Vec::new();
        let kind = if let Some((kind, summary)) = delta_kind(&ty) {
            let part = u32_of(
                &json,
                if summary {
                    "summary_index"
                } else {
                    "content_index"
                },
            );
            match json.get("delta") {
                Some(Value::String(s)) if !s.is_empty() => {
                    paths.push(vec![Seg::Key("delta".into())]);
                    pieces.push(TextPiece {
                        channel: delta_channel(output, kind, part),
                        text: s.clone(),
                    });
                }
                Some(Value::String(_)) | Some(Value::Null) | None => {}
                Some(_) => return Err(CodecError("`delta` is not a string".into())),
            }
            Kind::Delta { output, part, kind }
        } else {
            match ty.as_str() {
                "response.created" | "response.in_progress" | "response.queued" => Kind::Lifecycle,
                "response.output_item.added" => Kind::ItemAdded { output },
                "response.output_item.done" => Kind::ItemDone { output },
                "response.content_part.added" => Kind::PartAdded {
                    output,
                    part: u32_of(&json, "content_index"),
                    summary: false,
                },
                "response.reasoning_summary_part.added" => Kind::PartAdded {
                    output,
                    part: u32_of(&json, "summary_index"),
                    summary: true,
                },
                _ => Kind::Other,
            }
        };
        let mut repeated = Vec::new();
        for p in repeated_fields(&ty) {
            find_strings(
                &json,
                &parse_pattern(&p).expect("static pattern"),
                &mut repeated,
            );
        }
        for f in repeated {
            if f.text.is_empty() {
                continue;
            }
            self.repeats += 1;
            paths.push(f.path);
            pieces.push(TextPiece {
                channel: (self.repeats, REPEAT_FIELD),
                text: f.text,
            });
        }
        for (k, pat) in self.extras.patterns.iter().enumerate() {
            let mut found = Vec::new();
            find_strings(&json, pat, &mut found);
            for f in found {
                if f.text.is_empty() {
                    continue;
                }
                let key: ChannelKey = (0, EXTRA_BASE + k as u32);
                paths.push(f.path);
                pieces.push(TextPiece {
                    channel: key,
                    text: f.text,
                });
            }
        }
        let terminal = matches!(
            ty.as_str(),
            "response.completed" | "response.incomplete" | "response.failed"
        );
        Ok(Parsed {
            event: Some(Event {
                name: ev.event.clone(),
                seq: json.get("sequence_number").and_then(Value::as_u64),
                ty,
                json,
                raw: None,
                kind,
                paths,
            }),
            pieces,
            terminal,
        })
    }
}

impl EventCodec for ResponsesCodec {
    type Event = Event;

    fn parse(&mut self, ev: &RawEvent) -> Result<Parsed<Event>, CodecError> {
        let parsed = match self.quick_delta(ev) {
            Some(delta) => delta,
            None => self.parse_tree(ev)?,
        };
        if let Some(Event {
            kind:
                Kind::Delta {
                    output,
                    part,
                    kind: K_TEXT,
                },
            ..
        }) = &parsed.event
        {
            if let Some(p) = parsed.pieces.first() {
                let slot = self.parts.entry((*output, *part)).or_default();
                slot.0.push_str(&p.text);
            }
        }
        Ok(parsed)
    }

    fn on_release(
        &mut self,
        event: &Event,
        texts: &[String],
        before: &mut Vec<Bytes>,
        _after: &mut Vec<Bytes>,
    ) {
        // The event as delivered (rewritten texts in place).
        let delivered = || {
            let mut v = event.json.clone();
            for (path, text) in event.paths.iter().zip(texts) {
                paths::set_string(&mut v, path, text.clone());
            }
            v
        };
        match &event.kind {
            Kind::Lifecycle => {
                let mut r = delivered()["response"].clone();
                if let Some(o) = r.as_object_mut() {
                    o.remove("output");
                }
                self.response = r;
            }
            Kind::ItemAdded { output } | Kind::ItemDone { output } => {
                let item = delivered()["item"].clone();
                if item.is_object() {
                    self.items.insert(*output, item);
                }
            }
            Kind::PartAdded {
                output,
                part,
                summary,
            } => {
                let p = delivered()["part"].clone();
                let field = if *summary { "summary" } else { "content" };
                if let Some(item) = self.items.get_mut(output) {
                    if !item[field].is_array() {
                        item[field] = json!([]);
                    }
                    if let Some(parts) = item[field].as_array_mut() {
                        let at = *part as usize;
                        if at < parts.len() {
                            parts[at] = p;
                        } else {
                            parts.push(p);
                        }
                    }
                }
            }
            Kind::Delta { output, part, kind } => {
                let at = (*output, *part);
                if *kind == K_TEXT {
                    let start = self.labels.as_mut().and_then(|l| {
                        let (label, pos) = l.text.explicit.clone()?;
                        if !matches!(pos, Position::Start | Position::Both) || !l.started.insert(at)
                        {
                            return None;
                        }
                        let t = format!("{label}\n");
                        l.delivered.entry(at).or_default().push_str(&t);
                        Some(t)
                    });
                    if let Some(t) = start {
                        crate::label::record("text", "explicit", "ok");
                        before.push(self.label_delta(at, &t));
                    }
                    if let (Some(l), Some(t)) = (self.labels.as_mut(), texts.first()) {
                        l.delivered.entry(at).or_default().push_str(t);
                    }
                }
                if let Some(t) = texts.first() {
                    self.grow(*output, *part, *kind, t);
                    if *kind == K_TEXT {
                        let slot = self.parts.entry(at).or_default();
                        slot.1.push_str(t);
                    }
                }
            }
            Kind::Other => {
                if event.json["type"] == "response.output_text.done" {
                    let at = (
                        u32_of(&event.json, "output_index"),
                        u32_of(&event.json, "content_index"),
                    );
                    if let Some(b) = self.end_label(at) {
                        before.push(b);
                    }
                }
            }
        }
        if let Some(n) = self.shifted(event) {
            self.last_out = self.last_out.max(n);
        }
    }

    fn amend(&mut self, event: &Event, texts: &[String]) -> Option<Bytes> {
        let shift = self.renumbered(event);
        let ty = event.ty.as_str();
        let final_event =
            self.labels.is_some() && matches!(ty, "response.completed" | "response.incomplete");
        // Most events (the text deltas) have nothing to amend: no copy of them is made.
        if shift.is_none()
            && !final_event
            && event
                .paths
                .iter()
                .all(|p| labeled_part(ty, p, &event.json).is_none())
        {
            return None;
        }
        let mut v = event.tree();
        let mut changed = false;
        if let Some(n) = shift {
            v["sequence_number"] = json!(n);
            changed = true;
        }
        for (path, text) in event.paths.iter().zip(texts) {
            let Some(at) = labeled_part(ty, path, &v) else {
                paths::set_string(&mut v, path, text.clone());
                continue;
            };
            let read = paths::get(&v, path).and_then(Value::as_str);
            let sent = self.as_sent(at, read, text);
            let labeled = match &self.labels {
                Some(l) => l.labeled(at, sent),
                None => sent.to_string(),
            };
            changed |= labeled != *text;
            paths::set_string(&mut v, path, labeled);
        }
        let Some(l) = self.labels.as_ref() else {
            return changed.then(|| event.encode(&v));
        };
        if final_event {
            if let Some(r) = v.get_mut("response") {
                if r.get("output_text").is_some() {
                    r["output_text"] = json!(l.delivered_text());
                }
            }
            let aigc = self.seal();
            if let (Some(a), Some(r)) = (aigc, v.get_mut("response")) {
                r[crate::label::CHAT_AIGC_FIELD] = a;
                changed = true;
            }
        }
        if !changed {
            return None;
        }
        Some(event.encode(&v))
    }

    fn render(&self, event: &Event, texts: &[String]) -> Bytes {
        let mut v = event.tree();
        if let Some(n) = self.renumbered(event) {
            v["sequence_number"] = json!(n);
        }
        for (path, text) in event.paths.iter().zip(texts) {
            paths::set_string(&mut v, path, text.clone());
            // Log-probabilities echo the original text.
            if let Some(lp) = v.get_mut("logprobs") {
                *lp = json!([]);
            }
        }
        event.encode(&v)
    }

    fn stop(&mut self, _category: &str, _notice: Option<&str>) -> Vec<Bytes> {
        // What was delivered before the stop is generated content: it is labeled like any other.
        let parts: Vec<(u32, u32)> = self
            .labels
            .as_ref()
            .map(|l| l.delivered.keys().copied().collect())
            .unwrap_or_default();
        let mut out: Vec<Bytes> = parts
            .into_iter()
            .filter_map(|at| self.end_label(at))
            .collect();
        let mut response = self.snapshot("incomplete", json!({"reason": "content_filter"}));
        if let Some(a) = self.seal() {
            response[crate::label::CHAT_AIGC_FIELD] = a;
        }
        let seq = self.next_sequence();
        out.push(sse_named(
            "response.incomplete",
            &json!({"type": "response.incomplete", "sequence_number": seq, "response": response}),
        ));
        out
    }

    fn fault(&mut self, message: &str) -> Vec<Bytes> {
        let seq = self.next_sequence();
        vec![sse_named(
            "error",
            &json!({"type": "error", "code": "upstream_error", "message": message, "param": null, "sequence_number": seq}),
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Read = (
        Vec<TextPiece>,
        Option<(
            Option<String>,
            String,
            Option<Box<str>>,
            Option<u64>,
            Kind,
            Vec<Vec<Seg>>,
        )>,
    );

    fn read(c: &mut ResponsesCodec, ev: &RawEvent) -> Read {
        let p = c.parse(ev).unwrap();
        let event = p
            .event
            .map(|e| (e.name, e.ty, e.raw, e.seq, e.kind, e.paths));
        (p.pieces, event)
    }

    proptest::proptest! {
        /// A codec that reads repeated deltas from its template reads every event as one that
        /// reads each in full.
        #[test]
        fn template_reads_equal_full_reads(
            events in proptest::collection::vec(
                (0usize..5, 0u32..2, 0usize..2, proptest::option::of(0u64..2000), proptest::bool::ANY),
                1..14,
            )
        ) {
            const TEXTS: [&str; 5] = ["tok ", "", "你好，", "a\nb", "q\"x"];
            let mut with = ResponsesCodec::new(Extras::default());
            let mut without = ResponsesCodec::new(Extras::default());
            for (text, part, ty, seq, named) in events {
                let ty = ["response.output_text.delta", "response.reasoning_text.delta"][ty];
                let mut v = json!({"type": ty, "item_id": "m", "output_index": 0, "content_index": part, "delta": TEXTS[text]});
                if let Some(n) = seq {
                    v["sequence_number"] = json!(n);
                }
                let data = v.to_string();
                let ev = RawEvent {
                    raw: Bytes::from(format!("data: {data}\n\n")),
                    data: Some(data),
                    event: named.then(|| ty.to_string()),
                };
                without.template = None;
                let a = read(&mut with, &ev);
                let b = read(&mut without, &ev);
                proptest::prop_assert_eq!(a, b);
                proptest::prop_assert_eq!(&with.parts, &without.parts);
            }
        }
    }

    #[test]
    fn prompt_covers_input_items_and_instructions() {
        let req = json!({"instructions": "ins", "input": [
            {"role": "user", "content": "plain"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "part"}, {"type": "input_image", "image_url": "u"}]},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{\"a\":1}"},
            {"type": "function_call_output", "call_id": "c", "output": "out"},
        ]});
        let texts: Vec<String> = prompt_texts(&req)
            .unwrap()
            .into_iter()
            .map(|f| f.text)
            .collect();
        for t in ["ins", "plain", "part", "{\"a\":1}", "out"] {
            assert!(texts.iter().any(|x| x == t), "{t} missing from {texts:?}");
        }
        assert_eq!(prompt_texts(&json!({"input": "s"})).unwrap()[0].text, "s");
        assert!(prompt_texts(&json!({"input": 3})).is_err());
    }

    #[test]
    fn done_events_get_their_own_channels() {
        let mut c = ResponsesCodec::new(Extras::default());
        let ev = |v: Value| RawEvent {
            raw: sse_named(v["type"].as_str().unwrap(), &v),
            data: Some(v.to_string()),
            event: v["type"].as_str().map(str::to_string),
        };
        let d = c
            .parse(&ev(json!({"type": "response.output_text.delta", "output_index": 1, "content_index": 2, "delta": "ab", "sequence_number": 5})))
            .unwrap();
        // Output text deltas of every part and item share one channel.
        assert_eq!(d.pieces[0].channel, (0, K_TEXT * KIND_STRIDE));
        let done = c
            .parse(&ev(json!({"type": "response.output_text.done", "output_index": 1, "content_index": 2, "text": "ab", "sequence_number": 6})))
            .unwrap();
        assert_eq!(done.pieces[0].channel.1, REPEAT_FIELD);
        // Both reach the client; the stop's event is numbered after the last one released.
        let (mut before, mut after) = (Vec::new(), Vec::new());
        for p in [d, done] {
            let texts: Vec<String> = p.pieces.iter().map(|t| t.text.clone()).collect();
            c.on_release(&p.event.unwrap(), &texts, &mut before, &mut after);
        }
        let stop = String::from_utf8(c.stop("A1d", None).concat()).unwrap();
        assert!(stop.contains("\"reason\":\"content_filter\""), "{stop}");
        assert!(stop.contains("\"sequence_number\":7"), "{stop}");
    }

    #[test]
    fn deltas_read_without_a_tree_equal_the_tree() {
        let mut c = ResponsesCodec::new(Extras::default());
        let ev = |data: &str| RawEvent {
            raw: Bytes::new(),
            data: Some(data.to_string()),
            event: None,
        };
        let deltas = [
            r#"{"type":"response.output_text.delta","output_index":1,"content_index":2,"delta":"a\nb","sequence_number":5}"#,
            r#" {"sequence_number":9,"delta":"","type":"response.output_text.delta"} "#,
            r#"{"type":"response.reasoning_summary_text.delta","output_index":3,"summary_index":4,"content_index":7,"delta":"s"}"#,
            r#"{"type":"response.function_call_arguments.delta","output_index":0,"delta":"{}","item_id":"x","obfuscation":"q"}"#,
            r#"{"type":"response.refusal.delta","output_index":5000000000,"delta":null}"#,
        ];
        for data in deltas {
            let quick = c.quick_delta(&ev(data)).expect(data);
            let tree = c.parse_tree(&ev(data)).unwrap();
            assert_eq!(quick.pieces, tree.pieces, "{data}");
            assert_eq!(quick.terminal, tree.terminal);
            let (q, t) = (quick.event.unwrap(), tree.event.unwrap());
            assert_eq!(
                (&q.ty, q.seq, &q.kind, &q.paths),
                (&t.ty, t.seq, &t.kind, &t.paths)
            );
            assert_eq!(q.tree(), t.json, "{data}");
            // Rewritten, it renders alike.
            let texts = vec!["X".to_string(); q.paths.len()];
            assert_eq!(c.render(&q, &texts), c.render(&t, &texts));
        }
        // Not deltas, not strict, or a delta that is not a string: the tree reads them.
        for data in [
            r#"{"type":"response.created","response":{}}"#,
            r#"{"type":"response.output_text.delta","delta":"a","delta":"b"}"#,
            r#"{"type":"response.output_text.delta","delta":5}"#,
            "[DONE]",
        ] {
            assert!(c.quick_delta(&ev(data)).is_none(), "{data}");
        }
        let mut with_extras = ResponsesCodec::new(Extras::parse(&["x".into()]).unwrap());
        assert!(with_extras.quick_delta(&ev(deltas[0])).is_none());
        // Named events: a delta's name lets it through, any other name sends it to the tree.
        let named = |name: &str| RawEvent {
            event: Some(name.into()),
            ..ev(deltas[0])
        };
        assert!(c
            .quick_delta(&named("response.output_text.delta"))
            .is_some());
        assert!(c.quick_delta(&named("response.completed")).is_none());
    }
}

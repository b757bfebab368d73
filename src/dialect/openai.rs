//! OpenAI Chat Completions and Completions, and the many servers that speak them (vLLM, Ollama,
//! llama.cpp, DeepSeek, Qwen): where the text is, how a choice is refused, how a stream ends.

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::capture::{capture, Leaf};
use super::generation::TextApi;
use super::generation::{event_data, EventData};
use super::labels::{aigc_value, TextLabels};
use super::paths::{self, find_strings, parse_pattern, Found, Pat, Seg, StaticPatterns};
use super::quick::{self, LabelRule, QuickAnswer, QuickPrompt};
use crate::dialect::error::{ApiError, ErrorKind};
use crate::label::Position;
use crate::stream::guard::{ChannelKey, CodecError, EventCodec, Parsed, TextPiece};
use crate::stream::sse::RawEvent;
use crate::stream::template::Template;

/// Chat or legacy completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Chat,
    Completions,
}

/// Prompt fields of a chat request: every message of every role, its name, tool-call arguments
/// and tool results (tool results are `role: tool` messages, so `content` covers them).
const CHAT_PROMPT: &[&str] = CHAT_REQUEST_READ.split_at(7).0;
/// The prompt fields, then what the fast read of a request also takes (see `quick`).
const CHAT_REQUEST_READ: &[&str] = &[
    "messages.*.content",
    "messages.*.content.*.text",
    "messages.*.name",
    "messages.*.tool_calls.*.function.arguments",
    "messages.*.function_call.arguments",
    "messages.*.reasoning_content",
    "messages.*.refusal",
    "messages",
    "model",
    "response_format.type",
];
/// What the fast read of a legacy completions request takes.
const COMPLETIONS_REQUEST_READ: &[&str] = &["prompt", "prompt.*", "model", "response_format.type"];
/// What the fast read of a whole chat answer takes: the visible text first, then the other
/// generated fields (`CHAT_FIELDS` under `message`, and tool-call arguments), then the
/// implicit label's slot.
const CHAT_ANSWER_READ: &[&str] = &[
    "choices.*.message.content",
    "choices.*.message.reasoning_content",
    "choices.*.message.reasoning",
    "choices.*.message.refusal",
    "choices.*.message.function_call.arguments",
    "choices.*.message.tool_calls.*.function.arguments",
    "aigc",
];
/// The same for a legacy completions answer.
const COMPLETIONS_ANSWER_READ: &[&str] = &["choices.*.text", "aigc"];

/// Completion fields of one choice: (channel field id, path below the choice object).
/// In a stream the fields sit under `delta`, in a whole response under `message`.
const CHAT_FIELDS: &[(u32, &[&str])] = &[
    (0, &["content"]),
    (1, &["reasoning_content"]),
    (2, &["reasoning"]),
    (3, &["refusal"]),
    (4, &["function_call", "arguments"]),
];
/// Each choice of a chunk: its index, and whether the chunk finishes it.
type ChoiceNotes = Vec<(u32, bool)>;
/// Tool-call arguments: field id is this base plus the tool call's own index.
const TOOL_ARGS_BASE: u32 = 100;
/// Configured extra fields: field id is this base plus the pattern's position.
const EXTRA_BASE: u32 = 10_000;
/// Completions text channel.
const TEXT_FIELD: u32 = 5;

/// Configured extra text fields, parsed once.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    pub patterns: Vec<Vec<Pat>>,
}

impl Extras {
    pub fn parse(fields: &[String]) -> Result<Self, String> {
        Ok(Self {
            patterns: fields
                .iter()
                .map(|f| parse_pattern(f))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// The prompt texts of a request; requests whose prompt shenhe cannot read are refused.
pub fn prompt_texts(flavor: Flavor, req: &Value) -> Result<Vec<Found>, ApiError> {
    if !req.is_object() {
        return Err(ApiError::new(
            ErrorKind::BadJson,
            "the request body must be a JSON object",
        ));
    }
    let mut out = Vec::new();
    match flavor {
        Flavor::Chat => {
            if !req["messages"].is_array() {
                return Err(
                    ApiError::new(ErrorKind::BadRequest, "`messages` must be an array")
                        .with_param("messages"),
                );
            }
            static PATTERNS: StaticPatterns = StaticPatterns::new(CHAT_PROMPT, "");
            PATTERNS.find(req, &mut out);
        }
        Flavor::Completions => match &req["prompt"] {
            Value::String(s) => out.push(Found {
                path: vec![Seg::Key("prompt".into())],
                text: s.clone(),
            }),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(Found {
                            path: vec![Seg::Key("prompt".into()), Seg::Index(i)],
                            text: s.clone(),
                        }),
                        // Token ids cannot be judged as text: refuse rather than pass unread.
                        _ => {
                            return Err(ApiError::new(
                                ErrorKind::BadRequest,
                                "token-id prompts cannot be moderated; send the prompt as text",
                            )
                            .with_param("prompt"))
                        }
                    }
                }
            }
            Value::Null => {}
            _ => {
                return Err(ApiError::new(
                    ErrorKind::BadRequest,
                    "`prompt` must be a string or an array of strings",
                )
                .with_param("prompt"))
            }
        },
    }
    Ok(out)
}

/// Whether the client asked for a stream.
pub fn wants_stream(req: &Value) -> bool {
    req.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

/// Whether the client asked for JSON output (an explicit label would break it).
pub fn json_mode(req: &Value) -> bool {
    super::json::at(req, &["response_format", "type"])
        .and_then(Value::as_str)
        .is_some_and(is_json_format)
}

/// The fast read of a request (see `quick`): `None` sends it down the tree path, which also
/// gives every error a request deserves.
pub fn quick_prompt(flavor: Flavor, body: &[u8]) -> Option<QuickPrompt<'_>> {
    static CHAT: StaticPatterns = StaticPatterns::new(CHAT_REQUEST_READ, "");
    static COMPLETIONS: StaticPatterns = StaticPatterns::new(COMPLETIONS_REQUEST_READ, "");
    if !quick::is_object(body) {
        return None;
    }
    let mut q = QuickPrompt::default();
    match flavor {
        Flavor::Chat => {
            let prompt = CHAT_PROMPT.len();
            let mut messages = false;
            for c in capture(body, CHAT.parsed())? {
                let stars = c.stars();
                match (c.pattern, c.leaf) {
                    (p, Leaf::Str(s)) if p < prompt => q.push(s, &CHAT.parsed()[p], stars),
                    (p, Leaf::Array) if p == prompt => messages = true,
                    (p, Leaf::Str(s)) if p == prompt + 1 => q.model = Some(s),
                    (p, Leaf::Str(s)) if p == prompt + 2 => q.json_mode = is_json_format(&s),
                    _ => {}
                }
            }
            // Without a `messages` array the tree path refuses the request.
            messages.then_some(q)
        }
        Flavor::Completions => {
            for c in capture(body, COMPLETIONS.parsed())? {
                let stars = c.stars();
                match (c.pattern, c.leaf) {
                    (p @ (0 | 1), Leaf::Str(s)) => q.push(s, &COMPLETIONS.parsed()[p], stars),
                    (0, Leaf::Array | Leaf::Null) => {}
                    // Token ids, or a `prompt` of another type: the tree path refuses them.
                    (0 | 1, _) => return None,
                    (2, Leaf::Str(s)) => q.model = Some(s),
                    (3, Leaf::Str(s)) => q.json_mode = is_json_format(&s),
                    _ => {}
                }
            }
            Some(q)
        }
    }
}

/// The fast read of a whole answer (see `quick`): `None` when it needs the tree (content parts,
/// an `aigc` member already there, a body that is not an object).
pub fn quick_answer<'a>(
    flavor: Flavor,
    body: &'a [u8],
    extras: &Extras,
) -> Option<QuickAnswer<'a>> {
    static CHAT: StaticPatterns = StaticPatterns::new(CHAT_ANSWER_READ, "");
    static COMPLETIONS: StaticPatterns = StaticPatterns::new(COMPLETIONS_ANSWER_READ, "");
    let own = match flavor {
        Flavor::Chat => CHAT.parsed(),
        Flavor::Completions => COMPLETIONS.parsed(),
    };
    let aigc = own.len() - 1;
    let patterns = quick::patterns(own, &extras.patterns);
    let (mut texts, mut visible) = (Vec::new(), Vec::new());
    for c in capture(body, &patterns)? {
        match (c.pattern, c.leaf) {
            (0, Leaf::Str(s)) => visible.push((c.span?, s)),
            // Content parts are labeled and signed on the tree path.
            (0, Leaf::Array) => return None,
            (p, _) if p == aigc => return None,
            (p, Leaf::Str(s)) if p > 0 => texts.push(s),
            _ => {}
        }
    }
    QuickAnswer::new(body, texts, visible, LabelRule::Each)
}

fn is_json_format(kind: &str) -> bool {
    matches!(kind, "json_object" | "json_schema")
}

/// A choice's text in a whole (non-streamed) response.
#[derive(Debug, Clone)]
pub struct ChoiceText {
    pub choice: u32,
    pub field: u32,
    pub found: Found,
}

/// Every completion text of a whole response, per choice and field.
pub fn response_texts(flavor: Flavor, resp: &Value, extras: &Extras) -> Vec<ChoiceText> {
    let mut out = Vec::new();
    let Some(choices) = resp.get("choices").and_then(Value::as_array) else {
        return out;
    };
    for (pos, c) in choices.iter().enumerate() {
        let index = c.get("index").and_then(Value::as_u64).unwrap_or(pos as u64) as u32;
        let base = vec![Seg::Key("choices".into()), Seg::Index(pos)];
        choice_texts(flavor, c, "message", &base, index, &mut out);
    }
    for (k, pat) in extras.patterns.iter().enumerate() {
        let mut found = Vec::new();
        find_strings(resp, pat, &mut found);
        for f in found {
            let choice = choice_of(&f.path);
            out.push(ChoiceText {
                choice,
                field: EXTRA_BASE + k as u32,
                found: f,
            });
        }
    }
    out
}

fn choice_of(path: &[Seg]) -> u32 {
    match path {
        [Seg::Key(k), Seg::Index(i), ..] if k == "choices" => *i as u32,
        _ => 0,
    }
}

fn choice_texts(
    flavor: Flavor,
    c: &Value,
    holder: &str,
    base: &[Seg],
    index: u32,
    out: &mut Vec<ChoiceText>,
) {
    let mut push = |field: u32, rel: &[&str], v: &Value| {
        if let Value::String(s) = v {
            let mut path = base.to_vec();
            path.extend(rel.iter().map(|k| Seg::Key((*k).to_string())));
            out.push(ChoiceText {
                choice: index,
                field,
                found: Found {
                    path,
                    text: s.clone(),
                },
            });
        }
    };
    match flavor {
        Flavor::Completions => push(TEXT_FIELD, &["text"], &c["text"]),
        Flavor::Chat => {
            let m = &c[holder];
            for (field, rel) in CHAT_FIELDS {
                // Look first, build the path only for a text that is there (the hot path of streams).
                let v = rel.iter().fold(m, |cur, k| &cur[*k]);
                if v.is_string() {
                    let keys: Vec<&str> =
                        std::iter::once(holder).chain(rel.iter().copied()).collect();
                    push(*field, &keys, v);
                }
            }
            if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                for (pos, call) in calls.iter().enumerate() {
                    let ti = call
                        .get("index")
                        .and_then(Value::as_u64)
                        .unwrap_or(pos as u64) as u32;
                    if let Value::String(s) = &call["function"]["arguments"] {
                        let mut path = base.to_vec();
                        path.extend([
                            Seg::Key(holder.into()),
                            Seg::Key("tool_calls".into()),
                            Seg::Index(pos),
                            Seg::Key("function".into()),
                            Seg::Key("arguments".into()),
                        ]);
                        out.push(ChoiceText {
                            choice: index,
                            field: TOOL_ARGS_BASE + ti,
                            found: Found {
                                path,
                                text: s.clone(),
                            },
                        });
                    }
                }
            }
        }
    }
}

/// Add the explicit label to every choice's visible text, except blocked choices and choices
/// without text (tool calls). Returns whether any label was added.
pub fn label_choices(
    flavor: Flavor,
    doc: &mut Value,
    blocked: &[u32],
    label: &str,
    pos: Position,
) -> bool {
    let Some(choices) = doc.get_mut("choices").and_then(Value::as_array_mut) else {
        return false;
    };
    let mut any = false;
    for (i, c) in choices.iter_mut().enumerate() {
        let index = c.get("index").and_then(Value::as_u64).unwrap_or(i as u64) as u32;
        if blocked.contains(&index) {
            continue;
        }
        let slot = match flavor {
            Flavor::Chat => super::json::at_mut(c, &["message", "content"]),
            Flavor::Completions => c.get_mut("text"),
        };
        if let Some(Value::String(text)) = slot {
            if !text.is_empty() {
                *text = crate::label::apply_explicit(text, label, pos);
                any = true;
            }
        }
    }
    any
}

/// The visible text a whole response delivers, choices in order: what the implicit label signs.
pub fn delivered_text(flavor: Flavor, doc: &Value) -> String {
    match flavor {
        Flavor::Chat => crate::label::chat_delivered_text(doc),
        Flavor::Completions => doc
            .get("choices")
            .and_then(Value::as_array)
            .map(|cs| cs.iter().filter_map(|c| c["text"].as_str()).collect())
            .unwrap_or_default(),
    }
}

/// OpenAI Chat Completions or Completions, seen by the shared moderated exchange.
#[derive(Debug, Clone, Copy)]
pub struct OpenAi(pub Flavor);

impl TextApi for OpenAi {
    type Codec = OpenAiCodec;

    fn prompt_texts(&self, req: &Value) -> Result<Vec<Found>, ApiError> {
        prompt_texts(self.0, req)
    }

    fn json_mode(&self, req: &Value) -> bool {
        json_mode(req)
    }

    fn quick_prompt<'a>(&self, body: &'a [u8]) -> Option<QuickPrompt<'a>> {
        quick_prompt(self.0, body)
    }

    fn quick_answer<'a>(&self, body: &'a [u8], extras: &Extras) -> Option<QuickAnswer<'a>> {
        quick_answer(self.0, body, extras)
    }

    fn codec(&self, extras: Extras, labels: Option<TextLabels>) -> OpenAiCodec {
        let codec = OpenAiCodec::new(self.0, extras);
        match labels {
            Some(l) => codec.with_labels(StreamLabels::new(l)),
            None => codec,
        }
    }

    fn stream_labels(&self) -> bool {
        true
    }

    fn response_texts(&self, doc: &Value, extras: &Extras) -> Vec<(u32, Found)> {
        response_texts(self.0, doc, extras)
            .into_iter()
            .map(|t| (t.choice, t.found))
            .collect()
    }

    fn refuse(&self, doc: &mut Value, unit: u32, refusal: &str) {
        refuse_choice(self.0, doc, unit, refusal)
    }

    fn label(&self, doc: &mut Value, label: &str, pos: Position, blocked: &[u32]) -> bool {
        label_choices(self.0, doc, blocked, label, pos)
    }

    fn delivered_text(&self, doc: &Value) -> String {
        delivered_text(self.0, doc)
    }
}

/// Replace a blocked choice of a whole response by the refusal, `finish_reason: content_filter`.
pub fn refuse_choice(flavor: Flavor, resp: &mut Value, choice: u32, refusal: &str) {
    let Some(choices) = resp.get_mut("choices").and_then(Value::as_array_mut) else {
        return;
    };
    for (pos, c) in choices.iter_mut().enumerate() {
        let index = c.get("index").and_then(Value::as_u64).unwrap_or(pos as u64) as u32;
        if index != choice {
            continue;
        }
        if let Some(obj) = c.as_object_mut() {
            match flavor {
                Flavor::Chat => {
                    obj.insert(
                        "message".into(),
                        json!({"role": "assistant", "content": refusal}),
                    );
                }
                Flavor::Completions => {
                    obj.insert("text".into(), Value::String(refusal.to_string()));
                }
            }
            obj.insert(
                "finish_reason".into(),
                Value::String("content_filter".into()),
            );
            if obj.contains_key("logprobs") {
                obj.insert("logprobs".into(), Value::Null);
            }
        }
    }
}

/// A streamed chunk kept for re-rendering: the JSON and the path of each text piece.
pub struct Chunk {
    /// The event's JSON text: parsed into a tree again only when the event must be rewritten.
    data: String,
    /// The channel of each piece, in order.
    keys: Vec<ChannelKey>,
    /// Choices this chunk finishes (they carry a `finish_reason`).
    finishes: Vec<u32>,
}

/// Labels riding on a stream: what each choice has delivered, which labels went out.
pub struct StreamLabels {
    pub text: TextLabels,
    /// Content delivered per choice (labels included), for the signature.
    delivered: Vec<(u32, String)>,
    started: Vec<u32>,
    ended: Vec<u32>,
}

impl StreamLabels {
    pub fn new(text: TextLabels) -> Self {
        Self {
            text,
            delivered: Vec::new(),
            started: Vec::new(),
            ended: Vec::new(),
        }
    }

    fn push(&mut self, choice: u32, text: &str) {
        match self.delivered.iter_mut().find(|(c, _)| *c == choice) {
            Some((_, s)) => s.push_str(text),
            None => self.delivered.push((choice, text.to_string())),
        }
    }

    fn has_content(&self, choice: u32) -> bool {
        self.delivered
            .iter()
            .any(|(c, s)| *c == choice && !s.is_empty())
    }

    /// All delivered content, choices in index order.
    fn delivered_text(&self) -> String {
        let mut d = self.delivered.clone();
        d.sort_by_key(|(c, _)| *c);
        d.into_iter().map(|(_, s)| s).collect()
    }
}

/// Reads and ends OpenAI-style streams.
pub struct OpenAiCodec {
    flavor: Flavor,
    extras: Extras,
    id: Value,
    model: Value,
    created: Value,
    system_fingerprint: Option<Value>,
    /// Choices seen, and whether each has finished.
    choices: Vec<(u32, bool)>,
    labels: Option<StreamLabels>,
    /// The last chunk read in full that carried one text: a chunk that repeats it but for the
    /// text is read from it.
    template: Option<Repeated>,
}

/// A chunk of one text kept as a [`Template`], with what its full read found besides the text.
struct Repeated {
    template: Template,
    /// The text's channel.
    key: ChannelKey,
    /// The chunk's choices: (index, finishes here).
    notes: Vec<(u32, bool)>,
}

impl OpenAiCodec {
    pub fn new(flavor: Flavor, extras: Extras) -> Self {
        Self {
            flavor,
            extras,
            id: Value::String("shenhe".into()),
            model: Value::Null,
            created: Value::from(0),
            system_fingerprint: None,
            choices: Vec::new(),
            labels: None,
            template: None,
        }
    }

    /// Label what this stream delivers.
    pub fn with_labels(mut self, labels: StreamLabels) -> Self {
        self.labels = Some(labels);
        self
    }

    /// The channel field that carries a choice's visible text.
    fn content_field(&self) -> u32 {
        match self.flavor {
            Flavor::Chat => 0,
            Flavor::Completions => TEXT_FIELD,
        }
    }

    /// The explicit end label for `choice`, once, if it delivered content.
    fn end_label(&mut self, choice: u32) -> Option<Bytes> {
        let l = self.labels.as_mut()?;
        let (label, pos) = l.text.explicit.clone()?;
        if !matches!(pos, Position::End | Position::Both)
            || l.ended.contains(&choice)
            || !l.has_content(choice)
        {
            return None;
        }
        l.ended.push(choice);
        let t = format!("\n{label}");
        l.push(choice, &t);
        crate::label::record("text", "explicit", "ok");
        Some(self.text_chunk(choice, &t))
    }

    /// The final chunk carrying the signed implicit label (choices empty, like a usage chunk).
    fn seal_chunk(&mut self) -> Option<Bytes> {
        let l = self.labels.as_mut()?;
        let delivered = l.delivered_text();
        let explicit_used = !l.started.is_empty() || !l.ended.is_empty();
        let aigc = l.text.seal(&delivered, explicit_used)?;
        let mut m = Map::new();
        m.insert("id".into(), self.id.clone());
        m.insert("object".into(), Value::String(self.object().into()));
        m.insert("created".into(), self.created.clone());
        m.insert("model".into(), self.model.clone());
        m.insert("choices".into(), Value::Array(Vec::new()));
        m.insert(crate::label::CHAT_AIGC_FIELD.into(), aigc_value(&aigc));
        Some(sse_data(&Value::Object(m)))
    }

    fn object(&self) -> &'static str {
        match self.flavor {
            Flavor::Chat => "chat.completion.chunk",
            Flavor::Completions => "text_completion",
        }
    }

    fn chunk(&self, choices: Vec<Value>) -> Bytes {
        let mut m = Map::new();
        m.insert("id".into(), self.id.clone());
        m.insert("object".into(), Value::String(self.object().into()));
        m.insert("created".into(), self.created.clone());
        m.insert("model".into(), self.model.clone());
        if let Some(fp) = &self.system_fingerprint {
            m.insert("system_fingerprint".into(), fp.clone());
        }
        m.insert("choices".into(), Value::Array(choices));
        sse_data(&Value::Object(m))
    }

    /// Every non-empty text of a chunk with its channel and path, in event order, and each
    /// choice's index and whether it finishes here.
    fn locate(&self, json: &Value) -> (Vec<(ChannelKey, Found)>, ChoiceNotes) {
        let mut found = Vec::new();
        let mut notes = Vec::new();
        if let Some(choices) = json.get("choices").and_then(Value::as_array) {
            for (pos, c) in choices.iter().enumerate() {
                let index = c.get("index").and_then(Value::as_u64).unwrap_or(pos as u64) as u32;
                let finished = c.get("finish_reason").is_some_and(|f| !f.is_null());
                notes.push((index, finished));
                let base = vec![Seg::Key("choices".into()), Seg::Index(pos)];
                let mut texts = Vec::new();
                choice_texts(self.flavor, c, "delta", &base, index, &mut texts);
                for t in texts {
                    if !t.found.text.is_empty() {
                        found.push(((t.choice, t.field), t.found));
                    }
                }
            }
        }
        for (k, pat) in self.extras.patterns.iter().enumerate() {
            let mut hits = Vec::new();
            find_strings(json, pat, &mut hits);
            for f in hits {
                if !f.text.is_empty() {
                    found.push(((choice_of(&f.path), EXTRA_BASE + k as u32), f));
                }
            }
        }
        (found, notes)
    }

    /// The common chunk shape, read without a JSON tree (see `wire`).
    fn parse_wire<'a>(&mut self, w: wire::Chunk<'a>, data: &'a str) -> Parsed<Chunk> {
        if w.error {
            return Parsed::passthrough();
        }
        self.set_meta(w.id, w.model, w.created, w.system_fingerprint);
        let mut texts = Vec::new();
        let mut notes = Vec::new();
        let mut push = |choice: u32, field: u32, text: Option<Cow<'a, str>>| {
            if let Some(t) = text.filter(|t| !t.is_empty()) {
                texts.push(((choice, field), t));
            }
        };
        for (pos, c) in w.choices.unwrap_or_default().into_iter().enumerate() {
            let index = c.index.unwrap_or(pos as u64) as u32;
            notes.push((index, c.finish_reason.is_some()));
            match self.flavor {
                Flavor::Completions => push(index, TEXT_FIELD, c.text),
                Flavor::Chat => {
                    let Some(d) = c.delta else { continue };
                    push(index, 0, d.content);
                    push(index, 1, d.reasoning_content);
                    push(index, 2, d.reasoning);
                    push(index, 3, d.refusal);
                    push(index, 4, d.function_call.and_then(|f| f.arguments));
                    for (pos, call) in d.tool_calls.unwrap_or_default().into_iter().enumerate() {
                        let ti = call.index.unwrap_or(pos as u64) as u32;
                        push(
                            index,
                            TOOL_ARGS_BASE + ti,
                            call.function.and_then(|f| f.arguments),
                        );
                    }
                }
            }
        }
        if let [(key, text)] = texts.as_slice() {
            if let Some(template) = Template::of(data, text) {
                self.template = Some(Repeated {
                    template,
                    key: *key,
                    notes: notes.clone(),
                });
            }
        }
        let keys = texts.iter().map(|(k, _)| *k).collect();
        let pieces = texts
            .into_iter()
            .map(|(channel, t)| TextPiece {
                channel,
                text: t.into_owned(),
            })
            .collect();
        self.parsed(data.to_string(), pieces, keys, &notes)
    }

    /// Keep the chunk fields that the stream's own chunks repeat (a stop, a label). A change
    /// drops the template: a chunk that repeats it must leave them as the template's read did.
    fn set_meta(
        &mut self,
        id: Option<Value>,
        model: Option<Value>,
        created: Option<Value>,
        fingerprint: Option<Value>,
    ) {
        let mut changed = false;
        for (slot, v) in [
            (&mut self.id, id),
            (&mut self.model, model),
            (&mut self.created, created),
        ] {
            if let Some(v) = v.filter(|v| v != slot) {
                *slot = v;
                changed = true;
            }
        }
        if let Some(fp) = fingerprint.filter(|fp| self.system_fingerprint.as_ref() != Some(fp)) {
            self.system_fingerprint = Some(fp);
            changed = true;
        }
        if changed {
            self.template = None;
        }
    }

    /// A chunk that repeats the template but for its text (see [`Template`]).
    fn repeat(&mut self, data: &str) -> Option<Parsed<Chunk>> {
        // Taken out for the call below, which needs the codec, and put back after it.
        let r = self.template.take()?;
        let Some(text) = r.template.fill(data).map(|f| f.text) else {
            self.template = Some(r);
            return None;
        };
        let key = r.key;
        let (keys, pieces) = if text.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            let piece = TextPiece {
                channel: key,
                text: text.to_owned(),
            };
            (vec![key], vec![piece])
        };
        let parsed = self.parsed(data.to_string(), pieces, keys, &r.notes);
        self.template = Some(r);
        Some(parsed)
    }

    fn parsed(
        &mut self,
        data: String,
        pieces: Vec<TextPiece>,
        keys: Vec<ChannelKey>,
        notes: &[(u32, bool)],
    ) -> Parsed<Chunk> {
        // A choice counts as finished only once its finishing chunk is released to the client.
        let finishes = notes.iter().filter(|(_, f)| *f).map(|(i, _)| *i).collect();
        for &(i, _) in notes {
            self.note_choice(i, false);
        }
        Parsed {
            event: Some(Chunk {
                data,
                keys,
                finishes,
            }),
            pieces,
            terminal: false,
        }
    }

    fn note_choice(&mut self, index: u32, finished: bool) {
        match self.choices.iter_mut().find(|(i, _)| *i == index) {
            Some(c) => c.1 |= finished,
            None => self.choices.push((index, finished)),
        }
    }

    /// Choices that have not sent a finish reason yet (choice 0 when none was seen).
    fn open_choices(&self) -> Vec<u32> {
        if self.choices.is_empty() {
            return vec![0];
        }
        self.choices
            .iter()
            .filter(|(_, f)| !f)
            .map(|(i, _)| *i)
            .collect()
    }

    fn delta_choice(&self, index: u32, text: &str) -> Value {
        match self.flavor {
            Flavor::Chat => {
                json!({"index": index, "delta": {"content": text}, "logprobs": null, "finish_reason": null})
            }
            Flavor::Completions => {
                json!({"index": index, "text": text, "logprobs": null, "finish_reason": null})
            }
        }
    }

    fn finish_choice(&self, index: u32, reason: &str) -> Value {
        match self.flavor {
            Flavor::Chat => {
                json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": reason})
            }
            Flavor::Completions => {
                json!({"index": index, "text": "", "logprobs": null, "finish_reason": reason})
            }
        }
    }

    /// A chunk that carries `text` as ordinary content of `choice` (labels, notices).
    pub fn text_chunk(&self, choice: u32, text: &str) -> Bytes {
        self.chunk(vec![self.delta_choice(choice, text)])
    }

    /// Choices seen so far.
    pub fn seen_choices(&self) -> Vec<u32> {
        if self.choices.is_empty() {
            vec![0]
        } else {
            self.choices.iter().map(|(i, _)| *i).collect()
        }
    }
}

/// `data: <json>\n\n`.
pub fn sse_data(v: &Value) -> Bytes {
    let mut buf = Vec::with_capacity(128);
    buf.extend_from_slice(b"data: ");
    let _ = serde_json::to_writer(&mut buf, v);
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

impl EventCodec for OpenAiCodec {
    type Event = Chunk;

    fn ends_answer(&self, event: &Chunk) -> bool {
        !event.finishes.is_empty()
    }

    fn parse(&mut self, ev: &RawEvent) -> Result<Parsed<Chunk>, CodecError> {
        // The common shape is read straight into borrowed fields, without building a JSON tree;
        // anything it does not cover (configured extra fields, unexpected types) takes the
        // general path, which finds the same texts.
        if let Some(data) = ev.data.as_deref().map(str::trim) {
            // (Only objects: serde would also read a JSON array into the struct, by position.)
            if data.starts_with('{') && self.extras.patterns.is_empty() {
                if let Some(p) = self.repeat(data) {
                    return Ok(p);
                }
                if let Ok(wire) = serde_json::from_str::<wire::Chunk>(data) {
                    return Ok(self.parse_wire(wire, data));
                }
            }
        }
        let json = match event_data(ev)? {
            EventData::None => return Ok(Parsed::passthrough()),
            EventData::Done => return Ok(Parsed::terminal()),
            EventData::Json(v) => v,
        };
        if json.get("error").is_some() {
            // An upstream error event carries no generated text; it is forwarded as is.
            return Ok(Parsed::passthrough());
        }
        let meta = |k: &str| json.get(k).cloned();
        self.set_meta(
            meta("id"),
            meta("model"),
            meta("created"),
            meta("system_fingerprint"),
        );
        if !json.is_object() {
            return Err(CodecError("stream event is not a JSON object".into()));
        }
        let (found, notes) = self.locate(&json);
        let mut pieces = Vec::with_capacity(found.len());
        let mut keys = Vec::with_capacity(found.len());
        for (key, f) in found {
            keys.push(key);
            pieces.push(TextPiece {
                channel: key,
                text: f.text,
            });
        }
        let data = ev.data.as_deref().unwrap_or_default().trim().to_string();
        Ok(self.parsed(data, pieces, keys, &notes))
    }

    fn on_release(
        &mut self,
        event: &Chunk,
        texts: &[String],
        before: &mut Vec<Bytes>,
        after: &mut Vec<Bytes>,
    ) {
        let content = self.content_field();
        for (key, text) in event.keys.iter().zip(texts) {
            if key.1 != content {
                continue;
            }
            let choice = key.0;
            let start_label = self.labels.as_mut().and_then(|l| {
                if l.started.contains(&choice) {
                    return None;
                }
                let t = match &l.text.explicit {
                    Some((label, Position::Start | Position::Both)) => format!("{label}\n"),
                    _ => return None,
                };
                l.started.push(choice);
                l.push(choice, &t);
                Some(t)
            });
            if let Some(t) = start_label {
                crate::label::record("text", "explicit", "ok");
                before.push(self.text_chunk(choice, &t));
            }
            if let Some(l) = self.labels.as_mut() {
                l.push(choice, text);
            }
        }
        for &choice in &event.finishes {
            if let Some(b) = self.end_label(choice) {
                // The label follows the choice's last text: before its finish chunk, or after a
                // chunk that carries both its last text and its finish reason.
                if event.keys.contains(&(choice, content)) {
                    after.push(b);
                } else {
                    before.push(b);
                }
            }
            self.note_choice(choice, true);
        }
    }

    fn on_end(&mut self, out: &mut Vec<Bytes>) {
        let open: Vec<u32> = self.seen_choices();
        for c in open {
            if let Some(b) = self.end_label(c) {
                out.push(b);
            }
        }
        if let Some(b) = self.seal_chunk() {
            out.push(b);
        }
    }

    fn render(&self, event: &Chunk, texts: &[String]) -> Bytes {
        let Ok(mut v) = serde_json::from_str::<Value>(&event.data) else {
            // Unreachable: the event was read before; an empty chunk is the safe answer.
            return self.chunk(Vec::new());
        };
        let (found, _) = self.locate(&v);
        let paths: Vec<Vec<Seg>> = found.into_iter().map(|(_, f)| f.path).collect();
        for (path, text) in paths.iter().zip(texts) {
            paths::set_string(&mut v, path, text.clone());
            // Token log-probabilities echo the original text: drop them from the rewritten choice.
            if let [Seg::Key(k), Seg::Index(i), ..] = path.as_slice() {
                if k == "choices" {
                    if let Some(lp) = v["choices"][*i].get_mut("logprobs") {
                        *lp = Value::Null;
                    }
                }
            }
        }
        sse_data(&v)
    }

    fn stop(&mut self, _category: &str, notice: Option<&str>) -> Vec<Bytes> {
        let open = self.open_choices();
        let mut out = Vec::new();
        if let Some(n) = notice {
            out.push(self.chunk(open.iter().map(|i| self.delta_choice(*i, n)).collect()));
        }
        // What was delivered before the stop is generated content: it is labeled like any other.
        for &c in &open {
            if let Some(b) = self.end_label(c) {
                out.push(b);
            }
        }
        out.push(
            self.chunk(
                open.iter()
                    .map(|i| self.finish_choice(*i, "content_filter"))
                    .collect(),
            ),
        );
        for i in open {
            self.note_choice(i, true);
        }
        if let Some(b) = self.seal_chunk() {
            out.push(b);
        }
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
        out
    }

    fn fault(&mut self, message: &str) -> Vec<Bytes> {
        vec![
            sse_data(
                &json!({"error": {"message": message, "type": "api_error", "code": "upstream_error", "param": null}}),
            ),
            Bytes::from_static(b"data: [DONE]\n\n"),
        ]
    }
}

/// The common shape of a streamed chunk, for reading it without building a JSON tree. Texts
/// borrow from the event where they have no escapes. A field of an unexpected type fails the
/// read, and the chunk then takes the general path.
mod wire {
    use std::borrow::Cow;

    use serde::de::IgnoredAny;
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    use crate::dialect::json::borrowed_text;

    /// Present at all (even as `null`).
    fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        IgnoredAny::deserialize(d).map(|_| true)
    }

    /// Present at all, kept as it is (`null` included).
    fn kept<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
        Value::deserialize(d).map(Some)
    }

    #[derive(Deserialize)]
    pub struct Chunk<'a> {
        #[serde(default, deserialize_with = "present")]
        pub error: bool,
        #[serde(default, deserialize_with = "kept")]
        pub id: Option<Value>,
        #[serde(default, deserialize_with = "kept")]
        pub model: Option<Value>,
        #[serde(default, deserialize_with = "kept")]
        pub created: Option<Value>,
        #[serde(default, deserialize_with = "kept")]
        pub system_fingerprint: Option<Value>,
        #[serde(borrow, default)]
        pub choices: Option<Vec<Choice<'a>>>,
    }

    #[derive(Deserialize)]
    pub struct Choice<'a> {
        #[serde(default)]
        pub index: Option<u64>,
        #[serde(default)]
        pub finish_reason: Option<IgnoredAny>,
        #[serde(borrow, default)]
        pub delta: Option<Delta<'a>>,
        #[serde(borrow, default, deserialize_with = "borrowed_text")]
        pub text: Option<Cow<'a, str>>,
    }

    #[derive(Deserialize)]
    pub struct Delta<'a> {
        #[serde(borrow, default, deserialize_with = "borrowed_text")]
        pub content: Option<Cow<'a, str>>,
        #[serde(borrow, default, deserialize_with = "borrowed_text")]
        pub reasoning_content: Option<Cow<'a, str>>,
        #[serde(borrow, default, deserialize_with = "borrowed_text")]
        pub reasoning: Option<Cow<'a, str>>,
        #[serde(borrow, default, deserialize_with = "borrowed_text")]
        pub refusal: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        pub function_call: Option<Function<'a>>,
        #[serde(borrow, default)]
        pub tool_calls: Option<Vec<ToolCall<'a>>>,
    }

    #[derive(Deserialize)]
    pub struct ToolCall<'a> {
        #[serde(default)]
        pub index: Option<u64>,
        #[serde(borrow, default)]
        pub function: Option<Function<'a>>,
    }

    #[derive(Deserialize)]
    pub struct Function<'a> {
        #[serde(borrow, default, deserialize_with = "borrowed_text")]
        pub arguments: Option<Cow<'a, str>>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_prompt_covers_every_text_field() {
        let req = json!({"messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "name": "nm", "content": [{"type": "text", "text": "part"}, {"type": "image_url", "image_url": {"url": "u"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{\"q\":\"args\"}"}}]},
            {"role": "tool", "tool_call_id": "1", "content": "result"},
        ]});
        let texts: Vec<String> = prompt_texts(Flavor::Chat, &req)
            .unwrap()
            .into_iter()
            .map(|f| f.text)
            .collect();
        for t in ["sys", "nm", "part", "{\"q\":\"args\"}", "result"] {
            assert!(texts.iter().any(|x| x == t), "{t} missing from {texts:?}");
        }
    }

    #[test]
    fn completions_prompt_refuses_token_ids() {
        assert!(prompt_texts(Flavor::Completions, &json!({"prompt": [1, 2, 3]})).is_err());
        let ok = prompt_texts(Flavor::Completions, &json!({"prompt": ["a", "b"]})).unwrap();
        assert_eq!(ok.len(), 2);
    }

    /// What a parse gave, in a form to compare.
    type Read = (
        Vec<TextPiece>,
        bool,
        Option<(String, Vec<ChannelKey>, Vec<u32>)>,
    );

    fn read(c: &mut OpenAiCodec, data: &str) -> (Read, (Value, Value, Value, Option<Value>)) {
        let ev = RawEvent {
            raw: Bytes::from(format!("data: {data}\n\n")),
            data: Some(data.to_string()),
            event: None,
        };
        let p = c.parse(&ev).unwrap();
        let event = p.event.map(|e| (e.data, e.keys, e.finishes));
        let meta = (
            c.id.clone(),
            c.model.clone(),
            c.created.clone(),
            c.system_fingerprint.clone(),
        );
        ((p.pieces, p.terminal, event), meta)
    }

    #[test]
    fn repeated_chunks_are_read_from_the_template() {
        let mut c = OpenAiCodec::new(Flavor::Chat, Extras::default());
        let chunk = |t: &str| {
            format!(
                r#"{{"id":"x","choices":[{{"index":0,"delta":{{"content":"{t}"}},"finish_reason":null}}]}}"#
            )
        };
        read(&mut c, &chunk("one"));
        assert!(c.template.is_some(), "a chunk of one text is kept");
        let (r, _) = read(&mut c, &chunk("二 two"));
        assert_eq!(r.0[0].text, "二 two");
        // The template still stands after a chunk of another shape.
        read(
            &mut c,
            r#"{"id":"x","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        );
        assert!(c
            .template
            .as_ref()
            .is_some_and(|r| r.template.fill(&chunk("three")).is_some()));
        // A chunk with another id drops it: a repeat of the old one would set the old id back.
        read(&mut c, r#"{"id":"y","choices":[]}"#);
        assert!(c.template.is_none());
    }

    proptest::proptest! {
        /// A codec that reads repeated chunks from its template reads every chunk as one that
        /// reads each in full: the same pieces, event, and the same fields kept for its own
        /// chunks.
        #[test]
        fn template_reads_equal_full_reads(
            events in proptest::collection::vec(
                (0usize..6, 0usize..3, 0u8..2, proptest::bool::ANY, 0u8..3, proptest::bool::ANY),
                1..14,
            )
        ) {
            const TEXTS: [&str; 6] = ["tok ", "", "你好，", "a\\nb", "q\\\"x", "\\u00e9t\\u00e9"];
            const FIELDS: [&str; 3] = ["content", "reasoning_content", "refusal"];
            let mut with = OpenAiCodec::new(Flavor::Chat, Extras::default());
            let mut without = OpenAiCodec::new(Flavor::Chat, Extras::default());
            for (text, field, index, finish, id, logprobs) in events {
                let data = format!(
                    r#"{{"id":"{}","choices":[{{"index":{index},"delta":{{"{}":"{}"}},"logprobs":{},"finish_reason":{}}}],"model":"m"}}"#,
                    ["a", "b", "c"][usize::from(id)],
                    FIELDS[field],
                    TEXTS[text],
                    if logprobs { r#"{"content":[]}"# } else { "null" },
                    if finish { r#""stop""# } else { "null" },
                );
                without.template = None;
                let a = read(&mut with, &data);
                let b = read(&mut without, &data);
                proptest::prop_assert_eq!(a, b, "{}", data);
                proptest::prop_assert_eq!(&with.choices, &without.choices);
            }
        }
    }

    #[test]
    fn stream_chunk_channels_per_choice_and_field() {
        let mut c = OpenAiCodec::new(Flavor::Chat, Extras::default());
        let data = json!({"id": "x", "model": "m", "created": 1, "choices": [
            {"index": 0, "delta": {"content": "a", "reasoning_content": "r"}},
            {"index": 1, "delta": {"tool_calls": [{"index": 2, "function": {"arguments": "{"}}]}},
        ]});
        let ev = RawEvent {
            raw: sse_data(&data),
            data: Some(data.to_string()),
            event: None,
        };
        let p = c.parse(&ev).unwrap();
        let keys: Vec<ChannelKey> = p.pieces.iter().map(|p| p.channel).collect();
        assert_eq!(keys, vec![(0, 0), (0, 1), (1, TOOL_ARGS_BASE + 2)]);
        let stop = c.stop("A1d", None);
        let s = String::from_utf8(stop.concat()).unwrap();
        assert!(s.contains("\"finish_reason\":\"content_filter\""));
        assert!(s.contains("\"index\":0") && s.contains("\"index\":1"));
        assert!(s.ends_with("data: [DONE]\n\n"));
    }

    /// What a codec made of one event, and the stream state it keeps, for comparing two paths.
    fn reading(c: &mut OpenAiCodec, data: &str) -> String {
        let ev = RawEvent {
            raw: Bytes::from(format!("data: {data}\n\n")),
            data: Some(data.to_string()),
            event: None,
        };
        let parsed = match c.parse(&ev) {
            Ok(p) => {
                let pieces: Vec<_> = p
                    .pieces
                    .iter()
                    .map(|t| (t.channel, t.text.clone()))
                    .collect();
                let event = p.event.map(|e| (e.keys, e.finishes));
                format!("{pieces:?} {event:?} {}", p.terminal)
            }
            Err(e) => format!("error {}", e.0),
        };
        format!(
            "{parsed} | {} {} {} {:?} {:?}",
            c.id, c.model, c.created, c.system_fingerprint, c.choices
        )
    }

    #[test]
    fn direct_reading_of_chunks_equals_the_general_path() {
        let events = [
            r#"{"id":"a","model":"m","created":5,"system_fingerprint":"fp","choices":[{"index":0,"delta":{"role":"assistant","content":"he\u0041llo"},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"id":null,"choices":[{"delta":{"reasoning_content":"r","reasoning":"q","refusal":"no","function_call":{"name":"f","arguments":"{}"}},"finish_reason":"stop"}]}"#,
            r#"{"choices":[{"index":3,"delta":{"tool_calls":[{"function":{"arguments":"x"}},{"index":7,"function":{"arguments":"y"}},{"index":1}]}},{"index":1,"delta":{"content":""},"finish_reason":"length"}]}"#,
            r#"{"choices":[{"index":"0","delta":{"content":"typed index"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":["not","a","string"]}}]}"#,
            r#"{"choices":[{"index":0,"delta":"odd","text":"t"}]}"#,
            r#"{"choices":{"not":"a list"}}"#,
            r#"{"choices":null,"usage":{"total_tokens":3}}"#,
            r#"{"choices":[1,2]}"#,
            r#"{"error":null}"#,
            r#"{"error":{"message":"overloaded"}}"#,
            r#"{"id":"a","id":"b","choices":[]}"#,
            r#"{"choices":[{"text":"legacy","index":2,"finish_reason":null}]}"#,
            r#"[1]"#,
            r#""text""#,
        ];
        for flavor in [Flavor::Chat, Flavor::Completions] {
            let mut direct = OpenAiCodec::new(flavor, Extras::default());
            // A configured extra field that never matches sends every chunk the general way.
            let extras = Extras::parse(&["choices.*.delta.never_there".to_string()]).unwrap();
            let mut general = OpenAiCodec::new(flavor, extras);
            for e in events {
                assert_eq!(
                    reading(&mut direct, e),
                    reading(&mut general, e),
                    "{flavor:?}: {e}"
                );
            }
        }
    }

    #[test]
    fn rewritten_chunk_keeps_its_other_fields() {
        let mut c = OpenAiCodec::new(Flavor::Chat, Extras::default());
        let data = r#"{"id":"a","choices":[{"index":0,"delta":{"content":"bad","reasoning_content":"fine"},"logprobs":{"content":[{"token":"bad"}]}}],"extra":1}"#;
        let ev = RawEvent {
            raw: Bytes::from(format!("data: {data}\n\n")),
            data: Some(data.to_string()),
            event: None,
        };
        let p = c.parse(&ev).unwrap();
        let out = c.render(&p.event.unwrap(), &["***".into(), "fine".into()]);
        let v: Value = serde_json::from_slice(out.strip_prefix(b"data: ").unwrap()).unwrap();
        assert_eq!(v["choices"][0]["delta"]["content"], "***");
        assert_eq!(v["choices"][0]["delta"]["reasoning_content"], "fine");
        assert_eq!(v["choices"][0]["logprobs"], Value::Null);
        assert_eq!(v["extra"], 1);
    }
}

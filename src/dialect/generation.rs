//! What the shared moderated exchange needs from a text-generation API: where the prompt and
//! answer texts are, how an answer (or one choice of it) is refused and labeled, and the stream
//! codec. OpenAI Chat Completions and Completions, Anthropic Messages and OpenAI Responses
//! implement it.

use serde_json::Value;

use super::labels::TextLabels;
use super::openai::Extras;
use super::paths::Found;
use super::quick::{QuickAnswer, QuickPrompt};
use crate::dialect::error::ApiError;
use crate::label::Position;
use crate::stream::guard::EventCodec;

/// A text-generation API, seen by the moderated exchange.
pub trait TextApi: Send + 'static {
    type Codec: EventCodec;

    /// Every prompt text of a request; requests whose prompt cannot be read are refused.
    /// A text whose path does not lead to a JSON string (a serialized tool input) cannot be
    /// redacted in place: a `redact` finding there refuses the request instead.
    fn prompt_texts(&self, req: &Value) -> Result<Vec<Found>, ApiError>;

    /// Whether the client asked for JSON output (no explicit label then).
    fn json_mode(&self, req: &Value) -> bool;

    /// The fast read of a request's bytes (see `dialect::quick`): its prompt texts, `model` and
    /// JSON mode, as `prompt_texts` and `json_mode` would find them on the tree. `None` when this
    /// API has no fast read or the request needs the tree (which also reports every error).
    fn quick_prompt<'a>(&self, _body: &'a [u8]) -> Option<QuickPrompt<'a>> {
        None
    }

    /// The fast read of a whole answer's bytes: the texts `response_texts` would judge, and the
    /// visible texts `label` and `delivered_text` work on, with their places in the body.
    /// `None` when this API has no fast read or the answer needs the tree.
    fn quick_answer<'a>(&self, _body: &'a [u8], _extras: &Extras) -> Option<QuickAnswer<'a>> {
        None
    }

    /// The stream codec; `labels` is `Some` when labels are on and the codec can carry them.
    fn codec(&self, extras: Extras, labels: Option<TextLabels>) -> Self::Codec;

    /// Whether this API's streams carry labels (the implicit-label header is sent only then).
    fn stream_labels(&self) -> bool;

    /// Whether some texts of one unit of a whole answer are judged joined (`moderate::seam_shape`:
    /// text blocks, output text parts). Where none can be, the fast read of an answer is judged
    /// per text only.
    const JOINS_ANSWER_TEXTS: bool = false;

    /// Every generated text of a whole answer, configured extra fields included, with the unit
    /// it belongs to: the choice index where an answer has several, else 0. A blocking finding
    /// refuses its unit only.
    fn response_texts(&self, doc: &Value, extras: &Extras) -> Vec<(u32, Found)>;

    /// Replace one unit of the answer (or the whole answer, for single-unit APIs) by the refusal.
    fn refuse(&self, doc: &mut Value, unit: u32, refusal: &str);

    /// Add the explicit label to the visible text of every unit not in `blocked`; returns
    /// whether a label was added.
    fn label(&self, doc: &mut Value, label: &str, pos: Position, blocked: &[u32]) -> bool;

    /// The visible text of a whole answer, what the implicit label signs.
    fn delivered_text(&self, doc: &Value) -> String;
}

/// Apply the explicit label to the first and last of `slots` (visible text strings in order).
/// Returns whether a label was added.
pub fn label_slots(mut slots: Vec<&mut String>, label: &str, pos: Position) -> bool {
    let n = slots.len();
    if n == 0 {
        return false;
    }
    if n == 1 {
        let s = &mut slots[0];
        **s = crate::label::apply_explicit(s, label, pos);
        return true;
    }
    if matches!(pos, Position::Start | Position::Both) {
        let s = &mut slots[0];
        **s = crate::label::apply_explicit(s, label, Position::Start);
    }
    if matches!(pos, Position::End | Position::Both) {
        let s = &mut slots[n - 1];
        **s = crate::label::apply_explicit(s, label, Position::End);
    }
    true
}

/// `event: <name>\ndata: <json>\n\n`: the framing of APIs that name their events.
pub fn sse_named(name: &str, v: &Value) -> bytes::Bytes {
    let mut buf = Vec::with_capacity(160);
    buf.extend_from_slice(b"event: ");
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\ndata: ");
    let _ = serde_json::to_writer(&mut buf, v);
    buf.extend_from_slice(b"\n\n");
    bytes::Bytes::from(buf)
}

/// The data of one SSE event, as JSON-event APIs read it.
pub enum EventData {
    /// No `data` field (comments, keep-alives): forwarded as is.
    None,
    /// `data: [DONE]`: the API's own end of stream.
    Done,
    /// A JSON object.
    Json(Value),
}

/// Read an event's data; anything but `[DONE]` or a JSON object fails closed.
pub fn event_data(
    ev: &crate::stream::sse::RawEvent,
) -> Result<EventData, crate::stream::guard::CodecError> {
    use crate::stream::guard::CodecError;
    let Some(data) = &ev.data else {
        return Ok(EventData::None);
    };
    let trimmed = data.trim();
    if trimmed == "[DONE]" {
        return Ok(EventData::Done);
    }
    let json: Value = serde_json::from_str(trimmed)
        .map_err(|e| CodecError(format!("stream event is not JSON: {e}")))?;
    if !json.is_object() {
        return Err(CodecError("stream event is not a JSON object".into()));
    }
    Ok(EventData::Json(json))
}

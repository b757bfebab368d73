//! A scripted model server for demos, tests and benchmarks.
//!
//! It answers OpenAI `/v1/chat/completions`, `/v1/completions` and `/v1/responses`, Anthropic
//! `/v1/messages` (each streamed or not), `/v1/models` and `/health`, with a configured text cut
//! into chunks of a configured size and delay. It is not a model: it always says the same thing,
//! which is what a demo and a bench need.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// What the scripted model says and how it paces itself.
#[derive(Debug, Clone)]
pub struct DemoScript {
    /// The completion text.
    pub text: String,
    /// Characters per streamed chunk (LLM tokens are 1–4 characters).
    pub chunk_chars: usize,
    /// Pause between streamed chunks.
    pub delay: Duration,
    /// Number of streamed chunks when `text` is empty: a filler token repeated (bench streams).
    pub tokens: usize,
}

impl Default for DemoScript {
    fn default() -> Self {
        Self {
            text: "你好！我是一个演示模型。shenhe 在我和你之间审核每一段文字：它只扣住可能构成违禁词的尾部，其余文字立即送达。Hello from the scripted demo model; every word you read passed through shenhe.".into(),
            chunk_chars: 2,
            delay: Duration::from_millis(30),
            tokens: 0,
        }
    }
}

impl DemoScript {
    /// The streamed pieces of the text.
    pub fn pieces(&self) -> Vec<String> {
        if self.text.is_empty() {
            return vec!["tok ".to_string(); self.tokens];
        }
        let chars: Vec<char> = self.text.chars().collect();
        chars
            .chunks(self.chunk_chars.max(1))
            .map(|c| c.iter().collect())
            .collect()
    }
}

/// The demo model's router.
pub fn router(script: DemoScript) -> Router {
    let script = Arc::new(script);
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/messages", post(messages))
        .route("/v1/responses", post(responses))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .with_state(script)
}

/// Serve the demo model on `addr` until the task is dropped; returns the bound address.
pub async fn spawn(
    addr: SocketAddr,
    script: DemoScript,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(script);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((local, task))
}

async fn models() -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": "demo", "object": "model", "owned_by": "shenhe-demo"}]}),
    )
}

async fn chat(State(script): State<Arc<DemoScript>>, body: Bytes) -> Response {
    generate(script, body, Api::Chat).await
}

async fn completions(State(script): State<Arc<DemoScript>>, body: Bytes) -> Response {
    generate(script, body, Api::Completions).await
}

async fn messages(State(script): State<Arc<DemoScript>>, body: Bytes) -> Response {
    generate(script, body, Api::Messages).await
}

async fn responses(State(script): State<Arc<DemoScript>>, body: Bytes) -> Response {
    generate(script, body, Api::Responses).await
}

/// The API an answer is shaped for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completions,
    Messages,
    Responses,
}

const CREATED: u64 = 1_700_000_000;

/// One answer in one API's shapes.
struct Answer {
    api: Api,
    model: String,
    pieces: Vec<String>,
}

/// Where event `i` of a stream is: framing before the text, a text piece, framing after it.
enum Step<'a> {
    Head(usize),
    Piece(&'a str),
    Tail(usize),
}

impl Answer {
    /// Framing events before the first and after the last text piece.
    fn framing(&self) -> (usize, usize) {
        match self.api {
            Api::Chat | Api::Completions => (0, 2),
            Api::Messages => (3, 3),
            Api::Responses => (4, 4),
        }
    }

    fn events(&self) -> usize {
        let (head, tail) = self.framing();
        head + self.pieces.len() + tail
    }

    fn step(&self, i: usize) -> Step<'_> {
        let head = self.framing().0;
        match i.checked_sub(head) {
            None => Step::Head(i),
            Some(p) if p < self.pieces.len() => Step::Piece(&self.pieces[p]),
            Some(p) => Step::Tail(p - self.pieces.len()),
        }
    }

    /// The whole answer (`stream: false`).
    fn whole(&self) -> Value {
        let text = self.pieces.concat();
        let n = self.pieces.len();
        match self.api {
            Api::Chat | Api::Completions => {
                let (object, choice) = if self.api == Api::Chat {
                    (
                        "chat.completion",
                        json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}),
                    )
                } else {
                    (
                        "text_completion",
                        json!({"index": 0, "text": text, "finish_reason": "stop"}),
                    )
                };
                json!({
                    "id": "demo-1", "object": object, "created": CREATED, "model": self.model,
                    "choices": [choice],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
                })
            }
            Api::Messages => json!({
                "id": "msg_demo1", "type": "message", "role": "assistant", "model": self.model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 1, "output_tokens": n}
            }),
            Api::Responses => self.response("completed", Some(&text)),
        }
    }

    /// A Responses `response` object; `text`: the finished message, none while in progress.
    fn response(&self, status: &str, text: Option<&str>) -> Value {
        let (output, usage) = match text {
            Some(t) => (
                json!([self.message("completed", Some(t))]),
                json!({"input_tokens": 1, "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": self.pieces.len(), "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": 1 + self.pieces.len()}),
            ),
            None => (json!([]), Value::Null),
        };
        json!({
            "id": "resp_demo1", "object": "response", "created_at": CREATED, "status": status,
            "model": self.model, "output": output, "usage": usage, "error": null,
            "incomplete_details": null, "instructions": null, "metadata": {},
            "parallel_tool_calls": true, "temperature": 1.0, "tool_choice": "auto", "tools": [],
            "top_p": 1.0
        })
    }

    /// The Responses output message; `text`: its one `output_text` part, none before it starts.
    fn message(&self, status: &str, text: Option<&str>) -> Value {
        let content = match text {
            Some(t) => {
                json!([{"type": "output_text", "text": t, "annotations": [], "logprobs": []}])
            }
            None => json!([]),
        };
        json!({"type": "message", "id": "msg_demo1", "status": status, "role": "assistant", "content": content})
    }

    /// SSE event `i` of the stream.
    fn event(&self, i: usize) -> String {
        match self.api {
            Api::Chat | Api::Completions => self.chat_event(self.step(i)),
            Api::Messages => named(self.messages_event(self.step(i))),
            Api::Responses => {
                let mut v = self.responses_event(self.step(i));
                v["sequence_number"] = json!(i);
                named(v)
            }
        }
    }

    fn chat_event(&self, step: Step<'_>) -> String {
        let (delta, finish) = match step {
            Step::Piece(p) => (Some(p), None),
            Step::Tail(0) => (None, Some("stop")),
            _ => return "data: [DONE]\n\n".to_string(),
        };
        let (object, choice) = if self.api == Api::Chat {
            let delta = delta.map_or(json!({}), |d| json!({"content": d}));
            (
                "chat.completion.chunk",
                json!({"index": 0, "delta": delta, "finish_reason": finish}),
            )
        } else {
            (
                "text_completion",
                json!({"index": 0, "text": delta.unwrap_or(""), "finish_reason": finish}),
            )
        };
        let chunk = json!({"id": "demo-1", "object": object, "created": CREATED, "model": self.model, "choices": [choice]});
        format!("data: {chunk}\n\n")
    }

    fn messages_event(&self, step: Step<'_>) -> Value {
        match step {
            Step::Head(0) => json!({"type": "message_start", "message": {
                "id": "msg_demo1", "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 1, "output_tokens": 1}}}),
            Step::Head(1) => {
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
            }
            Step::Head(_) => json!({"type": "ping"}),
            Step::Piece(p) => {
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})
            }
            Step::Tail(0) => json!({"type": "content_block_stop", "index": 0}),
            Step::Tail(1) => {
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": self.pieces.len()}})
            }
            Step::Tail(_) => json!({"type": "message_stop"}),
        }
    }

    fn responses_event(&self, step: Step<'_>) -> Value {
        let at = json!({"item_id": "msg_demo1", "output_index": 0, "content_index": 0});
        let with = |mut v: Value, extra: Value| {
            for (k, x) in extra.as_object().into_iter().flatten() {
                v[k] = x.clone();
            }
            v
        };
        let text = || self.pieces.concat();
        let part =
            |t: &str| json!({"type": "output_text", "text": t, "annotations": [], "logprobs": []});
        match step {
            Step::Head(0) => {
                json!({"type": "response.created", "response": self.response("in_progress", None)})
            }
            Step::Head(1) => {
                json!({"type": "response.in_progress", "response": self.response("in_progress", None)})
            }
            Step::Head(2) => {
                json!({"type": "response.output_item.added", "output_index": 0, "item": self.message("in_progress", None)})
            }
            Step::Head(_) => with(
                json!({"type": "response.content_part.added", "part": part("")}),
                at,
            ),
            Step::Piece(p) => with(
                json!({"type": "response.output_text.delta", "delta": p, "logprobs": []}),
                at,
            ),
            Step::Tail(0) => with(
                json!({"type": "response.output_text.done", "text": text(), "logprobs": []}),
                at,
            ),
            Step::Tail(1) => with(
                json!({"type": "response.content_part.done", "part": part(&text())}),
                at,
            ),
            Step::Tail(2) => {
                json!({"type": "response.output_item.done", "output_index": 0, "item": self.message("completed", Some(&text()))})
            }
            Step::Tail(_) => {
                json!({"type": "response.completed", "response": self.response("completed", Some(&text()))})
            }
        }
    }
}

/// `event: <type>\ndata: <json>\n\n`, as Anthropic and OpenAI Responses stream.
fn named(v: Value) -> String {
    format!(
        "event: {}\ndata: {v}\n\n",
        v["type"].as_str().unwrap_or("message")
    )
}

fn bad_request(api: Api, message: String) -> Response {
    let body = if api == Api::Messages {
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}})
    } else {
        json!({"error": {"message": message, "type": "invalid_request_error", "code": null, "param": null}})
    };
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

async fn generate(script: Arc<DemoScript>, body: Bytes, api: Api) -> Response {
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(api, format!("bad json: {e}")),
    };
    let answer = Answer {
        api,
        model: req["model"].as_str().unwrap_or("demo").to_string(),
        pieces: script.pieces(),
    };
    if !req["stream"].as_bool().unwrap_or(false) {
        return Json(answer.whole()).into_response();
    }
    let delay = script.delay;
    // The framing before the text goes out at once; every event after the first piece is paced.
    let head = answer.framing().0;
    let events = futures_util::stream::unfold((0usize, answer), move |(i, answer)| async move {
        if i >= answer.events() {
            return None;
        }
        if i > head && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let data = Bytes::from(answer.event(i));
        Some((Ok::<_, std::io::Error>(data), (i + 1, answer)))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(events))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

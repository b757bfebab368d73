//! A scripted OpenAI-compatible model server for demos, tests and benchmarks.
//!
//! It answers `/v1/chat/completions` and `/v1/completions` (streamed or not), `/v1/models`
//! and `/health`, with a configured text cut into chunks of a configured size and delay.
//! It is not a model: it always says the same thing, which is what a demo and a bench need.

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
    generate(script, body, true).await
}

async fn completions(State(script): State<Arc<DemoScript>>, body: Bytes) -> Response {
    generate(script, body, false).await
}

async fn generate(script: Arc<DemoScript>, body: Bytes, chat: bool) -> Response {
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"message": format!("bad json: {e}"), "type": "invalid_request_error", "code": null, "param": null}})),
            )
                .into_response()
        }
    };
    let model = req["model"].as_str().unwrap_or("demo").to_string();
    let stream = req["stream"].as_bool().unwrap_or(false);
    let (object, chunk_object) = if chat {
        ("chat.completion", "chat.completion.chunk")
    } else {
        ("text_completion", "text_completion")
    };
    if !stream {
        let text = script.pieces().concat();
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"})
        } else {
            json!({"index": 0, "text": text, "finish_reason": "stop"})
        };
        return Json(json!({
            "id": "demo-1", "object": object, "created": 1_700_000_000, "model": model,
            "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        }))
        .into_response();
    }
    let pieces = script.pieces();
    let delay = script.delay;
    let events = futures_util::stream::unfold(
        (0usize, pieces, model),
        move |(i, pieces, model)| async move {
            if i > pieces.len() + 1 {
                return None;
            }
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let data = if i == pieces.len() + 1 {
                "data: [DONE]\n\n".to_string()
            } else {
                let (delta, finish) = if i == pieces.len() {
                    (None, Some("stop"))
                } else {
                    (Some(pieces[i].as_str()), None)
                };
                let choice = if chat {
                    json!({"index": 0, "delta": delta.map_or(json!({}), |d| json!({"content": d})), "finish_reason": finish})
                } else {
                    json!({"index": 0, "text": delta.unwrap_or(""), "finish_reason": finish})
                };
                let chunk = json!({"id": "demo-1", "object": chunk_object, "created": 1_700_000_000, "model": model, "choices": [choice]});
                format!("data: {chunk}\n\n")
            };
            Some((
                Ok::<_, std::io::Error>(Bytes::from(data)),
                (i + 1, pieces, model),
            ))
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(events))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

//! The scripted model (`shenhe::demo`) as its own process, for `bench/run.sh`.
//!
//! ```sh
//! cargo build --release --examples
//! target/release/examples/scripted_model --listen 127.0.0.1:18001 --tokens 256 --delay-ms 0
//! ```
//!
//! With `--text ""` (the default) every stream is `--tokens` chunks of `"tok "`, and a
//! non-streamed answer is their concatenation (4 bytes per token), in the shapes of OpenAI chat
//! completions, OpenAI Responses and Anthropic Messages. Besides the demo's own routes it answers
//! `--alias FROM=TO` paths exactly like `TO` (default `/v1/raw/chat`, `/v1/raw/responses` and
//! `/v1/raw/messages` for the three), so a proxy can be benchmarked on a passthrough route and a
//! moderated route with the same bytes.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Request;
use axum::ServiceExt as _;
use clap::Parser;
use shenhe::demo::{router, DemoScript};
use tower::Layer as _;

#[derive(Parser, Debug)]
#[command(about = "Scripted model (OpenAI chat and Responses, Anthropic Messages) for benchmarks")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18001")]
    listen: SocketAddr,
    /// Chunks per stream when --text is empty (each chunk is "tok ").
    #[arg(long, default_value_t = 256)]
    tokens: usize,
    /// Pause between streamed chunks, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Characters per chunk when --text is given.
    #[arg(long, default_value_t = 2)]
    chunk_chars: usize,
    /// Completion text; empty: --tokens filler tokens.
    #[arg(long, default_value = "")]
    text: String,
    /// FROM=TO: answer path FROM like path TO (repeatable).
    #[arg(long = "alias", value_parser = parse_alias, default_values_t = [
        "/v1/raw/chat=/v1/chat/completions".to_string(),
        "/v1/raw/responses=/v1/responses".to_string(),
        "/v1/raw/messages=/v1/messages".to_string(),
    ])]
    aliases: Vec<String>,
    /// Tokio worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

fn parse_alias(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((from, to)) if from.starts_with('/') && to.starts_with('/') => Ok(s.to_string()),
        _ => Err(format!("expected FROM=TO (two paths), got {s:?}")),
    }
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let script = DemoScript {
        text: args.text.clone(),
        chunk_chars: args.chunk_chars,
        delay: Duration::from_millis(args.delay_ms),
        tokens: args.tokens,
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if args.workers > 0 {
        rt.worker_threads(args.workers);
    }
    rt.build()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        let aliases: Vec<(String, String)> = args
            .aliases
            .iter()
            .filter_map(|a| a.split_once('='))
            .map(|(from, to)| (from.to_string(), to.to_string()))
            .collect();
        // Rewrite alias paths before routing (a layer on the Router itself runs after routing).
        let rewrite = tower::util::MapRequestLayer::new(move |mut req: Request| {
            if let Some((_, to)) = aliases.iter().find(|(from, _)| from == req.uri().path()) {
                let pq = match req.uri().query() {
                    Some(q) => format!("{to}?{q}"),
                    None => to.clone(),
                };
                if let Ok(uri) = pq.parse() {
                    *req.uri_mut() = uri;
                }
            }
            req
        });
        let app = rewrite.layer(router(script));
        eprintln!("scripted model listening on {}", listener.local_addr()?);
        axum::serve(listener, app.into_make_service()).await
    })
}

//! The scripted OpenAI-compatible model (`shenhe::demo`) as its own process, for `bench/run.sh`.
//!
//! ```sh
//! cargo build --release --examples
//! target/release/examples/scripted_model --listen 127.0.0.1:18001 --tokens 256 --delay-ms 0
//! ```
//!
//! With `--text ""` (the default) every stream is `--tokens` chunks of `"tok "`, and a
//! non-streamed answer is their concatenation (4 bytes per token). Besides the demo's own routes
//! it answers `--alias` paths (default `/v1/raw/chat`) exactly like `/v1/chat/completions`, so a
//! proxy can be benchmarked on a passthrough route and a moderated route with the same bytes.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Request;
use axum::ServiceExt as _;
use clap::Parser;
use shenhe::demo::{router, DemoScript};
use tower::Layer as _;

#[derive(Parser, Debug)]
#[command(about = "Scripted OpenAI-compatible model for benchmarks")]
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
    /// Extra paths answered like /v1/chat/completions (repeatable).
    #[arg(long = "alias", default_values_t = vec!["/v1/raw/chat".to_string()])]
    aliases: Vec<String>,
    /// Tokio worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
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
        let aliases = args.aliases.clone();
        // Rewrite alias paths before routing (a layer on the Router itself runs after routing).
        let rewrite = tower::util::MapRequestLayer::new(move |mut req: Request| {
            if aliases.iter().any(|a| a == req.uri().path()) {
                let pq = match req.uri().query() {
                    Some(q) => format!("/v1/chat/completions?{q}"),
                    None => "/v1/chat/completions".to_string(),
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

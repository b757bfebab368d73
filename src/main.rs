//! The `shenhe` command line: parses arguments and hands over to the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use shenhe::config::Config;

#[derive(Parser)]
#[command(
    name = "shenhe",
    version,
    about = "Inline moderation proxy for generative-model APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        #[arg(long, env = "SHENHE_CONFIG", default_value = "config/shenhe.yaml")]
        config: PathBuf,
    },
    /// Load and validate a config; print a summary or every error with its YAML path.
    Check {
        #[arg(long, env = "SHENHE_CONFIG", default_value = "config/shenhe.yaml")]
        config: PathBuf,
    },
    /// Run the scripted demo model at the config's upstream address and the proxy in front of it.
    Demo {
        #[arg(long, default_value = "config/demo.yaml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { config } => match shenhe::cli::check(&config) {
            Ok(summary) => {
                print!("{summary}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{} is not valid:", config.display());
                for issue in e.issues() {
                    eprintln!("  {issue}");
                }
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Serve { config } => serve(config, false),
        Command::Demo { config } => serve(config, true),
    }
}

fn serve(path: PathBuf, demo: bool) -> anyhow::Result<ExitCode> {
    let loaded = Config::load(&path).map_err(|e| {
        anyhow::anyhow!(
            "{} is not valid:\n  {}",
            path.display(),
            e.issues()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n  ")
        )
    })?;
    shenhe::cli::init_logging(loaded.config.log.format, &loaded.config.log.level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let _demo = if demo {
            let addr = shenhe::cli::demo_upstream_addr(&loaded.config).map_err(anyhow::Error::msg)?;
            let (addr, task) = shenhe::demo::spawn(addr, shenhe::demo::DemoScript::default())
                .await
                .with_context(|| format!("cannot start the demo model on {addr}"))?;
            tracing::info!(%addr, "Demo model listening");
            Some(task)
        } else {
            None
        };
        let running = shenhe::server::start(loaded).await?;
        if demo {
            eprintln!(
                "\nshenhe is in front of the demo model. Try:\n  curl -N http://{}/v1/chat/completions -H 'content-type: application/json' -d '{{\"model\":\"demo\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"你好\"}}]}}'\n",
                running.public_addr
            );
        }
        shenhe::server::signals::run(&running).await;
        let _ = running.task.await;
        Ok(ExitCode::SUCCESS)
    })
}

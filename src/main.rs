//! The `mxidp` binary: configuration, provider wiring, and the server.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mxidp_core::config::Config;
use mxidp_core::provider::{GenericOidc, Provider};

mod events_cli;

#[derive(Parser)]
#[command(
    name = "mxidp",
    version,
    about = "Enterprise identity providers as the authentication system of a Matrix homeserver"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// TOML configuration file (environment MXIDP__SECTION__KEY overrides it).
        #[arg(long, short, env = "MXIDP_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The IdP event pipeline: list, retry and replay received events.
    Events {
        #[command(subcommand)]
        command: events_cli::EventsCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration and list every problem with its key.
    Check {
        #[arg(long, short, env = "MXIDP_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// The provider adapters this binary knows, by configuration name.
fn provider(name: &str) -> Option<Arc<dyn Provider>> {
    match name {
        "generic" => Some(Arc::new(GenericOidc)),
        _ => None,
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MXIDP_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("MXIDP_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { config },
        } => check(config),
        Command::Events { command } => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(events_cli::run(command)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mxidp: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Serve { config } => {
            init_logging();
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(serve(config)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("mxidp: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

fn check(path: Option<PathBuf>) -> std::process::ExitCode {
    let config = match Config::load(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mxidp: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut problems = config.check();
    if provider(&config.upstream.provider).is_none() {
        problems.push(mxidp_core::config::Problem {
            key: "upstream.provider".into(),
            message: format!(
                "unknown provider {:?} (known: generic)",
                config.upstream.provider
            ),
        });
    }
    if problems.is_empty() {
        println!("configuration OK");
        std::process::ExitCode::SUCCESS
    } else {
        for p in &problems {
            println!("{p}");
        }
        println!("{} problem(s)", problems.len());
        std::process::ExitCode::FAILURE
    }
}

async fn serve(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load_checked(path.as_deref())?;
    let provider = provider(&config.upstream.provider).with_context(|| {
        format!(
            "upstream.provider: unknown provider {:?}",
            config.upstream.provider
        )
    })?;
    let app = mxidp_core::server::build(&config, provider).await?;
    mxidp_core::server::spawn_discovery(
        app.clone(),
        mxidp_core::server::upstream_settings(&config)?,
    );
    mxidp_core::server::spawn_pruning(app.clone());
    // Its first round picks up the events accepted before a crash or a stop.
    mxidp_core::events::spawn_worker(app.clone());
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("http.listen: cannot listen on {}", config.http.listen))?;
    tracing::info!(listen = %config.http.listen, issuer = %config.http.public_base, database = %config.database.url, "mxidp listening");
    mxidp_core::server::run(app, listener, shutdown_signal()).await?;
    tracing::info!("mxidp stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}

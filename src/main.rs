//! The `mxidp` binary: configuration, provider wiring, and the server.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mxidp_core::config::Config;
use mxidp_core::provider::{GenericOidc, Provider};

mod clients_cli;
mod doctor;
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
    /// Registered Matrix clients: list them, delete a registration.
    Clients {
        #[command(subcommand)]
        command: clients_cli::ClientsCommand,
    },
    /// Live checks of a deployment (IdP, client credentials, Synapse, public base, clock,
    /// encryption key), one line each; exit status 0 only when all pass.
    Doctor {
        #[arg(long, short, env = "MXIDP_CONFIG")]
        config: Option<PathBuf>,
    },
    /// The audit log: export for a SIEM, check the hash chain.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Write the audit records since a time as JSON Lines (one object per record).
    Export {
        #[arg(long, short, env = "MXIDP_CONFIG")]
        config: Option<PathBuf>,
        /// RFC 3339 (2025-01-31T12:00:00Z) or Unix seconds.
        #[arg(long)]
        since: String,
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Check the hash chain: reports every modified or deleted record; exits 1 on problems.
    /// Records cut off the end cannot be seen by a chain alone: keep the printed last seq and
    /// hash outside the database and compare them on the next run.
    Verify {
        #[arg(long, short, env = "MXIDP_CONFIG")]
        config: Option<PathBuf>,
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
const PROVIDERS: &str = "generic, keycloak, okta, zitadel, auth0";

/// The adapter `upstream.provider` names, built from its `[adapters.<name>]` settings.
fn provider(config: &Config) -> Result<Arc<dyn Provider>, Vec<mxidp_core::config::Problem>> {
    match config.upstream.provider.as_str() {
        "generic" => Ok(Arc::new(GenericOidc)),
        mxidp_keycloak::NAME => Ok(Arc::new(mxidp_keycloak::Keycloak::from_config(config)?)),
        mxidp_okta::NAME => Ok(Arc::new(mxidp_okta::Okta::from_config(config)?)),
        mxidp_zitadel::NAME => Ok(Arc::new(mxidp_zitadel::Zitadel::from_config(config)?)),
        mxidp_auth0::NAME => Ok(Arc::new(mxidp_auth0::Auth0::from_config(config)?)),
        other => Err(vec![mxidp_core::config::Problem {
            key: "upstream.provider".into(),
            message: format!("unknown provider {other:?} (known: {PROVIDERS})"),
        }]),
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
        Command::Doctor { config } => {
            let config = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("mxidp: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            if runtime.block_on(doctor::run(&config)) {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
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
        Command::Clients { command } => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(clients_cli::run(command)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mxidp: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Audit { command } => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(audit(command)) {
                Ok(code) => code,
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
    if let Err(adapter) = provider(&config) {
        problems.extend(adapter);
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

/// Opens the store of a configuration (migrations run; nothing else starts).
async fn open_store(path: Option<PathBuf>) -> anyhow::Result<mxidp_core::store::SqliteStore> {
    let config = Config::load(path.as_deref())?;
    mxidp_core::store::SqliteStore::open(&config.database.url)
        .await
        .with_context(|| {
            format!(
                "database.url: cannot open {}",
                config.database.url_for_log()
            )
        })
}

async fn audit(command: AuditCommand) -> anyhow::Result<std::process::ExitCode> {
    use mxidp_core::audit;
    use std::io::Write as _;
    match command {
        AuditCommand::Export {
            config,
            since,
            output,
        } => {
            let since = audit::parse_time(&since).map_err(|e| anyhow::anyhow!("--since: {e}"))?;
            let store = open_store(config).await?;
            let mut out: Box<dyn std::io::Write> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("--output: cannot create {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            // A progress line for large exports, on stderr so that stdout stays JSON Lines.
            let mut last_report = 0;
            let written = audit::export(&store, since, &mut out, &mut |n| {
                if n - last_report >= 10_000 {
                    last_report = n;
                    eprintln!("exported {n} records…");
                }
            })
            .await?;
            drop(out);
            eprintln!("exported {written} records since {}", audit::rfc3339(since));
            Ok(std::process::ExitCode::SUCCESS)
        }
        AuditCommand::Verify { config } => {
            let store = open_store(config).await?;
            let report = audit::verify(&store).await?;
            let mut stdout = std::io::stdout().lock();
            for problem in &report.problems {
                writeln!(stdout, "{problem}")?;
            }
            let (seq, hash) = report
                .last
                .clone()
                .unwrap_or((0, audit::GENESIS_HASH.to_owned()));
            if report.is_ok() {
                writeln!(
                    stdout,
                    "audit log OK: {} records, last seq {seq}, last hash {hash}",
                    report.records
                )?;
                Ok(std::process::ExitCode::SUCCESS)
            } else {
                writeln!(
                    stdout,
                    "audit log BROKEN: {} problem(s) in {} records, last seq {seq}, last hash {hash}",
                    report.problems.len(),
                    report.records
                )?;
                Ok(std::process::ExitCode::FAILURE)
            }
        }
    }
}

async fn serve(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load_checked(path.as_deref())?;
    let provider = provider(&config).map_err(mxidp_core::config::ConfigError::Invalid)?;
    let app = mxidp_core::server::build(&config, provider).await?;
    mxidp_core::server::spawn_background(app.clone(), &config)?;
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("http.listen: cannot listen on {}", config.http.listen))?;
    tracing::info!(listen = %config.http.listen, issuer = %config.http.public_base, database = %config.database.url_for_log(), "mxidp listening");
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

//! `mxidp clients …`: the registered Matrix clients. Registration is open to anyone (MSC2966),
//! so an operator can see what registered and remove a registration. Like `mxidp events`, it
//! works on the store directly, beside a running `mxidp serve` or while it is stopped.

use std::path::PathBuf;

use clap::Subcommand;
use mxidp_core::audit::{self, AuditEntry};
use mxidp_core::events::{Acceptance, EventPipeline, IdpEvent, ReceivedEvent};
use mxidp_core::ids::now_unix;
use mxidp_core::sessions::EndCause;

use crate::events_cli::{format_time, open};

#[derive(Subcommand)]
pub enum ClientsCommand {
    /// List registered clients, newest first, with their active sessions.
    List {
        #[arg(long, short, env = "MXIDP_CONFIG")]
        config: Option<PathBuf>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Delete a registration. Its active sessions are ended through the event pipeline (the
    /// running server's worker deletes their devices and revokes them at the IdP).
    Delete {
        #[arg(long, short, env = "MXIDP_CONFIG")]
        config: Option<PathBuf>,
        /// The client id (from `mxidp clients list`).
        client_id: String,
    },
}

pub async fn run(command: ClientsCommand) -> anyhow::Result<()> {
    match command {
        ClientsCommand::List { config, limit } => {
            let store = open(config).await?;
            let clients = store.clients(limit).await?;
            println!(
                "{:<24} {:<20} {:>8}  {:<30} client_uri",
                "client_id", "registered", "sessions", "client_name"
            );
            for (client, sessions) in clients {
                let name: String = client
                    .metadata
                    .client_name
                    .as_deref()
                    .unwrap_or("-")
                    .chars()
                    .take(30)
                    .collect();
                println!(
                    "{:<24} {:<20} {:>8}  {:<30} {}",
                    client.client_id,
                    format_time(client.created_at),
                    sessions,
                    name,
                    client.metadata.client_uri
                );
            }
        }
        ClientsCommand::Delete { config, client_id } => {
            let store = open(config).await?;
            let now = now_unix();
            let active = store
                .clients(i64::MAX)
                .await?
                .into_iter()
                .find(|(c, _)| c.client_id == client_id)
                .map(|(_, n)| n);
            let Some(active) = active else {
                anyhow::bail!("no client {client_id}");
            };
            // Each active session ends as any other session end: a durable event first (with
            // its audit record); the running server's worker applies it.
            let pipeline = EventPipeline::new(store.clone());
            let mut ended = 0;
            for session in store.active_sessions_of_client(&client_id).await? {
                let acceptance = pipeline
                    .accept(
                        EndCause::ClientDeleted.source(),
                        ReceivedEvent {
                            dedupe_key: session.id.to_string(),
                            occurred_at: now,
                            event: IdpEvent::MxidpSessionEnded {
                                session_id: session.id.to_string(),
                            },
                        },
                    )
                    .await?;
                ended += u64::from(matches!(acceptance, Acceptance::Stored(_)));
            }
            store.delete_client(&client_id).await?;
            audit::record(
                store.as_ref(),
                AuditEntry {
                    actor: "operator".into(),
                    action: "client.deleted".into(),
                    target: client_id.clone(),
                    source: "cli".into(),
                    outcome: "ok".into(),
                    correlation_id: client_id.clone(),
                    details: serde_json::json!({ "active_sessions": active, "ends_queued": ended }),
                },
            )
            .await;
            println!("client {client_id} deleted; {ended} active session(s) queued to end");
        }
    }
    Ok(())
}

//! Persistence of received IdP events (the inbox the outbox worker drains). A separate trait
//! from [`crate::store::Store`] (which requires it) so that this part of the schema has its own
//! file per backend: `store/sqlite_events.rs`.

use async_trait::async_trait;

use super::IdpEvent;
use crate::store::StoreError;

/// Where an event stands in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventState {
    /// Accepted and waiting for (another) attempt.
    Pending,
    /// Its actions ran.
    Applied,
    /// Nothing to do (unknown subject, superseded by a newer event): recorded, no action.
    Ignored,
    /// Gave up after the maximum age; kept for `mxidp events retry`.
    Dead,
}

impl EventState {
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Pending => "pending",
            EventState::Applied => "applied",
            EventState::Ignored => "ignored",
            EventState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => EventState::Pending,
            "applied" => EventState::Applied,
            "ignored" => EventState::Ignored,
            "dead" => EventState::Dead,
            _ => return None,
        })
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: i64,
    /// Which receiver took it (`backchannel_logout`, `ssf`, `global_token_revocation`,
    /// `webhook:<provider>`, `reconciliation`).
    pub source: String,
    pub dedupe_key: String,
    pub occurred_at: i64,
    pub received_at: i64,
    pub event: IdpEvent,
    pub state: EventState,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub finished_at: Option<i64>,
}

#[async_trait]
pub trait EventStore: Send + Sync {
    /// Stores a received event unless (source, dedupe_key) is known; `Ok(None)` for a duplicate.
    /// The event is durable when this returns: only then may the receiver answer 2xx.
    async fn insert_event(
        &self,
        source: &str,
        dedupe_key: &str,
        occurred_at: i64,
        event: &IdpEvent,
        now: i64,
    ) -> Result<Option<i64>, StoreError>;
}

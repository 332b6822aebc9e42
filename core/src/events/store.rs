//! Persistence of received IdP events (the inbox the outbox worker drains). A separate trait
//! from [`crate::store::Store`] (which requires it) so that this part of the schema has its own
//! file per backend: `store/sqlite_events.rs`.

use async_trait::async_trait;

use crate::audit::AuditEntry;

use super::IdpEvent;
use crate::store::StoreError;

/// Where an event stands in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventState {
    /// Accepted and waiting for its first attempt (or re-queued by `retry` / `replay`).
    Pending,
    /// At least one attempt failed transiently; waiting for the next one (`next_attempt_at`).
    Failed,
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
            EventState::Failed => "failed",
            EventState::Applied => "applied",
            EventState::Ignored => "ignored",
            EventState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => EventState::Pending,
            "failed" => EventState::Failed,
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
    /// When it was last (re)queued: the maximum age counts from here.
    pub queued_at: i64,
}

/// The newest status event applied for a subject: `(occurred_at, event id)`. A status event
/// that sorts before it is superseded.
pub type StatusWatermark = (i64, i64);

#[async_trait]
pub trait EventStore: Send + Sync {
    /// Stores a received event unless (source, dedupe_key) is known; `Ok(None)` for a duplicate.
    /// The event is durable when this returns: only then may the receiver answer 2xx. `audit`
    /// (its `event.received` record; an empty `correlation_id` becomes the event's id) is
    /// written in the same transaction: a stored event always has its record.
    async fn insert_event(
        &self,
        source: &str,
        dedupe_key: &str,
        occurred_at: i64,
        event: &IdpEvent,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<Option<i64>, StoreError>;

    async fn event(&self, id: i64) -> Result<Option<StoredEvent>, StoreError>;

    /// Counts one more delivery of an event already stored; returns how many duplicates it has
    /// had now (0 when no such event exists). The first duplicate's `audit` record is written
    /// in the same transaction; later ones are only counted.
    async fn count_duplicate(
        &self,
        source: &str,
        dedupe_key: &str,
        audit: &AuditEntry,
        now: i64,
    ) -> Result<i64, StoreError>;

    /// Counts the start of an attempt to apply the event, before its actions run; returns how
    /// many attempts have started (this one included). More than `attempts + 1` means an
    /// earlier attempt was cut short (a crash) before its outcome was recorded.
    async fn begin_attempt(&self, id: i64) -> Result<i64, StoreError>;

    /// Pending and failed events whose next attempt is due at `now`, in the order of the IdP's
    /// own time (then of arrival), at most `limit`.
    async fn due_events(&self, now: i64, limit: i64) -> Result<Vec<StoredEvent>, StoreError>;

    /// Events in a state (all when `None`), newest first, at most `limit`.
    async fn list_events(
        &self,
        state: Option<EventState>,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Marks the event applied (one more attempt). With `status`, in the same transaction, the
    /// event becomes its subject's status watermark unless a newer one is there already. Each
    /// `mark_event_*` writes its `audit` record in the same transaction as the new state.
    async fn mark_event_applied(
        &self,
        id: i64,
        status: bool,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;

    /// Marks the event ignored (nothing to do) with the reason.
    async fn mark_event_ignored(
        &self,
        id: i64,
        reason: &str,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;

    /// Records a transient failure (one more attempt) and when to try again.
    async fn mark_event_failed(
        &self,
        id: i64,
        error: &str,
        next_attempt_at: i64,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;

    /// Gives up on the event (one more attempt) with the error.
    async fn mark_event_dead(
        &self,
        id: i64,
        error: &str,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;

    /// Events waiting to be applied (pending or failed), and when the oldest was queued.
    async fn outbox(&self, now: i64) -> Result<(i64, Option<i64>), StoreError>;

    /// The subject's status watermark, if a status event was ever applied for it.
    async fn status_watermark(&self, subject: &str) -> Result<Option<StatusWatermark>, StoreError>;

    /// Re-queues one event that is not applied (dead, failed, ignored or pending) for an
    /// attempt now; false when there is no such event.
    async fn retry_event(&self, id: i64, now: i64) -> Result<bool, StoreError>;

    /// Re-queues every dead event for an attempt now; returns how many.
    async fn retry_dead_events(&self, now: i64) -> Result<u64, StoreError>;

    /// Re-queues every applied event received at or after `since`; returns how many. Safe to
    /// repeat: the actions are idempotent and status events still respect the watermark.
    async fn replay_events_since(&self, since: i64, now: i64) -> Result<u64, StoreError>;
}

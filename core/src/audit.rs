//! The audit log: an append-only, hash-chained record of every received event, decision and
//! homeserver action, for security teams (SIEM export as JSON Lines).
//! STUB: the audit work fills this in; [`record`] is the one call the rest of mxidp makes.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::store::Store;

/// One audit record as the caller gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Who acted: `idp:<source>`, `client:<client_id>`, `admin:cli`, `mxidp`.
    pub actor: String,
    /// What was decided or done: `event.received`, `session.ended`, `homeserver.delete_device`, …
    pub action: String,
    /// What it concerns: a subject, a localpart, a session id.
    pub target: String,
    /// Where it came from: the receiver, the endpoint, the job.
    pub source: String,
    /// `ok`, `failed: …`, `ignored: …`.
    pub outcome: String,
    /// Ties together the records of one event or request (the event id, a request id).
    pub correlation_id: String,
    /// Non-secret details (never a token).
    #[serde(default)]
    pub details: serde_json::Value,
}

#[async_trait]
pub trait AuditStore: Send + Sync {}

/// Appends a record. Audit failures are logged, never fatal to the action being audited.
pub async fn record(_store: &dyn Store, entry: AuditEntry) {
    tracing::debug!(action = %entry.action, target = %entry.target, outcome = %entry.outcome, "audit (stub)");
}

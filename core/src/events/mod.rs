//! The normalised IdP events (docs/events.md). Every provider's webhook, back-channel logout or
//! Shared Signals payload is turned into these at the edge; everything after (the durable
//! pipeline, the audit log, the homeserver actions) sees only this type.

/// What happened at the IdP, keyed on what the IdP identifies users and sessions by.
/// Serialised (tagged by `kind`) into the durable `idp_events` table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IdpEvent {
    /// One IdP session ended (back-channel logout `sid`).
    SessionEnded {
        sid: String,
    },
    /// Every session of a subject ended.
    AllSessionsEnded {
        subject: String,
    },
    UserLocked {
        subject: String,
    },
    UserUnlocked {
        subject: String,
    },
    UserDeactivated {
        subject: String,
        erase: bool,
    },
    UserReactivated {
        subject: String,
    },
    UserDeleted {
        subject: String,
    },
    CredentialChanged {
        subject: String,
    },
    /// Something about the user changed and the delivery does not say what for sure (Keycloak's
    /// admin update carries the admin's possibly partial request). The worker asks the IdP
    /// ([`crate::provider::Provider::user_status`]) and applies the status it answers; when the
    /// IdP cannot say, `enabled` (what the delivery claimed, if anything) decides.
    UserChanged {
        subject: String,
        #[serde(default)]
        enabled: Option<bool>,
    },
    /// A delivery that was verified and must be remembered (its `jti` spent, so a replay is
    /// known as one) but asks for nothing mxidp can do: a global revocation for a subject
    /// mxidp does not know, a SET of a type it does not handle. The worker records it ignored.
    Unactionable {
        reason: String,
    },
    /// One mxidp session is over at the IdP, found by mxidp itself (reconciliation: the IdP
    /// says its refresh token is no longer active) rather than named by an IdP `sid`.
    MxidpSessionEnded {
        session_id: String,
    },
}

/// An event as received: the IdP's own id for deduplication and its own time for ordering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedEvent {
    /// The IdP's event id, `jti`, `log_id`…: a second delivery with the same key acts once.
    pub dedupe_key: String,
    /// When it happened at the IdP (Unix seconds): an older event never undoes a newer one.
    pub occurred_at: i64,
    pub event: IdpEvent,
}

/// A webhook delivery, as raw as it arrived: signatures are checked on these exact bytes.
#[derive(Debug, Clone)]
pub struct WebhookRequest<'a> {
    pub headers: &'a axum::http::HeaderMap,
    pub body: &'a [u8],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("this provider has no webhook receiver")]
    Unsupported,
    #[error("the sender could not be verified")]
    Unauthenticated,
    #[error("the payload is malformed: {0}")]
    Malformed(String),
}

mod actions;
pub mod log_stream;
pub mod pipeline;
pub mod store;
#[cfg(test)]
mod tests;

pub use pipeline::{run_due, spawn_worker, Acceptance, EventPipeline};
pub use store::{EventState, EventStore, StatusWatermark, StoredEvent};

impl IdpEvent {
    /// A short name for logs, the audit log and the `events` table.
    pub fn kind(&self) -> &'static str {
        match self {
            IdpEvent::SessionEnded { .. } => "session_ended",
            IdpEvent::AllSessionsEnded { .. } => "all_sessions_ended",
            IdpEvent::UserLocked { .. } => "user_locked",
            IdpEvent::UserUnlocked { .. } => "user_unlocked",
            IdpEvent::UserDeactivated { .. } => "user_deactivated",
            IdpEvent::UserReactivated { .. } => "user_reactivated",
            IdpEvent::UserDeleted { .. } => "user_deleted",
            IdpEvent::CredentialChanged { .. } => "credential_changed",
            IdpEvent::UserChanged { .. } => "user_changed",
            IdpEvent::MxidpSessionEnded { .. } => "mxidp_session_ended",
            IdpEvent::Unactionable { .. } => "unactionable",
        }
    }

    /// A status event sets where the user stands (locked, active, deleted): of two for the same
    /// subject, the newer by the IdP's time wins. Session-ending events are always safe to apply.
    pub fn is_status(&self) -> bool {
        matches!(
            self,
            IdpEvent::UserLocked { .. }
                | IdpEvent::UserUnlocked { .. }
                | IdpEvent::UserDeactivated { .. }
                | IdpEvent::UserReactivated { .. }
                | IdpEvent::UserDeleted { .. }
                | IdpEvent::UserChanged { .. }
        )
    }

    /// The subject the event concerns, when it names one (a `SessionEnded` or
    /// `MxidpSessionEnded` names a session).
    pub fn subject(&self) -> Option<&str> {
        match self {
            IdpEvent::SessionEnded { .. }
            | IdpEvent::MxidpSessionEnded { .. }
            | IdpEvent::Unactionable { .. } => None,
            IdpEvent::AllSessionsEnded { subject }
            | IdpEvent::UserLocked { subject }
            | IdpEvent::UserUnlocked { subject }
            | IdpEvent::UserDeactivated { subject, .. }
            | IdpEvent::UserReactivated { subject }
            | IdpEvent::UserDeleted { subject }
            | IdpEvent::CredentialChanged { subject }
            | IdpEvent::UserChanged { subject, .. } => Some(subject),
        }
    }
}

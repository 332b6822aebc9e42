//! What each normalised event does to mxidp's sessions and to the homeserver (docs/events.md).
//!
//! Every action is idempotent, so that a retry after a partial failure, a crash between the
//! action and its record, or an operator's replay never does harm: sessions are ended in the
//! store first (introspection answers inactive at once, even while the homeserver is down), then
//! the homeserver's device list is made to match the sessions still active (`sync_devices`),
//! which a retry completes whatever the first attempt managed.

use std::collections::BTreeSet;

use super::{IdpEvent, StoredEvent};
use crate::app::AppState;
use crate::audit::{self, AuditEntry};
use crate::config::CredentialChangePolicy;
use crate::homeserver::{HomeserverError, ProvisionRequest};
use crate::ids::Localpart;
use crate::provider::UserStatus;
use crate::store::{Session, StoreError};

/// What applying an event came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    Applied,
    /// Nothing to do, with the reason (recorded on the event and in the audit log).
    Ignored(String),
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ActionError {
    #[error("{call}: {error}")]
    Homeserver {
        call: &'static str,
        error: HomeserverError,
    },
    /// Skipped without calling: the homeserver failed transiently earlier in this round.
    #[error("{call}: not tried, the homeserver failed earlier in this round")]
    HomeserverDown { call: &'static str },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The IdP did not answer a question the event needs answered.
    #[error("identity provider: {0}")]
    Idp(String),
}

impl ActionError {
    /// Worth retrying later. A store failure is (the database is back after a restart or a
    /// lock timeout); a homeserver refusal that will not change is not.
    pub(super) fn is_transient(&self) -> bool {
        match self {
            ActionError::Homeserver { error, .. } => error.is_transient(),
            ActionError::HomeserverDown { .. } | ActionError::Store(_) | ActionError::Idp(_) => {
                true
            }
        }
    }
}

/// One event being applied: the application, the event and the round it runs in.
pub(super) struct Action<'a> {
    pub app: &'a AppState,
    pub event: &'a StoredEvent,
    pub now: i64,
    /// Set by the round after a transient homeserver failure: the rest of the round does not
    /// call the homeserver (each call could wait for a timeout), it only retries later.
    pub homeserver_down: &'a std::sync::atomic::AtomicBool,
    /// Which attempt this is (1 for the first), counted when it started.
    pub attempt: i64,
}

impl Action<'_> {
    pub(super) async fn apply(&self) -> Result<Outcome, ActionError> {
        let app = self.app;
        let provider = app.mapping.upstream_id.as_str();
        let event = &self.event.event;

        if let IdpEvent::SessionEnded { sid } = event {
            // Ended sessions count too: a retry finds the sessions its first attempt ended.
            let sessions = app.store.sessions_by_idp_sid(provider, sid).await?;
            if sessions.is_empty() {
                return Ok(Outcome::Ignored("no session has this sid".into()));
            }
            let localparts: BTreeSet<Localpart> =
                sessions.iter().map(|s| s.localpart.clone()).collect();
            self.end_sessions(&sessions).await?;
            for localpart in &localparts {
                self.sync_devices(localpart).await?;
            }
            self.revoke_at_idp(&sessions).await?;
            return Ok(Outcome::Applied);
        }

        if let IdpEvent::Unactionable { reason } = event {
            return Ok(Outcome::Ignored(reason.clone()));
        }

        if let IdpEvent::MxidpSessionEnded { session_id } = event {
            // mxidp ended one session itself (revocation, replay, reuse, the IdP's refusal,
            // re-validation, reconciliation); usually it is marked ended already, and a retry
            // finds it so too.
            let Some(session) = app.store.session(session_id).await? else {
                return Ok(Outcome::Ignored("no such session".into()));
            };
            let sessions = std::slice::from_ref(&session);
            self.end_sessions(sessions).await?;
            self.sync_devices(&session.localpart).await?;
            self.revoke_at_idp(sessions).await?;
            return Ok(Outcome::Applied);
        }

        let Some(subject) = event.subject() else {
            return Ok(Outcome::Ignored("the event names no subject".into()));
        };
        let Some(identity) = app.store.identity_by_subject(provider, subject).await? else {
            return Ok(Outcome::Ignored("unknown subject".into()));
        };
        if event.is_status() {
            if let Some((occurred_at, id)) = app.store.status_watermark(subject).await? {
                if (self.event.occurred_at, self.event.id) < (occurred_at, id) {
                    return Ok(Outcome::Ignored(format!(
                        "superseded by the newer event {id} (occurred at {occurred_at})"
                    )));
                }
            }
            // A deleted identity's localpart is retired for good: nothing brings it back.
            if identity.deleted_at.is_some() && !matches!(event, IdpEvent::UserDeleted { .. }) {
                return Ok(Outcome::Ignored("the identity was deleted".into()));
            }
        }
        let localpart = &identity.localpart;
        let resolved;
        let event = match event {
            IdpEvent::UserChanged { subject, enabled } => {
                match self.resolve(subject, *enabled).await? {
                    Some(status) => {
                        resolved = status;
                        &resolved
                    }
                    None => {
                        return Ok(Outcome::Ignored(
                            "the IdP says nothing of the user's status".into(),
                        ))
                    }
                }
            }
            other => other,
        };

        match event {
            IdpEvent::SessionEnded { .. }
            | IdpEvent::MxidpSessionEnded { .. }
            | IdpEvent::Unactionable { .. }
            | IdpEvent::UserChanged { .. } => {
                unreachable!("handled above")
            }
            IdpEvent::AllSessionsEnded { .. } => {
                self.restrict_jwts(subject, None).await?;
                self.end_subject_sessions(subject).await?;
                self.sync_devices(localpart).await?;
            }
            IdpEvent::CredentialChanged { .. } => {
                match app.events.settings().on_credential_change {
                    CredentialChangePolicy::EndSessions => {
                        self.restrict_jwts(subject, None).await?;
                        self.end_subject_sessions(subject).await?;
                        self.sync_devices(localpart).await?;
                    }
                    CredentialChangePolicy::Record => {
                        return Ok(Outcome::Ignored(
                            "recorded only (events.on_credential_change = \"record\")".into(),
                        ))
                    }
                }
            }
            IdpEvent::UserLocked { .. } => {
                self.restrict_jwts(subject, Some(true)).await?;
                self.end_subject_sessions(subject).await?;
                self.set_locked(localpart, true).await?;
                self.sync_devices(localpart).await?;
            }
            IdpEvent::UserUnlocked { .. } => {
                self.enable_jwts(subject).await?;
                self.set_locked(localpart, false).await?;
            }
            IdpEvent::UserDeactivated { erase, .. } => {
                self.restrict_jwts(subject, Some(true)).await?;
                self.end_subject_sessions(subject).await?;
                // Deactivation also signs out every device in the homeserver.
                self.delete_user(localpart, *erase).await?;
            }
            IdpEvent::UserReactivated { .. } => {
                self.enable_jwts(subject).await?;
                self.homeserver_call("reactivate_user", localpart, async {
                    app.homeserver.reactivate_user(localpart).await
                })
                .await?;
            }
            IdpEvent::UserDeleted { .. } => {
                self.restrict_jwts(subject, Some(true)).await?;
                self.end_subject_sessions(subject).await?;
                let erase = app.events.settings().erase_on_delete;
                self.delete_user(localpart, erase).await?;
                // Only once Synapse has deactivated the account: a tombstone is permanent.
                app.store
                    .tombstone_identity(provider, subject, self.now)
                    .await?;
                self.audit("identity.tombstoned", localpart.as_str(), "ok".into())
                    .await;
            }
        }
        Ok(Outcome::Applied)
    }

    /// What a `UserChanged` comes to: the IdP's answer now, else what the delivery claimed.
    /// An IdP that cannot be reached is a transient failure: the event is retried.
    async fn resolve(
        &self,
        subject: &str,
        enabled: Option<bool>,
    ) -> Result<Option<IdpEvent>, ActionError> {
        let status = self
            .app
            .provider
            .user_status(subject)
            .await
            .map_err(|e| ActionError::Idp(e.to_string()))?;
        let status = match (status, enabled) {
            (UserStatus::Unknown, Some(true)) => UserStatus::Active,
            (UserStatus::Unknown, Some(false)) => UserStatus::Disabled,
            (status, _) => status,
        };
        self.audit(
            "idp.user_status",
            subject,
            format!("ok: {status:?}").to_lowercase(),
        )
        .await;
        Ok(status.event(subject))
    }

    /// The IdP's own JWTs of the subject issued up to the event are refused from now on (the
    /// JWT shim), and none at all while `disabled`. First, so that a failure later in the
    /// action leaves no window.
    async fn restrict_jwts(
        &self,
        subject: &str,
        disabled: Option<bool>,
    ) -> Result<(), ActionError> {
        // The IdP's time of the event, on the clock its tokens' `iat` use; never in the future.
        let not_before = self.event.occurred_at.min(self.now);
        self.app
            .subject_tokens
            .restrict(
                self.app.store.as_ref(),
                &self.app.mapping.upstream_id,
                subject,
                Some(not_before),
                disabled,
                self.now,
            )
            .await?;
        Ok(())
    }

    /// The subject may use the IdP's JWTs issued after the last restriction again.
    async fn enable_jwts(&self, subject: &str) -> Result<(), ActionError> {
        self.app
            .subject_tokens
            .restrict(
                self.app.store.as_ref(),
                &self.app.mapping.upstream_id,
                subject,
                None,
                Some(false),
                self.now,
            )
            .await?;
        Ok(())
    }

    /// Ends the subject's active sessions and revokes them at the IdP (after the store, so
    /// that introspection answers inactive whatever the IdP does).
    async fn end_subject_sessions(&self, subject: &str) -> Result<(), ActionError> {
        let sessions = self
            .app
            .store
            .active_sessions_of_subject(&self.app.mapping.upstream_id, subject)
            .await?;
        self.end_sessions(&sessions).await?;
        self.revoke_at_idp(&sessions).await?;
        Ok(())
    }

    /// Ends the sessions that are still active (store and cache).
    async fn end_sessions(&self, sessions: &[Session]) -> Result<(), ActionError> {
        let reason = format!("idp_event:{}", self.event.event.kind());
        for session in sessions {
            crate::sessions::end_in_store(
                self.app,
                session,
                &reason,
                &self.event.source,
                &self.event.id.to_string(),
                self.now,
            )
            .await?;
        }
        Ok(())
    }

    /// Ends the sessions' grants at the IdP now, when it answers; otherwise the revocation stays
    /// due (the ended sessions keep their sealed tokens) and the worker retries it. Those
    /// already revoked have no sealed tokens left and are skipped.
    async fn revoke_at_idp(&self, sessions: &[Session]) -> Result<(), ActionError> {
        for session in sessions {
            crate::sessions::revoke_at_idp(self.app, session).await?;
        }
        Ok(())
    }

    /// Makes the user's devices in the homeserver exactly those of the sessions still active:
    /// every device of a user comes from an mxidp session, and a retry finishes what an
    /// interrupted attempt started.
    async fn sync_devices(&self, localpart: &Localpart) -> Result<(), ActionError> {
        let devices: BTreeSet<_> = self
            .app
            .store
            .active_devices(localpart)
            .await?
            .into_iter()
            .collect();
        self.homeserver_call("sync_devices", localpart, async {
            match self.app.homeserver.sync_devices(localpart, &devices).await {
                // No user, no devices: the goal state.
                Err(HomeserverError::UserNotFound(_)) => Ok(()),
                other => other,
            }
        })
        .await
    }

    async fn set_locked(&self, localpart: &Localpart, locked: bool) -> Result<(), ActionError> {
        let request = ProvisionRequest {
            locked: Some(locked),
            ..ProvisionRequest::new(localpart.clone())
        };
        self.homeserver_call("provision_user", localpart, async {
            self.app
                .homeserver
                .provision_user(&request)
                .await
                .map(|_| ())
        })
        .await
    }

    async fn delete_user(&self, localpart: &Localpart, erase: bool) -> Result<(), ActionError> {
        self.homeserver_call("delete_user", localpart, async {
            match self.app.homeserver.delete_user(localpart, erase).await {
                // Never provisioned: there is nothing to deactivate.
                Err(HomeserverError::UserNotFound(_)) => Ok(()),
                other => other,
            }
        })
        .await
    }

    /// Runs one homeserver call unless the homeserver is known to be down this round, and
    /// audits it.
    async fn homeserver_call(
        &self,
        call: &'static str,
        localpart: &Localpart,
        request: impl std::future::Future<Output = Result<(), HomeserverError>>,
    ) -> Result<(), ActionError> {
        use std::sync::atomic::Ordering;
        if self.homeserver_down.load(Ordering::Relaxed) {
            return Err(ActionError::HomeserverDown { call });
        }
        let action = format!("homeserver.{call}");
        match request.await {
            Ok(()) => {
                self.audit(&action, localpart.as_str(), "ok".into()).await;
                Ok(())
            }
            Err(error) => {
                if error.is_transient() {
                    self.homeserver_down.store(true, Ordering::Relaxed);
                }
                self.audit(&action, localpart.as_str(), format!("failed: {error}"))
                    .await;
                Err(ActionError::Homeserver { call, error })
            }
        }
    }

    pub(super) async fn audit(&self, action: &str, target: &str, outcome: String) {
        self.audit_with(action, target, outcome, serde_json::Value::Null)
            .await
    }

    pub(super) async fn audit_with(
        &self,
        action: &str,
        target: &str,
        outcome: String,
        details: serde_json::Value,
    ) {
        audit::record(
            self.app.store.as_ref(),
            self.entry(action, target, outcome, details),
        )
        .await;
    }

    /// A record of this event's attempt. A retry's records say which attempt they come from,
    /// so that actions repeated after an interrupted attempt read as a retry, not a new event.
    pub(super) fn entry(
        &self,
        action: &str,
        target: &str,
        outcome: String,
        mut details: serde_json::Value,
    ) -> AuditEntry {
        if self.attempt > 1 {
            match &mut details {
                serde_json::Value::Object(map) => {
                    map.insert("attempt".into(), self.attempt.into());
                }
                other => *other = serde_json::json!({ "attempt": self.attempt }),
            }
        }
        AuditEntry {
            actor: "mxidp".into(),
            action: action.into(),
            target: target.into(),
            source: self.event.source.clone(),
            outcome,
            correlation_id: self.event.id.to_string(),
            details,
        }
    }
}

//! The one way a session ends (docs/events.md): whatever the trigger (the client's revocation,
//! a replayed code, a reused refresh token, the IdP refusing a refresh, re-validation,
//! reconciliation, an IdP event), the end goes through the durable event pipeline.
//!
//! For the triggers that mxidp itself notices, [`end_session`] first persists an
//! `MxidpSessionEnded` event (so a crash after the client's answer loses nothing), then marks
//! the session ended in the store and evicts its tokens (introspection answers inactive at
//! once), and applies the event at once when the pipeline is idle (else the worker does): the
//! homeserver's device list, the IdP revocation.
//! A retry finishes whatever an interrupted attempt started; the audit records are the same
//! for every trigger.

use crate::app::AppState;
use crate::audit::AuditEntry;
use crate::events::{Acceptance, IdpEvent, ReceivedEvent};
use crate::ids::now_unix;
use crate::store::{Session, SessionState, StoreError};
use crate::upstream::{TokenTypeHint, UpstreamError};

/// What made mxidp end a session; each is an event source of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndCause {
    /// The client revoked one of its tokens (RFC 7009).
    Revoked,
    /// An authorization code was presented twice (RFC 6749 §4.1.2: it may have been stolen).
    CodeReplayed,
    /// A rotated refresh token was presented again (it leaked, MSC2964).
    RefreshReused,
    /// The IdP answered `invalid_grant` to a refresh: the session is over there.
    IdpRefusedRefresh,
    /// Re-validation at the IdP called the session's token inactive.
    Revalidation,
    /// Reconciliation found the session over at the IdP.
    Reconciliation,
    /// The sign-in could not finish (the homeserver refused the device): nobody holds its
    /// tokens, and the IdP's are revoked.
    SigninFailed,
    /// A session from before mxidp issued its own tokens (its client holds the IdP's): ended by
    /// the database migration that introduced them.
    TokenModelUpgrade,
    /// An operator deleted the client's registration (`mxidp clients delete`).
    ClientDeleted,
    /// A JWT-shim service account was disabled in the configuration, or its device changed.
    ServiceAccountDisabled,
}

impl EndCause {
    pub const ALL: [EndCause; 10] = [
        EndCause::Revoked,
        EndCause::CodeReplayed,
        EndCause::RefreshReused,
        EndCause::IdpRefusedRefresh,
        EndCause::Revalidation,
        EndCause::Reconciliation,
        EndCause::SigninFailed,
        EndCause::TokenModelUpgrade,
        EndCause::ClientDeleted,
        EndCause::ServiceAccountDisabled,
    ];

    /// The event source, in the `idp_events` table and the audit log.
    pub const fn source(self) -> &'static str {
        match self {
            EndCause::Revoked => "revocation",
            EndCause::CodeReplayed => "code_replay",
            EndCause::RefreshReused => "refresh_reuse",
            EndCause::IdpRefusedRefresh => "idp_refresh",
            EndCause::Revalidation => "revalidation",
            EndCause::Reconciliation => "reconciliation",
            EndCause::SigninFailed => "signin_failed",
            EndCause::TokenModelUpgrade => "token_model_upgrade",
            EndCause::ClientDeleted => "client_deleted",
            EndCause::ServiceAccountDisabled => "service_account_config",
        }
    }

    /// The session's recorded end reason.
    pub fn reason(self) -> &'static str {
        match self {
            EndCause::Revoked => "revoked by the client",
            EndCause::CodeReplayed => "authorization code replayed",
            EndCause::RefreshReused => "refresh token reused",
            EndCause::IdpRefusedRefresh => "IdP refused refresh",
            EndCause::Revalidation => "IdP calls the token inactive",
            EndCause::Reconciliation => "IdP calls the session inactive",
            EndCause::SigninFailed => "homeserver refused the device at sign-in",
            EndCause::TokenModelUpgrade => "upgrade to mxidp's own tokens",
            EndCause::ClientDeleted => "client registration deleted",
            EndCause::ServiceAccountDisabled => "service account disabled or its device changed",
        }
    }

    /// Whether `source` is one of mxidp's own (then mxidp, not the IdP, is the actor).
    pub fn is_own_source(source: &str) -> bool {
        Self::ALL.iter().any(|c| c.source() == source)
    }
}

/// Ends a session durably: the event first, then the store. Returns what the pipeline did
/// with the event (a duplicate when this session was already being ended for this cause).
pub async fn end_session(
    app: &AppState,
    session: &Session,
    cause: EndCause,
) -> Result<Acceptance, StoreError> {
    let now = now_unix();
    let acceptance = app
        .events
        .accept(
            cause.source(),
            ReceivedEvent {
                dedupe_key: session.id.to_string(),
                occurred_at: now,
                event: IdpEvent::MxidpSessionEnded {
                    session_id: session.id.to_string(),
                },
            },
        )
        .await?;
    let correlation_id = match acceptance {
        Acceptance::Stored(id) => id.to_string(),
        Acceptance::Duplicate => format!("{}:{}", cause.source(), session.id),
    };
    if session.state == SessionState::Active {
        end_in_store(
            app,
            session,
            cause.reason(),
            cause.source(),
            &correlation_id,
            now,
        )
        .await?;
    }
    if let Acceptance::Stored(id) = acceptance {
        // Durable already; this only saves the client the worker's wake-up.
        if let Err(e) = crate::events::pipeline::apply_now(app, id).await {
            tracing::warn!(session = %session.id, error = %e, "session end left to the event worker");
        }
    }
    Ok(acceptance)
}

/// Marks the session ended and evicts its tokens from the introspection cache, so that
/// introspection answers inactive from now on, and records `session.ended` in the same
/// transaction. Returns false when it had already ended. The homeserver and the IdP are the
/// worker's part.
pub async fn end_in_store(
    app: &AppState,
    session: &Session,
    reason: &str,
    source: &str,
    correlation_id: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let record = AuditEntry {
        actor: "mxidp".into(),
        action: "session.ended".into(),
        target: session.id.to_string(),
        source: source.into(),
        outcome: "ok".into(),
        correlation_id: correlation_id.into(),
        details: serde_json::json!({
            "reason": reason,
            "upstream": session.provider,
            "subject": session.subject,
            "localpart": session.localpart.as_str(),
            "device_id": session.device_id.as_str(),
            "client_id": session.client_id,
        }),
    };
    let Some(hashes) = app
        .store
        .end_session(&session.id, reason, now, &record)
        .await?
    else {
        return Ok(false);
    };
    app.cache.remove(&hashes);
    tracing::info!(session = %session.id, localpart = %session.localpart, device_id = %session.device_id, reason, "session ended");
    Ok(true)
}

/// How an attempt to revoke an ended session's tokens at the IdP came out.
enum Revocation {
    /// Over: revoked, or nothing the IdP can do (no revocation endpoint, a token type it does
    /// not revoke); the reason is recorded.
    Done(String),
    /// Try again later.
    Retry(String),
}

/// Revokes an ended session's grant at the IdP: a durable step of ending a session. An ended
/// session that still holds its sealed IdP tokens is a revocation to do, so a crash anywhere
/// loses nothing: [`revoke_due`] finds it again. The outcome is recorded with its audit record
/// (`idp.tokens_revoked`) in one transaction, and the tokens are dropped once it is over.
/// Idempotent (RFC 7009 §2.2: revoking a revoked token succeeds).
pub async fn revoke_at_idp(app: &AppState, session: &Session) -> Result<(), StoreError> {
    // As stored now: the caller's copy may predate the end, or another attempt may have
    // finished already.
    let Some(session) = app.store.session(&session.id).await? else {
        return Ok(());
    };
    if session.state == SessionState::Active
        || (session.sealed_refresh_token.is_none() && session.sealed_access_token.is_none())
    {
        return Ok(());
    }
    let session = &session;
    let now = now_unix();
    let outcome = attempt_revocation(app, session).await;
    let (outcome, detail) = match outcome {
        Revocation::Done(detail) => ("ok".to_owned(), detail),
        Revocation::Retry(error) => {
            // Within the events' maximum age, like any other step of the pipeline.
            let ended = session.ended_at.unwrap_or(now);
            let give_up_at = ended.saturating_add(app.events.settings().max_age_seconds as i64);
            if now < give_up_at {
                let retry = app.events.settings();
                let attempts = app
                    .store
                    .retry_revocation(
                        &session.id,
                        now,
                        retry.retry_initial_seconds.max(1) as i64,
                        retry.retry_max_seconds.max(1) as i64,
                    )
                    .await?;
                tracing::warn!(session = %session.id, %error, attempts, "could not revoke the session at the IdP; will retry");
                return Ok(());
            }
            (format!("failed: gave up: {error}"), error)
        }
    };
    app.store
        .finish_revocation(
            &session.id,
            now,
            &AuditEntry {
                actor: "mxidp".into(),
                action: "idp.tokens_revoked".into(),
                target: session.id.to_string(),
                source: "idp_revocation".into(),
                outcome,
                correlation_id: session.id.to_string(),
                details: serde_json::json!({
                    "detail": detail,
                    "upstream": session.provider,
                    "subject": session.subject,
                }),
            },
        )
        .await
}

async fn attempt_revocation(app: &AppState, session: &Session) -> Revocation {
    let Some(upstream) = app.upstream.get() else {
        return Revocation::Retry("the IdP is not discovered yet".into());
    };
    // Revoking the refresh token ends the grant; without one, the access token is all there is.
    let (sealed, hint) = match (&session.sealed_refresh_token, &session.sealed_access_token) {
        (Some(refresh), _) => (refresh, TokenTypeHint::RefreshToken),
        (None, Some(access)) => (access, TokenTypeHint::AccessToken),
        (None, None) => return Revocation::Done("no IdP token".into()),
    };
    let token = match app.sealer.open_secret(sealed) {
        Ok(token) => token,
        // Another encryption key, or a damaged row: no attempt will ever open it.
        Err(e) => return Revocation::Done(format!("the sealed IdP token cannot be opened: {e}")),
    };
    match upstream.revoke(token.expose(), hint).await {
        Ok(()) => Revocation::Done(format!("{} revoked", hint.as_str())),
        Err(UpstreamError::Unsupported(what)) => {
            Revocation::Done(format!("the IdP offers no {what}"))
        }
        Err(UpstreamError::OAuth { error, .. }) if error == "unsupported_token_type" => {
            Revocation::Done(format!("the IdP does not revoke {}s", hint.as_str()))
        }
        Err(e) => Revocation::Retry(e.to_string()),
    }
}

/// Revokes at the IdP what ended sessions still hold, for those due now (after a crash, an IdP
/// outage): part of every event worker round.
pub async fn revoke_due(app: &AppState, now: i64) -> Result<usize, StoreError> {
    // A session ended in the last seconds is its event's to revoke, at once.
    let due = app.store.sessions_to_revoke(now, now - 10, 100).await?;
    for session in &due {
        revoke_at_idp(app, session).await?;
    }
    Ok(due.len())
}

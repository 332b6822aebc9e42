//! Session lifecycle shared by the token, revocation and (later) event paths: ending a
//! session everywhere it lives: the store, the introspection cache, the homeserver device and
//! the IdP.

use crate::audit::{self, AuditEntry};
use crate::http::AppState;
use crate::ids::now_unix;
use crate::store::Session;
use crate::upstream::TokenTypeHint;

/// Ends a session: marks it ended, evicts its tokens from the introspection cache, deletes
/// the device in the homeserver (how a sign-out takes effect at once, DESIGN §3.1) and revokes
/// the refresh token at the IdP. Returns false when it had already ended.
///
/// The store comes first so that introspection answers inactive even if the homeserver or the
/// IdP cannot be reached; those failures are logged.
pub async fn end_session(
    app: &AppState,
    session: &Session,
    reason: &str,
) -> Result<bool, crate::store::StoreError> {
    if !end_session_in_store(app, session, reason, now_unix()).await? {
        return Ok(false);
    }
    // The event pipeline records its own `session.ended`, with the event as correlation.
    audit::record(
        app.store.as_ref(),
        session_entry(session, "session.ended", reason, "ok".into()),
    )
    .await;

    // Another active session of the same user may use the same device id (a client that
    // signed in twice with one device): keep the device then.
    let still_used = app
        .store
        .active_devices(&session.localpart)
        .await
        .map(|devices| devices.contains(&session.device_id))
        .unwrap_or(false);
    if !still_used {
        let outcome = match app
            .homeserver
            .delete_device(&session.localpart, &session.device_id)
            .await
        {
            Ok(_) => "ok".to_owned(),
            Err(e) => {
                tracing::warn!(session = %session.id, error = %e, "could not delete the device in the homeserver");
                format!("failed: {e}")
            }
        };
        audit::record(
            app.store.as_ref(),
            session_entry(session, "homeserver.delete_device", reason, outcome),
        )
        .await;
    }

    revoke_at_idp(app, session).await;
    Ok(true)
}

/// The part of ending a session that cannot fail halfway: marks it ended in the store and evicts
/// its tokens from the introspection cache, so introspection answers inactive from now on.
/// Returns false when it had already ended. The event pipeline uses this and then makes the
/// homeserver's device list match the sessions still active (idempotent, retried on failure).
pub async fn end_session_in_store(
    app: &AppState,
    session: &Session,
    reason: &str,
    now: i64,
) -> Result<bool, crate::store::StoreError> {
    let Some(hashes) = app.store.end_session(&session.id, reason, now).await? else {
        return Ok(false);
    };
    app.cache.remove(&hashes);
    tracing::info!(session = %session.id, localpart = %session.localpart, device_id = %session.device_id, reason, "session ended");
    Ok(true)
}

/// Revokes the session's refresh token at the IdP, best effort (failures are logged): the
/// session is already over for Matrix, this only shortens the IdP's side of it.
pub async fn revoke_at_idp(app: &AppState, session: &Session) {
    if let (Some(sealed), Some(upstream)) = (&session.sealed_refresh_token, app.upstream.get()) {
        match app.sealer.open_secret(sealed) {
            Ok(refresh) => {
                if let Err(e) = upstream
                    .revoke(refresh.expose(), TokenTypeHint::RefreshToken)
                    .await
                {
                    tracing::warn!(session = %session.id, error = %e, "could not revoke the session at the IdP");
                }
            }
            Err(e) => {
                tracing::warn!(session = %session.id, error = %e, "cannot open the sealed refresh token")
            }
        }
    }
}

/// An audit entry about a session: mxidp acts, on the session, for `reason` (which names the
/// trigger: the client's revocation, a replay, the IdP, an event).
fn session_entry(session: &Session, action: &str, reason: &str, outcome: String) -> AuditEntry {
    AuditEntry {
        actor: "mxidp".into(),
        action: action.into(),
        target: session.id.clone(),
        source: "sessions".into(),
        outcome,
        correlation_id: session.id.clone(),
        details: serde_json::json!({
            "reason": reason,
            "provider": session.provider,
            "subject": session.subject,
            "localpart": session.localpart.as_str(),
            "device_id": session.device_id.as_str(),
            "client_id": session.client_id,
        }),
    }
}

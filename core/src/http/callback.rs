//! `GET /upstream/callback`: the IdP sends the browser back here. Checks state and the browser
//! cookie, exchanges the code with mxidp's credentials, validates the ID token, maps the
//! identity, and continues to consent (docs/architecture.md).

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::browser_flow::{client_name, client_redirect, revoke_unused_tokens, same_browser};
use super::{consent, internal, App, AppState};
use crate::ids::now_unix;
use crate::signin;
use crate::store::{AuthorizationStage, PendingAuthorization, Purpose, UpstreamLogin};
use crate::upstream::{IdTokenClaims, UpstreamTokens};

// No Debug: it holds secrets (codes, verifiers, tokens) that must never reach a log.
#[derive(Deserialize)]
pub struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

pub use super::pages::PageError as RouteError;

pub async fn get(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Result<Response, RouteError> {
    let result = callback(app, headers, q).await;
    match &result {
        Err(RouteError::Refused(..)) => crate::metrics::signin("refused"),
        Err(_) => crate::metrics::signin("failed"),
        Ok(_) => {}
    }
    result
}

async fn callback(app: App, headers: HeaderMap, q: CallbackQuery) -> Result<Response, RouteError> {
    let page = |title: &'static str, msg: &str| {
        RouteError::Page(StatusCode::BAD_REQUEST, title, msg.to_owned())
    };
    let state = q.state.as_deref().ok_or_else(|| {
        page(
            "Invalid sign-in",
            "The answer from your organisation's sign-in page was incomplete.",
        )
    })?;
    let pending = app
        .store
        .pending_by_upstream_state(state)
        .await
        .map_err(|e| RouteError::internal("load pending", &e))?
        .filter(|p| p.expires_at >= now_unix())
        .ok_or_else(|| {
            page(
                "Sign-in expired",
                "This sign-in is unknown or has expired. Start again from the application.",
            )
        })?;
    if !same_browser(&app, &headers, &pending) {
        tracing::warn!(pending = %pending.id, "callback from a browser that did not start the sign-in");
        let name = client_name(&app, &pending).await;
        return Err(RouteError::Page(
            StatusCode::BAD_REQUEST,
            "Sign-in from another browser",
            format!(
                "This sign-in to {name} was started in another browser, or this browser blocks cookies. Start again from {name} in this browser."
            ),
        ));
    }
    if pending.stage == AuthorizationStage::AwaitingConsent {
        // This callback URL again (a reload before the redirect landed): the sign-in went on to
        // its consent or confirmation page, which is where the user belongs.
        return Ok(match pending.purpose {
            Purpose::Login | Purpose::DeviceGrant | Purpose::CompatSso => {
                consent::show_again(&app, &pending)
            }
            Purpose::CrossSigningReset => super::account::show_confirmation(&app, &pending),
        });
    }
    if pending.stage != AuthorizationStage::AtIdp {
        let name = client_name(&app, &pending).await;
        return Err(RouteError::Page(
            StatusCode::BAD_REQUEST,
            "Sign-in already finished",
            format!("This sign-in to {name} has already been completed. Go back to {name}."),
        ));
    }
    if pending.purpose == Purpose::CrossSigningReset {
        return reauthenticated(&app, &pending, &q).await;
    }
    if pending.purpose == Purpose::DeviceGrant {
        return device_signed_in(&app, pending, &q).await;
    }
    if pending.purpose == Purpose::CompatSso {
        // A legacy client has no error redirect: a refusal is a page.
        if q.error.is_some() {
            app.store
                .delete_pending(&pending.id)
                .await
                .map_err(|e| RouteError::internal("delete pending", &e))?;
            return Err(RouteError::Page(
                StatusCode::FORBIDDEN,
                "Sign-in cancelled",
                "Your organisation's sign-in page did not confirm the sign-in.".into(),
            ));
        }
        return signed_in(&app, pending, &q, None).await;
    }
    let to = client_redirect(&app, &pending)?;
    let return_denied = to.url(&[("error", "access_denied")]).to_string();

    if let Some(error) = q.error.as_deref() {
        // The IdP refused (user cancelled, policy): hand it to the client and forget the sign-in.
        app.store
            .delete_pending(&pending.id)
            .await
            .map_err(|e| RouteError::internal("delete pending", &e))?;
        let description = q
            .error_description
            .as_deref()
            .unwrap_or("the identity provider refused the sign-in");
        let error = if error == "access_denied" {
            "access_denied"
        } else {
            "server_error"
        };
        return Ok(to.error(error, description));
    }
    signed_in(&app, pending, &q, Some(return_denied)).await
}

/// A device grant's sign-in came back from the IdP: as a code-flow sign-in, except that a
/// refusal denies the grant (the device's poll learns it) instead of redirecting to a client.
async fn device_signed_in(
    app: &AppState,
    pending: PendingAuthorization,
    q: &CallbackQuery,
) -> Result<Response, RouteError> {
    if q.error.is_some() {
        super::device::deny(app, &pending).await?;
        return Err(RouteError::Page(
            StatusCode::FORBIDDEN,
            "Sign-in cancelled",
            "Your organisation's sign-in page did not confirm the sign-in, so your device was not signed in.".into(),
        ));
    }
    signed_in(app, pending, q, None).await
}

/// The IdP's code is exchanged, the identity resolved and the sign-in goes on to consent.
/// `return_denied`: where a refused code-flow sign-in hands `access_denied` to its client;
/// `None` for a device grant (denied instead) and a legacy client (a page instead).
async fn signed_in(
    app: &AppState,
    mut pending: PendingAuthorization,
    q: &CallbackQuery,
    return_denied: Option<String>,
) -> Result<Response, RouteError> {
    let page = |title: &'static str, msg: &str| {
        RouteError::Page(StatusCode::BAD_REQUEST, title, msg.to_owned())
    };
    let code = q.code.as_deref().ok_or_else(|| {
        page(
            "Invalid sign-in",
            "The answer from your organisation's sign-in page was incomplete.",
        )
    })?;
    let (upstream, tokens, validated) = exchange_and_validate(app, &pending, code).await?;
    if let Err(reason) = app.provider.validate_claims(&validated.claims) {
        return Err(RouteError::Logged(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "Your organisation's sign-in page sent an answer this server cannot accept.".into(),
            internal("ID token refused by the provider adapter", &reason),
        ));
    }
    let mut claims = validated.claims.clone();
    if wants_userinfo(app, &upstream, &claims) {
        // userinfo_for drops an answer whose `sub` differs from the ID token's (OIDC Core §5.3.2).
        let userinfo = upstream
            .userinfo_for(tokens.access_token.expose(), &validated.sub)
            .await
            .map_err(|e| RouteError::internal("userinfo", &e))?;
        for (k, v) in userinfo {
            claims.entry(k).or_insert(v);
        }
    }

    let login = signin::resolve(
        &claims,
        app.provider.as_ref(),
        &app.mapping,
        app.store.as_ref(),
        app.homeserver.as_ref(),
    )
    .await
    .map_err(|e| match e {
        e if e.is_refusal() => {
            tracing::info!(reason = %e, "sign-in refused");
            match &return_denied {
                Some(to) => RouteError::Refused(e.to_string(), to.clone()),
                None => RouteError::Page(StatusCode::FORBIDDEN, "Sign-in refused", e.to_string()),
            }
        }
        e => RouteError::internal("resolve identity", &e),
    });
    let login = match login {
        Ok(login) => login,
        Err(e) => {
            if pending.purpose == Purpose::DeviceGrant {
                let _ = super::device::deny(app, &pending).await;
            } else {
                let _ = app.store.delete_pending(&pending.id).await;
            }
            revoke_unused_tokens(
                app,
                tokens.refresh_token.as_ref().map(|t| t.expose()),
                tokens.access_token.expose(),
            )
            .await;
            return Err(e);
        }
    };

    let sealed = app.sealer.seal(
        &serde_json::to_vec(&serde_json::json!({
            "access_token": tokens.access_token.expose(),
            "refresh_token": tokens.refresh_token.as_ref().map(|t| t.expose()),
        }))
        .map_err(|e| RouteError::internal("seal tokens", &e))?,
    );
    pending.login = Some(UpstreamLogin {
        subject: login.subject.clone(),
        localpart: login.localpart.clone(),
        idp_sid: validated.sid.clone(),
        admin: login.admin,
        sealed_tokens: sealed,
        access_expires_in: tokens.expires_in,
        display_name: login.display_name.clone(),
        emails: login.emails.clone(),
    });
    pending.stage = AuthorizationStage::AwaitingConsent;
    app.store
        .update_pending(&pending)
        .await
        .map_err(|e| RouteError::internal("update pending", &e))?;
    tracing::info!(localpart = %login.localpart, client_id = %pending.client_id, "signed in at the IdP");

    consent::continue_after_login(app, pending, &login).await
}

/// Whether to ask userinfo for more claims (`upstream.fetch_userinfo`).
fn wants_userinfo(
    app: &AppState,
    upstream: &crate::upstream::Upstream,
    id_token_claims: &serde_json::Map<String, serde_json::Value>,
) -> bool {
    use crate::upstream::UserinfoMode;
    match upstream.settings().fetch_userinfo {
        UserinfoMode::Always => true,
        UserinfoMode::Never => false,
        UserinfoMode::Auto => {
            upstream.metadata().userinfo_endpoint.is_some()
                && app
                    .mapping
                    .claims_needed()
                    .into_iter()
                    .any(|claim| crate::identity::lookup_claim(id_token_claims, claim).is_none())
        }
    }
}

/// Exchanges the IdP's code with mxidp's credentials and validates the ID token.
async fn exchange_and_validate(
    app: &AppState,
    pending: &PendingAuthorization,
    code: &str,
) -> Result<
    (
        std::sync::Arc<crate::upstream::Upstream>,
        UpstreamTokens,
        IdTokenClaims,
    ),
    RouteError,
> {
    let upstream = app.upstream.get().ok_or_else(|| {
        RouteError::Page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in unavailable",
            "Your organisation's sign-in page cannot be reached right now. Try again in a moment."
                .into(),
        )
    })?;

    let tokens = upstream
        .exchange_code(code, &app.callback_url(), &pending.upstream_verifier)
        .await
        .map_err(|e| {
            RouteError::Logged(
                StatusCode::BAD_GATEWAY,
                "Sign-in failed",
                "Your organisation's sign-in page did not confirm the sign-in.".into(),
                internal("code exchange", &e),
            )
        })?;
    let id_token = tokens.id_token.as_ref().ok_or_else(|| {
        RouteError::Logged(
            StatusCode::BAD_GATEWAY,
            "Sign-in failed",
            "Your organisation's sign-in page did not confirm who you are.".into(),
            internal("code exchange", &"no ID token in the answer"),
        )
    })?;
    let validated = upstream
        .validate_id_token(id_token.expose(), Some(&pending.upstream_nonce))
        .await
        .map_err(|e| {
            RouteError::Logged(
                StatusCode::BAD_REQUEST,
                "Sign-in failed",
                "Your organisation's sign-in page sent an answer this server cannot accept.".into(),
                internal("ID token refused", &e),
            )
        })?;
    Ok((upstream, tokens, validated))
}

/// The callback of a re-authentication before a cross-signing reset.
async fn reauthenticated(
    app: &AppState,
    pending: &PendingAuthorization,
    q: &CallbackQuery,
) -> Result<Response, RouteError> {
    if q.error.is_some() {
        let _ = app.store.delete_pending(&pending.id).await;
        return Err(RouteError::Page(
            StatusCode::FORBIDDEN,
            "Sign-in cancelled",
            "Your organisation's sign-in page did not confirm your sign-in; nothing was changed."
                .into(),
        ));
    }
    let code = q.code.as_deref().ok_or_else(|| {
        RouteError::Page(
            StatusCode::BAD_REQUEST,
            "Invalid sign-in",
            "The answer from your organisation's sign-in page was incomplete.".into(),
        )
    })?;
    let (_, tokens, validated) = exchange_and_validate(app, pending, code).await?;
    Ok(super::account::finish_cross_signing_reset(app, pending, &validated, &tokens).await)
}

//! What the browser steps of a sign-in share (the IdP callback and the consent page): the
//! client's redirect for a pending authorization, and the check that a request comes from the
//! browser that started it.

use axum::http::HeaderMap;

use super::authorize::axum_extra_cookie::read_binding;
use super::authorize::ClientRedirect;
use super::pages::PageError as RouteError;
use super::AppState;
use crate::ids::TokenHash;
use crate::secret::constant_time_eq;
use crate::store::PendingAuthorization;

pub fn client_redirect(
    app: &AppState,
    p: &PendingAuthorization,
) -> Result<ClientRedirect, RouteError> {
    Ok(ClientRedirect {
        redirect_uri: p
            .redirect_uri
            .parse()
            .map_err(|e| RouteError::internal("stored redirect uri", &e))?,
        mode: p.response_mode,
        state: p.client_state.clone(),
        issuer: app.issuer.to_string(),
    })
}

/// The client's name as pages show it (shortened), for messages that name the app; "the app"
/// when it is not known (a cross-signing reset, a registration since deleted).
pub async fn client_name(app: &AppState, pending: &PendingAuthorization) -> String {
    if pending.purpose == crate::store::Purpose::CrossSigningReset {
        return "your Matrix app".into();
    }
    match app.store.client(&pending.client_id).await {
        Ok(Some(client)) => {
            super::pages::ClientIdentity::new(&client.metadata, &pending.redirect_uri).short_name()
        }
        _ => "the app".into(),
    }
}

/// Whether the request comes from the browser that started this sign-in.
pub fn same_browser(app: &AppState, headers: &HeaderMap, pending: &PendingAuthorization) -> bool {
    read_binding(headers, app.secure_cookies()).is_some_and(|cookie| {
        constant_time_eq(
            TokenHash::of(&cookie).to_hex().as_bytes(),
            pending.browser_binding.as_bytes(),
        )
    })
}

/// A sign-in that will not become a session (refused, denied, failed, expired) hands the
/// IdP's tokens back: a failed sign-in leaves no IdP grant behind. Best effort, logged.
pub async fn revoke_unused_tokens(app: &AppState, refresh: Option<&str>, access: &str) {
    let Some(upstream) = app.upstream.get() else {
        return;
    };
    let (token, hint) = match refresh {
        Some(refresh) => (refresh, crate::upstream::TokenTypeHint::RefreshToken),
        None => (access, crate::upstream::TokenTypeHint::AccessToken),
    };
    if let Err(e) = upstream.revoke(token, hint).await {
        tracing::warn!(error = %e, "could not revoke the IdP tokens of a sign-in that did not complete");
    }
}

/// [`revoke_unused_tokens`] for the tokens sealed in a pending sign-in.
pub async fn revoke_sealed_login(app: &AppState, login: &crate::store::UpstreamLogin) {
    #[derive(serde::Deserialize)]
    struct Sealed {
        access_token: String,
        refresh_token: Option<String>,
    }
    let sealed: Option<Sealed> = app
        .sealer
        .open(&login.sealed_tokens)
        .ok()
        .and_then(|raw| serde_json::from_slice(&raw).ok());
    if let Some(sealed) = sealed {
        revoke_unused_tokens(app, sealed.refresh_token.as_deref(), &sealed.access_token).await;
    }
}

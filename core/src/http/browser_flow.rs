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

/// Whether the request comes from the browser that started this sign-in.
pub fn same_browser(app: &AppState, headers: &HeaderMap, pending: &PendingAuthorization) -> bool {
    read_binding(headers, app.secure_cookies()).is_some_and(|cookie| {
        constant_time_eq(
            TokenHash::of(&cookie).to_hex().as_bytes(),
            pending.browser_binding.as_bytes(),
        )
    })
}

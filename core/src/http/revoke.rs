//! `POST /oauth2/revoke` (RFC 7009, MSC4254): either token ends the whole session: both
//! tokens, the IdP's grant, the Matrix device, through the durable session end
//! ([`crate::sessions`]). An unknown token is a success (RFC 7009 §2.2).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Form;
use serde::Deserialize;

use super::{internal, oauth_error, App};
use crate::ids::TokenHash;
use crate::sessions::{end_session, EndCause};
use crate::tokens;

// No Debug: it holds secrets (codes, verifiers, tokens) that must never reach a log.
#[derive(Deserialize)]
pub struct RevokeForm {
    token: Option<String>,
    #[allow(dead_code)]
    token_type_hint: Option<String>,
    client_id: Option<String>,
}

pub async fn post(State(app): State<App>, Form(form): Form<RevokeForm>) -> Response {
    let Some(token) = form.token.as_deref().filter(|t| !t.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is missing",
        );
    };
    // Not one of mxidp's tokens: nothing to look up, and nothing to end (RFC 7009 §2.2).
    if tokens::recognise(token).is_none() {
        return StatusCode::OK.into_response();
    }
    let found = match app.store.token(TokenHash::of(token)).await {
        Ok(found) => found,
        Err(e) => {
            let id = internal("revoke lookup", &e);
            return oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                format!("internal error {id}"),
            );
        }
    };
    let Some((_, session)) = found else {
        return StatusCode::OK.into_response();
    };
    if form
        .client_id
        .as_deref()
        .is_some_and(|c| c != session.client_id)
    {
        // The Matrix spec says to revoke anyway: whoever holds the token may end its session.
        tracing::info!(session = %session.id, "revocation with another client's id; revoking anyway");
    }
    match end_session(&app, &session, EndCause::Revoked).await {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => {
            let id = internal("end session", &e);
            oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                format!("internal error {id}"),
            )
        }
    }
}

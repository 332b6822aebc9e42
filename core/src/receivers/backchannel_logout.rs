//! OpenID Connect Back-Channel Logout 1.0: `POST /upstream/backchannel-logout` with the form
//! parameter `logout_token`, sent by Keycloak, ZITADEL and Auth0 (research/keycloak.md §4,
//! research/zitadel.md §6).
//!
//! Validation follows §2.6 of the spec: signature with the IdP's own keys (discovery
//! `jwks_uri`), `iss` exactly the IdP's issuer, `aud` containing mxidp's client id (string or
//! array), `iat`, `exp` when present, `jti`, an `events` member holding the back-channel-logout
//! event, `sid` and/or `sub`, and no `nonce` (which would make an ID token usable as a logout
//! token). The header `typ` is `logout+jwt` (Keycloak ≥ 25) or `JWT` (older Keycloak, ZITADEL).
//! Responses follow §2.8: 200 with `Cache-Control: no-store`, 400 with an OAuth error.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::{audit, refused, sources, verify_jwt, JwtRules, TokenError};
use crate::events::{Acceptance, IdpEvent, ReceivedEvent};
use crate::http::App;
use crate::ids::now_unix;

const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Keycloak before 23.0.4 sends no `exp` (research/keycloak.md §4): such a token is accepted
/// only this long after its `iat`, so that an old captured token cannot be replayed once the
/// replay cache forgot it.
const MAX_AGE_WITHOUT_EXP: i64 = 600;

#[derive(Debug, thiserror::Error)]
enum LogoutError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the logout token was already received (replayed `jti`)")]
    Replayed,
    #[error("the identity provider is not discovered yet")]
    NoUpstream,
    #[error("internal error (reference {0})")]
    Internal(String),
}

impl LogoutError {
    fn status(&self) -> StatusCode {
        match self {
            // The IdP's keys could not be fetched: our problem, worth a retry.
            LogoutError::Token(TokenError::KeysUnavailable(_)) | LogoutError::NoUpstream => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            LogoutError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for LogoutError {
    fn into_response(self) -> Response {
        let error = match self.status() {
            StatusCode::BAD_REQUEST => "invalid_request",
            StatusCode::SERVICE_UNAVAILABLE => "temporarily_unavailable",
            _ => "server_error",
        };
        crate::http::oauth_error(self.status(), error, self.to_string())
    }
}

pub async fn post(State(app): State<App>, body: Bytes) -> Response {
    match receive(&app, &body).await {
        Ok(()) => {
            let mut response = StatusCode::OK.into_response();
            crate::http::no_store(&mut response);
            response
        }
        Err(error) => {
            if !matches!(error, LogoutError::Internal(_)) {
                refused(&app, sources::BACKCHANNEL_LOGOUT, &error.to_string(), "-").await;
            }
            error.into_response()
        }
    }
}

async fn receive(app: &App, body: &[u8]) -> Result<(), LogoutError> {
    let token = logout_token(body)?;
    let upstream = app.upstream.get().ok_or(LogoutError::NoUpstream)?;
    let settings = upstream.settings();
    let audiences = [settings.client_id.clone()];
    let rules = JwtRules {
        types: &[Some("logout+jwt"), Some("JWT"), None],
        issuer: &upstream.metadata().issuer,
        audiences: &audiences,
        require_iat: true,
        require_exp: false,
        max_age_without_exp: Some(MAX_AGE_WITHOUT_EXP),
        leeway: settings.leeway.as_secs() as i64,
        now: now_unix(),
    };
    let jwt = verify_jwt(
        &token,
        upstream.jwks(),
        &settings.allowed_algorithms,
        &rules,
    )
    .await?;
    let claims = &jwt.claims;
    if claims.contains_key("nonce") {
        // §2.6 step 5: a nonce marks an ID token; accepting one would let any captured ID
        // token sign its user out.
        return Err(TokenError::Invalid("a logout token must not contain `nonce`".into()).into());
    }
    match claims.get("events").and_then(Value::as_object) {
        Some(events)
            if events
                .get(BACKCHANNEL_LOGOUT_EVENT)
                .is_some_and(Value::is_object) => {}
        _ => {
            return Err(TokenError::Invalid(
                "the `events` claim does not hold the back-channel logout event".into(),
            )
            .into())
        }
    }
    let sid = super::claim_str(claims, "sid")?.filter(|s| !s.is_empty());
    let sub = super::claim_str(claims, "sub")?.filter(|s| !s.is_empty());
    // `sid` is the narrower statement: one IdP session (one browser) ended, not every session
    // of the user.
    let event = match (sid, sub) {
        (Some(sid), _) => IdpEvent::SessionEnded { sid },
        (None, Some(subject)) => IdpEvent::AllSessionsEnded { subject },
        (None, None) => {
            return Err(TokenError::Invalid("a logout token needs `sid` or `sub`".into()).into())
        }
    };
    let target = match &event {
        IdpEvent::SessionEnded { sid } => format!("sid:{sid}"),
        other => other.subject().unwrap_or("-").to_owned(),
    };
    let received = ReceivedEvent {
        dedupe_key: jwt.jti.clone(),
        occurred_at: jwt.iat.unwrap_or_else(now_unix),
        event,
    };
    let kind = received.event.kind();
    match app
        .events
        .accept(sources::BACKCHANNEL_LOGOUT, received)
        .await
    {
        Ok(Acceptance::Stored(id)) => {
            // Unknown subjects and sessions are stored too: the pipeline records them as
            // ignored, and the IdP gets its acknowledgement.
            audit(
                app,
                sources::BACKCHANNEL_LOGOUT,
                "event.received",
                &target,
                "ok",
                &id.to_string(),
                json!({ "kind": kind, "jti": jwt.jti }),
            )
            .await;
            Ok(())
        }
        // The spec's replay protection: a logout token is used once.
        Ok(Acceptance::Duplicate) => Err(LogoutError::Replayed),
        Err(e) => Err(LogoutError::Internal(crate::http::internal(
            "storing a back-channel logout event",
            &e,
        ))),
    }
}

/// The single `logout_token` form parameter (§2.5). The body is parsed as a form whatever the
/// `Content-Type` says.
fn logout_token(body: &[u8]) -> Result<String, LogoutError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|_| LogoutError::InvalidRequest("the body is not a form".into()))?;
    let mut tokens = pairs.into_iter().filter(|(k, _)| k == "logout_token");
    match (tokens.next(), tokens.next()) {
        (Some((_, token)), None) if !token.is_empty() => Ok(token),
        (Some(_), Some(_)) => Err(LogoutError::InvalidRequest(
            "`logout_token` is repeated".into(),
        )),
        _ => Err(LogoutError::InvalidRequest(
            "the form has no `logout_token`".into(),
        )),
    }
}

//! Global token revocation (draft-parecki-oauth-global-token-revocation), which Okta Universal
//! Logout sends (research/okta.md §6.1): `POST /upstream/global-token-revocation` with
//! `Authorization: Bearer <JWT>` (header `typ: global-token-revocation+jwt`, `iss` the org
//! URL, `aud` this endpoint's URL, signed with the configured transmitter's keys) and the body
//! `{"sub_id": {...}}` in `iss_sub`, `email` or `opaque` format.
//!
//! Answers, as the draft and Okta read them: 204 done, 400 malformed request or unsupported
//! subject format, 401 missing or bad bearer JWT, 404 unknown subject (nothing stored), 404
//! as well when `[events.global_token_revocation]` is not configured.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::{
    audit, refused, resolve_subject, sources, subject_issuers, verify_jwt, JwtRules, Resolved,
    SubjectId, TokenError,
};
use crate::events::{Acceptance, IdpEvent, ReceivedEvent};
use crate::http::App;
use crate::ids::now_unix;

#[derive(Debug, thiserror::Error)]
enum RevocationError {
    #[error("global token revocation is not configured")]
    NotConfigured,
    #[error("{0}")]
    Unauthenticated(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the request's JWT was already used (replayed `jti`)")]
    Replayed,
    #[error("{0}")]
    Malformed(String),
    #[error("unknown subject: {0}")]
    UnknownSubject(String),
    #[error("internal error (reference {0})")]
    Internal(String),
}

impl IntoResponse for RevocationError {
    fn into_response(self) -> Response {
        let (status, error) = match &self {
            RevocationError::NotConfigured => return StatusCode::NOT_FOUND.into_response(),
            RevocationError::Token(TokenError::KeysUnavailable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
            }
            RevocationError::Unauthenticated(_)
            | RevocationError::Token(_)
            | RevocationError::Replayed => (StatusCode::UNAUTHORIZED, "invalid_token"),
            RevocationError::Malformed(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            RevocationError::UnknownSubject(_) => (StatusCode::NOT_FOUND, "unknown_subject"),
            RevocationError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        };
        let mut response = crate::http::oauth_error(status, error, self.to_string());
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        response
    }
}

pub async fn post(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    match receive(&app, &headers, &body).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => {
            match &error {
                RevocationError::Internal(_) | RevocationError::NotConfigured => {}
                // Audited where the subject is known to be unknown, with the subject.
                RevocationError::UnknownSubject(_) => {}
                _ => {
                    refused(
                        &app,
                        sources::GLOBAL_TOKEN_REVOCATION,
                        &error.to_string(),
                        "-",
                    )
                    .await
                }
            }
            error.into_response()
        }
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, RevocationError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| RevocationError::Unauthenticated("no bearer JWT".into()))?
        .to_str()
        .map_err(|_| {
            RevocationError::Unauthenticated("the Authorization header is not text".into())
        })?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(RevocationError::Unauthenticated(
            "the Authorization header is not a bearer JWT".into(),
        )),
    }
}

async fn receive(app: &App, headers: &HeaderMap, body: &[u8]) -> Result<(), RevocationError> {
    let transmitter = app
        .receivers
        .global_token_revocation
        .as_ref()
        .ok_or(RevocationError::NotConfigured)?;
    let token = bearer(headers)?;
    // The draft: `aud` is the URL of this endpoint, without query or fragment.
    let audiences = [transmitter
        .audience
        .clone()
        .unwrap_or_else(|| app.url(super::paths::GLOBAL_TOKEN_REVOCATION).to_string())];
    let rules = JwtRules {
        // Explicit typing is what keeps an ID token or a SET of the same issuer out.
        types: &[Some("global-token-revocation+jwt")],
        issuer: &transmitter.issuer,
        audiences: &audiences,
        require_iat: false,
        require_exp: true,
        max_age_without_exp: None,
        leeway: app.receivers.leeway.as_secs() as i64,
        now: now_unix(),
    };
    let algorithms = app.receivers.algorithms(app);
    let jwt = verify_jwt(token, &transmitter.jwks, &algorithms, &rules).await?;

    let request: Value = serde_json::from_slice(body)
        .map_err(|_| RevocationError::Malformed("the body is not JSON".into()))?;
    let sub_id = request
        .get("sub_id")
        .ok_or_else(|| RevocationError::Malformed("the body has no `sub_id`".into()))?;
    let subject_id = SubjectId::parse(sub_id).map_err(RevocationError::Malformed)?;

    let issuers = subject_issuers(app, Some(transmitter));
    let internal = |e: crate::store::StoreError| {
        RevocationError::Internal(crate::http::internal(
            "resolving a global token revocation subject",
            &e,
        ))
    };
    let resolved = resolve_subject(app, &subject_id, &issuers)
        .await
        .map_err(internal)?;
    let subject = match resolved {
        Resolved::Subject(subject) => {
            // The draft answers 404 for a user the app does not know; a deleted user has no
            // tokens left either.
            match app
                .store
                .identity_by_subject(&app.mapping.provider_name, &subject)
                .await
                .map_err(internal)?
            {
                Some(identity) if identity.deleted_at.is_none() => Ok(subject),
                _ => Err("no such user".to_owned()),
            }
        }
        Resolved::Unknown(why) => Err(why),
    };
    let subject = match subject {
        Ok(subject) => subject,
        Err(why) => {
            audit(
                app,
                sources::GLOBAL_TOKEN_REVOCATION,
                "event.received",
                &subject_id.describe(),
                &format!("ignored: {why}"),
                &jwt.jti,
                Value::Null,
            )
            .await;
            return Err(RevocationError::UnknownSubject(why));
        }
    };
    let received = ReceivedEvent {
        dedupe_key: jwt.jti.clone(),
        occurred_at: jwt.iat.unwrap_or_else(now_unix),
        event: IdpEvent::AllSessionsEnded {
            subject: subject.clone(),
        },
    };
    match app
        .events
        .accept(sources::GLOBAL_TOKEN_REVOCATION, received)
        .await
    {
        Ok(Acceptance::Stored(id)) => {
            audit(
                app,
                sources::GLOBAL_TOKEN_REVOCATION,
                "event.received",
                &subject,
                "ok",
                &id.to_string(),
                json!({ "kind": "all_sessions_ended", "jti": jwt.jti }),
            )
            .await;
            Ok(())
        }
        Ok(Acceptance::Duplicate) => Err(RevocationError::Replayed),
        Err(e) => Err(RevocationError::Internal(crate::http::internal(
            "storing a global token revocation event",
            &e,
        ))),
    }
}

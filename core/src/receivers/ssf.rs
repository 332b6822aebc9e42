//! Shared Signals push receiver: `POST /upstream/ssf`, the body one Security Event Token
//! (RFC 8417) as `application/secevent+jwt`, delivered per RFC 8935. Okta is such a
//! transmitter (research/okta.md §6.2), with CAEP `session-revoked` and `credential-change`.
//!
//! Answers (RFC 8935 §2.2–2.4): 202 once the event is durable (or deliberately ignored), 400
//! with `{"err", "description"}` otherwise, 404 when `[events.ssf]` is not configured.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::{
    audit, body_token, event_timestamp, refused, resolve_subject, sources, subject_issuers,
    verify_jwt, JwtRules, Resolved, SubjectId, TokenError,
};
use crate::events::{Acceptance, IdpEvent, ReceivedEvent};
use crate::http::App;
use crate::ids::now_unix;

const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";
const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";

/// The normalised event for a SET event type, `None` for types mxidp does not act on
/// (stream verification, `stream-updated`, other CAEP/RISC events).
fn event_for(event_type: &str, subject: String) -> Option<IdpEvent> {
    if let Some(caep) = event_type.strip_prefix(CAEP) {
        return match caep {
            "session-revoked" => Some(IdpEvent::AllSessionsEnded { subject }),
            "credential-change" => Some(IdpEvent::CredentialChanged { subject }),
            _ => None,
        };
    }
    match event_type.strip_prefix(RISC)? {
        "sessions-revoked" => Some(IdpEvent::AllSessionsEnded { subject }),
        "account-disabled" => Some(IdpEvent::UserLocked { subject }),
        "account-enabled" => Some(IdpEvent::UserUnlocked { subject }),
        "account-purged" => Some(IdpEvent::UserDeleted { subject }),
        _ => None,
    }
}

/// RFC 8935 §2.4 error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrCode {
    InvalidRequest,
    InvalidKey,
    InvalidIssuer,
    InvalidAudience,
}

impl ErrCode {
    fn as_str(self) -> &'static str {
        match self {
            ErrCode::InvalidRequest => "invalid_request",
            ErrCode::InvalidKey => "invalid_key",
            ErrCode::InvalidIssuer => "invalid_issuer",
            ErrCode::InvalidAudience => "invalid_audience",
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SsfError {
    #[error("Shared Signals are not configured")]
    NotConfigured,
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the SET was already received (duplicate `jti`)")]
    Duplicate,
    #[error("internal error (reference {0})")]
    Internal(String),
}

impl IntoResponse for SsfError {
    fn into_response(self) -> Response {
        let code = match &self {
            SsfError::NotConfigured => return StatusCode::NOT_FOUND.into_response(),
            SsfError::Internal(_) | SsfError::Token(TokenError::KeysUnavailable(_)) => {
                // Not the transmitter's fault: a 5xx makes it retry (RFC 8935 §2.3 lets the
                // transmitter retry on anything but 202 and 400).
                let status = if matches!(self, SsfError::Internal(_)) {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                return (status, self.to_string()).into_response();
            }
            SsfError::Token(TokenError::Key(_) | TokenError::BadSignature) => ErrCode::InvalidKey,
            SsfError::Token(TokenError::WrongIssuer(_)) => ErrCode::InvalidIssuer,
            SsfError::Token(TokenError::WrongAudience) => ErrCode::InvalidAudience,
            _ => ErrCode::InvalidRequest,
        };
        let mut response = (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "err": code.as_str(), "description": self.to_string() })),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

pub async fn post(State(app): State<App>, body: Bytes) -> Response {
    match receive(&app, &body).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(error) => {
            if !matches!(error, SsfError::Internal(_) | SsfError::NotConfigured) {
                refused(&app, sources::SSF, &error.to_string(), "-").await;
            }
            error.into_response()
        }
    }
}

async fn receive(app: &App, body: &[u8]) -> Result<(), SsfError> {
    let transmitter = app.receivers.ssf.as_ref().ok_or(SsfError::NotConfigured)?;
    let token =
        body_token(body).ok_or_else(|| SsfError::InvalidRequest("the body is not a SET".into()))?;
    // Without a configured audience, mxidp's public URL (with or without its slash) or this
    // endpoint's URL: what an admin would type as the stream's `aud`.
    let audiences = match &transmitter.audience {
        Some(aud) => vec![aud.clone()],
        None => vec![
            app.issuer.to_string(),
            app.issuer.as_str().trim_end_matches('/').to_owned(),
            app.url(super::paths::SSF).to_string(),
        ],
    };
    let rules = JwtRules {
        // RFC 8417 §2.3 recommends `secevent+jwt`; an untyped SET is still a SET.
        types: &[Some("secevent+jwt"), Some("JWT"), None],
        issuer: &transmitter.issuer,
        audiences: &audiences,
        require_iat: true,
        require_exp: false,
        max_age_without_exp: None,
        leeway: app.receivers.leeway.as_secs() as i64,
        now: now_unix(),
    };
    let algorithms = app.receivers.algorithms(app);
    let set = verify_jwt(token, &transmitter.jwks, &algorithms, &rules).await?;

    let events = match set.claims.get("events") {
        Some(Value::Object(events)) => events,
        _ => {
            return Err(SsfError::InvalidRequest(
                "the SET has no `events` object".into(),
            ))
        }
    };
    // SSF 1.0 §4.1: one event per SET.
    let (event_type, payload) = match (events.iter().next(), events.len()) {
        (Some((name, Value::Object(payload))), 1) => (name.as_str(), payload),
        (_, 1) => {
            return Err(SsfError::InvalidRequest(
                "the event payload is not an object".into(),
            ))
        }
        _ => {
            return Err(SsfError::InvalidRequest(
                "a SET must carry exactly one event".into(),
            ))
        }
    };
    if event_for(event_type, String::new()).is_none() {
        // Stream verification and events mxidp has no action for: acknowledged, not stored.
        audit(
            app,
            sources::SSF,
            "event.received",
            "-",
            "ignored: event type not handled",
            &set.jti,
            json!({ "event_type": event_type }),
        )
        .await;
        return Ok(());
    }
    // CAEP/RISC as Okta sends them put the subject in the event; SSF 1.0 puts `sub_id` in the
    // SET itself.
    let subject_value = payload
        .get("subject")
        .or_else(|| set.claims.get("sub_id"))
        .ok_or_else(|| SsfError::InvalidRequest("the event names no subject".into()))?;
    let subject_id = SubjectId::parse(subject_value).map_err(SsfError::InvalidRequest)?;
    let issuers = subject_issuers(app, Some(transmitter));
    let resolved = resolve_subject(app, &subject_id, &issuers)
        .await
        .map_err(|e| SsfError::Internal(crate::http::internal("resolving a SET subject", &e)))?;
    let subject = match resolved {
        Resolved::Subject(subject) => subject,
        Resolved::Unknown(why) => {
            // Acknowledged so that the transmitter does not retry; nothing to act on.
            audit(
                app,
                sources::SSF,
                "event.received",
                &subject_id.describe(),
                &format!("ignored: {why}"),
                &set.jti,
                json!({ "event_type": event_type }),
            )
            .await;
            return Ok(());
        }
    };
    let Some(event) = event_for(event_type, subject.clone()) else {
        return Ok(());
    };
    let occurred_at = event_timestamp(payload.get("event_timestamp"))
        .or(set.iat)
        .unwrap_or_else(now_unix);
    let kind = event.kind();
    let received = ReceivedEvent {
        dedupe_key: set.jti.clone(),
        occurred_at,
        event,
    };
    match app.events.accept(sources::SSF, received).await {
        Ok(Acceptance::Stored(id)) => {
            audit(
                app,
                sources::SSF,
                "event.received",
                &subject,
                "ok",
                &id.to_string(),
                json!({ "kind": kind, "event_type": event_type, "jti": set.jti }),
            )
            .await;
            Ok(())
        }
        Ok(Acceptance::Duplicate) => Err(SsfError::Duplicate),
        Err(e) => Err(SsfError::Internal(crate::http::internal(
            "storing a Shared Signals event",
            &e,
        ))),
    }
}

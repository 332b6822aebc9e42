//! Shared Signals push receiver: `POST /upstream/ssf`, the body one Security Event Token
//! (RFC 8417) as `application/secevent+jwt`, delivered per RFC 8935. Okta is such a
//! transmitter (docs/providers.md, Okta), with CAEP `session-revoked` and `credential-change`.
//!
//! Answers (RFC 8935 §2.2–2.4): 202 once the event is durable (or deliberately ignored), 400
//! with `{"err", "description"}` otherwise, 404 when `[events.ssf]` is not configured.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::{
    body_token, event_timestamp, refused, resolve_subject, sources, subject_issuers, verify_jwt,
    JwtRules, Resolved, SubjectId, TokenError,
};
use crate::app::App;
use crate::events::{Acceptance, IdpEvent, ReceivedEvent};
use crate::ids::now_unix;
use crate::limits::ClientAddress;

const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";
const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";

/// The normalised event for a SET event type, `None` for types mxidp does not act on
/// (stream verification, `stream-updated`, other CAEP/RISC events).
pub(crate) fn event_for(event_type: &str, subject: String) -> Option<IdpEvent> {
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
        // RFC 8935 §2.4 error codes.
        let code = match &self {
            SsfError::NotConfigured => return StatusCode::NOT_FOUND.into_response(),
            SsfError::Internal(_) | SsfError::Token(TokenError::KeysUnavailable(_)) => {
                // Not the transmitter's fault, and not final: a 5xx is a failed delivery the
                // transmitter can retry, where a 400 tells it the SET itself is bad.
                let status = if matches!(self, SsfError::Internal(_)) {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                return (status, self.to_string()).into_response();
            }
            SsfError::Token(
                TokenError::Key(_) | TokenError::UnknownKey(_) | TokenError::BadSignature,
            ) => "invalid_key",
            SsfError::Token(TokenError::WrongIssuer(_)) => "invalid_issuer",
            SsfError::Token(TokenError::WrongAudience) => "invalid_audience",
            _ => "invalid_request",
        };
        let mut response = (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "err": code, "description": self.to_string() })),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

pub async fn post(
    State(app): State<App>,
    ClientAddress(address): ClientAddress,
    body: Bytes,
) -> Response {
    match receive(&app, &body).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(error) => {
            // A replay is audited once by the pipeline (its duplicate count), not per delivery.
            if !matches!(
                error,
                SsfError::Internal(_) | SsfError::NotConfigured | SsfError::Duplicate
            ) {
                refused(&app, sources::SSF, &error.to_string(), "-", address).await;
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
        require_jti: true,
        authorized_party: None,
        // RFC 8417 §2.3: explicit typing keeps another JWT of the same issuer (an ID token, an
        // access token) from passing for a SET.
        types: &[Some("secevent+jwt")],
        issuer: &transmitter.issuer,
        audiences: &audiences,
        require_iat: true,
        require_exp: false,
        max_age_without_exp: Some(transmitter.max_age),
        leeway: app.receivers.leeway.as_secs() as i64,
        now: now_unix(),
    };
    let algorithms = app.receivers.algorithms(app.upstream.get().as_deref());
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
    // Every verified SET is stored under its `jti`, those mxidp does nothing with too (stream
    // verification, event types it does not handle, subjects it does not know): the `jti` is
    // spent, so a replay is a replay, and it is audited once, by the pipeline.
    let event = if event_for(event_type, String::new()).is_none() {
        IdpEvent::Unactionable {
            reason: format!("event type not handled: {}", for_log(event_type)),
        }
    } else {
        // CAEP/RISC as Okta sends them put the subject in the event; SSF 1.0 puts `sub_id` in
        // the SET itself.
        let subject_value = payload
            .get("subject")
            .or_else(|| set.claims.get("sub_id"))
            .ok_or_else(|| SsfError::InvalidRequest("the event names no subject".into()))?;
        let subject_id = SubjectId::parse(subject_value).map_err(SsfError::InvalidRequest)?;
        let issuers = subject_issuers(app, Some(transmitter));
        let resolved = resolve_subject(app, &subject_id, &issuers)
            .await
            .map_err(|e| {
                SsfError::Internal(crate::error_reply::internal("resolving a SET subject", &e))
            })?;
        match resolved {
            Resolved::Subject(subject) => match event_for(event_type, subject) {
                Some(event) => event,
                None => IdpEvent::Unactionable {
                    reason: "event type not handled".into(),
                },
            },
            // Acknowledged so that the transmitter does not retry; nothing to act on.
            Resolved::Unknown(why) => IdpEvent::Unactionable {
                reason: format!("{why}: {}", subject_id.describe()),
            },
        }
    };
    let occurred_at = event_timestamp(payload.get("event_timestamp"))
        .or(set.iat)
        .unwrap_or_else(now_unix);
    let received = ReceivedEvent {
        dedupe_key: set.jti.clone(),
        occurred_at,
        event,
    };
    match app.events.accept(sources::SSF, received).await {
        // `accept` writes the audit record (kind, dedupe key, event id).
        Ok(Acceptance::Stored(_)) => Ok(()),
        Ok(Acceptance::Duplicate) => Err(SsfError::Duplicate),
        Err(e) => Err(SsfError::Internal(crate::error_reply::internal(
            "storing a Shared Signals event",
            &e,
        ))),
    }
}

/// An event type as it may appear in a reason: printable, bounded.
fn for_log(value: &str) -> String {
    value
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;
    use serde_json::{json, Value};

    use super::*;
    use crate::receivers::test_env::{now, patched, tampered, Env, MAX_BODY};

    /// The transmitter and receiver of Okta's published SET samples (the fixtures' `iss` and
    /// `aud`), so that the samples need no change but their signature.
    const OKTA_ISSUER: &str = "https://transmitter.okta.com";
    const OKTA_AUDIENCE: &str = "https://receiverexample.com";

    /// Every `ssf_set_*` fixture of fixtures/okta (each with its `.source.txt`): decoded SET
    /// payloads from Okta's developer docs, reference "ssf-transmitter-sets".
    const OKTA_SETS: [(&str, &str); 8] = [
        (
            "user.account.reset_password",
            include_str!(
                "fixtures/okta/ssf_set_caep_credential_change_user.account.reset_password.json"
            ),
        ),
        (
            "user.account.update_password",
            include_str!(
                "fixtures/okta/ssf_set_caep_credential_change_user.account.update_password.json"
            ),
        ),
        (
            "user.mfa.factor.activate",
            include_str!(
                "fixtures/okta/ssf_set_caep_credential_change_user.mfa.factor.activate.json"
            ),
        ),
        (
            "user.mfa.factor.deactivate",
            include_str!(
                "fixtures/okta/ssf_set_caep_credential_change_user.mfa.factor.deactivate.json"
            ),
        ),
        (
            "user.mfa.factor.reset_all",
            include_str!(
                "fixtures/okta/ssf_set_caep_credential_change_user.mfa.factor.reset_all.json"
            ),
        ),
        (
            "user.mfa.factor.suspend",
            include_str!(
                "fixtures/okta/ssf_set_caep_credential_change_user.mfa.factor.suspend.json"
            ),
        ),
        (
            "user.mfa.factor.unsuspend",
            include_str!(
                "fixtures/okta/ssf_set_caep_credential_change_user.mfa.factor.unsuspend.json"
            ),
        ),
        (
            "user.mfa.factor.update",
            include_str!(
                "fixtures/okta/ssf_set_caep_credential_change_user.mfa.factor.update.json"
            ),
        ),
    ];

    async fn okta_env() -> Env {
        okta_env_with_max_age(86_400).await
    }

    /// Okta's published samples date from 2021: the tests that replay them exactly (their `iat`
    /// included) allow that age.
    async fn okta_samples_env() -> Env {
        okta_env_with_max_age(20 * 365 * 86_400).await
    }

    async fn okta_env_with_max_age(max_age: u64) -> Env {
        Env::with_config(move |idp| {
            format!(
                "[events.ssf]\nissuer = \"{OKTA_ISSUER}\"\njwks_uri = \"{}\"\naudience = \"{OKTA_AUDIENCE}\"\nmax_age_seconds = {max_age}\n",
                idp.jwks_uri()
            )
        })
        .await
    }

    /// Okta's SET header (docs/providers.md, Okta), with the test key's kid.
    fn header() -> Value {
        json!({"alg": "RS256", "kid": "rsa-1", "typ": "secevent+jwt"})
    }

    /// A SET as Okta sends it, with one event for an `iss_sub` subject.
    fn set(event_type: &str, subject: Value) -> Value {
        json!({
            "iss": OKTA_ISSUER,
            "jti": format!("set-{}", crate::ids::random_token(8)),
            "iat": now(),
            "aud": OKTA_AUDIENCE,
            "events": {event_type: {"subject": subject, "event_timestamp": 1_700_000_000}},
        })
    }

    fn okta_user(sub: &str) -> Value {
        json!({"format": "iss_sub", "iss": OKTA_ISSUER, "sub": sub})
    }

    async fn post(env: &Env, body: impl Into<reqwest::Body>) -> reqwest::Response {
        env.http
            .post(env.url(crate::receivers::paths::SSF))
            .header("content-type", "application/secevent+jwt")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn assert_refused(env: &Env, response: reqwest::Response, err: &str, what: &str) {
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{what}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["err"], err, "{what}: {body}");
        assert!(body["description"].is_string(), "{what}");
        assert_eq!(env.events().await, vec![], "{what}: nothing stored");
    }

    #[tokio::test]
    async fn the_real_okta_credential_change_sets_are_accepted() {
        // Each fixture re-signed with the test key. Okta's samples all share one `jti`, so it
        // is made unique per sample (otherwise the second would rightly be a duplicate); iss,
        // aud, iat and the events are exactly the samples'.
        let env = okta_samples_env().await;
        for (name, fixture) in OKTA_SETS {
            let claims = serde_json::from_str::<Value>(fixture).unwrap();
            let jti = format!("{}-{name}", claims["jti"].as_str().unwrap());
            let claims = patched(claims, json!({ "jti": jti }));
            let response = post(&env, env.sign(header(), claims)).await;
            assert_eq!(response.status(), StatusCode::ACCEPTED, "{name}");
            let last = env.events().await.pop().unwrap();
            assert_eq!(last.source, "ssf");
            assert_eq!(last.dedupe_key, jti);
            assert_eq!(
                last.event,
                IdpEvent::CredentialChanged {
                    subject: "okta-user-id1".into()
                },
                "{name}"
            );
            // `event_timestamp` 1615304991643 is in milliseconds.
            assert_eq!(last.occurred_at, 1_615_304_991, "{name}");
        }
        assert_eq!(env.events().await.len(), OKTA_SETS.len());
    }

    #[tokio::test]
    async fn okta_session_revoked_ends_every_session() {
        // The session-revoked example of Okta's "ssf-transmitter-sets" reference, as quoted in
        // Okta's developer documentation (reference "SSF transmitter SETs"; core/src/receivers/fixtures/okta has no file for it). Only the signature is new.
        let env = okta_samples_env().await;
        let claims = json!({"iss":"https://transmitter.okta.com","jti":"24c63fb56e5a2d77a6b512616ca9fa24","iat":1615305159,"aud":"https://receiverexample.com",
            "events":{"https://schemas.openid.net/secevent/caep/event-type/session-revoked":{
              "subject":{"format":"iss_sub","iss":"https://transmitter.okta.com","sub":"okta-user-id1"},
              "reason_admin":{"en":"User logout from Okta"},"event_timestamp":1615304991643_i64}}});
        let response = post(&env, env.sign(header(), claims)).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(
            env.events().await[0].event,
            IdpEvent::AllSessionsEnded {
                subject: "okta-user-id1".into()
            }
        );
    }

    #[tokio::test]
    async fn sets_must_be_typed_and_recent() {
        let env = okta_env().await;
        let session_revoked = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
        let subject = json!({"format": "iss_sub", "iss": OKTA_ISSUER, "sub": "okta-user-id1"});
        for typ in [Some("logout+jwt"), Some("JWT"), Some("at+jwt"), None] {
            let mut h = header();
            match typ {
                Some(t) => h["typ"] = json!(t),
                None => {
                    h.as_object_mut().unwrap().remove("typ");
                }
            }
            let response = post(&env, env.sign(h, set(session_revoked, subject.clone()))).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "typ {typ:?}");
        }
        // Older than `max_age_seconds` (a day by default), with no `exp`: refused.
        let old = patched(
            set(session_revoked, subject.clone()),
            json!({"iat": now() - 2 * 86_400}),
        );
        assert_eq!(
            post(&env, env.sign(header(), old)).await.status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(env.events().await, vec![]);
        let fresh = set(session_revoked, subject);
        assert_eq!(
            post(&env, env.sign(header(), fresh)).await.status(),
            StatusCode::ACCEPTED
        );
    }

    #[tokio::test]
    async fn risc_events_map_to_account_states() {
        let env = okta_samples_env().await;
        for (event_type, expected) in [
            (
                "https://schemas.openid.net/secevent/risc/event-type/account-disabled",
                IdpEvent::UserLocked {
                    subject: "u1".into(),
                },
            ),
            (
                "https://schemas.openid.net/secevent/risc/event-type/account-enabled",
                IdpEvent::UserUnlocked {
                    subject: "u1".into(),
                },
            ),
            (
                "https://schemas.openid.net/secevent/risc/event-type/account-purged",
                IdpEvent::UserDeleted {
                    subject: "u1".into(),
                },
            ),
            (
                "https://schemas.openid.net/secevent/risc/event-type/sessions-revoked",
                IdpEvent::AllSessionsEnded {
                    subject: "u1".into(),
                },
            ),
        ] {
            // SSF 1.0 style: `sub_id` in the SET, an opaque subject, no event_timestamp.
            let claims = json!({
                "iss": OKTA_ISSUER, "aud": OKTA_AUDIENCE, "iat": 1_700_000_123,
                "jti": crate::ids::random_token(8),
                "sub_id": {"format": "opaque", "id": "u1"},
                "events": {event_type: {}},
            });
            let response = post(&env, env.sign(header(), claims)).await;
            assert_eq!(response.status(), StatusCode::ACCEPTED, "{event_type}");
            let last = env.events().await.pop().unwrap();
            assert_eq!(last.event, expected);
            assert_eq!(
                last.occurred_at, 1_700_000_123,
                "iat without event_timestamp"
            );
        }
    }

    #[tokio::test]
    async fn email_subjects_resolve_through_the_identities() {
        let env = okta_env().await;
        env.add_identity("00u-carol", "carol", Some("carol@example.org"))
            .await;
        let claims = set(
            "https://schemas.openid.net/secevent/caep/event-type/session-revoked",
            json!({"format": "email", "email": "Carol@example.org"}),
        );
        assert_eq!(
            post(&env, env.sign(header(), claims)).await.status(),
            StatusCode::ACCEPTED
        );
        assert_eq!(
            env.events().await[0].event,
            IdpEvent::AllSessionsEnded {
                subject: "00u-carol".into()
            }
        );
    }

    #[tokio::test]
    async fn unknown_subjects_and_event_types_are_acknowledged_without_action() {
        let env = okta_env().await;
        let session_revoked = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
        // An unknown subject of our issuer: stored, the pipeline records it as ignored.
        let claims = set(session_revoked, okta_user("nobody"));
        assert_eq!(
            post(&env, env.sign(header(), claims)).await.status(),
            StatusCode::ACCEPTED
        );
        assert_eq!(env.events().await.len(), 1);
        // Nothing mxidp can name or act on: acknowledged, stored as unactionable so that the
        // `jti` is spent (a replay is refused as one) and the pipeline records it ignored.
        for (i, (what, claims)) in [
            (
                "unknown e-mail",
                set(
                    session_revoked,
                    json!({"format": "email", "email": "nobody@example.org"}),
                ),
            ),
            (
                "another issuer's subject",
                set(
                    session_revoked,
                    json!({"format": "iss_sub", "iss": "https://other.example", "sub": "okta-user-id1"}),
                ),
            ),
            (
                "stream verification",
                json!({"iss": OKTA_ISSUER, "aud": OKTA_AUDIENCE, "iat": now(), "jti": "v-1",
                       "events": {"https://schemas.openid.net/secevent/ssf/event-type/verification": {"state": "abc"}}}),
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let token = env.sign(header(), claims);
            let response = post(&env, token.clone()).await;
            assert_eq!(response.status(), StatusCode::ACCEPTED, "{what}");
            let events = env.events().await;
            assert_eq!(events.len(), i + 2, "{what}");
            assert!(
                matches!(events[i + 1].event, IdpEvent::Unactionable { .. }),
                "{what}"
            );
            let replay = post(&env, token).await;
            assert_eq!(replay.status(), StatusCode::BAD_REQUEST, "{what}: a replay");
        }
    }

    #[tokio::test]
    async fn invalid_sets_are_refused_with_rfc_8935_codes_and_change_nothing() {
        let env = okta_env().await;
        let session_revoked = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
        let good = set(session_revoked, okta_user("okta-user-id1"));
        let with = |changes: Value| env.sign(header(), patched(good.clone(), changes));
        let now = now();
        let cases: Vec<(&str, &str, String)> = vec![
            ("bad signature", "invalid_key", tampered(&with(json!({})))),
            (
                "unknown key",
                "invalid_key",
                env.sign(
                    json!({"alg": "RS256", "kid": "nope", "typ": "secevent+jwt"}),
                    good.clone(),
                ),
            ),
            (
                "alg none",
                "invalid_key",
                env.sign(json!({"alg": "none", "typ": "secevent+jwt"}), good.clone()),
            ),
            (
                "wrong iss",
                "invalid_issuer",
                with(json!({"iss": "https://evil.okta.com"})),
            ),
            ("no iss", "invalid_request", with(json!({"iss": null}))),
            (
                "wrong aud",
                "invalid_audience",
                with(json!({"aud": "https://other.example"})),
            ),
            (
                "expired",
                "invalid_request",
                with(json!({"exp": now - 3600})),
            ),
            (
                "issued in the future",
                "invalid_request",
                with(json!({"iat": now + 3600})),
            ),
            ("no iat", "invalid_request", with(json!({"iat": null}))),
            ("no jti", "invalid_request", with(json!({"jti": null}))),
            (
                "events missing",
                "invalid_request",
                with(json!({"events": null})),
            ),
            (
                "events empty",
                "invalid_request",
                with(json!({"events": {}})),
            ),
            (
                "two events",
                "invalid_request",
                with(json!({"events": {
                    session_revoked: {"subject": okta_user("a")},
                    "https://schemas.openid.net/secevent/caep/event-type/credential-change": {"subject": okta_user("a")},
                }})),
            ),
            (
                "no subject",
                "invalid_request",
                with(json!({"events": {session_revoked: {"event_timestamp": now}}})),
            ),
            (
                "unsupported subject format",
                "invalid_request",
                with(
                    json!({"events": {session_revoked: {"subject": {"format": "phone_number", "phone_number": "+1"}}}}),
                ),
            ),
            (
                "a logout token",
                "invalid_request",
                env.sign(
                    json!({"alg": "RS256", "kid": "rsa-1", "typ": "logout+jwt"}),
                    good.clone(),
                ),
            ),
            ("not a JWT", "invalid_request", "{\"events\": {}}".into()),
            (
                "not UTF-8",
                "invalid_request",
                String::from_utf8_lossy(&[0xff, 0xfe]).into(),
            ),
        ];
        for (what, err, body) in cases {
            assert_refused(&env, post(&env, body).await, err, what).await;
        }
        let response = post(&env, vec![0xffu8, 0xfe, 0x00]).await;
        assert_refused(&env, response, "invalid_request", "binary body").await;
    }

    #[tokio::test]
    async fn a_duplicate_set_is_refused_and_stored_once() {
        let env = okta_env().await;
        let token = env.sign(
            header(),
            set(
                "https://schemas.openid.net/secevent/caep/event-type/credential-change",
                okta_user("okta-user-id1"),
            ),
        );
        assert_eq!(
            post(&env, token.clone()).await.status(),
            StatusCode::ACCEPTED
        );
        let replay = post(&env, token).await;
        assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            replay.json::<Value>().await.unwrap()["err"],
            "invalid_request"
        );
        assert_eq!(env.events().await.len(), 1);
    }

    #[tokio::test]
    async fn an_oversized_set_is_refused_with_413() {
        let env = okta_env().await;
        let claims = patched(
            set(
                "https://schemas.openid.net/secevent/caep/event-type/session-revoked",
                okta_user("okta-user-id1"),
            ),
            json!({"padding": "x".repeat(MAX_BODY)}),
        );
        let response = post(&env, env.sign(header(), claims)).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(env.events().await, vec![]);
    }

    #[tokio::test]
    async fn unreachable_transmitter_keys_ask_for_a_retry() {
        let env = okta_env().await;
        env.idp.fail_jwks(true);
        let token = env.sign(
            header(),
            set(
                "https://schemas.openid.net/secevent/caep/event-type/session-revoked",
                okta_user("okta-user-id1"),
            ),
        );
        assert_eq!(
            post(&env, token).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(env.events().await, vec![]);
    }

    #[tokio::test]
    async fn without_configuration_the_endpoint_does_not_exist() {
        let env = Env::start().await;
        let token = env.sign(
            header(),
            set(
                "https://schemas.openid.net/secevent/caep/event-type/session-revoked",
                okta_user("okta-user-id1"),
            ),
        );
        assert_eq!(post(&env, token).await.status(), StatusCode::NOT_FOUND);
        assert_eq!(env.events().await, vec![]);
    }

    #[tokio::test]
    async fn without_a_configured_audience_mxidps_public_url_is_expected() {
        let env = Env::with_config(|idp| {
            format!(
                "[events.ssf]\nissuer = \"{OKTA_ISSUER}\"\njwks_uri = \"{}\"\n",
                idp.jwks_uri()
            )
        })
        .await;
        let event = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
        for (aud, status) in [
            (json!(env.base.as_str()), StatusCode::ACCEPTED),
            (
                json!([env.url("upstream/ssf").as_str()]),
                StatusCode::ACCEPTED,
            ),
            (json!(OKTA_AUDIENCE), StatusCode::BAD_REQUEST),
        ] {
            let claims = patched(set(event, okta_user("u")), json!({ "aud": aud }));
            assert_eq!(
                post(&env, env.sign(header(), claims)).await.status(),
                status,
                "{aud}"
            );
        }
        assert_eq!(env.events().await.len(), 2);
    }
}

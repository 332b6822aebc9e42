//! Global token revocation (draft-parecki-oauth-global-token-revocation), which Okta Universal
//! Logout sends (docs/providers.md, Okta): `POST /upstream/global-token-revocation` with
//! `Authorization: Bearer <JWT>` (header `typ: global-token-revocation+jwt`, `iss` the org
//! URL, `aud` this endpoint's URL, signed with the configured transmitter's keys) and the body
//! `{"sub_id": {...}}` in `iss_sub`, `email` or `opaque` format.
//!
//! Answers: 204 once the request is stored, for a known and an unknown subject alike (the
//! answer must not tell who has a Matrix account; the worker records an unknown one as
//! ignored), 400 malformed request or unsupported subject format, 401 missing or bad bearer
//! JWT or a replayed one, 404 when `[events.global_token_revocation]` is not configured. The
//! JWT's `jti` is spent before the subject is resolved, so a captured request cannot be
//! replayed with another `sub_id` to probe for accounts.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{
    refused, resolve_subject, sources, subject_issuers, verify_jwt, JwtRules, Resolved, SubjectId,
    TokenError,
};
use crate::app::App;
use crate::events::{Acceptance, IdpEvent, ReceivedEvent};
use crate::ids::now_unix;
use crate::limits::ClientAddress;

/// Longest remaining lifetime accepted on a request's JWT.
const MAX_LIFETIME_SECONDS: i64 = 600;

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
            RevocationError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        };
        let mut response = crate::error_reply::oauth_error(status, error, self.to_string());
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        response
    }
}

pub async fn post(
    State(app): State<App>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match receive(&app, &headers, &body).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => {
            match &error {
                // A replay is audited once by the pipeline (its duplicate count).
                RevocationError::Internal(_)
                | RevocationError::NotConfigured
                | RevocationError::Replayed => {}
                _ => {
                    refused(
                        &app,
                        sources::GLOBAL_TOKEN_REVOCATION,
                        &error.to_string(),
                        "-",
                        address,
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
        require_jti: true,
        authorized_party: None,
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
    let algorithms = app.receivers.algorithms(app.upstream.get().as_deref());
    let jwt = verify_jwt(token, &transmitter.jwks, &algorithms, &rules).await?;
    // The JWT does not cover the body: its `jti` is spent with the first well-formed request,
    // and a short lifetime bounds how long a captured token could be tried with a malformed
    // body (a 400 leaves it unspent).
    let exp = jwt
        .claims
        .get("exp")
        .and_then(Value::as_i64)
        .unwrap_or(i64::MAX);
    if exp.saturating_sub(rules.now) > MAX_LIFETIME_SECONDS {
        return Err(RevocationError::Unauthenticated(format!(
            "the JWT lives longer than {MAX_LIFETIME_SECONDS} s"
        )));
    }

    let request: Value = serde_json::from_slice(body)
        .map_err(|_| RevocationError::Malformed("the body is not JSON".into()))?;
    let sub_id = request
        .get("sub_id")
        .ok_or_else(|| RevocationError::Malformed("the body has no `sub_id`".into()))?;
    let subject_id = SubjectId::parse(sub_id).map_err(RevocationError::Malformed)?;

    let issuers = subject_issuers(app, Some(transmitter));
    let internal = |e: crate::store::StoreError| {
        RevocationError::Internal(crate::error_reply::internal(
            "resolving a global token revocation subject",
            &e,
        ))
    };
    let resolved = resolve_subject(app, &subject_id, &issuers)
        .await
        .map_err(internal)?;
    let event = match resolved {
        Resolved::Subject(subject) => {
            // A deleted user has no tokens left: nothing to do, like an unknown one.
            match app
                .store
                .identity_by_subject(&app.mapping.upstream_id, &subject)
                .await
                .map_err(internal)?
            {
                Some(identity) if identity.deleted_at.is_none() => {
                    IdpEvent::AllSessionsEnded { subject }
                }
                _ => IdpEvent::Unactionable {
                    reason: format!("no such user: {}", subject_id.describe()),
                },
            }
        }
        Resolved::Unknown(why) => IdpEvent::Unactionable {
            reason: format!("{why}: {}", subject_id.describe()),
        },
    };
    // Stored either way under the JWT's `jti`: the request is spent, and the answer is the
    // same whether the subject has an account or not.
    let received = ReceivedEvent {
        dedupe_key: jwt.jti.clone(),
        occurred_at: jwt.iat.unwrap_or_else(now_unix),
        event,
    };
    match app
        .events
        .accept(sources::GLOBAL_TOKEN_REVOCATION, received)
        .await
    {
        // `accept` writes the audit record (kind, dedupe key, event id).
        Ok(Acceptance::Stored(_)) => Ok(()),
        Ok(Acceptance::Duplicate) => Err(RevocationError::Replayed),
        Err(e) => Err(RevocationError::Internal(crate::error_reply::internal(
            "storing a global token revocation event",
            &e,
        ))),
    }
}

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;
    use serde_json::{json, Value};

    use super::*;
    use crate::receivers::test_env::{now, patched, tampered, Env, MAX_BODY};
    use crate::store::Store;
    use crate::upstream::test_idp::CLIENT_ID;

    /// The Okta org the requests come from. The `iss_sub` sample below names its users with
    /// issuer `https://issuer.example.com/`, so the org is that host.
    const OKTA_ORG: &str = "https://issuer.example.com";

    /// Bodies Okta sends to an app's Universal Logout endpoint (fixtures/okta, Okta developer
    /// docs "oin-universal-logout-overview"), used verbatim.
    const BODY_EMAIL: &str =
        include_str!("fixtures/okta/universal_logout_gtr_request_body_email.json");
    const BODY_ISS_SUB: &str =
        include_str!("fixtures/okta/universal_logout_gtr_request_body_iss_sub.json");
    /// The body of Okta's OWN inbound endpoint (a user of a third-party IdP): here it names a
    /// subject of an issuer mxidp does not know.
    const BODY_OTHER_ISSUER: &str =
        include_str!("fixtures/okta/okta_inbound_global_token_revocation_request_iss_sub.json");

    async fn okta_env() -> Env {
        Env::with_config(|idp| {
            format!(
                "[events.global_token_revocation]\nissuer = \"{OKTA_ORG}\"\njwks_uri = \"{}\"\n",
                idp.jwks_uri()
            )
        })
        .await
    }

    fn header() -> Value {
        json!({"alg": "RS256", "kid": "rsa-1", "typ": "global-token-revocation+jwt"})
    }

    /// The claims Okta puts in the bearer JWT (docs/providers.md, Okta).
    fn claims(env: &Env) -> Value {
        let now = now();
        json!({
            "jti": format!("gtr-{}", crate::ids::random_token(8)),
            "iss": OKTA_ORG,
            "sub": CLIENT_ID,
            "aud": env.url(crate::receivers::paths::GLOBAL_TOKEN_REVOCATION).as_str(),
            "exp": now + 300,
            "nbf": now - 300,
            "iat": now,
        })
    }

    async fn post(env: &Env, bearer: Option<&str>, body: &str) -> reqwest::Response {
        let mut request = env
            .http
            .post(env.url(crate::receivers::paths::GLOBAL_TOKEN_REVOCATION))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(bearer) = bearer {
            request = request.header("authorization", format!("Bearer {bearer}"));
        }
        request.send().await.unwrap()
    }

    #[tokio::test]
    async fn the_okta_email_request_revokes_the_users_sessions() {
        let env = okta_env().await;
        env.add_identity("00u-user", "user", Some("user@example.com"))
            .await;
        let claims = claims(&env);
        let token = env.sign(header(), claims.clone());
        let response = post(&env, Some(&token), BODY_EMAIL).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let events = env.events().await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].source, "global_token_revocation");
        assert_eq!(events[0].dedupe_key, claims["jti"].as_str().unwrap());
        assert_eq!(
            events[0].event,
            IdpEvent::AllSessionsEnded {
                subject: "00u-user".into()
            }
        );
    }

    #[tokio::test]
    async fn the_okta_iss_sub_request_revokes_the_users_sessions() {
        let env = okta_env().await;
        env.add_identity("145234573", "someone", None).await;
        let token = env.sign(header(), claims(&env));
        let response = post(&env, Some(&token), BODY_ISS_SUB).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            env.events().await[0].event,
            IdpEvent::AllSessionsEnded {
                subject: "145234573".into()
            }
        );
    }

    #[tokio::test]
    async fn an_iss_sub_of_the_upstream_idp_is_accepted_too() {
        let env = okta_env().await;
        env.add_identity("alice-sub", "alice", None).await;
        let body =
            json!({"sub_id": {"format": "iss_sub", "iss": env.idp.issuer(), "sub": "alice-sub"}});
        let token = env.sign(header(), claims(&env));
        let response = post(&env, Some(&token), &body.to_string()).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }

    #[tokio::test]
    async fn unknown_subjects_get_the_same_answer_and_spend_the_jti() {
        let env = okta_env().await;
        env.add_identity("gone", "gone", Some("gone@example.com"))
            .await;
        env.store
            .tombstone_identity(&env.app.mapping.upstream_id, "gone", 1)
            .await
            .unwrap();
        let cases = [
            ("unknown e-mail", BODY_EMAIL.to_owned()),
            ("unknown iss_sub", BODY_ISS_SUB.to_owned()),
            ("another issuer's subject", BODY_OTHER_ISSUER.to_owned()),
            (
                "a deleted user",
                json!({"sub_id": {"format": "opaque", "id": "gone"}}).to_string(),
            ),
        ];
        for (i, (what, body)) in cases.iter().enumerate() {
            let token = env.sign(header(), claims(&env));
            let response = post(&env, Some(&token), body).await;
            // The same answer as for a known user: nobody learns who has an account.
            assert_eq!(response.status(), StatusCode::NO_CONTENT, "{what}");
            let events = env.events().await;
            assert_eq!(events.len(), i + 1, "{what}");
            assert!(
                matches!(events[i].event, IdpEvent::Unactionable { .. }),
                "{what}: {:?}",
                events[i].event
            );
            // The request is spent: the same JWT with another subject is a replay.
            let again = post(&env, Some(&token), BODY_ISS_SUB).await;
            assert_eq!(again.status(), StatusCode::UNAUTHORIZED, "{what}");
        }
        crate::events::run_due(&env.app, now()).await.unwrap();
        let stored = crate::events::EventStore::list_events(env.store.as_ref(), None, 10)
            .await
            .unwrap();
        assert_eq!(stored.len(), cases.len());
        for event in stored {
            assert_eq!(event.state, crate::events::EventState::Ignored);
        }
    }

    #[tokio::test]
    async fn bad_bearer_jwts_get_401_and_change_nothing() {
        let env = okta_env().await;
        env.add_identity("00u-user", "user", Some("user@example.com"))
            .await;
        let good = claims(&env);
        let with = |changes: Value| env.sign(header(), patched(good.clone(), changes));
        let now = now();
        let cases: Vec<(&str, Option<String>)> = vec![
            ("no Authorization header", None),
            ("empty bearer", Some(String::new())),
            ("bad signature", Some(tampered(&with(json!({}))))),
            (
                "wrong iss",
                Some(with(json!({"iss": "https://evil.okta.com"}))),
            ),
            (
                "wrong aud",
                Some(with(json!({"aud": "https://mxidp.example/elsewhere"}))),
            ),
            ("expired", Some(with(json!({"exp": now - 3600})))),
            ("no exp", Some(with(json!({"exp": null})))),
            (
                "a lifetime of a day",
                Some(with(json!({"exp": now + 86_400}))),
            ),
            ("not yet valid", Some(with(json!({"nbf": now + 3600})))),
            ("no jti", Some(with(json!({"jti": null})))),
            (
                "untyped",
                Some(env.sign(json!({"alg": "RS256", "kid": "rsa-1"}), good.clone())),
            ),
            (
                "an ID token",
                Some(env.sign(
                    json!({"alg": "RS256", "kid": "rsa-1", "typ": "JWT"}),
                    good.clone(),
                )),
            ),
            (
                "alg none",
                Some(env.sign(
                    json!({"alg": "none", "typ": "global-token-revocation+jwt"}),
                    good.clone(),
                )),
            ),
            ("not a JWT", Some("opaque-token".into())),
        ];
        for (what, bearer) in cases {
            let response = post(&env, bearer.as_deref(), BODY_EMAIL).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
            assert!(
                response.headers().contains_key("www-authenticate"),
                "{what}"
            );
            assert_eq!(env.events().await, vec![], "{what}");
        }
        // Another scheme.
        let response = env
            .http
            .post(env.url(crate::receivers::paths::GLOBAL_TOKEN_REVOCATION))
            .header("authorization", format!("Basic {}", with(json!({}))))
            .body(BODY_EMAIL)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(env.events().await, vec![]);
    }

    #[tokio::test]
    async fn a_replayed_request_is_refused_and_acts_once() {
        let env = okta_env().await;
        env.add_identity("00u-user", "user", Some("user@example.com"))
            .await;
        let token = env.sign(header(), claims(&env));
        assert_eq!(
            post(&env, Some(&token), BODY_EMAIL).await.status(),
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            post(&env, Some(&token), BODY_EMAIL).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(env.events().await.len(), 1);
    }

    #[tokio::test]
    async fn malformed_bodies_get_400_and_change_nothing() {
        let env = okta_env().await;
        env.add_identity("00u-user", "user", Some("user@example.com"))
            .await;
        for (what, body) in [
            ("not JSON", "sub_id=user@example.com"),
            ("truncated JSON", "{\"sub_id\": {\"format\": \"email\""),
            ("no sub_id", "{\"user\": \"user@example.com\"}"),
            ("sub_id not an object", "{\"sub_id\": \"user@example.com\"}"),
            (
                "unsupported format",
                "{\"sub_id\": {\"format\": \"phone_number\", \"phone_number\": \"+15555550100\"}}",
            ),
            (
                "email without address",
                "{\"sub_id\": {\"format\": \"email\"}}",
            ),
        ] {
            let token = env.sign(header(), claims(&env));
            let response = post(&env, Some(&token), body).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{what}");
            assert_eq!(env.events().await, vec![], "{what}");
        }
    }

    #[tokio::test]
    async fn an_oversized_request_is_refused_with_413() {
        let env = okta_env().await;
        env.add_identity("00u-user", "user", Some("user@example.com"))
            .await;
        let token = env.sign(header(), claims(&env));
        let body = patched(
            serde_json::from_str(BODY_EMAIL).unwrap(),
            json!({"padding": "x".repeat(MAX_BODY)}),
        );
        let response = post(&env, Some(&token), &body.to_string()).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(env.events().await, vec![]);
    }

    #[tokio::test]
    async fn without_configuration_the_endpoint_does_not_exist() {
        let env = Env::start().await;
        let token = env.sign(header(), claims(&env));
        assert_eq!(
            post(&env, Some(&token), BODY_EMAIL).await.status(),
            StatusCode::NOT_FOUND
        );
    }
}

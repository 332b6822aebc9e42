//! OpenID Connect Back-Channel Logout 1.0: `POST /upstream/backchannel-logout` with the form
//! parameter `logout_token`, sent by Keycloak, ZITADEL and Auth0 (docs/providers.md).
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
use serde_json::Value;

use super::{refused, sources, verify_jwt, JwtRules, TokenError};
use crate::app::App;
use crate::events::{Acceptance, IdpEvent, ReceivedEvent};
use crate::ids::now_unix;
use crate::limits::ClientAddress;

const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Keycloak before 23.0.4 sends no `exp` (docs/providers.md, Keycloak): such a token is accepted
/// only this long after its `iat`, so that an old captured token cannot be replayed once the
/// replay cache forgot it.
const MAX_AGE_WITHOUT_EXP: i64 = 600;

#[derive(Debug, thiserror::Error)]
pub(crate) enum LogoutError {
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
        crate::error_reply::oauth_error(self.status(), error, self.to_string())
    }
}

pub async fn post(
    State(app): State<App>,
    ClientAddress(address): ClientAddress,
    body: Bytes,
) -> Response {
    match receive(&app, &body).await {
        Ok(()) => {
            let mut response = StatusCode::OK.into_response();
            crate::error_reply::no_store(&mut response);
            response
        }
        Err(error) => {
            // A replay is audited once by the pipeline (its duplicate count), not per delivery.
            if !matches!(error, LogoutError::Internal(_) | LogoutError::Replayed) {
                refused(
                    &app,
                    sources::BACKCHANNEL_LOGOUT,
                    &error.to_string(),
                    "-",
                    address,
                )
                .await;
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
    let mut types = app.provider.logout_token_types().to_vec();
    if app.events.settings().accept_jwt_typed_logout_tokens {
        types.push(Some("JWT"));
    }
    let rules = JwtRules {
        require_jti: true,
        authorized_party: None,
        types: &types,
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
    let received = ReceivedEvent {
        dedupe_key: jwt.jti.clone(),
        occurred_at: jwt.iat.unwrap_or_else(now_unix),
        event,
    };
    match app
        .events
        .accept(sources::BACKCHANNEL_LOGOUT, received)
        .await
    {
        Ok(Acceptance::Stored(_)) => {
            // Unknown subjects and sessions are stored too: the pipeline records them as
            // ignored, and the IdP gets its acknowledgement. (`accept` writes the audit record.)
            Ok(())
        }
        // The spec's replay protection: a logout token is used once.
        Ok(Acceptance::Duplicate) => Err(LogoutError::Replayed),
        Err(e) => Err(LogoutError::Internal(crate::error_reply::internal(
            "storing a back-channel logout event",
            &e,
        ))),
    }
}

/// The single `logout_token` form parameter (§2.5). The body is parsed as a form whatever the
/// `Content-Type` says.
pub(crate) fn logout_token(body: &[u8]) -> Result<String, LogoutError> {
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

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;
    use serde_json::{json, Value};

    use super::*;
    use crate::receivers::test_env::{now, patched, tampered, Env, Options, MAX_BODY};
    use crate::upstream::test_idp::CLIENT_ID;

    /// Real Keycloak logout-token claims (City-of-Helsinki/yjdh, 2021, no `exp`; see the
    /// `.source.txt` beside it).
    const HELSINKI: &str = include_str!("fixtures/keycloak/logout-token-claims-helsinki.json");

    fn header(typ: Option<&str>) -> Value {
        match typ {
            Some(typ) => json!({"alg": "RS256", "kid": "rsa-1", "typ": typ}),
            None => json!({"alg": "RS256", "kid": "rsa-1"}),
        }
    }

    /// Good claims as Keycloak ≥ 25 sends them, with some members replaced.
    fn claims(env: &Env, changes: Value) -> Value {
        let now = now();
        patched(
            json!({
                "iss": env.idp.issuer(),
                "aud": CLIENT_ID,
                "iat": now,
                "exp": now + 120,
                "jti": format!("jti-{}", crate::ids::random_token(8)),
                "sub": "alice-sub",
                "sid": "kc-session-1",
                "typ": "Logout",
                "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
            }),
            changes,
        )
    }

    async fn post(env: &Env, token: &str) -> reqwest::Response {
        env.http
            .post(env.url(crate::receivers::paths::BACKCHANNEL_LOGOUT))
            .form(&[("logout_token", token)])
            .send()
            .await
            .unwrap()
    }

    async fn assert_refused(env: &Env, response: reqwest::Response, what: &str) {
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{what}");
        assert_eq!(response.headers()["cache-control"], "no-store", "{what}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request", "{what}");
        assert!(body["error_description"].is_string(), "{what}");
        assert_eq!(env.events().await, vec![], "{what}: nothing stored");
    }

    #[tokio::test]
    async fn a_logout_token_with_sid_ends_that_session() {
        let env = Env::start().await;
        let claims = claims(&env, json!({}));
        let response = post(&env, &env.sign(header(Some("logout+jwt")), claims.clone())).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let events = env.events().await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].source, "backchannel_logout");
        assert_eq!(events[0].dedupe_key, claims["jti"].as_str().unwrap());
        assert_eq!(events[0].occurred_at, claims["iat"].as_i64().unwrap());
        assert_eq!(
            events[0].event,
            IdpEvent::SessionEnded {
                sid: "kc-session-1".into()
            }
        );
    }

    #[tokio::test]
    async fn a_logout_token_with_only_sub_ends_every_session_of_the_subject() {
        let env = Env::start().await;
        // aud an array, as ZITADEL sends it.
        let token = env.sign(
            header(Some("logout+jwt")),
            claims(&env, json!({"sid": null, "aud": [CLIENT_ID, "other"]})),
        );
        assert_eq!(post(&env, &token).await.status(), StatusCode::OK);
        assert_eq!(
            env.events().await[0].event,
            IdpEvent::AllSessionsEnded {
                subject: "alice-sub".into()
            }
        );
    }

    #[tokio::test]
    async fn an_unknown_subject_or_session_is_acknowledged_and_recorded() {
        // No identity and no session exist in this store: the event is stored all the same,
        // for the pipeline to record as ignored.
        let env = Env::start().await;
        let token = env.sign(
            header(Some("logout+jwt")),
            claims(&env, json!({"sid": null, "sub": "nobody-we-know"})),
        );
        assert_eq!(post(&env, &token).await.status(), StatusCode::OK);
        assert_eq!(
            env.events().await[0].event,
            IdpEvent::AllSessionsEnded {
                subject: "nobody-we-know".into()
            }
        );
    }

    #[tokio::test]
    async fn the_real_keycloak_claims_are_accepted() {
        // fixtures/keycloak/logout-token-claims-helsinki.json, re-signed with the test key;
        // only iss, aud and iat (the token has no exp) were replaced, every other claim and
        // the pre-Keycloak-25 header typ `JWT` are as Keycloak sent them. `JWT` is accepted
        // only where configured (the Keycloak adapter does it itself).
        let env =
            Env::with_config(|_| "[events]\naccept_jwt_typed_logout_tokens = true".into()).await;
        let fixture: Value = serde_json::from_str(HELSINKI).unwrap();
        let claims = patched(
            fixture.clone(),
            json!({"iss": env.idp.issuer(), "aud": CLIENT_ID, "iat": now()}),
        );
        assert!(claims.get("exp").is_none());
        let response = post(&env, &env.sign(header(Some("JWT")), claims)).await;
        assert_eq!(response.status(), StatusCode::OK);
        let events = env.events().await;
        assert_eq!(events[0].dedupe_key, fixture["jti"].as_str().unwrap());
        assert_eq!(
            events[0].event,
            IdpEvent::SessionEnded {
                sid: fixture["sid"].as_str().unwrap().into()
            }
        );
    }

    #[tokio::test]
    async fn replays_of_one_logout_token_add_one_audit_record() {
        let env = Env::start().await;
        let token = env.sign(header(Some("logout+jwt")), claims(&env, json!({})));
        assert_eq!(post(&env, &token).await.status(), StatusCode::OK);
        let audited = || async {
            env.app
                .store
                .audit_records(0, None, 1_000)
                .await
                .unwrap()
                .len()
        };
        let after_first = audited().await;
        for _ in 0..60 {
            // Refused as a replay every time (OIDC Back-Channel Logout 1.0 §2.6 step 8)...
            assert_eq!(post(&env, &token).await.status(), StatusCode::BAD_REQUEST);
        }
        // ...stored once, audited once as a duplicate, counted after that.
        assert_eq!(env.events().await.len(), 1);
        assert_eq!(audited().await, after_first + 1);
    }

    #[tokio::test]
    async fn logout_tokens_must_be_typed_logout_jwt_unless_configured() {
        let env = Env::start().await;
        for typ in [Some("at+jwt"), Some("JWT"), Some("secevent+jwt"), None] {
            let token = env.sign(header(typ), claims(&env, json!({})));
            let response = post(&env, &token).await;
            assert_refused(&env, response, &format!("typ {typ:?}")).await;
        }
        assert_eq!(env.events().await, vec![]);
        // `application/logout+jwt` is the same type (RFC 7515 §4.1.9).
        let typed = env.sign(
            header(Some("application/logout+jwt")),
            claims(&env, json!({})),
        );
        assert_eq!(post(&env, &typed).await.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn invalid_logout_tokens_are_refused_and_change_nothing() {
        let env = Env::start().await;
        let now = now();
        let good = |changes: Value| env.sign(header(Some("logout+jwt")), claims(&env, changes));
        let cases: Vec<(&str, String)> =
            vec![
            ("bad signature", tampered(&good(json!({})))),
            ("wrong iss", good(json!({"iss": "https://evil.example/realms/test"}))),
            (
                "iss with an extra slash",
                good(json!({"iss": format!("{}/", env.idp.issuer())})),
            ),
            ("wrong aud", good(json!({"aud": "someone-else"}))),
            ("aud array without mxidp", good(json!({"aud": ["a", "b"]}))),
            ("expired", good(json!({"iat": now - 600, "exp": now - 300}))),
            (
                "no exp and issued long ago",
                good(json!({"iat": now - 3600, "exp": null})),
            ),
            ("issued in the future", good(json!({"iat": now + 600}))),
            ("no iat", good(json!({"iat": null}))),
            ("nonce present", good(json!({"nonce": "n-0S6_WzA2Mj"}))),
            ("events missing", good(json!({"events": null}))),
            (
                "events without the logout event",
                good(json!({"events": {"http://schemas.openid.net/event/other": {}}})),
            ),
            (
                "logout event not an object",
                good(json!({"events": {BACKCHANNEL_LOGOUT_EVENT: true}})),
            ),
            ("neither sid nor sub", good(json!({"sid": null, "sub": null}))),
            ("no jti", good(json!({"jti": null}))),
            ("sid not a string", good(json!({"sid": 42}))),
            (
                "typ of another token",
                env.sign(header(Some("at+jwt")), claims(&env, json!({}))),
            ),
            (
                "a SET",
                env.sign(header(Some("secevent+jwt")), claims(&env, json!({}))),
            ),
            (
                "alg none",
                env.sign(json!({"alg": "none", "typ": "logout+jwt"}), claims(&env, json!({}))),
            ),
            (
                "HS256 with the public key",
                env.sign(
                    json!({"alg": "HS256", "kid": "rsa-1", "typ": "logout+jwt"}),
                    claims(&env, json!({})),
                ),
            ),
            (
                "key from a jku header",
                env.sign(
                    json!({"alg": "RS256", "kid": "elsewhere", "jku": "http://127.0.0.1:1/jwks"}),
                    claims(&env, json!({})),
                ),
            ),
            ("not a JWT", "not-a-token".into()),
            ("a JWE", "eyJhbGciOiJSU0EtT0FFUCJ9.a2V5.aXY.Y2lwaGVy.dGFn".into()),
        ];
        for (what, token) in cases {
            assert_refused(&env, post(&env, &token).await, what).await;
        }
    }

    #[tokio::test]
    async fn malformed_forms_are_refused() {
        let env = Env::start().await;
        let token = env.sign(header(None), claims(&env, json!({})));
        let url = env.url(crate::receivers::paths::BACKCHANNEL_LOGOUT);
        for (what, body) in [
            ("empty body", String::new()),
            ("another parameter", format!("id_token={token}")),
            (
                "repeated",
                format!("logout_token={token}&logout_token={token}"),
            ),
            ("JSON", json!({"logout_token": token}).to_string()),
        ] {
            let response = env
                .http
                .post(url.clone())
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_refused(&env, response, what).await;
        }
    }

    #[tokio::test]
    async fn a_replayed_logout_token_is_refused() {
        let env = Env::start().await;
        let token = env.sign(header(Some("logout+jwt")), claims(&env, json!({})));
        assert_eq!(post(&env, &token).await.status(), StatusCode::OK);
        let replay = post(&env, &token).await;
        assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
        let body: Value = replay.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request");
        assert_eq!(env.events().await.len(), 1, "stored once");
    }

    #[tokio::test]
    async fn an_oversized_body_is_refused_with_413() {
        let env = Env::start().await;
        let claims = claims(&env, json!({"padding": "x".repeat(MAX_BODY)}));
        let response = post(&env, &env.sign(header(None), claims)).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(env.events().await, vec![]);
    }

    #[tokio::test]
    async fn without_a_discovered_idp_the_idp_is_asked_to_retry() {
        let env = Env::with(Options {
            discovered: false,
            ..Options::default()
        })
        .await;
        let token = env.sign(header(None), claims(&env, json!({})));
        let response = post(&env, &token).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(env.events().await, vec![]);
    }
}

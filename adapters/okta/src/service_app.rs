//! An Okta API service app as the management API's credential, instead of an admin's API token:
//! OAuth 2.0 client credentials at the org authorization server, the client authenticated with
//! `private_key_jwt` (Okta service apps accept no client secret for the management scopes), for
//! `okta.users.read okta.logs.read`. The access token is kept until a minute before it expires.
//! Okta can require DPoP of a service app; mxidp does not send DPoP proofs, so that setting must
//! be off for this app (deploy/okta/README.md).

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mxidp_core::secret::SecretString;
use mxidp_core::upstream::UpstreamError;
use serde::Deserialize;
use url::Url;

/// The scopes the adapter reads with.
pub const SCOPES: &str = "okta.users.read okta.logs.read";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

pub struct ServiceApp {
    client_id: String,
    key: EncodingKey,
    /// The `kid` of the app's public key registered at Okta, when it has several.
    key_id: Option<String>,
    token: tokio::sync::Mutex<Option<(SecretString, Instant)>>,
}

impl std::fmt::Debug for ServiceApp {
    // The private key stays out of any log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceApp")
            .field("client_id", &self.client_id)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    token_type: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl ServiceApp {
    /// `pem`: the app's RSA private key (PKCS#8 or PKCS#1 PEM).
    pub fn new(client_id: String, pem: &[u8], key_id: Option<String>) -> Result<Self, String> {
        let key = EncodingKey::from_rsa_pem(pem)
            .map_err(|e| format!("the private key is not an RSA PEM key: {e}"))?;
        Ok(Self {
            client_id,
            key,
            key_id,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// The `Authorization` value for the management API: a cached token, or a new one.
    pub async fn authorization(
        &self,
        http: &reqwest::Client,
        org: &Url,
    ) -> Result<String, UpstreamError> {
        let mut cached = self.token.lock().await;
        if let Some((token, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(format!("Bearer {}", token.expose()));
            }
        }
        let endpoint = org
            .join("oauth2/v1/token")
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        let assertion = self.assertion(&endpoint)?;
        let response = http
            .post(endpoint)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", SCOPES),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| UpstreamError::Transport(e.without_url().to_string()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| UpstreamError::Transport(e.without_url().to_string()))?;
        if !status.is_success() {
            let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            return Err(UpstreamError::OAuth {
                error: error["error"].as_str().unwrap_or("http_error").to_owned(),
                description: format!(
                    "the service app's token request got {status}: {}",
                    error["error_description"].as_str().unwrap_or_default()
                ),
            });
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| UpstreamError::Protocol(format!("the token answer: {e}")))?;
        if !answer.token_type.eq_ignore_ascii_case("bearer") {
            return Err(UpstreamError::Protocol(format!(
                "the service app got a {:?} token: turn off \"Require DPoP\" for it at Okta",
                answer.token_type
            )));
        }
        // A minute early, so that a token never expires between here and Okta.
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(300).saturating_sub(60));
        let value = format!("Bearer {}", answer.access_token);
        *cached = Some((
            SecretString::new(answer.access_token),
            Instant::now() + lifetime,
        ));
        Ok(value)
    }

    /// The client assertion (RFC 7523 §3): the app as issuer and subject, the token endpoint as
    /// audience, five minutes, a fresh `jti`.
    fn assertion(&self, endpoint: &Url) -> Result<String, UpstreamError> {
        let now = mxidp_core::ids::now_unix();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.key_id.clone();
        let claims = serde_json::json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": endpoint.as_str(),
            "iat": now,
            "exp": now + 300,
            "jti": mxidp_core::ids::random_token(16),
        });
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| UpstreamError::Protocol(format!("signing the client assertion: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::extract::State;
    use axum::http::HeaderMap;
    use axum::routing::{get, post};
    use axum::{Form, Json, Router};
    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;
    use crate::management::{Credential, ManagementApi};

    /// Okta's org authorization server and one Users API path, as far as the service app uses
    /// them: the assertion is verified with the app's registered public key.
    async fn okta(token_type: &'static str) -> (Url, Arc<AtomicUsize>) {
        let issued = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let org: Url = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let endpoint = org.join("oauth2/v1/token").unwrap().to_string();
        let token =
            move |State(issued): State<Arc<AtomicUsize>>,
                  Form(form): Form<std::collections::HashMap<String, String>>| {
                let endpoint = endpoint.clone();
                async move {
                    assert_eq!(form["grant_type"], "client_credentials");
                    assert_eq!(form["scope"], SCOPES);
                    assert_eq!(form["client_assertion_type"], ASSERTION_TYPE);
                    let key = DecodingKey::from_rsa_pem(
                        mxidp_core::upstream::test_idp::rsa_public_key_pem().as_bytes(),
                    )
                    .unwrap();
                    let mut rules = Validation::new(Algorithm::RS256);
                    rules.set_audience(&[endpoint]);
                    rules.set_issuer(&["0oaservice"]);
                    let claims = jsonwebtoken::decode::<serde_json::Value>(
                        &form["client_assertion"],
                        &key,
                        &rules,
                    )
                    .expect("a valid client assertion")
                    .claims;
                    assert_eq!(claims["sub"], "0oaservice");
                    issued.fetch_add(1, Ordering::SeqCst);
                    Json(serde_json::json!({
                        "access_token": "okta-service-token", "token_type": token_type,
                        "expires_in": 3600, "scope": SCOPES,
                    }))
                }
            };
        let user = |headers: HeaderMap| async move {
            if headers.get("authorization").and_then(|v| v.to_str().ok())
                == Some("Bearer okta-service-token")
            {
                (axum::http::StatusCode::OK, "{\"status\":\"ACTIVE\"}")
            } else {
                (axum::http::StatusCode::UNAUTHORIZED, "{}")
            }
        };
        let app = Router::new()
            .route("/oauth2/v1/token", post(token))
            .route("/api/v1/users/00u1", get(user))
            .with_state(issued.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (org, issued)
    }

    fn app() -> ServiceApp {
        ServiceApp::new(
            "0oaservice".into(),
            mxidp_core::upstream::test_idp::rsa_private_key_pem().as_bytes(),
            Some("key-1".into()),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_service_app_reads_with_a_token_got_by_private_key_jwt_and_kept() {
        let (org, issued) = okta("Bearer").await;
        let api = ManagementApi::new(
            org.clone(),
            Credential::ServiceApp(app()),
            Duration::from_secs(5),
        )
        .unwrap();
        for _ in 0..3 {
            let answer = api
                .get(org.join("api/v1/users/00u1").unwrap())
                .await
                .unwrap();
            assert_eq!(answer.status, 200);
        }
        assert_eq!(issued.load(Ordering::SeqCst), 1, "the token is kept");
    }

    #[tokio::test]
    async fn a_dpop_bound_token_is_refused_with_what_to_change() {
        let (org, _) = okta("DPoP").await;
        let api = ManagementApi::new(
            org.clone(),
            Credential::ServiceApp(app()),
            Duration::from_secs(5),
        )
        .unwrap();
        let Err(error) = api.get(org.join("api/v1/users/00u1").unwrap()).await else {
            panic!("a DPoP token must not be used");
        };
        assert!(error.to_string().contains("DPoP"), "{error}");
    }

    #[test]
    fn a_key_that_is_not_rsa_pem_is_refused() {
        let error = ServiceApp::new("0oa".into(), b"not a key", None).unwrap_err();
        assert!(error.contains("RSA PEM"), "{error}");
    }
}

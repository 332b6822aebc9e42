//! mxidp as one confidential OpenID Connect client of the IdP (docs/architecture.md).

use std::time::SystemTime;

use serde::Deserialize;
use serde_json::{Map, Value};
use url::Url;

use super::http::{authenticate, error_from_response, read_limited, transport};
use super::id_token::{self, Expectations};
use super::*;

/// A discovered IdP and mxidp's registration at it.
pub struct Upstream {
    settings: UpstreamSettings,
    metadata: ProviderMetadata,
    http: reqwest::Client,
    jwks: JwksCache,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("issuer", &self.metadata.issuer)
            .finish_non_exhaustive()
    }
}

/// The part of an RFC 7662 §2.2 introspection response mxidp uses. Other members are ignored
/// (IdPs differ in their types, e.g. a float `exp`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TokenIntrospection {
    pub active: bool,
}

/// RFC 6749 §5.1 token response. `expires_in` is a number, but some IdPs send a string.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    expires_in: Option<Value>,
    #[serde(default)]
    scope: Option<String>,
}

impl Upstream {
    /// Fetches the IdP's discovery document and checks it against the settings.
    pub async fn discover(
        settings: UpstreamSettings,
        http: reqwest::Client,
    ) -> Result<Self, UpstreamError> {
        let metadata = discovery::fetch(&settings, &http).await?;
        let supported = &metadata.id_token_signing_alg_values_supported;
        if !supported.is_empty()
            && !settings
                .allowed_algorithms
                .iter()
                .any(|a| supported.contains(&format!("{a:?}")))
        {
            tracing::warn!(
                issuer = %metadata.issuer,
                ?supported,
                "none of the allowed ID-token algorithms is advertised by the IdP"
            );
        }
        let jwks = JwksCache::new(
            http.clone(),
            metadata.jwks_uri.clone(),
            settings.http_timeout,
            settings.jwks_refetch_cooldown,
        )
        .with_refresh_every(settings.jwks_refresh);
        tracing::info!(issuer = %metadata.issuer, "discovered the upstream OpenID Provider");
        Ok(Self {
            settings,
            metadata,
            http,
            jwks,
        })
    }

    pub fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// The IdP's signing keys (shared with the JWT shim, docs/token-model.md).
    pub fn jwks(&self) -> &JwksCache {
        &self.jwks
    }

    /// The scopes requested at the IdP: `openid` first, then the configured ones, deduplicated.
    pub fn scope(&self) -> String {
        let mut scopes: Vec<&str> = vec!["openid"];
        for scope in self.settings.scopes.iter().flat_map(|s| s.split(' ')) {
            if !scope.is_empty() && !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        scopes.join(" ")
    }

    /// The URL to send the browser to. The authorization endpoint may carry its own query
    /// (OAuth 2.0 §3.1 allows it); mxidp's parameters are appended to it.
    pub fn authorization_url(&self, request: &UpstreamAuthorization) -> Url {
        let mut url = self.metadata.authorization_endpoint.clone();
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &self.settings.client_id)
                .append_pair("redirect_uri", request.redirect_uri.as_str())
                .append_pair("scope", &self.scope())
                .append_pair("state", &request.state)
                .append_pair("nonce", &request.nonce)
                .append_pair("code_challenge", &request.code_challenge)
                .append_pair("code_challenge_method", "S256");
            for (name, value) in &request.extra {
                query.append_pair(name, value);
            }
        }
        url
    }

    /// Exchanges an authorization code (RFC 6749 §4.1.3 with the PKCE verifier, RFC 7636 §4.5).
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &Url,
        code_verifier: &str,
    ) -> Result<UpstreamTokens, UpstreamError> {
        self.token_request(vec![
            ("grant_type", "authorization_code".into()),
            ("code", code.into()),
            ("redirect_uri", redirect_uri.as_str().into()),
            ("code_verifier", code_verifier.into()),
        ])
        .await
    }

    /// Validates an ID token from this IdP: signature with the IdP's published keys, `iss`,
    /// `aud`/`azp`, `nonce`, `exp`/`iat`/`nbf` (OIDC Core §3.1.3.7).
    pub async fn validate_id_token(
        &self,
        id_token: &str,
        expected_nonce: Option<&str>,
    ) -> Result<IdTokenClaims, IdTokenError> {
        self.validate_id_token_at(id_token, expected_nonce, SystemTime::now())
            .await
    }

    async fn validate_id_token_at(
        &self,
        id_token: &str,
        expected_nonce: Option<&str>,
        now: SystemTime,
    ) -> Result<IdTokenClaims, IdTokenError> {
        let expect = Expectations {
            issuer: &self.metadata.issuer,
            client_id: &self.settings.client_id,
            allowed_algorithms: &self.settings.allowed_algorithms,
            nonce: expected_nonce,
            leeway: self.settings.leeway,
            now,
        };
        id_token::validate(id_token, &self.jwks, &expect).await
    }

    /// Fetches the userinfo claims (OIDC Core §5.3). The caller must check that `sub` equals
    /// the ID token's before merging (§5.3.2); [`Upstream::userinfo_for`] does it.
    /// Only JSON responses are supported, not signed or encrypted userinfo.
    pub async fn userinfo(&self, access_token: &str) -> Result<Map<String, Value>, UpstreamError> {
        let endpoint = self
            .metadata
            .userinfo_endpoint
            .clone()
            .ok_or(UpstreamError::Unsupported("a userinfo endpoint"))?;
        let started = std::time::Instant::now();
        let response = self
            .http
            .get(endpoint)
            .bearer_auth(access_token)
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.settings.http_timeout)
            .send()
            .await;
        crate::metrics::upstream_call(
            "userinfo",
            started,
            response.as_ref().is_ok_and(|r| r.status().as_u16() < 500),
        );
        let response = response.map_err(transport)?;
        let status = response.status();
        let is_jwt = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/jwt"));
        let body = read_limited(response).await?;
        if !status.is_success() {
            if status == reqwest::StatusCode::UNAUTHORIZED {
                // RFC 6750 §3: the error is in WWW-Authenticate, usually with an empty body.
                return Err(UpstreamError::OAuth {
                    error: "invalid_token".into(),
                    description: "the userinfo endpoint refused the access token".into(),
                });
            }
            return Err(error_from_response(status, &body));
        }
        if is_jwt {
            return Err(UpstreamError::Unsupported("signed userinfo responses"));
        }
        match serde_json::from_slice(&body) {
            Ok(Value::Object(claims)) => Ok(claims),
            _ => Err(UpstreamError::Protocol(
                "the userinfo response is not a JSON object".into(),
            )),
        }
    }

    /// [`Upstream::userinfo`], refusing claims about another subject than `expected_sub`
    /// (OIDC Core §5.3.2: otherwise a substituted userinfo response could change the identity).
    pub async fn userinfo_for(
        &self,
        access_token: &str,
        expected_sub: &str,
    ) -> Result<Map<String, Value>, UpstreamError> {
        let claims = self.userinfo(access_token).await?;
        match claims.get("sub").and_then(Value::as_str) {
            Some(sub) if sub == expected_sub => Ok(claims),
            _ => Err(UpstreamError::Protocol(
                "the userinfo `sub` is not the ID token's `sub`".into(),
            )),
        }
    }

    /// Refreshes at the IdP with mxidp's credentials. `invalid_grant` means the IdP session is
    /// over and comes back as [`UpstreamError::InvalidGrant`].
    pub async fn refresh(&self, refresh_token: &str) -> Result<UpstreamTokens, UpstreamError> {
        self.token_request(vec![
            ("grant_type", "refresh_token".into()),
            ("refresh_token", refresh_token.into()),
        ])
        .await
    }

    /// Revokes a token at the IdP (RFC 7009).
    pub async fn revoke(&self, token: &str, hint: TokenTypeHint) -> Result<(), UpstreamError> {
        let endpoint = self
            .metadata
            .revocation_endpoint
            .clone()
            .ok_or(UpstreamError::Unsupported("token revocation"))?;
        let mut form = vec![
            ("token", token.to_owned()),
            ("token_type_hint", hint.as_str().to_owned()),
        ];
        let request = authenticate(
            self.http.post(endpoint.clone()),
            (&self.metadata.issuer, &endpoint),
            &mut form,
            &self.settings,
        );
        let started = std::time::Instant::now();
        let response = request
            .form(&form)
            .timeout(self.settings.http_timeout)
            .send()
            .await;
        crate::metrics::upstream_call(
            "revocation",
            started,
            response.as_ref().is_ok_and(|r| r.status().as_u16() < 500),
        );
        let response = response.map_err(transport)?;
        let status = response.status();
        let body = read_limited(response).await?;
        if status.is_success() {
            // RFC 7009 §2.2: 200 also for tokens that were already invalid.
            return Ok(());
        }
        Err(error_from_response(status, &body))
    }

    /// Asks the IdP whether a token is active (RFC 7662), authenticated with mxidp's client
    /// credentials the same way as at the token endpoint. `active: false` is an answer, not an
    /// error; an unreachable IdP or any other answer is an error, so that a caller never takes
    /// an outage for a dead token. [`UpstreamError::Unsupported`] when the discovery document
    /// names no introspection endpoint.
    pub async fn introspect(
        &self,
        token: &str,
        hint: TokenTypeHint,
    ) -> Result<TokenIntrospection, UpstreamError> {
        let endpoint = self
            .metadata
            .introspection_endpoint
            .clone()
            .ok_or(UpstreamError::Unsupported("token introspection"))?;
        let mut form = vec![
            ("token", token.to_owned()),
            ("token_type_hint", hint.as_str().to_owned()),
        ];
        let request = authenticate(
            self.http.post(endpoint.clone()),
            (&self.metadata.issuer, &endpoint),
            &mut form,
            &self.settings,
        );
        let started = std::time::Instant::now();
        let response = request
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .timeout(self.settings.http_timeout)
            .send()
            .await;
        crate::metrics::upstream_call(
            "introspection",
            started,
            response.as_ref().is_ok_and(|r| r.status().as_u16() < 500),
        );
        let response = response.map_err(transport)?;
        let status = response.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(UpstreamError::RateLimited {
                retry_after: super::http::retry_after(response.headers()),
            });
        }
        let body = read_limited(response).await?;
        if !status.is_success() {
            return Err(error_from_response(status, &body));
        }
        // RFC 7662 §2.2: `active` is REQUIRED and a boolean; anything else is not an answer.
        let parsed: TokenIntrospection = serde_json::from_slice(&body).map_err(|e| {
            UpstreamError::Protocol(format!("the introspection response is malformed: {e}"))
        })?;
        Ok(parsed)
    }

    async fn token_request(
        &self,
        mut form: Vec<(&'static str, String)>,
    ) -> Result<UpstreamTokens, UpstreamError> {
        let request = authenticate(
            self.http.post(self.metadata.token_endpoint.clone()),
            (&self.metadata.issuer, &self.metadata.token_endpoint),
            &mut form,
            &self.settings,
        );
        let started = std::time::Instant::now();
        let response = request
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .timeout(self.settings.http_timeout)
            .send()
            .await;
        crate::metrics::upstream_call(
            "token",
            started,
            response.as_ref().is_ok_and(|r| r.status().as_u16() < 500),
        );
        let response = response.map_err(transport)?;
        let status = response.status();
        let body = read_limited(response).await?;
        if !status.is_success() {
            let error = error_from_response(status, &body);
            tracing::info!(%status, grant_type = %form[0].1, "the IdP's token endpoint refused the request");
            return Err(error);
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            UpstreamError::Protocol(format!("the token response is malformed: {e}"))
        })?;
        if let Some(token_type) = &parsed.token_type {
            // RFC 6749 §7.1: the type is case-insensitive. mxidp hands these tokens to Matrix
            // clients as Bearer tokens, so a DPoP- or MAC-bound token is unusable.
            if !token_type.eq_ignore_ascii_case("bearer") {
                return Err(UpstreamError::Protocol(format!(
                    "unsupported token_type {token_type:?}"
                )));
            }
        }
        let expires_in = match parsed.expires_in {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
            Some(Value::String(s)) => s.parse().ok(),
            Some(_) => None,
        };
        Ok(UpstreamTokens {
            access_token: SecretString::new(parsed.access_token),
            refresh_token: parsed.refresh_token.map(SecretString::new),
            id_token: parsed.id_token.map(SecretString::new),
            expires_in,
            scope: parsed.scope,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde_json::json;
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::upstream::test_idp::{ClientAuthUsed, TestIdp, CLIENT_ID};

    const VERIFIER: &str = "dBjftJeZ4CVP-mJ0kzDmpY3mNLPq0AO2Ihv1UsgM2Xzk";

    fn challenge(verifier: &str) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
    }

    fn callback() -> Url {
        Url::parse("https://mxidp.example/upstream/callback").unwrap()
    }

    fn authorization(extra: Vec<(String, String)>) -> UpstreamAuthorization {
        UpstreamAuthorization {
            redirect_uri: callback(),
            state: "state-123".into(),
            nonce: "nonce-456".into(),
            code_challenge: challenge(VERIFIER),
            extra,
        }
    }

    #[tokio::test]
    async fn discovery_reads_the_document_of_a_path_issuer() {
        let idp = TestIdp::start().await;
        let upstream = idp.upstream().await;
        let metadata = upstream.metadata();
        assert_eq!(metadata.issuer, idp.issuer());
        assert!(idp.issuer().ends_with("/realms/test"));
        assert_eq!(
            metadata.token_endpoint.as_str(),
            format!("{}/token", idp.issuer())
        );
        assert_eq!(metadata.jwks_uri, idp.jwks_uri());
        assert!(metadata.revocation_endpoint.is_some());
        assert!(metadata
            .prompt_values_supported
            .iter()
            .any(|p| p == "create"));
        assert_eq!(upstream.settings().client_id, CLIENT_ID);
    }

    #[tokio::test]
    async fn discovery_of_a_root_issuer_accepts_either_spelling_and_keeps_the_idps() {
        let idp = TestIdp::start_at("/").await;
        assert!(idp.issuer().ends_with('/'));
        assert_eq!(idp.upstream().await.metadata().issuer, idp.issuer());
        let without_slash = idp.issuer().trim_end_matches('/').to_owned();
        idp.patch_discovery(json!({"issuer": without_slash}));
        let upstream = idp.upstream().await;
        // ID tokens are then checked against the IdP's spelling, byte for byte.
        assert_eq!(upstream.metadata().issuer, without_slash);
    }

    #[tokio::test]
    async fn discovery_refuses_an_issuer_mismatch() {
        let idp = TestIdp::start().await;
        for advertised in [
            "https://evil.example/realms/test".to_owned(),
            format!("{}/", idp.issuer()),
            idp.issuer().to_uppercase(),
        ] {
            idp.patch_discovery(json!({"issuer": advertised}));
            let error = Upstream::discover(idp.upstream_settings(), reqwest::Client::new())
                .await
                .unwrap_err();
            assert!(
                matches!(&error, UpstreamError::Discovery(m) if m.contains("is not the configured issuer")),
                "{advertised}: {error}"
            );
        }
    }

    #[tokio::test]
    async fn discovery_names_a_missing_endpoint() {
        for field in [
            "authorization_endpoint",
            "token_endpoint",
            "jwks_uri",
            "issuer",
        ] {
            let idp = TestIdp::start().await;
            idp.patch_discovery(json!({ field: null }));
            let error = Upstream::discover(idp.upstream_settings(), reqwest::Client::new())
                .await
                .unwrap_err();
            assert!(
                matches!(&error, UpstreamError::Discovery(m) if m.contains(field)),
                "{field}: {error}"
            );
        }
    }

    #[tokio::test]
    async fn oversized_responses_are_refused() {
        let idp = TestIdp::start().await;
        idp.patch_discovery(json!({"padding": "x".repeat(2 * 1024 * 1024)}));
        let error = Upstream::discover(idp.upstream_settings(), reqwest::Client::new())
            .await
            .unwrap_err();
        assert!(
            matches!(&error, UpstreamError::Protocol(m) if m.contains("larger than")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn calls_time_out() {
        let idp = TestIdp::start().await;
        let mut settings = idp.upstream_settings();
        settings.http_timeout = Duration::from_millis(200);
        let upstream = idp.upstream_with(settings).await;
        idp.set_jwks_delay(Duration::from_secs(3));
        let started = std::time::Instant::now();
        let error = upstream
            .validate_id_token(&idp.good_id_token(None), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, IdTokenError::KeysUnavailable(m) if m.contains("timed out")),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn authorization_url_carries_every_parameter() {
        let idp = TestIdp::start().await;
        let mut settings = idp.upstream_settings();
        settings.scopes = vec![
            "openid".into(),
            "profile".into(),
            "email".into(),
            "profile".into(),
        ];
        let upstream = idp.upstream_with(settings).await;
        let url = upstream.authorization_url(&authorization(vec![
            ("prompt".into(), "create".into()),
            ("max_age".into(), "0".into()),
        ]));
        assert_eq!(
            url.as_str().split('?').next(),
            Some(format!("{}/authorize", idp.issuer()).as_str())
        );
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let expected = [
            ("response_type", "code".to_owned()),
            ("client_id", CLIENT_ID.to_owned()),
            ("redirect_uri", callback().to_string()),
            ("scope", "openid profile email".to_owned()),
            ("state", "state-123".to_owned()),
            ("nonce", "nonce-456".to_owned()),
            ("code_challenge", challenge(VERIFIER)),
            ("code_challenge_method", "S256".to_owned()),
            ("prompt", "create".to_owned()),
            ("max_age", "0".to_owned()),
        ];
        let expected: Vec<(String, String)> = expected
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(pairs, expected);
    }

    #[tokio::test]
    async fn authorization_url_keeps_the_endpoints_own_query() {
        let idp = TestIdp::start().await;
        idp.patch_discovery(
            json!({"authorization_endpoint": format!("{}/authorize?tenant=acme", idp.issuer())}),
        );
        let upstream = idp.upstream().await;
        let url = upstream.authorization_url(&authorization(vec![]));
        assert_eq!(
            url.query_pairs().next().unwrap(),
            ("tenant".into(), "acme".into())
        );
        assert_eq!(url.query_pairs().count(), 9);
    }

    /// The browser leg: follows `/authorize` to the redirect and returns the code.
    async fn browser_login(upstream: &Upstream) -> String {
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let response = browser
            .get(upstream.authorization_url(&authorization(vec![])))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_redirection(), "{}", response.status());
        let location = Url::parse(
            response.headers()[reqwest::header::LOCATION]
                .to_str()
                .unwrap(),
        )
        .unwrap();
        assert!(location.as_str().starts_with(callback().as_str()));
        let params: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
        assert_eq!(params["state"], "state-123");
        params["code"].clone()
    }

    #[tokio::test]
    async fn code_exchange_with_client_secret_basic_and_pkce() {
        let idp = TestIdp::start().await;
        idp.set_next_login(json!({"sub": "bob-sub", "preferred_username": "bob"}));
        let upstream = idp.upstream().await;
        let code = browser_login(&upstream).await;
        let tokens = upstream
            .exchange_code(&code, &callback(), VERIFIER)
            .await
            .unwrap();
        assert!(tokens.refresh_token.is_some());
        assert_eq!(tokens.expires_in, Some(300));
        let id_token = tokens.id_token.expect("an ID token");
        let claims = upstream
            .validate_id_token(id_token.expose(), Some("nonce-456"))
            .await
            .unwrap();
        assert_eq!(claims.sub, "bob-sub");

        let request = idp.token_requests().pop().unwrap();
        assert_eq!(request.auth, ClientAuthUsed::Basic);
        assert_eq!(request.params["code_verifier"], VERIFIER);
        assert_eq!(request.params["redirect_uri"], callback().as_str());
        assert!(
            !request.params.contains_key("client_id"),
            "basic auth sends no client_id in the body"
        );
    }

    #[tokio::test]
    async fn code_exchange_with_client_secret_post() {
        let idp = TestIdp::start().await;
        let mut settings = idp.upstream_settings();
        settings.auth_method = ClientAuthMethod::ClientSecretPost;
        let upstream = idp.upstream_with(settings).await;
        let code = idp.issue_code(Some("n"), callback().as_str(), &challenge(VERIFIER));
        let tokens = upstream
            .exchange_code(&code, &callback(), VERIFIER)
            .await
            .unwrap();
        assert!(!tokens.access_token.is_empty());
        let request = idp.token_requests().pop().unwrap();
        assert_eq!(request.auth, ClientAuthUsed::Post);
        assert_eq!(request.params["client_id"], CLIENT_ID);
    }

    #[tokio::test]
    async fn a_wrong_verifier_or_a_reused_code_is_an_invalid_grant() {
        let idp = TestIdp::start().await;
        let upstream = idp.upstream().await;
        let code = idp.issue_code(None, callback().as_str(), &challenge(VERIFIER));
        let error = upstream
            .exchange_code(
                &code,
                &callback(),
                "wrong-verifier-wrong-verifier-wrong-verifier",
            )
            .await;
        assert!(
            matches!(error, Err(UpstreamError::InvalidGrant(_))),
            "{error:?}"
        );
        let error = upstream.exchange_code(&code, &callback(), VERIFIER).await;
        assert!(
            matches!(error, Err(UpstreamError::InvalidGrant(_))),
            "a used code: {error:?}"
        );
    }

    #[tokio::test]
    async fn a_wrong_client_secret_is_an_oauth_error() {
        let idp = TestIdp::start().await;
        let mut settings = idp.upstream_settings();
        settings.client_secret = SecretString::new("not-the-secret");
        let upstream = idp.upstream_with(settings).await;
        let code = idp.issue_code(None, callback().as_str(), &challenge(VERIFIER));
        match upstream.exchange_code(&code, &callback(), VERIFIER).await {
            Err(UpstreamError::OAuth { error, .. }) => assert_eq!(error, "invalid_client"),
            other => panic!("{other:?}"),
        }
    }

    async fn logged_in(idp: &TestIdp, upstream: &Upstream) -> UpstreamTokens {
        let code = idp.issue_code(None, callback().as_str(), &challenge(VERIFIER));
        upstream
            .exchange_code(&code, &callback(), VERIFIER)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn refresh_rotates_and_maps_invalid_grant() {
        let idp = TestIdp::start().await;
        let upstream = idp.upstream().await;
        let tokens = logged_in(&idp, &upstream).await;
        let first = tokens.refresh_token.unwrap();
        let refreshed = upstream.refresh(first.expose()).await.unwrap();
        let second = refreshed.refresh_token.unwrap();
        assert_ne!(first.expose(), second.expose());
        let request = idp.token_requests().pop().unwrap();
        assert_eq!(request.params["grant_type"], "refresh_token");
        assert_eq!(request.auth, ClientAuthUsed::Basic);

        // The rotated-away token is dead at the IdP.
        assert!(matches!(
            upstream.refresh(first.expose()).await,
            Err(UpstreamError::InvalidGrant(_))
        ));
        // The IdP ended the session.
        idp.fail_refresh_with_invalid_grant(true);
        match upstream.refresh(second.expose()).await {
            Err(UpstreamError::InvalidGrant(description)) => {
                assert_eq!(description, "Session not active")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn revoke_sends_the_token_and_hint() {
        let idp = TestIdp::start().await;
        let upstream = idp.upstream().await;
        let tokens = logged_in(&idp, &upstream).await;
        let refresh = tokens.refresh_token.unwrap();
        upstream
            .revoke(refresh.expose(), TokenTypeHint::RefreshToken)
            .await
            .unwrap();
        upstream
            .revoke(tokens.access_token.expose(), TokenTypeHint::AccessToken)
            .await
            .unwrap();
        let revoked = idp.revoked_tokens();
        assert_eq!(revoked.len(), 2);
        assert_eq!(revoked[0].token, refresh.expose());
        assert_eq!(revoked[0].token_type_hint.as_deref(), Some("refresh_token"));
        assert_eq!(revoked[1].token, tokens.access_token.expose());
        assert_eq!(revoked[1].token_type_hint.as_deref(), Some("access_token"));
        assert!(matches!(
            upstream.refresh(refresh.expose()).await,
            Err(UpstreamError::InvalidGrant(_))
        ));
    }

    #[tokio::test]
    async fn revoke_without_a_revocation_endpoint_is_unsupported() {
        let idp = TestIdp::start().await;
        idp.patch_discovery(json!({"revocation_endpoint": null}));
        let upstream = idp.upstream().await;
        assert!(matches!(
            upstream
                .revoke("whatever", TokenTypeHint::AccessToken)
                .await,
            Err(UpstreamError::Unsupported(_))
        ));
        assert!(idp.revoked_tokens().is_empty());
    }

    #[tokio::test]
    async fn introspect_reports_active_and_inactive_with_client_credentials() {
        let idp = TestIdp::start().await;
        for method in [
            ClientAuthMethod::ClientSecretBasic,
            ClientAuthMethod::ClientSecretPost,
        ] {
            let mut settings = idp.upstream_settings();
            settings.auth_method = method;
            let upstream = idp.upstream_with(settings).await;
            let tokens = logged_in(&idp, &upstream).await;
            let refresh = tokens.refresh_token.unwrap();
            let active = upstream
                .introspect(refresh.expose(), TokenTypeHint::RefreshToken)
                .await
                .unwrap();
            assert!(active.active);
            let request = idp.introspection_requests().pop().unwrap();
            assert_eq!(request.token, refresh.expose());
            assert_eq!(request.token_type_hint.as_deref(), Some("refresh_token"));
            assert_eq!(
                request.auth,
                match method {
                    ClientAuthMethod::ClientSecretBasic => ClientAuthUsed::Basic,
                    ClientAuthMethod::ClientSecretPost => ClientAuthUsed::Post,
                    ClientAuthMethod::PrivateKeyJwt => unreachable!("not in this loop"),
                }
            );

            idp.set_introspection_inactive(refresh.expose());
            assert!(
                !upstream
                    .introspect(refresh.expose(), TokenTypeHint::RefreshToken)
                    .await
                    .unwrap()
                    .active
            );
        }
        // A revoked token is inactive too.
        let upstream = idp.upstream().await;
        let tokens = logged_in(&idp, &upstream).await;
        let refresh = tokens.refresh_token.unwrap();
        upstream
            .revoke(refresh.expose(), TokenTypeHint::RefreshToken)
            .await
            .unwrap();
        assert!(
            !upstream
                .introspect(refresh.expose(), TokenTypeHint::RefreshToken)
                .await
                .unwrap()
                .active
        );
    }

    #[tokio::test]
    async fn introspect_errors_are_never_an_inactive_answer() {
        let idp = TestIdp::start().await;
        let upstream = idp.upstream().await;
        idp.fail_introspection(true);
        assert!(matches!(
            upstream
                .introspect("rt-x", TokenTypeHint::RefreshToken)
                .await,
            Err(UpstreamError::Protocol(_))
        ));
        idp.fail_introspection(false);

        let mut settings = idp.upstream_settings();
        settings.client_secret = SecretString::new("wrong");
        let upstream = idp.upstream_with(settings).await;
        assert!(matches!(
            upstream
                .introspect("rt-x", TokenTypeHint::RefreshToken)
                .await,
            Err(UpstreamError::OAuth { .. })
        ));

        idp.patch_discovery(json!({"introspection_endpoint": "http://127.0.0.1:9/introspect"}));
        let upstream = idp.upstream().await;
        assert!(matches!(
            upstream
                .introspect("rt-x", TokenTypeHint::RefreshToken)
                .await,
            Err(UpstreamError::Transport(_))
        ));

        idp.patch_discovery(json!({"introspection_endpoint": null}));
        let upstream = idp.upstream().await;
        assert!(matches!(
            upstream
                .introspect("rt-x", TokenTypeHint::RefreshToken)
                .await,
            Err(UpstreamError::Unsupported(_))
        ));
    }

    #[tokio::test]
    async fn userinfo_returns_the_claims_of_the_access_tokens_user() {
        let idp = TestIdp::start().await;
        let upstream = idp.upstream().await;
        let tokens = logged_in(&idp, &upstream).await;
        let claims = upstream
            .userinfo(tokens.access_token.expose())
            .await
            .unwrap();
        assert_eq!(claims["email"], "alice@example.com");
        assert!(upstream
            .userinfo_for(tokens.access_token.expose(), "alice-sub")
            .await
            .is_ok());
        assert!(matches!(
            upstream
                .userinfo_for(tokens.access_token.expose(), "mallory")
                .await,
            Err(UpstreamError::Protocol(_))
        ));
        match upstream.userinfo("not-a-token").await {
            Err(UpstreamError::OAuth { error, .. }) => assert_eq!(error, "invalid_token"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn upstream_can_be_shared_between_request_handlers() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Upstream>();
        assert_send_sync::<JwksCache>();
    }

    #[test]
    fn errors_never_show_tokens() {
        let tokens = UpstreamTokens {
            access_token: SecretString::new("at-secret-value"),
            refresh_token: Some(SecretString::new("rt-secret-value")),
            id_token: None,
            expires_in: None,
            scope: None,
        };
        assert!(!format!("{tokens:?}").contains("secret-value"));
    }
}

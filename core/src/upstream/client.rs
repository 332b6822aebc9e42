//! mxidp as one confidential OpenID Connect client of the IdP (DESIGN §2, §4).

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
        );
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

    /// The IdP's signing keys (shared with the JWT shim, DESIGN §5.3).
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
        let response = self
            .http
            .get(endpoint)
            .bearer_auth(access_token)
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.settings.http_timeout)
            .send()
            .await
            .map_err(transport)?;
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
        let request = authenticate(self.http.post(endpoint), &mut form, &self.settings);
        let response = request
            .form(&form)
            .timeout(self.settings.http_timeout)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let body = read_limited(response).await?;
        if status.is_success() {
            // RFC 7009 §2.2: 200 also for tokens that were already invalid.
            return Ok(());
        }
        Err(error_from_response(status, &body))
    }

    async fn token_request(
        &self,
        mut form: Vec<(&'static str, String)>,
    ) -> Result<UpstreamTokens, UpstreamError> {
        let request = authenticate(
            self.http.post(self.metadata.token_endpoint.clone()),
            &mut form,
            &self.settings,
        );
        let response = request
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .timeout(self.settings.http_timeout)
            .send()
            .await
            .map_err(transport)?;
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

//! The generic OpenID Connect client: mxidp is ONE confidential client of the IdP (docs/architecture.md).
//! Discovery, JWKS, ID-token validation, code exchange, userinfo, refresh, revocation.
//! Provider adapters customise behaviour through [`crate::provider::Provider`], not here.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::secret::SecretString;

mod client;
mod client_key;
mod discovery;
mod http;
mod id_token;
mod jwks;
#[cfg(any(test, feature = "test-support"))]
pub mod test_idp;

pub use client::{TokenIntrospection, Upstream};
pub use client_key::ClientKey;
pub use discovery::ProviderMetadata;
pub(crate) use id_token::{string_claim, time_claim, verify_jws, ParsedJws};
pub use id_token::{IdTokenClaims, IdTokenError};
pub use jwks::{JwksCache, VerificationKey};

/// How mxidp authenticates to the IdP's token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
    /// A JWT signed with mxidp's private key (`upstream.client_key_file`), no secret.
    PrivateKeyJwt,
}

/// Settings of the upstream client, built from the `[upstream]` configuration section.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub issuer: Url,
    pub client_id: String,
    pub client_secret: SecretString,
    pub auth_method: ClientAuthMethod,
    /// The key of `private_key_jwt`.
    pub client_key: Option<std::sync::Arc<ClientKey>>,
    /// Scopes requested at the IdP; `openid` is always included.
    pub scopes: Vec<String>,
    /// Signature algorithms accepted on ID tokens (never `none`, never HS*: mxidp validates
    /// with the IdP's public keys).
    pub allowed_algorithms: Vec<jsonwebtoken::Algorithm>,
    /// When to fetch userinfo after the code exchange and merge its claims.
    pub fetch_userinfo: UserinfoMode,
    /// Clock leeway for `exp`, `iat`, `nbf`.
    pub leeway: Duration,
    /// Minimum time between two JWKS refetches triggered by an unknown `kid`.
    pub jwks_refetch_cooldown: Duration,
    /// Longest time a fetched JWKS is used before it is fetched again (removed keys stop
    /// verifying); the IdP's `Cache-Control: max-age` may shorten it.
    pub jwks_refresh: Duration,
    /// Timeout of every call to the IdP.
    pub http_timeout: Duration,
}

/// Tokens returned by the IdP's token endpoint. Raw tokens are secrets.
#[derive(Debug, Clone)]
pub struct UpstreamTokens {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    /// The compact ID token (kept only long enough to validate it).
    pub id_token: Option<SecretString>,
    pub expires_in: Option<u64>,
    pub scope: Option<String>,
}

/// Parameters of one authorization request sent to the IdP.
#[derive(Debug, Clone)]
pub struct UpstreamAuthorization {
    pub redirect_uri: Url,
    pub state: String,
    pub nonce: String,
    /// S256 challenge of the verifier mxidp keeps.
    pub code_challenge: String,
    /// Extra parameters from the provider adapter (`prompt`, `max_age`, `screen_hint`, ...).
    pub extra: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenTypeHint {
    AccessToken,
    RefreshToken,
}

impl TokenTypeHint {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenTypeHint::AccessToken => "access_token",
            TokenTypeHint::RefreshToken => "refresh_token",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the IdP could not be reached: {0}")]
    Transport(String),
    #[error("the IdP's discovery document is unusable: {0}")]
    Discovery(String),
    /// `invalid_grant` at the token endpoint: the code or refresh token is dead for good.
    #[error("the IdP rejected the grant: {0}")]
    InvalidGrant(String),
    #[error("the IdP answered with error {error}: {description}")]
    OAuth { error: String, description: String },
    #[error("the IdP answered something unexpected: {0}")]
    Protocol(String),
    #[error("the IdP does not offer {0}")]
    Unsupported(&'static str),
    /// HTTP 429: the IdP's rate limit; `retry_after` from `Retry-After` or Okta's
    /// `X-Rate-Limit-Reset`, when it said.
    #[error("the IdP's rate limit is reached")]
    RateLimited {
        retry_after: Option<std::time::Duration>,
    },
    #[error("the ID token is invalid: {0}")]
    IdToken(#[from] IdTokenError),
}

/// `upstream.fetch_userinfo`: `"auto"` (the default), `true` or `false`.
///
/// With the code flow an OpenID Provider may put profile and e-mail claims in userinfo only
/// (OIDC Core §5.4; oidc-provider's and ZITADEL's default), so `auto` asks userinfo whenever a
/// claim that the mapping needs is missing from the ID token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UserinfoMode {
    #[default]
    Auto,
    Always,
    Never,
}

impl<'de> serde::Deserialize<'de> for UserinfoMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(Self::Always),
            Raw::Bool(false) => Ok(Self::Never),
            // Environment variables arrive as text.
            Raw::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
                "auto" => Ok(Self::Auto),
                "true" => Ok(Self::Always),
                "false" => Ok(Self::Never),
                other => Err(serde::de::Error::custom(format!(
                    "fetch_userinfo must be \"auto\", true or false, not {other:?}"
                ))),
            },
        }
    }
}

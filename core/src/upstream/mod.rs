//! The generic OpenID Connect client: mxidp is ONE confidential client of the IdP (DESIGN §2).
//! Discovery, JWKS, ID-token validation, code exchange, userinfo, refresh, revocation.
//! Provider adapters customise behaviour through [`crate::provider::Provider`], not here.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::secret::SecretString;

mod client;
mod discovery;
mod http;
mod id_token;
mod jwks;
#[cfg(any(test, feature = "test-support"))]
pub mod test_idp;

pub use client::{TokenIntrospection, Upstream};
pub use discovery::ProviderMetadata;
pub(crate) use id_token::{string_claim, time_claim, verify_jws};
pub use id_token::{IdTokenClaims, IdTokenError};
pub use jwks::{JwksCache, VerificationKey};

/// How mxidp authenticates to the IdP's token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
}

/// Settings of the upstream client, built from the `[upstream]` configuration section.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub issuer: Url,
    pub client_id: String,
    pub client_secret: SecretString,
    pub auth_method: ClientAuthMethod,
    /// Scopes requested at the IdP; `openid` is always included.
    pub scopes: Vec<String>,
    /// Signature algorithms accepted on ID tokens (never `none`, never HS*: mxidp validates
    /// with the IdP's public keys).
    pub allowed_algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Fetch userinfo after the code exchange and merge its claims.
    pub fetch_userinfo: bool,
    /// Clock leeway for `exp`, `iat`, `nbf`.
    pub leeway: Duration,
    /// Minimum time between two JWKS refetches triggered by an unknown `kid`.
    pub jwks_refetch_cooldown: Duration,
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
    #[error("the ID token is invalid: {0}")]
    IdToken(#[from] IdTokenError),
}

//! mxidp-auth0: Auth0 as mxidp's OpenID Provider.
//!
//! Only what Auth0 does differently from generic OIDC (docs/providers.md, Auth0):
//! - every authorize names the configured API `audience`: without one Auth0 issues an access
//!   token for `/userinfo` only, encrypted (JWE), which mxidp cannot check. With it, the access
//!   token is a JWT for that API, and re-validation defaults to checking it locally with the
//!   shared verifier (`aud` = the audience): Auth0 has no introspection endpoint;
//! - the issuer is the tenant (or custom) domain with its trailing slash, exactly as Auth0 puts
//!   it in `iss`;
//! - roles come from a namespaced claim an Auth0 Action adds (`roles_claim`): Auth0 drops
//!   non-namespaced custom claims from ID tokens and never issues `groups` or `roles` itself;
//! - sign-up is Universal Login's `screen_hint=signup`, not `prompt=create`;
//! - Auth0 has no end-user account page: `upstream.account_url` sets one;
//! - `…@clients` subjects are machine-to-machine applications (`client_credentials`), never a
//!   person: they are refused for sign-in. Bots use the JWT shim instead (docs/jwt-shim.md);
//! - Log Streams at the webhook route ([`log_stream`], [`log_entry`]), and the user's state from
//!   the Management API ([`management`]).

use std::path::PathBuf;

use async_trait::async_trait;
use mxidp_core::config::{optional_secret, Config, Problem, Revalidation};
use mxidp_core::events::{ReceivedEvent, WebhookError, WebhookRequest};
use mxidp_core::provider::{string_list, Claims, Provider, UserStatus};
use mxidp_core::secret::SecretString;
use mxidp_core::upstream::{ProviderMetadata, UpstreamError};
use serde::Deserialize;
use serde_json::Value;
use url::Url;

pub mod log_entry;
pub mod log_stream;
pub mod management;

pub use management::ManagementApi;

/// The configuration name of this adapter (`upstream.provider = "auth0"`).
pub const NAME: &str = "auth0";

/// The subject suffix of machine-to-machine (`client_credentials`) tokens.
pub const M2M_SUFFIX: &str = "@clients";

/// `[adapters.auth0]`. Secrets can be inline or in a file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth0Config {
    /// The identifier of the Auth0 API mxidp's access tokens are for (required).
    #[serde(default)]
    pub audience: Option<String>,
    /// The namespaced claim an Action fills with the user's roles
    /// (e.g. `https://matrix.example.com/roles`). Unset: no roles.
    #[serde(default)]
    pub roles_claim: Option<String>,
    /// The Log Stream's `Authorization` value: turns the Log Stream receiver on.
    #[serde(default)]
    pub log_stream_authorization: Option<SecretString>,
    #[serde(default)]
    pub log_stream_authorization_file: Option<PathBuf>,
    /// The tenant's canonical URL for the Management API (`https://{tenant}.{region}.auth0.com/`),
    /// needed when users sign in on a custom domain. Default: the issuer.
    #[serde(default)]
    pub management_url: Option<Url>,
    /// The machine-to-machine application with `read:users` on the Management API: turns on
    /// user status for reconciliation.
    #[serde(default)]
    pub management_client_id: Option<String>,
    #[serde(default)]
    pub management_client_secret: Option<SecretString>,
    #[serde(default)]
    pub management_client_secret_file: Option<PathBuf>,
}

/// The Auth0 adapter.
#[derive(Debug)]
pub struct Auth0 {
    audience: String,
    roles_claim: Option<String>,
    log_stream: Option<SecretString>,
    api: Option<ManagementApi>,
}

impl Auth0 {
    /// The adapter without Log Stream or Management API: claims and authorize parameters.
    pub fn new(audience: impl Into<String>, roles_claim: Option<String>) -> Self {
        Self {
            audience: audience.into(),
            roles_claim,
            log_stream: None,
            api: None,
        }
    }

    /// Builds the adapter from `[adapters.auth0]`; every problem names its key.
    pub fn from_config(config: &Config) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let settings: Auth0Config = config.adapter_settings(NAME).map_err(|p| vec![p])?;
        let problem = |key: &str, message: String| Problem {
            key: key.into(),
            message,
        };
        let issuer = &config.upstream.issuer;
        // `Url` writes a bare host with its `/`, which is how Auth0 spells `iss`; a path is
        // not an Auth0 issuer (custom domains included).
        if issuer.path() != "/" || issuer.query().is_some() {
            problems.push(problem(
                "upstream.issuer",
                format!("{issuer} is not an Auth0 issuer (https://{{tenant domain}}/)"),
            ));
        }
        let audience = match settings.audience.as_deref().map(str::trim) {
            Some(a) if !a.is_empty() => a.to_owned(),
            _ => {
                problems.push(problem(
                    "adapters.auth0.audience",
                    "required: the identifier of the Auth0 API for mxidp (without it Auth0 \
                     issues encrypted access tokens mxidp cannot check)"
                        .into(),
                ));
                String::new()
            }
        };
        if let Some(claim) = &settings.roles_claim {
            if claim.trim().is_empty() {
                problems.push(problem("adapters.auth0.roles_claim", "is empty".into()));
            }
        }
        let mut secret = |key: &str, inline: &Option<SecretString>, file: &Option<PathBuf>| {
            optional_secret(key, inline, file).unwrap_or_else(|p| {
                problems.push(p);
                None
            })
        };
        let log_stream = secret(
            "adapters.auth0.log_stream_authorization",
            &settings.log_stream_authorization,
            &settings.log_stream_authorization_file,
        );
        let client_secret = secret(
            "adapters.auth0.management_client_secret",
            &settings.management_client_secret,
            &settings.management_client_secret_file,
        );
        if log_stream.as_ref().is_some_and(|s| s.expose().is_empty()) {
            problems.push(problem(
                "adapters.auth0.log_stream_authorization",
                "is empty".into(),
            ));
        }
        let base = settings.management_url.unwrap_or_else(|| issuer.clone());
        let api = match (settings.management_client_id, client_secret) {
            (Some(id), Some(secret)) => {
                ManagementApi::new(base, id, secret, config.upstream_timeout())
                    .map_err(|message| {
                        problems.push(problem("adapters.auth0.management_url", message))
                    })
                    .ok()
            }
            (None, None) => None,
            _ => {
                problems.push(problem(
                    "adapters.auth0.management_client_id",
                    "the Management API needs both a client id and a client secret".into(),
                ));
                None
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            audience,
            roles_claim: settings.roles_claim,
            log_stream,
            api,
        })
    }
}

#[async_trait]
impl Provider for Auth0 {
    fn name(&self) -> &'static str {
        NAME
    }

    fn roles(&self, claims: &Claims) -> Vec<String> {
        match &self.roles_claim {
            Some(claim) => string_list(claims.get(claim)),
            None => Vec::new(),
        }
    }

    /// A `client_credentials` token names an application, not a person.
    fn validate_claims(&self, claims: &Claims) -> Result<(), String> {
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let gty = claims.get("gty").and_then(Value::as_str);
        if sub.ends_with(M2M_SUFFIX) || gty == Some("client-credentials") {
            return Err(format!(
                "{sub:?} is a machine-to-machine application, not a user"
            ));
        }
        Ok(())
    }

    fn authorize_parameters(&self) -> Vec<(String, String)> {
        vec![("audience".into(), self.audience.clone())]
    }

    /// New Universal Login opens its sign-up screen on `screen_hint=signup`; Auth0 advertises
    /// no `prompt=create`.
    fn signup_parameters(&self, _metadata: &ProviderMetadata) -> Option<Vec<(String, String)>> {
        Some(vec![("screen_hint".into(), "signup".into())])
    }

    fn parse_webhook(
        &self,
        request: &WebhookRequest<'_>,
    ) -> Result<Vec<ReceivedEvent>, WebhookError> {
        log_stream::parse(self.log_stream.as_ref(), request)
    }

    /// Auth0 has no introspection endpoint; its API access tokens are RS256 JWTs.
    fn default_revalidation(&self) -> Revalidation {
        Revalidation::Jwt
    }

    fn access_token_audience(&self) -> Option<String> {
        Some(self.audience.clone())
    }

    async fn user_status(&self, subject: &str) -> Result<UserStatus, UpstreamError> {
        match &self.api {
            Some(api) => api.user_status(subject).await,
            None => Ok(UserStatus::Unknown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mxidp_core::provider::AccountAction;

    fn claims(json: &str) -> Claims {
        serde_json::from_str(json).unwrap()
    }

    fn adapter() -> Auth0 {
        Auth0::new(
            "https://matrix.example.com/api",
            Some("https://matrix.example.com/roles".into()),
        )
    }

    fn metadata() -> ProviderMetadata {
        serde_json::from_str(include_str!(
            "../tests/fixtures/oidc-discovery-dev-ltxchcls4igzho78.json"
        ))
        .unwrap()
    }

    #[test]
    fn every_authorize_names_the_api_audience_and_sign_up_is_a_screen_hint() {
        assert_eq!(
            adapter().authorize_parameters(),
            vec![(
                "audience".to_string(),
                "https://matrix.example.com/api".to_string()
            )]
        );
        let m = metadata();
        assert!(m.issuer.ends_with(".auth0.com/"));
        assert_eq!(
            adapter().signup_parameters(&m),
            Some(vec![("screen_hint".into(), "signup".into())])
        );
        // No account page of its own: `upstream.account_url` is the only one.
        assert_eq!(adapter().account_url(&m, AccountAction::Profile), None);
    }

    #[test]
    fn roles_come_from_the_configured_namespaced_claim_only() {
        let c = claims(
            r#"{"sub":"auth0|1","https://matrix.example.com/roles":["matrix-admin","staff"],
                "roles":["ignored"],"groups":["ignored"]}"#,
        );
        assert_eq!(adapter().roles(&c), vec!["matrix-admin", "staff"]);
        assert!(Auth0::new("a", None).roles(&c).is_empty());
    }

    #[test]
    fn machine_to_machine_subjects_cannot_sign_in() {
        // The real M2M token's payload (verified against its tenant's JWKS).
        let fixture: Value = serde_json::from_str(include_str!(
            "../tests/fixtures/access-token-m2m-verifiable.json"
        ))
        .unwrap();
        let payload = fixture["payload"].as_object().expect("payload").clone();
        assert!(payload["sub"].as_str().unwrap().ends_with("@clients"));
        assert!(adapter().validate_claims(&payload).is_err());
        let mut only_gty = payload.clone();
        only_gty.insert("sub".into(), "auth0|1".into());
        assert!(adapter().validate_claims(&only_gty).is_err());
        let user = claims(r#"{"sub":"google-oauth2|100412700466377214282"}"#);
        assert_eq!(adapter().validate_claims(&user), Ok(()));
    }

    #[test]
    fn revalidation_is_local_jwt_checks_against_the_api_audience() {
        assert_eq!(adapter().default_revalidation(), Revalidation::Jwt);
        assert_eq!(
            adapter().access_token_audience().as_deref(),
            Some("https://matrix.example.com/api")
        );
    }
}

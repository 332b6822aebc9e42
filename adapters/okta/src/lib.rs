//! mxidp-okta: Okta (Workforce Identity, Classic and Identity Engine) as mxidp's OpenID Provider.
//!
//! Only what Okta does differently from generic OIDC (docs/providers.md, Okta):
//! - the subject is the Okta user id (`00u…`): the ID token's `sub`, or `uid` where a token
//!   carries one. Okta's access-token `sub` is the app username (often an e-mail), which an
//!   admin can change, so it is never used;
//! - no sign-up: Okta has no `prompt=create` (its discovery has no `prompt_values_supported`,
//!   which the generic default already reads as "no sign-up");
//! - the account page is the End-User Dashboard's `/enduser/settings` on the org
//!   (`upstream.account_url` overrides it);
//! - the org authorization server (issuer `https://{org}`) and custom ones
//!   (`https://{org}/oauth2/{id}`, `default` included) are both understood: only a custom
//!   server's access tokens are JWTs mxidp can verify, so re-validation defaults to local JWT
//!   checks there (`aud` = the server's audience, `api://default` unless configured), and to
//!   mxidp's own session state with the org server; introspection is rate-limited at Okta;
//! - Event Hooks at the webhook route ([`event_hook`]), the System Log as a log stream
//!   ([`system_log`]), both normalised by [`log_event`]; the user's status from the Users API
//!   ([`users`]).
//!
//! Everything else is the generic default: groups from the `groups` claim (a claim the admin
//! adds to the authorization server, deploy/okta/README.md), `state` from core (URL-safe base64,
//! inside the characters Okta accepts), Shared Signals and Universal Logout through core's
//! receivers.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::HeaderName;
use mxidp_core::config::{optional_secret, Config, Problem, Revalidation};
use mxidp_core::events::{ReceivedEvent, WebhookError, WebhookRequest};
use mxidp_core::provider::{
    AccountAction, Claims, EventLogPage, Provider, UserStatus, WebhookChallenge,
};
use mxidp_core::secret::SecretString;
use mxidp_core::upstream::{ProviderMetadata, UpstreamError};
use serde::Deserialize;
use serde_json::Value;
use url::Url;

pub mod event_hook;
pub mod log_event;
pub mod management;
pub mod service_app;
pub mod system_log;
pub mod users;

pub use event_hook::HookAuth;
pub use management::ManagementApi;

/// The configuration name of this adapter (`upstream.provider = "okta"`).
pub const NAME: &str = "okta";

/// The audience of Okta's `default` custom authorization server.
pub const DEFAULT_AUDIENCE: &str = "api://default";
/// The End-User Dashboard's settings page.
pub const ACCOUNT_PATH: &str = "enduser/settings";

/// `[adapters.okta]`. Every key is optional; secrets can be inline or in a file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OktaConfig {
    /// The header the Event Hook's `authScheme` sends (`Authorization` unless configured).
    #[serde(default)]
    pub hook_header: Option<String>,
    /// The secret value of that header: turns the Event Hook receiver on.
    #[serde(default)]
    pub hook_secret: Option<SecretString>,
    #[serde(default)]
    pub hook_secret_file: Option<PathBuf>,
    /// An API token (`SSWS`) of an admin with read access to users and the System Log: turns on
    /// the Users API (reconciliation) and the System Log stream.
    #[serde(default)]
    pub api_token: Option<SecretString>,
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
    /// Or an API service app (scopes `okta.users.read okta.logs.read`, `private_key_jwt`): its
    /// client id, its RSA private key (PEM file) and the key's id at Okta.
    #[serde(default)]
    pub service_app_client_id: Option<String>,
    #[serde(default)]
    pub service_app_private_key_file: Option<PathBuf>,
    #[serde(default)]
    pub service_app_key_id: Option<String>,
    /// Read the System Log when the management API is set up (default true).
    #[serde(default)]
    pub system_log: Option<bool>,
    /// Seconds between System Log reads once caught up (default 60; Okta suggests 60–300).
    #[serde(default)]
    pub system_log_interval_seconds: Option<u64>,
    /// The `aud` of the custom authorization server's access tokens (default `api://default`).
    #[serde(default)]
    pub access_token_audience: Option<String>,
}

/// Which Okta authorization server the issuer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizationServer {
    /// `https://{org}`: opaque access tokens, unpublished keys for them.
    Org,
    /// `https://{org}/oauth2/{id}`: JWT access tokens verifiable with its JWKS.
    Custom { id: String },
}

impl AuthorizationServer {
    /// The server and the org URL from the issuer; anything else is not an Okta issuer.
    pub fn from_issuer(issuer: &Url) -> Result<(Self, Url), String> {
        let org = Url::parse(&issuer.origin().ascii_serialization())
            .map_err(|e| format!("{issuer}: no org URL: {e}"))?;
        let segments: Vec<&str> = issuer
            .path_segments()
            .map(|s| s.filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        match segments.as_slice() {
            [] => Ok((AuthorizationServer::Org, org)),
            ["oauth2", id] if log_event::is_okta_id(id) => Ok((
                AuthorizationServer::Custom {
                    id: (*id).to_owned(),
                },
                org,
            )),
            _ => Err(format!(
                "{issuer} is not an Okta issuer (https://{{org}} or https://{{org}}/oauth2/{{id}})"
            )),
        }
    }
}

/// The Okta adapter.
#[derive(Debug)]
pub struct Okta {
    server: AuthorizationServer,
    hook: Option<HookAuth>,
    api: Option<ManagementApi>,
    system_log_interval: Option<Duration>,
    audience: String,
}

impl Okta {
    /// The adapter for a custom authorization server, without hooks or API: claims and URLs.
    pub fn new(server: AuthorizationServer) -> Self {
        Self {
            server,
            hook: None,
            api: None,
            system_log_interval: None,
            audience: DEFAULT_AUDIENCE.into(),
        }
    }

    /// Builds the adapter from `[adapters.okta]`; every problem names its key.
    pub fn from_config(config: &Config) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let settings: OktaConfig = config.adapter_settings(NAME).map_err(|p| vec![p])?;
        let (server, org) =
            AuthorizationServer::from_issuer(&config.upstream.issuer).map_err(|message| {
                vec![Problem {
                    key: "upstream.issuer".into(),
                    message,
                }]
            })?;
        let mut secret = |key: &str, inline: &Option<SecretString>, file: &Option<PathBuf>| {
            optional_secret(key, inline, file).unwrap_or_else(|p| {
                problems.push(p);
                None
            })
        };
        let hook_secret = secret(
            "adapters.okta.hook_secret",
            &settings.hook_secret,
            &settings.hook_secret_file,
        );
        let api_token = secret(
            "adapters.okta.api_token",
            &settings.api_token,
            &settings.api_token_file,
        );
        let header = settings.hook_header.as_deref().unwrap_or("Authorization");
        let hook = match (HeaderName::try_from(header), hook_secret) {
            (Ok(header), Some(secret)) => Some(HookAuth { header, secret }),
            (Err(_), _) => {
                problems.push(Problem {
                    key: "adapters.okta.hook_header".into(),
                    message: format!("{header:?} is not an HTTP header name"),
                });
                None
            }
            (Ok(_), None) => None,
        };
        let service_app = match (
            &settings.service_app_client_id,
            &settings.service_app_private_key_file,
        ) {
            (None, None) => None,
            (Some(client_id), Some(path)) => std::fs::read(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|pem| {
                    service_app::ServiceApp::new(
                        client_id.clone(),
                        &pem,
                        settings.service_app_key_id.clone(),
                    )
                })
                .map_err(|message| {
                    problems.push(Problem {
                        key: "adapters.okta.service_app_private_key_file".into(),
                        message,
                    })
                })
                .ok(),
            _ => {
                problems.push(Problem {
                    key: "adapters.okta.service_app_client_id".into(),
                    message: "set both service_app_client_id and service_app_private_key_file"
                        .into(),
                });
                None
            }
        };
        let credential = match (api_token, service_app) {
            (Some(_), Some(_)) => {
                problems.push(Problem {
                    key: "adapters.okta.api_token".into(),
                    message: "set an API token or a service app, not both".into(),
                });
                None
            }
            (Some(token), None) => Some(management::Credential::ApiToken(token)),
            (None, Some(app)) => Some(management::Credential::ServiceApp(app)),
            (None, None) => None,
        };
        let api = credential.and_then(|credential| {
            ManagementApi::new(org, credential, config.upstream_timeout())
                .map_err(|message| {
                    problems.push(Problem {
                        key: "adapters.okta.api_token".into(),
                        message,
                    })
                })
                .ok()
        });
        let interval = settings.system_log_interval_seconds.unwrap_or(60);
        if interval == 0 {
            problems.push(Problem {
                key: "adapters.okta.system_log_interval_seconds".into(),
                message: "must be at least 1".into(),
            });
        }
        let system_log_interval = (api.is_some() && settings.system_log.unwrap_or(true))
            .then(|| Duration::from_secs(interval));
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            server,
            hook,
            api,
            system_log_interval,
            audience: settings
                .access_token_audience
                .unwrap_or_else(|| DEFAULT_AUDIENCE.into()),
        })
    }

    pub fn authorization_server(&self) -> &AuthorizationServer {
        &self.server
    }
}

#[async_trait]
impl Provider for Okta {
    fn name(&self) -> &'static str {
        NAME
    }

    /// `uid` where present (access tokens, introspection), else `sub`, which in ID tokens and
    /// userinfo is the user id.
    fn subject(&self, claims: &Claims) -> Option<String> {
        claims
            .get("uid")
            .or_else(|| claims.get("sub"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    fn parse_webhook(
        &self,
        request: &WebhookRequest<'_>,
    ) -> Result<Vec<ReceivedEvent>, WebhookError> {
        event_hook::parse(self.hook.as_ref(), request)
    }

    fn webhook_verification(
        &self,
        request: &WebhookRequest<'_>,
    ) -> Result<WebhookChallenge, WebhookError> {
        event_hook::verification(self.hook.as_ref(), request)
    }

    /// One page for every action: the End-User Dashboard has no page per device.
    fn account_url(&self, metadata: &ProviderMetadata, action: AccountAction) -> Option<Url> {
        if action == AccountAction::CrossSigningReset {
            // Handled by core (re-authentication, then Synapse's reset window).
            return None;
        }
        let issuer = Url::parse(&metadata.issuer).ok()?;
        let (_, org) = AuthorizationServer::from_issuer(&issuer).ok()?;
        org.join(ACCOUNT_PATH).ok()
    }

    /// Introspection shares a rate-limited bucket at Okta, so custom-server tokens are checked
    /// locally; org-server tokens are opaque, and events, the log and reconciliation end
    /// sessions there.
    fn default_revalidation(&self) -> Revalidation {
        match self.server {
            AuthorizationServer::Custom { .. } => Revalidation::Jwt,
            AuthorizationServer::Org => Revalidation::Session,
        }
    }

    /// Okta's `/introspect` shares a per-minute bucket with every `/oauth2` call of the org
    /// (historically 300 to 2,000 a minute, half of it per client by default): re-validation,
    /// when an operator turns it to `introspect`, keeps well inside the smallest.
    fn revalidation_budget_per_minute(&self) -> Option<u32> {
        Some(150)
    }

    fn access_token_audience(&self) -> Option<String> {
        match self.server {
            AuthorizationServer::Custom { .. } => Some(self.audience.clone()),
            AuthorizationServer::Org => None,
        }
    }

    async fn user_status(&self, subject: &str) -> Result<UserStatus, UpstreamError> {
        match &self.api {
            Some(api) => users::user_status(api, subject).await,
            None => Ok(UserStatus::Unknown),
        }
    }

    async fn poll_event_log(
        &self,
        cursor: Option<&str>,
    ) -> Result<Option<EventLogPage>, UpstreamError> {
        let (Some(api), Some(interval)) = (&self.api, self.system_log_interval) else {
            return Ok(None);
        };
        system_log::read(api, cursor, interval, mxidp_core::ids::now_unix())
            .await
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: &str) -> Claims {
        serde_json::from_str(json).unwrap()
    }

    fn custom() -> Okta {
        Okta::new(AuthorizationServer::Custom {
            id: "aus59pz16qgMvHvBS0g7".into(),
        })
    }

    #[test]
    fn the_subject_is_the_okta_user_id_never_the_username() {
        let id_token = claims(include_str!("../tests/fixtures/id_token_jwt_payload.json"));
        assert_eq!(
            custom().subject(&id_token).as_deref(),
            Some("00uid4BxXw6I6TV4m0g3")
        );
        // Access tokens: `sub` is the app username, `uid` the user id.
        let mut access = claims(include_str!(
            "../tests/fixtures/access_token_jwt_payload_custom_as.json"
        ));
        access.insert("sub".into(), "john.doe@example.com".into());
        assert_eq!(
            custom().subject(&access).as_deref(),
            Some("00ujmkLgagxeRrAg20g3")
        );
    }

    fn metadata() -> ProviderMetadata {
        let mut m: Value = serde_json::from_str(
            &include_str!("../tests/fixtures/custom_as_openid_configuration.json")
                .replace("{yourOktaDomain}", "acme.okta.com"),
        )
        .unwrap();
        // Our fixture is Okta's own: no `prompt_values_supported`.
        assert!(m.get("prompt_values_supported").is_none());
        m["issuer"] = "https://acme.okta.com/oauth2/aus59pz16qgMvHvBS0g7".into();
        serde_json::from_value(m).unwrap()
    }

    #[test]
    fn no_sign_up_and_the_account_page_is_the_end_user_dashboard() {
        let m = metadata();
        assert_eq!(custom().signup_parameters(&m), None);
        assert_eq!(
            custom()
                .account_url(&m, AccountAction::DevicesList)
                .map(String::from)
                .as_deref(),
            Some("https://acme.okta.com/enduser/settings")
        );
        assert_eq!(
            custom().account_url(&m, AccountAction::CrossSigningReset),
            None
        );
    }

    #[test]
    fn org_and_custom_authorization_servers_are_told_apart() {
        let parse = |s: &str| AuthorizationServer::from_issuer(&s.parse().unwrap());
        let (server, org) = parse("https://acme.okta.com").unwrap();
        assert_eq!(server, AuthorizationServer::Org);
        assert_eq!(org.as_str(), "https://acme.okta.com/");
        let (server, org) = parse("https://acme.okta.com/oauth2/default").unwrap();
        assert_eq!(
            server,
            AuthorizationServer::Custom {
                id: "default".into()
            }
        );
        assert_eq!(org.as_str(), "https://acme.okta.com/");
        assert!(parse("https://acme.okta.com/realms/x").is_err());
        let org_as = Okta::new(AuthorizationServer::Org);
        assert_eq!(org_as.default_revalidation(), Revalidation::Session);
        assert_eq!(org_as.access_token_audience(), None);
        assert_eq!(custom().default_revalidation(), Revalidation::Jwt);
        assert_eq!(
            custom().access_token_audience().as_deref(),
            Some("api://default")
        );
    }

    #[test]
    fn core_state_values_stay_inside_oktas_state_characters() {
        // Okta accepts letters, digits and `, . _ -` in `state`; core sends URL-safe base64.
        for _ in 0..200 {
            let state = mxidp_core::ids::random_token(24);
            assert!(state
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.,".contains(&b)));
        }
    }

    #[test]
    fn groups_come_from_the_groups_claim() {
        let c = claims(r#"{"sub":"00u1","groups":["Everyone","matrix-admins"]}"#);
        assert_eq!(custom().roles(&c), vec!["Everyone", "matrix-admins"]);
    }
}

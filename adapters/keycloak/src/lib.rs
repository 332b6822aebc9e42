//! mxidp-keycloak: Keycloak (24 to 26.x) as mxidp's OpenID Provider.
//!
//! Only what Keycloak does differently from generic OIDC (docs/providers.md, Keycloak):
//! - roles: realm roles (`realm_access.roles`), client roles (`resource_access.<client>.roles`,
//!   as `<client>:<role>` so that a role of another client cannot pass for a realm role) and
//!   groups (`groups`, when a group-membership mapper adds them);
//! - the account console at `{issuer}/account`, with the MSC4191 actions mapped to its pages;
//! - webhooks from event-listener extensions ([`events`]): Phase Two keycloak-events (HMAC) and
//!   plain `EventRepresentation` / `AdminEventRepresentation` JSON (HTTP Basic);
//! - the user's status from the admin REST API ([`admin`]), for reconciliation and for the
//!   event worker to re-read a user whose admin event carried a partial representation.
//!
//! Everything else is the generic default: `sub` as the subject (the Keycloak user id),
//! `prompt=create` only when discovery advertises it (Keycloak ≥ 26.1), no `offline_access`
//! (offline tokens survive SSO logout; mxidp's default scopes do not ask for it), and
//! back-channel logout through core's receiver (this adapter lets it accept Keycloak's `typ`
//! `JWT` (< 25) besides `logout+jwt`; core accepts a missing `exp` (< 23.0.4) and a bare-string
//! `aud`).

use std::path::PathBuf;

use async_trait::async_trait;
use mxidp_core::config::{optional_secret, Config, Problem};
use mxidp_core::events::{IdpEvent, ReceivedEvent, WebhookError, WebhookRequest};
use mxidp_core::provider::{string_list, AccountAction, Claims, Provider, UserStatus};
use mxidp_core::secret::SecretString;
use mxidp_core::upstream::{ProviderMetadata, UpstreamError};
use serde::Deserialize;
use serde_json::Value;
use url::Url;

pub mod admin;
pub mod events;

pub use admin::AdminApi;
pub use events::{WebhookAuth, WebhookEvent};

/// The configuration name of this adapter (`upstream.provider = "keycloak"`).
pub const NAME: &str = "keycloak";

/// `[adapters.keycloak]`. Every key is optional; secrets can be inline or in a file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeycloakConfig {
    /// The secret of a Phase Two keycloak-events webhook (`X-Keycloak-Signature`, HMAC-SHA256).
    #[serde(default)]
    pub webhook_secret: Option<SecretString>,
    #[serde(default)]
    pub webhook_secret_file: Option<PathBuf>,
    /// HTTP Basic credentials a plain HTTP event listener sends.
    #[serde(default)]
    pub webhook_username: Option<String>,
    #[serde(default)]
    pub webhook_password: Option<SecretString>,
    #[serde(default)]
    pub webhook_password_file: Option<PathBuf>,
    /// A confidential client with a service account holding `realm-management` `view-users`:
    /// turns on the admin REST API (user status for reconciliation, re-reading disabled users).
    #[serde(default)]
    pub admin_client_id: Option<String>,
    #[serde(default)]
    pub admin_client_secret: Option<SecretString>,
    #[serde(default)]
    pub admin_client_secret_file: Option<PathBuf>,
}

/// The Keycloak adapter.
#[derive(Debug, Default)]
pub struct Keycloak {
    webhook: WebhookAuth,
    admin: Option<AdminApi>,
}

impl Keycloak {
    /// The adapter with no webhook and no admin API: claims and URLs only.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_webhook(mut self, auth: WebhookAuth) -> Self {
        self.webhook = auth;
        self
    }

    pub fn with_admin(mut self, admin: AdminApi) -> Self {
        self.admin = Some(admin);
        self
    }

    /// Builds the adapter from `[adapters.keycloak]`; every problem names its key.
    pub fn from_config(config: &Config) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let settings: KeycloakConfig = config.adapter_settings(NAME).map_err(|p| vec![p])?;
        let mut secret = |key: &str, inline: &Option<SecretString>, file: &Option<PathBuf>| {
            match optional_secret(key, inline, file) {
                Ok(s) => s,
                Err(p) => {
                    problems.push(p);
                    None
                }
            }
        };
        let hmac = secret(
            "adapters.keycloak.webhook_secret",
            &settings.webhook_secret,
            &settings.webhook_secret_file,
        );
        let password = secret(
            "adapters.keycloak.webhook_password",
            &settings.webhook_password,
            &settings.webhook_password_file,
        );
        let admin_secret = secret(
            "adapters.keycloak.admin_client_secret",
            &settings.admin_client_secret,
            &settings.admin_client_secret_file,
        );
        let basic = match (settings.webhook_username, password) {
            (Some(user), Some(password)) => Some((user, password)),
            (None, None) => None,
            _ => {
                problems.push(Problem {
                    key: "adapters.keycloak.webhook_username".into(),
                    message: "webhook_username and webhook_password go together".into(),
                });
                None
            }
        };
        let admin = match (settings.admin_client_id, admin_secret) {
            (Some(client_id), Some(secret)) => {
                match AdminApi::for_issuer(
                    &config.upstream.issuer,
                    client_id,
                    secret,
                    config.upstream_timeout(),
                ) {
                    Ok(api) => Some(api),
                    Err(message) => {
                        problems.push(Problem {
                            key: "upstream.issuer".into(),
                            message,
                        });
                        None
                    }
                }
            }
            (None, None) => None,
            _ => {
                problems.push(Problem {
                    key: "adapters.keycloak.admin_client_id".into(),
                    message: "admin_client_id and admin_client_secret go together".into(),
                });
                None
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            webhook: WebhookAuth { hmac, basic },
            admin,
        })
    }

    /// A user update with the admin API configured: the event's representation is the request
    /// body of the admin's `PUT` (possibly partial, absent unless "Include representation" is on,
    /// docs/providers.md, Keycloak), so the event worker reads the user back from Keycloak
    /// ([`Provider::user_status`]) before acting, never the webhook before its 2xx.
    fn to_received(&self, event: WebhookEvent) -> Option<ReceivedEvent> {
        match event {
            WebhookEvent::UserUpdated {
                dedupe_key,
                occurred_at,
                user_id,
                enabled,
            } if self.admin.is_some() => Some(ReceivedEvent {
                dedupe_key,
                occurred_at,
                event: IdpEvent::UserChanged {
                    subject: user_id,
                    enabled,
                },
            }),
            other => other.into_received(),
        }
    }
}

#[async_trait]
impl Provider for Keycloak {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Keycloak types its logout tokens `logout+jwt` from 25 on and `JWT` before
    /// (docs/providers.md, Keycloak).
    fn logout_token_types(&self) -> &'static [Option<&'static str>] {
        &[Some("logout+jwt"), Some("JWT")]
    }

    /// Realm roles as they are, client roles as `<client>:<role>`, group paths as they are.
    /// Keycloak puts roles in the access token by default; the realm import in
    /// `deploy/keycloak/` also adds them to the ID token and userinfo, where mxidp reads claims.
    fn roles(&self, claims: &Claims) -> Vec<String> {
        let mut roles = string_list(claims.get("realm_access").and_then(|r| r.get("roles")));
        if let Some(Value::Object(clients)) = claims.get("resource_access") {
            for (client, access) in clients {
                roles.extend(
                    string_list(access.get("roles"))
                        .into_iter()
                        .map(|role| format!("{client}:{role}")),
                );
            }
        }
        roles.extend(string_list(claims.get("groups")));
        roles
    }

    fn parse_webhook(
        &self,
        request: &WebhookRequest<'_>,
    ) -> Result<Vec<ReceivedEvent>, WebhookError> {
        Ok(events::parse(&self.webhook, request)?
            .into_iter()
            .filter_map(|event| self.to_received(event))
            .collect())
    }

    /// The account console (v3, Keycloak 24–26) routes by path under `{issuer}/account/`:
    /// personal info at its root (where "Delete account" also lives when that required action is
    /// enabled), sessions per device at `account-security/device-activity`. It has no page per
    /// session, so the device actions all open the list.
    fn account_url(&self, metadata: &ProviderMetadata, action: AccountAction) -> Option<Url> {
        let page = match action {
            AccountAction::Profile | AccountAction::AccountDeactivate => "",
            AccountAction::DevicesList
            | AccountAction::DeviceView
            | AccountAction::DeviceDelete => "account-security/device-activity",
            // Handled by core (re-authentication, then Synapse's reset window).
            AccountAction::CrossSigningReset => return None,
        };
        Url::parse(&format!(
            "{}/account/{page}",
            metadata.issuer.trim_end_matches('/')
        ))
        .ok()
    }

    async fn user_status(&self, subject: &str) -> Result<UserStatus, UpstreamError> {
        match &self.admin {
            Some(admin) => admin.user_status(subject).await,
            None => Ok(UserStatus::Unknown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: &str) -> Claims {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn roles_come_from_realm_client_and_groups() {
        let kc26 = claims(include_str!(
            "../tests/fixtures/access-token-claims-kc26.json"
        ));
        assert_eq!(
            Keycloak::new().roles(&kc26),
            vec![
                "uma_authorization",
                "account:view-profile",
                "osss-client:user"
            ]
        );
        let with_groups = claims(
            r#"{"realm_access":{"roles":["matrix-admin"]},"groups":["/staff/matrix"],
                "resource_access":{"mxidp":{"roles":["matrix-user"]}}}"#,
        );
        assert_eq!(
            Keycloak::new().roles(&with_groups),
            vec!["matrix-admin", "mxidp:matrix-user", "/staff/matrix"]
        );
        assert!(Keycloak::new().roles(&claims("{}")).is_empty());
    }

    #[test]
    fn the_subject_is_the_keycloak_user_id_not_the_username() {
        let kc26 = claims(include_str!(
            "../tests/fixtures/access-token-claims-kc26.json"
        ));
        assert_eq!(
            Keycloak::new().subject(&kc26).as_deref(),
            Some("8befeac4-8963-49da-a9ac-f310e8d922d8")
        );
    }

    fn metadata(issuer: &str, prompts: &[&str]) -> ProviderMetadata {
        serde_json::from_value(serde_json::json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/protocol/openid-connect/auth"),
            "token_endpoint": format!("{issuer}/protocol/openid-connect/token"),
            "jwks_uri": format!("{issuer}/protocol/openid-connect/certs"),
            "prompt_values_supported": prompts,
        }))
        .unwrap()
    }

    #[test]
    fn account_actions_open_the_console_pages_that_exist() {
        let m = metadata("https://sso.example.com/realms/acme", &[]);
        let kc = Keycloak::new();
        let url = |a| kc.account_url(&m, a).map(|u| u.to_string());
        assert_eq!(
            url(AccountAction::Profile).as_deref(),
            Some("https://sso.example.com/realms/acme/account/")
        );
        for a in [
            AccountAction::DevicesList,
            AccountAction::DeviceView,
            AccountAction::DeviceDelete,
        ] {
            assert_eq!(
                url(a).as_deref(),
                Some(
                    "https://sso.example.com/realms/acme/account/account-security/device-activity"
                )
            );
        }
        assert_eq!(
            url(AccountAction::AccountDeactivate).as_deref(),
            Some("https://sso.example.com/realms/acme/account/")
        );
        assert_eq!(url(AccountAction::CrossSigningReset), None);
    }

    #[test]
    fn sign_up_only_where_discovery_advertises_prompt_create() {
        let kc = Keycloak::new();
        // Keycloak < 26.1 has no prompt_values_supported.
        assert_eq!(
            kc.signup_parameters(&metadata("https://kc/realms/a", &[])),
            None
        );
        assert_eq!(
            kc.signup_parameters(&metadata(
                "https://kc/realms/a",
                &["none", "login", "consent", "create"]
            )),
            Some(vec![("prompt".into(), "create".into())])
        );
    }
}

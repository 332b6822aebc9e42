//! mxidp-zitadel: ZITADEL (cloud or self-hosted, v2.x to v4.x) as mxidp's OpenID Provider.
//!
//! Only what ZITADEL does differently from generic OIDC (docs/providers.md, ZITADEL):
//! - roles are project roles ([`roles`]): `urn:zitadel:iam:org:project:roles` and
//!   `urn:zitadel:iam:org:project:<projectId>:roles`, each `{role: {orgId: orgDomain}}`,
//!   asked for with the project-role scope; with an organisation restriction only roles granted
//!   in that organisation count;
//! - an optional organisation restriction: the org scope at authorize makes ZITADEL's login
//!   enforce it, and the user's resource owner is checked on the claims, so a user of another
//!   organisation is refused with a page that says so;
//! - sign-up with `prompt=create` (ZITADEL supports it without advertising it), the account
//!   page `/ui/console/users/me`;
//! - Actions v2 event deliveries at the webhook route ([`actions`]), signed with the target's
//!   key; the user's state from the user API ([`users`]) for reconciliation, which is on by
//!   default here because ZITADEL never retries a delivery;
//! - back-channel logout tokens typed `JWT` (not `logout+jwt`), `sid` = the ZITADEL session id;
//! - introspection only knows access tokens (a refresh token is `active: false`), so
//!   reconciliation asks the user API rather than introspecting refresh tokens.
//!
//! Everything else is the generic default: `sub` (the ZITADEL user id) as the subject, profile
//! claims from userinfo (ZITADEL keeps them out of the ID token unless told otherwise; core's
//! `fetch_userinfo = "auto"` asks for them), introspection with mxidp's own client, whose id
//! is in the `aud` of every token ZITADEL issues to it.

use std::path::PathBuf;

use async_trait::async_trait;
use mxidp_core::config::{optional_secret, Config, Problem};
use mxidp_core::events::{ReceivedEvent, WebhookError, WebhookRequest};
use mxidp_core::provider::{AccountAction, Claims, Provider, UserStatus};
use mxidp_core::secret::SecretString;
use mxidp_core::upstream::{ProviderMetadata, UpstreamError};
use serde::Deserialize;
use url::Url;

pub mod actions;
pub mod roles;
pub mod users;

pub use users::UserApi;

/// The configuration name of this adapter (`upstream.provider = "zitadel"`).
pub const NAME: &str = "zitadel";
/// The Console's page of the signed-in user.
pub const ACCOUNT_PATH: &str = "ui/console/users/me";
/// Asks for `urn:zitadel:iam:org:project:<projectId>:roles` of every project in the audience.
pub const PROJECT_ROLES_SCOPE: &str = "urn:zitadel:iam:org:projects:roles";
/// Asks for the `urn:zitadel:iam:user:resourceowner:*` claims (the user's organisation).
pub const RESOURCE_OWNER_SCOPE: &str = "urn:zitadel:iam:user:resourceowner";
/// The user's organisation id.
pub const RESOURCE_OWNER_ID_CLAIM: &str = "urn:zitadel:iam:user:resourceowner:id";
pub const RESOURCE_OWNER_NAME_CLAIM: &str = "urn:zitadel:iam:user:resourceowner:name";

/// `[adapters.zitadel]`. Every key is optional; secrets can be inline or in a file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZitadelConfig {
    /// Serve only users of this organisation (its id).
    #[serde(default)]
    pub organization_id: Option<String>,
    /// Take roles only from this project (its id) besides the project of mxidp's client.
    #[serde(default)]
    pub project_id: Option<String>,
    /// The Actions v2 target's `signingKey`: turns the event webhook on.
    #[serde(default)]
    pub signing_key: Option<SecretString>,
    #[serde(default)]
    pub signing_key_file: Option<PathBuf>,
    /// A personal access token of a service user allowed to read users (`user.read`, e.g. the
    /// Org User Manager role): turns the user API on (reconciliation, user status).
    #[serde(default)]
    pub service_user_token: Option<SecretString>,
    #[serde(default)]
    pub service_user_token_file: Option<PathBuf>,
}

/// The ZITADEL adapter.
#[derive(Debug, Default)]
pub struct Zitadel {
    organization_id: Option<String>,
    project_id: Option<String>,
    signing_key: Option<SecretString>,
    users: Option<UserApi>,
}

impl Zitadel {
    /// The adapter with no restriction, webhook or user API: claims and URLs only.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_organization(mut self, organization_id: &str) -> Self {
        self.organization_id = Some(organization_id.to_owned());
        self
    }

    pub fn with_project(mut self, project_id: &str) -> Self {
        self.project_id = Some(project_id.to_owned());
        self
    }

    pub fn with_signing_key(mut self, key: SecretString) -> Self {
        self.signing_key = Some(key);
        self
    }

    /// Builds the adapter from `[adapters.zitadel]`; every problem names its key.
    pub fn from_config(config: &Config) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let settings: ZitadelConfig = config.adapter_settings(NAME).map_err(|p| vec![p])?;
        let mut secret = |key: &str, inline: &Option<SecretString>, file: &Option<PathBuf>| {
            optional_secret(key, inline, file).unwrap_or_else(|p| {
                problems.push(p);
                None
            })
        };
        let signing_key = secret(
            "adapters.zitadel.signing_key",
            &settings.signing_key,
            &settings.signing_key_file,
        );
        let token = secret(
            "adapters.zitadel.service_user_token",
            &settings.service_user_token,
            &settings.service_user_token_file,
        );
        // Both ids go into scopes and claim names: ZITADEL's ids are digits (custom ones are
        // letters, digits, `-` and `_`), nothing that could change a scope string.
        for (key, id) in [
            (
                "adapters.zitadel.organization_id",
                &settings.organization_id,
            ),
            ("adapters.zitadel.project_id", &settings.project_id),
        ] {
            if id.as_deref().is_some_and(|id| !users::is_zitadel_id(id)) {
                problems.push(Problem {
                    key: key.into(),
                    message: "not a ZITADEL id (letters, digits, `-` and `_`)".into(),
                });
            }
        }
        let users = token.and_then(|token| {
            UserApi::new(&config.upstream.issuer, token, config.upstream_timeout())
                .map_err(|message| {
                    problems.push(Problem {
                        key: "adapters.zitadel.service_user_token".into(),
                        message,
                    })
                })
                .ok()
        });
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            organization_id: settings.organization_id,
            project_id: settings.project_id,
            signing_key,
            users,
        })
    }
}

#[async_trait]
impl Provider for Zitadel {
    fn name(&self) -> &'static str {
        NAME
    }

    fn roles(&self, claims: &Claims) -> Vec<String> {
        roles::project_roles(
            claims,
            self.project_id.as_deref(),
            self.organization_id.as_deref(),
        )
    }

    fn scopes(&self) -> Vec<String> {
        let mut scopes = vec![
            PROJECT_ROLES_SCOPE.to_owned(),
            RESOURCE_OWNER_SCOPE.to_owned(),
        ];
        if let Some(org) = &self.organization_id {
            // ZITADEL's login then only lets users of this organisation through.
            scopes.push(format!("urn:zitadel:iam:org:id:{org}"));
        }
        scopes
    }

    /// The claim check behind the org scope: a token from a login that ignored the scope (an
    /// older ZITADEL, a misconfigured app) still does not let another organisation's user in.
    fn admit(&self, claims: &Claims) -> Result<(), String> {
        let Some(wanted) = &self.organization_id else {
            return Ok(());
        };
        let owner = claims.get(RESOURCE_OWNER_ID_CLAIM).and_then(|v| v.as_str());
        if owner == Some(wanted.as_str()) {
            return Ok(());
        }
        let theirs = claims
            .get(RESOURCE_OWNER_NAME_CLAIM)
            .and_then(|v| v.as_str())
            .filter(|n| !n.is_empty() && n.len() <= 200);
        Err(match (owner, theirs) {
            (None, _) => "This Matrix server is only for members of one organisation, and your sign-in did not say which organisation you belong to. Ask your administrator.".into(),
            (Some(_), Some(name)) => format!("This Matrix server is only for members of one organisation, and your account belongs to another one ({name}). Sign in with an account of the right organisation, or ask your administrator."),
            (Some(_), None) => "This Matrix server is only for members of one organisation, and your account belongs to another one. Sign in with an account of the right organisation, or ask your administrator.".into(),
        })
    }

    /// ZITADEL supports `prompt=create` (its registration form) but does not list it in
    /// discovery's `prompt_values_supported`.
    fn signup_parameters(&self, _metadata: &ProviderMetadata) -> Option<Vec<(String, String)>> {
        Some(vec![("prompt".into(), "create".into())])
    }

    fn parse_webhook(
        &self,
        request: &WebhookRequest<'_>,
    ) -> Result<Vec<ReceivedEvent>, WebhookError> {
        let key = self.signing_key.as_ref().ok_or(WebhookError::Unsupported)?;
        actions::parse(key, request, mxidp_core::ids::now_unix())
    }

    /// One page for every action: the Console's own user page.
    fn account_url(&self, metadata: &ProviderMetadata, action: AccountAction) -> Option<Url> {
        if action == AccountAction::CrossSigningReset {
            // Handled by core (re-authentication, then Synapse's reset window).
            return None;
        }
        let mut issuer = Url::parse(&metadata.issuer).ok()?;
        if !issuer.path().ends_with('/') {
            let path = format!("{}/", issuer.path());
            issuer.set_path(&path);
        }
        issuer.join(ACCOUNT_PATH).ok()
    }

    /// ZITADEL's introspection answers for access tokens only.
    fn introspects_refresh_tokens(&self) -> bool {
        false
    }

    /// ZITADEL types its logout tokens `JWT`; `logout+jwt` is kept for versions that follow
    /// the specification. An ID token is still no logout token: core requires the logout
    /// `events` member and refuses a `nonce`.
    fn logout_token_types(&self) -> &'static [Option<&'static str>] {
        &[Some("logout+jwt"), Some("JWT")]
    }

    /// ZITADEL drops an event it could not deliver (no retry), so sessions are checked against
    /// the user API on a timer unless `reconciliation.enabled = false`.
    fn default_reconciliation(&self) -> bool {
        true
    }

    async fn user_status(&self, subject: &str) -> Result<UserStatus, UpstreamError> {
        match &self.users {
            Some(api) => api.user_status(subject).await,
            None => Ok(UserStatus::Unknown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: serde_json::Value) -> Claims {
        value.as_object().unwrap().clone()
    }

    fn metadata(issuer: &str) -> ProviderMetadata {
        serde_json::from_value(json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/oauth/v2/authorize"),
            "token_endpoint": format!("{issuer}/oauth/v2/token"),
            "jwks_uri": format!("{issuer}/oauth/v2/keys"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }))
        .unwrap()
    }

    #[test]
    fn sign_up_and_the_console_account_page() {
        let z = Zitadel::new();
        let m = metadata("https://acme-xyz.zitadel.cloud");
        assert_eq!(
            z.signup_parameters(&m),
            Some(vec![("prompt".into(), "create".into())])
        );
        assert_eq!(
            z.account_url(&m, AccountAction::Profile)
                .map(String::from)
                .as_deref(),
            Some("https://acme-xyz.zitadel.cloud/ui/console/users/me")
        );
        // A ZITADEL behind a path prefix keeps it.
        let m = metadata("https://example.org/zitadel");
        assert_eq!(
            z.account_url(&m, AccountAction::DevicesList)
                .map(String::from)
                .as_deref(),
            Some("https://example.org/zitadel/ui/console/users/me")
        );
        assert_eq!(z.account_url(&m, AccountAction::CrossSigningReset), None);
    }

    #[test]
    fn the_org_scope_and_the_resource_owner_check_go_together() {
        let open = Zitadel::new();
        assert_eq!(open.scopes(), [PROJECT_ROLES_SCOPE, RESOURCE_OWNER_SCOPE]);
        assert_eq!(open.admit(&claims(json!({"sub": "1"}))), Ok(()));

        let acme = Zitadel::new().with_organization("336392597046099971");
        assert!(acme
            .scopes()
            .contains(&"urn:zitadel:iam:org:id:336392597046099971".to_owned()));
        let member = claims(json!({"sub": "1", RESOURCE_OWNER_ID_CLAIM: "336392597046099971"}));
        assert_eq!(acme.admit(&member), Ok(()));
        let other = claims(json!({"sub": "2", RESOURCE_OWNER_ID_CLAIM: "999",
            RESOURCE_OWNER_NAME_CLAIM: "Globex"}));
        let refusal = acme.admit(&other).unwrap_err();
        assert!(refusal.contains("another one (Globex)"), "{refusal}");
        // No claim at all is no proof of membership.
        assert!(acme.admit(&claims(json!({"sub": "3"}))).is_err());
    }

    #[test]
    fn logout_tokens_typed_jwt_are_zitadels() {
        assert!(Zitadel::new().logout_token_types().contains(&Some("JWT")));
        assert!(Zitadel::new().default_reconciliation());
        assert!(!Zitadel::new().introspects_refresh_tokens());
    }
}

//! The IdP boundary. [`GenericOidc`] is the complete default; an adapter crate implements
//! [`Provider`] and overrides only what its IdP does differently (docs/architecture.md).

use async_trait::async_trait;
use serde_json::{Map, Value};
use url::Url;

use crate::config::Revalidation;
use crate::events::{IdpEvent, ReceivedEvent, WebhookError, WebhookRequest};
use crate::upstream::{ProviderMetadata, UpstreamError};

/// Claims of one login: the ID token's claims, with userinfo merged in when configured.
pub type Claims = Map<String, Value>;

/// MSC4191 account-management actions (stable names; aliases are resolved at the edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountAction {
    Profile,
    DevicesList,
    DeviceView,
    DeviceDelete,
    AccountDeactivate,
    CrossSigningReset,
}

/// What the IdP says about a user, for reconciliation ([`Provider::user_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStatus {
    /// The IdP cannot or did not say (the default: generic OIDC has no user API).
    Unknown,
    Active,
    /// Suspended, locked or deactivated at the IdP: may come back.
    Disabled,
    /// Gone from the IdP.
    Deleted,
}

impl UserStatus {
    /// The status event for what the IdP says of a user now: the one mapping from a user's
    /// status to an event, used by reconciliation, adapters' webhooks and `UserChanged`.
    pub fn event(self, subject: &str) -> Option<IdpEvent> {
        let subject = subject.to_owned();
        match self {
            UserStatus::Active => Some(IdpEvent::UserUnlocked { subject }),
            UserStatus::Disabled => Some(IdpEvent::UserLocked { subject }),
            UserStatus::Deleted => Some(IdpEvent::UserDeleted { subject }),
            UserStatus::Unknown => None,
        }
    }
}

/// What the webhook endpoint answers to a verification request (a `GET` some IdPs send once,
/// when the hook is registered, before any event: Okta Event Hooks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookChallenge {
    /// The JSON body to answer with 200.
    pub body: Value,
}

/// One read of an IdP's event log ([`Provider::poll_event_log`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLogPage {
    /// The events of this page, normalised as the adapter's webhook normalises them (the same
    /// dedupe keys, so that an event seen by both paths acts once).
    pub events: Vec<ReceivedEvent>,
    /// Where the next read starts. Core stores it only once every event above is durable.
    pub cursor: String,
    /// How long to wait before the next read: none while the log has more pages, longer when
    /// caught up or when the IdP's rate limit says so.
    pub next_poll: std::time::Duration,
}

/// Adapters implement this with `#[async_trait]` only if they override an async hook.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Short name used in configuration and logs (`generic`, `keycloak`, ...).
    fn name(&self) -> &'static str {
        "generic"
    }

    /// The stable subject this IdP identifies a user with. Never a username (docs/identity.md).
    fn subject(&self, claims: &Claims) -> Option<String> {
        claims.get("sub").and_then(Value::as_str).map(str::to_owned)
    }

    /// Role or group names the access and admin policies can match on. Generic OIDC has no
    /// standard claim; `groups` is the de-facto one.
    fn roles(&self, claims: &Claims) -> Vec<String> {
        string_list(claims.get("groups"))
    }

    /// Checks beyond standard ID-token validation (an IdP-specific claim that must hold).
    /// Runs after signature, `iss`, `aud`, `nonce` and time checks have passed.
    fn validate_claims(&self, _claims: &Claims) -> Result<(), String> {
        Ok(())
    }

    /// Scopes the adapter needs at the IdP beyond `upstream.scopes`: claims some IdPs send only
    /// when asked (ZITADEL's project roles and the user's organisation).
    fn scopes(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether this deployment serves the user the claims describe (the ID token's claims with
    /// userinfo merged in), checked with `policy.access`. `Err` refuses the sign-in and its
    /// text is shown to the user, so it says what happened in their words, not a token's.
    fn admit(&self, _claims: &Claims) -> Result<(), String> {
        Ok(())
    }

    /// Authorize parameters sent on every sign-in (e.g. an `audience` for JWT access tokens).
    fn authorize_parameters(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Extra authorize parameters for a sign-up request (`prompt=create` from the client).
    /// `None` means the IdP cannot register users, and `prompt=create` is not advertised.
    fn signup_parameters(&self, metadata: &ProviderMetadata) -> Option<Vec<(String, String)>> {
        if metadata
            .prompt_values_supported
            .iter()
            .any(|p| p == "create")
        {
            Some(vec![("prompt".into(), "create".into())])
        } else {
            None
        }
    }

    /// Parameters that force a fresh sign-in at the IdP (before a cross-signing reset).
    fn reauthentication_parameters(&self) -> Vec<(String, String)> {
        vec![
            ("prompt".into(), "login".into()),
            ("max_age".into(), "0".into()),
        ]
    }

    /// Turns a webhook delivery from this IdP into normalised events, after verifying its sender
    /// on the raw bytes. Generic OIDC has no webhooks; standard receivers (back-channel logout,
    /// Shared Signals) live in core and need no override.
    fn parse_webhook(
        &self,
        _request: &WebhookRequest<'_>,
    ) -> Result<Vec<ReceivedEvent>, WebhookError> {
        Err(WebhookError::Unsupported)
    }

    /// Answers the IdP's one-time verification of the webhook endpoint (`GET`), after checking
    /// the sender as for a delivery. Nothing is stored. The default has none (404).
    ///
    /// There is deliberately no hook that asks the IdP anything before a delivery's 2xx: an
    /// adapter that must read the user back (Keycloak's partial admin representation) emits
    /// [`IdpEvent::UserChanged`], which the event worker resolves with [`Provider::user_status`].
    fn webhook_verification(
        &self,
        _request: &WebhookRequest<'_>,
    ) -> Result<WebhookChallenge, WebhookError> {
        Err(WebhookError::Unsupported)
    }

    /// Where the IdP lets the user manage their account for an action, when it has such a page.
    fn account_url(&self, _metadata: &ProviderMetadata, _action: AccountAction) -> Option<Url> {
        None
    }

    /// Whether the IdP's introspection endpoint (RFC 7662) knows refresh tokens. Reconciliation
    /// ends a session whose refresh token the IdP calls inactive, so an IdP that only
    /// introspects access tokens (and calls every refresh token inactive) must say `false`.
    fn introspects_refresh_tokens(&self) -> bool {
        true
    }

    /// The `typ` headers a back-channel logout token may carry (compared without case and
    /// without an `application/` prefix). OIDC Back-Channel Logout 1.0 §2.4 types them
    /// `logout+jwt`, which keeps an ID token or access token of the same issuer out; an IdP that
    /// types them otherwise (Keycloak before 25: `JWT`) says so here.
    fn logout_token_types(&self) -> &'static [Option<&'static str>] {
        &[Some("logout+jwt")]
    }

    /// The re-validation mode when `upstream.revalidation` is not set: an IdP whose
    /// introspection is rate-limited or missing says so here.
    fn default_revalidation(&self) -> Revalidation {
        Revalidation::Session
    }

    /// Introspection calls re-validation may make per minute when
    /// `upstream.revalidation_max_per_minute` is not set (`None`: no limit). An IdP whose
    /// introspection shares a rate-limited bucket with sign-ins says so here.
    fn revalidation_budget_per_minute(&self) -> Option<u32> {
        None
    }

    /// Whether reconciliation runs when `reconciliation.enabled` is not set: an IdP that drops
    /// event deliveries it could not make (ZITADEL never retries one) says `true`.
    fn default_reconciliation(&self) -> bool {
        false
    }

    /// The `aud` the IdP puts in the JWT access tokens it issues to mxidp, when it is not
    /// mxidp's client id (Auth0's API audience). `jwt` re-validation accepts a token whose `aud`
    /// holds mxidp's client id, this value, or whose `azp` is mxidp's client id.
    fn access_token_audience(&self) -> Option<String> {
        None
    }

    /// The user's status at the IdP, asked by reconciliation for IdPs that never send some
    /// events (a disabled or deleted user), and by the event worker for a
    /// [`IdpEvent::UserChanged`]. An adapter with a user API overrides this; each call
    /// that answers anything but [`UserStatus::Unknown`] counts against
    /// `reconciliation.max_requests_per_second`. An error is counted and changes nothing.
    async fn user_status(&self, _subject: &str) -> Result<UserStatus, UpstreamError> {
        Ok(UserStatus::Unknown)
    }

    /// Reads the IdP's event log from `cursor` (`None`: nothing read yet), for IdPs whose
    /// webhooks are best-effort and whose log is the record (Okta's System Log). Core's log task
    /// ([`crate::events::log_stream`]) stores the events under the webhook's source, then the
    /// cursor. `Ok(None)`, the default, means there is no log to read and the task stops.
    async fn poll_event_log(
        &self,
        _cursor: Option<&str>,
    ) -> Result<Option<EventLogPage>, UpstreamError> {
        Ok(None)
    }
}

/// Plain OpenID Connect: every default of [`Provider`].
#[derive(Debug, Default, Clone, Copy)]
pub struct GenericOidc;

impl Provider for GenericOidc {}

/// A claim that is a string or an array of strings, as a list.
pub fn string_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

//! Configuration: a TOML file plus `MXIDP__SECTION__KEY` environment overrides. Every secret
//! can be given inline (`secret = "…"`) or read from a file (`secret_file = "/run/secrets/…"`).
//! [`Config::check`] lists every problem with the key path it concerns.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::secret::SecretString;

/// Shared secrets mxidp generates or receives must carry at least this much entropy.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    pub matrix: MatrixConfig,
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub mapping: MappingConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub sessions: SessionsConfig,
    #[serde(default)]
    pub events: EventsConfig,
    #[serde(default)]
    pub reconciliation: ReconciliationConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Prometheus metrics on their own listener (docs/operations.md).
    #[serde(default)]
    pub metrics: crate::metrics::MetricsConfig,
    /// The JWT-to-introspection shim (docs/jwt-shim.md).
    #[serde(default)]
    pub jwt_shim: crate::jwt_shim::ShimConfig,
    #[serde(default)]
    pub consent: crate::consent::ConsentConfig,
    #[serde(default)]
    pub branding: crate::branding::BrandingConfig,
    /// Provider adapters' own settings, one table per adapter (`[adapters.keycloak]`), handed
    /// verbatim to the adapter named by `upstream.provider`, which parses and checks them.
    #[serde(default)]
    pub adapters: std::collections::BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address mxidp listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The public URL of mxidp: the OAuth issuer clients see. Ends in `/`.
    pub public_base: Url,
    /// Largest request body accepted, in bytes (413 beyond).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path/to/mxidp.db` (the embedded default).
    #[serde(default = "default_database_url")]
    pub url: String,
    /// Key that encrypts the upstream refresh tokens mxidp keeps to revoke sessions at the IdP.
    #[serde(default)]
    pub encryption_key: Option<SecretString>,
    #[serde(default)]
    pub encryption_key_file: Option<PathBuf>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: default_database_url(),
            encryption_key: None,
            encryption_key_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixConfig {
    /// The homeserver's server name (the part after `:` in user ids).
    pub homeserver: String,
    /// Synapse's client-listener URL, where `/_synapse/mas/*` lives.
    pub endpoint: Url,
    /// The shared secret, identical to Synapse's `matrix_authentication_service.secret`.
    #[serde(default)]
    pub secret: Option<SecretString>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `generic` (any OpenID Provider); adapters add their own names.
    #[serde(default = "default_provider")]
    pub provider: String,
    /// The stable name of this IdP in mxidp's records: identities, sessions and status
    /// watermarks are keyed on (`id`, subject). Defaults to the issuer without its scheme, so
    /// switching `provider` (say from `generic` to `okta`) keeps every user on their account.
    /// Set it before the first sign-in if the issuer URL will change.
    #[serde(default)]
    pub id: Option<String>,
    pub issuer: Url,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub auth_method: crate::upstream::ClientAuthMethod,
    /// `private_key_jwt`: mxidp's private key, PEM (RSA or EC P-256) or ZITADEL's JSON key
    /// file; `client_key_id` is the `kid` (a ZITADEL key file names its own).
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_id: Option<String>,
    #[serde(default = "default_scopes", deserialize_with = "words")]
    pub scopes: Vec<String>,
    #[serde(default = "default_algorithms", deserialize_with = "words")]
    pub allowed_algorithms: Vec<String>,
    #[serde(default)]
    pub fetch_userinfo: crate::upstream::UserinfoMode,
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    #[serde(default = "default_jwks_cooldown")]
    pub jwks_refetch_cooldown_seconds: u64,
    /// Longest time the IdP's (and transmitters') keys are used before they are fetched again,
    /// so that a removed key stops verifying; `Cache-Control: max-age` may shorten it (not
    /// below a minute).
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_seconds: u64,
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Where users manage their account; overrides the adapter's page when set.
    #[serde(default)]
    pub account_url: Option<Url>,
    /// Re-validation of the IdP's tokens (docs/token-model.md): `session` trusts mxidp's session state;
    /// `introspect` also asks the IdP (RFC 7662) about tokens Synapse introspects, in the
    /// background, at most once per `revalidation_cache_seconds` per token. Unset: the
    /// adapter's default (`session` for generic OIDC).
    #[serde(default)]
    pub revalidation: Option<Revalidation>,
    #[serde(default = "default_revalidation_cache")]
    pub revalidation_cache_seconds: u64,
    /// At most this many introspection calls a minute for re-validation (unset: the adapter's
    /// default; Okta's is 150). A 429 from the IdP pauses them until its reset time either way.
    #[serde(default)]
    pub revalidation_max_per_minute: Option<u32>,
}

impl UpstreamConfig {
    /// `upstream.id`, or its default derived from the issuer
    /// (`https://idp.example.com/realms/matrix/` gives `idp.example.com/realms/matrix`).
    pub fn upstream_id(&self) -> String {
        match &self.id {
            Some(id) => id.trim().to_owned(),
            None => {
                let issuer = self.issuer.as_str();
                issuer
                    .split_once("://")
                    .map_or(issuer, |(_, rest)| rest)
                    .trim_end_matches('/')
                    .to_owned()
            }
        }
    }
}

/// `upstream.revalidation`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Revalidation {
    /// Trust mxidp's session state (ended by IdP events, refresh failures, reconciliation).
    #[default]
    Session,
    /// RFC 7662 introspection at the IdP with mxidp's client, off the hot path.
    Introspect,
    /// Local verification of JWT access tokens with the IdP's cached JWKS (signature, `iss`,
    /// `exp`), off the hot path: no call to the IdP beyond key refreshes.
    Jwt,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// Template over the ID-token/userinfo claims that gives the localpart.
    #[serde(default = "default_localpart_template")]
    pub localpart_template: String,
    /// An e-mail-like value keeps only the part before `@`.
    #[serde(default = "yes")]
    pub keep_before_at: bool,
    /// `fail` (default): a taken localpart refuses the login. `suffix`: try `name-2`, `name-3`…
    #[serde(default)]
    pub on_conflict: ConflictMode,
    #[serde(default = "default_suffix_max")]
    pub suffix_max: u32,
    /// Template for the display name; defaults to `name`, then `preferred_username`.
    #[serde(default)]
    pub displayname_template: Option<String>,
    /// Sync verified e-mail addresses to Synapse on every login.
    #[serde(default = "yes")]
    pub sync_emails: bool,
}

impl Default for MappingConfig {
    fn default() -> Self {
        Self {
            localpart_template: default_localpart_template(),
            keep_before_at: true,
            on_conflict: ConflictMode::Fail,
            suffix_max: default_suffix_max(),
            displayname_template: None,
            sync_emails: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConflictMode {
    #[default]
    Fail,
    Suffix,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Who may use Matrix at all: a claim (or `roles`) that must hold a value.
    #[serde(default)]
    pub access: Option<ClaimRule>,
    /// Who is a homeserver admin (`urn:synapse:admin:*`).
    #[serde(default)]
    pub admin: Option<ClaimRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRule {
    pub claim: String,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// How long a sign-in at the IdP may take, from /authorize to the callback.
    #[serde(default = "default_pending_ttl")]
    pub pending_authorization_seconds: u64,
    /// Lifetime of mxidp's single-use authorization code.
    #[serde(default = "default_code_ttl")]
    pub authorization_code_seconds: u64,
    /// Lifetime of a device authorization grant's codes (RFC 8628): from the client's request
    /// until the user has entered the code, signed in and consented.
    #[serde(default = "default_device_code_ttl")]
    pub device_code_seconds: u64,
    /// Access-token lifetime assumed when the IdP does not say (`expires_in` missing).
    #[serde(default = "default_access_ttl")]
    pub default_access_token_seconds: u64,
    /// Entries kept in the introspection cache.
    #[serde(default = "default_cache_entries")]
    pub introspection_cache_entries: usize,
}

/// `[limits]`: what anonymous requests may make mxidp store (see [`crate::limits`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Client registrations per client address and window.
    pub registrations_per_window: u32,
    /// Sign-ins started at `/oauth2/authorize` per client address and window.
    pub authorizations_per_window: u32,
    /// Account actions (a cross-signing reset start) per client address and window.
    pub account_actions_per_window: u32,
    pub window_seconds: u64,
    /// Reverse proxies whose `X-Forwarded-For` names the client (the last untrusted entry).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Sign-ins in progress at once, for everyone; past it new ones get 503 until some finish
    /// or expire.
    pub max_pending_authorizations: u64,
    /// A registered client that never completed a sign-in is deleted after this long.
    pub unused_client_seconds: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            registrations_per_window: 60,
            authorizations_per_window: 300,
            account_actions_per_window: 30,
            window_seconds: 600,
            // A reverse proxy on the same host (the usual TLS terminator) is trusted out of the
            // box; without it every client would share the proxy's limit.
            trusted_proxies: vec![
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ],
            max_pending_authorizations: 10_000,
            unused_client_seconds: 86_400,
        }
    }
}

impl DatabaseConfig {
    /// The database URL as it may be logged: a password in it is replaced.
    pub fn url_for_log(&self) -> String {
        match Url::parse(&self.url) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some("redacted"));
                url.to_string()
            }
            Ok(_) => self.url.clone(),
            // Not a URL we can read: show only its scheme.
            Err(_) => self.url.split_once(':').map_or_else(
                || "[unparsable]".to_owned(),
                |(scheme, _)| format!("{scheme}:…"),
            ),
        }
    }
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            pending_authorization_seconds: default_pending_ttl(),
            authorization_code_seconds: default_code_ttl(),
            device_code_seconds: default_device_code_ttl(),
            default_access_token_seconds: default_access_ttl(),
            introspection_cache_entries: default_cache_entries(),
        }
    }
}

/// A list given as a TOML array, or as one space-separated string (how an environment override
/// spells it: `MXIDP__UPSTREAM__SCOPES="openid profile"`).
fn words<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Words {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Words::deserialize(d)? {
        Words::List(list) => list,
        Words::Text(text) => text.split_whitespace().map(str::to_owned).collect(),
    })
}

/// The IdP event pipeline (docs/events.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// First retry delay after a failed action; doubles (with jitter) up to `retry_max_seconds`.
    #[serde(default = "default_retry_initial")]
    pub retry_initial_seconds: u64,
    #[serde(default = "default_retry_max")]
    pub retry_max_seconds: u64,
    /// An event still failing this long after it was received goes to the dead letters.
    #[serde(default = "default_event_max_age")]
    pub max_age_seconds: u64,
    /// `end_sessions` (default): a password or credential change signs the user out everywhere.
    /// `record`: only audit it.
    #[serde(default)]
    pub on_credential_change: CredentialChangePolicy,
    /// `UserDeleted` also asks Synapse for GDPR erasure.
    #[serde(default)]
    pub erase_on_delete: bool,
    /// Also accept back-channel logout tokens typed `JWT` (not `logout+jwt`), for an IdP used
    /// with the generic adapter that types them so (ZITADEL does). Adapters for such IdPs turn
    /// it on themselves.
    #[serde(default)]
    pub accept_jwt_typed_logout_tokens: bool,
    /// Shared Signals (RFC 8935 push of RFC 8417 SETs), e.g. from Okta. Off unless set.
    #[serde(default)]
    pub ssf: Option<TransmitterConfig>,
    /// Global token revocation (Okta Universal Logout). Off unless set.
    #[serde(default)]
    pub global_token_revocation: Option<TransmitterConfig>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            retry_initial_seconds: default_retry_initial(),
            retry_max_seconds: default_retry_max(),
            max_age_seconds: default_event_max_age(),
            on_credential_change: CredentialChangePolicy::default(),
            erase_on_delete: false,
            accept_jwt_typed_logout_tokens: false,
            ssf: None,
            global_token_revocation: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CredentialChangePolicy {
    #[default]
    EndSessions,
    Record,
}

/// A party that signs security events for mxidp: its issuer and where its keys are.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransmitterConfig {
    /// The `iss` its tokens carry, compared exactly.
    pub issuer: String,
    /// Its JWKS (fetched by mxidp; configured here, never taken from a token).
    pub jwks_uri: Url,
    /// The `aud` expected; defaults to mxidp's public URL (SSF) or the endpoint URL (global
    /// token revocation).
    #[serde(default)]
    pub audience: Option<String>,
    /// A token (SET) whose `iat` is older than this is refused, when it has no `exp`: a captured
    /// SET cannot be delivered again much later (its `jti` is spent only once stored).
    #[serde(default = "default_set_max_age")]
    pub max_age_seconds: u64,
}

fn default_jwks_refresh() -> u64 {
    3600
}

fn default_set_max_age() -> u64 {
    86_400
}

/// The periodic job that finds sessions ended at the IdP without any event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconciliationConfig {
    /// Unset: the adapter's default (on for ZITADEL, whose event deliveries are never retried;
    /// off otherwise). See [`ReconciliationConfig::is_enabled`].
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Time between two rounds (jittered by up to 10 %).
    #[serde(default = "default_reconcile_interval")]
    pub interval_seconds: u64,
    /// Sessions checked per round.
    #[serde(default = "default_reconcile_batch")]
    pub batch_size: u32,
    /// Upper bound on calls to the IdP per second.
    #[serde(default = "default_reconcile_rate")]
    pub max_requests_per_second: u32,
}

impl ReconciliationConfig {
    /// `enabled`, or the provider adapter's default when it is not set.
    pub fn is_enabled(&self, provider: &dyn crate::provider::Provider) -> bool {
        self.enabled
            .unwrap_or_else(|| provider.default_reconciliation())
    }
}

impl Default for ReconciliationConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            interval_seconds: default_reconcile_interval(),
            batch_size: default_reconcile_batch(),
            max_requests_per_second: default_reconcile_rate(),
        }
    }
}

fn default_retry_initial() -> u64 {
    2
}
fn default_retry_max() -> u64 {
    300
}
fn default_event_max_age() -> u64 {
    86_400
}
fn default_reconcile_interval() -> u64 {
    3_600
}
fn default_reconcile_batch() -> u32 {
    100
}
fn default_reconcile_rate() -> u32 {
    5
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_body() -> usize {
    64 * 1024
}
fn default_database_url() -> String {
    "sqlite://mxidp.db".into()
}
fn default_timeout() -> u64 {
    10
}
fn default_revalidation_cache() -> u64 {
    60
}
fn default_provider() -> String {
    "generic".into()
}
fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into(), "email".into()]
}
fn default_algorithms() -> Vec<String> {
    [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ]
    .map(String::from)
    .to_vec()
}
fn default_leeway() -> u64 {
    30
}
fn default_jwks_cooldown() -> u64 {
    60
}
fn default_localpart_template() -> String {
    "{{ preferred_username }}".into()
}
fn yes() -> bool {
    true
}
fn default_suffix_max() -> u32 {
    9
}
fn default_pending_ttl() -> u64 {
    600
}
fn default_code_ttl() -> u64 {
    60
}
fn default_device_code_ttl() -> u64 {
    600
}
fn default_access_ttl() -> u64 {
    300
}
fn default_cache_entries() -> usize {
    200_000
}

/// One problem found in the configuration, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl Config {
    /// Reads the TOML file, then applies `MXIDP__SECTION__KEY` environment overrides
    /// (`MXIDP__MATRIX__SECRET_FILE=/run/secrets/mxidp`). Does not validate: see [`Config::check`].
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, None)
    }

    /// [`Config::load`] with the environment given explicitly (`None`: the process's).
    pub fn load_with_env(
        path: Option<&Path>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("MXIDP")
                .prefix_separator("__")
                .separator("__")
                // No number parsing: it would turn a secret or client id like "0123" into 123.
                // Numeric and boolean keys are converted from their text by deserialisation.
                .source(env),
        );
        Ok(builder.build()?.try_deserialize()?)
    }

    /// Parses a configuration from TOML text, without the environment (for tests and fuzzing).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Ok(config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()?
            .try_deserialize()?)
    }

    /// Loads and validates; the error lists every problem.
    pub fn load_checked(path: Option<&Path>) -> Result<Self, ConfigError> {
        let config = Self::load(path)?;
        let problems = config.check();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Every problem in the configuration, each with its key path. Reads secret files.
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();

        let base = &self.http.public_base;
        if !matches!(base.scheme(), "https" | "http") {
            push(
                &mut problems,
                "http.public_base",
                "must be an http(s) URL".into(),
            );
        }
        if !base.as_str().ends_with('/') {
            push(
                &mut problems,
                "http.public_base",
                "must end in '/': it is the OAuth issuer and clients compare it byte for byte"
                    .into(),
            );
        }
        if base.query().is_some() || base.fragment().is_some() {
            push(
                &mut problems,
                "http.public_base",
                "must have no query or fragment".into(),
            );
        }
        if base.scheme() == "http" && !is_loopback_host(base) {
            push(&mut problems,
                "http.public_base",
                "must be https unless it is a loopback address (Matrix clients refuse http issuers)".into(),
            );
        }
        if self.http.max_body_bytes < 1024 {
            push(
                &mut problems,
                "http.max_body_bytes",
                "must be at least 1024".into(),
            );
        }

        if !self.database.url.starts_with("sqlite:") {
            push(
                &mut problems,
                "database.url",
                "only sqlite:// is supported in this version (PostgreSQL is planned)".into(),
            );
        }
        match secret_from(
            "database.encryption_key",
            &self.database.encryption_key,
            &self.database.encryption_key_file,
        ) {
            Ok(secret) => {
                if secret.len() < MIN_SECRET_BYTES {
                    push(
                        &mut problems,
                        "database.encryption_key",
                        format!(
                            "must be at least {MIN_SECRET_BYTES} bytes (try: openssl rand -hex 32)"
                        ),
                    );
                }
            }
            Err(p) => problems.push(p),
        }

        if self.matrix.homeserver.is_empty() || self.matrix.homeserver.contains(['/', '@', ' ']) {
            push(
                &mut problems,
                "matrix.homeserver",
                "must be the server name, e.g. example.org".into(),
            );
        }
        if !matches!(self.matrix.endpoint.scheme(), "http" | "https") {
            push(
                &mut problems,
                "matrix.endpoint",
                "must be an http(s) URL".into(),
            );
        }
        match secret_from(
            "matrix.secret",
            &self.matrix.secret,
            &self.matrix.secret_file,
        ) {
            Ok(secret) if secret.len() < MIN_SECRET_BYTES => problems.push(Problem {
                key: "matrix.secret".into(),
                message: format!(
                    "must be at least {MIN_SECRET_BYTES} bytes (try: openssl rand -hex 32)"
                ),
            }),
            Ok(_) => {}
            Err(p) => problems.push(p),
        }
        if self.matrix.timeout_seconds == 0 {
            push(
                &mut problems,
                "matrix.timeout_seconds",
                "must be at least 1".into(),
            );
        }

        let up = &self.upstream;
        if up.issuer.scheme() != "https" && !is_loopback_host(&up.issuer) {
            push(
                &mut problems,
                "upstream.issuer",
                "must be https unless it is a loopback address".into(),
            );
        }
        if up.client_id.is_empty() {
            push(
                &mut problems,
                "upstream.client_id",
                "must not be empty".into(),
            );
        }
        let id = up.upstream_id();
        if id.is_empty() || id.len() > 255 || id.chars().any(char::is_control) {
            push(
                &mut problems,
                "upstream.id",
                "must be 1 to 255 characters without control characters".into(),
            );
        }
        if up.jwks_refresh_seconds == 0 {
            push(
                &mut problems,
                "upstream.jwks_refresh_seconds",
                "must be at least 1".into(),
            );
        }
        if up.timeout_seconds == 0 {
            push(
                &mut problems,
                "upstream.timeout_seconds",
                "must be at least 1".into(),
            );
        }
        if up.allowed_algorithms.is_empty() {
            push(
                &mut problems,
                "upstream.allowed_algorithms",
                "must name at least one algorithm".into(),
            );
        }
        for alg in &up.allowed_algorithms {
            match alg.parse::<jsonwebtoken::Algorithm>() {
                Ok(a) if is_symmetric(a) => push(&mut problems,
                    "upstream.allowed_algorithms",
                    format!("{alg} is symmetric: mxidp verifies ID tokens with the IdP's public keys only"),
                ),
                Ok(_) => {}
                Err(_) => push(&mut problems, "upstream.allowed_algorithms", format!("unknown or forbidden algorithm {alg:?}")),
            }
        }
        if up.scopes.iter().any(|s| s.contains(' ') || s.is_empty()) {
            push(
                &mut problems,
                "upstream.scopes",
                "each scope is one non-empty word".into(),
            );
        }
        if up.auth_method == crate::upstream::ClientAuthMethod::PrivateKeyJwt {
            if let Err(p) = self.client_key() {
                problems.push(p);
            }
        }
        let secret = secret_from(
            "upstream.client_secret",
            &up.client_secret,
            &up.client_secret_file,
        );
        match secret {
            // No secret is needed with a key.
            Err(_) if up.auth_method == crate::upstream::ClientAuthMethod::PrivateKeyJwt => {}
            Ok(s) if s.is_empty() => problems.push(Problem {
                key: "upstream.client_secret".into(),
                message: "must not be empty".into(),
            }),
            Ok(_) => {}
            Err(p) => problems.push(p),
        }

        if let Err(e) = crate::identity::LocalpartTemplate::parse(&self.mapping.localpart_template)
        {
            push(&mut problems, "mapping.localpart_template", e.to_string());
        }
        if let Some(t) = &self.mapping.displayname_template {
            if let Err(e) = crate::identity::LocalpartTemplate::parse(t) {
                push(&mut problems, "mapping.displayname_template", e.to_string());
            }
        }
        for (key, rule) in [
            ("policy.access", &self.policy.access),
            ("policy.admin", &self.policy.admin),
        ] {
            if let Some(rule) = rule {
                if rule.claim.is_empty() || rule.value.is_empty() {
                    push(
                        &mut problems,
                        key,
                        "claim and value must both be set".into(),
                    );
                }
            }
        }
        let s = &self.sessions;
        if s.authorization_code_seconds == 0 || s.authorization_code_seconds > 600 {
            push(
                &mut problems,
                "sessions.authorization_code_seconds",
                "must be between 1 and 600 (RFC 6749 §4.1.2 recommends at most 10 minutes)".into(),
            );
        }
        let e = &self.events;
        if e.retry_initial_seconds == 0 || e.retry_initial_seconds > e.retry_max_seconds {
            push(
                &mut problems,
                "events.retry_initial_seconds",
                "must be at least 1 and at most events.retry_max_seconds".into(),
            );
        }
        if e.max_age_seconds < e.retry_max_seconds {
            push(
                &mut problems,
                "events.max_age_seconds",
                "must be at least events.retry_max_seconds".into(),
            );
        }
        for (key, t) in [
            ("events.ssf", &e.ssf),
            ("events.global_token_revocation", &e.global_token_revocation),
        ] {
            if let Some(t) = t {
                if t.issuer.is_empty() {
                    push(
                        &mut problems,
                        &format!("{key}.issuer"),
                        "must not be empty".into(),
                    );
                }
                if t.jwks_uri.scheme() != "https" && !is_loopback_host(&t.jwks_uri) {
                    push(
                        &mut problems,
                        &format!("{key}.jwks_uri"),
                        "must be https unless it is a loopback address".into(),
                    );
                }
            }
        }
        if self
            .upstream
            .revalidation
            .is_some_and(|r| r != Revalidation::Session)
            && self.upstream.revalidation_cache_seconds == 0
        {
            push(
                &mut problems,
                "upstream.revalidation_cache_seconds",
                "must be at least 1 when revalidation is not \"session\"".into(),
            );
        }
        if self.limits.window_seconds == 0 {
            push(
                &mut problems,
                "limits.window_seconds",
                "must be at least 1".into(),
            );
        }
        let r = &self.reconciliation;
        // Checked unless switched off: an adapter may turn it on by default.
        if r.enabled != Some(false)
            && (r.interval_seconds < 60 || r.batch_size == 0 || r.max_requests_per_second == 0)
        {
            push(
                &mut problems,
                "reconciliation",
                "interval_seconds must be at least 60, batch_size and max_requests_per_second at least 1".into(),
            );
        }
        if s.device_code_seconds == 0 || s.device_code_seconds > 1800 {
            push(
                &mut problems,
                "sessions.device_code_seconds",
                "must be between 1 and 1800".into(),
            );
        }
        if s.pending_authorization_seconds < 60 {
            push(
                &mut problems,
                "sessions.pending_authorization_seconds",
                "must be at least 60".into(),
            );
        }
        self.jwt_shim.check(&self.upstream.issuer, &mut problems);
        for (key, message) in self.branding.problems() {
            push(&mut problems, key, message);
        }
        if self.consent.native_remember_seconds > crate::consent::MAX_NATIVE_REMEMBER_SECONDS {
            push(
                &mut problems,
                "consent.native_remember_seconds",
                format!(
                    "must be at most {}: a native client's identity cannot be verified, so its consent is only remembered for a short while",
                    crate::consent::MAX_NATIVE_REMEMBER_SECONDS
                ),
            );
        }
        problems
    }

    pub fn matrix_secret(&self) -> Result<SecretString, Problem> {
        secret_from(
            "matrix.secret",
            &self.matrix.secret,
            &self.matrix.secret_file,
        )
    }

    pub fn client_secret(&self) -> Result<SecretString, Problem> {
        secret_from(
            "upstream.client_secret",
            &self.upstream.client_secret,
            &self.upstream.client_secret_file,
        )
    }

    /// The `private_key_jwt` key, read from `upstream.client_key_file`.
    pub fn client_key(&self) -> Result<crate::upstream::ClientKey, Problem> {
        let problem = |message: String| Problem {
            key: "upstream.client_key_file".into(),
            message,
        };
        let path = self
            .upstream
            .client_key_file
            .as_ref()
            .ok_or_else(|| problem("required with auth_method = \"private_key_jwt\"".into()))?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| problem(format!("cannot read {}: {e}", path.display())))?;
        crate::upstream::ClientKey::parse(&text, self.upstream.client_key_id.clone())
            .map_err(problem)
    }

    pub fn encryption_key(&self) -> Result<SecretString, Problem> {
        secret_from(
            "database.encryption_key",
            &self.database.encryption_key,
            &self.database.encryption_key_file,
        )
    }

    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream.timeout_seconds)
    }
}

fn push(problems: &mut Vec<Problem>, key: &str, message: String) {
    problems.push(Problem {
        key: key.to_owned(),
        message,
    });
}

fn is_symmetric(alg: jsonwebtoken::Algorithm) -> bool {
    use jsonwebtoken::Algorithm::*;
    matches!(alg, HS256 | HS384 | HS512)
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// An optional secret given inline (`key`) or as a file (`key_file`), never both: what adapters'
/// settings use for their secrets, with the same rules as mxidp's own (docs/architecture.md).
pub fn optional_secret(
    key: &str,
    inline: &Option<SecretString>,
    file: &Option<PathBuf>,
) -> Result<Option<SecretString>, Problem> {
    match (inline, file) {
        (None, None) => Ok(None),
        (Some(s), None) if s.is_empty() => Err(Problem {
            key: key.to_owned(),
            message: "is empty".into(),
        }),
        _ => secret_from(key, inline, file).map(Some),
    }
}

impl Config {
    /// An adapter's typed settings from `[adapters.<name>]` (the defaults when the table is
    /// absent); a problem names the table.
    pub fn adapter_settings<T: serde::de::DeserializeOwned + Default>(
        &self,
        name: &str,
    ) -> Result<T, Problem> {
        match self.adapters.get(name) {
            None => Ok(T::default()),
            Some(table) => serde_json::from_value(table.clone()).map_err(|e| Problem {
                key: format!("adapters.{name}"),
                message: e.to_string(),
            }),
        }
    }
}

/// A secret given either inline or as a file (trailing newline removed), never both.
fn secret_from(
    key: &str,
    inline: &Option<SecretString>,
    file: &Option<PathBuf>,
) -> Result<SecretString, Problem> {
    let problem = |message: String| Problem {
        key: key.to_owned(),
        message,
    };
    match (inline, file) {
        (Some(_), Some(_)) => Err(problem(format!("set either {key} or {key}_file, not both"))),
        (Some(s), None) => Ok(s.clone()),
        // Surrounding whitespace is removed, as Synapse does with its secret_path.
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(content) => Ok(SecretString::new(content.trim())),
            Err(e) => Err(problem(format!("cannot read {}: {e}", path.display()))),
        },
        (None, None) => Err(problem(format!("missing: set {key} or {key}_file"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[http]
public_base = "https://auth.example.org/"
[database]
encryption_key = "0123456789abcdef0123456789abcdef"
[matrix]
homeserver = "example.org"
endpoint = "http://synapse:8008/"
secret = "0123456789abcdef0123456789abcdef"
[upstream]
issuer = "https://idp.example.org/realms/matrix"
client_id = "mxidp"
client_secret = "s3cret"
"#;

    fn parse(toml: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        Config::load(Some(&path)).unwrap()
    }

    #[test]
    fn a_complete_config_has_no_problems() {
        let c = parse(GOOD);
        assert_eq!(c.check(), vec![]);
        assert_eq!(c.upstream.scopes, vec!["openid", "profile", "email"]);
    }

    #[test]
    fn each_problem_names_its_key() {
        let bad = GOOD
            .replace("https://auth.example.org/", "http://auth.example.org")
            .replace(
                "secret = \"0123456789abcdef0123456789abcdef\"",
                "secret = \"short\"",
            );
        let keys: Vec<String> = parse(&bad).check().into_iter().map(|p| p.key).collect();
        assert!(keys.contains(&"http.public_base".to_string()), "{keys:?}");
        assert!(keys.contains(&"matrix.secret".to_string()), "{keys:?}");
    }

    #[test]
    fn private_key_jwt_needs_a_readable_key_and_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        // A P-256 key generated for these tests only.
        std::fs::write(
            &key,
            include_str!("../../tests/support/keys/zitadel-app-key-ec-p256.pem"),
        )
        .unwrap();
        let with = |lines: &str| {
            parse(&GOOD.replace(
                "client_secret = \"s3cret\"",
                &format!("auth_method = \"private_key_jwt\"\n{lines}"),
            ))
        };
        let c = with(&format!(
            "client_key_file = {:?}",
            key.display().to_string()
        ));
        assert_eq!(c.check(), vec![]);
        assert!(c.client_key().is_ok());
        let keys = |c: Config| -> Vec<String> { c.check().into_iter().map(|p| p.key).collect() };
        assert_eq!(keys(with("")), vec!["upstream.client_key_file"]);
        let missing = dir.path().join("nothing.pem");
        assert_eq!(
            keys(with(&format!(
                "client_key_file = {:?}",
                missing.display().to_string()
            ))),
            vec!["upstream.client_key_file"]
        );
        // Without the method, a secret is still required.
        assert_eq!(
            keys(parse(&GOOD.replace("client_secret = \"s3cret\"", ""))),
            vec!["upstream.client_secret"]
        );
    }

    #[test]
    fn reconciliation_follows_the_adapter_unless_set() {
        struct Eager;
        impl crate::provider::Provider for Eager {
            fn default_reconciliation(&self) -> bool {
                true
            }
        }
        let generic = crate::provider::GenericOidc;
        let unset = parse(GOOD).reconciliation;
        assert_eq!(unset.enabled, None);
        assert!(!unset.is_enabled(&generic));
        assert!(unset.is_enabled(&Eager));
        let off = parse(&format!("{GOOD}\n[reconciliation]\nenabled = false\n")).reconciliation;
        assert!(!off.is_enabled(&Eager));
        let on = parse(&format!("{GOOD}\n[reconciliation]\nenabled = true\n")).reconciliation;
        assert!(on.is_enabled(&generic));
    }

    #[test]
    fn revalidation_modes() {
        assert_eq!(parse(GOOD).upstream.revalidation, None);
        let with = |extra: &str| {
            parse(&GOOD.replace(
                "client_secret = \"s3cret\"",
                &format!("client_secret = \"s3cret\"\n{extra}"),
            ))
        };
        let on = with("revalidation = \"introspect\"");
        assert_eq!(on.upstream.revalidation, Some(Revalidation::Introspect));
        assert_eq!(on.upstream.revalidation_cache_seconds, 60);
        assert_eq!(on.check(), vec![]);
        let keys: Vec<String> =
            with("revalidation = \"introspect\"\nrevalidation_cache_seconds = 0")
                .check()
                .into_iter()
                .map(|p| p.key)
                .collect();
        assert_eq!(keys, vec!["upstream.revalidation_cache_seconds"]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            GOOD.replace(
                "client_secret = \"s3cret\"",
                "client_secret = \"s3cret\"\nrevalidation = \"sometimes\"",
            ),
        )
        .unwrap();
        assert!(Config::load(Some(&path)).is_err());
    }

    #[test]
    fn symmetric_algorithms_are_refused() {
        let bad = GOOD.replace(
            "client_secret = \"s3cret\"",
            "client_secret = \"s3cret\"\nallowed_algorithms = [\"HS256\"]",
        );
        let problems = parse(&bad).check();
        assert!(
            problems
                .iter()
                .any(|p| p.key == "upstream.allowed_algorithms"),
            "{problems:?}"
        );
    }

    #[test]
    fn secrets_come_from_files_and_not_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "abcdefghijabcdefghijabcdefghij0123\n").unwrap();
        let with_file = GOOD.replace(
            "secret = \"0123456789abcdef0123456789abcdef\"\n[upstream]",
            &format!("secret_file = \"{}\"\n[upstream]", file.display()),
        );
        let c = parse(&with_file);
        assert_eq!(c.check(), vec![]);
        assert_eq!(
            c.matrix_secret().unwrap().expose(),
            "abcdefghijabcdefghijabcdefghij0123"
        );

        let both = GOOD.replace(
            "[upstream]",
            &format!("secret_file = \"{}\"\n[upstream]", file.display()),
        );
        assert!(parse(&both)
            .check()
            .iter()
            .any(|p| p.key == "matrix.secret" && p.message.contains("not both")));
    }

    #[test]
    fn environment_overrides_keep_strings_as_written_and_convert_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, GOOD).unwrap();
        let env = [
            ("MXIDP__UPSTREAM__CLIENT_ID", "00123"),
            ("MXIDP__UPSTREAM__CLIENT_SECRET", "0123456789"),
            ("MXIDP__MATRIX__TIMEOUT_SECONDS", "7"),
            ("MXIDP__UPSTREAM__FETCH_USERINFO", "true"),
            ("MXIDP__UPSTREAM__SCOPES", "openid groups"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let c = Config::load_with_env(Some(&path), Some(env)).unwrap();
        assert_eq!(c.upstream.client_id, "00123");
        assert_eq!(c.client_secret().unwrap().expose(), "0123456789");
        assert_eq!(c.matrix.timeout_seconds, 7);
        assert_eq!(
            c.upstream.fetch_userinfo,
            crate::upstream::UserinfoMode::Always
        );
        assert_eq!(c.upstream.scopes, vec!["openid", "groups"]);
    }

    #[test]
    fn database_passwords_never_reach_a_log() {
        let mut c = DatabaseConfig {
            url: "postgres://mxidp:s3cret@db.example:5432/mxidp".into(),
            ..DatabaseConfig::default()
        };
        assert_eq!(
            c.url_for_log(),
            "postgres://mxidp:redacted@db.example:5432/mxidp"
        );
        c.url = "sqlite://mxidp.db".into();
        assert_eq!(c.url_for_log(), "sqlite://mxidp.db");
    }

    #[test]
    fn unknown_keys_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            GOOD.replace("[matrix]", "[matrix]\nsecert = \"typo\""),
        )
        .unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("secert"), "{err}");
    }
}

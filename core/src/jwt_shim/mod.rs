//! The JWT-to-introspection shim (docs/jwt-shim.md): bots, bridges and automation jobs present
//! the IdP's own JWT access tokens (client-credentials grants, or user tokens that carry the
//! Matrix scopes) to Synapse, and introspection answers for them as for mxidp's own tokens.
//!
//! A token is verified with the one JWT verifier (`crate::jwt`): the issuer's keys as held now
//! (an unknown `kid` starts a background fetch; the answer never waits on the network), `iss`
//! exact, a configured audience, `exp`/`nbf`/`iat` with leeway, a bounded lifetime. Then it is
//! mapped: a configured service account (provisioned in the homeserver ahead of time), or a
//! user mxidp already links to a Matrix account, whose device is created at first sight.
//! Verdicts are kept until the token expires; the user's status is checked on every answer.

mod accounts;
mod claims;
mod first_use;
pub mod settings;
mod subjects;
#[cfg(test)]
mod tests;
mod verdicts;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use url::Url;

use crate::app::AppState;
use crate::cache::{ActiveToken, JwtGrant};
use crate::ids::{DeviceId, Localpart, TokenHash};
use crate::jwt::{check_claims, JwtRules, TokenError};
use crate::store::StoreError;
use crate::upstream::{JwksCache, ParsedJws};

pub use accounts::spawn_service_accounts;
pub use settings::ShimConfig;
pub use subjects::SubjectRules;
use verdicts::{Holder, Verdict, Verdicts};

/// The `client_id` prefix of the sessions the shim creates, so that they are told apart from
/// sessions of registered Matrix clients (`jwt:<the IdP's client id>`).
pub const SESSION_CLIENT_PREFIX: &str = "jwt:";

pub struct JwtShim {
    issuers: Vec<Issuer>,
    verdicts: Verdicts,
    device_timeout: Duration,
    recheck: Duration,
    http: ShimHttp,
    first_use: first_use::FirstUseAudit,
}

/// How the shim fetches other issuers' discovery documents and keys: the upstream's settings.
struct ShimHttp {
    client: reqwest::Client,
    timeout: Duration,
    jwks_cooldown: Duration,
    jwks_refresh: Duration,
}

/// One trusted issuer, its keys and its mapping rules.
struct Issuer {
    /// The exact `iss`; `None`: the upstream's, as discovered.
    issuer: Option<String>,
    /// The upstream IdP: its keys are the upstream's, its users are mxidp's users.
    is_upstream: bool,
    /// Where service-account identities and sessions of this issuer are kept, apart from the
    /// upstream's users: `jwt-client:<issuer without scheme>`.
    namespace: String,
    jwks_uri: Option<Url>,
    /// Keys of an issuer other than the upstream, once known.
    keys: RwLock<Option<JwksCache>>,
    algorithms: Vec<Algorithm>,
    audiences: Vec<String>,
    max_lifetime: i64,
    leeway: i64,
    types: Vec<Option<&'static str>>,
    user_tokens: bool,
    user_admin_scope: bool,
    accounts: Vec<ServiceAccount>,
}

struct ServiceAccount {
    /// `client_id "…"` or `subject "…"`, for logs and errors.
    label: String,
    client_id: Option<String>,
    subject: Option<String>,
    localpart: Localpart,
    admin: bool,
    display_name: Option<String>,
    device: DeviceId,
    enabled: bool,
    adopt_existing_user: bool,
    /// Set once the user, the device and the session exist.
    ready: AtomicBool,
    session_id: RwLock<String>,
}

impl ServiceAccount {
    /// The subject of the account's identity in its issuer's namespace.
    fn identity_subject(&self) -> String {
        match (&self.client_id, &self.subject) {
            (Some(client), _) => format!("client:{client}"),
            (None, Some(subject)) => format!("sub:{subject}"),
            (None, None) => String::new(),
        }
    }

    fn matches(&self, client: Option<&str>, subject: Option<&str>) -> bool {
        match (&self.client_id, &self.subject) {
            (Some(expected), _) => client == Some(expected.as_str()),
            (None, Some(expected)) => subject == Some(expected.as_str()),
            (None, None) => false,
        }
    }

    fn is_ready(&self) -> bool {
        self.enabled && self.ready.load(Ordering::Acquire)
    }
}

/// Why a token was refused: logged at debug level (never the token), answered `active: false`.
type Refusal = String;

/// The error that is not the token's fault: the store or the homeserver failed.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the homeserver could not create the token's device: {0}")]
    Homeserver(String),
}

impl JwtShim {
    /// The shim for `[jwt_shim]` (checked already), or `None` when it is off.
    pub fn from_config(config: &crate::config::Config) -> Result<Option<Self>, String> {
        let shim = &config.jwt_shim;
        if !shim.enabled {
            return Ok(None);
        }
        let up = &config.upstream;
        let timeout = Duration::from_secs(up.timeout_seconds);
        let http = ShimHttp {
            client: crate::outbound::client(timeout).map_err(|e| e.to_string())?,
            timeout,
            jwks_cooldown: Duration::from_secs(up.jwks_refetch_cooldown_seconds),
            jwks_refresh: Duration::from_secs(up.jwks_refresh_seconds),
        };
        let upstream = &config.upstream.issuer;
        let issuers = shim
            .issuers
            .iter()
            .map(|c| {
                let is_upstream = c
                    .issuer
                    .as_deref()
                    .is_none_or(|i| settings::same_issuer(i, upstream));
                let url = c.issuer.clone().unwrap_or_else(|| upstream.to_string());
                let mut types = vec![Some("at+jwt"), Some("jwt")];
                if c.accept_untyped {
                    types.push(None);
                }
                let namespace = url
                    .split_once("://")
                    .map_or(url.as_str(), |(_, rest)| rest)
                    .trim_end_matches('/');
                Issuer {
                    issuer: c.issuer.clone(),
                    is_upstream,
                    namespace: format!("jwt-client:{namespace}"),
                    jwks_uri: c.jwks_uri.clone(),
                    keys: RwLock::new(None),
                    algorithms: c
                        .algorithms
                        .iter()
                        .filter_map(|a| settings::parse_algorithm(a))
                        .collect(),
                    audiences: c.audiences.clone(),
                    max_lifetime: c.max_lifetime_seconds as i64,
                    leeway: c.leeway_seconds as i64,
                    types,
                    user_tokens: c.user_tokens,
                    user_admin_scope: c.user_admin_scope,
                    accounts: c
                        .service_accounts
                        .iter()
                        .map(|a| ServiceAccount {
                            label: a.describe(),
                            client_id: a.client_id.clone().filter(|c| !c.is_empty()),
                            subject: a.subject.clone().filter(|s| !s.is_empty()),
                            localpart: Localpart::parse(&a.localpart)
                                .expect("checked by Config::check"),
                            admin: a.admin,
                            display_name: a.display_name.clone(),
                            device: match &a.device_id {
                                Some(d) => DeviceId::parse(d).expect("checked by Config::check"),
                                None => accounts::derived_device_id(namespace, &a.describe()),
                            },
                            enabled: a.enabled,
                            adopt_existing_user: a.adopt_existing_user,
                            ready: AtomicBool::new(false),
                            session_id: RwLock::new(String::new()),
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(Some(Self {
            issuers,
            verdicts: Verdicts::new(shim.cache_entries),
            device_timeout: Duration::from_millis(shim.device_timeout_ms),
            recheck: Duration::from_secs(shim.recheck_seconds),
            http,
            first_use: first_use::FirstUseAudit::new(),
        }))
    }

    /// Whether a token is for the shim at all: a compact JWS (three segments) or JWE (five,
    /// refused later), which mxidp's own tokens never are.
    pub fn takes(token: &str) -> bool {
        matches!(token.bytes().filter(|b| *b == b'.').count(), 2 | 4)
    }

    /// Cached verdicts (for diagnostics and tests).
    pub fn cached_verdicts(&self) -> usize {
        self.verdicts.len()
    }

    /// The introspection answer for an IdP-issued JWT, `None` when it is not active.
    pub async fn introspect(
        &self,
        app: &AppState,
        token: &str,
        now: i64,
    ) -> Result<Option<Arc<ActiveToken>>, ShimError> {
        let hash = TokenHash::of(token);
        if let Some(verdict) = self.verdicts.get(&hash, now) {
            return Ok(self
                .still_active(app, &verdict)
                .then(|| verdict.active.clone()));
        }
        match self.first_sight(app, token, now).await? {
            Ok(verdict) => {
                metrics::counter!("mxidp_jwt_shim_first_sight_total", "outcome" => "accepted")
                    .increment(1);
                let active = verdict.active.clone();
                self.verdicts.insert(hash, verdict, now);
                Ok(Some(active))
            }
            Err(refusal) => {
                metrics::counter!("mxidp_jwt_shim_first_sight_total", "outcome" => "refused")
                    .increment(1);
                tracing::debug!(reason = %refusal, "JWT refused at introspection");
                Ok(None)
            }
        }
    }

    /// What may have changed since the verdict: the user's status, the account's readiness.
    fn still_active(&self, app: &AppState, verdict: &Verdict) -> bool {
        match &verdict.holder {
            Holder::Account(i, j) => self.issuers[*i].accounts[*j].is_ready(),
            Holder::User { subject, issued_at } => app.subject_tokens.allows(subject, *issued_at),
        }
    }

    async fn first_sight(
        &self,
        app: &AppState,
        token: &str,
        now: i64,
    ) -> Result<Result<Verdict, Refusal>, ShimError> {
        let (index, claims) = match self.verify(app, token, now) {
            Ok(verified) => verified,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let issuer = &self.issuers[index];
        let client = claims::client_id(&claims);
        let subject = claims::subject(&claims);
        // `check_claims` required both.
        let issued_at = claims.get("iat").and_then(Value::as_i64).unwrap_or(now);
        let expires_at = claims.get("exp").and_then(Value::as_i64).unwrap_or(now);
        if let Some(j) = issuer
            .accounts
            .iter()
            .position(|a| a.matches(client, subject))
        {
            let account = &issuer.accounts[j];
            if !account.enabled {
                return Ok(Err(format!(
                    "service account {} is disabled in the configuration",
                    account.localpart
                )));
            }
            if !account.is_ready() {
                return Ok(Err(format!(
                    "service account {} is not provisioned in the homeserver yet",
                    account.localpart
                )));
            }
            let session_id = account
                .session_id
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let active = ActiveToken::for_jwt(
                JwtGrant {
                    session_id: &session_id,
                    subject: subject.unwrap_or_default(),
                    localpart: account.localpart.as_str(),
                    client_id: client.unwrap_or_default(),
                    device_id: &account.device,
                    admin: account.admin,
                },
                issued_at,
                expires_at,
            );
            accounts::audit_first_use(app, issuer, account, &claims).await;
            return Ok(Ok(Verdict {
                active: Arc::new(active),
                holder: Holder::Account(index, j),
                expires_at,
            }));
        }
        if !issuer.user_tokens {
            return Ok(Err(format!(
                "client {client:?} is not a configured service account and user tokens are off"
            )));
        }
        let Some(grant) = claims::native_grant(&claims::scopes(&claims)) else {
            return Ok(Err(
                "a user token without the Matrix API scope and one device scope".into(),
            ));
        };
        let Some(subject) = subject else {
            return Ok(Err("the token has no `sub`".into()));
        };
        accounts::user_token(
            app,
            self,
            accounts::UserToken {
                subject,
                client: client.unwrap_or_default(),
                device: &grant.device,
                admin: grant.admin && issuer.user_admin_scope,
                issued_at,
                expires_at,
            },
        )
        .await
    }

    /// The signature and the registered claims, with the issuer's keys as held now. Returns
    /// the issuer's index and the verified claims.
    fn verify(
        &self,
        app: &AppState,
        token: &str,
        now: i64,
    ) -> Result<(usize, Map<String, Value>), Refusal> {
        // Every issuer's algorithms are checked again below; this only parses the header.
        const ANY: &[Algorithm] = &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ];
        let parsed = ParsedJws::parse(token, ANY).map_err(|e| TokenError::from(e).to_string())?;
        // The unverified `iss` only picks whose keys to try; the verified one is checked again.
        let untrusted = parsed
            .untrusted_claims()
            .map_err(|e| TokenError::from(e).to_string())?;
        let iss = untrusted.get("iss").and_then(Value::as_str).unwrap_or("");
        let upstream = app.upstream.get();
        let upstream_issuer = upstream.as_ref().map(|u| u.metadata().issuer.as_str());
        let Some(index) = self
            .issuers
            .iter()
            .position(|i| i.issuer.as_deref().or(upstream_issuer) == Some(iss))
        else {
            return Err(format!("issuer {iss:?} is not trusted"));
        };
        let issuer = &self.issuers[index];
        if !issuer.algorithms.contains(&parsed.alg) {
            return Err(format!(
                "algorithm {:?} is not allowed for {iss}",
                parsed.alg
            ));
        }
        let keys = issuer
            .keys(app)
            .ok_or("the issuer's keys are not loaded yet")?;
        let key = keys
            .key_now(parsed.kid(), parsed.alg)
            .ok_or_else(|| format!("no key of {iss} matches kid {:?}", parsed.kid()))?;
        let verified = parsed
            .verify(key.key())
            .map_err(|e| TokenError::from(e).to_string())?;
        let rules = JwtRules {
            types: &issuer.types,
            issuer: iss,
            audiences: &issuer.audiences,
            require_jti: false,
            authorized_party: None,
            require_iat: true,
            require_exp: true,
            max_age_without_exp: None,
            leeway: issuer.leeway,
            now,
        };
        let checked =
            check_claims(&verified.header, verified.claims, &rules).map_err(|e| e.to_string())?;
        let iat = checked.iat.unwrap_or(now);
        let exp = checked
            .claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or("`exp` is not an integer")?;
        if exp.saturating_sub(iat) > issuer.max_lifetime {
            return Err(format!(
                "the token is valid for {} s, more than max_lifetime_seconds ({})",
                exp.saturating_sub(iat),
                issuer.max_lifetime
            ));
        }
        Ok((index, checked.claims))
    }
}

impl Issuer {
    /// For logs and audit records.
    fn name(&self) -> &str {
        self.issuer.as_deref().unwrap_or("the upstream issuer")
    }

    /// The keys that verify this issuer's tokens: the upstream's once discovered, else the
    /// issuer's own once known.
    fn keys(&self, app: &AppState) -> Option<JwksCache> {
        if self.is_upstream && self.jwks_uri.is_none() {
            return app.upstream.get().map(|u| u.jwks().clone());
        }
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

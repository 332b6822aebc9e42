//! The receivers' own key material: the configured event transmitters (Shared Signals, global
//! token revocation) with their key caches, and the algorithm allow-list.

use std::time::Duration;

use jsonwebtoken::Algorithm;

use crate::config::{Config, TransmitterConfig};
use crate::upstream::{JwksCache, Upstream};

/// A configured party that signs events for mxidp, with its key cache.
pub struct Transmitter {
    /// The `iss` its tokens carry, compared exactly.
    pub issuer: String,
    /// The `aud` expected instead of the receiver's default.
    pub audience: Option<String>,
    /// Keys from the configured `jwks_uri` only; fetched on first use.
    pub jwks: JwksCache,
    /// Oldest `iat` accepted on a token without `exp`, in seconds.
    pub max_age: i64,
}

/// The receivers' own key material, built from `[events]` at start. Lives in
/// `AppState::receivers`.
pub struct ReceiverKeys {
    pub ssf: Option<Transmitter>,
    pub global_token_revocation: Option<Transmitter>,
    /// The signature algorithms from `[upstream] allowed_algorithms`, for when the upstream
    /// client is not discovered yet (it carries the same list).
    pub allowed_algorithms: Vec<Algorithm>,
    pub leeway: Duration,
    /// How many refusals each receiver records per client address and minute.
    pub refusals: super::RefusalBudgets,
}

impl ReceiverKeys {
    /// No transmitter configured.
    pub fn none() -> Self {
        Self {
            ssf: None,
            global_token_revocation: None,
            allowed_algorithms: Vec::new(),
            leeway: Duration::from_secs(30),
            refusals: Default::default(),
        }
    }

    pub fn from_config(config: &Config) -> Result<Self, crate::outbound::OutboundError> {
        let timeout = config.upstream_timeout();
        let http = crate::outbound::client(timeout)?;
        let cooldown = Duration::from_secs(config.upstream.jwks_refetch_cooldown_seconds);
        let transmitter = |t: &TransmitterConfig| Transmitter {
            issuer: t.issuer.clone(),
            audience: t.audience.clone(),
            jwks: JwksCache::new(http.clone(), t.jwks_uri.clone(), timeout, cooldown)
                .with_refresh_every(Duration::from_secs(config.upstream.jwks_refresh_seconds)),
            max_age: i64::try_from(t.max_age_seconds).unwrap_or(i64::MAX),
        };
        Ok(Self {
            ssf: config.events.ssf.as_ref().map(transmitter),
            global_token_revocation: config
                .events
                .global_token_revocation
                .as_ref()
                .map(transmitter),
            allowed_algorithms: config
                .upstream
                .allowed_algorithms
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            leeway: Duration::from_secs(config.upstream.leeway_seconds),
            refusals: Default::default(),
        })
    }

    /// The algorithm allow-list: the upstream client's when it is discovered, else the same
    /// list from the configuration. HMAC is refused by `verify_jws` whatever the list says.
    pub(crate) fn algorithms(&self, upstream: Option<&Upstream>) -> Vec<Algorithm> {
        match upstream {
            Some(upstream) => upstream.settings().allowed_algorithms.clone(),
            None => self.allowed_algorithms.clone(),
        }
    }
}

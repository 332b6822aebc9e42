//! The IdP's signing keys (RFC 7517 JWK Set at `jwks_uri`), cached.
//!
//! docs/jwt-shim.md: keys are looked up by `kid`; an unknown `kid` triggers a refetch (the IdP may
//! have rotated its keys), but at most once per cooldown and single-flight, so a flood of
//! tokens with made-up `kid`s cannot turn mxidp into an amplifier against the IdP. A failed
//! fetch keeps the last good set: an IdP hiccup must not log everybody out. Keys are only ever
//! taken from the configured `jwks_uri`; `jku`, `x5u` and `jwk` token headers are ignored.
//!
//! The set is also refreshed on a schedule, so that a key the IdP removed (rotated out,
//! compromised) stops verifying: after `Cache-Control: max-age` of the last answer, bounded
//! by [`MIN_REFRESH`] and the configured interval (one hour by default), the next verification
//! fetches the set again first. A failed refresh keeps the last good set and tries again after
//! the cooldown.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use url::Url;

use super::http::{read_limited, transport};
use super::id_token::IdTokenError;
use super::UpstreamError;

/// Which verification algorithms a key can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyFamily {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyFamily {
    fn serves(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyFamily::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyFamily::P256 => alg == ES256,
            KeyFamily::P384 => alg == ES384,
            KeyFamily::Ed25519 => alg == EdDSA,
        }
    }
}

/// One usable public signing key of the IdP.
#[derive(Clone)]
struct SigningKey {
    kid: Option<String>,
    /// The JWK's `alg`, when it pins one (RFC 7517 §4.4).
    alg: Option<Algorithm>,
    family: KeyFamily,
    key: DecodingKey,
}

impl SigningKey {
    fn serves(&self, alg: Algorithm) -> bool {
        self.family.serves(alg) && self.alg.is_none_or(|pinned| pinned == alg)
    }
}

#[derive(Default)]
struct KeySet {
    keys: Vec<SigningKey>,
    /// Incremented on every successful fetch; lets a waiter see that someone else refreshed.
    generation: u64,
    /// When the set must be fetched again before it is used (`None`: never fetched).
    fresh_until: Option<Instant>,
}

impl KeySet {
    fn is_stale(&self, now: Instant) -> bool {
        self.fresh_until.is_some_and(|until| now >= until)
    }
}

/// The shortest interval between scheduled refreshes, whatever `Cache-Control` says (unless the
/// configured interval is shorter still).
pub const MIN_REFRESH: Duration = Duration::from_secs(60);
/// The configured interval when none is given.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);

/// A verification key chosen for one token.
pub struct VerificationKey {
    pub(crate) key: DecodingKey,
    pub(crate) kid: Option<String>,
}

impl VerificationKey {
    pub fn key(&self) -> &DecodingKey {
        &self.key
    }

    /// The `kid` of the JWK the key came from.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }
}

/// Cache of the IdP's JWK Set. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct JwksCache {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    jwks_uri: Url,
    timeout: Duration,
    cooldown: Duration,
    /// The longest a fetched set is used before it is fetched again.
    refresh_every: Duration,
    keys: RwLock<KeySet>,
    /// Held for the whole of a fetch: concurrent misses wait here and share one fetch.
    /// The value is when the last fetch (successful or not) started.
    fetch: tokio::sync::Mutex<Option<Instant>>,
    /// When [`JwksCache::key_now`] last started a background fetch: a flood of tokens with
    /// made-up `kid`s starts at most one per cooldown.
    background: std::sync::Mutex<Option<Instant>>,
}

impl JwksCache {
    pub fn new(
        http: reqwest::Client,
        jwks_uri: Url,
        timeout: Duration,
        cooldown: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                jwks_uri,
                timeout,
                cooldown,
                refresh_every: DEFAULT_REFRESH,
                keys: RwLock::new(KeySet::default()),
                fetch: tokio::sync::Mutex::new(None),
                background: std::sync::Mutex::new(None),
            }),
        }
    }

    /// The same cache with another scheduled-refresh interval (`upstream.jwks_refresh_seconds`).
    /// Only before the cache is shared.
    pub fn with_refresh_every(mut self, every: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.refresh_every = every.max(Duration::from_secs(1));
        }
        self
    }

    /// Loads a JWK Set document as if it had been fetched, fresh for the refresh interval: for
    /// fuzzing the verifier with no network.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn preload(&self, document: &[u8]) -> Result<(), UpstreamError> {
        self.store(parse_jwk_set(document)?, None);
        Ok(())
    }

    /// The key to verify a token signed with `alg` and naming `kid`.
    ///
    /// Without a `kid`, the key is used only if it is the one key of the set that can verify
    /// `alg`: guessing among several would let the choice depend on key order.
    pub async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<VerificationKey, IdTokenError> {
        let (generation, stale) = {
            let set = self.read();
            let stale = set.is_stale(Instant::now());
            if !stale {
                if let Some(found) = select(&set.keys, kid, alg) {
                    return Ok(found);
                }
            }
            (set.generation, stale)
        };
        if stale {
            self.refresh_stale().await;
        } else {
            self.refresh(generation).await?;
        }
        select(&self.read().keys, kid, alg).ok_or_else(|| IdTokenError::UnknownKey {
            kid: kid.map(str::to_owned),
        })
    }

    /// The key for `kid` and `alg` from the set held now, without waiting: for the JWT shim,
    /// whose introspection answer never waits on the network. A miss, or a set due for its
    /// scheduled refresh, starts one fetch in the background (at most one per cooldown), so a
    /// key the IdP has just published verifies a moment later.
    pub fn key_now(&self, kid: Option<&str>, alg: Algorithm) -> Option<VerificationKey> {
        let (found, generation, stale) = {
            let set = self.read();
            let stale = set.is_stale(Instant::now());
            (select(&set.keys, kid, alg), set.generation, stale)
        };
        if stale || found.is_none() {
            self.refresh_in_background(generation, stale);
        }
        found
    }

    fn refresh_in_background(&self, generation: u64, stale: bool) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut last = self
                .inner
                .background
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < self.inner.cooldown) {
                return;
            }
            *last = Some(Instant::now());
        }
        let cache = self.clone();
        runtime.spawn(async move {
            if stale {
                cache.refresh_stale().await;
            } else {
                // Errors are logged by `refresh`; the last good set stays.
                let _ = cache.refresh(generation).await;
            }
        });
    }

    /// Fetches the set now unless it was fetched already (at start, so that the first token
    /// needs no fetch). Fails only when there are no keys at all.
    pub async fn load(&self) -> Result<(), IdTokenError> {
        let generation = self.read().generation;
        if generation > 0 {
            return Ok(());
        }
        self.refresh(generation).await
    }

    /// The scheduled refresh: one fetch for all waiters; on failure the last good set stays and
    /// the next try waits for the cooldown.
    async fn refresh_stale(&self) {
        let mut last_fetch = self.inner.fetch.lock().await;
        if !self.read().is_stale(Instant::now()) {
            return;
        }
        *last_fetch = Some(Instant::now());
        match self.fetch().await {
            Ok((keys, max_age)) => self.store(keys, max_age),
            Err(error) => {
                tracing::warn!(jwks_uri = %self.inner.jwks_uri, %error, "scheduled refresh of the signing keys failed; keeping the last good set");
                let mut set = self.write();
                set.fresh_until =
                    Some(Instant::now() + self.inner.cooldown.max(Duration::from_secs(1)));
            }
        }
    }

    /// Replaces the set with a fetched one, fresh for its `max-age` within bounds.
    fn store(&self, keys: Vec<SigningKey>, max_age: Option<Duration>) {
        tracing::info!(jwks_uri = %self.inner.jwks_uri, keys = keys.len(), "fetched the signing keys");
        let every = self.inner.refresh_every;
        let fresh_for = max_age
            .unwrap_or(every)
            .clamp(MIN_REFRESH.min(every), every);
        let mut set = self.write();
        set.keys = keys;
        set.generation += 1;
        set.fresh_until = Some(Instant::now() + fresh_for);
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, KeySet> {
        self.inner
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Refetches the set after a miss seen at `seen_generation`, unless someone else already
    /// did while we waited (single flight) or the cooldown since the last fetch has not passed.
    async fn refresh(&self, seen_generation: u64) -> Result<(), IdTokenError> {
        let mut last_fetch = self.inner.fetch.lock().await;
        if self.read().generation != seen_generation {
            return Ok(());
        }
        if let Some(at) = *last_fetch {
            if at.elapsed() < self.inner.cooldown {
                tracing::debug!(jwks_uri = %self.inner.jwks_uri, "JWKS refetch skipped: inside the cooldown");
                return Ok(());
            }
        }
        *last_fetch = Some(Instant::now());
        match self.fetch().await {
            Ok((keys, max_age)) => {
                self.store(keys, max_age);
                Ok(())
            }
            Err(error) => {
                let have_keys = !self.read().keys.is_empty();
                tracing::warn!(jwks_uri = %self.inner.jwks_uri, %error, kept_last_good = have_keys, "fetching the IdP's signing keys failed");
                if have_keys {
                    Ok(())
                } else {
                    Err(IdTokenError::KeysUnavailable(error.to_string()))
                }
            }
        }
    }

    /// Number of keys currently usable (for diagnostics and tests).
    pub fn len(&self) -> usize {
        self.read().keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeySet> {
        // A panic while holding the lock cannot leave a half-written set (it is replaced whole).
        self.inner
            .keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The key set and how long the IdP says it may be cached (`Cache-Control: max-age`).
    async fn fetch(&self) -> Result<(Vec<SigningKey>, Option<Duration>), UpstreamError> {
        let response = self
            .inner
            .http
            .get(self.inner.jwks_uri.clone())
            .header(
                reqwest::header::ACCEPT,
                "application/json, application/jwk-set+json",
            )
            .timeout(self.inner.timeout)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let max_age = max_age(response.headers());
        let body = read_limited(response).await?;
        if !status.is_success() {
            return Err(UpstreamError::Protocol(format!(
                "JWKS endpoint answered HTTP {status}"
            )));
        }
        Ok((parse_jwk_set(&body)?, max_age))
    }
}

/// `max-age` of a `Cache-Control` header (`no-store` and `no-cache` count as 0).
fn max_age(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::CACHE_CONTROL)?.to_str().ok()?;
    value.split(',').map(str::trim).find_map(|directive| {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        lower
            .strip_prefix("max-age=")
            .and_then(|n| n.trim_matches('"').parse::<u64>().ok())
            .map(Duration::from_secs)
    })
}

fn select(keys: &[SigningKey], kid: Option<&str>, alg: Algorithm) -> Option<VerificationKey> {
    let found = match kid {
        Some(kid) => keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(kid) && k.serves(alg)),
        None => {
            let mut candidates = keys.iter().filter(|k| k.serves(alg));
            match (candidates.next(), candidates.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        }
    }?;
    Some(VerificationKey {
        key: found.key.clone(),
        kid: found.kid.clone(),
    })
}

/// Parses a JWK Set, keeping only public signature keys mxidp can use. Keys are parsed one by
/// one so that one exotic key (an encryption key, an unsupported curve) does not hide the rest.
/// Symmetric (`oct`) keys are dropped: mxidp never verifies with a shared secret.
fn parse_jwk_set(body: &[u8]) -> Result<Vec<SigningKey>, UpstreamError> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::Protocol(format!("JWKS is not JSON: {e}")))?;
    let Some(entries) = doc.get("keys").and_then(Value::as_array) else {
        return Err(UpstreamError::Protocol("JWKS has no `keys` array".into()));
    };
    let mut keys = Vec::new();
    for entry in entries {
        let jwk: Jwk = match serde_json::from_value(entry.clone()) {
            Ok(jwk) => jwk,
            Err(e) => {
                tracing::debug!(error = %e, "skipping a JWK mxidp cannot parse");
                continue;
            }
        };
        if let Some(key) = signing_key(&jwk) {
            keys.push(key);
        }
    }
    Ok(keys)
}

fn signing_key(jwk: &Jwk) -> Option<SigningKey> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption) | Some(PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyFamily::P256,
            EllipticCurve::P384 => KeyFamily::P384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => KeyFamily::Ed25519,
            _ => return None,
        },
        AlgorithmParameters::OctetKey(_) => return None,
    };
    // A pinned `alg` that is not a signature algorithm (RSA-OAEP, ...) marks an encryption key.
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(key_alg) => Some(key_alg.to_string().parse::<Algorithm>().ok()?),
    };
    let key = match DecodingKey::from_jwk(jwk) {
        Ok(key) => key,
        Err(e) => {
            tracing::debug!(kid = ?jwk.common.key_id, error = %e, "skipping an unusable JWK");
            return None;
        }
    };
    let key = SigningKey {
        kid: jwk.common.key_id.clone(),
        alg,
        family,
        key,
    };
    key.alg.is_none_or(|a| family.serves(a)).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::test_idp::{TestIdp, TestKey};

    fn cache(idp: &TestIdp, cooldown: Duration) -> JwksCache {
        JwksCache::new(
            reqwest::Client::new(),
            idp.jwks_uri(),
            Duration::from_secs(5),
            cooldown,
        )
    }

    #[tokio::test]
    async fn a_removed_key_stops_verifying_after_the_refresh_interval() {
        let idp = TestIdp::start().await;
        idp.publish_keys(&[TestKey::Rsa, TestKey::Ec]);
        // A long cooldown: only the schedule can notice the removal (the kid stays known).
        let jwks = cache(&idp, Duration::from_secs(300)).with_refresh_every(Duration::from_secs(1));
        assert!(jwks.key_for(Some("ec-1"), Algorithm::ES256).await.is_ok());
        idp.publish_keys(&[TestKey::Rsa]);
        assert!(
            jwks.key_for(Some("ec-1"), Algorithm::ES256).await.is_ok(),
            "still fresh"
        );
        let fetches = idp.jwks_fetches();
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert!(matches!(
            jwks.key_for(Some("ec-1"), Algorithm::ES256).await,
            Err(IdTokenError::UnknownKey { .. })
        ));
        assert_eq!(idp.jwks_fetches(), fetches + 1, "one scheduled fetch");
        assert!(jwks.key_for(Some("rsa-1"), Algorithm::RS256).await.is_ok());
    }

    #[tokio::test]
    async fn a_failed_scheduled_refresh_keeps_the_last_good_keys() {
        let idp = TestIdp::start().await;
        idp.publish_keys(&[TestKey::Rsa]);
        let jwks = cache(&idp, Duration::from_secs(300)).with_refresh_every(Duration::from_secs(1));
        assert!(jwks.key_for(Some("rsa-1"), Algorithm::RS256).await.is_ok());
        idp.fail_jwks(true);
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert!(jwks.key_for(Some("rsa-1"), Algorithm::RS256).await.is_ok());
    }

    #[test]
    fn cache_control_max_age_is_read() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(max_age(&headers), None);
        headers.insert(
            reqwest::header::CACHE_CONTROL,
            "public, max-age=600, must-revalidate".parse().unwrap(),
        );
        assert_eq!(max_age(&headers), Some(Duration::from_secs(600)));
        headers.insert(reqwest::header::CACHE_CONTROL, "no-store".parse().unwrap());
        assert_eq!(max_age(&headers), Some(Duration::ZERO));
    }

    #[tokio::test]
    async fn finds_keys_by_kid_for_each_supported_family() {
        let idp = TestIdp::start().await;
        idp.publish_keys(&[TestKey::Rsa, TestKey::Ec, TestKey::Ed]);
        let jwks = cache(&idp, Duration::from_secs(300));
        for alg in [Algorithm::RS256, Algorithm::RS512, Algorithm::PS256] {
            assert_eq!(
                jwks.key_for(Some(TestKey::Rsa.kid()), alg)
                    .await
                    .unwrap()
                    .kid
                    .as_deref(),
                Some("rsa-1")
            );
        }
        assert!(jwks
            .key_for(Some(TestKey::Ec.kid()), Algorithm::ES256)
            .await
            .is_ok());
        assert!(jwks
            .key_for(Some(TestKey::Ed.kid()), Algorithm::EdDSA)
            .await
            .is_ok());
        // The kid exists but the key cannot serve this algorithm: not a match.
        assert!(matches!(
            jwks.key_for(Some(TestKey::Ec.kid()), Algorithm::RS256)
                .await,
            Err(IdTokenError::UnknownKey { .. })
        ));
        assert_eq!(jwks.len(), 3);
    }

    #[tokio::test]
    async fn without_kid_the_single_key_of_the_right_type_is_used() {
        let idp = TestIdp::start().await;
        idp.publish_keys(&[TestKey::Rsa, TestKey::Ec]);
        let jwks = cache(&idp, Duration::from_secs(300));
        assert_eq!(
            jwks.key_for(None, Algorithm::RS256)
                .await
                .unwrap()
                .kid
                .as_deref(),
            Some("rsa-1")
        );
        assert_eq!(
            jwks.key_for(None, Algorithm::ES256)
                .await
                .unwrap()
                .kid
                .as_deref(),
            Some("ec-1")
        );
        assert!(jwks.key_for(None, Algorithm::EdDSA).await.is_err());
    }

    #[tokio::test]
    async fn without_kid_and_several_candidates_no_key_is_guessed() {
        let idp = TestIdp::start().await;
        idp.set_jwks(serde_json::json!({"keys": [
            TestKey::Rsa.public_jwk(),
            {"kty": "RSA", "kid": "rsa-2", "n": TestKey::Rsa.public_jwk()["n"], "e": "AQAB"},
        ]}));
        let jwks = cache(&idp, Duration::from_secs(300));
        assert!(matches!(
            jwks.key_for(None, Algorithm::RS256).await,
            Err(IdTokenError::UnknownKey { kid: None })
        ));
        assert!(jwks.key_for(Some("rsa-2"), Algorithm::RS256).await.is_ok());
    }

    #[tokio::test]
    async fn unknown_kid_refetches_at_most_once_per_cooldown() {
        let idp = TestIdp::start().await;
        let jwks = cache(&idp, Duration::from_secs(300));
        assert!(jwks.key_for(Some("rsa-1"), Algorithm::RS256).await.is_ok());
        assert_eq!(idp.jwks_fetches(), 1);
        // Unknown kid: the first fetch was just now, so inside the cooldown nothing is fetched.
        for _ in 0..3 {
            assert!(matches!(
                jwks.key_for(Some("rotated"), Algorithm::RS256).await,
                Err(IdTokenError::UnknownKey { kid: Some(_) })
            ));
        }
        assert_eq!(idp.jwks_fetches(), 1);
        // Known kids keep working from the cache.
        assert!(jwks.key_for(Some("rsa-1"), Algorithm::RS256).await.is_ok());
        assert_eq!(idp.jwks_fetches(), 1);
    }

    #[tokio::test]
    async fn unknown_kid_after_the_cooldown_refetches_and_finds_a_rotated_key() {
        let idp = TestIdp::start().await;
        idp.publish_keys(&[TestKey::Rsa]);
        let jwks = cache(&idp, Duration::from_millis(200));
        assert!(jwks.key_for(Some("rsa-1"), Algorithm::RS256).await.is_ok());
        idp.publish_keys(&[TestKey::Rsa, TestKey::Ec]);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(jwks.key_for(Some("ec-1"), Algorithm::ES256).await.is_ok());
        assert_eq!(idp.jwks_fetches(), 2);
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fetch() {
        let idp = TestIdp::start().await;
        idp.set_jwks_delay(Duration::from_millis(300));
        // No cooldown at all: only single-flight can keep this to one fetch.
        let jwks = cache(&idp, Duration::ZERO);
        let lookups = (0..8).map(|_| {
            let jwks = jwks.clone();
            tokio::spawn(async move { jwks.key_for(Some("rsa-1"), Algorithm::RS256).await.is_ok() })
        });
        for lookup in lookups.collect::<Vec<_>>() {
            assert!(lookup.await.unwrap());
        }
        assert_eq!(idp.jwks_fetches(), 1);
    }

    #[tokio::test]
    async fn last_good_keys_are_kept_when_the_endpoint_fails() {
        let idp = TestIdp::start().await;
        let jwks = cache(&idp, Duration::ZERO);
        assert!(jwks.key_for(Some("rsa-1"), Algorithm::RS256).await.is_ok());
        let keys_before = jwks.len();
        idp.fail_jwks(true);
        // This miss refetches (no cooldown), the fetch fails, and the old set stays.
        assert!(matches!(
            jwks.key_for(Some("other"), Algorithm::RS256).await,
            Err(IdTokenError::UnknownKey { .. })
        ));
        assert_eq!(idp.jwks_fetches(), 2);
        assert!(jwks.key_for(Some("rsa-1"), Algorithm::RS256).await.is_ok());
        assert_eq!(jwks.len(), keys_before);
    }

    #[tokio::test]
    async fn no_keys_at_all_is_reported_as_unavailable() {
        let idp = TestIdp::start().await;
        idp.fail_jwks(true);
        let jwks = cache(&idp, Duration::ZERO);
        assert!(matches!(
            jwks.key_for(Some("rsa-1"), Algorithm::RS256).await,
            Err(IdTokenError::KeysUnavailable(_))
        ));
    }

    #[test]
    fn symmetric_encryption_and_unsupported_keys_are_dropped() {
        let rsa = TestKey::Rsa.public_jwk();
        let body = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": rsa["n"], "e": "AQAB"},
            {"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": rsa["n"], "e": "AQAB"},
            {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "weird", "kid": "weird"},
            {"kty": "RSA", "kid": "pinned", "alg": "PS256", "n": rsa["n"], "e": "AQAB"},
            rsa,
        ]});
        let keys = parse_jwk_set(body.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, ["pinned", "rsa-1"]);
        // A key pinned to PS256 does not verify RS256.
        assert!(select(&keys, Some("pinned"), Algorithm::RS256).is_none());
        assert!(select(&keys, Some("pinned"), Algorithm::PS256).is_some());
    }
}

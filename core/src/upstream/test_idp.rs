//! An in-process OpenID Provider double for tests (compiled for `cfg(test)` and the
//! `test-support` feature only).
//!
//! It serves discovery, JWKS, `/authorize` (redirects straight back with a code for the login
//! configured by the test), `/token` (authorization code with PKCE, refresh with rotation),
//! `/userinfo`, `/revoke` and `/introspect` (RFC 7662) on `127.0.0.1:<random port>`, and it mints ID tokens with any
//! header and claims, so tests can check that forged or broken tokens are refused.
//!
//! ```ignore
//! let idp = TestIdp::start().await;
//! let upstream = idp.upstream().await;               // Upstream discovered against it
//! idp.set_next_login(json!({"sub": "bob", "preferred_username": "bob"}));
//! let forged = idp.mint_id_token(json!({"alg": "none"}), idp.id_token_claims(Some("n")));
//! ```
//!
//! The keys below are TEST-ONLY keys, generated once with `openssl genrsa 2048` /
//! `openssl genpkey` for this file. They protect nothing and must never be used elsewhere.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use rand::distributions::Alphanumeric;
use rand::Rng as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use url::{form_urlencoded, Url};

use super::{ClientAuthMethod, Upstream, UpstreamSettings};
use crate::secret::SecretString;

/// The client id mxidp is registered with at the test IdP.
pub const CLIENT_ID: &str = "mxidp-test";
/// mxidp's client secret at the test IdP. It contains `:`, `+`, `%`, space and non-ASCII so
/// that a `client_secret_basic` implementation that skips the RFC 6749 §2.3.1 form-encoding
/// is caught.
pub const CLIENT_SECRET: &str = "s3cr:t/ä+& %x";

const RSA_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCbWNue9TxBALHD
U2LcrFsDn7xnONvVEbAPlAjcgzvE+Uj67tS1dbu3CdZTmP5RK0NK/8Bd5w8csJiz
JpqUaPGGPafj6wc2aX5dCCuf6pOzSS/yta++C8drI4RTZx2rmsi3k3W5GGpvWGIw
VPectFzRReolZhvraIqH9Jj8/nv3szu4b016z0DNyA3Fv7256oO8ajhVIJ765OFi
RIcOzDFlTqyyGzUbOzJRuTOC3olyWVYTG7s809SBNZYIKDKlCT1YCTlpeosUHZ2U
eQmpAJ0NWeHjaiMRfFbtBh8oQk4tgSFg4qbPgMrJOViVrpTV34+dPU4tdgLDnBZ0
XsupnqYfAgMBAAECggEAJEGLVGCY9PTUCCnMf4NMZJ6hypeHGwXbSO98V/ba+sBR
i5s1ErrNGk2V84HYDRqjRHxHKcNVEBWZNeqzFiMeB34ZUoTWdJkPcGgJQnPtj+Dr
a2KDB0BZhQRPjGWbE6N25/1m8tGjeaQvmmciOTURGpiOKrdXmcwW1N8924ILbcZO
efpaOqhN0EdggfCplCfj2LunO73c+NUrx5s9P+K2youHialWnahu87NKzUm6mL5K
ApESkcARFzAUTuhlhL121KNkXtkAac2UTsJu9KeClMQcz9RIskm8CRcAESsg2tMG
sydG4ZRSh5opRt95A3+wzq4iEvSuu6Fiyb8/D7k1gQKBgQDIeJPxX6jptDrTtqh/
u5kItB+6nJ4TM2Psalz6Tp0VdEjVO3pUGgxAaW5jae6immynVJrLsCwjdGhNIfZe
NS9o7y8NTfzU+jOKCSONZCOtFuQnWVBsUHO16ltPPdTn737FWlC+lWjHZqu6BTXj
5Wwpsl9el5/3NxYPzMXxibujnwKBgQDGYInjpEZooWCPODgQIP1JC6FH9qLJQlvh
96DFi6OUIAxb+71NTzoZKWLykNk1VxgCo/llzIeCVTprCM/E76vYAZ1xL2S3/MaE
T+np2CYVDjkdUEOqJDwZF7R5okmurjc5BG+2hUXUK9qJO4b6Yaf0k7XUdAXvSq2r
N++aVQntgQKBgEp05lXO9rieVP8PJ3QRpBwkcmhoBRoSizlio9ff3N38C5UO+zdD
WWuO/Q31aUmBW3umo7ulWi9s69RCGfQRguNResNRROeBaiUJkefQ2qNODj1DIeio
1OErAvDigTIHtKjuC3FNotX0nzF+/+395vdxpZRHcoVqM0p4/sfgJQ33AoGAZhJc
QMZQ+Bs47NhXeG0RBlm2lamg3v+G+YEJtzt/YoMO+PFR2QqP8UxrPjYrnReAIjOu
6qNPgk9KLLKu/Tz45b8G/KsPHuAwYPoheJIgHitgVeXruwrD5YFd+kv3r6qyfWL7
/CUc5evemUgIzqIa4mxyXauJNjPtojC412c0IYECgYAUV4kAWQcrbFsK/dZ9Vupl
vk1GaCiAocaxW1bCs6rzjBTBy96YsAyPIvR5BREWcXUdsXcXKAtzahnd5p0fTta3
2k59puGPcQOl+g6jf3kUGNV/+zbw7da6LxH7bGgkLoHVuON6pE73HUveNyzZTFVa
zvgF1tefmfSUM61uxEUYzw==
-----END PRIVATE KEY-----
";

const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAm1jbnvU8QQCxw1Ni3Kxb
A5+8Zzjb1RGwD5QI3IM7xPlI+u7UtXW7twnWU5j+UStDSv/AXecPHLCYsyaalGjx
hj2n4+sHNml+XQgrn+qTs0kv8rWvvgvHayOEU2cdq5rIt5N1uRhqb1hiMFT3nLRc
0UXqJWYb62iKh/SY/P5797M7uG9Nes9AzcgNxb+9ueqDvGo4VSCe+uThYkSHDswx
ZU6sshs1GzsyUbkzgt6JcllWExu7PNPUgTWWCCgypQk9WAk5aXqLFB2dlHkJqQCd
DVnh42ojEXxW7QYfKEJOLYEhYOKmz4DKyTlYla6U1d+PnT1OLXYCw5wWdF7LqZ6m
HwIDAQAB
-----END PUBLIC KEY-----
";

const EC_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg3WCVWKto6P2KVhk1
xoJHIakAU039/NAv4s4wNCaM+oahRANCAASOr2IlTOfaH6troSQXEptgkUY6w5Be
QwqWvRtivwN3Cff1dm4G7dReLNrg7/TnRISoIM6kXFr7PuoKMWdt3xIU
-----END PRIVATE KEY-----
";

const ED_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIBv8uoILxTjkeBIvW3dWNKNRzvPJM093pPMBVtz98GkI
-----END PRIVATE KEY-----
";

/// A signing key of the test IdP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestKey {
    /// RSA-2048, kid `rsa-1`: signs RS256/384/512 and PS256/384/512.
    Rsa,
    /// EC P-256, kid `ec-1`: signs ES256.
    Ec,
    /// Ed25519, kid `ed-1`: signs EdDSA.
    Ed,
}

impl TestKey {
    pub fn kid(self) -> &'static str {
        match self {
            TestKey::Rsa => "rsa-1",
            TestKey::Ec => "ec-1",
            TestKey::Ed => "ed-1",
        }
    }

    /// The public key as a JWK, as the JWKS endpoint publishes it.
    pub fn public_jwk(self) -> Value {
        match self {
            TestKey::Rsa => json!({
                "kty": "RSA", "use": "sig", "kid": "rsa-1", "e": "AQAB",
                "n": "m1jbnvU8QQCxw1Ni3KxbA5-8Zzjb1RGwD5QI3IM7xPlI-u7UtXW7twnWU5j-UStDSv_AXecPHLCYsyaalGjxhj2n4-sHNml-XQgrn-qTs0kv8rWvvgvHayOEU2cdq5rIt5N1uRhqb1hiMFT3nLRc0UXqJWYb62iKh_SY_P5797M7uG9Nes9AzcgNxb-9ueqDvGo4VSCe-uThYkSHDswxZU6sshs1GzsyUbkzgt6JcllWExu7PNPUgTWWCCgypQk9WAk5aXqLFB2dlHkJqQCdDVnh42ojEXxW7QYfKEJOLYEhYOKmz4DKyTlYla6U1d-PnT1OLXYCw5wWdF7LqZ6mHw",
            }),
            TestKey::Ec => json!({
                "kty": "EC", "use": "sig", "kid": "ec-1", "crv": "P-256",
                "x": "jq9iJUzn2h-ra6EkFxKbYJFGOsOQXkMKlr0bYr8Ddwk",
                "y": "9_V2bgbt1F4s2uDv9OdEhKggzqRcWvs-6goxZ23fEhQ",
            }),
            TestKey::Ed => json!({
                "kty": "OKP", "use": "sig", "kid": "ed-1", "crv": "Ed25519",
                "x": "AQaKs0YLM4lW8_7v7k0OVNB6pK0OwcR1LIwiwBP6Oig",
            }),
        }
    }

    fn encoding_key(self) -> EncodingKey {
        let key = match self {
            TestKey::Rsa => EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()),
            TestKey::Ec => EncodingKey::from_ec_pem(EC_PRIVATE_PEM.as_bytes()),
            TestKey::Ed => EncodingKey::from_ed_pem(ED_PRIVATE_PEM.as_bytes()),
        };
        key.expect("the embedded test key parses")
    }
}

/// The test RSA private key as PEM (PKCS#8): what a client signs its assertions with in tests.
pub fn rsa_private_key_pem() -> &'static str {
    RSA_PRIVATE_PEM
}

/// The test RSA public key as PEM: the "secret" of an HS256 algorithm-confusion forgery.
pub fn rsa_public_key_pem() -> &'static str {
    RSA_PUBLIC_PEM
}

/// The test RSA public key as DER (SubjectPublicKeyInfo), the other common confusion secret.
pub fn rsa_public_key_der() -> Vec<u8> {
    let body: String = RSA_PUBLIC_PEM
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    STANDARD
        .decode(body)
        .expect("the embedded test key is base64")
}

/// How the client authenticated at `/token` or `/revoke`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthUsed {
    Basic,
    Post,
}

/// One request the token endpoint accepted (client authenticated), for assertions.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub auth: ClientAuthUsed,
    /// The form parameters, without `client_secret`.
    pub params: HashMap<String, String>,
}

/// One request to `/introspect` that passed client authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntrospectionRequest {
    pub auth: ClientAuthUsed,
    pub token: String,
    pub token_type_hint: Option<String>,
}

/// A token revoked at `/revoke`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedToken {
    pub token: String,
    pub token_type_hint: Option<String>,
}

struct PendingCode {
    claims: Map<String, Value>,
    nonce: Option<String>,
    redirect_uri: String,
    code_challenge: String,
}

#[derive(Default)]
struct IdpState {
    published: Vec<TestKey>,
    jwks_override: Option<Value>,
    fail_jwks: bool,
    jwks_delay: Duration,
    discovery_patch: Map<String, Value>,
    next_login: Map<String, Value>,
    codes: HashMap<String, PendingCode>,
    access_tokens: HashMap<String, Map<String, Value>>,
    refresh_tokens: HashMap<String, Map<String, Value>>,
    revoked: Vec<RevokedToken>,
    fail_refresh: bool,
    /// Keep the refresh token on refresh, as oidc-provider and Keycloak do by default for a
    /// confidential client (the answer carries the same refresh token again).
    keep_refresh_tokens: bool,
    /// Profile and e-mail claims only from userinfo, none in the ID token (OIDC Core §5.4 with
    /// the code flow; oidc-provider's `conformIdTokenClaims`).
    conform_id_token_claims: bool,
    userinfo_requests: usize,
    /// Tokens `/introspect` calls inactive although they were issued and not revoked.
    introspection_inactive: std::collections::HashSet<String>,
    fail_introspection: bool,
    /// `/revoke` answers 503 (and revokes nothing) while set.
    fail_revocation: bool,
    /// `/introspect` answers 429 with this `X-Rate-Limit-Reset` (Unix time) while set.
    introspection_rate_limited: Option<i64>,
    /// How long `/revoke` takes to answer (a slow IdP).
    revocation_delay: Duration,
    introspection_requests: Vec<IntrospectionRequest>,
    /// Header and claims patches for the ID token of the next code exchange.
    next_id_token_patch: Option<(Value, Value)>,
    token_requests: Vec<TokenRequest>,
    authorize_requests: Vec<HashMap<String, String>>,
}

struct Shared {
    issuer: String,
    jwks_fetches: AtomicUsize,
    state: Mutex<IdpState>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, IdpState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.issuer.trim_end_matches('/'))
    }
}

/// The running test OpenID Provider. Stops when dropped.
pub struct TestIdp {
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn random_token(prefix: &str) -> String {
    let suffix: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("{prefix}{suffix}")
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("expected a JSON object, got {other}"),
    }
}

impl TestIdp {
    /// Starts an IdP whose issuer has a path, like Keycloak's: `http://127.0.0.1:<port>/realms/test`.
    pub async fn start() -> Self {
        Self::start_at("/realms/test").await
    }

    /// Starts an IdP whose issuer is `http://127.0.0.1:<port>` + `path` (`"/"` for a root issuer,
    /// which is then advertised with its trailing slash, like Auth0's).
    pub async fn start_at(path: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test IdP");
        let port = listener.local_addr().expect("local address").port();
        let shared = Arc::new(Shared {
            issuer: format!("http://127.0.0.1:{port}{path}"),
            jwks_fetches: AtomicUsize::new(0),
            state: Mutex::new(IdpState {
                published: vec![TestKey::Rsa, TestKey::Ec, TestKey::Ed],
                next_login: default_login(),
                ..IdpState::default()
            }),
        });
        let routes = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/userinfo", get(userinfo).post(userinfo))
            .route("/revoke", post(revoke))
            .route("/introspect", post(introspect))
            .with_state(shared.clone());
        let app = match path.trim_end_matches('/') {
            "" => routes,
            prefix => Router::new().nest(prefix, routes),
        };
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { shared, server }
    }

    /// The issuer, exactly as the discovery document and the ID tokens spell it.
    pub fn issuer(&self) -> &str {
        &self.shared.issuer
    }

    pub fn issuer_url(&self) -> Url {
        Url::parse(&self.shared.issuer).expect("the test issuer is a URL")
    }

    pub fn jwks_uri(&self) -> Url {
        Url::parse(&self.shared.endpoint("/jwks")).expect("URL")
    }

    /// Settings of an upstream client registered at this IdP (`client_secret_basic`, RS256,
    /// PS256, ES256 and EdDSA allowed, 30 s leeway, 5-minute JWKS cooldown, 5 s timeout).
    pub fn upstream_settings(&self) -> UpstreamSettings {
        UpstreamSettings {
            issuer: self.issuer_url(),
            client_id: CLIENT_ID.into(),
            client_secret: SecretString::new(CLIENT_SECRET),
            auth_method: ClientAuthMethod::ClientSecretBasic,
            client_key: None,
            scopes: vec!["profile".into(), "email".into()],
            allowed_algorithms: vec![
                Algorithm::RS256,
                Algorithm::PS256,
                Algorithm::ES256,
                Algorithm::EdDSA,
            ],
            fetch_userinfo: crate::upstream::UserinfoMode::Auto,
            leeway: Duration::from_secs(30),
            jwks_refetch_cooldown: Duration::from_secs(300),
            jwks_refresh: super::jwks::DEFAULT_REFRESH,
            http_timeout: Duration::from_secs(5),
        }
    }

    /// An [`Upstream`] discovered against this IdP with [`TestIdp::upstream_settings`].
    pub async fn upstream(&self) -> Upstream {
        self.upstream_with(self.upstream_settings()).await
    }

    pub async fn upstream_with(&self, settings: UpstreamSettings) -> Upstream {
        Upstream::discover(settings, reqwest::Client::new())
            .await
            .expect("discovery of the test IdP")
    }

    // ----- configuration -----

    /// The claims of the user who logs in at the next `/authorize` (must contain `sub`). The
    /// default is `alice`: `{"sub": "alice-sub", "preferred_username": "alice", ...}`.
    pub fn set_next_login(&self, claims: Value) {
        self.shared.lock().next_login = object(claims);
    }

    /// Puts the login's claims in userinfo only; the ID token carries just `sub`.
    pub fn set_conform_id_token_claims(&self, conform: bool) {
        self.shared.lock().conform_id_token_claims = conform;
    }

    /// How many userinfo requests the IdP answered (any outcome).
    pub fn userinfo_requests(&self) -> usize {
        self.shared.lock().userinfo_requests
    }

    /// Whether refresh rotates the IdP's refresh token (the default) or keeps it.
    pub fn set_refresh_rotation(&self, rotate: bool) {
        self.shared.lock().keep_refresh_tokens = !rotate;
    }

    /// Makes every refresh-token grant fail with `invalid_grant` (the IdP session ended).
    pub fn fail_refresh_with_invalid_grant(&self, fail: bool) {
        self.shared.lock().fail_refresh = fail;
    }

    /// Which keys the JWKS endpoint publishes (default: all three).
    pub fn publish_keys(&self, keys: &[TestKey]) {
        let mut state = self.shared.lock();
        state.published = keys.to_vec();
        state.jwks_override = None;
    }

    /// Serves this exact document at the JWKS endpoint instead of the published keys.
    pub fn set_jwks(&self, document: Value) {
        self.shared.lock().jwks_override = Some(document);
    }

    /// Makes the JWKS endpoint answer 500 (the fetch is still counted).
    pub fn fail_jwks(&self, fail: bool) {
        self.shared.lock().fail_jwks = fail;
    }

    /// Delays every JWKS answer (to make concurrent fetches overlap).
    pub fn set_jwks_delay(&self, delay: Duration) {
        self.shared.lock().jwks_delay = delay;
    }

    /// How many times the JWKS endpoint was requested.
    pub fn jwks_fetches(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Overrides members of the discovery document; a `null` value removes the member.
    pub fn patch_discovery(&self, patch: Value) {
        self.shared.lock().discovery_patch.extend(object(patch));
    }

    /// Makes `/introspect` answer `active: false` for this token from now on (the IdP ended
    /// its session without telling anyone).
    pub fn set_introspection_inactive(&self, token: &str) {
        self.shared
            .lock()
            .introspection_inactive
            .insert(token.to_owned());
    }

    /// Makes `/introspect` answer 429 with Okta's `X-Rate-Limit-Reset: reset` (None: normal).
    pub fn rate_limit_introspection(&self, reset: Option<i64>) {
        self.shared.lock().introspection_rate_limited = reset;
    }

    /// Makes `/revoke` take this long to answer.
    pub fn set_revocation_delay(&self, delay: Duration) {
        self.shared.lock().revocation_delay = delay;
    }

    /// Makes `/revoke` answer 503 and revoke nothing (an IdP outage).
    pub fn fail_revocation(&self, fail: bool) {
        self.shared.lock().fail_revocation = fail;
    }

    /// Makes `/introspect` answer 503 (the IdP is in trouble; the request is still counted).
    pub fn fail_introspection(&self, fail: bool) {
        self.shared.lock().fail_introspection = fail;
    }

    // ----- observation -----

    /// Requests to `/introspect` that passed client authentication, in order.
    pub fn introspection_requests(&self) -> Vec<IntrospectionRequest> {
        self.shared.lock().introspection_requests.clone()
    }

    /// Tokens revoked at `/revoke`, in order.
    pub fn revoked_tokens(&self) -> Vec<RevokedToken> {
        self.shared.lock().revoked.clone()
    }

    /// Requests the token endpoint accepted the client authentication of, in order.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.shared.lock().token_requests.clone()
    }

    /// Query parameters of every `/authorize` request, in order.
    pub fn authorize_requests(&self) -> Vec<HashMap<String, String>> {
        self.shared.lock().authorize_requests.clone()
    }

    // ----- tokens -----

    /// Registers an authorization code as if `/authorize` had run for the next login, without
    /// a browser. The code is single-use and bound to `redirect_uri` and the PKCE challenge.
    pub fn issue_code(
        &self,
        nonce: Option<&str>,
        redirect_uri: &str,
        code_challenge: &str,
    ) -> String {
        let code = random_token("code-");
        let mut state = self.shared.lock();
        let claims = state.next_login.clone();
        state.codes.insert(
            code.clone(),
            PendingCode {
                claims,
                nonce: nonce.map(str::to_owned),
                redirect_uri: redirect_uri.to_owned(),
                code_challenge: code_challenge.to_owned(),
            },
        );
        code
    }

    /// The header of a good ID token: `{"alg": "RS256", "kid": "rsa-1", "typ": "JWT"}`.
    pub fn default_header() -> Value {
        json!({"alg": "RS256", "kid": TestKey::Rsa.kid(), "typ": "JWT"})
    }

    /// The claims of a good ID token for the next login: `iss`, `aud` = [`CLIENT_ID`], `iat`
    /// now, `exp` in 5 minutes, `nonce` if given, plus the login's claims.
    pub fn id_token_claims(&self, nonce: Option<&str>) -> Value {
        let login = self.shared.lock().next_login.clone();
        Value::Object(self.shared.id_token_claims(&login, nonce))
    }

    /// A good ID token for the next login (RS256, kid `rsa-1`).
    pub fn good_id_token(&self, nonce: Option<&str>) -> String {
        self.mint_id_token(Self::default_header(), self.id_token_claims(nonce))
    }

    /// Mints a compact JWS with exactly this header and these claims. The key follows the
    /// header's `alg`, whatever its `kid` says: RS*/PS* with the RSA key, ES256 with the EC
    /// key, EdDSA with the Ed25519 key, HS* with the RSA PUBLIC key's PEM as the HMAC secret
    /// (the algorithm-confusion forgery), and anything else (`none`) unsigned with an empty
    /// signature segment.
    pub fn mint_id_token(&self, header: Value, claims: Value) -> String {
        mint(header, claims)
    }

    /// Makes the next code exchange return an ID token whose header and claims are the good
    /// ones patched with these objects (a `null` value removes the field). For callback tests:
    /// `json!({"alg": "none"})`, `json!({"aud": "someone-else"})`, ...
    pub fn forge_next_id_token(&self, header_patch: Value, claims_patch: Value) {
        self.shared.lock().next_id_token_patch = Some((header_patch, claims_patch));
    }
}

fn patch(target: &mut Value, with: &Value) {
    if let (Value::Object(target), Value::Object(with)) = (target, with) {
        for (k, v) in with {
            if v.is_null() {
                target.remove(k);
            } else {
                target.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Signs a token according to its header's `alg` (HS* with the RSA public key PEM as secret,
/// `none` with an empty signature).
fn mint(header: Value, claims: Value) -> String {
    {
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("none");
        let key = match alg.parse::<Algorithm>() {
            Ok(alg @ (Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)) => {
                Some((alg, EncodingKey::from_secret(RSA_PUBLIC_PEM.as_bytes())))
            }
            Ok(alg @ Algorithm::ES256) => Some((alg, TestKey::Ec.encoding_key())),
            Ok(alg @ Algorithm::EdDSA) => Some((alg, TestKey::Ed.encoding_key())),
            Ok(Algorithm::ES384) => panic!("the test IdP has no P-384 key"),
            Ok(alg) => Some((alg, TestKey::Rsa.encoding_key())),
            Err(_) => None,
        };
        sign(&header, &claims, key)
    }
}

impl TestIdp {
    /// Mints an HMAC-signed token with an explicit secret (e.g. [`rsa_public_key_der`]).
    pub fn mint_id_token_with_hmac_secret(
        &self,
        header: Value,
        claims: Value,
        secret: &[u8],
    ) -> String {
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(|a| a.parse().ok())
            .unwrap_or(Algorithm::HS256);
        sign(
            &header,
            &claims,
            Some((alg, EncodingKey::from_secret(secret))),
        )
    }
}

fn sign(header: &Value, claims: &Value, key: Option<(Algorithm, EncodingKey)>) -> String {
    let header = URL_SAFE_NO_PAD.encode(header.to_string());
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let message = format!("{header}.{claims}");
    let signature = match key {
        Some((alg, key)) => jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg)
            .expect("signing with a test key"),
        None => String::new(),
    };
    format!("{message}.{signature}")
}

fn default_login() -> Map<String, Value> {
    object(json!({
        "sub": "alice-sub",
        "preferred_username": "alice",
        "name": "Alice Liddell",
        "email": "alice@example.com",
        "email_verified": true,
    }))
}

impl Shared {
    fn id_token_claims(
        &self,
        login: &Map<String, Value>,
        nonce: Option<&str>,
    ) -> Map<String, Value> {
        let mut claims = login.clone();
        claims.insert("iss".into(), json!(self.issuer));
        claims.insert("aud".into(), json!(CLIENT_ID));
        claims.insert("iat".into(), json!(now()));
        claims.insert("exp".into(), json!(now() + 300));
        // Every login at this IdP is a fresh sign-in (OIDC Core: auth_time, needed for max_age).
        claims.entry("auth_time").or_insert(json!(now()));
        if let Some(nonce) = nonce {
            claims.insert("nonce".into(), json!(nonce));
        }
        claims
    }

    /// Issues access, refresh and ID token for a login, as a token-endpoint JSON answer.
    fn issue_tokens(
        &self,
        state: &mut IdpState,
        login: Map<String, Value>,
        nonce: Option<&str>,
    ) -> Value {
        let access_token = random_token("at-");
        let refresh_token = random_token("rt-");
        let id_token_login = if state.conform_id_token_claims {
            login
                .iter()
                .filter(|(k, _)| *k == "sub")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        } else {
            login.clone()
        };
        let mut claims = Value::Object(self.id_token_claims(&id_token_login, nonce));
        let id_token = match state.next_id_token_patch.take() {
            Some((header_patch, claims_patch)) => {
                let mut header = TestIdp::default_header();
                patch(&mut header, &header_patch);
                patch(&mut claims, &claims_patch);
                mint(header, claims)
            }
            None => sign(
                &TestIdp::default_header(),
                &claims,
                Some((Algorithm::RS256, TestKey::Rsa.encoding_key())),
            ),
        };
        state
            .access_tokens
            .insert(access_token.clone(), login.clone());
        state.refresh_tokens.insert(refresh_token.clone(), login);
        json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": 300,
            "refresh_token": refresh_token,
            "id_token": id_token,
            "scope": "openid profile email",
        })
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// Checks mxidp's client authentication (RFC 6749 §2.3.1), either method but not both.
/// The error is the `invalid_client` description.
fn client_auth(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<ClientAuthUsed, &'static str> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "));
    match (basic, form.get("client_secret")) {
        (Some(_), Some(_)) => Err("more than one client authentication method"),
        (None, None) => Err("no client authentication"),
        (Some(credentials), None) => {
            let decoded = STANDARD
                .decode(credentials)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or("bad basic credentials")?;
            let (id, secret) = decoded.split_once(':').ok_or("bad basic credentials")?;
            // Both halves are form-encoded by the client; decode them.
            let decode = |s: &str| {
                form_urlencoded::parse(format!("v={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            if decode(id).as_deref() == Some(CLIENT_ID)
                && decode(secret).as_deref() == Some(CLIENT_SECRET)
            {
                Ok(ClientAuthUsed::Basic)
            } else {
                Err("wrong client credentials")
            }
        }
        (None, Some(secret)) => {
            if form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
                && secret == CLIENT_SECRET
            {
                Ok(ClientAuthUsed::Post)
            } else {
                Err("wrong client credentials")
            }
        }
    }
}

async fn discovery(State(idp): State<Arc<Shared>>) -> Json<Value> {
    let mut doc = object(json!({
        "issuer": idp.issuer,
        "authorization_endpoint": idp.endpoint("/authorize"),
        "token_endpoint": idp.endpoint("/token"),
        "jwks_uri": idp.endpoint("/jwks"),
        "userinfo_endpoint": idp.endpoint("/userinfo"),
        "revocation_endpoint": idp.endpoint("/revoke"),
        "introspection_endpoint": idp.endpoint("/introspect"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "PS256", "ES256", "EdDSA"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "prompt_values_supported": ["none", "login", "consent", "create"],
    }));
    for (name, value) in idp.lock().discovery_patch.clone() {
        if value.is_null() {
            doc.remove(&name);
        } else {
            doc.insert(name, value);
        }
    }
    Json(Value::Object(doc))
}

async fn jwks(State(idp): State<Arc<Shared>>) -> Response {
    idp.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let (delay, fail, document) = {
        let state = idp.lock();
        let document = state.jwks_override.clone().unwrap_or_else(
            || json!({"keys": state.published.iter().map(|k| k.public_jwk()).collect::<Vec<_>>()}),
        );
        (state.jwks_delay, state.fail_jwks, document)
    };
    tokio::time::sleep(delay).await;
    if fail {
        return (StatusCode::INTERNAL_SERVER_ERROR, "JWKS unavailable").into_response();
    }
    Json(document).into_response()
}

async fn authorize(
    State(idp): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    idp.lock().authorize_requests.push(query.clone());
    let (Some(redirect_uri), Some(challenge)) =
        (query.get("redirect_uri"), query.get("code_challenge"))
    else {
        return (
            StatusCode::BAD_REQUEST,
            "redirect_uri and code_challenge are required",
        )
            .into_response();
    };
    if query.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || query.get("response_type").map(String::as_str) != Some("code")
        || query.get("code_challenge_method").map(String::as_str) != Some("S256")
    {
        return (
            StatusCode::BAD_REQUEST,
            "unknown client, response_type or PKCE method",
        )
            .into_response();
    }
    let Ok(mut target) = Url::parse(redirect_uri) else {
        return (StatusCode::BAD_REQUEST, "bad redirect_uri").into_response();
    };
    let code = random_token("code-");
    {
        let mut state = idp.lock();
        let claims = state.next_login.clone();
        state.codes.insert(
            code.clone(),
            PendingCode {
                claims,
                nonce: query.get("nonce").cloned(),
                redirect_uri: redirect_uri.clone(),
                code_challenge: challenge.clone(),
            },
        );
    }
    {
        let mut pairs = target.query_pairs_mut();
        pairs.append_pair("code", &code);
        if let Some(state) = query.get("state") {
            pairs.append_pair("state", state);
        }
    }
    Redirect::to(target.as_str()).into_response()
}

async fn token(
    State(idp): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let auth = match client_auth(&headers, &form) {
        Ok(auth) => auth,
        Err(why) => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", why),
    };
    let mut params = form.clone();
    params.remove("client_secret");
    let mut state = idp.lock();
    state.token_requests.push(TokenRequest { auth, params });
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let Some(pending) = form.get("code").and_then(|code| state.codes.remove(code)) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown or used code",
                );
            };
            if form.get("redirect_uri") != Some(&pending.redirect_uri) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "redirect_uri mismatch",
                );
            }
            let verifier = form
                .get("code_verifier")
                .map(String::as_str)
                .unwrap_or_default();
            if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != pending.code_challenge
            {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "PKCE verification failed",
                );
            }
            Json(idp.issue_tokens(&mut state, pending.claims, pending.nonce.as_deref()))
                .into_response()
        }
        Some("refresh_token") => {
            if state.fail_refresh {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Session not active",
                );
            }
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            let found = if state.keep_refresh_tokens {
                state.refresh_tokens.get(&presented).cloned()
            } else {
                state.refresh_tokens.remove(&presented)
            };
            let Some(login) = found else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown refresh token",
                );
            };
            let mut answer = idp.issue_tokens(&mut state, login, None);
            if state.keep_refresh_tokens {
                if let Some(new) = answer["refresh_token"].as_str() {
                    state.refresh_tokens.remove(new);
                }
                answer["refresh_token"] = json!(presented);
            }
            Json(answer).into_response()
        }
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant type not supported",
        ),
    }
}

async fn userinfo(State(idp): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let found = {
        let mut state = idp.lock();
        state.userinfo_requests += 1;
        token.and_then(|t| state.access_tokens.get(t).cloned())
    };
    match found {
        Some(claims) => Json(Value::Object(claims)).into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
        )
            .into_response(),
    }
}

async fn revoke(
    State(idp): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(why) = client_auth(&headers, &form) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", why);
    }
    let Some(token) = form.get("token") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is required",
        );
    };
    let delay = idp.lock().revocation_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut state = idp.lock();
    if state.fail_revocation {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    state.access_tokens.remove(token);
    state.refresh_tokens.remove(token);
    state.revoked.push(RevokedToken {
        token: token.clone(),
        token_type_hint: form.get("token_type_hint").cloned(),
    });
    StatusCode::OK.into_response()
}

/// RFC 7662: active while issued, not rotated away, not revoked and not marked inactive.
async fn introspect(
    State(idp): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let auth = match client_auth(&headers, &form) {
        Ok(auth) => auth,
        Err(why) => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", why),
    };
    let Some(token) = form.get("token") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is required",
        );
    };
    let mut state = idp.lock();
    state.introspection_requests.push(IntrospectionRequest {
        auth,
        token: token.clone(),
        token_type_hint: form.get("token_type_hint").cloned(),
    });
    if state.fail_introspection {
        return (StatusCode::SERVICE_UNAVAILABLE, "try again later").into_response();
    }
    if let Some(reset) = state.introspection_rate_limited {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [
                ("x-rate-limit-limit", "300".to_owned()),
                ("x-rate-limit-remaining", "0".to_owned()),
                ("x-rate-limit-reset", reset.to_string()),
            ],
            "rate limit exceeded",
        )
            .into_response();
    }
    let login = state
        .refresh_tokens
        .get(token)
        .or_else(|| state.access_tokens.get(token))
        .filter(|_| !state.introspection_inactive.contains(token));
    match login {
        Some(login) => Json(json!({
            "active": true,
            "client_id": CLIENT_ID,
            "sub": login.get("sub"),
            "exp": now() + 300,
        }))
        .into_response(),
        None => Json(json!({"active": false})).into_response(),
    }
}

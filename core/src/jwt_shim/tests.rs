//! The shim against the test IdP's signing keys, an in-memory store and homeserver: what is
//! accepted, everything RFC 8725 and the mapping rules refuse (each with nothing provisioned),
//! and the revocation of tokens the IdP cannot revoke.

use std::sync::Arc;

use serde_json::{json, Value};

use super::JwtShim;
use crate::app::App;
use crate::events::{IdpEvent, ReceivedEvent};
use crate::homeserver::MemoryHomeserver;
use crate::ids::{now_unix, DeviceId, Localpart};
use crate::store::{Identity, SqliteStore};
use crate::upstream::test_idp::{TestIdp, TestKey};

const API: &str = "https://matrix.example.org/api";

struct Env {
    idp: TestIdp,
    app: App,
    hs: MemoryHomeserver,
}

const SHIM: &str = r#"
[jwt_shim]
enabled = true

[[jwt_shim.issuers]]
audiences = ["https://matrix.example.org/api"]
user_tokens = true

[[jwt_shim.issuers.service_accounts]]
client_id = "ci-bot"
localpart = "ci-bot"

[[jwt_shim.issuers.service_accounts]]
client_id = "retired-bot"
localpart = "retired-bot"
enabled = false
"#;

fn config(idp: &TestIdp, shim: &str) -> crate::config::Config {
    let toml = format!(
        r#"
[http]
public_base = "http://127.0.0.1:1/"
[database]
encryption_key = "test-encryption-key-0123456789abcdef"
[matrix]
homeserver = "example.org"
endpoint = "http://127.0.0.1:1/"
secret = "a-shared-secret-0123456789abcdef0123"
[upstream]
issuer = "{issuer}"
client_id = "mxidp"
client_secret = "unused-here"
{shim}
"#,
        issuer = idp.issuer()
    );
    let config = crate::config::Config::from_toml_str(&toml).unwrap();
    assert_eq!(config.check(), vec![]);
    config
}

/// The app for `shim` on `env`'s store and homeserver: what a restart with a changed
/// configuration finds.
async fn restart(env: &Env, shim: &str) -> App {
    let app = crate::server::assemble(
        &config(&env.idp, shim),
        env.app.store.clone(),
        Arc::new(env.hs.clone()),
        Arc::new(crate::provider::GenericOidc),
    )
    .unwrap();
    app.upstream.set(env.idp.upstream().await);
    assert!(app.jwt_shim.as_ref().unwrap().load_keys(&app).await);
    app
}

async fn env_with(shim: &str) -> Env {
    let idp = TestIdp::start().await;
    let config = config(&idp, shim);
    let hs = MemoryHomeserver::new("example.org");
    let store = Arc::new(SqliteStore::in_memory().await.unwrap());
    let app = crate::server::assemble(
        &config,
        store,
        Arc::new(hs.clone()),
        Arc::new(crate::provider::GenericOidc),
    )
    .unwrap();
    crate::server::load_subject_token_rules(&app).await.unwrap();
    app.upstream.set(idp.upstream().await);
    let shim = app.jwt_shim.as_ref().unwrap();
    assert!(shim.load_keys(&app).await, "the IdP's keys load");
    shim.provision_accounts(&app).await;
    Env { idp, app, hs }
}

async fn env() -> Env {
    env_with(SHIM).await
}

impl Env {
    fn shim(&self) -> &JwtShim {
        self.app.jwt_shim.as_ref().unwrap()
    }

    /// A good access token: RS256, kid `rsa-1`, `typ` at+jwt, our API, 5 minutes.
    fn token(&self, claims: Value) -> String {
        self.token_with(json!({}), claims)
    }

    fn token_with(&self, header_patch: Value, claims: Value) -> String {
        let now = now_unix();
        let mut header = json!({"alg": "RS256", "kid": TestKey::Rsa.kid(), "typ": "at+jwt"});
        merge(&mut header, header_patch);
        let mut full = json!({
            "iss": self.idp.issuer(),
            "aud": API,
            "iat": now,
            "exp": now + 300,
            "jti": crate::ids::random_token(8),
        });
        merge(&mut full, claims);
        self.idp.mint_id_token(header, full)
    }

    async fn introspect(&self, token: &str) -> Option<Value> {
        let active = self
            .shim()
            .introspect(&self.app, token, now_unix())
            .await
            .unwrap()?;
        Some(serde_json::from_str(&active.answer(now_unix())).unwrap())
    }

    fn bot_token(&self) -> String {
        self.token(json!({"sub": "ci-bot", "client_id": "ci-bot", "scope": "matrix"}))
    }

    async fn link_alice(&self) -> Localpart {
        let localpart = Localpart::parse("alice").unwrap();
        self.app
            .store
            .add_identity(&Identity {
                provider: self.app.mapping.upstream_id.clone(),
                subject: "alice-sub".into(),
                localpart: localpart.clone(),
                created_at: now_unix() - 3_600,
                deleted_at: None,
            })
            .await
            .unwrap();
        self.app
            .homeserver
            .provision_user(&crate::homeserver::ProvisionRequest::new(localpart.clone()))
            .await
            .unwrap();
        localpart
    }

    fn alice_token(&self, iat_offset: i64) -> String {
        let now = now_unix();
        self.token(json!({
            "sub": "alice-sub",
            "azp": "matrix-cli",
            "iat": now + iat_offset,
            "scope": "openid urn:matrix:client:api:* urn:matrix:client:device:ALICECLI01",
        }))
    }

    async fn idp_event(&self, key: &str, event: IdpEvent) {
        self.app
            .events
            .accept(
                "test",
                ReceivedEvent {
                    dedupe_key: key.into(),
                    occurred_at: now_unix(),
                    event,
                },
            )
            .await
            .unwrap();
        crate::events::pipeline::run_due(&self.app, now_unix())
            .await
            .unwrap();
    }
}

fn merge(target: &mut Value, patch: Value) {
    if let (Value::Object(target), Value::Object(patch)) = (target, patch) {
        for (k, v) in patch {
            if v.is_null() {
                target.remove(&k);
            } else {
                target.insert(k, v);
            }
        }
    }
}

fn device(id: &str) -> DeviceId {
    DeviceId::parse(id).unwrap()
}

#[tokio::test]
async fn a_service_account_token_maps_to_its_user_and_stable_device() {
    let env = env().await;
    let bot = Localpart::parse("ci-bot").unwrap();
    // Provisioned at start: user and device exist before any token is seen.
    assert!(env.hs.user(&bot).is_some());
    let devices = env.hs.devices(&bot);
    assert_eq!(devices.len(), 1);

    let answer = env.introspect(&env.bot_token()).await.expect("active");
    assert_eq!(answer["active"], true);
    assert_eq!(answer["username"], "ci-bot");
    assert_eq!(answer["client_id"], "ci-bot");
    assert_eq!(answer["sub"], "ci-bot");
    let device = answer["device_id"].as_str().unwrap();
    assert!(devices.contains(&DeviceId::parse(device).unwrap()));
    assert!(answer["scope"]
        .as_str()
        .unwrap()
        .contains(&format!("urn:matrix:client:device:{device}")));
    assert!(!answer["scope"].as_str().unwrap().contains("admin"));
    assert!(answer["expires_in"].as_i64().unwrap() <= 300);

    // Another token of the same client: the same device, and a cached verdict per token.
    let again = env.introspect(&env.bot_token()).await.unwrap();
    assert_eq!(again["device_id"], device);
    assert_eq!(env.shim().cached_verdicts(), 2);
}

#[tokio::test]
async fn the_device_id_is_derived_from_the_issuer_and_the_client() {
    let a = super::accounts::derived_device_id("idp.example.org", "client_id \"bot\"");
    assert_eq!(
        a,
        super::accounts::derived_device_id("idp.example.org", "client_id \"bot\"")
    );
    assert_ne!(
        a,
        super::accounts::derived_device_id("other.example.org", "client_id \"bot\"")
    );
    assert_eq!(a.as_str().len(), 10);
}

#[tokio::test]
async fn refused_tokens_are_inactive_and_provision_nothing() {
    let env = env().await;
    env.link_alice().await;
    // Where a forged token's `jku` points: it must never be asked for keys.
    let elsewhere = TestIdp::start().await;
    let now = now_unix();
    let bot = json!({"sub": "ci-bot", "client_id": "ci-bot"});
    let with = |extra: Value| {
        let mut claims = bot.clone();
        merge(&mut claims, extra);
        claims
    };
    // The shim accepts the unmodified bot token: every case below differs in one thing.
    assert!(env.introspect(&env.token(bot.clone())).await.is_some());
    env.hs.clear_calls();
    let before = env.shim().cached_verdicts();

    let cases: Vec<(&str, String)> = vec![
        ("wrong aud", env.token(with(json!({"aud": "https://billing.example.org/api"})))),
        ("aud of the client (an ID token)", env.token(with(json!({"aud": "ci-bot"})))),
        ("wrong iss", env.token(with(json!({"iss": "https://evil.example.org/"})))),
        ("expired", env.token(with(json!({"iat": now - 600, "exp": now - 120})))),
        ("nbf in the future", env.token(with(json!({"nbf": now + 600})))),
        (
            "no exp",
            env.token(json!({"sub": "ci-bot", "client_id": "ci-bot", "exp": null})),
        ),
        ("alg none", env.token_with(json!({"alg": "none"}), bot.clone())),
        (
            "HS256 signed with the IdP's public key",
            env.token_with(json!({"alg": "HS256"}), bot.clone()),
        ),
        (
            "unknown kid with a jku pointing elsewhere",
            env.token_with(
                json!({"kid": "attacker-1", "jku": elsewhere.jwks_uri().as_str(), "x5u": elsewhere.jwks_uri().as_str()}),
                bot.clone(),
            ),
        ),
        ("a JWE", "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d".to_owned()),
        (
            "longer-lived than max_lifetime_seconds",
            env.token(with(json!({"iat": now, "exp": now + 2 * 86_400}))),
        ),
        ("an ID-token typ", env.token_with(json!({"typ": "id+jwt"}), bot.clone())),
        ("a disabled service account", env.token(json!({"sub": "retired-bot", "client_id": "retired-bot"}))),
        (
            "a user token without the Matrix scopes",
            env.token(json!({"sub": "alice-sub", "azp": "matrix-cli", "scope": "openid email"})),
        ),
        (
            "a user token of a subject mxidp has never seen",
            env.token(json!({
                "sub": "stranger-sub",
                "azp": "matrix-cli",
                "scope": "urn:matrix:client:api:* urn:matrix:client:device:STRANGER01",
            })),
        ),
        (
            "a user token with two device scopes",
            env.token(json!({
                "sub": "alice-sub",
                "azp": "matrix-cli",
                "scope": "urn:matrix:client:api:* urn:matrix:client:device:ALICECLI01 urn:matrix:client:device:ALICECLI02",
            })),
        ),
        ("not base64", "a.b.c".to_owned()),
    ];
    for (case, token) in &cases {
        assert_eq!(
            env.introspect(token).await,
            None,
            "{case}: must be inactive"
        );
    }
    assert_eq!(env.shim().cached_verdicts(), before, "no verdict kept");
    assert_eq!(
        elsewhere.jwks_fetches(),
        0,
        "keys are never taken from a token's header"
    );
    let calls = env.hs.calls();
    assert!(calls.is_empty(), "nothing provisioned, got {calls:?}");
    assert!(env
        .hs
        .user(&Localpart::parse("stranger").unwrap())
        .is_none());
}

#[tokio::test]
async fn an_es256_or_eddsa_token_needs_the_algorithm_allowed() {
    let env = env().await;
    let bot = json!({"sub": "ci-bot", "client_id": "ci-bot"});
    let es = env.token_with(
        json!({"alg": "ES256", "kid": TestKey::Ec.kid()}),
        bot.clone(),
    );
    assert!(
        env.introspect(&es).await.is_some(),
        "ES256 is allowed by default"
    );
    let ps384 = env.token_with(json!({"alg": "PS384"}), bot.clone());
    assert_eq!(
        env.introspect(&ps384).await,
        None,
        "PS384 is not in the default list"
    );
}

#[tokio::test]
async fn a_user_token_with_native_matrix_scopes_gets_its_device_at_first_sight() {
    let env = env().await;
    let alice = env.link_alice().await;
    let answer = env.introspect(&env.alice_token(0)).await.expect("active");
    assert_eq!(answer["username"], "alice");
    assert_eq!(answer["sub"], "alice-sub");
    assert_eq!(answer["client_id"], "matrix-cli");
    assert_eq!(answer["device_id"], "ALICECLI01");
    assert!(env.hs.devices(&alice).contains(&device("ALICECLI01")));
    // A session like any other: the user's device list keeps it.
    let active = env.app.store.active_devices(&alice).await.unwrap();
    assert_eq!(active, vec![device("ALICECLI01")]);
}

#[tokio::test]
async fn the_admin_scope_of_a_user_token_is_passed_on_only_when_configured() {
    let env = env().await;
    env.link_alice().await;
    let admin = env.token(json!({
        "sub": "alice-sub",
        "azp": "matrix-cli",
        "scope": "urn:matrix:client:api:* urn:matrix:client:device:ALICECLI01 urn:synapse:admin:*",
    }));
    let answer = env.introspect(&admin).await.unwrap();
    assert!(!answer["scope"]
        .as_str()
        .unwrap()
        .contains("urn:synapse:admin:*"));

    let env = env_with(&SHIM.replace(
        "user_tokens = true",
        "user_tokens = true\nuser_admin_scope = true",
    ))
    .await;
    env.link_alice().await;
    let admin = env.token(json!({
        "sub": "alice-sub",
        "azp": "matrix-cli",
        "scope": "urn:matrix:client:api:* urn:matrix:client:device:ALICECLI01 urn:synapse:admin:*",
    }));
    let answer = env.introspect(&admin).await.unwrap();
    assert!(answer["scope"]
        .as_str()
        .unwrap()
        .contains("urn:synapse:admin:*"));
}

#[tokio::test]
async fn tokens_issued_before_all_sessions_ended_stay_inactive_and_newer_ones_work() {
    let env = env().await;
    let alice = env.link_alice().await;
    // Issued a minute ago, seen (and cached) before the IdP ends the user's sessions.
    let old = env.alice_token(-60);
    assert!(env.introspect(&old).await.is_some());

    env.idp_event(
        "logout-1",
        IdpEvent::AllSessionsEnded {
            subject: "alice-sub".into(),
        },
    )
    .await;
    assert_eq!(
        env.introspect(&old).await,
        None,
        "the cached verdict is re-checked"
    );
    assert!(
        env.hs.devices(&alice).is_empty(),
        "the device is gone from the homeserver"
    );
    // Persisted: a restart keeps refusing it.
    let reloaded = super::SubjectRules::default();
    reloaded
        .load(env.app.store.as_ref(), &env.app.mapping.upstream_id)
        .await
        .unwrap();
    assert!(!reloaded.allows("alice-sub", now_unix() - 60));

    // A token from a sign-in after the event works, and gets its device back.
    let fresh = env.alice_token(5);
    assert!(env.introspect(&fresh).await.is_some());
    assert!(env.hs.devices(&alice).contains(&device("ALICECLI01")));
}

#[tokio::test]
async fn a_locked_user_has_no_active_token_until_unlocked() {
    let env = env().await;
    env.link_alice().await;
    let token = env.alice_token(-60);
    assert!(env.introspect(&token).await.is_some());
    env.idp_event(
        "lock-1",
        IdpEvent::UserLocked {
            subject: "alice-sub".into(),
        },
    )
    .await;
    assert_eq!(env.introspect(&token).await, None);
    assert_eq!(
        env.introspect(&env.alice_token(5)).await,
        None,
        "no token while locked"
    );
    env.idp_event(
        "unlock-1",
        IdpEvent::UserUnlocked {
            subject: "alice-sub".into(),
        },
    )
    .await;
    assert_eq!(env.introspect(&token).await, None, "issued before the lock");
    assert!(env.introspect(&env.alice_token(5)).await.is_some());
}

#[tokio::test]
async fn disabling_a_service_account_ends_its_session_and_device() {
    let env = env().await;
    let bot = Localpart::parse("ci-bot").unwrap();
    assert_eq!(env.hs.devices(&bot).len(), 1);
    let disabled = SHIM.replacen(
        "localpart = \"ci-bot\"",
        "localpart = \"ci-bot\"\nenabled = false",
        1,
    );
    let app = restart(&env, &disabled).await;
    let shim = app.jwt_shim.as_ref().unwrap();
    shim.provision_accounts(&app).await;
    crate::events::pipeline::run_due(&app, now_unix())
        .await
        .unwrap();
    assert!(env.hs.devices(&bot).is_empty(), "the device is removed");
    let token = env.bot_token();
    assert!(shim
        .introspect(&app, &token, now_unix())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_localpart_that_belongs_to_a_user_is_never_given_to_a_service_account() {
    let env = env().await;
    env.link_alice().await;
    let app = restart(
        &env,
        &SHIM.replace("localpart = \"ci-bot\"", "localpart = \"alice\""),
    )
    .await;
    let shim = app.jwt_shim.as_ref().unwrap();
    assert!(!shim.provision_accounts(&app).await);
    assert_eq!(shim.accounts_ready(), (0, 1));
    let token = env.bot_token();
    assert!(shim
        .introspect(&app, &token, now_unix())
        .await
        .unwrap()
        .is_none());
}

/// Auth0's real M2M token (fixtures/access-token-m2m-verifiable.json) against the tenant's
/// real key set, at a time when it was valid: its client is found in `azp` (and in `sub`
/// before `@clients`), and it maps to the configured account.
#[tokio::test]
async fn auth0s_real_m2m_token_verifies_with_its_published_keys() {
    const AUTH0: &str = r#"
[jwt_shim]
enabled = true

[[jwt_shim.issuers]]
issuer = "https://dev-ltxchcls4igzho78.us.auth0.com/"
jwks_uri = "https://dev-ltxchcls4igzho78.us.auth0.com/.well-known/jwks.json"
audiences = ["localhost"]

[[jwt_shim.issuers.service_accounts]]
client_id = "3JJeI4tmMC6v8mCVCSDnAGVf2vrnJ0BT"
localpart = "auth0-bot"
"#;
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/access-token-m2m-verifiable.json")).unwrap();
    let token = fixture["raw"].as_str().unwrap();
    let iat = fixture["payload"]["iat"].as_i64().unwrap();
    let jwks = include_bytes!("fixtures/jwks-dev-ltxchcls4igzho78.json");

    let idp = TestIdp::start().await;
    let hs = MemoryHomeserver::new("example.org");
    let app = crate::server::assemble(
        &config(&idp, AUTH0),
        Arc::new(SqliteStore::in_memory().await.unwrap()),
        Arc::new(hs.clone()),
        Arc::new(crate::provider::GenericOidc),
    )
    .unwrap();
    let shim = app.jwt_shim.as_ref().unwrap();
    // The tenant's keys as published, with no network.
    let keys = shim.key_cache(
        "https://dev-ltxchcls4igzho78.us.auth0.com/.well-known/jwks.json"
            .parse()
            .unwrap(),
    );
    keys.preload(jwks).unwrap();
    *shim.issuers[0].keys.write().unwrap() = Some(keys);
    assert!(shim.provision_accounts(&app).await);

    let answer = shim
        .introspect(&app, token, iat + 60)
        .await
        .unwrap()
        .expect("valid at iat + 60 s");
    let answer: Value = serde_json::from_str(&answer.answer(iat + 60)).unwrap();
    assert_eq!(answer["username"], "auth0-bot");
    assert_eq!(answer["client_id"], "3JJeI4tmMC6v8mCVCSDnAGVf2vrnJ0BT");
    assert_eq!(answer["sub"], "3JJeI4tmMC6v8mCVCSDnAGVf2vrnJ0BT@clients");

    // The same token today: expired (2023).
    let fresh = crate::server::assemble(
        &config(&idp, AUTH0),
        app.store.clone(),
        Arc::new(hs.clone()),
        Arc::new(crate::provider::GenericOidc),
    )
    .unwrap();
    let shim = fresh.jwt_shim.as_ref().unwrap();
    let keys = shim.key_cache(
        "https://dev-ltxchcls4igzho78.us.auth0.com/.well-known/jwks.json"
            .parse()
            .unwrap(),
    );
    keys.preload(jwks).unwrap();
    *shim.issuers[0].keys.write().unwrap() = Some(keys);
    shim.provision_accounts(&fresh).await;
    assert!(shim
        .introspect(&fresh, token, now_unix())
        .await
        .unwrap()
        .is_none());
    // One bit of the signature changed: refused at the time it was valid.
    let mut forged = token.to_owned();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert!(shim
        .introspect(&fresh, &forged, iat + 60)
        .await
        .unwrap()
        .is_none());
}

/// Okta's documented custom-authorization-server access token and a real Keycloak 26 access
/// token (fixtures/): the subject and the client are where each IdP puts them.
#[test]
fn okta_and_keycloak_access_tokens_name_their_subject_and_client() {
    let okta: serde_json::Map<String, Value> = serde_json::from_str(include_str!(
        "fixtures/access_token_jwt_payload_custom_as.json"
    ))
    .unwrap();
    assert_eq!(super::claims::subject(&okta), Some("00ujmkLgagxeRrAg20g3"));
    assert_eq!(
        super::claims::client_id(&okta),
        Some("nmdP1fcyvdVO11AL7ECm")
    );
    assert_eq!(
        super::claims::scopes(&okta),
        vec!["openid", "email", "flights", "custom"]
    );
    let keycloak: serde_json::Map<String, Value> =
        serde_json::from_str(include_str!("fixtures/access-token-claims-kc26.json")).unwrap();
    assert_eq!(
        super::claims::subject(&keycloak),
        Some("8befeac4-8963-49da-a9ac-f310e8d922d8")
    );
    assert_eq!(super::claims::client_id(&keycloak), Some("osss-client"));
    assert!(super::claims::native_grant(&super::claims::scopes(&keycloak)).is_none());
}

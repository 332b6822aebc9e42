//! The Keycloak adapter through core's real flow, in one process: the router over loopback
//! HTTP, core's test OpenID Provider answering with Keycloak-shaped claims, the in-memory
//! homeserver, SQLite in memory, and a small stand-in for Keycloak's admin REST API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use mxidp_core::app::App;
use mxidp_core::events::{IdpEvent, StoredEvent};
use mxidp_core::homeserver::MemoryHomeserver;
use mxidp_core::ids::Localpart;
use mxidp_core::secret::SecretString;
use mxidp_core::store::SqliteStore;
use mxidp_core::upstream::test_idp::{TestIdp, CLIENT_ID, CLIENT_SECRET};
use mxidp_keycloak::events::{sign, SIGNATURE_HEADER};
use mxidp_keycloak::{AdminApi, Keycloak};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use url::Url;

const SECRET: &str = "0123456789abcdef0123456789abcdef-synapse";
const WEBHOOK_SECRET: &str = "phase-two-webhook-secret";
const API: &str = "urn:matrix:org.matrix.msc2967.client:api:*";
const POLICY: &str = r#"
[policy]
access = { claim = "roles", value = "matrix-user" }
admin = { claim = "roles", value = "matrix-admin" }
"#;

struct Env {
    idp: TestIdp,
    app: App,
    hs: MemoryHomeserver,
    base: Url,
    http: reqwest::Client,
}

/// Builds the adapter from the configuration, as the binary does, then lets `customise` add
/// parts the configuration cannot point at here (the admin API stand-in).
async fn env(customise: impl FnOnce(Keycloak) -> Keycloak) -> Env {
    let idp = TestIdp::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base: Url = format!("http://{}/", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mxidp.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[http]
public_base = "{base}"
[database]
encryption_key = "test-encryption-key-0123456789abcdef"
[matrix]
homeserver = "example.org"
endpoint = "http://127.0.0.1:1/"
secret = "{SECRET}"
[upstream]
provider = "keycloak"
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "unused-here"
[adapters.keycloak]
webhook_secret = "{WEBHOOK_SECRET}"
{POLICY}
"#,
            issuer = idp.issuer()
        ),
    )
    .unwrap();
    let config = mxidp_core::config::Config::load(Some(&path)).unwrap();
    assert_eq!(config.check(), vec![]);
    let provider = customise(Keycloak::from_config(&config).unwrap());
    let hs = MemoryHomeserver::new("example.org");
    let store = Arc::new(SqliteStore::in_memory().await.unwrap());
    let app =
        mxidp_core::server::assemble(&config, store, Arc::new(hs.clone()), Arc::new(provider))
            .unwrap();
    let mut settings = idp.upstream_settings();
    settings.client_secret = SecretString::new(CLIENT_SECRET);
    app.upstream.set(idp.upstream_with(settings).await);
    let router = mxidp_core::server::router(app.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Env {
        idp,
        app,
        hs,
        base,
        http,
    }
}

fn location(r: &reqwest::Response) -> String {
    r.headers()[LOCATION].to_str().unwrap().to_owned()
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap() + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

fn s256(verifier: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl Env {
    fn url(&self, path: &str) -> Url {
        self.base.join(path).unwrap()
    }

    /// A sign-in of the IdP's next login on `device`: the callback's answer, the browser cookie,
    /// and what the client needs to redeem the code.
    async fn to_callback(&self, device: &str) -> (reqwest::Response, String, String, String) {
        let client: Value = self
            .http
            .post(self.url("oauth2/registration"))
            .json(&json!({
                "client_name": "Element", "client_uri": "https://client.example.org/",
                "redirect_uris": ["https://client.example.org/cb"], "application_type": "web",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"], "token_endpoint_auth_method": "none"
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let client_id = client["client_id"].as_str().unwrap().to_owned();
        let verifier = mxidp_core::ids::random_token(32);
        let mut url = self.url("oauth2/authorize");
        url.query_pairs_mut()
            .append_pair("client_id", &client_id)
            .append_pair("redirect_uri", "https://client.example.org/cb")
            .append_pair("response_type", "code")
            .append_pair(
                "scope",
                // Asks for the admin scope like an admin tool: whether it is granted is the
                // admin policy's decision (a user without matrix-admin never gets it).
                &format!(
                    "{API} urn:matrix:org.matrix.msc2967.client:device:{device} urn:synapse:admin:*"
                ),
            )
            .append_pair("state", "s")
            .append_pair("code_challenge", &s256(&verifier))
            .append_pair("code_challenge_method", "S256");
        let start = self.http.get(url).send().await.unwrap();
        assert_eq!(start.status(), StatusCode::SEE_OTHER);
        let cookie = start.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let back = self.http.get(location(&start)).send().await.unwrap();
        let mut answer = self
            .http
            .get(location(&back))
            .header(COOKIE, &cookie)
            .send()
            .await
            .unwrap();
        // The callback redirects to the consent page (post/redirect/get).
        if answer.status() == StatusCode::SEE_OTHER
            && location(&answer).starts_with(self.url("consent").as_str())
        {
            answer = self
                .http
                .get(location(&answer))
                .header(COOKIE, &cookie)
                .send()
                .await
                .unwrap();
        }
        (answer, cookie, client_id, verifier)
    }

    /// The whole sign-in and code exchange; returns the token response.
    async fn tokens(&self, device: &str) -> Value {
        let (page, cookie, client_id, verifier) = self.to_callback(device).await;
        assert_eq!(page.status(), StatusCode::OK);
        let html = page.text().await.unwrap();
        let done = self
            .http
            .post(self.url("consent"))
            .header(COOKIE, &cookie)
            .form(&[
                ("pending", hidden(&html, "pending").as_str()),
                ("csrf", hidden(&html, "csrf").as_str()),
                ("decision", "allow"),
            ])
            .send()
            .await
            .unwrap();
        let to: Url = location(&done).parse().unwrap();
        let code = to
            .query_pairs()
            .find(|(k, _)| k == "code")
            .unwrap()
            .1
            .into_owned();
        let answer = self
            .http
            .post(self.url("oauth2/token"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", "https://client.example.org/cb"),
                ("code_verifier", &verifier),
                ("client_id", &client_id),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        answer.json().await.unwrap()
    }

    async fn introspect(&self, token: &Value) -> Value {
        self.http
            .post(self.url("oauth2/introspect"))
            .bearer_auth(SECRET)
            .header("X-MAS-Supports-Device-Id", "1")
            .form(&[("token", token["access_token"].as_str().unwrap())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A Phase Two delivery, signed over exactly these bytes unless `signature` is given.
    async fn webhook(&self, body: &str, signature: Option<&str>) -> StatusCode {
        let signature = signature
            .map(str::to_owned)
            .unwrap_or_else(|| sign(WEBHOOK_SECRET, body.as_bytes()));
        self.http
            .post(self.url("upstream/webhook"))
            .header(SIGNATURE_HEADER, signature)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn stored_events(&self) -> Vec<StoredEvent> {
        self.app.store.list_events(None, 100).await.unwrap()
    }

    async fn run_pipeline(&self) {
        mxidp_core::events::run_due(&self.app, mxidp_core::ids::now_unix())
            .await
            .unwrap();
    }
}

/// A Keycloak login's claims as the realm import in deploy/keycloak/ maps them into the ID token
/// (shape of fixtures/access-token-claims-kc26.json).
fn keycloak_login(sub: &str, username: &str, realm_roles: &[&str]) -> Value {
    json!({
        "sub": sub, "preferred_username": username, "email": format!("{username}@example.org"),
        "email_verified": true, "sid": format!("sso-{sub}"),
        "realm_access": {"roles": realm_roles},
        "resource_access": {"account": {"roles": ["view-profile"]}}
    })
}

/// Phase Two's `admin.USER-*` body (ExtendedAdminEvent) for `users/<user>`.
fn admin_event(operation: &str, user: &str, representation: Option<Value>) -> String {
    let mut event = json!({
        "uid": mxidp_core::ids::random_token(8), "id": mxidp_core::ids::random_token(8),
        "time": mxidp_core::ids::now_unix() * 1000, "realmId": "test",
        "type": format!("admin.USER-{operation}"), "resourceType": "USER",
        "operationType": operation, "resourcePath": format!("users/{user}"),
        "authDetails": {"realmId": "test", "clientId": "admin-cli", "userId": "admin-id",
                        "ipAddress": "10.0.0.1", "username": "admin"},
        "details": {"userId": user}
    });
    if let Some(r) = representation {
        event["representation"] = json!(r.to_string());
    }
    serde_json::to_string_pretty(&event).unwrap()
}

#[tokio::test]
async fn the_matrix_admin_realm_role_grants_the_synapse_admin_scope() {
    let env = env(|k| k).await;
    env.idp.set_next_login(keycloak_login(
        "8befeac4-8963-49da-a9ac-f310e8d922d8",
        "pat",
        &["matrix-user", "matrix-admin"],
    ));
    let admin = env.introspect(&env.tokens("KCDEVICE0001").await).await;
    assert_eq!(admin["active"], true);
    assert!(admin["scope"]
        .as_str()
        .unwrap()
        .split(' ')
        .any(|s| s == "urn:synapse:admin:*"));
    assert_eq!(admin["username"], "pat");

    env.idp
        .set_next_login(keycloak_login("user-2", "sam", &["matrix-user"]));
    let user = env.introspect(&env.tokens("KCDEVICE0002").await).await;
    assert!(!user["scope"]
        .as_str()
        .unwrap()
        .contains("urn:synapse:admin"));
    // Keyed on (upstream id, sub), not on the adapter name.
    assert!(env
        .app
        .store
        .identity_by_subject(&env.app.mapping.upstream_id, "user-2")
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn without_the_access_role_the_login_is_refused_with_a_page_and_no_account() {
    let env = env(|k| k).await;
    // A client role of the same name is not the realm role.
    let mut login = keycloak_login("user-3", "eve", &["uma_authorization"]);
    login["resource_access"]["other-app"] = json!({"roles": ["matrix-user"]});
    env.idp.set_next_login(login);
    let (page, ..) = env.to_callback("KCDEVICE0003").await;
    assert_eq!(page.status(), StatusCode::FORBIDDEN);
    assert!(page.text().await.unwrap().contains("not given you access"));
    assert!(env
        .hs
        .calls()
        .iter()
        .all(|c| !c.starts_with("provision_user")));
    assert!(env
        .app
        .store
        .identity_by_subject(&env.app.mapping.upstream_id, "user-3")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_disabled_user_is_locked_and_signed_out() {
    let env = env(|k| k).await;
    let sub = "0b8f7a16-2d2c-4d67-8b5b-3f2f0d6c1a11";
    env.idp
        .set_next_login(keycloak_login(sub, "dana", &["matrix-user"]));
    let tokens = env.tokens("KCDEVICE0004").await;
    let dana = Localpart::parse("dana").unwrap();
    assert_eq!(env.hs.devices(&dana).len(), 1);

    // A wrong signature: 401 and nothing stored.
    let body = admin_event("UPDATE", sub, Some(json!({"enabled": false})));
    assert_eq!(
        env.webhook(&body, Some(&sign("not-the-secret", body.as_bytes())))
            .await,
        StatusCode::UNAUTHORIZED
    );
    assert!(env.stored_events().await.is_empty());

    assert_eq!(env.webhook(&body, None).await, StatusCode::OK);
    let stored = env.stored_events().await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].source, "webhook:keycloak");
    assert_eq!(
        stored[0].event,
        IdpEvent::UserLocked {
            subject: sub.into()
        }
    );
    env.run_pipeline().await;
    assert!(env.hs.user(&dana).unwrap().locked);
    assert!(env.hs.devices(&dana).is_empty());
    assert_eq!(env.introspect(&tokens).await["active"], false);
}

#[tokio::test]
async fn a_deleted_user_is_deactivated_and_the_localpart_tombstoned() {
    let env = env(|k| k).await;
    let sub = "5f0e2c1b-aaaa-bbbb-cccc-000000000001";
    env.idp
        .set_next_login(keycloak_login(sub, "lee", &["matrix-user"]));
    let tokens = env.tokens("KCDEVICE0005").await;
    assert_eq!(
        env.webhook(&admin_event("DELETE", sub, None), None).await,
        StatusCode::OK
    );
    env.run_pipeline().await;
    let lee = Localpart::parse("lee").unwrap();
    assert!(env.hs.user(&lee).unwrap().deactivated);
    assert_eq!(env.introspect(&tokens).await["active"], false);
    let identity = env
        .app
        .store
        .identity_by_subject(&env.app.mapping.upstream_id, sub)
        .await
        .unwrap()
        .unwrap();
    assert!(identity.deleted_at.is_some());
    // A new Keycloak user called "lee" does not inherit the Matrix account (the default
    // conflict policy refuses the login; never a silent link).
    env.idp
        .set_next_login(keycloak_login("another-sub", "lee", &["matrix-user"]));
    let (page, ..) = env.to_callback("KCDEVICE0006").await;
    assert_eq!(page.status(), StatusCode::FORBIDDEN);
    assert!(!env
        .hs
        .user(&lee)
        .unwrap()
        .devices
        .contains_key(&mxidp_core::ids::DeviceId::parse("KCDEVICE0006").unwrap()));
}

#[tokio::test]
async fn a_keycloak_logout_event_ends_the_sso_session() {
    let env = env(|k| k).await;
    env.idp
        .set_next_login(keycloak_login("user-7", "kim", &["matrix-user"]));
    let tokens = env.tokens("KCDEVICE0007").await;
    // access.LOGOUT names the SSO session in authDetails (fixtures/phasetwo-webhook-access-LOGIN.json).
    let body = json!({
        "uid": "u-1", "time": mxidp_core::ids::now_unix() * 1000, "realmId": "test",
        "type": "access.LOGOUT",
        "authDetails": {"realmId": "test", "clientId": CLIENT_ID, "userId": "user-7",
                        "ipAddress": "10.0.0.2", "username": "kim", "sessionId": "sso-user-7"},
        "details": {"redirect_uri": "https://example.org/"}
    })
    .to_string();
    assert_eq!(env.webhook(&body, None).await, StatusCode::OK);
    env.run_pipeline().await;
    assert_eq!(env.introspect(&tokens).await["active"], false);
    assert!(env.hs.devices(&Localpart::parse("kim").unwrap()).is_empty());
}

/// Keycloak's back-channel logout token (docs/providers.md, Keycloak): header `typ` `logout+jwt`
/// (≥ 25) or `JWT` (older), no `exp` before 23.0.4, `aud` a bare string, `sid` the SSO session.
#[tokio::test]
async fn keycloak_logout_tokens_are_accepted_by_the_core_receiver() {
    let env = env(|k| k).await;
    for (n, typ, exp) in [(8, "logout+jwt", true), (9, "JWT", false)] {
        let sub = format!("user-{n}");
        env.idp
            .set_next_login(keycloak_login(&sub, &format!("u{n}"), &["matrix-user"]));
        let tokens = env.tokens(&format!("KCDEVICE000{n}")).await;
        let now = mxidp_core::ids::now_unix();
        let mut claims = json!({
            "iat": now, "jti": mxidp_core::ids::random_token(16), "iss": env.idp.issuer(),
            "aud": CLIENT_ID, "sub": sub, "typ": "Logout", "sid": format!("sso-{sub}"),
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}}
        });
        if exp {
            claims["exp"] = json!(now + 120);
        }
        let mut header = TestIdp::default_header();
        header["typ"] = json!(typ);
        let token = env.idp.mint_id_token(header, claims);
        let answer = env
            .http
            .post(env.url("upstream/backchannel-logout"))
            .form(&[("logout_token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        env.run_pipeline().await;
        assert_eq!(env.introspect(&tokens).await["active"], false, "{typ}");
    }
}

/// A stand-in for Keycloak's token endpoint (client_credentials) and admin user lookup.
#[derive(Clone, Default)]
struct AdminDouble {
    users: Arc<Mutex<HashMap<String, bool>>>,
    lookups: Arc<Mutex<usize>>,
}

async fn admin_token(headers: HeaderMap, body: String) -> (StatusCode, Json<Value>) {
    use base64::Engine as _;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("mxidp-admin:admin-secret")
    );
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str())
        || body != "grant_type=client_credentials"
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "unauthorized_client"})),
        );
    }
    (
        StatusCode::OK,
        Json(json!({"access_token": "sa-token", "expires_in": 300, "token_type": "Bearer"})),
    )
}

async fn admin_user(
    State(double): State<AdminDouble>,
    headers: HeaderMap,
    Path((_realm, id)): Path<(String, String)>,
) -> (StatusCode, Json<Value>) {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer sa-token") {
        return (StatusCode::UNAUTHORIZED, Json(json!({})));
    }
    *double.lookups.lock().unwrap() += 1;
    match double.users.lock().unwrap().get(&id) {
        Some(enabled) => (
            StatusCode::OK,
            Json(json!({"id": id, "username": "x", "enabled": enabled})),
        ),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "User not found"})),
        ),
    }
}

async fn admin_double() -> (AdminDouble, Url) {
    let double = AdminDouble::default();
    let router = Router::new()
        .route(
            "/realms/test/protocol/openid-connect/token",
            post(admin_token),
        )
        .route("/admin/realms/{realm}/users/{id}", get(admin_user))
        .with_state(double.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}/realms/test", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (double, issuer.parse().unwrap())
}

#[tokio::test]
async fn a_partial_representation_is_confirmed_with_the_admin_api() {
    let (double, issuer) = admin_double().await;
    let api = AdminApi::for_issuer(
        &issuer,
        "mxidp-admin".into(),
        SecretString::new("admin-secret"),
        std::time::Duration::from_secs(5),
    )
    .unwrap();
    let env = env(|k| k.with_admin(api)).await;
    let sub = "c0ffee00-0000-4000-8000-000000000010";
    env.idp
        .set_next_login(keycloak_login(sub, "ola", &["matrix-user"]));
    env.tokens("KCDEVICE0010").await;
    double.users.lock().unwrap().insert(sub.into(), false);

    // The admin changed only the e-mail in the same request that disabled the user, without
    // "Include representation": Keycloak itself says the user is disabled.
    let body = admin_event("UPDATE", sub, None);
    assert_eq!(env.webhook(&body, None).await, StatusCode::OK);
    // Nothing is asked of Keycloak before the 2xx: the event worker reads the user back.
    assert_eq!(*double.lookups.lock().unwrap(), 0);
    env.run_pipeline().await;
    assert_eq!(*double.lookups.lock().unwrap(), 1);
    assert!(
        env.hs
            .user(&Localpart::parse("ola").unwrap())
            .unwrap()
            .locked
    );

    // Re-enabled, whatever a stale representation says.
    double.users.lock().unwrap().insert(sub.into(), true);
    let body = admin_event("UPDATE", sub, Some(json!({"enabled": false})));
    assert_eq!(env.webhook(&body, None).await, StatusCode::OK);
    env.run_pipeline().await;
    assert!(
        !env.hs
            .user(&Localpart::parse("ola").unwrap())
            .unwrap()
            .locked
    );

    // The same API answers reconciliation.
    use mxidp_core::provider::UserStatus;
    assert_eq!(
        env.app.provider.user_status(sub).await.unwrap(),
        UserStatus::Active
    );
    assert_eq!(
        env.app.provider.user_status("gone").await.unwrap(),
        UserStatus::Deleted
    );
    // An unverified delivery asks nothing of Keycloak.
    let before = *double.lookups.lock().unwrap();
    assert_eq!(
        env.webhook(&admin_event("UPDATE", sub, None), Some("00"))
            .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(*double.lookups.lock().unwrap(), before);
}

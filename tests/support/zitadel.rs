//! A ZITADEL double: an in-process axum server on 127.0.0.1:0 answering as one ZITADEL instance
//! (issuer = the instance root) with two organisations and one project, as ZITADEL's
//! documentation and the fixtures in `adapters/zitadel/tests/fixtures/` show:
//!
//! - `/.well-known/openid-configuration` (no `prompt_values_supported`, as zitadel/oidc);
//! - `/oauth/v2/authorize`: drops scopes it does not know, without an error (ZITADEL does),
//!   enforces the org scope `urn:zitadel:iam:org:id:{id}` at its login unless told to ignore
//!   it, shows the registration form for `prompt=create`, then a headless login form
//!   (`loginName`, `password`) and a redirect with `code` and `state`;
//! - `/oauth/v2/token` (`authorization_code` with PKCE S256, `refresh_token`;
//!   `client_secret_basic`): opaque access and refresh tokens, an ES256 ID token (`typ` JWT)
//!   with `sid` = the ZITADEL session and no profile claims (ZITADEL's default keeps them in
//!   userinfo);
//! - `/oauth/v2/keys` (one EC P-256 key), `/oidc/v1/userinfo` (profile, the project role claims
//!   `urn:zitadel:iam:org:project:roles` and `…:{projectId}:roles`, the resource owner claims
//!   when asked with `urn:zitadel:iam:user:resourceowner`);
//! - `/oauth/v2/introspect`: client authentication required (401 `invalid_client` otherwise),
//!   audience-bound (the token's `aud` must hold the caller's client id or project id), access
//!   tokens only (a refresh token is `active: false`), inactive once the user is deactivated,
//!   locked or removed or the session terminated;
//! - `/oauth/v2/revoke`: only tokens of the authenticating client;
//! - `GET /v2/users/{id}` behind a service user's personal access token (`USER_STATE_*`, 404
//!   once removed);
//! - the management calls of `deploy/zitadel/setup.sh`: `POST /management/v1/projects`,
//!   `…/projects/{id}/roles/_bulk`, `…/projects/{id}/apps/oidc`, `POST /v2/actions/targets`,
//!   `PUT /v2/actions/executions`;
//! - an Actions v2 sender: one `POST` per event to the target of each matching execution, JSON
//!   body with the object payload (≥ v4.1), `ZITADEL-Signature: t=…,v1=…` with the target's
//!   signing key, no retry; and a back-channel logout sender (`typ: JWT`, `sid`) for
//!   `session.terminated`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use sha2::Digest as _;
use url::Url;

use super::random_string;

/// The instance, its organisations and the project.
pub const INSTANCE_ID: &str = "336392597046034435";
pub const ACME_ORG: &str = "336392597046099971";
pub const ACME_DOMAIN: &str = "acme.zitadel.example";
pub const GLOBEX_ORG: &str = "336392597046099999";
pub const GLOBEX_DOMAIN: &str = "globex.zitadel.example";
pub const PROJECT_ID: &str = "336392597046165507";
/// The role that makes a Synapse admin (`[policy] admin`).
pub const ADMIN_ROLE: &str = "matrix-admin";
/// The Actions v2 target's signing key and the service user's personal access token.
pub const SIGNING_KEY: &str = "zitadel-target-signing-key-98KmsU67";
pub const SERVICE_USER_TOKEN: &str = "zitadel-double-service-user-pat";
/// The app that authenticates with `private_key_jwt`.
pub const KEY_CLIENT_ID: &str = "336512204935659523@mxidp";
/// The instance admin's token the setup script uses.
pub const ADMIN_TOKEN: &str = "zitadel-double-iam-owner-pat";

const EC_PRIVATE_PEM: &str = include_str!("keys/zitadel-double-ec-p256.pem");
const EC_X: &str = "UCpjk3DRayyIWczac_G4telrZD8nkI96iVhalVtcvKs";
const EC_Y: &str = "Sjgsy5BKW1Q4JvidPDwXMi7qAjqs5rFz--wBAizRTZY";
const KID: &str = "336392597046231043";
/// The double's mark of a removed user (ZITADEL forgets them: not found everywhere).
const REMOVED: &str = "removed";

/// A ZITADEL human user.
#[derive(Debug, Clone)]
pub struct ZUser {
    pub id: String,
    pub name: String,
    pub org: String,
    /// Project role keys granted by the user's organisation.
    pub roles: Vec<String>,
    /// `USER_STATE_ACTIVE`, `…_INACTIVE`, `…_LOCKED`; removed users are gone.
    pub state: String,
}

impl ZUser {
    pub fn new(name: &str) -> Self {
        Self {
            id: format!("3364948099{}", random_digits(8)),
            name: name.to_owned(),
            org: ACME_ORG.into(),
            roles: Vec::new(),
            state: "USER_STATE_ACTIVE".into(),
        }
    }

    pub fn role(mut self, role: &str) -> Self {
        self.roles.push(role.to_owned());
        self
    }

    /// A user of the other organisation.
    pub fn of_globex(mut self) -> Self {
        self.org = GLOBEX_ORG.into();
        self
    }

    fn login_name(&self) -> String {
        format!("{}@{}", self.name, org_domain(&self.org))
    }
}

fn org_domain(org: &str) -> &'static str {
    if org == GLOBEX_ORG {
        GLOBEX_DOMAIN
    } else {
        ACME_DOMAIN
    }
}

fn org_name(org: &str) -> &'static str {
    if org == GLOBEX_ORG {
        "Globex"
    } else {
        "Acme"
    }
}

fn random_digits(n: usize) -> String {
    use rand::Rng as _;
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| char::from(b'0' + rng.gen_range(0..10)))
        .collect()
}

/// What happens to an event's Actions v2 delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Sent once, as ZITADEL sends it.
    Sent,
    /// The delivery failed and ZITADEL does not retry: mxidp never hears of it.
    Dropped,
}

#[derive(Debug, Clone)]
struct Client {
    secret: String,
    /// The public key of a `private_key_jwt` app (PEM).
    public_key: Option<String>,
    redirect_uris: Vec<String>,
    back_channel_logout_uri: Option<String>,
}

#[derive(Debug, Clone)]
struct PendingLogin {
    client_id: String,
    redirect_uri: String,
    state: String,
    nonce: Option<String>,
    code_challenge: String,
    scopes: Vec<String>,
}

#[derive(Debug, Clone)]
struct Grant {
    client_id: String,
    user_id: String,
    session_id: String,
    scopes: Vec<String>,
    created: i64,
}

#[derive(Debug, Clone)]
struct Target {
    id: String,
    endpoint: Url,
    signing_key: String,
}

#[derive(Default)]
struct Instance {
    users: Vec<ZUser>,
    clients: HashMap<String, Client>,
    pending: HashMap<String, PendingLogin>,
    codes: HashMap<String, (PendingLogin, String)>,
    access: HashMap<String, Grant>,
    refresh: HashMap<String, Grant>,
    revoked: Vec<String>,
    /// session id → (user id, terminated).
    sessions: Vec<(String, String, bool)>,
    targets: Vec<Target>,
    /// (event type or group, target ids).
    executions: Vec<(Value, Vec<String>)>,
    sequences: HashMap<String, u64>,
    /// Status of every Actions delivery attempt (0: dropped).
    deliveries: Vec<u16>,
    /// Status of every back-channel logout sent.
    logouts: Vec<u16>,
    ignore_org_scope: bool,
    /// Personal access tokens created through the management API (service users).
    pats: Vec<String>,
    /// Bodies the management API received, as ("METHOD path", body).
    created: Vec<(String, Value)>,
    requests: Vec<String>,
}

struct Shared {
    issuer: String,
    instance: Mutex<Instance>,
    key: EncodingKey,
}

/// The running double; stops when dropped.
pub struct ZitadelDouble {
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for ZitadelDouble {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl ZitadelDouble {
    /// Starts the instance with these users and one confidential OIDC app in the project.
    pub async fn start(users: Vec<ZUser>, client_id: &str, client_secret: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            issuer,
            instance: Mutex::new(Instance {
                users,
                clients: HashMap::from([(
                    client_id.to_owned(),
                    Client {
                        secret: client_secret.to_owned(),
                        public_key: None,
                        redirect_uris: Vec::new(),
                        back_channel_logout_uri: None,
                    },
                )]),
                ..Instance::default()
            }),
            key: EncodingKey::from_ec_pem(EC_PRIVATE_PEM.as_bytes()).expect("test key"),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/oauth/v2/authorize", get(authorize))
            .route("/ui/login/login", post(login))
            .route("/oauth/v2/token", post(token))
            .route("/oauth/v2/keys", get(keys))
            .route("/oidc/v1/userinfo", get(userinfo).post(userinfo))
            .route("/oauth/v2/introspect", post(introspect))
            .route("/oauth/v2/revoke", post(revoke))
            .route("/v2/users/{id}", get(user))
            .route("/management/v1/projects", post(create_project))
            .route("/management/v1/projects/{id}/roles/_bulk", post(add_roles))
            .route("/management/v1/projects/{id}/apps/oidc", post(create_app))
            .route("/management/v1/users/machine", post(create_machine_user))
            .route("/management/v1/users/{id}/pats", post(create_pat))
            .route("/management/v1/orgs/me/members", post(add_org_member))
            .route("/v2/actions/targets", post(create_target))
            .route("/v2/actions/executions", put(set_execution))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { shared, server }
    }

    pub fn issuer(&self) -> Url {
        self.shared.issuer.parse().unwrap()
    }

    fn instance(&self) -> std::sync::MutexGuard<'_, Instance> {
        self.shared.instance.lock().unwrap()
    }

    pub fn user_id(&self, name: &str) -> String {
        self.instance()
            .users
            .iter()
            .find(|u| u.name == name)
            .unwrap_or_else(|| panic!("no user {name}"))
            .id
            .clone()
    }

    /// Registers mxidp's callback and back-channel logout URI on its app.
    pub fn configure_client(&self, client_id: &str, redirect_uri: Url, logout_uri: Url) {
        let mut i = self.instance();
        let c = i.clients.get_mut(client_id).unwrap();
        c.redirect_uris.push(redirect_uri.to_string());
        c.back_channel_logout_uri = Some(logout_uri.to_string());
    }

    /// An app authenticating with `private_key_jwt` (its public key), as a key added to an
    /// app in the Console.
    pub fn add_key_client(&self, client_id: &str, public_pem: &str, redirect_uri: Url) {
        self.instance().clients.insert(
            client_id.to_owned(),
            Client {
                secret: random_string(64),
                public_key: Some(public_pem.to_owned()),
                redirect_uris: vec![redirect_uri.to_string()],
                back_channel_logout_uri: None,
            },
        );
    }

    /// An Actions v2 target (REST webhook, JSON) with executions on these event types, as an
    /// admin sets it up.
    pub fn set_target(&self, endpoint: Url, signing_key: &str, events: &[&str]) {
        let mut i = self.instance();
        let id = random_digits(18);
        i.targets.push(Target {
            id: id.clone(),
            endpoint,
            signing_key: signing_key.to_owned(),
        });
        for e in events {
            i.executions
                .push((json!({"event": {"event": e}}), vec![id.clone()]));
        }
    }

    /// Lets users of any organisation through the login whatever the org scope says (a login
    /// UI that ignores it): what mxidp's own check of the claims is for.
    pub fn ignore_org_scope(&self) {
        self.instance().ignore_org_scope = true;
    }

    /// The ZITADEL session ids of a user, oldest first.
    pub fn sessions_of(&self, name: &str) -> Vec<String> {
        let id = self.user_id(name);
        self.instance()
            .sessions
            .iter()
            .filter(|(_, u, _)| *u == id)
            .map(|(s, _, _)| s.clone())
            .collect()
    }

    /// An admin acts on a user: the state changes as ZITADEL changes it, and the event goes to
    /// the executions' targets per `delivery`. Returns the delivered body.
    pub async fn act(&self, event_type: &str, name: &str, delivery: Delivery) -> Value {
        let id = self.user_id(name);
        {
            let mut i = self.instance();
            match event_type {
                "user.deactivated" => set_state(&mut i, &id, "USER_STATE_INACTIVE"),
                "user.locked" => set_state(&mut i, &id, "USER_STATE_LOCKED"),
                "user.reactivated" | "user.unlocked" => set_state(&mut i, &id, "USER_STATE_ACTIVE"),
                // Gone from every API; kept here so that tests can still name the id.
                "user.removed" => set_state(&mut i, &id, REMOVED),
                _ => {}
            }
        }
        self.emit(event_type, "user", &id, delivery).await
    }

    /// Changes a user's state and tells no one: what reconciliation must find by itself.
    pub fn set_state(&self, name: &str, state: &str) {
        let id = self.user_id(name);
        set_state(&mut self.instance(), &id, state);
    }

    /// The session is terminated (sign-out in the login UI, the Session API): the
    /// `session.terminated` event goes out per `delivery`, and a back-channel logout token to
    /// the app when `back_channel` is set.
    pub async fn terminate_session(
        &self,
        session_id: &str,
        delivery: Delivery,
        back_channel: bool,
    ) -> Value {
        let user_id = {
            let mut i = self.instance();
            let s = i
                .sessions
                .iter_mut()
                .find(|(s, _, _)| s == session_id)
                .expect("a session of the double");
            s.2 = true;
            s.1.clone()
        };
        let body = self
            .emit("session.terminated", "session", session_id, delivery)
            .await;
        if back_channel {
            self.send_logout(&user_id, session_id).await;
        }
        body
    }

    /// One back-channel logout token per app with a logout URI, as ZITADEL's notification
    /// worker sends it: `typ` JWT, `sid` the session, `sub` the user.
    async fn send_logout(&self, user_id: &str, session_id: &str) {
        let targets: Vec<(String, String)> = self
            .instance()
            .clients
            .iter()
            .filter_map(|(id, c)| Some((id.clone(), c.back_channel_logout_uri.clone()?)))
            .collect();
        for (client_id, uri) in targets {
            let iat = now() - 1;
            let token = self.shared.sign(&json!({
                "iss": self.shared.issuer, "sub": user_id, "aud": [client_id],
                "iat": iat, "exp": iat + 300, "jti": random_digits(18),
                "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
                "sid": session_id,
            }));
            let status = reqwest::Client::new()
                .post(uri)
                .form(&[("logout_token", token)])
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            self.instance().logouts.push(status);
        }
    }

    /// The body of an event execution call for this aggregate (the object payload of ≥ v4.1;
    /// the events mapped by mxidp carry none).
    pub fn event_body(&self, event_type: &str, aggregate_type: &str, aggregate_id: &str) -> Value {
        let mut i = self.instance();
        let sequence = {
            let s = i.sequences.entry(aggregate_id.to_owned()).or_insert(1);
            *s += 1;
            *s
        };
        let owner = i
            .users
            .iter()
            .find(|u| u.id == aggregate_id)
            .map_or(ACME_ORG.to_owned(), |u| u.org.clone());
        json!({
            "aggregateID": aggregate_id,
            "aggregateType": aggregate_type,
            "resourceOwner": owner,
            "instanceID": INSTANCE_ID,
            "version": if aggregate_type == "user" { "v2" } else { "v1" },
            "sequence": sequence,
            "event_type": event_type,
            "created_at": mxidp_core::audit::rfc3339(now()),
            // The admin who acted: never the subject.
            "userID": "336392597046755331",
        })
    }

    async fn emit(
        &self,
        event_type: &str,
        aggregate_type: &str,
        aggregate_id: &str,
        delivery: Delivery,
    ) -> Value {
        let body = self.event_body(event_type, aggregate_type, aggregate_id);
        let targets: Vec<Target> = {
            let i = self.instance();
            let group = format!("{}.*", event_type.split('.').next().unwrap());
            let ids: Vec<String> = i
                .executions
                .iter()
                .filter(|(c, _)| {
                    c["event"]["event"] == event_type
                        || c["event"]["all"] == true
                        || c["event"]["group"]
                            .as_str()
                            .is_some_and(|g| format!("{g}.*") == group)
                })
                .flat_map(|(_, t)| t.clone())
                .collect();
            i.targets
                .iter()
                .filter(|t| ids.contains(&t.id))
                .cloned()
                .collect()
        };
        for target in targets {
            let text = body.to_string();
            let status = match delivery {
                Delivery::Dropped => 0,
                Delivery::Sent => self.post_signed(&target, text.as_bytes()).await,
            };
            self.instance().deliveries.push(status);
        }
        body
    }

    async fn post_signed(&self, target: &Target, body: &[u8]) -> u16 {
        reqwest::Client::new()
            .post(target.endpoint.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                "ZITADEL-Signature",
                mxidp_zitadel::actions::signature_header(&target.signing_key, now(), body),
            )
            .body(body.to_vec())
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// Status of every Actions delivery (0: dropped) and of every logout token sent.
    pub fn deliveries(&self) -> Vec<u16> {
        self.instance().deliveries.clone()
    }

    pub fn logouts(&self) -> Vec<u16> {
        self.instance().logouts.clone()
    }

    pub fn created(&self) -> Vec<(String, Value)> {
        self.instance().created.clone()
    }

    pub fn requests(&self) -> Vec<String> {
        self.instance().requests.clone()
    }

    /// The registered targets as (endpoint, signing key) and the executions' conditions.
    pub fn actions(&self) -> (Vec<(Url, String)>, Vec<Value>) {
        let i = self.instance();
        (
            i.targets
                .iter()
                .map(|t| (t.endpoint.clone(), t.signing_key.clone()))
                .collect(),
            i.executions.iter().map(|(c, _)| c.clone()).collect(),
        )
    }
}

fn set_state(i: &mut Instance, id: &str, state: &str) {
    if let Some(u) = i.users.iter_mut().find(|u| u.id == id) {
        u.state = state.to_owned();
    }
}

fn record(s: &Shared, what: String) {
    s.instance.lock().unwrap().requests.push(what);
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// ZITADEL's API error shape (gRPC status in JSON).
fn api_error(status: StatusCode, code: u8, message: &str) -> Response {
    (
        status,
        Json(json!({"code": code, "message": message, "details": []})),
    )
        .into_response()
}

async fn discovery(State(s): State<Arc<Shared>>) -> Response {
    let i = &s.issuer;
    Json(json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/oauth/v2/authorize"),
        "token_endpoint": format!("{i}/oauth/v2/token"),
        "introspection_endpoint": format!("{i}/oauth/v2/introspect"),
        "userinfo_endpoint": format!("{i}/oidc/v1/userinfo"),
        "revocation_endpoint": format!("{i}/oauth/v2/revoke"),
        "end_session_endpoint": format!("{i}/oidc/v1/end_session"),
        "device_authorization_endpoint": format!("{i}/oauth/v2/device_authorization"),
        "jwks_uri": format!("{i}/oauth/v2/keys"),
        "scopes_supported": ["openid", "profile", "email", "phone", "address", "offline_access"],
        "response_types_supported": ["code", "id_token", "id_token token"],
        "grant_types_supported": ["authorization_code", "implicit", "refresh_token",
            "client_credentials", "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "urn:ietf:params:oauth:grant-type:device_code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"],
        "request_object_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post", "private_key_jwt"],
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post", "private_key_jwt"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
        "claims_supported": ["sub", "aud", "exp", "iat", "iss", "auth_time", "nonce", "acr", "amr",
            "c_hash", "at_hash", "act", "scopes", "client_id", "azp", "preferred_username", "name",
            "family_name", "given_name", "locale", "email", "email_verified", "phone_number",
            "phone_number_verified"],
        "code_challenge_methods_supported": ["S256"],
        "ui_locales_supported": ["en", "de"],
        "request_parameter_supported": true,
        "request_uri_parameter_supported": false,
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
    }))
    .into_response()
}

async fn keys() -> Response {
    Json(json!({"keys": [{
        "use": "sig", "kty": "EC", "kid": KID, "crv": "P-256", "alg": "ES256", "x": EC_X, "y": EC_Y,
    }]}))
    .into_response()
}

/// Scopes ZITADEL keeps; everything else is dropped without an error.
fn allowed_scope(scope: &str) -> bool {
    matches!(
        scope,
        "openid" | "profile" | "email" | "phone" | "address" | "offline_access"
    ) || scope == "urn:zitadel:iam:org:projects:roles"
        || scope == "urn:zitadel:iam:user:resourceowner"
        || scope == "urn:zitadel:iam:user:metadata"
        || scope.starts_with("urn:zitadel:iam:org:id:")
        || scope.starts_with("urn:zitadel:iam:org:project:role:")
        || scope.starts_with("urn:zitadel:iam:org:project:id:")
}

fn error_page(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Html(format!(
            "<html><head><title>ZITADEL</title></head><body><div class=\"lgn-error\">{message}</div></body></html>"
        )),
    )
        .into_response()
}

async fn authorize(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    record(&s, "GET /oauth/v2/authorize".into());
    let (Some(client_id), Some(redirect_uri)) = (q.get("client_id"), q.get("redirect_uri")) else {
        return error_page("invalid_request: client_id and redirect_uri are required");
    };
    let mut i = s.instance.lock().unwrap();
    let Some(client) = i.clients.get(client_id) else {
        return error_page("Errors.App.NotFound");
    };
    if !client.redirect_uris.contains(redirect_uri) {
        return error_page("The requested redirect_uri is missing in the client configuration.");
    }
    let state = q.get("state").cloned().unwrap_or_default();
    if q.get("response_type").map(String::as_str) != Some("code") {
        return error_page("unsupported_response_type");
    }
    let (Some(challenge), Some("S256")) = (
        q.get("code_challenge"),
        q.get("code_challenge_method").map(String::as_str),
    ) else {
        return error_page("invalid_request: code_challenge with S256 is required");
    };
    let scopes: Vec<String> = q
        .get("scope")
        .map(|s| {
            s.split(' ')
                .filter(|s| allowed_scope(s))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let id = random_digits(18);
    let prompt = q.get("prompt").cloned().unwrap_or_default();
    i.requests
        .push(format!("authorize scopes={}", scopes.join(" ")));
    if !prompt.is_empty() {
        i.requests.push(format!("authorize prompt={prompt}"));
    }
    i.pending.insert(
        id.clone(),
        PendingLogin {
            client_id: client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            state,
            nonce: q.get("nonce").cloned(),
            code_challenge: challenge.clone(),
            scopes,
        },
    );
    let register = if prompt.split(' ').any(|p| p == "create") {
        "<h1 id=\"register-title\">Register</h1>"
    } else {
        ""
    };
    Html(format!(
        r#"<!DOCTYPE html><html><head><title>ZITADEL Login</title></head><body>{register}
<form id="zitadel-login" method="post" action="/ui/login/login?authRequestID={id}">
<input id="loginName" name="loginName" type="text"><input id="password" name="password" type="password">
<button type="submit" name="submit">next</button></form></body></html>"#
    ))
    .into_response()
}

async fn login(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    record(&s, "POST /ui/login/login".into());
    let mut i = s.instance.lock().unwrap();
    let Some(pending) = q.get("authRequestID").and_then(|t| i.pending.remove(t)) else {
        return error_page("Errors.AuthRequest.NotFound");
    };
    let name = f.get("loginName").cloned().unwrap_or_default();
    let Some(user) = i
        .users
        .iter()
        .find(|u| (u.login_name() == name || u.name == name) && u.state != REMOVED)
        .cloned()
    else {
        return error_page("User could not be found");
    };
    // The org scope: the login only knows users of that organisation.
    let wanted_org = pending
        .scopes
        .iter()
        .find_map(|s| s.strip_prefix("urn:zitadel:iam:org:id:"));
    if wanted_org.is_some_and(|o| o != user.org) && !i.ignore_org_scope {
        return error_page("User could not be found");
    }
    if user.state != "USER_STATE_ACTIVE" {
        return error_page("User is not active");
    }
    let session = random_digits(18);
    i.sessions.push((session.clone(), user.id.clone(), false));
    let code = random_string(43);
    let mut to: Url = pending.redirect_uri.parse().unwrap();
    to.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &pending.state);
    i.codes
        .insert(code, (pending, format!("{}:{session}", user.id)));
    Redirect::to(to.as_str()).into_response()
}

/// The authenticated client: `client_secret_basic`, or `private_key_jwt` as ZITADEL checks it
/// (`iss` = `sub` = the client id, `aud` holds the issuer, signed with the app's key).
fn client_auth(
    s: &Shared,
    i: &Instance,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<String> {
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return basic_client(i, headers);
    }
    let assertion = form.get("client_assertion")?;
    let kid_client = form.get("client_id")?;
    let public = i.clients.get(kid_client)?.public_key.as_ref()?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&[&s.issuer]);
    v.set_issuer(&[kid_client]);
    v.sub = Some(kid_client.clone());
    let key = jsonwebtoken::DecodingKey::from_ec_pem(public.as_bytes()).ok()?;
    jsonwebtoken::decode::<Value>(assertion, &key, &v).ok()?;
    Some(kid_client.clone())
}

fn basic_client(i: &Instance, headers: &HeaderMap) -> Option<String> {
    let basic = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(basic)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let (id, secret) = (unescape(id), unescape(secret));
    (i.clients.get(&id)?.secret == secret).then_some(id)
}

impl Shared {
    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
        header.typ = Some("JWT".into());
        header.kid = Some(KID.to_owned());
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign")
    }

    fn issue(
        &self,
        i: &mut Instance,
        grant: &Grant,
        nonce: Option<&str>,
        refresh: Option<String>,
    ) -> Value {
        let iat = now();
        let access_token = format!("{}{}", random_string(40), random_digits(10));
        let digest = sha2::Sha256::digest(access_token.as_bytes());
        let mut id = json!({
            "iss": self.issuer, "sub": grant.user_id,
            "aud": [grant.client_id, PROJECT_ID], "azp": grant.client_id,
            "exp": iat + 43200, "iat": iat, "auth_time": grant.created,
            "amr": ["password", "pwd"], "at_hash": b64url(&digest[..16]),
            "sid": grant.session_id, "client_id": grant.client_id,
        });
        if let Some(nonce) = nonce {
            id["nonce"] = json!(nonce);
        }
        let id_token = self.sign(&id);
        i.access.insert(access_token.clone(), grant.clone());
        let refresh_token = refresh.unwrap_or_else(|| random_string(60));
        i.refresh.insert(refresh_token.clone(), grant.clone());
        json!({
            "access_token": access_token, "token_type": "Bearer", "expires_in": 43199,
            "id_token": id_token, "refresh_token": refresh_token,
        })
    }
}

/// Whether a grant's tokens still work: the user active, the session not terminated.
fn live(i: &Instance, grant: &Grant) -> bool {
    let active = i
        .users
        .iter()
        .any(|u| u.id == grant.user_id && u.state == "USER_STATE_ACTIVE");
    let session_open = i
        .sessions
        .iter()
        .any(|(s, _, terminated)| *s == grant.session_id && !terminated);
    active && session_open
}

async fn token(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let grant_type = f.get("grant_type").cloned().unwrap_or_default();
    record(&s, format!("POST /oauth/v2/token {grant_type}"));
    let mut i = s.instance.lock().unwrap();
    let Some(client_id) = client_auth(&s, &i, &headers, &f) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    };
    match grant_type.as_str() {
        "authorization_code" => {
            let Some((login, who)) = f.get("code").and_then(|c| i.codes.remove(c)) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "invalid code");
            };
            if login.client_id != client_id || f.get("redirect_uri") != Some(&login.redirect_uri) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "redirect_uri mismatch",
                );
            }
            let verified = f.get("code_verifier").is_some_and(|v| {
                b64url(&sha2::Sha256::digest(v.as_bytes())) == login.code_challenge
            });
            if !verified {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "invalid code challenge",
                );
            }
            let (user_id, session_id) = who.split_once(':').unwrap();
            let grant = Grant {
                client_id,
                user_id: user_id.to_owned(),
                session_id: session_id.to_owned(),
                scopes: login.scopes.clone(),
                created: now(),
            };
            Json(s.issue(&mut i, &grant, login.nonce.as_deref(), None)).into_response()
        }
        "refresh_token" => {
            let token = f.get("refresh_token").cloned().unwrap_or_default();
            let Some(grant) = i.refresh.get(&token).cloned() else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Errors.OIDCSession.RefreshTokenInvalid",
                );
            };
            if grant.client_id != client_id || !live(&i, &grant) || i.revoked.contains(&token) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Errors.OIDCSession.RefreshTokenInvalid",
                );
            }
            Json(s.issue(&mut i, &grant, None, Some(token))).into_response()
        }
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant type not supported",
        ),
    }
}

fn roles_claim(user: &ZUser) -> Value {
    let grants: serde_json::Map<String, Value> = user
        .roles
        .iter()
        .map(|r| {
            (
                r.clone(),
                json!({ user.org.clone(): org_domain(&user.org) }),
            )
        })
        .collect();
    Value::Object(grants)
}

async fn userinfo(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    record(&s, "GET /oidc/v1/userinfo".into());
    let i = s.instance.lock().unwrap();
    let grant = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !i.revoked.iter().any(|r| r == t))
        .and_then(|t| i.access.get(t))
        .filter(|g| live(&i, g));
    let Some(grant) = grant else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_token", "error_description": "Errors.Token.Invalid"})),
        )
            .into_response();
    };
    let user = i.users.iter().find(|u| u.id == grant.user_id).unwrap();
    let has = |scope: &str| grant.scopes.iter().any(|s| s == scope);
    let mut claims = json!({"sub": user.id});
    if has("profile") {
        claims["name"] = json!(format!("{} Example", user.name));
        claims["given_name"] = json!(user.name);
        claims["family_name"] = json!("Example");
        claims["preferred_username"] = json!(user.login_name());
        claims["locale"] = json!("en");
        claims["updated_at"] = json!(now() - 86400);
    }
    if has("email") {
        claims["email"] = json!(format!("{}@example.org", user.name));
        claims["email_verified"] = json!(true);
    }
    // Roles of the app's own project (project setting "assert roles on authentication"), and
    // per project when asked for.
    if !user.roles.is_empty() {
        claims["urn:zitadel:iam:org:project:roles"] = roles_claim(user);
        if has("urn:zitadel:iam:org:projects:roles") {
            claims[format!("urn:zitadel:iam:org:project:{PROJECT_ID}:roles")] = roles_claim(user);
        }
    }
    if has("urn:zitadel:iam:user:resourceowner") {
        claims["urn:zitadel:iam:user:resourceowner:id"] = json!(user.org);
        claims["urn:zitadel:iam:user:resourceowner:name"] = json!(org_name(&user.org));
        claims["urn:zitadel:iam:user:resourceowner:primary_domain"] = json!(org_domain(&user.org));
    }
    Json(claims).into_response()
}

async fn introspect(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    record(&s, "POST /oauth/v2/introspect".into());
    let i = s.instance.lock().unwrap();
    let Some(caller) = client_auth(&s, &i, &headers, &f) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    };
    let token = f.get("token").cloned().unwrap_or_default();
    // Access tokens only; the audience must hold the caller or its project.
    let answer = match i.access.get(&token) {
        Some(grant)
            if live(&i, grant)
                && !i.revoked.contains(&token)
                && [grant.client_id.as_str(), PROJECT_ID].contains(&caller.as_str()) =>
        {
            let user = i.users.iter().find(|u| u.id == grant.user_id).unwrap();
            json!({"active": true, "scope": grant.scopes.join(" "), "client_id": grant.client_id,
                "token_type": "Bearer", "exp": grant.created + 43200, "iat": grant.created,
                "auth_time": grant.created, "nbf": grant.created, "sub": user.id,
                "aud": [grant.client_id, PROJECT_ID], "iss": s.issuer,
                "jti": format!("V2_{}-at_{}", grant.session_id, random_digits(18)),
                "username": user.login_name()})
        }
        _ => json!({"active": false}),
    };
    Json(answer).into_response()
}

async fn revoke(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    record(&s, "POST /oauth/v2/revoke".into());
    let mut i = s.instance.lock().unwrap();
    let Some(caller) = client_auth(&s, &i, &headers, &f) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    };
    let token = f.get("token").cloned().unwrap_or_default();
    let owner = i
        .access
        .get(&token)
        .or_else(|| i.refresh.get(&token))
        .map(|g| g.client_id.clone());
    if owner.is_some_and(|o| o != caller) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "token was not issued for this client",
        );
    }
    i.revoked.push(token);
    StatusCode::OK.into_response()
}

fn bearer_is(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(format!("Bearer {token}").as_str())
}

async fn user(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    record(&s, format!("GET /v2/users/{id}"));
    let i = s.instance.lock().unwrap();
    let known = std::iter::once(SERVICE_USER_TOKEN)
        .chain(i.pats.iter().map(String::as_str))
        .any(|t| bearer_is(&headers, t));
    if !known {
        return api_error(
            StatusCode::UNAUTHORIZED,
            16,
            "Errors.Token.Invalid (AUTH-7fs1e)",
        );
    }
    match i.users.iter().find(|u| u.id == id && u.state != REMOVED) {
        None => api_error(
            StatusCode::NOT_FOUND,
            5,
            "User could not be found (QUERY-Dfbg2)",
        ),
        Some(u) => Json(json!({
            "details": {"sequence": "12", "changeDate": "2025-09-05T08:55:36.156333Z",
                "resourceOwner": u.org},
            "user": {"userId": u.id, "details": {"resourceOwner": u.org}, "state": u.state,
                "username": u.login_name(), "loginNames": [u.login_name()],
                "preferredLoginName": u.login_name(),
                "human": {"profile": {"givenName": u.name, "familyName": "Example",
                    "displayName": format!("{} Example", u.name)},
                    "email": {"email": format!("{}@example.org", u.name), "isVerified": true}}},
        }))
        .into_response(),
    }
}

fn admin(headers: &HeaderMap) -> Option<Response> {
    (!bearer_is(headers, ADMIN_TOKEN)).then(|| {
        api_error(
            StatusCode::UNAUTHORIZED,
            16,
            "Errors.Token.Invalid (AUTH-7fs1e)",
        )
    })
}

async fn create_project(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(&s, "POST /management/v1/projects".into());
    if let Some(refused) = admin(&headers) {
        return refused;
    }
    if body["name"].as_str().is_none_or(str::is_empty) {
        return api_error(StatusCode::BAD_REQUEST, 3, "invalid AddProjectRequest.Name");
    }
    s.instance
        .lock()
        .unwrap()
        .created
        .push(("POST /management/v1/projects".into(), body));
    Json(json!({"id": PROJECT_ID, "details": {"sequence": "1", "resourceOwner": ACME_ORG}}))
        .into_response()
}

async fn add_roles(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let what = format!("POST /management/v1/projects/{id}/roles/_bulk");
    record(&s, what.clone());
    if let Some(refused) = admin(&headers) {
        return refused;
    }
    if id != PROJECT_ID || !body["roles"].is_array() {
        return api_error(
            StatusCode::BAD_REQUEST,
            3,
            "invalid BulkAddProjectRolesRequest",
        );
    }
    s.instance.lock().unwrap().created.push((what, body));
    Json(json!({"details": {"sequence": "2", "resourceOwner": ACME_ORG}})).into_response()
}

async fn create_app(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let what = format!("POST /management/v1/projects/{id}/apps/oidc");
    record(&s, what.clone());
    if let Some(refused) = admin(&headers) {
        return refused;
    }
    let redirect_uris: Vec<String> = body["redirectUris"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if id != PROJECT_ID
        || redirect_uris.is_empty()
        || body["authMethodType"] != "OIDC_AUTH_METHOD_TYPE_BASIC"
    {
        return api_error(StatusCode::BAD_REQUEST, 3, "invalid AddOIDCAppRequest");
    }
    let client_id = format!("{}@mxidp", random_digits(18));
    let secret = random_string(64);
    let mut i = s.instance.lock().unwrap();
    i.clients.insert(
        client_id.clone(),
        Client {
            secret: secret.clone(),
            public_key: None,
            redirect_uris,
            back_channel_logout_uri: body["backChannelLogoutUri"].as_str().map(str::to_owned),
        },
    );
    i.created.push((what, body));
    Json(
        json!({"appId": random_digits(18), "clientId": client_id, "clientSecret": secret,
        "details": {"sequence": "3", "resourceOwner": ACME_ORG}, "noneCompliant": false}),
    )
    .into_response()
}

async fn create_machine_user(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(&s, "POST /management/v1/users/machine".into());
    if let Some(refused) = admin(&headers) {
        return refused;
    }
    if body["userName"].as_str().is_none_or(str::is_empty) || body["name"].as_str().is_none() {
        return api_error(StatusCode::BAD_REQUEST, 3, "invalid AddMachineUserRequest");
    }
    let mut i = s.instance.lock().unwrap();
    i.created
        .push(("POST /management/v1/users/machine".into(), body));
    Json(json!({"userId": random_digits(18), "details": {"sequence": "4", "resourceOwner": ACME_ORG}}))
        .into_response()
}

async fn create_pat(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let what = format!("POST /management/v1/users/{id}/pats");
    record(&s, what.clone());
    if let Some(refused) = admin(&headers) {
        return refused;
    }
    let token = random_string(64);
    let mut i = s.instance.lock().unwrap();
    i.pats.push(token.clone());
    i.created.push((what, Value::Null));
    Json(json!({"tokenId": random_digits(18), "token": token,
        "details": {"sequence": "5", "resourceOwner": ACME_ORG}}))
    .into_response()
}

async fn add_org_member(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(&s, "POST /management/v1/orgs/me/members".into());
    if let Some(refused) = admin(&headers) {
        return refused;
    }
    if body["userId"].as_str().is_none() || !body["roles"].is_array() {
        return api_error(StatusCode::BAD_REQUEST, 3, "invalid AddOrgMemberRequest");
    }
    s.instance
        .lock()
        .unwrap()
        .created
        .push(("POST /management/v1/orgs/me/members".into(), body));
    Json(json!({"details": {"sequence": "6", "resourceOwner": ACME_ORG}})).into_response()
}

async fn create_target(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(&s, "POST /v2/actions/targets".into());
    if let Some(refused) = admin(&headers) {
        return refused;
    }
    let (Some(endpoint), true) = (
        body["endpoint"].as_str().and_then(|e| Url::parse(e).ok()),
        body["restWebhook"].is_object() && body["name"].is_string(),
    ) else {
        return api_error(StatusCode::BAD_REQUEST, 3, "invalid CreateTargetRequest");
    };
    let id = random_digits(18);
    let signing_key = random_string(8);
    let mut i = s.instance.lock().unwrap();
    i.targets.push(Target {
        id: id.clone(),
        endpoint,
        signing_key: signing_key.clone(),
    });
    i.created.push(("POST /v2/actions/targets".into(), body));
    Json(
        json!({"id": id, "creationDate": mxidp_core::audit::rfc3339(now()),
        "signingKey": signing_key}),
    )
    .into_response()
}

async fn set_execution(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(&s, "PUT /v2/actions/executions".into());
    if let Some(refused) = admin(&headers) {
        return refused;
    }
    let mut i = s.instance.lock().unwrap();
    let targets: Vec<String> = body["targets"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let event = &body["condition"]["event"]["event"];
    // ZITADEL checks the event name exists: `user.human.deactivated` does not.
    let known = event.as_str().is_some_and(|e| {
        mxidp_zitadel::actions::EVENT_TYPES.contains(&e) || e == "user.human.added"
    });
    if !known || targets.is_empty() || !targets.iter().all(|t| i.targets.iter().any(|x| &x.id == t))
    {
        return api_error(
            StatusCode::NOT_FOUND,
            5,
            "Errors.Execution.ConditionInvalid",
        );
    }
    i.executions.push((body["condition"].clone(), targets));
    i.created.push(("PUT /v2/actions/executions".into(), body));
    Json(json!({"setDate": mxidp_core::audit::rfc3339(now())})).into_response()
}

impl super::stack::Stack<ZitadelDouble> {
    /// The ZITADEL double (mxidp's app in the project with a back-channel logout URI, an
    /// Actions v2 target on mxidp's webhook with executions on every event mxidp maps),
    /// Synapse, and mxidp in this process with `provider = "zitadel"`, `[adapters.zitadel]`
    /// (organisation Acme, the signing key, the service user's token) and `[policy] admin` =
    /// project role `matrix-admin`. Reconciliation is left at the adapter's default (on, every
    /// hour): the tests run rounds themselves.
    pub async fn zitadel(users: Vec<ZUser>) -> Self {
        Self::zitadel_with(users, false).await
    }

    /// The same, with mxidp's app authenticating with `private_key_jwt` (client
    /// `mxidp-key`, ZITADEL's JSON key file) instead of a secret.
    pub async fn zitadel_with(users: Vec<ZUser>, private_key_jwt: bool) -> Self {
        use super::stack::{CLIENT_ID, CLIENT_SECRET};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mxidp: Url = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let idp = ZitadelDouble::start(users, CLIENT_ID, CLIENT_SECRET).await;
        idp.configure_client(
            CLIENT_ID,
            mxidp.join("upstream/callback").unwrap(),
            mxidp.join("upstream/backchannel-logout").unwrap(),
        );
        idp.set_target(
            mxidp.join("upstream/webhook").unwrap(),
            SIGNING_KEY,
            mxidp_zitadel::actions::EVENT_TYPES,
        );
        let client = if private_key_jwt {
            idp.add_key_client(
                KEY_CLIENT_ID,
                include_str!("keys/zitadel-app-key-ec-p256.pub.pem"),
                mxidp.join("upstream/callback").unwrap(),
            );
            // As the Console downloads it.
            let file =
                std::env::temp_dir().join(format!("mxidp-zitadel-key-{}.json", random_string(12)));
            std::fs::write(
                &file,
                json!({"type": "application", "keyId": random_digits(18),
                    "key": include_str!("keys/zitadel-app-key-ec-p256.pem"),
                    "appId": random_digits(18), "clientId": KEY_CLIENT_ID})
                .to_string(),
            )
            .unwrap();
            format!(
                "client_id = \"{KEY_CLIENT_ID}\"\nauth_method = \"private_key_jwt\"\nclient_key_file = \"{}\"",
                file.display()
            )
        } else {
            format!("client_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"")
        };
        let issuer = idp.issuer();
        Self::assemble(
            idp,
            listener,
            mxidp,
            &format!(
                r#"[upstream]
issuer = "{issuer}"
provider = "zitadel"
{client}
scopes = ["openid", "profile", "email", "offline_access"]
[adapters.zitadel]
organization_id = "{ACME_ORG}"
signing_key = "{SIGNING_KEY}"
service_user_token = "{SERVICE_USER_TOKEN}"
[policy]
admin = {{ claim = "roles", value = "{ADMIN_ROLE}" }}
"#
            ),
            false,
            |config| {
                Arc::new(
                    mxidp_zitadel::Zitadel::from_config(config)
                        .unwrap_or_else(|p| panic!("zitadel adapter config: {p:?}")),
                )
            },
        )
        .await
    }
}

//! An Auth0 double: an in-process axum server on 127.0.0.1:0 answering as an Auth0 tenant, as
//! Auth0's documentation and the fixtures in `adapters/auth0/tests/fixtures/` show:
//!
//! - `/.well-known/openid-configuration`: the real tenant's document (no introspection endpoint,
//!   `revocation_endpoint` `/oauth/revoke`), with this server's URLs; the issuer ends in `/`;
//! - `/authorize` → `/u/login?state=…` (or `/u/signup` on `screen_hint=signup`): a headless
//!   Universal Login form, then a redirect with `code` and `state`. Without `audience` the access
//!   token is opaque and encrypted (five segments), as Auth0 issues it; an unknown audience is
//!   refused ("Service not found");
//! - `/oauth/token`: `authorization_code` with PKCE, `refresh_token`, and `client_credentials`
//!   for the Management API's M2M client; RS256 JWTs with Auth0's claims (`aud` array of the API
//!   and `/userinfo`, `azp`, the Action's namespaced roles claim, the ID token's `sid`);
//! - `/.well-known/jwks.json`, `/userinfo`, `/oauth/revoke` (refresh tokens only);
//! - the Management API behind an M2M bearer token: `GET|PATCH|DELETE /api/v2/users/{id}`
//!   (every successful write logged as `sapi` with the admin in `user_id` and the target
//!   URL-encoded in the path), `POST|GET /api/v2/log-streams`, `POST /api/v2/resource-servers`,
//!   `POST /api/v2/actions/actions`, `POST /api/v2/actions/actions/{id}/deploy`,
//!   `PATCH /api/v2/actions/triggers/post-login/bindings`, with `x-ratelimit-*` headers;
//! - a Log Stream sender: the configured `Authorization` value, the stream's content format
//!   (JSON array, JSON Lines, or one object per request), up to three attempts per delivery.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use sha2::Digest as _;
use url::Url;

use super::random_string;

/// The identifier of the API registered for mxidp.
pub const AUDIENCE: &str = "https://matrix.example.org/api";
/// The namespaced claim the post-login Action fills with the user's roles.
pub const ROLES_CLAIM: &str = "https://matrix.example.org/roles";
pub const ADMIN_ROLE: &str = "matrix-admin";
/// The machine-to-machine application allowed on the Management API.
pub const M2M_CLIENT_ID: &str = "m2mDoubleClient0000000000000001";
pub const M2M_CLIENT_SECRET: &str = "m2m-double-secret-for-tests";
/// The Log Stream's `Authorization` value.
pub const LOG_STREAM_AUTHORIZATION: &str = "Bearer auth0-log-stream-secret-for-tests";
/// Management API calls allowed per window (Auth0's bucket, scaled down).
pub const MANAGEMENT_BUDGET: u32 = 1000;

/// The test signing key of `tests/support/keys` (RSA-2048, generated for these tests only).
const RSA_PRIVATE_PEM: &str = include_str!("keys/keycloak-double-rsa.pem");
const RSA_N: &str = "zz9HVCCaS5mLpUP9MFAOqLM55gpXuILkm1fyOyepSOROmVI-Q1j-LKk4PGU7OUBNrUO7otLJIcD1ywiX8t1xJjcz-gVydbruyA1VBPTMPRJnsTXX-ybGw1SCDBfsFdKU25J8gyTZmSVwjy1CgZBsxlpQAry9s8vUvtzxzlL8l3AqjewXkwLs3MdgHf3Bt-69ETInPUtRw6TZ3Z6rq56j6Be7t8Cj0QoDaX0K0c45C4nFjav23wjUWbqSaTdlhvo_xPc0lL92L_bJu2z3_Tt7GuFF0gHcVEga33gHGcCCdXOec3LS6LeSwJtue50iGJiKo0JD5Y9gjPJ1tgGgWCDJCQ";
const KID: &str = "tMQzailSAdaW4nojXxES9";

/// An Auth0 user of the database connection.
#[derive(Debug, Clone)]
pub struct Auth0User {
    /// `auth0|<24 hex>`: the `sub`.
    pub id: String,
    pub email: String,
    pub roles: Vec<String>,
    pub blocked: bool,
}

impl Auth0User {
    pub fn new(name: &str) -> Self {
        let hex: String = sha2::Sha256::digest(name.as_bytes())[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            id: format!("auth0|{hex}"),
            email: format!("{name}@example.org"),
            roles: Vec::new(),
            blocked: false,
        }
    }

    pub fn role(mut self, role: &str) -> Self {
        self.roles.push(role.to_owned());
        self
    }
}

/// `httpContentFormat` of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Array,
    Lines,
    Object,
}

impl Format {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "JSONARRAY" => Some(Format::Array),
            "JSONLINES" => Some(Format::Lines),
            "JSONOBJECT" => Some(Format::Object),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct PendingLogin {
    client_id: String,
    redirect_uri: String,
    state: String,
    nonce: Option<String>,
    code_challenge: String,
    scope: String,
    audience: Option<String>,
}

#[derive(Debug, Clone)]
struct Grant {
    client_id: String,
    user_id: String,
    scope: String,
    audience: Option<String>,
    sid: String,
}

#[derive(Debug, Clone)]
pub struct LogStream {
    pub id: String,
    pub endpoint: Url,
    pub authorization: String,
    pub format: Format,
    pub filters: Value,
}

#[derive(Default)]
struct Tenant {
    users: Vec<Auth0User>,
    deleted: Vec<String>,
    clients: HashMap<String, String>,
    /// API identifiers (resource servers).
    apis: Vec<String>,
    pending: HashMap<String, PendingLogin>,
    codes: HashMap<String, (PendingLogin, String)>,
    refresh: HashMap<String, Grant>,
    /// Management API tokens issued (token → expiry).
    m2m_tokens: HashMap<String, i64>,
    /// The tenant log, in order.
    log: Vec<Value>,
    streams: Vec<LogStream>,
    /// Status of each delivery attempt (0: no connection).
    attempts: Vec<u16>,
    /// The next N Management API calls answer 429.
    rate_limited: u32,
    /// Sessions by user id (the latest last).
    sessions: HashMap<String, Vec<String>>,
    created: Vec<(String, Value)>,
    requests: Vec<String>,
}

struct Shared {
    base: Url,
    tenant: Mutex<Tenant>,
    key: EncodingKey,
    log_seq: AtomicU64,
}

/// The running double; stops when dropped.
pub struct Auth0Double {
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Auth0Double {
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

/// Auth0's `date`: RFC 3339 with milliseconds.
fn date_now() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    format!(
        "{}.{:03}Z",
        mxidp_core::audit::rfc3339(ms.div_euclid(1000)).trim_end_matches('Z'),
        ms.rem_euclid(1000)
    )
}

/// What `encodeURIComponent` leaves alone, as Auth0's SDKs and Dashboard encode user ids.
fn encode_component(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Auth0Double {
    /// Starts the tenant with these users, mxidp's regular web application, the API, and the
    /// Management API's M2M application.
    pub async fn start(users: Vec<Auth0User>, client_id: &str, client_secret: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base: Url = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let shared = Arc::new(Shared {
            base,
            tenant: Mutex::new(Tenant {
                users,
                clients: HashMap::from([
                    (client_id.to_owned(), client_secret.to_owned()),
                    (M2M_CLIENT_ID.to_owned(), M2M_CLIENT_SECRET.to_owned()),
                ]),
                apis: vec![AUDIENCE.to_owned()],
                ..Tenant::default()
            }),
            key: EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).expect("test key"),
            log_seq: AtomicU64::new(1),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/.well-known/jwks.json", get(jwks))
            .route("/authorize", get(authorize))
            .route("/u/login", get(login_page).post(login))
            .route("/u/signup", get(login_page).post(login))
            .route("/oauth/token", post(token))
            .route("/userinfo", get(userinfo))
            .route("/oauth/revoke", post(revoke))
            .route(
                "/api/v2/users/{id}",
                get(get_user).patch(patch_user).delete(delete_user),
            )
            .route("/api/v2/log-streams", post(create_stream).get(list_streams))
            .route("/api/v2/resource-servers", post(create_api))
            .route("/api/v2/actions/actions", post(create_action))
            .route("/api/v2/actions/actions/{id}/deploy", post(deploy_action))
            .route(
                "/api/v2/actions/triggers/post-login/bindings",
                patch(bind_action),
            )
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { shared, server }
    }

    /// `{base}` with its trailing slash, as Auth0 writes `iss`.
    pub fn issuer(&self) -> Url {
        self.shared.base.clone()
    }

    fn tenant(&self) -> std::sync::MutexGuard<'_, Tenant> {
        self.shared.tenant.lock().unwrap()
    }

    pub fn user_id(&self, name: &str) -> String {
        Auth0User::new(name).id
    }

    /// Registers a Log Stream as an admin would in the Dashboard.
    pub fn set_stream(&self, endpoint: Url, authorization: &str, format: Format) {
        self.tenant().streams = vec![LogStream {
            id: format!("lst_{:016}", 1269),
            endpoint,
            authorization: authorization.to_owned(),
            format,
            filters: json!([]),
        }];
    }

    pub fn set_format(&self, format: Format) {
        for s in &mut self.tenant().streams {
            s.format = format;
        }
    }

    pub fn streams(&self) -> Vec<LogStream> {
        self.tenant().streams.clone()
    }

    /// A Management API token, as the admin's M2M application gets one.
    pub fn admin_token(&self) -> String {
        let token = random_string(40);
        self.tenant()
            .m2m_tokens
            .insert(token.clone(), now() + 86400);
        token
    }

    /// A new log entry of the tenant, in the Log Stream envelope.
    pub fn entry(&self, kind: &str, user_id: &str, details: Value) -> Value {
        // Auth0 log ids are 56 digits; these are unique and increasing.
        let seq = self.shared.log_seq.fetch_add(1, Ordering::SeqCst);
        let log_id = format!("9002{:020}{:032}", now(), seq);
        let entry = json!({"log_id": log_id, "data": {
            "date": date_now(), "type": kind, "client_id": M2M_CLIENT_ID, "client_name": "",
            "ip": "203.0.113.7", "user_agent": "double", "details": details,
            "hostname": self.shared.base.host_str(), "user_id": user_id, "log_id": log_id,
        }});
        self.tenant().log.push(entry.clone());
        entry
    }

    /// The user's latest session id (the ID token's `sid`).
    pub fn session_of(&self, name: &str) -> Option<String> {
        self.tenant()
            .sessions
            .get(&self.user_id(name))
            .and_then(|s| s.last().cloned())
    }

    /// The user logs out at Auth0: an `slo` entry with the session id.
    pub fn logout(&self, name: &str) -> Value {
        let user = self.user_id(name);
        let sid = self.session_of(name).expect("a session");
        self.entry(
            "slo",
            &user,
            json!({"return_to": "https://app.example.org/", "session_id": sid}),
        )
    }

    /// Sends entries to the stream in its format: up to three attempts per request, as Auth0
    /// does. Returns each attempt's status (0: no connection).
    pub async fn deliver(&self, entries: &[Value]) -> Vec<u16> {
        let stream = self.streams().pop().expect("a log stream");
        let bodies: Vec<Vec<u8>> = match stream.format {
            Format::Array => vec![serde_json::to_vec(entries).unwrap()],
            Format::Lines => vec![entries
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes()],
            Format::Object => entries
                .iter()
                .map(|e| serde_json::to_vec(e).unwrap())
                .collect(),
        };
        let mut statuses = Vec::new();
        for body in bodies {
            statuses.extend(
                self.post_raw(&stream.endpoint, &stream.authorization, body)
                    .await,
            );
        }
        statuses
    }

    /// One request with retries: the attempt statuses.
    pub async fn post_raw(&self, endpoint: &Url, authorization: &str, body: Vec<u8>) -> Vec<u16> {
        let http = reqwest::Client::new();
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let status = http
                .post(endpoint.clone())
                .header(header::AUTHORIZATION, authorization)
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            statuses.push(status);
            self.tenant().attempts.push(status);
            if (200..300).contains(&status) {
                break;
            }
        }
        statuses
    }

    /// An admin call of the Management API from the Dashboard (its `sapi` entry is logged).
    pub async fn admin(&self, method: reqwest::Method, name: &str, body: Option<Value>) -> u16 {
        let url = self
            .shared
            .base
            .join(&format!(
                "api/v2/users/{}",
                encode_component(&self.user_id(name))
            ))
            .unwrap();
        let mut request = reqwest::Client::new()
            .request(method, url)
            .bearer_auth(self.admin_token());
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap().status().as_u16()
    }

    pub fn log(&self) -> Vec<Value> {
        self.tenant().log.clone()
    }

    /// The last `sapi` entry of the log.
    pub fn last_sapi(&self) -> Value {
        self.log()
            .into_iter()
            .rev()
            .find(|e| e["data"]["type"] == "sapi")
            .expect("a sapi entry")
    }

    pub fn set_blocked(&self, name: &str, blocked: bool) {
        let id = self.user_id(name);
        for u in &mut self.tenant().users {
            if u.id == id {
                u.blocked = blocked;
            }
        }
    }

    /// The next `n` Management API calls answer 429.
    pub fn rate_limit(&self, n: u32) {
        self.tenant().rate_limited = n;
    }

    pub fn created(&self) -> Vec<(String, Value)> {
        self.tenant().created.clone()
    }

    pub fn requests(&self) -> Vec<String> {
        self.tenant().requests.clone()
    }
}

fn record(s: &Shared, what: String) {
    s.tenant.lock().unwrap().requests.push(what);
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// The Management API's error shape.
fn api_error(status: StatusCode, error_code: &str, message: &str) -> Response {
    (
        status,
        Json(
            json!({"statusCode": status.as_u16(), "error": status.canonical_reason(),
            "message": message, "errorCode": error_code}),
        ),
    )
        .into_response()
}

async fn discovery(State(s): State<Arc<Shared>>) -> Response {
    let text = include_str!(
        "../../adapters/auth0/tests/fixtures/oidc-discovery-dev-ltxchcls4igzho78.json"
    )
    .replace(
        "https://dev-ltxchcls4igzho78.us.auth0.com/",
        s.base.as_str(),
    );
    let document: Value = serde_json::from_str(&text).unwrap();
    Json(document).into_response()
}

async fn jwks() -> Response {
    Json(json!({"keys": [{
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": KID, "e": "AQAB", "n": RSA_N,
    }]}))
    .into_response()
}

fn error_page(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Html(format!(
            "<html><head><title>Error</title></head><body><p id=\"error\">{message}</p></body></html>"
        )),
    )
        .into_response()
}

async fn authorize(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    record(
        &s,
        format!(
            "GET /authorize audience={} screen_hint={}",
            q.get("audience").map_or("-", String::as_str),
            q.get("screen_hint").map_or("-", String::as_str)
        ),
    );
    let (Some(client_id), Some(redirect_uri)) = (q.get("client_id"), q.get("redirect_uri")) else {
        return error_page("invalid_request: Missing required parameter: client_id");
    };
    let mut t = s.tenant.lock().unwrap();
    if !t.clients.contains_key(client_id) {
        return error_page("invalid_request: Unknown client");
    }
    let state = q.get("state").cloned().unwrap_or_default();
    let back = |error: &str, description: &str| {
        let mut to: Url = redirect_uri.parse().unwrap();
        to.query_pairs_mut()
            .append_pair("error", error)
            .append_pair("error_description", description)
            .append_pair("state", &state);
        Redirect::to(to.as_str()).into_response()
    };
    if let Some(audience) = q.get("audience") {
        if !t.apis.contains(audience) {
            return back("access_denied", &format!("Service not found: {audience}"));
        }
    }
    let Some(challenge) = q.get("code_challenge") else {
        return back("invalid_request", "code_challenge required");
    };
    if q.get("code_challenge_method").map(String::as_str) != Some("S256") {
        return back("invalid_request", "code_challenge_method must be S256");
    }
    let txn = random_string(24);
    t.pending.insert(
        txn.clone(),
        PendingLogin {
            client_id: client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            state: state.clone(),
            nonce: q.get("nonce").cloned(),
            code_challenge: challenge.clone(),
            scope: q.get("scope").cloned().unwrap_or_default(),
            audience: q.get("audience").cloned(),
        },
    );
    let screen = if q.get("screen_hint").map(String::as_str) == Some("signup") {
        "signup"
    } else {
        "login"
    };
    Redirect::to(&format!("/u/{screen}?state={txn}")).into_response()
}

async fn login_page(Query(q): Query<HashMap<String, String>>) -> Response {
    let txn = q.get("state").cloned().unwrap_or_default();
    Html(format!(
        r#"<!DOCTYPE html><html><head><title>Log in | Auth0 double</title></head><body>
<main class="auth0-universal-login"><form method="POST" action="/u/login?state={txn}">
<input type="hidden" name="state" value="{txn}">
<label for="username">Email address</label><input id="username" name="username" type="text">
<label for="password">Password</label><input id="password" name="password" type="password">
<button type="submit" name="action" value="default">Continue</button></form></main></body></html>"#
    ))
    .into_response()
}

async fn login(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    record(&s, "POST /u/login".into());
    let mut t = s.tenant.lock().unwrap();
    let Some(pending) = q.get("state").and_then(|txn| t.pending.remove(txn)) else {
        return error_page("Your session has expired.");
    };
    let name = f.get("username").cloned().unwrap_or_default();
    let Some(user) = t
        .users
        .iter()
        .find(|u| u.email == name || u.email.split('@').next() == Some(name.as_str()))
        .cloned()
    else {
        return error_page("Wrong email or password");
    };
    if user.blocked {
        let mut to: Url = pending.redirect_uri.parse().unwrap();
        to.query_pairs_mut()
            .append_pair("error", "unauthorized")
            .append_pair("error_description", "user is blocked")
            .append_pair("state", &pending.state);
        return Redirect::to(to.as_str()).into_response();
    }
    let code = random_string(32);
    let mut to: Url = pending.redirect_uri.parse().unwrap();
    to.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &pending.state);
    t.codes.insert(code, (pending, user.id));
    Redirect::to(to.as_str()).into_response()
}

fn client_auth(t: &Tenant, headers: &HeaderMap, form: &HashMap<String, String>) -> Option<String> {
    let (id, secret) = if let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    {
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
        (unescape(id), unescape(secret))
    } else {
        (
            form.get("client_id")?.clone(),
            form.get("client_secret")?.clone(),
        )
    };
    (t.clients.get(&id) == Some(&secret)).then_some(id)
}

impl Shared {
    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(KID.to_owned());
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign")
    }

    fn issuer(&self) -> String {
        self.base.to_string()
    }

    fn issue(&self, t: &mut Tenant, grant: &Grant, nonce: Option<&str>, refresh: bool) -> Value {
        let user = t
            .users
            .iter()
            .find(|u| u.id == grant.user_id)
            .unwrap()
            .clone();
        let iat = now();
        let access_token = match &grant.audience {
            Some(audience) => {
                let mut access = json!({
                    "iss": self.issuer(), "sub": user.id,
                    "aud": [audience, format!("{}userinfo", self.base)],
                    "iat": iat, "exp": iat + 86400, "scope": grant.scope, "azp": grant.client_id,
                });
                access[ROLES_CLAIM] = json!(user.roles);
                self.sign(&access)
            }
            // Auth0's access token for `/userinfo` only: encrypted, five segments.
            None => format!(
                "{}..{}.{}.{}",
                b64url(
                    format!(
                        r#"{{"alg":"dir","enc":"A256GCM","iss":"{}"}}"#,
                        self.issuer()
                    )
                    .as_bytes()
                ),
                b64url(random_string(12).as_bytes()),
                b64url(random_string(40).as_bytes()),
                b64url(random_string(16).as_bytes()),
            ),
        };
        let mut id = json!({
            "nickname": user.email.split('@').next(), "name": user.email, "email": user.email,
            "email_verified": true, "updated_at": "2024-05-01T10:00:00.000Z",
            "iss": self.issuer(), "aud": grant.client_id, "sub": user.id,
            "iat": iat, "exp": iat + 36000, "sid": grant.sid,
        });
        id[ROLES_CLAIM] = json!(user.roles);
        if let Some(nonce) = nonce {
            id["nonce"] = json!(nonce);
        }
        let mut answer = json!({
            "access_token": access_token, "id_token": self.sign(&id),
            "scope": grant.scope, "expires_in": 86400, "token_type": "Bearer",
        });
        // A refresh token only with `offline_access`, and none on a refresh (no rotation).
        if refresh && grant.scope.split(' ').any(|s| s == "offline_access") {
            let refresh = random_string(48);
            t.refresh.insert(refresh.clone(), grant.clone());
            answer["refresh_token"] = json!(refresh);
        }
        answer
    }
}

async fn token(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let grant_type = f.get("grant_type").cloned().unwrap_or_default();
    record(&s, format!("POST /oauth/token {grant_type}"));
    let mut t = s.tenant.lock().unwrap();
    let Some(client_id) = client_auth(&t, &headers, &f) else {
        return oauth_error(StatusCode::UNAUTHORIZED, "access_denied", "Unauthorized");
    };
    match grant_type.as_str() {
        "authorization_code" => {
            let Some((login, user_id)) = f.get("code").and_then(|c| t.codes.remove(c)) else {
                return oauth_error(
                    StatusCode::FORBIDDEN,
                    "invalid_grant",
                    "Invalid authorization code",
                );
            };
            if login.client_id != client_id || f.get("redirect_uri") != Some(&login.redirect_uri) {
                return oauth_error(
                    StatusCode::FORBIDDEN,
                    "invalid_grant",
                    "Invalid authorization code",
                );
            }
            let verified = f.get("code_verifier").is_some_and(|v| {
                b64url(&sha2::Sha256::digest(v.as_bytes())) == login.code_challenge
            });
            if !verified {
                return oauth_error(
                    StatusCode::FORBIDDEN,
                    "invalid_grant",
                    "Failed to verify code verifier",
                );
            }
            let sid = random_string(32);
            t.sessions
                .entry(user_id.clone())
                .or_default()
                .push(sid.clone());
            let grant = Grant {
                client_id,
                user_id,
                scope: login.scope.clone(),
                audience: login.audience.clone(),
                sid,
            };
            Json(s.issue(&mut t, &grant, login.nonce.as_deref(), true)).into_response()
        }
        "refresh_token" => {
            let token = f.get("refresh_token").cloned().unwrap_or_default();
            let Some(grant) = t.refresh.get(&token).cloned() else {
                return oauth_error(
                    StatusCode::FORBIDDEN,
                    "invalid_grant",
                    "Unknown or invalid refresh token.",
                );
            };
            let usable = t.users.iter().any(|u| u.id == grant.user_id && !u.blocked);
            if grant.client_id != client_id || !usable {
                return oauth_error(
                    StatusCode::FORBIDDEN,
                    "invalid_grant",
                    "Unknown or invalid refresh token.",
                );
            }
            // Without rotation the refresh token stays; the answer carries none.
            Json(s.issue(&mut t, &grant, None, false)).into_response()
        }
        "client_credentials" => {
            let audience = f.get("audience").cloned().unwrap_or_default();
            if client_id != M2M_CLIENT_ID || audience != format!("{}api/v2/", s.base) {
                return oauth_error(
                    StatusCode::FORBIDDEN,
                    "access_denied",
                    "Client has not been granted scopes",
                );
            }
            let iat = now();
            let claims = json!({"iss": s.issuer(), "sub": format!("{client_id}@clients"),
                "aud": audience, "iat": iat, "exp": iat + 86400, "azp": client_id,
                "scope": "read:users update:users delete:users", "gty": "client-credentials"});
            let token = s.sign(&claims);
            t.m2m_tokens.insert(token.clone(), iat + 86400);
            Json(json!({"access_token": token, "scope": claims["scope"],
                "expires_in": 86400, "token_type": "Bearer"}))
            .into_response()
        }
        _ => oauth_error(
            StatusCode::FORBIDDEN,
            "unsupported_grant_type",
            "Unsupported grant type",
        ),
    }
}

async fn userinfo(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    record(&s, "GET /userinfo".into());
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // The access token's `sub`, unverified: the double trusts its own tokens.
    let sub = token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|c| c["sub"].as_str().map(str::to_owned));
    let t = s.tenant.lock().unwrap();
    let Some(user) = sub.and_then(|sub| t.users.iter().find(|u| u.id == sub)) else {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    };
    Json(
        json!({"sub": user.id, "nickname": user.email.split('@').next(),
        "name": user.email, "email": user.email, "email_verified": true}),
    )
    .into_response()
}

async fn revoke(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    record(&s, "POST /oauth/revoke".into());
    let mut t = s.tenant.lock().unwrap();
    if client_auth(&t, &headers, &f).is_none() {
        return oauth_error(StatusCode::UNAUTHORIZED, "access_denied", "Unauthorized");
    }
    // Refresh tokens only; anything else is accepted and changes nothing.
    if let Some(token) = f.get("token") {
        t.refresh.remove(token);
    }
    StatusCode::OK.into_response()
}

/// Checks the M2M bearer token and the rate limit; `Err` is the answer to send.
fn management(s: &Shared, headers: &HeaderMap) -> Result<[(String, String); 3], Box<Response>> {
    let mut t = s.tenant.lock().unwrap();
    let reset = now() + 60;
    if t.rate_limited > 0 {
        t.rate_limited -= 1;
        let mut r = api_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "Global limit has been reached",
        );
        for (k, v) in [
            ("x-ratelimit-limit", MANAGEMENT_BUDGET.to_string()),
            ("x-ratelimit-remaining", "0".into()),
            ("x-ratelimit-reset", reset.to_string()),
        ] {
            r.headers_mut().insert(k, v.parse().unwrap());
        }
        return Err(Box::new(r));
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if t.m2m_tokens.get(token).is_none_or(|exp| *exp <= now()) {
        return Err(Box::new(api_error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "Invalid token",
        )));
    }
    Ok([
        ("x-ratelimit-limit".into(), MANAGEMENT_BUDGET.to_string()),
        (
            "x-ratelimit-remaining".into(),
            (MANAGEMENT_BUDGET - 1).to_string(),
        ),
        ("x-ratelimit-reset".into(), reset.to_string()),
    ])
}

fn with(mut response: Response, headers: [(String, String); 3]) -> Response {
    for (k, v) in headers {
        response.headers_mut().insert(
            axum::http::HeaderName::try_from(k).unwrap(),
            v.parse().unwrap(),
        );
    }
    response
}

fn user_json(u: &Auth0User) -> Value {
    json!({"user_id": u.id, "email": u.email, "email_verified": true,
        "name": u.email, "nickname": u.email.split('@').next(), "blocked": u.blocked,
        "created_at": "2024-05-01T10:00:00.000Z", "updated_at": "2024-05-01T10:00:00.000Z",
        "identities": [{"connection": "Username-Password-Authentication", "provider": "auth0",
            "user_id": u.id.trim_start_matches("auth0|"), "isSocial": false}],
        "logins_count": 1})
}

/// A `sapi` entry for a successful write, as Auth0 logs it.
fn log_sapi(s: &Shared, t: &mut Tenant, method: &str, path: &str, body: Value, status: u16) {
    let seq = s.log_seq.fetch_add(1, Ordering::SeqCst);
    let log_id = format!("9002{:020}{:032}", now(), seq);
    let description = match method {
        "delete" => "Delete a user",
        _ => "Update a user",
    };
    t.log.push(json!({"log_id": log_id, "data": {
        "date": date_now(), "type": "sapi", "description": description,
        "client_id": M2M_CLIENT_ID, "client_name": "", "ip": "203.0.113.7",
        "user_agent": "double", "details": {
            "request": {"method": method, "path": path, "query": {}, "body": body,
                "channel": "https://manage.auth0.com/", "ip": "203.0.113.7",
                "auth": {"user": {"user_id": "auth0|admin0000000000000000000",
                    "name": "admin@example.org", "email": "admin@example.org"},
                    "strategy": "jwt", "credentials": {"jti": random_string(32)}}},
            "response": {"statusCode": status, "body": {}}},
        "user_id": "auth0|admin0000000000000000000", "log_id": log_id,
    }}));
}

async fn get_user(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    record(&s, format!("GET /api/v2/users/{id}"));
    let limits = match management(&s, &headers) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let t = s.tenant.lock().unwrap();
    match t.users.iter().find(|u| u.id == id) {
        Some(u) => with(Json(user_json(u)).into_response(), limits),
        None => with(
            api_error(
                StatusCode::NOT_FOUND,
                "inexistent_user",
                "The user does not exist.",
            ),
            limits,
        ),
    }
}

async fn patch_user(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    record(&s, format!("PATCH /api/v2/users/{id}"));
    if let Err(r) = management(&s, &headers) {
        return *r;
    }
    let mut t = s.tenant.lock().unwrap();
    let Some(u) = t.users.iter_mut().find(|u| u.id == id) else {
        return api_error(
            StatusCode::NOT_FOUND,
            "inexistent_user",
            "The user does not exist.",
        );
    };
    if let Some(blocked) = body.get("blocked").and_then(Value::as_bool) {
        u.blocked = blocked;
    }
    let answer = user_json(u);
    log_sapi(
        &s,
        &mut t,
        "patch",
        &format!("/api/v2/users/{}", encode_component(&id)),
        body,
        200,
    );
    Json(answer).into_response()
}

async fn delete_user(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    record(&s, format!("DELETE /api/v2/users/{id}"));
    if let Err(r) = management(&s, &headers) {
        return *r;
    }
    let mut t = s.tenant.lock().unwrap();
    t.users.retain(|u| u.id != id);
    t.refresh.retain(|_, g| g.user_id != id);
    t.deleted.push(id.clone());
    // Deleting a user that does not exist is a 204 too.
    log_sapi(
        &s,
        &mut t,
        "delete",
        &format!("/api/v2/users/{}", encode_component(&id)),
        json!({}),
        204,
    );
    StatusCode::NO_CONTENT.into_response()
}

async fn create_stream(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    record(&s, "POST /api/v2/log-streams".into());
    if let Err(r) = management(&s, &headers) {
        return *r;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return api_error(StatusCode::BAD_REQUEST, "invalid_body", "Invalid JSON");
    };
    let sink = &body["sink"];
    let (Some(endpoint), Some(format)) = (
        sink["httpEndpoint"]
            .as_str()
            .and_then(|u| u.parse::<Url>().ok()),
        sink["httpContentFormat"].as_str().and_then(Format::parse),
    ) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "Payload validation error: sink.httpEndpoint and sink.httpContentFormat",
        );
    };
    if body["type"] != "http" || body["name"].as_str().is_none() {
        return api_error(StatusCode::BAD_REQUEST, "invalid_body", "type must be http");
    }
    let mut t = s.tenant.lock().unwrap();
    t.created
        .push(("POST /api/v2/log-streams".into(), body.clone()));
    let stream = LogStream {
        id: format!("lst_{:016}", t.streams.len() + 1),
        endpoint,
        authorization: sink["httpAuthorization"].as_str().unwrap_or("").to_owned(),
        format,
        filters: body["filters"].clone(),
    };
    t.streams.push(stream.clone());
    // The secret is never echoed back.
    let mut answer = body.clone();
    answer["id"] = json!(stream.id);
    answer["status"] = json!("active");
    answer["sink"]
        .as_object_mut()
        .map(|s| s.remove("httpAuthorization"));
    (StatusCode::CREATED, Json(answer)).into_response()
}

async fn list_streams(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = management(&s, &headers) {
        return *r;
    }
    let t = s.tenant.lock().unwrap();
    Json(
        t.streams
            .iter()
            .map(|st| {
                json!({"id": st.id, "type": "http", "status": "active",
                "sink": {"httpEndpoint": st.endpoint.as_str()}, "filters": st.filters})
            })
            .collect::<Vec<_>>(),
    )
    .into_response()
}

/// `POST /api/v2/resource-servers` (the API), `/actions/actions` and the others the setup
/// script calls: checked for their required fields, stored, answered like Auth0.
async fn create_api(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(r) = management(&s, &headers) {
        return *r;
    }
    let Some(identifier) = body["identifier"].as_str() else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "identifier is required",
        );
    };
    let mut t = s.tenant.lock().unwrap();
    if t.apis.iter().any(|a| a == identifier) {
        return api_error(
            StatusCode::CONFLICT,
            "inexistent_resource_server",
            "A resource server with the same identifier already exists",
        );
    }
    t.apis.push(identifier.to_owned());
    t.created
        .push(("POST /api/v2/resource-servers".into(), body.clone()));
    let mut answer = body;
    answer["id"] = json!(random_string(24));
    (StatusCode::CREATED, Json(answer)).into_response()
}

async fn create_action(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(r) = management(&s, &headers) {
        return *r;
    }
    let post_login = body["supported_triggers"]
        .as_array()
        .is_some_and(|ts| ts.iter().any(|t| t["id"] == "post-login"));
    if body["name"].as_str().is_none() || body["code"].as_str().is_none() || !post_login {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "name, code and a post-login trigger are required",
        );
    }
    let id = format!("{}-double-action", random_string(8));
    let mut t = s.tenant.lock().unwrap();
    t.created
        .push(("POST /api/v2/actions/actions".into(), body.clone()));
    let mut answer = body;
    answer["id"] = json!(id);
    (StatusCode::CREATED, Json(answer)).into_response()
}

async fn deploy_action(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = management(&s, &headers) {
        return *r;
    }
    s.tenant.lock().unwrap().created.push((
        format!("POST /api/v2/actions/actions/{id}/deploy"),
        json!({}),
    ));
    Json(json!({"id": random_string(12), "action": {"id": id}, "deployed": true})).into_response()
}

async fn bind_action(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(r) = management(&s, &headers) {
        return *r;
    }
    if body["bindings"].as_array().is_none() {
        return api_error(StatusCode::BAD_REQUEST, "invalid_body", "bindings required");
    }
    s.tenant.lock().unwrap().created.push((
        "PATCH /api/v2/actions/triggers/post-login/bindings".into(),
        body.clone(),
    ));
    Json(json!({"bindings": body["bindings"]})).into_response()
}

impl super::stack::Stack<Auth0Double> {
    /// The Auth0 double (mxidp's application, the API, the M2M application, a Log Stream to
    /// mxidp's webhook in `format`), Synapse, and mxidp in this process with
    /// `provider = "auth0"` and `[policy] admin` = role `matrix-admin`.
    pub async fn auth0(users: Vec<Auth0User>, format: Format) -> Self {
        use super::stack::{CLIENT_ID, CLIENT_SECRET};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mxidp: Url = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let idp = Auth0Double::start(users, CLIENT_ID, CLIENT_SECRET).await;
        idp.set_stream(
            mxidp.join("upstream/webhook").unwrap(),
            LOG_STREAM_AUTHORIZATION,
            format,
        );
        let issuer = idp.issuer();
        Self::assemble(
            idp,
            listener,
            mxidp,
            &format!(
                r#"[upstream]
issuer = "{issuer}"
provider = "auth0"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
scopes = ["openid", "profile", "email", "offline_access"]
account_url = "https://account.example.org/"
[adapters.auth0]
audience = "{AUDIENCE}"
roles_claim = "{ROLES_CLAIM}"
log_stream_authorization = "{LOG_STREAM_AUTHORIZATION}"
management_client_id = "{M2M_CLIENT_ID}"
management_client_secret = "{M2M_CLIENT_SECRET}"
[mapping]
# Auth0 issues no `preferred_username`; `nickname` is the e-mail's local part.
localpart_template = "{{{{ nickname }}}}"
[policy]
admin = {{ claim = "roles", value = "{ADMIN_ROLE}" }}
"#
            ),
            false,
            |config| {
                Arc::new(
                    mxidp_auth0::Auth0::from_config(config)
                        .unwrap_or_else(|p| panic!("auth0 adapter config: {p:?}")),
                )
            },
        )
        .await
    }
}

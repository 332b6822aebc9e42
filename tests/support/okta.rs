//! An Okta double: an in-process axum server on 127.0.0.1:0 answering as an Okta org with one
//! custom authorization server, as Okta's documentation and the fixtures in
//! `adapters/okta/tests/fixtures/` show:
//!
//! - `/oauth2/{as}/.well-known/openid-configuration`: the fixture's document (Okta's own, so no
//!   `prompt_values_supported`, PKCE `S256` only), with this server's URLs;
//! - `…/v1/authorize`: refuses what Okta refuses (no `state` or one outside `[A-Za-z0-9,._-]`,
//!   PKCE other than `S256`, `prompt=create`, an unknown scope), else a headless login form,
//!   then a redirect with `code` and `state`;
//! - `…/v1/token` (`authorization_code` with PKCE, `refresh_token`; client_secret_basic or
//!   _post): RS256 JWTs with Okta's claims: access tokens `ver`, `jti` `AT.…`, `aud`
//!   `api://default`, `sub` = the login (an e-mail), `uid`, `cid`, `scp` array; ID tokens with
//!   `sub` = the user id and the `groups` claim;
//! - `…/v1/keys`, `…/v1/userinfo`, `…/v1/introspect` (client auth required, `scope` a string,
//!   `X-Rate-Limit-*` headers, 429 when the per-minute budget is spent), `…/v1/revoke`;
//! - the management API behind `Authorization: SSWS <token>`: `GET /api/v1/users/{id}`,
//!   `GET /api/v1/logs` (filter on `eventType eq "…"`, `since`, `after`, `limit`, the
//!   `Link: rel="next"` cursor, rate-limit headers), and what `deploy/okta/setup.sh` calls:
//!   `POST /api/v1/apps`, `POST /api/v1/authorizationServers/{as}/claims`,
//!   `POST /api/v1/eventHooks`, `POST /api/v1/eventHooks/{id}/lifecycle/verify`;
//! - an Event Hook sender: the verification `GET` with `x-okta-verification-challenge`, then
//!   batched `POST`s of `data.events[]` with the configured auth header, one retry on 5xx or a
//!   failed connection, nothing after that. Every event is in the System Log whether or not a
//!   delivery reached anyone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use sha2::Digest as _;
use url::Url;

use super::random_string;

/// The custom authorization server's id.
pub const AUTH_SERVER: &str = "aus1mxidpTestAS0g7";
/// The API token the management API accepts (`SSWS …`).
pub const API_TOKEN: &str = "00okta-double-api-token-for-tests";
/// The audience of the custom authorization server's access tokens.
pub const AUDIENCE: &str = "api://default";
/// Introspection calls allowed per minute (Okta's bucket, scaled down).
pub const INTROSPECTION_BUDGET: u32 = 20;

/// The test signing key of `tests/support/keys` (RSA-2048, generated for these tests only).
const RSA_PRIVATE_PEM: &str = include_str!("keys/keycloak-double-rsa.pem");
const RSA_N: &str = "zz9HVCCaS5mLpUP9MFAOqLM55gpXuILkm1fyOyepSOROmVI-Q1j-LKk4PGU7OUBNrUO7otLJIcD1ywiX8t1xJjcz-gVydbruyA1VBPTMPRJnsTXX-ybGw1SCDBfsFdKU25J8gyTZmSVwjy1CgZBsxlpQAry9s8vUvtzxzlL8l3AqjewXkwLs3MdgHf3Bt-69ETInPUtRw6TZ3Z6rq56j6Be7t8Cj0QoDaX0K0c45C4nFjav23wjUWbqSaTdlhvo_xPc0lL92L_bJu2z3_Tt7GuFF0gHcVEga33gHGcCCdXOec3LS6LeSwJtue50iGJiKo0JD5Y9gjPJ1tgGgWCDJCQ";
const KID: &str = "okta-double-U5R8cHbGw445Qbq8zVO1";

/// An Okta user.
#[derive(Debug, Clone)]
pub struct OktaUser {
    /// The Okta user id (`00u…`): the ID token's `sub`.
    pub id: String,
    /// The login, an e-mail: the access token's `sub`.
    pub login: String,
    pub groups: Vec<String>,
    /// `ACTIVE`, `SUSPENDED`, `LOCKED_OUT`, `DEPROVISIONED`…
    pub status: String,
}

impl OktaUser {
    pub fn new(name: &str) -> Self {
        Self {
            id: format!("00u{}", random_string(17)),
            login: format!("{name}@example.org"),
            groups: vec!["Everyone".into()],
            status: "ACTIVE".into(),
        }
    }

    pub fn group(mut self, group: &str) -> Self {
        self.groups.push(group.to_owned());
        self
    }
}

/// What happens to the Event Hook delivery of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Sent as Okta sends it (one retry on 5xx).
    Hook,
    /// Both attempts fail before reaching the receiver (a network fault): only the System Log
    /// has the event.
    Lost,
    /// Not eligible for or not subscribed by the hook: the System Log only.
    LogOnly,
}

#[derive(Debug, Clone)]
struct PendingLogin {
    client_id: String,
    redirect_uri: String,
    state: String,
    nonce: Option<String>,
    code_challenge: String,
    scope: String,
}

#[derive(Debug, Clone)]
struct Grant {
    client_id: String,
    user_id: String,
    scope: String,
    auth_time: i64,
}

/// The Event Hook as registered.
#[derive(Debug, Clone)]
struct Hook {
    id: String,
    uri: Url,
    header: String,
    secret: String,
    verified: bool,
}

#[derive(Default)]
struct Org {
    users: Vec<OktaUser>,
    /// client_id → secret.
    clients: HashMap<String, String>,
    pending: HashMap<String, PendingLogin>,
    codes: HashMap<String, (PendingLogin, String, i64)>,
    refresh: HashMap<String, Grant>,
    access: HashMap<String, Value>,
    revoked: Vec<String>,
    /// The System Log, in `published` order.
    log: Vec<Value>,
    hook: Option<Hook>,
    /// Status of each delivery attempt (0: no connection).
    hook_attempts: Vec<u16>,
    introspections_left: u32,
    window_reset: i64,
    /// The next N System Log reads answer 429.
    logs_rate_limited: u32,
    /// Bodies the management API received, as "METHOD path" → body.
    created: Vec<(String, Value)>,
    requests: Vec<String>,
}

struct Shared {
    base: Url,
    issuer: String,
    org: Mutex<Org>,
    key: EncodingKey,
}

/// The running double; stops when dropped.
pub struct OktaDouble {
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for OktaDouble {
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Okta's `published` format: RFC 3339 with milliseconds.
fn published(ms: i64) -> String {
    let t = time_from_ms(ms);
    format!(
        "{}.{:03}Z",
        mxidp_core::audit::rfc3339(t).trim_end_matches('Z'),
        ms.rem_euclid(1000)
    )
}

fn time_from_ms(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

fn uuid_like() -> String {
    let hex: String = random_string(32)
        .bytes()
        .map(|b| char::from_digit(u32::from(b) % 16, 16).unwrap())
        .collect();
    format!(
        "{}-{}-11ef-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[16..20],
        &hex[20..32]
    )
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl OktaDouble {
    /// Starts the org with these users and one confidential client.
    pub async fn start(users: Vec<OktaUser>, client_id: &str, client_secret: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base: Url = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let issuer = format!("{base}oauth2/{AUTH_SERVER}");
        let shared = Arc::new(Shared {
            base,
            issuer,
            org: Mutex::new(Org {
                users,
                clients: HashMap::from([(client_id.to_owned(), client_secret.to_owned())]),
                introspections_left: INTROSPECTION_BUDGET,
                window_reset: now() + 60,
                ..Org::default()
            }),
            key: EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).expect("test key"),
        });
        let o = "/oauth2/{as}";
        let app = Router::new()
            .route(
                &format!("{o}/.well-known/openid-configuration"),
                get(discovery),
            )
            .route(&format!("{o}/v1/authorize"), get(authorize))
            .route(&format!("{o}/v1/authorize/login"), post(login))
            .route(&format!("{o}/v1/token"), post(token))
            .route(&format!("{o}/v1/keys"), get(keys))
            .route(&format!("{o}/v1/userinfo"), get(userinfo).post(userinfo))
            .route(&format!("{o}/v1/introspect"), post(introspect))
            .route(&format!("{o}/v1/revoke"), post(revoke))
            .route("/api/v1/users/{id}", get(user))
            .route("/api/v1/logs", get(logs))
            .route("/api/v1/apps", post(create_app))
            .route(
                "/api/v1/authorizationServers/{as}/claims",
                post(create_claim),
            )
            .route("/api/v1/eventHooks", post(create_hook))
            .route(
                "/api/v1/eventHooks/{id}/lifecycle/verify",
                post(verify_hook),
            )
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { shared, server }
    }

    /// `{base}oauth2/{as}`.
    pub fn issuer(&self) -> Url {
        self.shared.issuer.parse().unwrap()
    }

    /// The org URL.
    pub fn base_url(&self) -> &Url {
        &self.shared.base
    }

    fn org(&self) -> std::sync::MutexGuard<'_, Org> {
        self.shared.org.lock().unwrap()
    }

    pub fn user_id(&self, name: &str) -> String {
        let login = format!("{name}@example.org");
        self.org()
            .users
            .iter()
            .find(|u| u.login == login)
            .unwrap_or_else(|| panic!("no user {name}"))
            .id
            .clone()
    }

    /// Registers the Event Hook as an admin would, already verified (the setup script's path
    /// verifies through [`verify_hook`]).
    pub fn set_hook(&self, uri: Url, header: &str, secret: &str) {
        self.org().hook = Some(Hook {
            id: format!("who{}", random_string(17)),
            uri,
            header: header.to_owned(),
            secret: secret.to_owned(),
            verified: true,
        });
    }

    /// Sends the one-time verification `GET` to the hook, as "Verify" in the Admin Console
    /// does, with or without the challenge header; returns the status and the body.
    pub async fn send_verification(&self, with_challenge: bool) -> (StatusCode, Value) {
        let hook = self.org().hook.clone().expect("set_hook first");
        let challenge = random_string(32);
        let mut request = reqwest::Client::new()
            .get(hook.uri.clone())
            .header(hook.header.as_str(), hook.secret.as_str());
        if with_challenge {
            request = request.header("x-okta-verification-challenge", &challenge);
        }
        let answer = request.send().await.expect("verification request");
        let status = answer.status();
        let body: Value = answer.json().await.unwrap_or(Value::Null);
        if with_challenge && status == StatusCode::OK && body["verification"] == challenge {
            if let Some(h) = self.org().hook.as_mut() {
                h.verified = true;
            }
        }
        (status, body)
    }

    /// An admin (or Okta) acts on a user: the user's status changes as Okta changes it, the
    /// event goes to the System Log, and to the Event Hook per `delivery`. Returns the event.
    pub async fn act(&self, kind: &str, name: &str, delivery: Delivery) -> Value {
        let event = self.record(kind, name);
        if delivery != Delivery::LogOnly {
            self.deliver(vec![event.clone()], delivery == Delivery::Lost)
                .await;
        }
        event
    }

    /// The System Log event for `kind` on user `name`, appended to the log; the user's status
    /// changes as the event says.
    pub fn record(&self, kind: &str, name: &str) -> Value {
        let id = self.user_id(name);
        let mut org = self.org();
        let user = org.users.iter_mut().find(|u| u.id == id).unwrap();
        let new_status = match kind {
            "user.lifecycle.deactivate" => Some("DEPROVISIONED"),
            "user.lifecycle.suspend" => Some("SUSPENDED"),
            "user.account.lock" => Some("LOCKED_OUT"),
            "user.lifecycle.unsuspend"
            | "user.lifecycle.reactivate"
            | "user.account.unlock_by_admin" => Some("ACTIVE"),
            _ => None,
        };
        if let Some(status) = new_status {
            user.status = status.to_owned();
        }
        let user_ref = json!({"id": user.id, "type": "User", "alternateId": user.login,
            "displayName": name, "detailEntry": null});
        // Session events name the user as the actor with no target; lifecycle events name the
        // admin as the actor and the user as a target.
        let (actor, target) = if kind.starts_with("user.session.") {
            (user_ref, Value::Null)
        } else {
            (
                json!({"id": "00uADMINdoubleAdmin1", "type": "User",
                    "alternateId": "admin@example.org", "displayName": "Org Admin", "detailEntry": null}),
                json!([user_ref]),
            )
        };
        let ms = now_ms();
        let event = json!({
            "uuid": uuid_like(),
            "published": published(ms),
            "eventType": kind,
            "version": "0",
            "displayMessage": kind,
            "severity": "INFO",
            "legacyEventType": null,
            "actor": actor,
            "target": target,
            "client": {"ipAddress": "127.0.0.1", "userAgent": {"rawUserAgent": "okta-double"}},
            "outcome": {"result": "SUCCESS", "reason": null},
            "transaction": {"type": "WEB", "id": random_string(24), "detail": {}},
            "debugContext": {"debugData": {"requestId": random_string(24)}},
            "authenticationContext": {"externalSessionId": random_string(25)},
            "securityContext": {},
            "request": {"ipChain": []},
        });
        org.log.push(event.clone());
        event
    }

    /// Sends one Event Hook delivery of `events` (a batch), as Okta does: one retry on a 5xx or
    /// a failed connection, none on 4xx. `lose` makes both attempts fail before reaching the
    /// receiver. Returns the status of each attempt.
    pub async fn deliver(&self, events: Vec<Value>, lose: bool) -> Vec<u16> {
        let hook = self.org().hook.clone().expect("set_hook first");
        assert!(hook.verified, "Okta sends events only to verified hooks");
        let body = self.envelope_for(&hook, events);
        let mut statuses = Vec::new();
        for _ in 0..2 {
            let status = if lose {
                0
            } else {
                reqwest::Client::new()
                    .post(hook.uri.clone())
                    .header(header::ACCEPT, "application/json")
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(hook.header.as_str(), hook.secret.as_str())
                    .body(body.to_string())
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            };
            statuses.push(status);
            self.org().hook_attempts.push(status);
            if (200..500).contains(&status) {
                break;
            }
        }
        statuses
    }

    /// The CloudEvents envelope of a delivery (as the fixture `event_hook_delivery_*`).
    pub fn envelope(&self, events: Vec<Value>) -> Value {
        let hook = self.org().hook.clone().expect("set_hook first");
        self.envelope_for(&hook, events)
    }

    fn envelope_for(&self, hook: &Hook, events: Vec<Value>) -> Value {
        json!({
            "eventType": "com.okta.event_hook",
            "eventTypeVersion": "1.0",
            "cloudEventsVersion": "0.1",
            "source": format!("{}api/v1/eventHooks/{}", self.shared.base, hook.id),
            "eventId": uuid_like(),
            "data": {"events": events},
            "eventTime": published(now_ms()),
            "contentType": "application/json",
        })
    }

    /// Changes a user's status and tells no one (no hook, no log entry): what reconciliation
    /// must find by itself.
    pub fn set_status(&self, name: &str, status: &str) {
        let id = self.user_id(name);
        let mut org = self.org();
        org.users.iter_mut().find(|u| u.id == id).unwrap().status = status.to_owned();
    }

    /// Spends the rest of this minute's introspection budget: introspection answers 429.
    pub fn spend_introspection_budget(&self) {
        self.org().introspections_left = 0;
    }

    /// An access token of the custom authorization server for `name`, as a sign-in gets it.
    pub fn mint_access_token(&self, name: &str, client_id: &str) -> String {
        let grant = Grant {
            client_id: client_id.to_owned(),
            user_id: self.user_id(name),
            scope: "openid profile email".into(),
            auth_time: now(),
        };
        let mut org = self.org();
        self.shared.issue(&mut org, &grant, None, None)["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The System Log as it stands.
    pub fn log(&self) -> Vec<Value> {
        self.org().log.clone()
    }

    /// Every Event Hook delivery attempt's status (0: no connection).
    pub fn hook_attempts(&self) -> Vec<u16> {
        self.org().hook_attempts.clone()
    }

    /// The next `n` System Log reads answer 429.
    pub fn rate_limit_logs(&self, n: u32) {
        self.org().logs_rate_limited = n;
    }

    /// What the management API created, as ("METHOD path", body).
    pub fn created(&self) -> Vec<(String, Value)> {
        self.org().created.clone()
    }

    /// The requests the double answered, as "METHOD path".
    pub fn requests(&self) -> Vec<String> {
        self.org().requests.clone()
    }

    /// The registered hook's URI, header and whether it is verified.
    pub fn hook(&self) -> Option<(Url, String, bool)> {
        self.org()
            .hook
            .as_ref()
            .map(|h| (h.uri.clone(), h.header.clone(), h.verified))
    }
}

fn record(s: &Shared, what: String) {
    s.org.lock().unwrap().requests.push(what);
}

fn okta_error(status: StatusCode, code: &str, summary: &str) -> Response {
    (
        status,
        Json(
            json!({"errorCode": code, "errorSummary": summary, "errorLink": code,
            "errorId": format!("oae{}", random_string(22)), "errorCauses": []}),
        ),
    )
        .into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

async fn discovery(State(s): State<Arc<Shared>>) -> Response {
    let org = s.base.as_str().trim_end_matches('/');
    let text =
        include_str!("../../adapters/okta/tests/fixtures/custom_as_openid_configuration.json")
            .replace("https://{yourOktaDomain}", org)
            .replace("aus59pz16qgMvHvBS0g7", AUTH_SERVER);
    let document: Value = serde_json::from_str(&text).unwrap();
    Json(document).into_response()
}

async fn keys() -> Response {
    (
        [(header::CACHE_CONTROL, "max-age=3832304, must-revalidate")],
        Json(json!({"keys": [{
            "kty": "RSA", "alg": "RS256", "kid": KID, "use": "sig", "e": "AQAB", "n": RSA_N,
        }]})),
    )
        .into_response()
}

/// Okta's `state` characters.
fn state_ok(state: &str) -> bool {
    !state.is_empty()
        && state
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b",._-".contains(&b))
}

const SCOPES: &[&str] = &["openid", "profile", "email", "groups", "offline_access"];

fn error_page(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Html(format!(
            "<html><head><title>400 Bad Request</title></head><body><h1 id=\"error-code\">{message}</h1></body></html>"
        )),
    )
        .into_response()
}

async fn authorize(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    record(&s, "GET /v1/authorize".into());
    let (Some(client_id), Some(redirect_uri)) = (q.get("client_id"), q.get("redirect_uri")) else {
        return error_page("invalid_request: client_id and redirect_uri are required");
    };
    let mut org = s.org.lock().unwrap();
    if !org.clients.contains_key(client_id) {
        return error_page("invalid_client: The client_id is not valid.");
    }
    // Okta requires `state` and accepts only these characters.
    let Some(state) = q.get("state").filter(|st| state_ok(st)) else {
        return error_page("invalid_request: The 'state' parameter is missing or invalid.");
    };
    if q.get("response_type").map(String::as_str) != Some("code") {
        return error_page("unsupported_response_type");
    }
    let back = |error: &str, description: &str| {
        let mut to: Url = redirect_uri.parse().unwrap();
        to.query_pairs_mut()
            .append_pair("error", error)
            .append_pair("error_description", description)
            .append_pair("state", state);
        Redirect::to(to.as_str()).into_response()
    };
    if let Some(prompt) = q.get("prompt") {
        if !matches!(
            prompt.as_str(),
            "none" | "login" | "consent" | "login consent" | "enroll_authenticator"
        ) {
            return back("invalid_request", "The 'prompt' parameter is invalid.");
        }
    }
    let (Some(challenge), Some("S256")) = (
        q.get("code_challenge"),
        q.get("code_challenge_method").map(String::as_str),
    ) else {
        return back(
            "invalid_request",
            "PKCE code challenge is required and the method must be S256.",
        );
    };
    let scope = q.get("scope").cloned().unwrap_or_default();
    if let Some(unknown) = scope.split(' ').find(|sc| !SCOPES.contains(sc)) {
        return back(
            "invalid_scope",
            &format!("One or more scopes are not configured for the authorization server resource. ({unknown})"),
        );
    }
    let txn = random_string(20);
    org.pending.insert(
        txn.clone(),
        PendingLogin {
            client_id: client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            state: state.clone(),
            nonce: q.get("nonce").cloned(),
            code_challenge: challenge.clone(),
            scope,
        },
    );
    Html(format!(
        r#"<!DOCTYPE html><html><head><title>Sign In</title></head><body>
<div id="okta-sign-in"><form id="okta-login-form" method="post" action="/oauth2/{AUTH_SERVER}/v1/authorize/login?txn={txn}">
<label for="username">Username</label><input id="username" name="username" type="text">
<label for="password">Password</label><input id="password" name="password" type="password">
<input type="submit" value="Sign In"></form></div></body></html>"#
    ))
    .into_response()
}

async fn login(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    record(&s, "POST /v1/authorize/login".into());
    let mut org = s.org.lock().unwrap();
    let Some(pending) = q.get("txn").and_then(|t| org.pending.remove(t)) else {
        return error_page("Your session has expired.");
    };
    let name = f.get("username").cloned().unwrap_or_default();
    let Some(user) = org
        .users
        .iter()
        .find(|u| u.login == name || u.login.split('@').next() == Some(name.as_str()))
        .cloned()
    else {
        return error_page("Unable to sign in");
    };
    if user.status != "ACTIVE" {
        return error_page("Unable to sign in");
    }
    let code = random_string(43);
    let mut to: Url = pending.redirect_uri.parse().unwrap();
    to.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &pending.state);
    org.codes.insert(code, (pending, user.id, now()));
    Redirect::to(to.as_str()).into_response()
}

fn client_auth(org: &Org, headers: &HeaderMap, form: &HashMap<String, String>) -> Option<String> {
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
    (org.clients.get(&id) == Some(&secret)).then_some(id)
}

impl Shared {
    fn sign(&self, claims: &Value) -> String {
        // Okta's tokens carry `kid` and `alg` only.
        let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
        header.typ = None;
        header.kid = Some(KID.to_owned());
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign")
    }

    fn issue(
        &self,
        org: &mut Org,
        grant: &Grant,
        nonce: Option<&str>,
        refresh: Option<String>,
    ) -> Value {
        let user = org
            .users
            .iter()
            .find(|u| u.id == grant.user_id)
            .unwrap()
            .clone();
        let iat = now();
        let scp: Vec<&str> = grant.scope.split(' ').collect();
        let access = json!({
            "ver": 1, "jti": format!("AT.{}", random_string(43)), "iss": self.issuer,
            "aud": AUDIENCE, "sub": user.login, "iat": iat, "exp": iat + 3600,
            "cid": grant.client_id, "uid": user.id, "scp": scp, "auth_time": grant.auth_time,
        });
        let access_token = self.sign(&access);
        let digest = sha2::Sha256::digest(access_token.as_bytes());
        let mut id = json!({
            "sub": user.id, "name": user.login.split('@').next(), "email": user.login,
            "ver": 1, "iss": self.issuer, "aud": grant.client_id, "iat": iat, "exp": iat + 3600,
            "jti": format!("ID.{}", random_string(43)), "amr": ["pwd"],
            "idp": "00o1n8sbwArJ7OQRw406", "preferred_username": user.login,
            "auth_time": grant.auth_time, "at_hash": b64url(&digest[..16]),
            "groups": user.groups,
        });
        if let Some(nonce) = nonce {
            id["nonce"] = json!(nonce);
        }
        let id_token = self.sign(&id);
        org.access.insert(access_token.clone(), access);
        let refresh_token = refresh.unwrap_or_else(|| random_string(43));
        org.refresh.insert(refresh_token.clone(), grant.clone());
        json!({
            "token_type": "Bearer", "expires_in": 3600, "access_token": access_token,
            "scope": grant.scope, "refresh_token": refresh_token, "id_token": id_token,
        })
    }
}

async fn token(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let grant_type = f.get("grant_type").cloned().unwrap_or_default();
    record(&s, format!("POST /v1/token {grant_type}"));
    let mut org = s.org.lock().unwrap();
    let Some(client_id) = client_auth(&org, &headers, &f) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed.",
        );
    };
    match grant_type.as_str() {
        "authorization_code" => {
            let Some((login, user_id, auth_time)) = f.get("code").and_then(|c| org.codes.remove(c))
            else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "The authorization code is invalid or has expired.",
                );
            };
            if login.client_id != client_id || f.get("redirect_uri") != Some(&login.redirect_uri) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "The 'redirect_uri' does not match the redirection URI used in the authorization request.",
                );
            }
            let verified = f.get("code_verifier").is_some_and(|v| {
                b64url(&sha2::Sha256::digest(v.as_bytes())) == login.code_challenge
            });
            if !verified {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "PKCE verification failed.",
                );
            }
            let grant = Grant {
                client_id,
                user_id,
                scope: login.scope.clone(),
                auth_time,
            };
            Json(s.issue(&mut org, &grant, login.nonce.as_deref(), None)).into_response()
        }
        "refresh_token" => {
            let token = f.get("refresh_token").cloned().unwrap_or_default();
            let Some(grant) = org.refresh.get(&token).cloned() else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "The refresh token is invalid or expired.",
                );
            };
            let active = org
                .users
                .iter()
                .any(|u| u.id == grant.user_id && u.status == "ACTIVE");
            if grant.client_id != client_id || !active {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "The refresh token is invalid or expired.",
                );
            }
            // A web app's refresh token is persistent (no rotation) unless configured.
            Json(s.issue(&mut org, &grant, None, Some(token))).into_response()
        }
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "The authorization grant type is not supported by the authorization server.",
        ),
    }
}

fn live_access(org: &Org, token: &str) -> Option<Value> {
    let claims = org.access.get(token)?;
    let active_user = org
        .users
        .iter()
        .any(|u| Some(u.id.as_str()) == claims["uid"].as_str() && u.status == "ACTIVE");
    (active_user && !org.revoked.iter().any(|t| t == token) && claims["exp"].as_i64()? > now())
        .then(|| claims.clone())
}

async fn userinfo(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    record(&s, "GET /v1/userinfo".into());
    let org = s.org.lock().unwrap();
    let claims = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| live_access(&org, t));
    let Some(claims) = claims else {
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Bearer authorization_uri=\"\", realm=\"\", scope=\"openid\", error=\"invalid_token\", error_description=\"The access token is invalid.\"",
            )],
        )
            .into_response();
    };
    let user = org
        .users
        .iter()
        .find(|u| Some(u.id.as_str()) == claims["uid"].as_str())
        .unwrap();
    Json(json!({
        "sub": user.id, "name": user.login.split('@').next(), "email": user.login,
        "email_verified": true, "preferred_username": user.login, "groups": user.groups,
    }))
    .into_response()
}

fn rate_headers(limit: u32, remaining: u32, reset: i64) -> [(String, String); 3] {
    [
        ("x-rate-limit-limit".into(), limit.to_string()),
        ("x-rate-limit-remaining".into(), remaining.to_string()),
        ("x-rate-limit-reset".into(), reset.to_string()),
    ]
}

fn with_headers(mut response: Response, headers: [(String, String); 3]) -> Response {
    for (k, v) in headers {
        response.headers_mut().insert(
            axum::http::HeaderName::try_from(k).unwrap(),
            v.parse().unwrap(),
        );
    }
    response
}

async fn introspect(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    record(&s, "POST /v1/introspect".into());
    let mut org = s.org.lock().unwrap();
    if now() >= org.window_reset {
        org.introspections_left = INTROSPECTION_BUDGET;
        org.window_reset = now() + 60;
    }
    let reset = org.window_reset;
    if org.introspections_left == 0 {
        return with_headers(
            okta_error(
                StatusCode::TOO_MANY_REQUESTS,
                "E0000047",
                "API call exceeded rate limit due to too many requests.",
            ),
            rate_headers(INTROSPECTION_BUDGET, 0, reset),
        );
    }
    org.introspections_left -= 1;
    let limits = rate_headers(INTROSPECTION_BUDGET, org.introspections_left, reset);
    let Some(client_id) = client_auth(&org, &headers, &f) else {
        return with_headers(
            oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "No client credentials found.",
            ),
            limits,
        );
    };
    let token = f.get("token").cloned().unwrap_or_default();
    let answer = if let Some(grant) = org.refresh.get(&token).cloned() {
        let user = org.users.iter().find(|u| u.id == grant.user_id).unwrap();
        if user.status == "ACTIVE" && grant.client_id == client_id {
            json!({"active": true, "token_type": "Bearer", "scope": grant.scope,
                "client_id": grant.client_id, "username": user.login, "exp": now() + 86400,
                "sub": user.login, "uid": user.id, "device_id": random_string(20)})
        } else {
            json!({"active": false})
        }
    } else if let Some(c) = live_access(&org, &token) {
        json!({"active": true, "token_type": "Bearer",
            "scope": c["scp"].as_array().unwrap().iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "),
            "client_id": c["cid"], "username": c["sub"], "exp": c["exp"], "iat": c["iat"],
            "sub": c["sub"], "aud": c["aud"], "iss": c["iss"], "jti": c["jti"], "uid": c["uid"]})
    } else {
        json!({"active": false})
    };
    with_headers(Json(answer).into_response(), limits)
}

async fn revoke(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    record(&s, "POST /v1/revoke".into());
    let mut org = s.org.lock().unwrap();
    if client_auth(&org, &headers, &f).is_none() {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed.",
        );
    }
    if let Some(token) = f.get("token").cloned() {
        org.refresh.remove(&token);
        org.revoked.push(token);
    }
    StatusCode::OK.into_response()
}

fn ssws(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(format!("SSWS {API_TOKEN}").as_str())
}

fn invalid_token() -> Response {
    okta_error(
        StatusCode::UNAUTHORIZED,
        "E0000011",
        "Invalid token provided",
    )
}

async fn user(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    record(&s, format!("GET /api/v1/users/{id}"));
    if !ssws(&headers) {
        return invalid_token();
    }
    let org = s.org.lock().unwrap();
    match org.users.iter().find(|u| u.id == id) {
        None => okta_error(
            StatusCode::NOT_FOUND,
            "E0000007",
            &format!("Not found: Resource not found: {id} (User)"),
        ),
        Some(u) => Json(json!({
            "id": u.id, "status": u.status, "created": "2024-01-10T09:00:00.000Z",
            "activated": "2024-01-10T09:00:00.000Z", "statusChanged": null,
            "lastLogin": null, "lastUpdated": "2024-01-10T09:00:00.000Z",
            "passwordChanged": "2024-01-10T09:00:00.000Z", "type": {"id": "oty1double0000000001"},
            "profile": {"firstName": u.login.split('@').next(), "lastName": "Example",
                "mobilePhone": null, "secondEmail": null, "login": u.login, "email": u.login},
            "credentials": {"password": {}, "provider": {"type": "OKTA", "name": "OKTA"}},
            "_links": {"self": {"href": format!("{}api/v1/users/{}", s.base, u.id)}},
        }))
        .into_response(),
    }
}

/// The event types of a filter `eventType eq "a" or eventType eq "b"`.
fn filter_types(filter: &str) -> Vec<String> {
    filter
        .split(" or ")
        .filter_map(|clause| {
            clause
                .trim()
                .strip_prefix("eventType eq \"")?
                .strip_suffix('"')
                .map(str::to_owned)
        })
        .collect()
}

async fn logs(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    record(&s, "GET /api/v1/logs".into());
    if !ssws(&headers) {
        return invalid_token();
    }
    let mut org = s.org.lock().unwrap();
    let reset = now() + 30;
    if org.logs_rate_limited > 0 {
        org.logs_rate_limited -= 1;
        return with_headers(
            okta_error(
                StatusCode::TOO_MANY_REQUESTS,
                "E0000047",
                "API call exceeded rate limit due to too many requests.",
            ),
            rate_headers(120, 0, reset),
        );
    }
    let types = q.get("filter").map(|f| filter_types(f)).unwrap_or_default();
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(100)
        .min(1000);
    // `after` is the opaque position Okta hands out in the next link: here, the log index.
    let start = match (q.get("after"), q.get("since")) {
        (Some(after), _) => match after
            .rsplit_once('_')
            .and_then(|(_, i)| i.parse::<usize>().ok())
        {
            Some(i) => i,
            None => {
                return okta_error(
                    StatusCode::BAD_REQUEST,
                    "E0000001",
                    "Api validation failed: after",
                )
            }
        },
        (None, Some(since)) => {
            let Ok(since) = mxidp_core::audit::parse_time(since) else {
                return okta_error(
                    StatusCode::BAD_REQUEST,
                    "E0000001",
                    "Api validation failed: since",
                );
            };
            org.log
                .iter()
                .position(|e| {
                    mxidp_core::audit::parse_time(e["published"].as_str().unwrap()).unwrap()
                        >= since
                })
                .unwrap_or(org.log.len())
        }
        (None, None) => 0,
    };
    let mut page = Vec::new();
    let mut next = start;
    for (i, event) in org.log.iter().enumerate().skip(start) {
        if page.len() == limit {
            break;
        }
        next = i + 1;
        if types.is_empty() || types.iter().any(|t| event["eventType"] == t.as_str()) {
            page.push(event.clone());
        }
    }
    let mut next_link = s.base.join("api/v1/logs").unwrap();
    next_link
        .query_pairs_mut()
        .append_pair("limit", &limit.to_string())
        .append_pair("after", &format!("{}_{next}", now_ms()));
    if let Some(f) = q.get("filter") {
        next_link.query_pairs_mut().append_pair("filter", f);
    }
    let mut response = with_headers(Json(page).into_response(), rate_headers(120, 119, reset));
    // Polling queries (a `since` and no `until`) always have a next link.
    response.headers_mut().append(
        header::LINK,
        format!("<{}>; rel=\"next\"", next_link).parse().unwrap(),
    );
    response
}

async fn create_app(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(&s, "POST /api/v1/apps".into());
    if !ssws(&headers) {
        return invalid_token();
    }
    if body["signOnMode"] != "OPENID_CONNECT" || body["name"] != "oidc_client" {
        return okta_error(
            StatusCode::BAD_REQUEST,
            "E0000001",
            "Api validation failed: signOnMode",
        );
    }
    let client_id = format!("0oa{}", random_string(17));
    let client_secret = random_string(40);
    let mut org = s.org.lock().unwrap();
    org.clients.insert(client_id.clone(), client_secret.clone());
    org.created.push(("POST /api/v1/apps".into(), body.clone()));
    let mut app = body;
    app["id"] = json!(client_id);
    app["status"] = json!("ACTIVE");
    app["credentials"]["oauthClient"]["client_id"] = json!(client_id);
    app["credentials"]["oauthClient"]["client_secret"] = json!(client_secret);
    (StatusCode::OK, Json(app)).into_response()
}

async fn create_claim(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(server): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    record(
        &s,
        format!("POST /api/v1/authorizationServers/{server}/claims"),
    );
    if !ssws(&headers) {
        return invalid_token();
    }
    if server != AUTH_SERVER {
        return okta_error(
            StatusCode::NOT_FOUND,
            "E0000007",
            "Not found: Resource not found",
        );
    }
    if body["name"].as_str().is_none() || body["claimType"].as_str().is_none() {
        return okta_error(
            StatusCode::BAD_REQUEST,
            "E0000001",
            "Api validation failed: name",
        );
    }
    let mut org = s.org.lock().unwrap();
    org.created.push((
        format!("POST /api/v1/authorizationServers/{server}/claims"),
        body.clone(),
    ));
    let mut claim = body;
    claim["id"] = json!(format!("ocl{}", random_string(17)));
    claim["status"] = json!("ACTIVE");
    claim["system"] = json!(false);
    Json(claim).into_response()
}

async fn create_hook(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(&s, "POST /api/v1/eventHooks".into());
    if !ssws(&headers) {
        return invalid_token();
    }
    let config = &body["channel"]["config"];
    let (Some(uri), Some("HEADER"), Some(key), Some(value)) = (
        config["uri"].as_str().and_then(|u| Url::parse(u).ok()),
        config["authScheme"]["type"].as_str(),
        config["authScheme"]["key"].as_str(),
        config["authScheme"]["value"].as_str(),
    ) else {
        return okta_error(
            StatusCode::BAD_REQUEST,
            "E0000001",
            "Api validation failed: channel",
        );
    };
    let id = format!("who{}", random_string(17));
    let mut org = s.org.lock().unwrap();
    org.created
        .push(("POST /api/v1/eventHooks".into(), body.clone()));
    org.hook = Some(Hook {
        id: id.clone(),
        uri,
        header: key.to_owned(),
        secret: value.to_owned(),
        verified: false,
    });
    let mut hook = body;
    hook["id"] = json!(id);
    hook["status"] = json!("ACTIVE");
    hook["verificationStatus"] = json!("UNVERIFIED");
    // The secret is write-only.
    hook["channel"]["config"]["authScheme"]
        .as_object_mut()
        .unwrap()
        .remove("value");
    Json(hook).into_response()
}

async fn verify_hook(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    record(&s, format!("POST /api/v1/eventHooks/{id}/lifecycle/verify"));
    if !ssws(&headers) {
        return invalid_token();
    }
    let Some(hook) = s.org.lock().unwrap().hook.clone().filter(|h| h.id == id) else {
        return okta_error(
            StatusCode::NOT_FOUND,
            "E0000007",
            "Not found: Resource not found",
        );
    };
    // One retry after a timeout or error answer, as Okta does.
    for _ in 0..2 {
        let challenge = random_string(32);
        let answer = reqwest::Client::new()
            .get(hook.uri.clone())
            .header(hook.header.as_str(), hook.secret.as_str())
            .header("x-okta-verification-challenge", &challenge)
            .timeout(std::time::Duration::from_secs(3))
            .send()
            .await;
        if let Ok(answer) = answer {
            if answer.status().is_success() {
                let body: Value = answer.json().await.unwrap_or(Value::Null);
                if body["verification"] == challenge {
                    if let Some(h) = s.org.lock().unwrap().hook.as_mut() {
                        h.verified = true;
                    }
                    return Json(
                        json!({"id": id, "status": "ACTIVE", "verificationStatus": "VERIFIED"}),
                    )
                    .into_response();
                }
            }
        }
    }
    okta_error(
        StatusCode::BAD_REQUEST,
        "E0000001",
        "Api validation failed: Verification of the event hook failed.",
    )
}

/// The Event Hook's header and secret, and the API token, as mxidp's `[adapters.okta]` has them.
pub const HOOK_HEADER: &str = "Authorization";
pub const HOOK_SECRET: &str = "okta-event-hook-secret-for-tests";
/// The group whose members are Synapse admins.
pub const ADMIN_GROUP: &str = "matrix-admins";

impl super::stack::Stack<OktaDouble> {
    /// The Okta double (custom authorization server, client `mxidp`, the Event Hook registered
    /// and verified to mxidp's webhook), Synapse, and mxidp in this process with
    /// `provider = "okta"`, `[adapters.okta]` (hook secret, API token; the System Log read once
    /// at start, then by the tests through `log_stream::poll_once`) and `[policy] admin` =
    /// group `matrix-admins`.
    pub async fn okta(users: Vec<OktaUser>) -> Self {
        use super::stack::{CLIENT_ID, CLIENT_SECRET};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mxidp: Url = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let idp = OktaDouble::start(users, CLIENT_ID, CLIENT_SECRET).await;
        idp.set_hook(
            mxidp.join("upstream/webhook").unwrap(),
            HOOK_HEADER,
            HOOK_SECRET,
        );
        let issuer = idp.issuer();
        let stack = Self::assemble(
            idp,
            listener,
            mxidp,
            &format!(
                r#"[upstream]
issuer = "{issuer}"
provider = "okta"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
scopes = ["openid", "profile", "email"]
[adapters.okta]
hook_secret = "{HOOK_SECRET}"
api_token = "{API_TOKEN}"
system_log_interval_seconds = 86400
[policy]
admin = {{ claim = "roles", value = "{ADMIN_GROUP}" }}
"#
            ),
            false,
            |config| {
                Arc::new(
                    mxidp_okta::Okta::from_config(config)
                        .unwrap_or_else(|p| panic!("okta adapter config: {p:?}")),
                )
            },
        )
        .await;
        // The background task's first read sets where the log starts; the tests' own reads
        // must come after it, or it could move the cursor past their events.
        let started = std::time::Instant::now();
        while stack
            .app()
            .store
            .setting("event_log_cursor:okta")
            .await
            .unwrap()
            .is_none()
        {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "mxidp never read the System Log"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        stack
    }
}

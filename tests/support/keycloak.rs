//! A Keycloak double: an in-process axum server on 127.0.0.1:0 that answers Keycloak 26's paths
//! for realm `matrix` as Keycloak's documentation and the fixtures in
//! `adapters/keycloak/tests/fixtures/` show (docs/providers.md, Keycloak):
//!
//! - `/realms/matrix/.well-known/openid-configuration` with Keycloak 26.1's field set
//!   (`prompt_values_supported` with `create`, introspection, revocation, end-session, back-channel
//!   logout with sessions, `authorization_response_iss_parameter_supported`);
//! - `…/protocol/openid-connect/auth`: a headless HTML login form (`username`, `password`; the
//!   user is found by username or email, the password is not checked, a disabled user gets
//!   Keycloak's error page), then a redirect with `state`, `session_state`, `iss` and `code`;
//! - `…/token`: `authorization_code` (PKCE S256 checked, client_secret_basic or _post),
//!   `refresh_token` (rotated: the old refresh token is refused), `client_credentials` (the
//!   service account of the admin client). RS256 JWTs with Keycloak's claims (`typ` `Bearer` /
//!   `ID`, `azp`, `sid`, `realm_access`, `resource_access`, `preferred_username`, `at_hash`);
//! - `…/certs`, `…/userinfo`, `…/token/introspect` (RFC 7662, Keycloak's field set), `…/revoke`,
//!   `…/logout` (ends the SSO session and sends back-channel logout);
//! - `/admin/realms/matrix/users/{id}`: a `UserRepresentation` behind the admin client's
//!   service-account token.
//!
//! Test controls: [`KeycloakDouble::emit_backchannel_logout`] (a signed logout token, Keycloak 25+
//! `logout+jwt` or the pre-25 `JWT` header without `exp`), [`KeycloakDouble::emit_phase_two_webhook`]
//! (with a correct `X-Keycloak-Signature`), [`KeycloakDouble::disable_user`].

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

pub const REALM: &str = "matrix";

/// The double's signing key (RSA-2048, generated for these tests only) and its public modulus.
const RSA_PRIVATE_PEM: &str = include_str!("keys/keycloak-double-rsa.pem");
const RSA_N: &str = "zz9HVCCaS5mLpUP9MFAOqLM55gpXuILkm1fyOyepSOROmVI-Q1j-LKk4PGU7OUBNrUO7otLJIcD1ywiX8t1xJjcz-gVydbruyA1VBPTMPRJnsTXX-ybGw1SCDBfsFdKU25J8gyTZmSVwjy1CgZBsxlpQAry9s8vUvtzxzlL8l3AqjewXkwLs3MdgHf3Bt-69ETInPUtRw6TZ3Z6rq56j6Be7t8Cj0QoDaX0K0c45C4nFjav23wjUWbqSaTdlhvo_xPc0lL92L_bJu2z3_Tt7GuFF0gHcVEga33gHGcCCdXOec3LS6LeSwJtue50iGJiKo0JD5Y9gjPJ1tgGgWCDJCQ";
/// Keycloak's kids are base64url SHA-256 thumbprint-like strings.
const KID: &str = "kc-double-Qm9vdHN0cmFwS2V5MQ";

/// A realm user.
#[derive(Debug, Clone)]
pub struct KcUser {
    /// The Keycloak user id (a UUID): the `sub` claim.
    pub id: String,
    pub username: String,
    pub email: String,
    pub realm_roles: Vec<String>,
    pub enabled: bool,
}

impl KcUser {
    pub fn new(username: &str) -> Self {
        Self {
            id: uuid_like(),
            username: username.to_owned(),
            email: format!("{username}@example.org"),
            realm_roles: vec![
                format!("default-roles-{REALM}"),
                "offline_access".into(),
                "uma_authorization".into(),
            ],
            enabled: true,
        }
    }

    /// Adds a realm role (e.g. `matrix-admin`).
    pub fn role(mut self, role: &str) -> Self {
        self.realm_roles.push(role.to_owned());
        self
    }
}

/// A confidential client of the realm.
#[derive(Debug, Clone)]
pub struct KcClient {
    pub client_id: String,
    pub secret: String,
    pub backchannel_logout_url: Option<String>,
}

/// How the double signs logout tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutTokenStyle {
    /// Keycloak ≥ 25: header `typ` `logout+jwt`, with `exp`.
    Current,
    /// Keycloak < 25 (and < 23.0.4 for `exp`): header `typ` `JWT`, no `exp`.
    Pre25,
}

#[derive(Debug, Clone)]
struct PendingLogin {
    client_id: String,
    redirect_uri: String,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    scope: String,
}

#[derive(Debug, Clone)]
struct CodeGrant {
    login: PendingLogin,
    user_id: String,
    sid: String,
    auth_time: i64,
}

#[derive(Debug, Clone)]
struct RefreshGrant {
    client_id: String,
    user_id: String,
    sid: String,
    scope: String,
    auth_time: i64,
}

#[derive(Default)]
struct Realm {
    users: Vec<KcUser>,
    clients: Vec<KcClient>,
    pending: HashMap<String, PendingLogin>,
    codes: HashMap<String, CodeGrant>,
    refresh: HashMap<String, RefreshGrant>,
    /// Access tokens issued (JWT text → claims), for introspection and userinfo.
    access: HashMap<String, Value>,
    revoked: Vec<String>,
    /// Live SSO sessions: sid → user id.
    sessions: HashMap<String, String>,
    /// Service-account tokens of the admin client.
    service_tokens: Vec<String>,
    /// Where Phase Two webhooks go, with the subscription secret.
    webhook: Option<(Url, String)>,
    admin_client_id: Option<String>,
    /// Requests seen, as "METHOD path" (for assertions).
    requests: Vec<String>,
}

struct Shared {
    issuer: String,
    realm: Mutex<Realm>,
    key: EncodingKey,
}

/// The running double; stops when dropped.
pub struct KeycloakDouble {
    base: Url,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for KeycloakDouble {
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

fn uuid_like() -> String {
    let hex: String = random_string(32)
        .bytes()
        .map(|b| char::from_digit(u32::from(b) % 16, 16).unwrap())
        .collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl KeycloakDouble {
    /// Starts the realm with these users and clients.
    pub async fn start(users: Vec<KcUser>, clients: Vec<KcClient>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base: Url = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let issuer = format!("{}realms/{REALM}", base);
        let shared = Arc::new(Shared {
            issuer,
            realm: Mutex::new(Realm {
                users,
                clients,
                ..Realm::default()
            }),
            key: EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).expect("test key"),
        });
        let oidc = "/realms/matrix/protocol/openid-connect";
        let app = Router::new()
            .route(
                "/realms/matrix/.well-known/openid-configuration",
                get(discovery),
            )
            .route(&format!("{oidc}/auth"), get(authorize))
            .route(
                "/realms/matrix/login-actions/authenticate",
                post(authenticate),
            )
            .route(&format!("{oidc}/token"), post(token))
            .route(&format!("{oidc}/certs"), get(certs))
            .route(&format!("{oidc}/userinfo"), get(userinfo).post(userinfo))
            .route(&format!("{oidc}/token/introspect"), post(introspect))
            .route(&format!("{oidc}/revoke"), post(revoke))
            .route(&format!("{oidc}/logout"), get(logout).post(logout))
            .route("/admin/realms/matrix/users/{id}", get(admin_user))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base,
            shared,
            server,
        }
    }

    /// `{base}realms/matrix`.
    pub fn issuer(&self) -> Url {
        self.shared.issuer.parse().unwrap()
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// Makes `client_id` the admin client: `client_credentials` gives it a service-account token
    /// that the admin REST API accepts.
    pub fn set_admin_client(&self, client_id: &str) {
        self.shared.realm.lock().unwrap().admin_client_id = Some(client_id.to_owned());
    }

    /// Where [`Self::emit_phase_two_webhook`] posts, and the subscription's secret.
    pub fn set_webhook(&self, url: Url, secret: &str) {
        self.shared.realm.lock().unwrap().webhook = Some((url, secret.to_owned()));
    }

    /// The Keycloak user id of `username`.
    pub fn user_id(&self, username: &str) -> String {
        self.shared
            .realm
            .lock()
            .unwrap()
            .users
            .iter()
            .find(|u| u.username == username)
            .unwrap_or_else(|| panic!("no user {username}"))
            .id
            .clone()
    }

    /// An administrator turns the user off (the admin REST API then says `enabled: false`; new
    /// logins and refreshes are refused). Sends nothing by itself.
    pub fn disable_user(&self, username: &str) {
        let mut realm = self.shared.realm.lock().unwrap();
        let user = realm
            .users
            .iter_mut()
            .find(|u| u.username == username)
            .unwrap_or_else(|| panic!("no user {username}"));
        user.enabled = false;
    }

    /// Ends every SSO session of `username` without telling anyone, as an SSO Session Idle or
    /// Max timeout does (Keycloak sends no logout token then): the session's refresh tokens turn
    /// inactive at introspection.
    pub fn expire_sessions(&self, username: &str) {
        let user_id = self.user_id(username);
        self.shared
            .realm
            .lock()
            .unwrap()
            .sessions
            .retain(|_, u| *u != user_id);
    }

    /// The requests the double answered, as "METHOD path".
    pub fn requests(&self) -> Vec<String> {
        self.shared.realm.lock().unwrap().requests.clone()
    }

    /// Ends every SSO session of `username` and posts a logout token per session and client with
    /// a back-channel logout URL, as Keycloak does on logout or "Sign out" in the admin console.
    /// Returns the receivers' answers.
    pub async fn emit_backchannel_logout(
        &self,
        username: &str,
        style: LogoutTokenStyle,
    ) -> Vec<StatusCode> {
        let user_id = self.user_id(username);
        let deliveries = {
            let mut realm = self.shared.realm.lock().unwrap();
            let sids: Vec<String> = realm
                .sessions
                .iter()
                .filter(|(_, u)| **u == user_id)
                .map(|(s, _)| s.clone())
                .collect();
            for sid in &sids {
                realm.sessions.remove(sid);
            }
            let mut out = Vec::new();
            for sid in sids {
                for client in &realm.clients {
                    if let Some(url) = &client.backchannel_logout_url {
                        let token =
                            self.shared
                                .logout_token(&client.client_id, &user_id, &sid, style);
                        out.push((url.clone(), token));
                    }
                }
            }
            out
        };
        send_logout_tokens(deliveries).await
    }

    /// Posts `body` to mxidp's webhook as Phase Two keycloak-events does: JSON with
    /// `X-Keycloak-Signature` = lowercase hex HMAC-SHA256 of the body under the subscription
    /// secret.
    pub async fn emit_phase_two_webhook(&self, body: &Value) -> StatusCode {
        let (url, secret) = self
            .shared
            .realm
            .lock()
            .unwrap()
            .webhook
            .clone()
            .expect("set_webhook first");
        let bytes = serde_json::to_vec(body).unwrap();
        let signature = mxidp_keycloak::events::sign(&secret, &bytes);
        reqwest::Client::new()
            .post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .header("X-Keycloak-Signature", signature)
            .body(bytes)
            .send()
            .await
            .expect("webhook delivery")
            .status()
    }

    /// A Phase Two `admin.USER-UPDATE` event for `username`, with the representation an admin
    /// console "Enabled" switch sends.
    pub fn phase_two_user_update(&self, username: &str, enabled: bool) -> Value {
        let id = self.user_id(username);
        json!({
            "uid": uuid_like(),
            "time": now() * 1000,
            "realmId": REALM,
            "type": "admin.USER-UPDATE",
            "authDetails": {
                "realmId": "master",
                "clientId": "security-admin-console",
                "userId": uuid_like(),
                "ipAddress": "127.0.0.1"
            },
            "resourcePath": format!("users/{id}"),
            "representation": json!({"id": id, "username": username, "enabled": enabled}).to_string(),
        })
    }
}

async fn send_logout_tokens(deliveries: Vec<(String, String)>) -> Vec<StatusCode> {
    let http = reqwest::Client::new();
    let mut answers = Vec::new();
    for (url, token) in deliveries {
        let status = http
            .post(url)
            .form(&[("logout_token", token)])
            .send()
            .await
            .map(|r| r.status())
            .unwrap_or(StatusCode::BAD_GATEWAY);
        answers.push(status);
    }
    answers
}

impl Shared {
    fn sign(&self, typ: &str, claims: &Value) -> String {
        let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
        header.typ = Some(typ.to_owned());
        header.kid = Some(KID.to_owned());
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign")
    }

    fn logout_token(
        &self,
        client_id: &str,
        user_id: &str,
        sid: &str,
        style: LogoutTokenStyle,
    ) -> String {
        let iat = now();
        let mut claims = json!({
            "iat": iat,
            "jti": uuid_like(),
            "iss": self.issuer,
            "aud": client_id,
            "sub": user_id,
            "typ": "Logout",
            "sid": sid,
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        });
        match style {
            LogoutTokenStyle::Current => {
                claims["exp"] = json!(iat + 120);
                self.sign("logout+jwt", &claims)
            }
            LogoutTokenStyle::Pre25 => self.sign("JWT", &claims),
        }
    }
}

fn record(shared: &Shared, what: String) {
    shared.realm.lock().unwrap().requests.push(what);
}

async fn discovery(State(s): State<Arc<Shared>>) -> Json<Value> {
    let i = &s.issuer;
    let o = format!("{i}/protocol/openid-connect");
    Json(json!({
        "issuer": i,
        "authorization_endpoint": format!("{o}/auth"),
        "token_endpoint": format!("{o}/token"),
        "introspection_endpoint": format!("{o}/token/introspect"),
        "userinfo_endpoint": format!("{o}/userinfo"),
        "end_session_endpoint": format!("{o}/logout"),
        "frontchannel_logout_session_supported": true,
        "frontchannel_logout_supported": true,
        "jwks_uri": format!("{o}/certs"),
        "check_session_iframe": format!("{o}/login-status-iframe.html"),
        "grant_types_supported": ["authorization_code", "implicit", "refresh_token", "password", "client_credentials", "urn:openid:params:grant-type:ciba", "urn:ietf:params:oauth:grant-type:device_code"],
        "acr_values_supported": ["0", "1"],
        "response_types_supported": ["code", "none", "id_token", "token", "id_token token", "code id_token", "code token", "code id_token token"],
        "subject_types_supported": ["public", "pairwise"],
        "prompt_values_supported": ["none", "login", "consent", "create"],
        "id_token_signing_alg_values_supported": ["PS384", "RS384", "EdDSA", "ES384", "HS256", "HS512", "ES256", "RS256", "HS384", "ES512", "PS256", "PS512", "RS512"],
        "userinfo_signing_alg_values_supported": ["PS384", "RS384", "EdDSA", "ES384", "HS256", "HS512", "ES256", "RS256", "HS384", "ES512", "PS256", "PS512", "RS512", "none"],
        "response_modes_supported": ["query", "fragment", "form_post", "query.jwt", "fragment.jwt", "form_post.jwt", "jwt"],
        "registration_endpoint": format!("{i}/clients-registrations/openid-connect"),
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post", "tls_client_auth", "client_secret_jwt"],
        "introspection_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post", "tls_client_auth", "client_secret_jwt"],
        "claims_supported": ["aud", "sub", "iss", "auth_time", "name", "given_name", "family_name", "preferred_username", "email", "acr"],
        "claim_types_supported": ["normal"],
        "claims_parameter_supported": true,
        "scopes_supported": ["openid", "basic", "roles", "web-origins", "acr", "offline_access", "address", "phone", "email", "profile", "microprofile-jwt", "organization"],
        "request_parameter_supported": true,
        "request_uri_parameter_supported": true,
        "require_request_uri_registration": true,
        "code_challenge_methods_supported": ["plain", "S256"],
        "tls_client_certificate_bound_access_tokens": true,
        "revocation_endpoint": format!("{o}/revoke"),
        "revocation_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post", "tls_client_auth", "client_secret_jwt"],
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
        "device_authorization_endpoint": format!("{o}/auth/device"),
        "backchannel_token_delivery_modes_supported": ["poll", "ping"],
        "backchannel_authentication_endpoint": format!("{o}/ext/ciba/auth"),
        "require_pushed_authorization_requests": false,
        "pushed_authorization_request_endpoint": format!("{o}/ext/par/request"),
        "authorization_response_iss_parameter_supported": true,
    }))
}

async fn certs() -> Json<Value> {
    Json(json!({"keys": [{
        "kid": KID, "kty": "RSA", "alg": "RS256", "use": "sig", "n": RSA_N, "e": "AQAB",
    }]}))
}

fn error_page(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Html(format!(
            "<html><head><title>Error</title></head><body><p id=\"error\">We are sorry... {message}</p></body></html>"
        )),
    )
        .into_response()
}

async fn authorize(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    record(&s, "GET /auth".into());
    let Some(client_id) = q.get("client_id") else {
        return error_page("Invalid parameter: client_id");
    };
    let Some(redirect_uri) = q.get("redirect_uri") else {
        return error_page("Invalid parameter: redirect_uri");
    };
    if q.get("response_type").map(String::as_str) != Some("code") {
        return error_page("Invalid parameter: response_type");
    }
    let mut realm = s.realm.lock().unwrap();
    if !realm.clients.iter().any(|c| &c.client_id == client_id) {
        return error_page("Client not found.");
    }
    if q.contains_key("code_challenge")
        && q.get("code_challenge_method").map(String::as_str) != Some("S256")
    {
        return error_page("Invalid parameter: code challenge method is not configured one");
    }
    let session_code = random_string(24);
    realm.pending.insert(
        session_code.clone(),
        PendingLogin {
            client_id: client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            state: q.get("state").cloned(),
            nonce: q.get("nonce").cloned(),
            code_challenge: q.get("code_challenge").cloned(),
            scope: q.get("scope").cloned().unwrap_or_else(|| "openid".into()),
        },
    );
    let title = if q.get("prompt").map(String::as_str) == Some("create") {
        "Register"
    } else {
        "Sign in to your account"
    };
    Html(format!(
        r#"<!DOCTYPE html><html><head><title>{title}</title></head><body>
<h1 id="kc-page-title">{title}</h1>
<form id="kc-form-login" action="/realms/{REALM}/login-actions/authenticate?session_code={session_code}&amp;client_id={client_id}" method="post">
<label for="username">Username or email</label><input id="username" name="username" type="text" autofocus>
<label for="password">Password</label><input id="password" name="password" type="password">
<input type="hidden" id="id-hidden-input" name="credentialId">
<input name="login" id="kc-login" type="submit" value="Sign In">
</form></body></html>"#
    ))
    .into_response()
}

async fn authenticate(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    record(&s, "POST /login-actions/authenticate".into());
    let mut realm = s.realm.lock().unwrap();
    let Some(login) = q.get("session_code").and_then(|c| realm.pending.remove(c)) else {
        return error_page("Your login attempt timed out.");
    };
    let name = f.get("username").cloned().unwrap_or_default();
    let Some(user) = realm
        .users
        .iter()
        .find(|u| u.username == name || u.email == name)
        .cloned()
    else {
        return error_page("Invalid username or password.");
    };
    if !user.enabled {
        return error_page("Account is disabled, contact your administrator.");
    }
    let sid = uuid_like();
    realm.sessions.insert(sid.clone(), user.id.clone());
    let code = format!("{}.{}.{}", uuid_like(), sid, uuid_like());
    let mut target: Url = match login.redirect_uri.parse() {
        Ok(u) => u,
        Err(_) => return error_page("Invalid parameter: redirect_uri"),
    };
    {
        let mut pairs = target.query_pairs_mut();
        if let Some(state) = &login.state {
            pairs.append_pair("state", state);
        }
        pairs
            .append_pair("session_state", &sid)
            .append_pair("iss", &s.issuer)
            .append_pair("code", &code);
    }
    realm.codes.insert(
        code,
        CodeGrant {
            login,
            user_id: user.id,
            sid,
            auth_time: now(),
        },
    );
    Redirect::to(target.as_str()).into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// The client authenticated by HTTP Basic or by `client_id`/`client_secret` in the form.
fn client_auth(
    realm: &Realm,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<KcClient> {
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
    realm
        .clients
        .iter()
        .find(|c| c.client_id == id && c.secret == secret)
        .cloned()
}

impl Shared {
    fn user_claims(&self, user: &KcUser, client_id: &str) -> Value {
        let mut resource_access = json!({"account": {"roles": ["manage-account", "manage-account-links", "view-profile"]}});
        resource_access[client_id] = json!({"roles": ["matrix-user"]});
        json!({
            "realm_access": {"roles": user.realm_roles},
            "resource_access": resource_access,
            "email_verified": true,
            "name": format!("{} Example", user.username),
            "preferred_username": user.username,
            "given_name": user.username,
            "family_name": "Example",
            "email": user.email,
        })
    }

    /// The token response for a new grant on a live session; records the refresh token.
    #[allow(clippy::too_many_arguments)]
    fn issue(
        &self,
        realm: &mut Realm,
        client_id: &str,
        user: &KcUser,
        sid: &str,
        scope: &str,
        nonce: Option<&str>,
        auth_time: i64,
    ) -> Value {
        let iat = now();
        let mut access = json!({
            "exp": iat + 300, "iat": iat, "auth_time": auth_time, "jti": format!("onrtac:{}", uuid_like()),
            "iss": self.issuer, "aud": "account", "sub": user.id, "typ": "Bearer", "azp": client_id,
            "sid": sid, "acr": "1", "allowed-origins": ["/*"], "scope": scope,
        });
        merge(&mut access, self.user_claims(user, client_id));
        let access_token = self.sign("JWT", &access);
        let digest = sha2::Sha256::digest(access_token.as_bytes());
        let mut id = json!({
            "exp": iat + 300, "iat": iat, "auth_time": auth_time, "jti": format!("onrtid:{}", uuid_like()),
            "iss": self.issuer, "aud": client_id, "sub": user.id, "typ": "ID", "azp": client_id,
            "sid": sid, "at_hash": b64url(&digest[..16]), "acr": "1",
        });
        if let Some(nonce) = nonce {
            id["nonce"] = json!(nonce);
        }
        merge(&mut id, self.user_claims(user, client_id));
        let id_token = self.sign("JWT", &id);
        let refresh_token = format!("kc-refresh.{}", random_string(48));
        realm.access.insert(access_token.clone(), access);
        realm.refresh.insert(
            refresh_token.clone(),
            RefreshGrant {
                client_id: client_id.to_owned(),
                user_id: user.id.clone(),
                sid: sid.to_owned(),
                scope: scope.to_owned(),
                auth_time,
            },
        );
        json!({
            "access_token": access_token,
            "expires_in": 300,
            "refresh_expires_in": 1800,
            "refresh_token": refresh_token,
            "token_type": "Bearer",
            "id_token": id_token,
            "not-before-policy": 0,
            "session_state": sid,
            "scope": scope,
        })
    }
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        a.extend(b);
    }
}

async fn token(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let grant = f.get("grant_type").cloned().unwrap_or_default();
    record(&s, format!("POST /token {grant}"));
    let mut realm = s.realm.lock().unwrap();
    let Some(client) = client_auth(&realm, &headers, &f) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            "Invalid client or Invalid client credentials",
        );
    };
    match grant.as_str() {
        "authorization_code" => {
            let Some(grant) = f.get("code").and_then(|c| realm.codes.remove(c)) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "Code not valid");
            };
            if grant.login.client_id != client.client_id {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "Auth error");
            }
            if f.get("redirect_uri") != Some(&grant.login.redirect_uri) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Incorrect redirect_uri",
                );
            }
            if let Some(challenge) = &grant.login.code_challenge {
                let Some(verifier) = f.get("code_verifier") else {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "PKCE code verifier not specified",
                    );
                };
                if &b64url(&sha2::Sha256::digest(verifier.as_bytes())) != challenge {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "PKCE verification failed: Code mismatch",
                    );
                }
            }
            let Some(user) = realm.users.iter().find(|u| u.id == grant.user_id).cloned() else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "User not found");
            };
            let answer = s.issue(
                &mut realm,
                &client.client_id,
                &user,
                &grant.sid,
                &grant.login.scope,
                grant.login.nonce.as_deref(),
                grant.auth_time,
            );
            Json(answer).into_response()
        }
        "refresh_token" => {
            // Rotation ("Revoke Refresh Token" on): each refresh token works once.
            let Some(old) = f.get("refresh_token").and_then(|t| realm.refresh.remove(t)) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Invalid refresh token",
                );
            };
            if old.client_id != client.client_id {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Invalid refresh token. Token client and authorized client don't match",
                );
            }
            if !realm.sessions.contains_key(&old.sid) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Session not active",
                );
            }
            let Some(user) = realm
                .users
                .iter()
                .find(|u| u.id == old.user_id && u.enabled)
                .cloned()
            else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "User disabled");
            };
            let answer = s.issue(
                &mut realm,
                &client.client_id,
                &user,
                &old.sid,
                &old.scope,
                None,
                old.auth_time,
            );
            Json(answer).into_response()
        }
        "client_credentials" => {
            if realm.admin_client_id.as_deref() != Some(client.client_id.as_str()) {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized_client",
                    "Client not enabled to retrieve service account",
                );
            }
            let iat = now();
            let claims = json!({
                "exp": iat + 300, "iat": iat, "jti": uuid_like(), "iss": s.issuer,
                "aud": ["realm-management", "account"], "sub": uuid_like(), "typ": "Bearer",
                "azp": client.client_id, "acr": "1",
                "resource_access": {"realm-management": {"roles": ["view-users", "query-users"]}},
                "scope": "email profile", "clientHost": "127.0.0.1",
                "preferred_username": format!("service-account-{}", client.client_id),
                "client_id": client.client_id,
            });
            let access_token = s.sign("JWT", &claims);
            realm.service_tokens.push(access_token.clone());
            realm.access.insert(access_token.clone(), claims);
            Json(json!({
                "access_token": access_token, "expires_in": 300, "refresh_expires_in": 0,
                "token_type": "Bearer", "not-before-policy": 0, "scope": "email profile",
            }))
            .into_response()
        }
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Unsupported grant_type",
        ),
    }
}

/// An access token that is still good: issued here, not revoked, not expired, session alive
/// (service-account tokens have no session), user enabled.
fn live_access(realm: &Realm, token: &str) -> Option<Value> {
    let claims = realm.access.get(token)?;
    if realm.revoked.iter().any(|t| t == token) || claims["exp"].as_i64()? < now() {
        return None;
    }
    if let Some(sid) = claims["sid"].as_str() {
        let user = realm.sessions.get(sid)?;
        if !realm.users.iter().any(|u| &u.id == user && u.enabled) {
            return None;
        }
    }
    Some(claims.clone())
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

async fn userinfo(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    record(&s, "GET /userinfo".into());
    let realm = s.realm.lock().unwrap();
    let Some(claims) = bearer(&headers).and_then(|t| live_access(&realm, &t)) else {
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Bearer realm=\"matrix\", error=\"invalid_token\"",
            )],
        )
            .into_response();
    };
    let user = realm
        .users
        .iter()
        .find(|u| Some(u.id.as_str()) == claims["sub"].as_str());
    let Some(user) = user else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let mut answer = json!({"sub": user.id});
    merge(
        &mut answer,
        s.user_claims(user, claims["azp"].as_str().unwrap_or_default()),
    );
    Json(answer).into_response()
}

async fn introspect(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    record(&s, "POST /token/introspect".into());
    let realm = s.realm.lock().unwrap();
    if client_auth(&realm, &headers, &f).is_none() {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request",
            "Authentication failed.",
        );
    }
    let Some(token) = f.get("token") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Token not provided.",
        );
    };
    if realm.refresh.contains_key(token) {
        let grant = &realm.refresh[token];
        return Json(json!({
            "active": realm.sessions.contains_key(&grant.sid),
            "sub": grant.user_id, "typ": "Refresh", "azp": grant.client_id, "sid": grant.sid,
            "client_id": grant.client_id, "token_type": "Refresh",
        }))
        .into_response();
    }
    match live_access(&realm, token) {
        Some(mut claims) => {
            // Basic claims plus what the access token carries (the Keycloak 26 claim set in adapters/keycloak/tests/fixtures/access-token-claims-kc26.json).
            let username = claims["preferred_username"].clone();
            claims["client_id"] = claims["azp"].clone();
            claims["username"] = username;
            claims["token_type"] = json!("Bearer");
            claims["active"] = json!(true);
            Json(claims).into_response()
        }
        None => Json(json!({"active": false})).into_response(),
    }
}

async fn revoke(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    record(&s, "POST /revoke".into());
    let mut realm = s.realm.lock().unwrap();
    if client_auth(&realm, &headers, &f).is_none() {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            "Invalid client or Invalid client credentials",
        );
    }
    let Some(token) = f.get("token").cloned() else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Token not provided",
        );
    };
    realm.refresh.remove(&token);
    realm.revoked.push(token);
    StatusCode::OK.into_response()
}

/// RP-initiated logout: ends the session of `id_token_hint` (or every session of its user),
/// sends back-channel logout to the other clients, redirects to `post_logout_redirect_uri`.
async fn logout(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    record(&s, "GET /logout".into());
    let sid = q
        .get("id_token_hint")
        .map(|t| super::jwt_payload(t))
        .and_then(|c| c["sid"].as_str().map(str::to_owned));
    let deliveries = {
        let mut realm = s.realm.lock().unwrap();
        let mut out = Vec::new();
        if let Some(sid) = sid {
            if let Some(user_id) = realm.sessions.remove(&sid) {
                for client in &realm.clients {
                    if let Some(url) = &client.backchannel_logout_url {
                        out.push((
                            url.clone(),
                            s.logout_token(
                                &client.client_id,
                                &user_id,
                                &sid,
                                LogoutTokenStyle::Current,
                            ),
                        ));
                    }
                }
            }
        }
        out
    };
    send_logout_tokens(deliveries).await;
    match q.get("post_logout_redirect_uri") {
        Some(uri) => Redirect::to(uri).into_response(),
        None => Html("<html><body><h1>You are logged out</h1></body></html>").into_response(),
    }
}

async fn admin_user(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    record(&s, format!("GET /admin/realms/{REALM}/users/{id}"));
    let realm = s.realm.lock().unwrap();
    let authorised = bearer(&headers)
        .is_some_and(|t| realm.service_tokens.contains(&t) && live_access(&realm, &t).is_some());
    if !authorised {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "HTTP 401 Unauthorized"})),
        )
            .into_response();
    }
    match realm.users.iter().find(|u| u.id == id) {
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "User not found"})),
        )
            .into_response(),
        Some(u) => Json(json!({
            "id": u.id,
            "username": u.username,
            "firstName": u.username,
            "lastName": "Example",
            "email": u.email,
            "emailVerified": true,
            "createdTimestamp": 1_700_000_000_000_i64,
            "enabled": u.enabled,
            "totp": false,
            "disableableCredentialTypes": [],
            "requiredActions": [],
            "notBefore": 0,
            "access": {"manage": true},
        }))
        .into_response(),
    }
}

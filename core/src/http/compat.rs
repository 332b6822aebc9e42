//! The compatibility layer: the Matrix client-server `/login`, `/logout` and `/refresh` that
//! Synapse does not serve when authentication is delegated, for clients that do not speak the
//! OAuth profile (bots, tools, older clients). The reverse proxy sends these paths to mxidp
//! (deploy/). What MAS calls compat sessions are here sessions like any other: stored the same
//! way, introspected for Synapse, ended by IdP events and through [`crate::sessions`], audited.
//!
//! Sign-in is single sign-on only: `m.login.sso` sends the browser through the IdP and mxidp's
//! consent page, which hands the client a short-lived single-use login token at its
//! `redirectUrl`; the client exchanges it with `m.login.token`. MSC3824's
//! `delegated_oidc_compatibility` tells clients that the OAuth flow is the native one.

use axum::extract::rejection::JsonRejection;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use url::Url;

use super::authorize::{check_pending_capacity, pkce_s256, BrowserBinding};
use super::token::RouteError as TokenError;
use super::{internal, App, AppState};
use crate::ids::{now_unix, random_token, DeviceId, TokenHash};
use crate::limits::{Bucket, ClientAddress};
use crate::registration::{ApplicationType, ClientMetadata, GrantType};
use crate::sessions::{end_session, EndCause};
use crate::store::{
    AuthorizationStage, CodeRedemption, PendingAuthorization, Purpose, ResponseMode, Session,
    SessionState, TokenKind,
};
use crate::upstream::UpstreamAuthorization;

/// What compat sessions carry as their client: they have no registration.
pub const LEGACY_CLIENT_ID: &str = "legacy";

/// A Matrix error (`errcode`, `error`).
fn matrix_error(status: StatusCode, errcode: &str, error: &str) -> Response {
    let mut response = (status, Json(json!({"errcode": errcode, "error": error}))).into_response();
    super::no_store(&mut response);
    response
}

fn unknown_token() -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        Json(json!({"errcode": "M_UNKNOWN_TOKEN", "error": "the access token is not valid", "soft_logout": false})),
    )
        .into_response();
    super::no_store(&mut response);
    response
}

fn internal_error(context: &str, e: &dyn std::fmt::Display) -> Response {
    let id = internal(context, e);
    matrix_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "M_UNKNOWN",
        &format!("internal error {id}"),
    )
}

/// A legacy client as the consent page presents it: it has no registration, so all the page
/// can say is where the login token goes.
pub fn legacy_client(redirect_url: &str) -> ClientMetadata {
    let url = Url::parse(redirect_url).ok();
    let host = url
        .as_ref()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "an app on this device".into());
    let origin = url
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .and_then(|u| u.join("/").ok())
        .unwrap_or_else(|| Url::parse("https://invalid.invalid/").expect("a valid URL"));
    ClientMetadata {
        redirect_uris: Vec::new(),
        client_uri: origin,
        client_name: Some(format!("A Matrix client at {host}")),
        logo_uri: None,
        tos_uri: None,
        policy_uri: None,
        application_type: ApplicationType::Native,
        grant_types: vec![GrantType::AuthorizationCode],
    }
}

/// `GET /_matrix/client/v3/login`: the flows mxidp offers.
pub async fn flows() -> Response {
    Json(json!({
        "flows": [
            {
                "type": "m.login.sso",
                // MSC3824: the OAuth flow is the native one; this is the compatibility path.
                "delegated_oidc_compatibility": true,
                "org.matrix.msc3824.delegated_oidc_compatibility": true,
            },
            {"type": "m.login.token"},
        ]
    }))
    .into_response()
}

// No Debug: it names where a login token will go.
#[derive(Deserialize)]
pub struct SsoQuery {
    #[serde(rename = "redirectUrl")]
    redirect_url: Option<String>,
    action: Option<String>,
    #[serde(rename = "org.matrix.msc3824.action")]
    unstable_action: Option<String>,
}

/// Schemes a login token is never sent to: they run or read code rather than hand the token
/// to an app.
const REFUSED_SCHEMES: &[&str] = &["javascript", "data", "file", "vbscript", "blob", "about"];

/// A device ID as MAS makes them for compat sessions: 10 characters from A-Z and 0-9.
fn new_device_id() -> DeviceId {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rngs::OsRng;
    let id: String = (0..10)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect();
    DeviceId::parse(&id).expect("10 alphanumerics are a valid device ID")
}

fn compat_scope(device: &DeviceId) -> String {
    format!("urn:matrix:client:api:* urn:matrix:client:device:{device}")
}

/// `GET /_matrix/client/v3/login/sso/redirect?redirectUrl=…`: the browser goes to the IdP, then
/// to mxidp's consent page, then back to `redirectUrl` with a login token.
pub async fn sso_redirect(
    State(app): State<App>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, super::authorize::RouteError> {
    use super::authorize::RouteError as PageError;
    let bad = |message: &str| {
        PageError::Page(
            StatusCode::BAD_REQUEST,
            "Invalid sign-in request",
            message.to_owned(),
        )
    };
    let q: SsoQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|_| bad("The app sent a sign-in request this server cannot read."))?;
    let redirect = q
        .redirect_url
        .as_deref()
        .and_then(|r| Url::parse(r).ok())
        .filter(|u| !REFUSED_SCHEMES.contains(&u.scheme()))
        .ok_or_else(|| bad("The app did not say where to send you back."))?;
    let signup = matches!(
        q.action.as_deref().or(q.unstable_action.as_deref()),
        Some("register")
    );
    let upstream = app.upstream.get().ok_or_else(|| {
        PageError::Page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in unavailable",
            "Your organisation's sign-in page cannot be reached right now. Try again in a moment."
                .into(),
        )
    })?;
    let mut extra = app.provider.authorize_parameters();
    if signup {
        if let Some(params) = app.provider.signup_parameters(upstream.metadata()) {
            extra.extend(params);
        }
    }
    let now = now_unix();
    check_pending_capacity(&app, now).await?;
    let binding = BrowserBinding::of(&headers, app.secure_cookies());
    let device_id = new_device_id();
    let pending = PendingAuthorization {
        id: random_token(16),
        purpose: Purpose::CompatSso,
        browser_binding: binding.hash(),
        client_id: LEGACY_CLIENT_ID.into(),
        redirect_uri: redirect.to_string(),
        response_mode: ResponseMode::Query,
        client_state: None,
        code_challenge: String::new(),
        scope: compat_scope(&device_id),
        device_id,
        signup,
        upstream_state: random_token(24),
        upstream_nonce: random_token(24),
        upstream_verifier: random_token(32),
        csrf: random_token(24),
        user_code: None,
        stage: AuthorizationStage::AtIdp,
        login: None,
        created_at: now,
        expires_at: now + app.lifetimes.pending_authorization,
    };
    app.store.add_pending(&pending).await.map_err(|e| {
        PageError::Logged(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "A problem on this server stopped the sign-in.".into(),
            internal("store pending", &e),
        )
    })?;
    let url = upstream.authorization_url(&UpstreamAuthorization {
        redirect_uri: app.callback_url(),
        state: pending.upstream_state.clone(),
        nonce: pending.upstream_nonce.clone(),
        code_challenge: pkce_s256(&pending.upstream_verifier),
        extra,
    });
    tracing::info!(device_id = %pending.device_id, "compatibility single sign-on started");
    Ok(binding.redirect(url.as_str(), app.secure_cookies()))
}

/// Where the consent page sends the browser once the user allowed a legacy client: its
/// `redirectUrl` with a new single-use login token.
pub async fn login_token_redirect(
    app: &AppState,
    pending: &PendingAuthorization,
) -> Result<Url, crate::store::StoreError> {
    let token = random_token(32);
    app.store
        .add_code(
            TokenHash::of(&token),
            &pending.id,
            now_unix() + app.lifetimes.authorization_code,
        )
        .await?;
    let mut url = Url::parse(&pending.redirect_uri)
        .map_err(|e| crate::store::StoreError::Corrupt(format!("compat redirect: {e}")))?;
    url.query_pairs_mut().append_pair("loginToken", &token);
    Ok(url)
}

// No Debug: it holds a login token.
#[derive(Deserialize)]
pub struct LoginRequest {
    #[serde(rename = "type")]
    kind: Option<String>,
    token: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    #[serde(default)]
    refresh_token: bool,
}

/// `POST /_matrix/client/v3/login`.
pub async fn login(
    State(app): State<App>,
    ClientAddress(address): ClientAddress,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Response {
    // Every attempt counts, so that login tokens cannot be guessed at any rate.
    if let Err(retry_after) = app.limits.check(Bucket::Authorization, address, now_unix()) {
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"errcode": "M_LIMIT_EXCEEDED", "error": "too many requests", "retry_after_ms": retry_after.max(1) * 1000})),
        )
            .into_response();
        if let Ok(value) = header::HeaderValue::from_str(&retry_after.max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let Ok(Json(request)) = body else {
        return matrix_error(
            StatusCode::BAD_REQUEST,
            "M_NOT_JSON",
            "the body is not a login request",
        );
    };
    match request.kind.as_deref() {
        Some("m.login.token") => token_login(&app, request).await,
        _ => matrix_error(
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            "unsupported login type; use m.login.sso, then m.login.token",
        ),
    }
}

async fn token_login(app: &AppState, request: LoginRequest) -> Response {
    let forbidden = |why: &str| matrix_error(StatusCode::FORBIDDEN, "M_FORBIDDEN", why);
    let Some(token) = request.token.as_deref().filter(|t| !t.is_empty()) else {
        return forbidden("the login token is missing");
    };
    let device_id = match request.device_id.as_deref() {
        None => None,
        Some(d) => match DeviceId::parse(d) {
            Ok(d) => Some(d),
            Err(e) => {
                return matrix_error(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", &e.to_string())
            }
        },
    };
    let now = now_unix();
    let hash = TokenHash::of(token);
    // A code of the OAuth flow is not a login token: looked at before anything is spent.
    match app.store.peek_code(hash, now).await {
        Ok(Some(p)) if p.purpose != Purpose::CompatSso => {
            return forbidden("the login token is not valid")
        }
        Ok(_) => {}
        Err(e) => return internal_error("peek login token", &e),
    }
    let mut pending = match app.store.redeem_code(hash, now).await {
        Ok(CodeRedemption::Fresh(p)) => *p.0,
        Ok(CodeRedemption::Replayed { .. }) => {
            tracing::warn!("a login token was presented again");
            return forbidden("the login token has already been used");
        }
        Ok(CodeRedemption::Unknown) => {
            return forbidden("the login token is not valid or has expired")
        }
        Err(e) => return internal_error("redeem login token", &e),
    };
    let Some(login) = pending.login.clone() else {
        return forbidden("the sign-in is not complete");
    };
    // A user the IdP locked since the sign-in (an IdP event) gets no session.
    if !app.subject_tokens.allows(&login.subject, i64::MAX) {
        super::revoke_sealed_login(app, &login).await;
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"errcode": "M_USER_LOCKED", "error": "this account has been locked", "soft_logout": false})),
        )
            .into_response();
    }
    if let Some(device) = device_id {
        pending.scope = compat_scope(&device);
        pending.device_id = device;
    }
    let mut client = legacy_client(&pending.redirect_uri);
    client.client_name = request
        .initial_device_display_name
        .clone()
        .filter(|n| !n.trim().is_empty());
    if request.refresh_token {
        client.grant_types.push(GrantType::RefreshToken);
    }
    let started = match super::token::start_session_with(
        app,
        &client,
        &pending,
        "compat_login",
        request.refresh_token,
    )
    .await
    {
        Ok(started) => started,
        Err(e) => return token_error(e),
    };
    if let Err(e) = app.store.link_code_session(hash, &started.session.id).await {
        tracing::warn!(error = %e, "could not link a login token to its session");
    }
    let mut body = json!({
        "user_id": login.localpart.user_id(app.homeserver.server_name()),
        "access_token": started.issued.access.expose(),
        "device_id": started.session.device_id.as_str(),
        "home_server": app.homeserver.server_name(),
    });
    if let Some(refresh) = &started.issued.refresh {
        body["refresh_token"] = Value::from(refresh.expose());
        body["expires_in_ms"] = Value::from(started.expires_in * 1000);
    }
    let mut response = Json(body).into_response();
    super::no_store(&mut response);
    response
}

/// The token endpoint's failures in the Matrix error shape.
fn token_error(e: TokenError) -> Response {
    match e {
        TokenError::InvalidGrant(m) => {
            tracing::info!(reason = %m, "compat refresh refused");
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"errcode": "M_UNKNOWN_TOKEN", "error": m, "soft_logout": false})),
            )
                .into_response()
        }
        TokenError::Unavailable(m) => {
            matrix_error(StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", &m)
        }
        TokenError::Internal(id) => matrix_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "M_UNKNOWN",
            &format!("internal error {id}"),
        ),
        other => matrix_error(StatusCode::BAD_REQUEST, "M_UNKNOWN", &format!("{other:?}")),
    }
}

/// The active session of the request's access token (`Authorization: Bearer`).
async fn session_of(app: &AppState, headers: &HeaderMap) -> Result<Session, Response> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            matrix_error(
                StatusCode::UNAUTHORIZED,
                "M_MISSING_TOKEN",
                "no access token",
            )
        })?;
    if crate::tokens::recognise(presented) != Some(TokenKind::Access) {
        return Err(unknown_token());
    }
    let found = app
        .store
        .token(TokenHash::of(presented))
        .await
        .map_err(|e| internal_error("load token", &e))?;
    match found {
        Some((token, session))
            if token.kind == TokenKind::Access
                && token.rotated_at.is_none()
                && token.expires_at.is_none_or(|exp| exp >= now_unix())
                && session.state == SessionState::Active =>
        {
            Ok(session)
        }
        _ => Err(unknown_token()),
    }
}

/// `POST /_matrix/client/v3/logout`: ends the session of the access token (its device goes).
pub async fn logout(State(app): State<App>, headers: HeaderMap) -> Response {
    let session = match session_of(&app, &headers).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    if let Err(e) = end_session(&app, &session, EndCause::Revoked).await {
        return internal_error("end session", &e);
    }
    tracing::info!(session = %session.id, "signed out through the compatibility layer");
    Json(json!({})).into_response()
}

/// `POST /_matrix/client/v3/logout/all`: ends every session of the user.
pub async fn logout_all(State(app): State<App>, headers: HeaderMap) -> Response {
    let session = match session_of(&app, &headers).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let sessions = match app
        .store
        .active_sessions_of_subject(&session.provider, &session.subject)
        .await
    {
        Ok(sessions) => sessions,
        Err(e) => return internal_error("load sessions", &e),
    };
    for s in &sessions {
        if let Err(e) = end_session(&app, s, EndCause::Revoked).await {
            return internal_error("end session", &e);
        }
    }
    tracing::info!(
        ended = sessions.len(),
        "signed out everywhere through the compatibility layer"
    );
    Json(json!({})).into_response()
}

// No Debug: it holds a refresh token.
#[derive(Deserialize)]
pub struct RefreshRequest {
    refresh_token: Option<String>,
}

/// `POST /_matrix/client/v3/refresh`: the same refresh as the token endpoint's, in the Matrix
/// shape (no client to name: compat sessions have none).
pub async fn refresh(
    State(app): State<App>,
    body: Result<Json<RefreshRequest>, JsonRejection>,
) -> Response {
    let Some(presented) = body
        .ok()
        .and_then(|Json(r)| r.refresh_token)
        .filter(|t| !t.is_empty())
    else {
        return matrix_error(
            StatusCode::BAD_REQUEST,
            "M_MISSING_PARAM",
            "refresh_token is missing",
        );
    };
    match super::token::refresh_session(&app, &presented, None).await {
        Ok((issued, expires_in, _)) => {
            let mut body = json!({
                "access_token": issued.access.expose(),
                "expires_in_ms": expires_in * 1000,
            });
            if let Some(refresh) = &issued.refresh {
                body["refresh_token"] = Value::from(refresh.expose());
            }
            let mut response = Json(body).into_response();
            super::no_store(&mut response);
            response
        }
        Err(e) => token_error(e),
    }
}

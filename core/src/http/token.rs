//! `POST /oauth2/token`: `authorization_code` (single use, PKCE S256) and `refresh_token`.
//! The client receives mxidp's own tokens; the IdP's stay sealed in the session
//! (docs/token-model.md). A refresh refreshes at the IdP with mxidp's credentials and rotates
//! mxidp's refresh token every time, whatever the IdP does.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use serde::Deserialize;
use serde_json::json;

use super::authorize::pkce_s256;
use super::{internal, oauth_error, App, AppState};
use crate::cache::ActiveToken;
use crate::ids::{now_unix, SessionId, TokenHash};
use crate::registration::{ClientMetadata, GrantType};
use crate::scope::MatrixScope;
use crate::secret::{constant_time_eq, SecretString};
use crate::sessions::{end_session, EndCause};
use crate::store::{
    CodeRedemption, DevicePoll, DeviceStatus, Rotation, Session, SessionState, StoreError,
    TokenKind, TokenRecord,
};
use crate::tokens;
use crate::upstream::{TokenTypeHint, UpstreamError};

// No Debug: it holds secrets (codes, verifiers, tokens) that must never reach a log.
#[derive(Deserialize)]
pub struct TokenForm {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    client_id: Option<String>,
    refresh_token: Option<String>,
    device_code: Option<String>,
}

/// The grant type of RFC 8628.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

#[derive(Debug)]
pub enum RouteError {
    InvalidRequest(String),
    InvalidClient,
    InvalidGrant(String),
    /// The client did not register this grant type (RFC 6749 §5.2).
    UnauthorizedClient(&'static str),
    UnsupportedGrantType,
    /// The device grant's answers while the user has not finished (RFC 8628 §3.5).
    AuthorizationPending,
    SlowDown,
    ExpiredToken,
    AccessDenied,
    Unavailable(String),
    Internal(String),
}

impl IntoResponse for RouteError {
    fn into_response(self) -> Response {
        match self {
            RouteError::InvalidRequest(m) => {
                oauth_error(StatusCode::BAD_REQUEST, "invalid_request", m)
            }
            RouteError::InvalidGrant(m) => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", m),
            RouteError::InvalidClient => oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "the client is not registered",
            ),
            RouteError::UnauthorizedClient(grant) => oauth_error(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                format!("the client did not register the {grant} grant type"),
            ),
            RouteError::UnsupportedGrantType => oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be authorization_code, refresh_token or urn:ietf:params:oauth:grant-type:device_code",
            ),
            RouteError::AuthorizationPending => oauth_error(
                StatusCode::BAD_REQUEST,
                "authorization_pending",
                "the user has not finished signing in yet",
            ),
            RouteError::SlowDown => oauth_error(
                StatusCode::BAD_REQUEST,
                "slow_down",
                "polled before the interval was over; the interval grows by 5 seconds",
            ),
            RouteError::ExpiredToken => oauth_error(
                StatusCode::BAD_REQUEST,
                "expired_token",
                "the device code has expired; start again",
            ),
            RouteError::AccessDenied => oauth_error(
                StatusCode::BAD_REQUEST,
                "access_denied",
                "the user or the identity provider refused the sign-in",
            ),
            RouteError::Unavailable(m) => oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                m,
            ),
            RouteError::Internal(id) => oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                format!("internal error {id}"),
            ),
        }
    }
}

fn store_error(context: &str) -> impl FnOnce(StoreError) -> RouteError + '_ {
    move |e| RouteError::Internal(internal(context, &e))
}

pub async fn post(
    State(app): State<App>,
    Form(form): Form<TokenForm>,
) -> Result<Response, RouteError> {
    let (grant, result) = match form.grant_type.as_deref() {
        Some("authorization_code") => {
            let result = authorization_code(&app, form).await;
            if result.is_ok() {
                crate::metrics::signin("completed");
            }
            ("authorization_code", result)
        }
        Some("refresh_token") => ("refresh_token", refresh_token(&app, form).await),
        Some(DEVICE_CODE_GRANT) => {
            let result = device_code(&app, form).await;
            if result.is_ok() {
                crate::metrics::signin("completed");
            }
            ("device_code", result)
        }
        None => (
            "other",
            Err(RouteError::InvalidRequest("grant_type is missing".into())),
        ),
        Some(_) => ("other", Err(RouteError::UnsupportedGrantType)),
    };
    crate::metrics::token_grant(grant, result.is_ok());
    result
}

fn required<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str, RouteError> {
    value
        .as_deref()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| RouteError::InvalidRequest(format!("{name} is missing")))
}

/// The IdP's tokens as the callback sealed them into the pending authorization.
#[derive(Deserialize)]
struct SealedTokens {
    access_token: String,
    refresh_token: Option<String>,
}

/// The registered client, typed; `invalid_client` when there is none.
async fn registered_client(app: &AppState, client_id: &str) -> Result<ClientMetadata, RouteError> {
    Ok(app
        .store
        .client(client_id)
        .await
        .map_err(store_error("load client"))?
        .ok_or(RouteError::InvalidClient)?
        .metadata)
}

/// A pair of new Matrix tokens for a session, with the records the store keeps of them.
pub(crate) struct IssuedTokens {
    pub(crate) access: SecretString,
    pub(crate) refresh: Option<SecretString>,
    records: Vec<TokenRecord>,
}

impl IssuedTokens {
    /// The access token expires with the IdP's (never later); the refresh token has no expiry
    /// of its own: it lives as long as the IdP keeps refreshing.
    fn new(session_id: &str, now: i64, expires_in: i64, with_refresh: bool) -> Self {
        let access = tokens::issue(TokenKind::Access);
        let refresh = with_refresh.then(|| tokens::issue(TokenKind::Refresh));
        let mut records = vec![TokenRecord {
            hash: TokenHash::of(access.expose()),
            session_id: session_id.to_owned(),
            kind: TokenKind::Access,
            expires_at: Some(now + expires_in),
            issued_at: now,
            rotated_at: None,
        }];
        if let Some(refresh) = &refresh {
            records.push(TokenRecord {
                hash: TokenHash::of(refresh.expose()),
                session_id: session_id.to_owned(),
                kind: TokenKind::Refresh,
                expires_at: None,
                issued_at: now,
                rotated_at: None,
            });
        }
        Self {
            access,
            refresh,
            records,
        }
    }

    fn access_record(&self) -> &TokenRecord {
        &self.records[0]
    }
}

/// The code was issued to this client, for this redirect URI, and the verifier matches the
/// challenge (PKCE S256).
fn check_code_binding(
    pending: &crate::store::PendingAuthorization,
    client_id: &str,
    redirect_uri: &str,
    verifier: &str,
) -> Result<(), RouteError> {
    if !constant_time_eq(client_id.as_bytes(), pending.client_id.as_bytes()) {
        return Err(RouteError::InvalidGrant(
            "the code was issued to another client".into(),
        ));
    }
    if redirect_uri != pending.redirect_uri {
        return Err(RouteError::InvalidGrant(
            "redirect_uri differs from the authorization request".into(),
        ));
    }
    if !constant_time_eq(
        pkce_s256(verifier).as_bytes(),
        pending.code_challenge.as_bytes(),
    ) {
        return Err(RouteError::InvalidGrant(
            "code_verifier does not match the code_challenge".into(),
        ));
    }
    Ok(())
}

async fn authorization_code(app: &AppState, form: TokenForm) -> Result<Response, RouteError> {
    let code = required(&form.code, "code")?;
    let client_id = required(&form.client_id, "client_id")?;
    let redirect_uri = required(&form.redirect_uri, "redirect_uri")?;
    let verifier = required(&form.code_verifier, "code_verifier")?;
    let now = now_unix();
    let code_hash = TokenHash::of(code);

    // The client, its redirect URI and PKCE are checked before the code is spent: a stolen code
    // presented without its verifier changes nothing.
    if let Some(pending) = app
        .store
        .peek_code(code_hash, now)
        .await
        .map_err(store_error("peek code"))?
    {
        check_code_binding(&pending, client_id, redirect_uri, verifier)?;
    }
    let pending = match app
        .store
        .redeem_code(code_hash, now)
        .await
        .map_err(store_error("redeem code"))?
    {
        CodeRedemption::Fresh(p) => p.0,
        CodeRedemption::Replayed { session_id } => {
            // RFC 6749 §4.1.2: a code used twice may have been stolen; end what it granted.
            tracing::warn!("authorization code presented twice; ending the session it created");
            if let Some(id) = session_id {
                if let Some(session) = app
                    .store
                    .session(&id)
                    .await
                    .map_err(store_error("load session"))?
                {
                    end_session(app, &session, EndCause::CodeReplayed)
                        .await
                        .map_err(store_error("end session"))?;
                }
            }
            return Err(RouteError::InvalidGrant(
                "the code has already been used".into(),
            ));
        }
        CodeRedemption::Unknown => {
            return Err(RouteError::InvalidGrant(
                "the code is unknown or expired".into(),
            ))
        }
    };
    // Checked again on what was redeemed: between the look and the redemption nothing may
    // have changed, but the redemption is what counts.
    check_code_binding(&pending, client_id, redirect_uri, verifier)?;
    let client = registered_client(app, client_id).await?;
    let started = start_session(app, &client, &pending, "token").await?;
    app.store
        .link_code_session(code_hash, &started.session.id)
        .await
        .map_err(store_error("link code"))?;
    Ok(started.response())
}

/// RFC 8628 §3.4: the device polls with its device code until the user has answered.
async fn device_code(app: &AppState, form: TokenForm) -> Result<Response, RouteError> {
    let presented = required(&form.device_code, "device_code")?;
    let client_id = required(&form.client_id, "client_id")?;
    let client = registered_client(app, client_id).await?;
    if !client.grant_types.contains(&GrantType::DeviceCode) {
        return Err(RouteError::UnauthorizedClient("device_code"));
    }
    let now = now_unix();
    let hash = TokenHash::of(presented);
    let grant = match app
        .store
        .poll_device(hash, now, super::device::POLL_INTERVAL)
        .await
        .map_err(store_error("poll device"))?
    {
        DevicePoll::Unknown => {
            return Err(RouteError::InvalidGrant(
                "the device code is unknown".into(),
            ))
        }
        DevicePoll::SlowDown => return Err(RouteError::SlowDown),
        DevicePoll::Polled(grant) => grant,
    };
    if !constant_time_eq(client_id.as_bytes(), grant.client_id.as_bytes()) {
        return Err(RouteError::InvalidGrant(
            "the device code was issued to another client".into(),
        ));
    }
    if grant.expires_at < now {
        return Err(RouteError::ExpiredToken);
    }
    match grant.status {
        DeviceStatus::Pending | DeviceStatus::Claimed => Err(RouteError::AuthorizationPending),
        DeviceStatus::Denied => Err(RouteError::AccessDenied),
        DeviceStatus::Redeemed => Err(RouteError::InvalidGrant(
            "the device code has already been used".into(),
        )),
        DeviceStatus::Approved => {
            let pending = app
                .store
                .redeem_device(hash)
                .await
                .map_err(store_error("redeem device"))?
                .ok_or_else(|| {
                    RouteError::InvalidGrant("the device code has already been used".into())
                })?;
            Ok(start_session(app, &client, &pending, "device")
                .await?
                .response())
        }
    }
}

/// A session that has just started, with the tokens for the client.
pub(crate) struct Started {
    pub(crate) session: Session,
    pub(crate) issued: IssuedTokens,
    pub(crate) expires_in: i64,
    granted: String,
}

impl Started {
    fn response(&self) -> Response {
        token_response(&self.issued, self.expires_in, &self.granted)
    }
}

/// Turns a sign-in the user consented to into a session with mxidp's tokens: stored, its
/// device created in the homeserver, cached for introspection and audited. `source` names
/// the grant in the audit record.
pub(crate) async fn start_session(
    app: &AppState,
    client: &ClientMetadata,
    pending: &crate::store::PendingAuthorization,
    source: &str,
) -> Result<Started, RouteError> {
    start_session_with(app, client, pending, source, true).await
}

/// [`start_session`]; `access_expires: false` gives an access token without an expiry, for a
/// compatibility-layer client that asked for no refresh token (a legacy client cannot renew
/// its token; the session still ends with the IdP's session, by events and re-validation).
pub(crate) async fn start_session_with(
    app: &AppState,
    client: &ClientMetadata,
    pending: &crate::store::PendingAuthorization,
    source: &str,
    access_expires: bool,
) -> Result<Started, RouteError> {
    let now = now_unix();
    let login = pending
        .login
        .as_ref()
        .ok_or_else(|| RouteError::InvalidGrant("the sign-in is not complete".into()))?;
    let upstream_tokens: SealedTokens = app
        .sealer
        .open(&login.sealed_tokens)
        .ok()
        .and_then(|raw| serde_json::from_slice(&raw).ok())
        .ok_or_else(|| RouteError::Internal(internal("open sealed tokens", &"cannot open")))?;
    let scope = MatrixScope::parse(&pending.scope)
        .map_err(|e| RouteError::Internal(internal("stored scope", &e)))?;

    let expires_in = login
        .access_expires_in
        .map(lifetime_seconds)
        .unwrap_or(app.lifetimes.default_access_token);
    let session_id = SessionId::new();
    // No Matrix refresh token without an IdP one to refresh with, nor for a client that did
    // not register the grant (RFC 6749 §1.5, RFC 7591 §2).
    let mut issued = IssuedTokens::new(
        &session_id,
        now,
        expires_in,
        upstream_tokens.refresh_token.is_some()
            && client.grant_types.contains(&GrantType::RefreshToken),
    );
    if !access_expires {
        issued.records[0].expires_at = None;
    }
    let session = Session {
        id: session_id,
        provider: app.mapping.upstream_id.clone(),
        subject: login.subject.clone(),
        localpart: login.localpart.clone(),
        device_id: pending.device_id.clone(),
        client_id: pending.client_id.clone(),
        idp_sid: login.idp_sid.clone(),
        scope: pending.scope.clone(),
        // Least privilege (as MAS, MSC2967): the admin scope only for a client that asked for
        // it, and only for a user the admin policy allows.
        admin: login.admin && scope.admin_requested(),
        state: SessionState::Active,
        sealed_refresh_token: upstream_tokens
            .refresh_token
            .as_deref()
            .map(|t| app.sealer.seal_str(t)),
        sealed_access_token: Some(app.sealer.seal_str(&upstream_tokens.access_token)),
        created_at: now,
        ended_at: None,
        end_reason: None,
    };
    app.store
        .add_session(&session, &issued.records)
        .await
        .map_err(store_error("add session"))?;
    // The device must exist before the client's first request, or Synapse answers 401. It is
    // created after the session is stored, so that a concurrent device sync (which keeps the
    // devices of active sessions) never removes it.
    if let Err(e) = upsert_device(app, client, login, &pending.device_id).await {
        // Nobody will get these tokens: end the session durably, which also revokes the IdP's.
        let _ = end_session(app, &session, EndCause::SigninFailed).await;
        return Err(e);
    }
    // The cache holds every active access token (see crate::cache).
    app.cache
        .insert_checked(
            app.store.as_ref(),
            issued.access_record().hash,
            ActiveToken::new(issued.access_record(), &session),
        )
        .await
        .map_err(store_error("cache token"))?;
    tracing::info!(session = %session.id, localpart = %session.localpart, device_id = %session.device_id, "session started");
    crate::audit::record(
        app.store.as_ref(),
        crate::audit::AuditEntry {
            actor: format!("client:{}", session.client_id),
            action: "session.started".into(),
            target: session.id.to_string(),
            source: source.into(),
            outcome: "ok".into(),
            correlation_id: session.id.to_string(),
            details: serde_json::json!({
                "upstream": session.provider,
                "subject": session.subject,
                "localpart": session.localpart.as_str(),
                "device_id": session.device_id.as_str(),
                "idp_sid": session.idp_sid,
                "scope": session.scope,
                "admin": session.admin,
            }),
        },
    )
    .await;
    Ok(Started {
        granted: scope.granted_string(login.admin),
        session,
        issued,
        expires_in,
    })
}

async fn refresh_token(app: &AppState, form: TokenForm) -> Result<Response, RouteError> {
    let presented = required(&form.refresh_token, "refresh_token")?;
    let client_id = required(&form.client_id, "client_id")?;
    // RFC 6749 §6: the client first, then its right to the grant, then the token.
    let client = registered_client(app, client_id).await?;
    if !client.grant_types.contains(&GrantType::RefreshToken) {
        return Err(RouteError::UnauthorizedClient("refresh_token"));
    }
    let (issued, expires_in, granted) = refresh_session(app, presented, Some(client_id)).await?;
    Ok(token_response(&issued, expires_in, &granted))
}

/// Refreshes the session of `presented` (a Matrix refresh token) at the IdP and rotates
/// mxidp's tokens; `client_id`, when given, must be the session's client (the OAuth grant).
/// The compatibility layer's `/refresh` has no client and passes `None`.
pub(crate) async fn refresh_session(
    app: &AppState,
    presented: &str,
    client_id: Option<&str>,
) -> Result<(IssuedTokens, i64, String), RouteError> {
    // A token mxidp did not issue (the IdP's, a typo, a truncation) needs no lookup.
    if tokens::recognise(presented) != Some(TokenKind::Refresh) {
        return Err(RouteError::InvalidGrant(
            "the refresh token is not one of this server's".into(),
        ));
    }
    let now = now_unix();
    let hash = TokenHash::of(presented);
    let Some((token, session)) = app
        .store
        .token(hash)
        .await
        .map_err(store_error("load token"))?
    else {
        return Err(RouteError::InvalidGrant(
            "the refresh token is unknown".into(),
        ));
    };
    if token.kind != TokenKind::Refresh || session.state != SessionState::Active {
        return Err(RouteError::InvalidGrant(
            "the refresh token is not valid".into(),
        ));
    }
    if client_id.is_some_and(|c| !constant_time_eq(c.as_bytes(), session.client_id.as_bytes())) {
        return Err(RouteError::InvalidGrant(
            "the refresh token was issued to another client".into(),
        ));
    }
    if token.rotated_at.is_some() {
        // MSC2964: reuse of a rotated refresh token means it leaked; end the session.
        tracing::warn!(session = %session.id, "rotated refresh token presented again; ending the session");
        end_session(app, &session, EndCause::RefreshReused)
            .await
            .map_err(store_error("end session"))?;
        return Err(RouteError::InvalidGrant(
            "the refresh token has been used already".into(),
        ));
    }
    let idp_refresh = session
        .sealed_refresh_token
        .as_deref()
        .and_then(|sealed| app.sealer.open_secret(sealed).ok())
        .ok_or_else(|| RouteError::InvalidGrant("the session cannot be refreshed".into()))?;
    let upstream = app.upstream.get().ok_or_else(|| {
        RouteError::Unavailable("the identity provider is not reachable yet".into())
    })?;
    let fresh = match upstream.refresh(idp_refresh.expose()).await {
        Ok(tokens) => tokens,
        Err(UpstreamError::InvalidGrant(reason)) => {
            // The IdP ended the session (logout, disabled user, expiry): end it here too.
            tracing::info!(session = %session.id, %reason, "the IdP refused the refresh");
            end_session(app, &session, EndCause::IdpRefusedRefresh)
                .await
                .map_err(store_error("end session"))?;
            return Err(RouteError::InvalidGrant(
                "the session has ended at the identity provider".into(),
            ));
        }
        Err(e) => {
            return Err(RouteError::Unavailable(format!(
                "the identity provider did not answer ({})",
                internal("refresh at IdP", &e)
            )))
        }
    };
    let expires_in = fresh
        .expires_in
        .map(lifetime_seconds)
        .unwrap_or(app.lifetimes.default_access_token);
    // An IdP that does not rotate returns no refresh token, or the same one: keep the sealed
    // one. mxidp's own refresh token rotates either way.
    let idp_rotated = fresh
        .refresh_token
        .as_ref()
        .filter(|r| r.expose() != idp_refresh.expose());
    let sealed_refresh = idp_rotated.map(|r| app.sealer.seal_str(r.expose()));
    let sealed_access = app.sealer.seal_str(fresh.access_token.expose());
    let issued = IssuedTokens::new(&session.id, now, expires_in, true);
    let rotated = app
        .store
        .rotate_tokens(&Rotation {
            session_id: &session.id,
            old_refresh: hash,
            new_tokens: &issued.records,
            sealed_refresh_token: sealed_refresh.as_deref(),
            sealed_access_token: &sealed_access,
            now,
        })
        .await;
    let evicted = match rotated {
        Ok(evicted) => evicted,
        Err(e) => {
            // The IdP issued a new grant nobody will use: hand it back.
            if let Some(r) = idp_rotated {
                let _ = upstream
                    .revoke(r.expose(), TokenTypeHint::RefreshToken)
                    .await;
            }
            return Err(match e {
                StoreError::Conflict => RouteError::InvalidGrant(
                    "the refresh token has been used already, or the session ended".into(),
                ),
                e => RouteError::Internal(internal("rotate tokens", &e)),
            });
        }
    };
    app.cache.remove(&evicted);
    app.cache
        .insert_checked(
            app.store.as_ref(),
            issued.access_record().hash,
            ActiveToken::new(issued.access_record(), &session),
        )
        .await
        .map_err(store_error("cache token"))?;
    let scope = MatrixScope::parse(&session.scope)
        .map_err(|e| RouteError::Internal(internal("stored scope", &e)))?;
    Ok((issued, expires_in, scope.granted_string(session.admin)))
}

async fn upsert_device(
    app: &AppState,
    client: &ClientMetadata,
    login: &crate::store::UpstreamLogin,
    device_id: &crate::ids::DeviceId,
) -> Result<(), RouteError> {
    let name = client.client_name.as_deref().map(device_display_name);
    app.homeserver
        .upsert_device(&login.localpart, device_id, name.as_deref())
        .await
        .map_err(|e| {
            RouteError::Unavailable(format!(
                "the homeserver is not reachable ({})",
                internal("upsert device", &e)
            ))
        })
}

/// Synapse refuses a device display name longer than 100 characters (its
/// `MAX_DEVICE_DISPLAY_NAME_LEN`), which would fail every sign-in through that client: the
/// client's name is cut to fit, with an ellipsis.
fn device_display_name(client_name: &str) -> String {
    const MAX: usize = 100;
    if client_name.chars().count() <= MAX {
        return client_name.to_owned();
    }
    let mut name: String = client_name.chars().take(MAX - 1).collect();
    name.push('…');
    name
}

fn token_response(issued: &IssuedTokens, expires_in: i64, scope: &str) -> Response {
    let mut body = json!({
        "access_token": issued.access.expose(),
        "token_type": "Bearer",
        "expires_in": expires_in,
        "scope": scope,
    });
    if let Some(refresh) = &issued.refresh {
        body["refresh_token"] = json!(refresh.expose());
    }
    let mut response = (StatusCode::OK, Json(body)).into_response();
    super::no_store(&mut response);
    response
}

/// The IdP's `expires_in`, bounded: a value past `i64` or absurdly long must neither wrap nor
/// overflow `now + expires_in`. Thirty days is far beyond any access-token lifetime in use.
fn lifetime_seconds(expires_in: u64) -> i64 {
    const MAX: i64 = 30 * 86_400;
    i64::try_from(expires_in).unwrap_or(MAX).min(MAX)
}

#[cfg(test)]
mod device_name_tests {
    #[test]
    fn long_client_names_are_cut_to_what_synapse_accepts() {
        assert_eq!(super::device_display_name("Element"), "Element");
        let long = "x".repeat(150);
        let cut = super::device_display_name(&long);
        assert_eq!(cut.chars().count(), 100);
        assert!(cut.ends_with('…'));
        assert_eq!(
            super::device_display_name(&"é".repeat(100)),
            "é".repeat(100)
        );
    }
}

#[cfg(test)]
mod lifetime_tests {
    #[test]
    fn huge_lifetimes_are_bounded() {
        assert_eq!(super::lifetime_seconds(300), 300);
        assert_eq!(super::lifetime_seconds(u64::MAX), 30 * 86_400);
        assert_eq!(super::lifetime_seconds(i64::MAX as u64), 30 * 86_400);
    }
}

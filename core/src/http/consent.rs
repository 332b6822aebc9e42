//! The consent page and its form. After the IdP callback, a sign-in that no remembered consent
//! covers (see [`crate::consent`]) is redirected to `GET /consent?pending=…`, shown as often as
//! the browser that started it asks (docs/pages.md). `POST /consent` counts only with that
//! browser's cookie and the page's CSRF token. After consent the user is provisioned in the
//! homeserver and the client gets a single-use code.

use axum::extract::rejection::FormRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use serde::Deserialize;

use super::authorize::see_other;
use super::browser_flow::{client_name, client_redirect, revoke_sealed_login, same_browser};
use super::{internal, pages, paths, App, AppState};
use crate::homeserver::{FieldAction, HomeserverError, ProvisionRequest};
use crate::ids::{now_unix, random_token, TokenHash};
use crate::secret::constant_time_eq;
use crate::signin::MatrixLogin;
use crate::store::{AuthorizationStage, PendingAuthorization, Purpose};

/// The sign-ins this page answers for: a client's authorization request or a device grant.
fn asks_consent(p: &PendingAuthorization) -> bool {
    matches!(
        p.purpose,
        Purpose::Login | Purpose::DeviceGrant | Purpose::CompatSso
    )
}

pub use super::pages::PageError as RouteError;

/// After the IdP signed the user in: skip the page only when a remembered consent covers this
/// request (see [`crate::consent`]: the scopes, the admin scope, the client's identity).
pub async fn continue_after_login(
    app: &AppState,
    pending: PendingAuthorization,
    login: &MatrixLogin,
) -> Result<Response, RouteError> {
    let remembered = app
        .store
        .consent(&login.localpart, &pending.client_id)
        .await
        .map_err(|e| RouteError::internal("load consent", &e))?;
    let requested = requested_scopes(&pending)?;
    // A device grant always asks: the user must see which device they are letting in, since
    // a code can be passed on to them by someone else (RFC 8628 §5.4).
    // A legacy client (compatibility layer) has no registration to remember a consent for.
    if pending.purpose == Purpose::Login
        && crate::consent::covers(
            remembered.as_ref(),
            &requested,
            crate::consent::redirect_identifies_client(&pending.redirect_uri),
            app.consent.native_remember_seconds,
            now_unix(),
        )
    {
        return complete(app, pending).await;
    }
    // Post/redirect/get: the page lives at its own URL, which can be reloaded or come back to
    // (Back), while the IdP's code and state leave the address bar and the history.
    Ok(show_again(app, &pending))
}

/// To the consent page of a sign-in that is waiting for the user's answer.
pub fn show_again(app: &AppState, pending: &PendingAuthorization) -> Response {
    see_other(consent_url(app, &pending.id).as_str())
}

/// Where the consent page of a sign-in is shown.
fn consent_url(app: &AppState, pending_id: &str) -> url::Url {
    let mut url = app.url(paths::CONSENT);
    url.query_pairs_mut().append_pair("pending", pending_id);
    url
}

// No Debug: it names a sign-in in progress.
#[derive(Deserialize)]
pub struct ConsentQuery {
    pending: Option<String>,
}

/// `GET /consent?pending=…`: the consent page of a sign-in, shown as often as the browser that
/// started it asks, until the user answers.
pub async fn get(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, RouteError> {
    let unknown = || {
        RouteError::Page(
            StatusCode::BAD_REQUEST,
            "Sign-in expired",
            "This sign-in is unknown or has expired.".into(),
        )
    };
    let q: ConsentQuery =
        serde_urlencoded::from_str(query.as_deref().unwrap_or("")).map_err(|_| unknown())?;
    let id = q.pending.ok_or_else(unknown)?;
    let pending = app
        .store
        .pending(&id)
        .await
        .map_err(|e| RouteError::internal("load pending", &e))?
        .filter(|p| p.expires_at >= now_unix() && asks_consent(p))
        .ok_or_else(unknown)?;
    if !same_browser(&app, &headers, &pending) {
        tracing::warn!(pending = %pending.id, "consent page asked for by a browser that did not start the sign-in");
        let name = client_name(&app, &pending).await;
        return Err(RouteError::Page(
            StatusCode::BAD_REQUEST,
            "Sign-in from another browser",
            format!(
                "This sign-in to {name} was started in another browser, or this browser blocks cookies. Start again from {name} in this browser."
            ),
        ));
    }
    let metadata = if pending.purpose == Purpose::CompatSso {
        super::compat::legacy_client(&pending.redirect_uri)
    } else {
        app.store
            .client(&pending.client_id)
            .await
            .map_err(|e| RouteError::internal("load client", &e))?
            .ok_or_else(|| {
                RouteError::Page(
                    StatusCode::BAD_REQUEST,
                    "Unknown application",
                    "The app you were signing in to is no longer registered with this server."
                        .into(),
                )
            })?
            .metadata
    };
    let identity = pages::ClientIdentity::new(&metadata, &pending.redirect_uri);
    let login = match (&pending.stage, &pending.login) {
        (AuthorizationStage::AwaitingConsent, Some(login)) => login,
        (AuthorizationStage::CodeIssued, _) => {
            return Ok(pages::info_page(
                "You already answered",
                &format!(
                    "You already allowed {} to use your account; it has what it needs. You can close this page.",
                    identity.short_name()
                ),
            ))
        }
        _ => return Err(unknown()),
    };
    let scope = crate::scope::MatrixScope::parse(&pending.scope)
        .map_err(|e| RouteError::internal("stored scope", &e))?;
    let admin = match (scope.admin_requested(), login.admin) {
        (false, _) => pages::AdminRequest::NotAsked,
        (true, true) => pages::AdminRequest::Granted,
        (true, false) => pages::AdminRequest::NotAllowed,
    };
    Ok(pages::consent_page(&pages::ConsentView {
        client: &identity,
        pending_id: &pending.id,
        csrf: &pending.csrf,
        user_id: &login.localpart.user_id(app.homeserver.server_name()),
        device_id: pending.device_id.as_str(),
        admin,
        email: scope.email_requested(),
        user_code: pending.user_code.as_deref(),
        action: app.url(paths::CONSENT).as_str(),
    }))
}

// No Debug: it holds secrets (codes, verifiers, tokens) that must never reach a log.
#[derive(Deserialize)]
pub struct ConsentForm {
    pending: String,
    csrf: String,
    decision: String,
}

pub async fn post(
    State(app): State<App>,
    headers: HeaderMap,
    form: Result<Form<ConsentForm>, FormRejection>,
) -> Result<Response, RouteError> {
    let refuse = |msg: &str| {
        RouteError::Page(
            StatusCode::BAD_REQUEST,
            "Answer not accepted",
            msg.to_owned(),
        )
    };
    // The rejection's own text (a parser message) is for developers, not for the user.
    let Ok(Form(form)) = form else {
        return Err(refuse("Your answer did not reach this server complete."));
    };
    let pending = app
        .store
        .pending(&form.pending)
        .await
        .map_err(|e| RouteError::internal("load pending", &e))?
        .filter(|p| {
            p.expires_at >= now_unix()
                && p.stage == AuthorizationStage::AwaitingConsent
                && asks_consent(p)
        })
        .ok_or_else(|| refuse("This sign-in is unknown, was already answered, or has expired."))?;
    if !same_browser(&app, &headers, &pending)
        || !constant_time_eq(form.csrf.as_bytes(), pending.csrf.as_bytes())
    {
        tracing::warn!(pending = %pending.id, "consent form without the sign-in's cookie or CSRF token");
        let name = client_name(&app, &pending).await;
        return Err(refuse(&format!(
            "This answer did not come from the page this server showed in this browser, so {name} was not allowed anything."
        )));
    }
    let login = pending
        .login
        .as_ref()
        .ok_or_else(|| refuse("This sign-in is not complete."))?;
    match form.decision.as_str() {
        "allow" => {
            let previous = app
                .store
                .consent(&login.localpart, &pending.client_id)
                .await
                .map_err(|e| RouteError::internal("load consent", &e))?
                .map(|r| r.scopes)
                .unwrap_or_default();
            let scopes = crate::consent::to_remember(&previous, &requested_scopes(&pending)?);
            app.store
                .add_consent(&login.localpart, &pending.client_id, &scopes, now_unix())
                .await
                .map_err(|e| RouteError::internal("store consent", &e))?;
            complete(&app, pending).await
        }
        "switch" => switch_account(&app, &headers, pending).await,
        _ if pending.purpose == Purpose::CompatSso => {
            app.store
                .delete_pending(&pending.id)
                .await
                .map_err(|e| RouteError::internal("delete pending", &e))?;
            revoke_sealed_login(&app, login).await;
            Ok(pages::info_page(
                "Not signed in",
                "You denied access; the app was not signed in. You can close this page.",
            ))
        }
        _ if pending.purpose == Purpose::DeviceGrant => {
            super::device::deny(&app, &pending).await?;
            revoke_sealed_login(&app, login).await;
            Ok(pages::info_page(
                "Device not signed in",
                "You denied access; your device was not signed in. You can close this page.",
            ))
        }
        _ => {
            app.store
                .delete_pending(&pending.id)
                .await
                .map_err(|e| RouteError::internal("delete pending", &e))?;
            revoke_sealed_login(&app, login).await;
            crate::metrics::signin("denied");
            let to = client_redirect_for(&app, &pending)?;
            Ok(to.error("access_denied", "the user denied access"))
        }
    }
}

/// "Not you? Use another account": the same request of the client starts over at the IdP with
/// `prompt=login`, so the user can sign in as someone else; this sign-in ends and its IdP
/// tokens are handed back. The client sees nothing of it but the answer of the new sign-in.
async fn switch_account(
    app: &AppState,
    headers: &HeaderMap,
    pending: PendingAuthorization,
) -> Result<Response, RouteError> {
    let upstream = app.upstream.get().ok_or_else(|| {
        RouteError::Page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in unavailable",
            "Your organisation's sign-in page cannot be reached right now. Try again in a moment."
                .into(),
        )
    })?;
    let now = now_unix();
    let verifier = random_token(32);
    let fresh = PendingAuthorization {
        id: random_token(16),
        upstream_state: random_token(24),
        upstream_nonce: random_token(24),
        upstream_verifier: verifier.clone(),
        csrf: random_token(24),
        stage: AuthorizationStage::AtIdp,
        login: None,
        created_at: now,
        expires_at: now + app.lifetimes.pending_authorization,
        ..pending.clone()
    };
    app.store
        .add_pending(&fresh)
        .await
        .map_err(|e| RouteError::internal("store pending", &e))?;
    if pending.purpose == Purpose::DeviceGrant {
        app.store
            .repoint_device(&pending.id, &fresh.id)
            .await
            .map_err(|e| RouteError::internal("repoint device authorization", &e))?;
    }
    app.store
        .delete_pending(&pending.id)
        .await
        .map_err(|e| RouteError::internal("delete pending", &e))?;
    if let Some(login) = &pending.login {
        revoke_sealed_login(app, login).await;
    }
    let mut extra = app.provider.authorize_parameters();
    extra.retain(|(k, _)| k != "prompt");
    extra.push(("prompt".into(), "login".into()));
    let url = upstream.authorization_url(&crate::upstream::UpstreamAuthorization {
        redirect_uri: app.callback_url(),
        state: fresh.upstream_state.clone(),
        nonce: fresh.upstream_nonce.clone(),
        code_challenge: super::authorize::pkce_s256(&verifier),
        extra,
    });
    tracing::info!(client_id = %fresh.client_id, "sign-in started again with another account");
    // The browser keeps its binding cookie (the new sign-in is bound to the same browser).
    Ok(
        super::authorize::BrowserBinding::of(headers, app.secure_cookies())
            .redirect(url.as_str(), app.secure_cookies()),
    )
}

/// The consent-relevant scopes of a sign-in (validated at `/authorize`).
fn requested_scopes(
    pending: &PendingAuthorization,
) -> Result<std::collections::BTreeSet<String>, RouteError> {
    let scope = crate::scope::MatrixScope::parse(&pending.scope)
        .map_err(|e| RouteError::internal("stored scope", &e))?;
    Ok(crate::consent::scopes_of(&scope))
}

fn client_redirect_for(
    app: &AppState,
    p: &PendingAuthorization,
) -> Result<super::authorize::ClientRedirect, RouteError> {
    client_redirect(app, p).map_err(|_| {
        RouteError::Page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "This server cannot send you back to the app.".into(),
        )
    })
}

/// Creates or updates the account. Profile data never blocks a sign-in: when the homeserver
/// refuses the request with the profile (a display name or e-mail it will not take), the account
/// is provisioned without it, and that is logged and audited. A refusal of the account itself
/// is shown for what it is, an outage as an outage.
async fn provision(app: &AppState, request: &ProvisionRequest) -> Result<(), RouteError> {
    let refused = |e: &HomeserverError| !e.is_transient();
    let first = app.homeserver.provision_user(request).await;
    let outcome = match first {
        Err(e) if refused(&e) && request.has_profile() => {
            tracing::warn!(localpart = %request.localpart, error = %e, "the homeserver refused the profile; provisioning without it");
            crate::audit::record(
                app.store.as_ref(),
                crate::audit::AuditEntry {
                    actor: "mxidp".into(),
                    action: "profile.skipped".into(),
                    target: request.localpart.to_string(),
                    source: "consent".into(),
                    outcome: format!("skipped: {e}"),
                    correlation_id: request.localpart.to_string(),
                    details: serde_json::Value::Null,
                },
            )
            .await;
            app.homeserver
                .provision_user(&ProvisionRequest::new(request.localpart.clone()))
                .await
        }
        other => other,
    };
    match outcome {
        Ok(_) => Ok(()),
        Err(e) if refused(&e) => Err(RouteError::Logged(
            StatusCode::FORBIDDEN,
            "Matrix account refused",
            "The Matrix server refused to prepare your account. Ask your administrator.".into(),
            internal("provision user refused", &e),
        )),
        Err(e) => Err(RouteError::Logged(
            StatusCode::BAD_GATEWAY,
            "Matrix server unavailable",
            "Your Matrix account could not be prepared. Try again in a moment.".into(),
            internal("provision user", &e),
        )),
    }
}

/// Provision the user in the homeserver (the account must exist before the client's first
/// request) and hand the client a short-lived single-use code.
async fn complete(
    app: &AppState,
    mut pending: PendingAuthorization,
) -> Result<Response, RouteError> {
    let login = pending.login.clone().ok_or_else(|| {
        RouteError::Page(
            StatusCode::BAD_REQUEST,
            "Sign-in incomplete",
            "This sign-in did not finish at your organisation's sign-in page.".into(),
        )
    })?;
    let mut request = ProvisionRequest::new(login.localpart.clone());
    if let Some(name) = &login.display_name {
        request.displayname = FieldAction::Set(name.clone());
    }
    if !login.emails.is_empty() {
        request.emails = FieldAction::Set(login.emails.clone());
    }
    if let Err(e) = provision(app, &request).await {
        if pending.purpose == Purpose::DeviceGrant {
            let _ = super::device::deny(app, &pending).await;
        } else {
            let _ = app.store.delete_pending(&pending.id).await;
        }
        revoke_sealed_login(app, &login).await;
        return Err(e);
    }
    // One code per sign-in: a resubmitted consent form finds the stage moved on.
    pending.stage = AuthorizationStage::CodeIssued;
    app.store
        .update_pending(&pending)
        .await
        .map_err(|e| RouteError::internal("update pending", &e))?;
    if pending.purpose == Purpose::CompatSso {
        let to = super::compat::login_token_redirect(app, &pending)
            .await
            .map_err(|e| RouteError::internal("store login token", &e))?;
        tracing::info!(localpart = %login.localpart, "compatibility login token issued");
        return Ok(see_other(to.as_str()));
    }
    if pending.purpose == Purpose::DeviceGrant {
        let name = client_name(app, &pending).await;
        tracing::info!(localpart = %login.localpart, client_id = %pending.client_id, "device authorization granted");
        return super::device::approve(app, &pending, &name).await;
    }
    let code = random_token(32);
    app.store
        .add_code(
            TokenHash::of(&code),
            &pending.id,
            now_unix() + app.lifetimes.authorization_code,
        )
        .await
        .map_err(|e| RouteError::internal("store code", &e))?;
    let to = client_redirect_for(app, &pending)?;
    tracing::info!(localpart = %login.localpart, client_id = %pending.client_id, "authorization granted");
    Ok(see_other(to.url(&[("code", &code)]).as_str()))
}

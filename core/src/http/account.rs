//! `GET /account` (`account_management_uri`, MSC4191): sends the user to where the action can
//! be done. Profile and device pages live at the IdP when it has them. A cross-signing reset
//! re-authenticates the user at the IdP (`prompt=login`, `max_age=0`), shows a confirmation page
//! at its own address (`GET /account/confirm?pending=…`, reloadable, for that browser only)
//! that names the action, the Matrix user and the consequence, and only when that page is
//! submitted (`POST /account/confirm`, a CSRF token bound to the browser that started) opens
//! Synapse's 10-minute window for replacing the cross-signing keys (docs/synapse-contract.md).
//!
//! Why the confirmation: a genuine reset link is a GET anyone can send. Someone holding a stolen
//! access token could send the victim the link and, once the victim signed in at the IdP,
//! replace the victim's cryptographic identity within the window. The page tells the victim
//! what is about to happen, and nothing happens unless they say so from the same browser.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::authorize::{pkce_s256, see_other, BrowserBinding};
use super::browser_flow::same_browser;
use super::{internal, pages, paths, App, AppState};
use crate::ids::{now_unix, random_token, DeviceId};
use crate::provider::AccountAction;
use crate::secret::constant_time_eq;
use crate::store::{
    AuthorizationStage, PendingAuthorization, Purpose, ResponseMode, UpstreamLogin,
};
use crate::upstream::{IdTokenClaims, UpstreamAuthorization, UpstreamTokens};

#[derive(Debug, Deserialize)]
pub struct AccountQuery {
    action: Option<String>,
    #[allow(dead_code)]
    device_id: Option<String>,
}

/// MSC4191 names and their historical aliases.
pub fn parse_action(action: &str) -> Option<AccountAction> {
    Some(match action {
        "org.matrix.profile" | "profile" => AccountAction::Profile,
        "org.matrix.devices_list" | "org.matrix.sessions_list" | "sessions_list" => {
            AccountAction::DevicesList
        }
        "org.matrix.device_view" | "org.matrix.session_view" | "session_view" => {
            AccountAction::DeviceView
        }
        "org.matrix.device_delete" | "org.matrix.session_end" | "session_end" => {
            AccountAction::DeviceDelete
        }
        "org.matrix.account_deactivate" => AccountAction::AccountDeactivate,
        "org.matrix.cross_signing_reset" => AccountAction::CrossSigningReset,
        _ => return None,
    })
}

pub async fn get(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    // A query that does not parse is the landing page, not a parser message.
    let q: AccountQuery =
        serde_urlencoded::from_str(query.as_deref().unwrap_or("")).unwrap_or(AccountQuery {
            action: None,
            device_id: None,
        });
    let action = q.action.as_deref().and_then(parse_action);
    if action == Some(AccountAction::CrossSigningReset) {
        return start_cross_signing_reset(&app, &headers).await;
    }
    match action.and_then(|a| account_url(&app, a)) {
        Some(url) => see_other(url.as_str()),
        None => account_page(&app),
    }
}

/// Where an action is done at the IdP: the configured page wins over the adapter's default.
fn account_url(app: &AppState, action: AccountAction) -> Option<url::Url> {
    app.account_url.clone().or_else(|| {
        app.upstream
            .get()
            .and_then(|u| app.provider.account_url(u.metadata(), action))
    })
}

/// The `account_management_uri` without an action (or one the IdP has no page for): what can
/// be done where, rather than a dead end.
fn account_page(app: &AppState) -> Response {
    let mut idp_links: Vec<(url::Url, &str)> = Vec::new();
    for (action, label) in [
        (AccountAction::Profile, "Your profile, name and password"),
        (AccountAction::DevicesList, "Your devices and sign-ins"),
    ] {
        if let Some(url) = account_url(app, action) {
            if !idp_links.iter().any(|(u, _)| *u == url) {
                idp_links.push((url, label));
            }
        }
    }
    let idp = if idp_links.is_empty() {
        "<p>Your account is managed by your organisation's identity provider. Your administrator can tell you where to change your name, password or devices.</p>"
            .to_owned()
    } else {
        let items: String = idp_links
            .iter()
            .map(|(url, label)| {
                format!(
                    "<li><a href=\"{}\" rel=\"noopener noreferrer\">{}</a></li>",
                    pages::escape(url.as_str()),
                    pages::escape(label)
                )
            })
            .collect();
        format!(
            "<p>Your account is managed by your organisation's identity provider:</p><ul>{items}</ul>"
        )
    };
    let mut reset = app.url(paths::ACCOUNT);
    reset
        .query_pairs_mut()
        .append_pair("action", "org.matrix.cross_signing_reset");
    let main = format!(
        "<h1>Your Matrix account</h1>{idp}\
<h2>Encryption</h2><p>If you lost every device and your recovery key, you can reset your \
cryptographic identity. You will sign in again and confirm before anything changes.</p>\
<p><a href=\"{}\">Reset your cryptographic identity</a></p>",
        pages::escape(reset.as_str())
    );
    pages::page(StatusCode::OK, "Your Matrix account", main)
}

async fn start_cross_signing_reset(app: &AppState, headers: &HeaderMap) -> Response {
    let Some(upstream) = app.upstream.get() else {
        return pages::error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Identity provider unavailable",
            "Try again in a moment.",
        );
    };
    let now = now_unix();
    if let Err(refused) = super::authorize::check_pending_capacity(app, now).await {
        return axum::response::IntoResponse::into_response(refused);
    }
    let binding = BrowserBinding::of(headers, app.secure_cookies());
    let verifier = random_token(32);
    // Only the upstream half of a pending authorization is used for a re-authentication.
    let pending = PendingAuthorization {
        id: random_token(16),
        purpose: Purpose::CrossSigningReset,
        browser_binding: binding.hash(),
        client_id: String::new(),
        redirect_uri: String::new(),
        response_mode: ResponseMode::Query,
        client_state: None,
        code_challenge: String::new(),
        scope: String::new(),
        device_id: DeviceId::parse("CROSS-SIGNING-RESET").expect("a valid placeholder device id"),
        signup: false,
        upstream_state: random_token(24),
        upstream_nonce: random_token(24),
        upstream_verifier: verifier.clone(),
        csrf: random_token(24),
        user_code: None,
        stage: AuthorizationStage::AtIdp,
        login: None,
        created_at: now,
        expires_at: now + app.lifetimes.pending_authorization,
    };
    if let Err(e) = app.store.add_pending(&pending).await {
        let id = internal("store pending reset", &e);
        return pages::logged_error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "A problem on this server stopped this. Nothing was changed.",
            &id,
        );
    }
    let url = upstream.authorization_url(&UpstreamAuthorization {
        redirect_uri: app.callback_url(),
        state: pending.upstream_state.clone(),
        nonce: pending.upstream_nonce.clone(),
        code_challenge: pkce_s256(&verifier),
        extra: app.provider.reauthentication_parameters(),
    });
    binding.redirect(url.as_str(), app.secure_cookies())
}

/// The IdP callback of a re-authentication: the identity must be known, and the sign-in fresh.
pub async fn finish_cross_signing_reset(
    app: &AppState,
    pending: &PendingAuthorization,
    validated: &IdTokenClaims,
    tokens: &UpstreamTokens,
) -> Response {
    // mxidp needs only the proof of sign-in, not a session: hand the tokens back to the IdP.
    if let (Some(refresh), Some(upstream)) = (&tokens.refresh_token, app.upstream.get()) {
        let _ = upstream
            .revoke(
                refresh.expose(),
                crate::upstream::TokenTypeHint::RefreshToken,
            )
            .await;
    }
    // max_age=0 asks for a new sign-in, and OIDC Core §3.1.2.1 makes `auth_time` required
    // whenever max_age was sent: no auth_time, or an old one, is no proof of a fresh sign-in.
    let leeway = 60;
    let fresh = validated
        .auth_time
        .is_some_and(|t| t + leeway >= pending.created_at);
    if !fresh {
        return pages::error_page(
            StatusCode::FORBIDDEN,
            "Sign-in not confirmed",
            "The identity provider did not confirm a new sign-in. Try again, or ask your administrator.",
        );
    }
    // The same checks as a sign-in: the adapter's claims rules, its subject, the access policy.
    let claims = &validated.claims;
    let allowed = app.provider.validate_claims(claims).is_ok()
        && app
            .mapping
            .access
            .as_ref()
            .is_none_or(|p| p.allows(claims, &app.provider.roles(claims)));
    let identity = match app.provider.subject(claims) {
        Some(subject) if allowed => {
            app.store
                .identity_by_subject(&app.mapping.upstream_id, &subject)
                .await
        }
        _ => Ok(None),
    };
    let identity = match identity {
        Ok(Some(identity)) if identity.deleted_at.is_none() => identity,
        Ok(_) => {
            return pages::error_page(
                StatusCode::FORBIDDEN,
                "No Matrix account",
                "This identity has no Matrix account on this server, or may not use it.",
            )
        }
        Err(e) => {
            let id = internal("load identity", &e);
            return pages::logged_error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "A problem on this server stopped this. Nothing was changed.",
                &id,
            );
        }
    };
    // Nothing happens yet: the same pending row now waits for the user's confirmation, for a
    // short while, bound to this browser and its CSRF token.
    let now = now_unix();
    let mut confirming = pending.clone();
    confirming.stage = AuthorizationStage::AwaitingConsent;
    confirming.expires_at = now + CONFIRMATION_SECONDS;
    confirming.login = Some(UpstreamLogin {
        subject: identity.subject.clone(),
        localpart: identity.localpart.clone(),
        idp_sid: None,
        admin: false,
        sealed_tokens: String::new(),
        access_expires_in: None,
        display_name: None,
        emails: Vec::new(),
    });
    if let Err(e) = app.store.update_pending(&confirming).await {
        let id = internal("store reset confirmation", &e);
        return pages::logged_error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "A problem on this server stopped this. Nothing was changed.",
            &id,
        );
    }
    // Post/redirect/get, as the consent page: the confirmation has its own address, which
    // survives a reload, and the IdP's code leaves the address bar.
    show_confirmation(app, &confirming)
}

/// Redirects to the confirmation page of a reset waiting for the user's word.
pub fn show_confirmation(app: &AppState, pending: &PendingAuthorization) -> Response {
    let mut url = app.url(paths::ACCOUNT_CONFIRM);
    url.query_pairs_mut().append_pair("pending", &pending.id);
    see_other(url.as_str())
}

// No Debug: it names a reset in progress.
#[derive(Deserialize)]
pub struct ConfirmQuery {
    pending: Option<String>,
}

/// `GET /account/confirm?pending=…`: the confirmation page, for the browser that started the
/// reset, until it is answered or expires.
pub async fn confirmation(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let expired = || {
        pages::error_page(
            StatusCode::BAD_REQUEST,
            "Confirmation expired",
            "This confirmation is not valid (expired, already answered, or from another browser). Nothing was changed. Start again from your Matrix app.",
        )
    };
    let id = serde_urlencoded::from_str::<ConfirmQuery>(query.as_deref().unwrap_or(""))
        .ok()
        .and_then(|q| q.pending);
    let Some(id) = id else { return expired() };
    let pending = match app.store.pending(&id).await {
        Ok(Some(p))
            if p.purpose == Purpose::CrossSigningReset
                && p.stage == AuthorizationStage::AwaitingConsent
                && p.expires_at >= now_unix()
                && same_browser(&app, &headers, &p) =>
        {
            p
        }
        Ok(_) => return expired(),
        Err(e) => {
            let id = internal("load reset confirmation", &e);
            return pages::logged_error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "A problem on this server stopped this. Nothing was changed.",
                &id,
            );
        }
    };
    let Some(login) = &pending.login else {
        return expired();
    };
    pages::confirm_page(&pages::ConfirmView {
        title: "Reset your cryptographic identity?",
        action_text: "reset the cryptographic identity (cross-signing keys)",
        user_id: &login.localpart.user_id(app.homeserver.server_name()),
        consequence:
            "Your Matrix app will then replace your cross-signing keys within 10 minutes. \
Your other devices and the people you talk to will see a new identity and have to verify you \
again; encrypted messages you cannot back up may become unreadable. If you did not start this \
from your own Matrix app, cancel.",
        confirm_label: "Reset my identity",
        pending_id: &pending.id,
        csrf: &pending.csrf,
        action: app.url(paths::ACCOUNT_CONFIRM).as_str(),
    })
}

/// How long the confirmation page stays valid.
const CONFIRMATION_SECONDS: i64 = 300;

// No Debug: it carries the CSRF token.
#[derive(Deserialize)]
pub struct ConfirmForm {
    pending: String,
    csrf: String,
    decision: String,
}

/// `POST /account/confirm`: the confirmation of a destructive account action, from the browser
/// that started it, with its CSRF token. Single use: the pending row goes whatever the answer.
pub async fn confirm(
    State(app): State<App>,
    headers: HeaderMap,
    form: Result<axum::Form<ConfirmForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let refused = || {
        pages::error_page(
            StatusCode::FORBIDDEN,
            "Not confirmed",
            "This confirmation is not valid (expired, already used, or from another browser). Start again from your Matrix app.",
        )
    };
    let Ok(axum::Form(form)) = form else {
        return refused();
    };
    let pending = match app.store.pending(&form.pending).await {
        Ok(Some(p))
            if p.purpose == Purpose::CrossSigningReset
                && p.stage == AuthorizationStage::AwaitingConsent
                && p.expires_at >= now_unix() =>
        {
            p
        }
        Ok(_) => return refused(),
        Err(e) => {
            let id = internal("load reset confirmation", &e);
            return pages::logged_error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "A problem on this server stopped this. Nothing was changed.",
                &id,
            );
        }
    };
    if !same_browser(&app, &headers, &pending)
        || !constant_time_eq(form.csrf.as_bytes(), pending.csrf.as_bytes())
    {
        tracing::warn!(
            "cross-signing reset confirmation from another browser or without its CSRF token"
        );
        return refused();
    }
    let _ = app.store.delete_pending(&pending.id).await;
    let Some(login) = &pending.login else {
        return refused();
    };
    if form.decision != "confirm" {
        return pages::info_page(
            "Nothing was changed",
            "Your cryptographic identity stays as it is. You can close this page.",
        );
    }
    match app
        .homeserver
        .allow_cross_signing_reset(&login.localpart)
        .await
    {
        Ok(()) => {
            tracing::info!(localpart = %login.localpart, "cross-signing reset allowed for 10 minutes");
            crate::audit::record(
                app.store.as_ref(),
                crate::audit::AuditEntry {
                    actor: format!("user:{}", login.localpart),
                    action: "account.cross_signing_reset_allowed".into(),
                    target: login.localpart.to_string(),
                    source: "account".into(),
                    outcome: "ok".into(),
                    correlation_id: pending.id.clone(),
                    details: serde_json::json!({ "subject": login.subject, "window_seconds": 600 }),
                },
            )
            .await;
            pages::info_page(
                "Identity reset allowed",
                "You can now reset your cryptographic identity in your Matrix app. Go back to the app and finish within 10 minutes.",
            )
        }
        Err(e) => {
            let id = internal("allow cross-signing reset", &e);
            pages::logged_error_page(
                StatusCode::BAD_GATEWAY,
                "Matrix server unavailable",
                "The reset could not be allowed. Nothing was changed. Try again in a moment.",
                &id,
            )
        }
    }
}

//! The consent page (remembered per user, client and scopes, see [`crate::consent`]) and its form: `POST /consent`. The form
//! counts only with the browser cookie of the sign-in and the CSRF token of the page.
//! After consent the user is provisioned in the homeserver and the client gets a single-use code.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use serde::Deserialize;

use super::authorize::see_other;
use super::browser_flow::{client_redirect, revoke_sealed_login, same_browser};
use super::{internal, pages, paths, App, AppState};
use crate::homeserver::{FieldAction, HomeserverError, ProvisionRequest};
use crate::ids::{now_unix, random_token, TokenHash};
use crate::registration::ClientMetadata;
use crate::secret::constant_time_eq;
use crate::signin::MatrixLogin;
use crate::store::{AuthorizationStage, PendingAuthorization};

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
    if crate::consent::covers(
        remembered.as_ref(),
        &requested,
        crate::consent::redirect_identifies_client(&pending.redirect_uri),
        app.consent.native_remember_seconds,
        now_unix(),
    ) {
        return complete(app, pending).await;
    }
    let client = app
        .store
        .client(&pending.client_id)
        .await
        .map_err(|e| RouteError::internal("load client", &e))?
        .ok_or_else(|| {
            RouteError::Page(
                StatusCode::BAD_REQUEST,
                "Unknown application",
                "The application is no longer registered.".into(),
            )
        })?;
    let metadata: ClientMetadata = client.metadata;
    let client_uri = metadata.client_uri.to_string();
    let name = metadata
        .client_name
        .clone()
        .unwrap_or_else(|| client_uri.clone());
    Ok(pages::consent_page(&pages::ConsentView {
        pending_id: &pending.id,
        csrf: &pending.csrf,
        client_name: &name,
        client_uri: &client_uri,
        user_id: &login.localpart.user_id(app.homeserver.server_name()),
        device_id: pending.device_id.as_str(),
        admin: login.admin && pending.scope.contains("urn:synapse:admin:*"),
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
    Form(form): Form<ConsentForm>,
) -> Result<Response, RouteError> {
    let refuse = |msg: &str| {
        RouteError::Page(
            StatusCode::BAD_REQUEST,
            "Consent not accepted",
            msg.to_owned(),
        )
    };
    let pending = app
        .store
        .pending(&form.pending)
        .await
        .map_err(|e| RouteError::internal("load pending", &e))?
        .filter(|p| p.expires_at >= now_unix() && p.stage == AuthorizationStage::AwaitingConsent)
        .ok_or_else(|| {
            refuse("This sign-in is unknown or has expired. Start again from the application.")
        })?;
    if !same_browser(&app, &headers, &pending)
        || !constant_time_eq(form.csrf.as_bytes(), pending.csrf.as_bytes())
    {
        tracing::warn!(pending = %pending.id, "consent form without the sign-in's cookie or CSRF token");
        return Err(refuse(
            "This form was not submitted from the page mxidp showed in this browser.",
        ));
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
        _ => {
            app.store
                .delete_pending(&pending.id)
                .await
                .map_err(|e| RouteError::internal("delete pending", &e))?;
            revoke_sealed_login(&app, login).await;
            let to = client_redirect_for(&app, &pending)?;
            Ok(to.error("access_denied", "the user denied access"))
        }
    }
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
            "Invalid stored redirect.".into(),
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
        Err(e) if refused(&e) => Err(RouteError::Page(
            StatusCode::FORBIDDEN,
            "Matrix account refused",
            format!(
                "The homeserver refused to prepare your Matrix account ({e}). Ask your administrator. Reference: {}",
                internal("provision user refused", &e)
            ),
        )),
        Err(e) => Err(RouteError::Page(
            StatusCode::BAD_GATEWAY,
            "Homeserver unavailable",
            format!(
                "Your Matrix account could not be prepared. Try again in a moment. Reference: {}",
                internal("provision user", &e)
            ),
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
            "Start again from the application.".into(),
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
        let _ = app.store.delete_pending(&pending.id).await;
        revoke_sealed_login(app, &login).await;
        return Err(e);
    }
    // One code per sign-in: a resubmitted consent form finds the stage moved on.
    pending.stage = AuthorizationStage::CodeIssued;
    app.store
        .update_pending(&pending)
        .await
        .map_err(|e| RouteError::internal("update pending", &e))?;
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

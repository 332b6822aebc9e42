//! `GET /account` (`account_management_uri`, MSC4191): sends the user to where the action can
//! be done. Profile and device pages live at the IdP when it has them. A cross-signing reset
//! re-authenticates the user at the IdP (`prompt=login`, `max_age=0`) and then opens Synapse's
//! 10-minute window for replacing the cross-signing keys (docs/synapse-contract.md).

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::authorize::{pkce_s256, see_other, BrowserBinding};
use super::{internal, pages, App, AppState};
use crate::ids::{now_unix, random_token, DeviceId};
use crate::provider::AccountAction;
use crate::store::{AuthorizationStage, PendingAuthorization, Purpose, ResponseMode};
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
    Query(q): Query<AccountQuery>,
) -> Response {
    let action = q
        .action
        .as_deref()
        .and_then(parse_action)
        .unwrap_or(AccountAction::Profile);
    if action == AccountAction::CrossSigningReset {
        return start_cross_signing_reset(&app, &headers).await;
    }
    // The configured page wins over the adapter's default.
    let url = app.account_url.clone().or_else(|| {
        app.upstream
            .get()
            .and_then(|u| app.provider.account_url(u.metadata(), action))
    });
    match url {
        Some(url) => see_other(url.as_str()),
        None => pages::error_page(
            StatusCode::NOT_FOUND,
            "Account management",
            "Your account is managed by your organisation's identity provider. Ask your administrator where to change it.",
        ),
    }
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
        stage: AuthorizationStage::AtIdp,
        login: None,
        created_at: now,
        expires_at: now + app.lifetimes.pending_authorization,
    };
    if let Err(e) = app.store.add_pending(&pending).await {
        let id = internal("store pending reset", &e);
        return pages::error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            &format!("Reference: {id}"),
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
    let _ = app.store.delete_pending(&pending.id).await;
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
            return pages::error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                &format!("Reference: {id}"),
            );
        }
    };
    match app
        .homeserver
        .allow_cross_signing_reset(&identity.localpart)
        .await
    {
        Ok(()) => {
            tracing::info!(localpart = %identity.localpart, "cross-signing reset allowed for 10 minutes");
            pages::info_page(
                "Identity reset allowed",
                "You can now reset your cryptographic identity in your Matrix app. Go back to the app and finish within 10 minutes.",
            )
        }
        Err(e) => {
            let id = internal("allow cross-signing reset", &e);
            pages::error_page(
                StatusCode::BAD_GATEWAY,
                "Homeserver unavailable",
                &format!("The reset could not be allowed. Try again in a moment. Reference: {id}"),
            )
        }
    }
}

//! The device authorization grant (RFC 8628): a client that cannot open a browser (a TV, a
//! CLI, a second device) asks `POST /oauth2/device` for a device code and a user code, and the
//! user enters the user code at `GET /link` in any browser. From there the sign-in is the
//! browser sign-in of the code flow (the IdP, the callback, the consent page), bound to that
//! browser; instead of redirecting to the client, consent marks the grant approved, and the
//! client's next poll of the token endpoint gets the tokens (see [`super::token`]).
//!
//! Both codes are stored only as hashes. The user code is spent by the first browser that
//! enters it; the whole grant lives `sessions.device_code_seconds`.

use axum::extract::rejection::FormRejection;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use serde::Deserialize;
use serde_json::json;

use super::authorize::{pkce_s256, BrowserBinding};
use super::pages::{self, escape, PageError};
use super::{internal, oauth_error, paths, App, AppState};
use crate::ids::{now_unix, random_token, TokenHash};
use crate::registration::GrantType;
use crate::scope::MatrixScope;
use crate::store::{
    AuthorizationStage, DeviceAuthorization, DeviceStatus, PendingAuthorization, Purpose,
    ResponseMode,
};
use crate::upstream::UpstreamAuthorization;

/// Seconds between polls (RFC 8628 §3.2 suggests 5), and what `slow_down` adds.
pub const POLL_INTERVAL: i64 = 5;

/// The user code alphabet: 20 consonants, no vowels (no words) and nothing that looks like a
/// digit (RFC 8628 §6.1). Eight of them are about 34 bits, with guesses rate-limited per address
/// and every code short-lived and single-use.
const USER_CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";
const USER_CODE_LEN: usize = 8;

/// A new user code, shown as `XXXX-XXXX`.
fn new_user_code() -> String {
    use rand::Rng;
    let mut rng = rand::rngs::OsRng;
    let letters: String = (0..USER_CODE_LEN)
        .map(|_| USER_CODE_ALPHABET[rng.gen_range(0..USER_CODE_ALPHABET.len())] as char)
        .collect();
    format!("{}-{}", &letters[..4], &letters[4..])
}

/// What the user typed, in the canonical form (`XXXX-XXXX`), or `None` when it cannot be a
/// user code. Case, spaces and dashes do not matter (RFC 8628 §6.1).
pub fn normalize_user_code(typed: &str) -> Option<String> {
    let letters: String = typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (letters.len() == USER_CODE_LEN && letters.bytes().all(|b| USER_CODE_ALPHABET.contains(&b)))
        .then(|| format!("{}-{}", &letters[..4], &letters[4..]))
}

// No Debug: a request for codes.
#[derive(Deserialize)]
pub struct DeviceAuthorizationForm {
    client_id: Option<String>,
    scope: Option<String>,
}

fn no_store(mut response: Response) -> Response {
    super::no_store(&mut response);
    response
}

/// `POST /oauth2/device`: a device authorization request (RFC 8628 §3.1).
pub async fn post(
    State(app): State<App>,
    form: Result<Form<DeviceAuthorizationForm>, FormRejection>,
) -> Response {
    let error = |status, code: &str, description: &str| {
        no_store(oauth_error(status, code, description.to_owned()))
    };
    let Ok(Form(form)) = form else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request body is not a form",
        );
    };
    let Some(client_id) = form.client_id.as_deref().filter(|c| !c.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_id is missing",
        );
    };
    let client = match app.store.client(client_id).await {
        Ok(Some(client)) => client,
        Ok(None) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "the client is not registered",
            )
        }
        Err(e) => {
            let id = internal("load client", &e);
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                &format!("internal error {id}"),
            );
        }
    };
    if !client.metadata.grant_types.contains(&GrantType::DeviceCode) {
        return error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "the client did not register the device_code grant type",
        );
    }
    // The same Matrix scope rules as the code flow: the device scope names the device.
    let scope_text = form.scope.as_deref().unwrap_or("");
    let scope = match MatrixScope::parse(scope_text) {
        Ok(scope) => scope,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_scope", &e.to_string()),
    };
    let now = now_unix();
    // A device grant is a sign-in in progress like any other, and counts against the same cap.
    match app.store.pending_count(now).await {
        Ok(n) if n >= app.limits.settings().max_pending_authorizations => {
            tracing::warn!(
                in_progress = n,
                "sign-ins in progress at limits.max_pending_authorizations"
            );
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "too many sign-ins in progress; try again later",
            );
        }
        Ok(_) => {}
        Err(e) => {
            let id = internal("count pending", &e);
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                &format!("internal error {id}"),
            );
        }
    }
    let expires_at = now + app.lifetimes.device_code;
    let device_code = random_token(32);
    let user_code = new_user_code();
    let pending = PendingAuthorization {
        id: random_token(16),
        purpose: Purpose::DeviceGrant,
        // Bound to a browser when one enters the user code.
        browser_binding: String::new(),
        client_id: client.client_id.clone(),
        redirect_uri: String::new(),
        response_mode: ResponseMode::Query,
        client_state: None,
        code_challenge: String::new(),
        scope: scope_text.to_owned(),
        device_id: scope.device_id().clone(),
        signup: false,
        upstream_state: random_token(24),
        upstream_nonce: random_token(24),
        upstream_verifier: random_token(32),
        csrf: random_token(24),
        user_code: None,
        stage: AuthorizationStage::AtIdp,
        login: None,
        created_at: now,
        expires_at,
    };
    let grant = DeviceAuthorization {
        device_code: TokenHash::of(&device_code),
        user_code: TokenHash::of(&user_code),
        pending_id: pending.id.clone(),
        client_id: client.client_id.clone(),
        status: DeviceStatus::Pending,
        interval: POLL_INTERVAL,
        last_poll_at: None,
        created_at: now,
        expires_at,
    };
    if let Err(e) = app.store.add_device_authorization(&grant, &pending).await {
        let id = internal("store device authorization", &e);
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            &format!("internal error {id}"),
        );
    }
    let verification_uri = app.url(paths::LINK);
    let mut complete = verification_uri.clone();
    complete.query_pairs_mut().append_pair("code", &user_code);
    tracing::info!(client_id = %client.client_id, device_id = %pending.device_id, "device authorization started");
    no_store(
        Json(json!({
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": verification_uri.as_str(),
            "verification_uri_complete": complete.as_str(),
            "expires_in": app.lifetimes.device_code,
            "interval": POLL_INTERVAL,
        }))
        .into_response(),
    )
}

// No Debug: a user code.
#[derive(Deserialize)]
pub struct LinkQuery {
    code: Option<String>,
}

/// The form where the user types the code their device shows, with a message above it.
fn code_form(app: &AppState, status: StatusCode, title: &str, message: &str) -> Response {
    let main = format!(
        "<h1>{title}</h1><p>{message}</p>\
<form method=\"get\" action=\"{action}\">\
<label for=\"code\">Code</label> \
<input id=\"code\" name=\"code\" autocomplete=\"off\" autocapitalize=\"characters\" spellcheck=\"false\" placeholder=\"XXXX-XXXX\" required>\
<div class=\"actions\"><button class=\"primary\" type=\"submit\">Continue</button></div></form>",
        title = escape(title),
        message = escape(message),
        action = escape(app.url(paths::LINK).as_str()),
    );
    pages::page(status, title, main)
}

/// `GET /link` (`?code=` typed, or pre-filled from `verification_uri_complete`): the user code
/// page. A valid code sends this browser to the IdP; anything else shows the form again with
/// what was wrong, and changes nothing.
pub async fn link(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, PageError> {
    let typed = serde_urlencoded::from_str::<LinkQuery>(query.as_deref().unwrap_or(""))
        .ok()
        .and_then(|q| q.code)
        .filter(|c| !c.trim().is_empty());
    let Some(typed) = typed else {
        return Ok(code_form(
            &app,
            StatusCode::OK,
            "Sign in a device",
            "Enter the code your device or app shows.",
        ));
    };
    let wrong = || {
        code_form(
            &app,
            StatusCode::BAD_REQUEST,
            "Code not recognised",
            "This code is not valid or has expired. Check the code your device shows now, or start again on the device to get a new one.",
        )
    };
    let Some(user_code) = normalize_user_code(&typed) else {
        return Ok(wrong());
    };
    let now = now_unix();
    let grant = app
        .store
        .device_authorization_by_user_code(TokenHash::of(&user_code))
        .await
        .map_err(|e| PageError::internal("load device authorization", &e))?;
    let Some(grant) = grant.filter(|g| g.expires_at >= now) else {
        return Ok(wrong());
    };
    let used = || {
        code_form(
            &app,
            StatusCode::BAD_REQUEST,
            "Code already used",
            "This code has already been entered. If that was not you, start again on your device to get a new code.",
        )
    };
    if grant.status != DeviceStatus::Pending {
        return Ok(used());
    }
    let Some(mut pending) = app
        .store
        .pending(&grant.pending_id)
        .await
        .map_err(|e| PageError::internal("load pending", &e))?
    else {
        return Ok(wrong());
    };
    let upstream = app.upstream.get().ok_or_else(|| {
        PageError::Page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in unavailable",
            "Your organisation's sign-in page cannot be reached right now. Try again in a moment."
                .into(),
        )
    })?;
    // The first browser to enter the code spends it: the sign-in is bound to that browser, as
    // a code-flow sign-in is to the browser that started it.
    if !app
        .store
        .set_device_status(&pending.id, &[DeviceStatus::Pending], DeviceStatus::Claimed)
        .await
        .map_err(|e| PageError::internal("claim device authorization", &e))?
    {
        return Ok(used());
    }
    let binding = BrowserBinding::of(&headers, app.secure_cookies());
    pending.browser_binding = binding.hash();
    pending.user_code = Some(user_code);
    app.store
        .update_pending(&pending)
        .await
        .map_err(|e| PageError::internal("update pending", &e))?;
    let url = upstream.authorization_url(&UpstreamAuthorization {
        redirect_uri: app.callback_url(),
        state: pending.upstream_state.clone(),
        nonce: pending.upstream_nonce.clone(),
        code_challenge: pkce_s256(&pending.upstream_verifier),
        extra: app.provider.authorize_parameters(),
    });
    tracing::info!(client_id = %pending.client_id, device_id = %pending.device_id, "device code entered");
    let mut response = binding.redirect(url.as_str(), app.secure_cookies());
    response.headers_mut().insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    Ok(response)
}

/// A device sign-in that ends without consent (the user denied, the IdP refused, a policy
/// refused): the grant is denied, so the device's next poll gets `access_denied`, and the
/// sign-in is forgotten.
pub async fn deny(app: &AppState, pending: &PendingAuthorization) -> Result<(), PageError> {
    app.store
        .set_device_status(
            &pending.id,
            &[DeviceStatus::Pending, DeviceStatus::Claimed],
            DeviceStatus::Denied,
        )
        .await
        .map_err(|e| PageError::internal("deny device authorization", &e))?;
    app.store
        .delete_pending(&pending.id)
        .await
        .map_err(|e| PageError::internal("delete pending", &e))?;
    Ok(())
}

/// After consent: the grant is approved and the device's next poll gets its tokens.
pub async fn approve(
    app: &AppState,
    pending: &PendingAuthorization,
    client: &str,
) -> Result<Response, PageError> {
    if !app
        .store
        .set_device_status(
            &pending.id,
            &[DeviceStatus::Claimed],
            DeviceStatus::Approved,
        )
        .await
        .map_err(|e| PageError::internal("approve device authorization", &e))?
    {
        return Err(PageError::Page(
            StatusCode::BAD_REQUEST,
            "Sign-in expired",
            "This device sign-in is no longer waiting. Start again on your device.".into(),
        ));
    }
    Ok(pages::info_page(
        "Your device is signed in",
        &format!(
            "{client} on device {} can now use your account. You can close this page and go back to your device.",
            pending.device_id.as_str()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_are_two_groups_of_four_consonants_and_typing_is_forgiving() {
        for _ in 0..100 {
            let code = new_user_code();
            assert_eq!(code.len(), 9, "{code}");
            assert_eq!(&code[4..5], "-");
            assert_eq!(normalize_user_code(&code).as_deref(), Some(code.as_str()));
        }
        assert_eq!(
            normalize_user_code(" bcdf ghjk ").as_deref(),
            Some("BCDF-GHJK")
        );
        assert_eq!(
            normalize_user_code("bcdf-ghjk").as_deref(),
            Some("BCDF-GHJK")
        );
        // Vowels and digits are never in a code; neither are short or long ones.
        for wrong in [
            "BCDF-GHJA",
            "BCDF-GHJ1",
            "BCDF-GHJ",
            "BCDF-GHJKL",
            "",
            "<script>",
        ] {
            assert_eq!(normalize_user_code(wrong), None, "{wrong}");
        }
    }
}

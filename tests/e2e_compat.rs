//! The compatibility layer end to end: Synapse 1.163.2 in `matrix_authentication_service`
//! mode, oidc-provider as the IdP and mxidp. A legacy client over raw HTTP does what the reverse
//! proxy routes of deploy/ make possible: `/login` flows, the SSO redirect through the IdP and
//! mxidp's consent, `m.login.token`, then uses Synapse with the token, refreshes, and signs out.
//! Run through `.ci/run`, which installs Synapse and the IdP.

mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::browser::{self, LoginOptions};
use support::stack::Stack;
use support::{query_param, IdpAccount};
use url::Url;

const REDIRECT: &str = "http://legacy-client.example.org/sso-done";

/// The path a reverse proxy sends to mxidp.
fn compat(stack: &Stack, path: &str) -> Url {
    stack
        .mxidp
        .join(&format!("_matrix/client/v3/{path}"))
        .unwrap()
}

/// The SSO redirect through the IdP and mxidp's consent page; returns the login token the
/// browser brings back to the client, and the pages on the way.
async fn sso(stack: &Stack, username: &str) -> (String, Vec<browser::Page>) {
    let mut start = compat(stack, "login/sso/redirect");
    start.query_pairs_mut().append_pair("redirectUrl", REDIRECT);
    let journey = browser::login(
        &browser::client(),
        start,
        LoginOptions::new(username).redirect_uri(REDIRECT),
    )
    .await;
    let token = query_param(&journey.final_url, "loginToken")
        .unwrap_or_else(|| panic!("no loginToken in {}", journey.final_url));
    (token, journey.pages)
}

async fn token_login(stack: &Stack, body: Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(compat(stack, "login"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn post_with_token(stack: &Stack, path: &str, token: &str) -> StatusCode {
    reqwest::Client::new()
        .post(compat(stack, path))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_client_signs_in_with_sso_uses_synapse_refreshes_and_signs_out() {
    let stack = Stack::start(vec![IdpAccount::new("alice"), IdpAccount::new("bob")]).await;

    // The flows: SSO (MSC3824: the OAuth flow is the native one) and the login token.
    let flows: Value = reqwest::get(compat(&stack, "login"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sso_flow = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["type"] == "m.login.sso")
        .expect("m.login.sso");
    assert_eq!(sso_flow["delegated_oidc_compatibility"], true);
    assert_eq!(
        sso_flow["org.matrix.msc3824.delegated_oidc_compatibility"],
        true
    );
    assert!(flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["type"] == "m.login.token"));

    // SSO through the IdP and mxidp's consent page, which names the client by its redirect.
    let (login_token, pages) = sso(&stack, "alice").await;
    let consent = pages
        .iter()
        .find(|p| p.body.contains("name=\"decision\""))
        .expect("a consent page");
    assert!(
        consent.body.contains("legacy-client.example.org")
            && consent.body.contains(&stack.user_id("alice")),
        "{consent}"
    );

    let (status, session) = token_login(
        &stack,
        json!({"type": "m.login.token", "token": login_token, "initial_device_display_name": "legacy bot"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{session}");
    assert_eq!(session["user_id"], stack.user_id("alice"));
    assert!(
        session.get("refresh_token").is_none() && session.get("expires_in_ms").is_none(),
        "no refresh token unless asked, and then the token does not expire: {session}"
    );
    let access = session["access_token"].as_str().unwrap().to_owned();
    let device = session["device_id"].as_str().unwrap().to_owned();

    // Synapse knows the session: whoami names the device, and a message can be sent.
    let whoami: Value = stack.whoami(&access).await.json().await.unwrap();
    assert_eq!(whoami["user_id"], stack.user_id("alice"));
    assert_eq!(whoami["device_id"], device.as_str());
    let http = reqwest::Client::new();
    let room: Value = http
        .post(stack.synapse.url("/_matrix/client/v3/createRoom"))
        .bearer_auth(&access)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let room_id = room["room_id"].as_str().expect("room_id");
    let sent = http
        .put(stack.synapse.url(&format!(
            "/_matrix/client/v3/rooms/{room_id}/send/m.room.message/txn1"
        )))
        .bearer_auth(&access)
        .json(&json!({"msgtype": "m.text", "body": "hello from a legacy client"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), StatusCode::OK);

    // The login token was single-use.
    let (status, error) = token_login(
        &stack,
        json!({"type": "m.login.token", "token": login_token}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error["errcode"], "M_FORBIDDEN");

    // A second session that asks for a refresh token, with its own device ID.
    let (second_token, _) = sso(&stack, "alice").await;
    let (status, second) = token_login(
        &stack,
        json!({"type": "m.login.token", "token": second_token, "device_id": "SECONDDEVICE", "refresh_token": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["device_id"], "SECONDDEVICE");
    assert!(second["expires_in_ms"].as_i64().unwrap() > 0);
    let refreshed: Value = http
        .post(compat(&stack, "refresh"))
        .json(&json!({"refresh_token": second["refresh_token"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let second_access = refreshed["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{refreshed}"))
        .to_owned();
    assert_ne!(second_access, second["access_token"].as_str().unwrap());
    let whoami: Value = stack.whoami(&second_access).await.json().await.unwrap();
    assert_eq!(whoami["device_id"], "SECONDDEVICE");
    let mut devices = stack.devices(&second_access).await;
    devices.sort();
    let mut expected = vec![device.clone(), "SECONDDEVICE".to_owned()];
    expected.sort();
    assert_eq!(devices, expected);

    // /logout ends the first session: its token is refused and its device is gone.
    assert_eq!(
        post_with_token(&stack, "logout", &access).await,
        StatusCode::OK
    );
    assert_eq!(stack.introspect(&access).await, json!({"active": false}));
    // The device goes through mxidp's event worker; Synapse checks it on every request.
    until_synapse_refuses(&stack, &access).await;
    assert_eq!(
        stack.devices(&second_access).await,
        vec!["SECONDDEVICE".to_owned()]
    );
    // Twice is not possible.
    assert_eq!(
        post_with_token(&stack, "logout", &access).await,
        StatusCode::UNAUTHORIZED
    );

    // /logout/all ends every session of the user.
    assert_eq!(
        post_with_token(&stack, "logout/all", &second_access).await,
        StatusCode::OK
    );
    assert_eq!(
        stack.introspect(&second_access).await,
        json!({"active": false})
    );
    until_synapse_refuses(&stack, &second_access).await;
}

/// Waits (at most 10 s) until Synapse answers 401 to the token.
async fn until_synapse_refuses(stack: &Stack, access_token: &str) {
    for _ in 0..100 {
        if stack.whoami(access_token).await.status() == StatusCode::UNAUTHORIZED {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("Synapse still accepts the token of a session that was signed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_locked_after_the_sso_gets_m_user_locked_and_no_session() {
    let stack = Stack::start(vec![IdpAccount::new("bob")]).await;
    let (login_token, _) = sso(&stack, "bob").await;

    // The IdP locks bob (what the event worker records when an IdP event disables a user).
    let app = stack.app();
    let identity = app
        .store
        .identity_by_localpart(&mxidp_core::ids::Localpart::parse("bob").unwrap())
        .await
        .unwrap()
        .expect("bob's identity");
    app.subject_tokens
        .restrict(
            app.store.as_ref(),
            &app.mapping.upstream_id,
            &identity.subject,
            None,
            Some(true),
            mxidp_core::ids::now_unix(),
        )
        .await
        .unwrap();

    let (status, error) = token_login(
        &stack,
        json!({"type": "m.login.token", "token": login_token}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{error}");
    assert_eq!(error["errcode"], "M_USER_LOCKED");
    assert!(app
        .store
        .active_sessions_of_subject(&app.mapping.upstream_id, &identity.subject)
        .await
        .unwrap()
        .is_empty());
}

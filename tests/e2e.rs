//! End to end with every part real: Synapse 1.163.2 in `matrix_authentication_service` mode,
//! oidc-provider 9.13.3 as the IdP, mxidp from this workspace, and matrix-rust-sdk as the
//! Matrix client (Element X's SDK). Run through `.ci/run`, which installs Synapse and the IdP.

mod support;

use matrix_sdk::authentication::oauth::registration::{
    ApplicationType, ClientMetadata, Localized, OAuthGrantType,
};
use matrix_sdk::ruma::api::client::room::create_room::v3::Request as CreateRoomRequest;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::utils::UrlOrQuery;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::browser::{self, LoginOptions};
use support::idp::with_overrides;
use support::raw_client::RawClient;
use support::stack::{Stack, CLIENT_ID, CLIENT_SECRET};
use support::{jwt_payload, pkce_pair, query_param, IdpAccount};
use url::Url;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn element_x_sdk_signs_in_chats_refreshes_and_signs_out() {
    let stack = Stack::start(vec![IdpAccount::new("alice")]).await;

    let client = matrix_sdk::Client::builder()
        .homeserver_url(stack.synapse.base_url())
        .build()
        .await
        .expect("client");
    // A native app with a port-less loopback registration; any port is accepted at login.
    let metadata = ClientMetadata::new(
        ApplicationType::Native,
        vec![OAuthGrantType::AuthorizationCode {
            redirect_uris: vec!["http://127.0.0.1/callback".parse().unwrap()],
        }],
        Localized::new("https://sdk-client.example.org/".parse().unwrap(), None),
    );
    let redirect: Url = "http://127.0.0.1:47613/callback".parse().unwrap();
    let auth = client
        .oauth()
        .login(
            redirect.clone(),
            None,
            Some(Raw::new(&metadata).unwrap().into()),
            None,
        )
        .build()
        .await
        .expect("registration at mxidp and an authorization URL");
    assert!(
        auth.url.as_str().starts_with(stack.mxidp.as_str()),
        "{}",
        auth.url
    );

    // The test is the browser: mxidp → IdP login → mxidp callback → consent → client.
    let browser_client = browser::client();
    let journey = browser::login(
        &browser_client,
        auth.url.clone(),
        LoginOptions::new("alice"),
    )
    .await;
    assert!(
        journey
            .pages
            .iter()
            .any(|p| p.body.contains("Allow") && p.body.contains(&stack.user_id("alice"))),
        "a consent page naming the Matrix ID was shown"
    );
    assert!(journey.final_url.as_str().starts_with(redirect.as_str()));
    client
        .oauth()
        .finish_login(UrlOrQuery::Url(journey.final_url))
        .await
        .expect("finish_login: token exchange + whoami");

    let whoami = client.whoami().await.expect("whoami");
    assert_eq!(whoami.user_id.as_str(), stack.user_id("alice"));
    let device_id = client.device_id().expect("device id").to_owned();
    assert_eq!(whoami.device_id.as_deref(), Some(device_id.as_ref()));

    // Use the homeserver.
    let room = client
        .create_room(CreateRoomRequest::new())
        .await
        .expect("create a room");
    room.send(RoomMessageEventContent::text_plain(
        "hello from mxidp's e2e test",
    ))
    .await
    .expect("send a message");

    // Refresh through mxidp (rotation at the IdP); the new token works, the old one does not.
    let before = client.access_token().expect("token");
    client
        .oauth()
        .refresh_access_token()
        .await
        .expect("refresh");
    let after = client.access_token().expect("token");
    assert_ne!(before, after);
    assert_eq!(
        client
            .whoami()
            .await
            .expect("whoami after refresh")
            .user_id
            .as_str(),
        stack.user_id("alice")
    );
    // Synapse caches introspection answers for 2 minutes while the device exists, so the
    // rotated-out token is judged by mxidp's own answer.
    assert_eq!(stack.introspect(&before).await, json!({"active": false}));
    assert_eq!(stack.introspect(&after).await["active"], true);

    // Sign out. `OAuth::logout` revokes the access token only (RFC 7009, with client_id); its
    // `oauth2` dependency refuses a non-https revocation URL (InsecureUrl("revocation")), and
    // this stack runs on http loopback, so the test sends that same request itself.
    let client_id = client
        .oauth()
        .client_id()
        .expect("registered client id")
        .to_string();
    let metadata: Value = reqwest::get(
        stack
            .mxidp
            .join(".well-known/openid-configuration")
            .unwrap(),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let revoked = reqwest::Client::new()
        .post(metadata["revocation_endpoint"].as_str().unwrap())
        .form(&[
            ("token", after.as_str()),
            ("token_type_hint", "access_token"),
            ("client_id", client_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    // mxidp ended the session (its introspection says so at once) and deletes the device
    // through its event worker, so Synapse refuses the token within moments even though it
    // cached the introspection answer.
    assert_eq!(stack.introspect(&after).await, json!({"active": false}));
    until_synapse_refuses(&stack, &after, Duration::from_secs(5)).await;

    // A second session of alice sees that the first device is gone from Synapse.
    let other = RawClient::sign_in(&stack, "alice", &browser_client).await;
    let devices = stack.devices(&other.access_token).await;
    assert!(
        !devices.contains(&device_id.to_string()),
        "{devices:?} still has {device_id}"
    );
    assert!(devices.contains(&other.device_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_sdk_style_flow_with_stable_scopes_fragment_mode_and_both_tokens_revoked() {
    let stack = Stack::start(vec![IdpAccount::new("bob")]).await;
    let browser_client = browser::client();
    let session = RawClient::sign_in(&stack, "bob", &browser_client).await;

    let whoami: Value = stack
        .whoami(&session.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(whoami["user_id"], stack.user_id("bob"));
    assert_eq!(whoami["device_id"], session.device_id);

    // js-sdk revokes both tokens itself; both must end the one session.
    assert_eq!(
        session.revoke(&session.access_token, "access_token").await,
        StatusCode::OK
    );
    assert_eq!(
        session
            .revoke(&session.refresh_token, "refresh_token")
            .await,
        StatusCode::OK
    );
    // The device goes through mxidp's event worker; Synapse checks it on every request.
    until_synapse_refuses(&stack, &session.access_token, Duration::from_secs(5)).await;
    let refresh = session.refresh().await;
    assert_eq!(refresh.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        refresh.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );

    // Synapse no longer lists the device for bob's next session.
    let next = RawClient::sign_in(&stack, "bob", &browser_client).await;
    assert!(!stack
        .devices(&next.access_token)
        .await
        .contains(&session.device_id));
}

/// A code flow straight at the stack's IdP as mxidp's own client (its credentials, its callback
/// as redirect URI, stopped before the redirect reaches mxidp), in a browser of its own: the
/// IdP's token response as mxidp would receive it. For checking what the IdP releases.
async fn idp_tokens_as_mxidp(stack: &Stack, username: &str) -> Value {
    let discovery = stack.idp.discovery().await;
    let redirect_uri = stack.mxidp.join("upstream/callback").unwrap();
    let (verifier, challenge) = pkce_pair();
    let mut url: Url = discovery["authorization_endpoint"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    url.query_pairs_mut()
        .append_pair("client_id", CLIENT_ID)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid profile email groups")
        .append_pair("redirect_uri", redirect_uri.as_str())
        .append_pair("state", "direct-state")
        .append_pair("nonce", "direct-nonce")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let back = browser::login_at_idp(&browser::client(), url, username).await;
    let code = query_param(&back, "code").unwrap_or_else(|| panic!("no code in {back}"));
    let (status, tokens) = idp_token_request(
        &discovery,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", redirect_uri.as_str()),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    tokens
}

/// `POST` to the IdP's token endpoint with mxidp's client credentials.
async fn idp_token_request(discovery: &Value, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(discovery["token_endpoint"].as_str().unwrap())
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(form)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

/// `GET` the IdP's userinfo endpoint (from its discovery document) with `access_token`.
async fn idp_userinfo(stack: &Stack, access_token: &str) -> reqwest::Response {
    let discovery = stack.idp.discovery().await;
    reqwest::Client::new()
        .get(
            discovery["userinfo_endpoint"]
                .as_str()
                .expect("userinfo_endpoint in the IdP's discovery document"),
        )
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap()
}

/// A `refresh_token` grant at mxidp's token endpoint, as `client` (a public client) sends it.
async fn refresh_at_mxidp(client: &RawClient, refresh_token: &str) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(client.metadata["token_endpoint"].as_str().unwrap())
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", client.client_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

/// Polls Synapse's whoami with `access_token` until it answers 401; panics after `limit`.
/// Returns how long it took.
async fn until_synapse_refuses(stack: &Stack, access_token: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    let deadline = start + limit;
    loop {
        let status = stack.whoami(access_token).await.status();
        if status == StatusCode::UNAUTHORIZED {
            let took = start.elapsed();
            eprintln!("Synapse refused the token after {took:?}");
            return took;
        }
        assert!(
            Instant::now() < deadline,
            "Synapse still answers {status} to the token after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_matrix_token_is_mxidps_refused_by_the_idp_and_accepted_by_synapse() {
    // The harness's default IdP configuration (oidc-provider's conformIdTokenClaims = true).
    let stack = Stack::start(vec![IdpAccount::new("dave")]).await;

    // Premise: this IdP releases the profile claims through userinfo only, and its userinfo
    // endpoint answers its own access tokens.
    let direct = idp_tokens_as_mxidp(&stack, "dave").await;
    let id_token = jwt_payload(direct["id_token"].as_str().expect("id_token"));
    assert_eq!(id_token["sub"], "sub-dave");
    for claim in ["preferred_username", "email", "name", "groups"] {
        assert!(
            id_token.get(claim).is_none(),
            "{claim} is in the ID token: {id_token}"
        );
    }
    let userinfo = idp_userinfo(&stack, direct["access_token"].as_str().unwrap()).await;
    assert_eq!(userinfo.status(), StatusCode::OK);
    assert_eq!(
        userinfo.json::<Value>().await.unwrap()["preferred_username"],
        "dave"
    );

    // (a) The sign-in through mxidp succeeds, with the localpart from userinfo's
    // preferred_username (the sub, `sub-dave`, would give another one).
    let session = RawClient::sign_in(&stack, "dave", &browser::client()).await;
    let whoami = stack.whoami(&session.access_token).await;
    // (d) Synapse accepts mxidp's token.
    assert_eq!(whoami.status(), StatusCode::OK);
    let whoami: Value = whoami.json().await.unwrap();
    assert_eq!(whoami["user_id"], stack.user_id("dave"));
    assert_eq!(whoami["device_id"], session.device_id);

    // (b) The client holds mxidp's tokens, not the IdP's.
    assert!(
        session.access_token.starts_with("mxidp_at_"),
        "{}",
        session.access_token
    );
    assert!(
        session.refresh_token.starts_with("mxidp_rt_"),
        "{}",
        session.refresh_token
    );

    // (c) The IdP does not know that token.
    let at_idp = idp_userinfo(&stack, &session.access_token).await;
    assert_eq!(at_idp.status(), StatusCode::UNAUTHORIZED);
}

/// Refresh once through mxidp against an IdP that rotates its refresh tokens or not: mxidp's
/// refresh token rotates either way, the new access token works, and presenting the old refresh
/// token again ends the whole session (device gone from Synapse, newest refresh token refused).
async fn refresh_rotates_and_reuse_ends_the_session(rotating_idp: bool, username: &str) {
    let stack = with_overrides(
        json!({ "rotateRefreshToken": rotating_idp }),
        Stack::start(vec![IdpAccount::new(username)]),
    )
    .await;

    // Premise: the IdP rotates its own refresh tokens as configured.
    let discovery = stack.idp.discovery().await;
    let direct = idp_tokens_as_mxidp(&stack, username).await;
    let idp_refresh = direct["refresh_token"].as_str().expect("IdP refresh token");
    let (status, refreshed) = idp_token_request(
        &discovery,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", idp_refresh),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let idp_rotated =
        matches!(refreshed["refresh_token"].as_str(), Some(new) if new != idp_refresh);
    assert_eq!(
        idp_rotated, rotating_idp,
        "the IdP's refresh answer: {refreshed}"
    );

    let session = RawClient::sign_in(&stack, username, &browser::client()).await;
    let old_refresh = session.refresh_token.clone();

    // One refresh through mxidp: both tokens are new, and mxidp's.
    let (status, tokens) = refresh_at_mxidp(&session, &old_refresh).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let new_access = tokens["access_token"].as_str().expect("access_token");
    let new_refresh = tokens["refresh_token"].as_str().expect("refresh_token");
    assert_ne!(new_refresh, old_refresh, "mxidp rotates its refresh token");
    assert!(new_refresh.starts_with("mxidp_rt_"), "{new_refresh}");
    assert_ne!(new_access, session.access_token);
    assert!(new_access.starts_with("mxidp_at_"), "{new_access}");
    let whoami = stack.whoami(new_access).await;
    assert_eq!(whoami.status(), StatusCode::OK);
    assert_eq!(
        whoami.json::<Value>().await.unwrap()["user_id"],
        stack.user_id(username)
    );

    // The old refresh token again: refused, and the whole session ends.
    let (status, reused) = refresh_at_mxidp(&session, &old_refresh).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reused}");
    assert_eq!(reused["error"], "invalid_grant", "{reused}");
    // mxidp deletes the device through its event worker; Synapse checks it on every request.
    until_synapse_refuses(&stack, new_access, Duration::from_secs(5)).await;
    let (status, newest) = refresh_at_mxidp(&session, new_refresh).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{newest}");
    assert_eq!(newest["error"], "invalid_grant", "{newest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_mxidps_token_and_reuse_ends_the_session_with_a_non_rotating_idp() {
    refresh_rotates_and_reuse_ends_the_session(false, "erin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_mxidps_token_and_reuse_ends_the_session_with_a_rotating_idp() {
    refresh_rotates_and_reuse_ends_the_session(true, "frank").await;
}

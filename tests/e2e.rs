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
use support::browser::{self, LoginOptions};
use support::raw_client::RawClient;
use support::stack::Stack;
use support::IdpAccount;
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
    // mxidp ended the session and deleted the device, so Synapse refuses the token at once
    // even though it cached the introspection answer.
    assert_eq!(
        stack.whoami(&after).await.status(),
        StatusCode::UNAUTHORIZED
    );

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
    assert_eq!(
        stack.whoami(&session.access_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
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

//! The JWT-to-introspection shim end to end: a bot gets a JWT access token straight from the
//! real OpenID Provider (oidc-provider, client-credentials grant with an RFC 8707 resource
//! indicator, RFC 9068 JWT format) and uses it against real Synapse, which introspects it at
//! mxidp. No browser, and mxidp's token endpoint is never called.

mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::idp::with_overrides;
use support::stack::Stack;

const API: &str = "https://matrix.e2e.test/api";
const OTHER_API: &str = "https://billing.e2e.test/api";
const BOT: &str = "ci-bot";
const BOT_SECRET: &str = "ci-bot-secret-0123456789abcdef";

const SHIM: &str = r#"
[jwt_shim]
enabled = true

[[jwt_shim.issuers]]
audiences = ["https://matrix.e2e.test/api"]

[[jwt_shim.issuers.service_accounts]]
client_id = "ci-bot"
localpart = "ci-bot"
display_name = "CI bot"
"#;

async fn start() -> Stack {
    let stack = with_overrides(
        json!({
            "extraClients": [{
                "client_id": BOT,
                "client_secret": BOT_SECRET,
                "grant_types": ["client_credentials"],
                "response_types": [],
                "redirect_uris": [],
                "token_endpoint_auth_method": "client_secret_basic",
            }],
            "resourceServers": {
                API: { "scope": "matrix", "accessTokenTTL": 600 },
                OTHER_API: { "scope": "invoices", "accessTokenTTL": 600 },
            },
        }),
        Stack::start_with(Vec::new(), false, SHIM),
    )
    .await;
    // The service account is provisioned in Synapse, and the IdP's keys loaded, in the
    // background right after start.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health: Value = reqwest::get(stack.mxidp.join("health/ready").unwrap())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let shim = &health["jwt_shim"];
        if shim["service_accounts_ready"] == 1 && shim["issuers_with_keys"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the service account was not provisioned: {health}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack
}

/// A client-credentials token from the IdP for `resource`.
async fn bot_token(stack: &Stack, resource: &str, scope: &str) -> String {
    let answer: Value = reqwest::Client::new()
        .post(stack.idp.url("/token"))
        .basic_auth(BOT, Some(BOT_SECRET))
        .form(&[
            ("grant_type", "client_credentials"),
            ("resource", resource),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = answer["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access token from the IdP: {answer}"))
        .to_owned();
    assert_eq!(token.split('.').count(), 3, "the IdP issued a JWT");
    token
}

async fn whoami(stack: &Stack, token: &str) -> (StatusCode, Value) {
    let response = stack.whoami(token).await;
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_with_the_idps_own_jwt_chats_through_synapse() {
    let stack = start().await;
    let token = bot_token(&stack, API, "matrix").await;
    assert_eq!(support::jwt_payload(&token)["client_id"], BOT);

    let (status, me) = whoami(&stack, &token).await;
    assert_eq!(status, StatusCode::OK, "whoami: {me}");
    assert_eq!(me["user_id"], stack.user_id("ci-bot"));
    let device = me["device_id"].as_str().expect("a device id").to_owned();

    // A new token of the same bot is the same Matrix device: stable across tokens.
    let second = bot_token(&stack, API, "matrix").await;
    assert_ne!(second, token);
    let (status, again) = whoami(&stack, &second).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["device_id"], device.as_str());

    let http = reqwest::Client::new();
    let room: Value = http
        .post(stack.synapse.url("/_matrix/client/v3/createRoom"))
        .bearer_auth(&token)
        .json(&json!({ "name": "builds" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let room_id = room["room_id"]
        .as_str()
        .unwrap_or_else(|| panic!("createRoom: {room}"));
    let sent = http
        .put(stack.synapse.url(&format!(
            "/_matrix/client/v3/rooms/{room_id}/send/m.room.message/txn1"
        )))
        .bearer_auth(&token)
        .json(&json!({ "msgtype": "m.text", "body": "build 42 passed" }))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), StatusCode::OK);

    // The answer Synapse got, as mxidp gives it.
    let answer = stack.introspect(&token).await;
    assert_eq!(answer["active"], true);
    assert_eq!(answer["username"], "ci-bot");
    assert_eq!(answer["client_id"], BOT);
    assert_eq!(answer["device_id"], device.as_str());
    assert!(answer["expires_in"].as_i64().unwrap() <= 600);
    let scope = answer["scope"].as_str().unwrap();
    assert!(scope.contains("urn:matrix:client:api:*"), "{scope}");
    assert!(!scope.contains("urn:synapse:admin:*"), "{scope}");

    // First use of each token is in the audit trail (written behind the answer), without the
    // token.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let records = loop {
        let records = support::audit_actions(stack.app()).await;
        let first_uses = records
            .iter()
            .filter(|(action, _)| action == "jwt_shim.token_first_use")
            .count();
        if first_uses >= 2 {
            break records;
        }
        assert!(std::time::Instant::now() < deadline, "{records:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(records.iter().all(|(_, details)| !details.contains(&token)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_api_is_refused_by_synapse() {
    let stack = start().await;
    // The same bot, the same IdP: accepted for the Matrix API...
    let matrix = bot_token(&stack, API, "matrix").await;
    assert_eq!(whoami(&stack, &matrix).await.0, StatusCode::OK);
    // ...but its token for another API is not a Matrix token.
    let token = bot_token(&stack, OTHER_API, "invoices").await;
    let (status, body) = whoami(&stack, &token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(stack.introspect(&token).await, json!({ "active": false }));
}

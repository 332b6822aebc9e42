//! Smoke tests of the end-to-end harness itself: the test IdP (oidc-provider) and Synapse with
//! `matrix_authentication_service` pointing at a stub, with no mxidp involved.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use url::Url;

use support::browser;
use support::{Idp, IdpAccount, IdpClient, IdpConfig, Synapse, SynapseOptions};

const SECRET: &str = "harness-shared-secret-0123456789";
const FIXED_TOKEN: &str = "mxidp_at_fixed_smoke_token";
const DEVICE_ID: &str = "SMOKEDEVICE01";
const SERVER_NAME: &str = "smoke.test";

struct StubState {
    base: Url,
    logout_tokens: mpsc::UnboundedSender<String>,
}

/// A stand-in for mxidp: MAS metadata, introspection of one fixed token, a back-channel logout
/// receiver. Returns its base URL (with trailing slash) and the logout tokens received.
async fn start_stub() -> (Url, mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let state = Arc::new(StubState {
        base: base.clone(),
        logout_tokens: tx,
    });
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(metadata))
        .route("/oauth2/introspect", post(introspect))
        .route("/backchannel-logout", post(backchannel_logout))
        .with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, rx)
}

async fn metadata(State(state): State<Arc<StubState>>) -> Json<Value> {
    Json(json!({
        "issuer": state.base.as_str(),
        "account_management_uri": state.base.join("account").unwrap().as_str(),
        "authorization_endpoint": state.base.join("authorize").unwrap().as_str(),
        "token_endpoint": state.base.join("oauth2/token").unwrap().as_str(),
    }))
}

async fn introspect(
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> impl IntoResponse {
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {SECRET}"));
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "access_denied"})),
        );
    }
    if form.get("token").map(String::as_str) != Some(FIXED_TOKEN) {
        return (StatusCode::OK, Json(json!({"active": false})));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (
        StatusCode::OK,
        Json(json!({
            "active": true,
            "scope": format!(
                "urn:matrix:client:api:* urn:matrix:org.matrix.msc2967.client:api:* \
                 urn:matrix:client:device:{DEVICE_ID} urn:matrix:org.matrix.msc2967.client:device:{DEVICE_ID}"
            ),
            "username": "alice",
            "sub": "sub-alice",
            "client_id": "smoke-client",
            "token_type": "access_token",
            "device_id": DEVICE_ID,
            "iat": now,
            "exp": now + 300,
            "expires_in": 300,
        })),
    )
}

async fn backchannel_logout(
    State(state): State<Arc<StubState>>,
    Form(form): Form<HashMap<String, String>>,
) -> StatusCode {
    match form.get("logout_token") {
        Some(token) => {
            let _ = state.logout_tokens.send(token.clone());
            StatusCode::OK
        }
        None => StatusCode::BAD_REQUEST,
    }
}

fn idp_config(stub: &Url) -> IdpConfig {
    let mut client = IdpClient::confidential(
        "mxidp",
        "mxidp-client-secret",
        stub.join("upstream/callback").unwrap().as_str(),
    );
    client.backchannel_logout_uri = Some(stub.join("backchannel-logout").unwrap().to_string());
    client.backchannel_logout_session_required = Some(true);
    client.post_logout_redirect_uris = vec![stub.join("logged-out").unwrap().to_string()];
    // The profile claims in the ID token, which this smoke test reads; the harness default
    // is oidc-provider's own (claims in userinfo only), exercised by tests/e2e.rs.
    IdpConfig::new()
        .client(client)
        .account(IdpAccount::new("alice"))
        .set("conformIdTokenClaims", json!(false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_accepts_the_mas_contract() {
    let (stub, _logouts) = start_stub().await;
    let synapse = Synapse::start(SynapseOptions::new(stub.clone(), SECRET, SERVER_NAME)).await;
    let http = reqwest::Client::new();

    // Wrong secret: Synapse refuses the MAS API.
    let resp = http
        .post(synapse.url("/_synapse/mas/provision_user"))
        .bearer_auth("not-the-secret")
        .json(&json!({"localpart": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "{}", resp.text().await.unwrap());

    let resp = synapse
        .mas_post(
            "provision_user",
            json!({"localpart": "alice", "set_displayname": "Alice"}),
        )
        .await;
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let resp = synapse
        .mas_post(
            "upsert_device",
            json!({"localpart": "alice", "device_id": DEVICE_ID}),
        )
        .await;
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let resp = synapse
        .mas_get("query_user", &[("localpart", "alice")])
        .await;
    assert_eq!(resp.status(), 200);
    let user: Value = resp.json().await.unwrap();
    assert_eq!(user["user_id"], synapse.user_id("alice"));
    assert_eq!(user["display_name"], "Alice");

    // The fixed token, introspected by the stub, is alice on DEVICE_ID.
    let resp = http
        .get(synapse.url("/_matrix/client/v3/account/whoami"))
        .bearer_auth(FIXED_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let whoami: Value = resp.json().await.unwrap();
    assert_eq!(whoami["user_id"], format!("@alice:{SERVER_NAME}"));
    assert_eq!(whoami["device_id"], DEVICE_ID);

    // An unknown token is rejected.
    let resp = http
        .get(synapse.url("/_matrix/client/v3/account/whoami"))
        .bearer_auth("unknown-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // Synapse hands our metadata to clients (fetched lazily, now).
    let meta: Value = http
        .get(synapse.url("/_matrix/client/v1/auth_metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["issuer"], stub.as_str());

    // Deleting the device ends the session at once (despite Synapse's introspection cache).
    let resp = synapse
        .mas_post(
            "delete_device",
            json!({"localpart": "alice", "device_id": DEVICE_ID}),
        )
        .await;
    assert_eq!(resp.status(), 204);
    let resp = http
        .get(synapse.url("/_matrix/client/v3/account/whoami"))
        .bearer_auth(FIXED_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

/// Authorization request at the IdP for the test client, with PKCE.
fn authorize_url(
    discovery: &Value,
    redirect_uri: &Url,
    state: &str,
    nonce: &str,
    challenge: &str,
) -> Url {
    let mut url = Url::parse(discovery["authorization_endpoint"].as_str().unwrap()).unwrap();
    url.query_pairs_mut()
        .append_pair("client_id", "mxidp")
        .append_pair("response_type", "code")
        .append_pair("scope", "openid profile email groups")
        .append_pair("redirect_uri", redirect_uri.as_str())
        .append_pair("state", state)
        .append_pair("nonce", nonce)
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256");
    url
}

async fn token_request(discovery: &Value, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .post(discovery["token_endpoint"].as_str().unwrap())
        .basic_auth("mxidp", Some("mxidp-client-secret"))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_code_flow_refresh_and_backchannel_logout() {
    let (stub, mut logouts) = start_stub().await;
    let idp = Idp::start(idp_config(&stub)).await;
    let discovery = idp.discovery().await;
    assert_eq!(discovery["issuer"], idp.issuer());
    assert!(discovery["introspection_endpoint"].is_string());
    assert!(discovery["revocation_endpoint"].is_string());
    assert_eq!(discovery["backchannel_logout_supported"], true);

    let redirect_uri = stub.join("upstream/callback").unwrap();
    let (verifier, challenge) = support::pkce_pair();
    let state = support::random_string(16);
    let nonce = support::random_string(16);
    let browser_client = browser::client();
    let start = authorize_url(&discovery, &redirect_uri, &state, &nonce, &challenge);
    let journey = browser::login(&browser_client, start, browser::LoginOptions::new("alice")).await;
    assert_eq!(journey.pages.len(), 1, "one page: the login form");
    let back = journey.final_url;
    assert!(back.as_str().starts_with(redirect_uri.as_str()), "{back}");
    assert_eq!(
        support::query_param(&back, "state").as_deref(),
        Some(state.as_str())
    );
    assert_eq!(
        support::query_param(&back, "iss").as_deref(),
        Some(idp.issuer().as_str())
    );
    let code = support::query_param(&back, "code").expect("code in the redirect");

    // Code exchange (client_secret_basic + PKCE).
    let (status, tokens) = token_request(
        &discovery,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", redirect_uri.as_str()),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    let access_token = tokens["access_token"].as_str().expect("access_token");
    let refresh_token = tokens["refresh_token"].as_str().expect("refresh_token");
    let id_token = tokens["id_token"].as_str().expect("id_token");
    let claims = support::jwt_payload(id_token);
    assert_eq!(claims["sub"], "sub-alice");
    assert_eq!(claims["aud"], "mxidp");
    assert_eq!(claims["nonce"], nonce.as_str());
    assert_eq!(claims["preferred_username"], "alice");
    assert_eq!(claims["email"], "alice@example.org");
    assert_eq!(claims["groups"], json!(["matrix-users"]));
    assert!(claims["sid"].is_string());

    // Userinfo and introspection.
    let userinfo: Value = reqwest::Client::new()
        .get(discovery["userinfo_endpoint"].as_str().unwrap())
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(userinfo["preferred_username"], "alice");
    assert_eq!(userinfo["groups"], json!(["matrix-users"]));
    let introspection: Value = reqwest::Client::new()
        .post(discovery["introspection_endpoint"].as_str().unwrap())
        .basic_auth("mxidp", Some("mxidp-client-secret"))
        .form(&[("token", access_token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["sub"], "sub-alice");

    // Refresh (rotating by default: a new refresh token each time).
    let (status, refreshed) = token_request(
        &discovery,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    assert!(refreshed["access_token"].is_string());
    let refresh_token_2 = refreshed["refresh_token"]
        .as_str()
        .expect("rotated refresh_token");
    assert_ne!(refresh_token_2, refresh_token);

    // RP-initiated logout → back-channel logout token to the client.
    let mut end_session = Url::parse(discovery["end_session_endpoint"].as_str().unwrap()).unwrap();
    end_session
        .query_pairs_mut()
        .append_pair("id_token_hint", id_token)
        .append_pair(
            "post_logout_redirect_uri",
            stub.join("logged-out").unwrap().as_str(),
        )
        .append_pair("state", "bye");
    let after = browser::logout_at_idp(&browser_client, end_session).await;
    assert!(
        after
            .as_str()
            .starts_with(stub.join("logged-out").unwrap().as_str()),
        "{after}"
    );
    let logout_token = tokio::time::timeout(Duration::from_secs(5), logouts.recv())
        .await
        .expect("a back-channel logout within 5 s")
        .expect("logout token");
    let logout_claims = support::jwt_payload(&logout_token);
    assert_eq!(logout_claims["sub"], "sub-alice");
    assert_eq!(logout_claims["sid"], claims["sid"]);
    assert_eq!(logout_claims["aud"], "mxidp");
    assert!(
        logout_claims["events"]["http://schemas.openid.net/event/backchannel-logout"].is_object()
    );

    // The session is over: refresh fails with invalid_grant.
    let (status, error) = token_request(
        &discovery,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token_2),
        ],
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"], "invalid_grant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_admin_logout_and_sso_session() {
    let (stub, mut logouts) = start_stub().await;
    let idp = Idp::start(idp_config(&stub)).await;
    let discovery = idp.discovery().await;
    let redirect_uri = stub.join("upstream/callback").unwrap();
    let browser_client = browser::client();

    let login = |state: &str| {
        let (verifier, challenge) = support::pkce_pair();
        let url = authorize_url(&discovery, &redirect_uri, state, "n", &challenge);
        (verifier, url)
    };
    let (verifier, url) = login("one");
    let journey = browser::login(&browser_client, url, browser::LoginOptions::new("alice")).await;
    let code = support::query_param(&journey.final_url, "code").unwrap();
    let (status, tokens) = token_request(
        &discovery,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", redirect_uri.as_str()),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{tokens}");

    // Second authorization in the same browser: SSO, no page at all.
    let (_, url) = login("two");
    let journey = browser::login(&browser_client, url, browser::LoginOptions::new("alice")).await;
    assert!(journey.pages.is_empty(), "{:?}", journey.requests);
    assert!(support::query_param(&journey.final_url, "code").is_some());

    // Server-side end of alice's sessions → back-channel logout, tokens dead.
    let result = idp.end_sessions_of("sub-alice").await;
    assert_eq!(result["notified"], json!(["mxidp"]), "{result}");
    let logout_token = tokio::time::timeout(Duration::from_secs(5), logouts.recv())
        .await
        .expect("a back-channel logout within 5 s")
        .expect("logout token");
    assert_eq!(support::jwt_payload(&logout_token)["sub"], "sub-alice");
    let (status, error) = token_request(
        &discovery,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(status, 400, "{error}");

    // A fresh authorization needs a login again.
    let (_, url) = login("three");
    let journey = browser::login(&browser_client, url, browser::LoginOptions::new("alice")).await;
    assert_eq!(journey.pages.len(), 1);
}

#[test]
fn form_scanner_handles_detached_buttons_and_entities() {
    let html = r#"<form id="op.logoutForm" method="post" action="http://x/a?b=1&amp;c=2"><input type="hidden" name="xsrf" value="a&quot;b"/></form>
<button autofocus type="submit" form="op.logoutForm" value="yes" name="logout">Yes</button>
<script>var s = "<form action='nope'>";</script>
<form action=/consent method=POST><input type=hidden name=csrf value=t1><button name=action value=deny>No</button><button name=action value=allow>Yes</button></form>"#;
    let forms = browser::parse_forms(html);
    assert_eq!(forms.len(), 2, "{forms:?}");
    assert_eq!(forms[0].action.as_deref(), Some("http://x/a?b=1&c=2"));
    assert_eq!(forms[0].field("xsrf"), Some("a\"b"));
    assert_eq!(forms[0].buttons[0].name, "logout");
    assert_eq!(forms[1].method, "POST");
    let page = browser::Page {
        url: Url::parse("http://mxidp/authorize/consent?x=1").unwrap(),
        status: StatusCode::OK,
        body: html.to_owned(),
        forms: forms[1..].to_vec(),
    };
    let answer = browser::approve_consent(&page).unwrap();
    assert_eq!(answer.url.as_str(), "http://mxidp/consent");
    assert!(answer.fields.contains(&("action".into(), "allow".into())));
    assert!(answer.fields.contains(&("csrf".into(), "t1".into())));
}

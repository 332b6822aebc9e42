//! The device authorization grant (RFC 8628) end to end: Synapse 1.163.2 in
//! `matrix_authentication_service` mode, oidc-provider as the IdP and mxidp. A client (the
//! "TV") asks for codes and polls the token endpoint over raw HTTP; the test browser (the
//! "phone") enters the user code at mxidp's `/link`, signs in at the IdP and answers mxidp's
//! consent page. Run through `.ci/run`, which installs Synapse and the IdP.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use support::browser::{self, LoginOptions, Submission};
use support::stack::Stack;
use support::IdpAccount;
use url::Url;

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// Where the test browser's walk ends: mxidp's last page of a device sign-in has no redirect.
const DONE: &str = "http://walk-finished.invalid/";

/// Synapse's copy of mxidp's metadata, as a client reads it.
async fn metadata(stack: &Stack) -> Value {
    reqwest::get(
        stack
            .synapse
            .url("/_matrix/client/unstable/org.matrix.msc2965/auth_metadata"),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap()
}

async fn register(metadata: &Value) -> String {
    let registered: Value = reqwest::Client::new()
        .post(metadata["registration_endpoint"].as_str().unwrap())
        .json(&json!({
            "client_name": "Living-room TV",
            "client_uri": "https://tv.example.org/",
            "redirect_uris": ["https://tv.example.org/"],
            "application_type": "web",
            "grant_types": ["authorization_code", "refresh_token", DEVICE_GRANT],
            "token_endpoint_auth_method": "none",
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        registered["grant_types"]
            .as_array()
            .unwrap()
            .contains(&json!(DEVICE_GRANT)),
        "{registered}"
    );
    registered["client_id"].as_str().unwrap().to_owned()
}

/// The device's request for codes.
async fn start(metadata: &Value, client_id: &str, device_id: &str) -> Value {
    let response = reqwest::Client::new()
        .post(metadata["device_authorization_endpoint"].as_str().unwrap())
        .form(&[
            ("client_id", client_id),
            (
                "scope",
                &format!("urn:matrix:client:api:* urn:matrix:client:device:{device_id}"),
            ),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["cache-control"],
        "no-store",
        "codes are never cached"
    );
    response.json().await.unwrap()
}

/// One poll of the token endpoint.
async fn poll(metadata: &Value, client_id: &str, device_code: &str) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(metadata["token_endpoint"].as_str().unwrap())
        .form(&[
            ("grant_type", DEVICE_GRANT),
            ("device_code", device_code),
            ("client_id", client_id),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// Polls as RFC 8628 §3.5 asks (waiting the interval, longer after `slow_down`) until the
/// answer is neither `authorization_pending` nor `slow_down`.
async fn poll_until_answered(
    metadata: &Value,
    client_id: &str,
    device_code: &str,
    mut interval: u64,
) -> (StatusCode, Value) {
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        let (status, body) = poll(metadata, client_id, device_code).await;
        match body["error"].as_str() {
            Some("authorization_pending") => {}
            Some("slow_down") => interval += 5,
            _ => return (status, body),
        }
    }
    panic!("no answer after 30 polls");
}

/// What mxidp answers for `/link?code=…` in a fresh browser.
async fn link_page(stack: &Stack, code: &str) -> (StatusCode, String) {
    let mut url = stack.mxidp.join("link").unwrap();
    url.query_pairs_mut().append_pair("code", code);
    let response = browser::client().get(url).send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

/// The test browser's page handler: stop at mxidp's last page, which has no form.
fn stop_at_last_page(page: &browser::Page) -> Option<Submission> {
    (page.url.path() == "/consent" && page.forms.is_empty()).then(|| Submission {
        method: Method::GET,
        url: DONE.parse().unwrap(),
        fields: Vec::new(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_signs_in_with_a_code_entered_in_another_browser() {
    let stack = Stack::start(vec![IdpAccount::new("alice"), IdpAccount::new("bob")]).await;
    let metadata = metadata(&stack).await;
    assert_eq!(
        metadata["device_authorization_endpoint"],
        stack.mxidp.join("oauth2/device").unwrap().as_str(),
        "Synapse hands out mxidp's device authorization endpoint"
    );
    assert!(metadata["grant_types_supported"]
        .as_array()
        .unwrap()
        .contains(&json!(DEVICE_GRANT)));
    let client_id = register(&metadata).await;

    // The TV asks for codes.
    let codes = start(&metadata, &client_id, "LIVINGROOMTV").await;
    let user_code = codes["user_code"].as_str().unwrap().to_owned();
    let device_code = codes["device_code"].as_str().unwrap().to_owned();
    assert_eq!(user_code.len(), 9, "XXXX-XXXX: {user_code}");
    assert_eq!(
        codes["verification_uri"],
        stack.mxidp.join("link").unwrap().as_str()
    );
    let complete: Url = codes["verification_uri_complete"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(codes["interval"], 5);

    // Nobody entered the code yet; polling again at once is too fast.
    let (status, body) = poll(&metadata, &client_id, &device_code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("authorization_pending"))
    );
    let (status, body) = poll(&metadata, &client_id, &device_code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("slow_down"))
    );

    // The phone opens the pre-filled link, signs in at the IdP and allows the TV.
    let phone = browser::client();
    let journey = browser::login(
        &phone,
        complete.clone(),
        LoginOptions::new("alice")
            .redirect_uri(DONE)
            .on_page(stop_at_last_page),
    )
    .await;
    let consent = journey
        .pages
        .iter()
        .find(|p| p.body.contains("name=\"decision\""))
        .expect("a consent page");
    for shown in [
        "Living-room TV",
        "LIVINGROOMTV",
        user_code.as_str(),
        &stack.user_id("alice"),
    ] {
        assert!(
            consent.body.contains(shown),
            "the consent page shows {shown}: {consent}"
        );
    }
    let last = journey.pages.last().unwrap();
    assert!(last.body.contains("Your device is signed in"), "{last}");

    // The TV's polling gets its tokens: Synapse knows the TV as alice's device LIVINGROOMTV.
    let (status, tokens) = poll_until_answered(&metadata, &client_id, &device_code, 10).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(
        tokens["scope"],
        "urn:matrix:client:api:* urn:matrix:client:device:LIVINGROOMTV"
    );
    assert!(tokens["refresh_token"].as_str().is_some());
    let access = tokens["access_token"].as_str().unwrap();
    let whoami: Value = stack.whoami(access).await.json().await.unwrap();
    assert_eq!(whoami["user_id"], stack.user_id("alice"));
    assert_eq!(whoami["device_id"], "LIVINGROOMTV");

    // The device code gave its tokens once; the user code was spent by the phone.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (status, body) = poll(&metadata, &client_id, &device_code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "{body}"
    );
    let (status, page) = link_page(&stack, &user_code).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("Code already used"), "{page}");

    // A wrong code, and something that cannot be a code, get a clear page with the form.
    for wrong in ["BBBB-BBBB", "hello"] {
        let (status, page) = link_page(&stack, wrong).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            page.contains("Code not recognised") && page.contains("name=\"code\""),
            "{page}"
        );
    }

    // Denial: a second TV; bob types its code (lower case, no dash) into the empty form, signs
    // in and denies. The TV's polling learns it.
    let codes = start(&metadata, &client_id, "BEDROOMTV01").await;
    let typed = codes["user_code"]
        .as_str()
        .unwrap()
        .replace('-', "")
        .to_lowercase();
    let device_code = codes["device_code"].as_str().unwrap().to_owned();
    let other_phone = browser::client();
    let form_page = other_phone
        .get(stack.mxidp.join("link").unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let forms = browser::parse_forms(&form_page);
    let form = forms
        .iter()
        .find(|f| f.has_field("code"))
        .expect("the code form");
    let typed_url = form
        .submission(&stack.mxidp.join("link").unwrap(), &[("code", &typed)])
        .url;
    let mut entered = typed_url.clone();
    entered.set_query(None);
    entered.query_pairs_mut().append_pair("code", &typed);
    let journey = browser::login(
        &other_phone,
        entered,
        LoginOptions::new("bob").redirect_uri(DONE).on_page(|page| {
            if let Some(form) = page.form_with("decision") {
                return Some(form.submission(&page.url, &[("decision", "deny")]));
            }
            stop_at_last_page(page)
        }),
    )
    .await;
    assert!(
        journey
            .pages
            .last()
            .unwrap()
            .body
            .contains("Device not signed in"),
        "{:?}",
        journey.pages.last()
    );
    let (status, body) = poll_until_answered(&metadata, &client_id, &device_code, 5).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("access_denied")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_device_code_polls_expired_token_and_its_user_code_is_refused() {
    let stack = Stack::start_with(
        vec![IdpAccount::new("alice")],
        false,
        "[sessions]\ndevice_code_seconds = 2\n",
    )
    .await;
    let metadata = metadata(&stack).await;
    let client_id = register(&metadata).await;
    let codes = start(&metadata, &client_id, "SLOWTV0001").await;
    assert_eq!(codes["expires_in"], 2);
    // Waiting out the lifetime (whole seconds, so one more) is the point of this test.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, body) = poll(
        &metadata,
        &client_id,
        codes["device_code"].as_str().unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("expired_token")),
        "{body}"
    );
    let (status, page) = link_page(&stack, codes["user_code"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("Code not recognised"), "{page}");
}

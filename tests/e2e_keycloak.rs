//! End to end with Keycloak as the IdP: the Keycloak double of `tests/support/keycloak.rs`
//! (Keycloak 26's paths, claims, logout tokens and Phase Two webhooks), real Synapse 1.163.2 in
//! `matrix_authentication_service` mode, and mxidp in this process with `provider = "keycloak"`.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use support::browser;
use support::keycloak::{KcUser, KeycloakDouble, LogoutTokenStyle};
use support::raw_client::RawClient;
use support::stack::Stack;

const ADMIN_SCOPE: &str = "urn:synapse:admin:*";

/// Polls until Synapse refuses the token; returns how long it took.
async fn until_refused(stack: &Stack<KeycloakDouble>, token: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if stack.whoami(token).await.status() == StatusCode::UNAUTHORIZED {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the token still works after {limit:?}");
}

async fn whoami_user(stack: &Stack<KeycloakDouble>, token: &str) -> Value {
    let answer = stack.whoami(token).await;
    assert_eq!(answer.status(), StatusCode::OK);
    answer.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_in_through_keycloak_uses_synapse_and_refreshes() {
    let stack = Stack::keycloak(vec![KcUser::new("alice")]).await;
    let browser_client = browser::client();
    let session = RawClient::sign_in(&stack, "alice", &browser_client).await;

    let whoami = whoami_user(&stack, &session.access_token).await;
    assert_eq!(whoami["user_id"], stack.user_id("alice"));
    assert_eq!(whoami["device_id"], session.device_id);

    // mxidp went through Keycloak's login and code exchange with its confidential client.
    let requests = stack.idp.requests();
    for step in [
        "GET /auth",
        "POST /login-actions/authenticate",
        "POST /token authorization_code",
    ] {
        assert!(
            requests.iter().any(|r| r == step),
            "{step} not in {requests:?}"
        );
    }

    // Refresh at mxidp: a new access token that Synapse accepts; the old one is rotated out.
    let refreshed: Value = session.refresh().await.json().await.unwrap();
    let new_token = refreshed["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access token in {refreshed}"));
    assert_ne!(new_token, session.access_token);
    assert_eq!(
        whoami_user(&stack, new_token).await["user_id"],
        stack.user_id("alice")
    );
    assert_eq!(
        stack.introspect(&session.access_token).await["active"],
        false
    );
    assert_eq!(stack.introspect(new_token).await["active"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_matrix_admin_realm_role_grants_the_synapse_admin_api_and_nothing_else_does() {
    let stack = Stack::keycloak(vec![
        KcUser::new("ada").role("matrix-admin"),
        KcUser::new("bob"),
    ])
    .await;
    let browser_client = browser::client();
    let admin_users = |who: &str| {
        stack
            .synapse
            .url(&format!("/_synapse/admin/v2/users/{}", stack.user_id(who)))
    };

    let (ada, granted) =
        RawClient::sign_in_with_scope(&stack, "ada", &browser_client, ADMIN_SCOPE).await;
    assert!(granted.split(' ').any(|s| s == ADMIN_SCOPE), "{granted}");
    let answer = reqwest::Client::new()
        .get(admin_users("ada"))
        .bearer_auth(&ada.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let user: Value = answer.json().await.unwrap();
    assert_eq!(user["name"], stack.user_id("ada"));

    // bob has no matrix-admin role: asking for the scope does not get it.
    let browser_client = browser::client();
    let (bob, granted) =
        RawClient::sign_in_with_scope(&stack, "bob", &browser_client, ADMIN_SCOPE).await;
    assert!(!granted.split(' ').any(|s| s == ADMIN_SCOPE), "{granted}");
    let answer = reqwest::Client::new()
        .get(admin_users("ada"))
        .bearer_auth(&bob.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    // bob's token is otherwise good.
    assert_eq!(
        whoami_user(&stack, &bob.access_token).await["user_id"],
        stack.user_id("bob")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_back_channel_logout_signs_the_device_out_within_5_seconds() {
    let stack = Stack::keycloak(vec![KcUser::new("carol"), KcUser::new("dave")]).await;

    // Keycloak ≥ 25 (`logout+jwt`) and older Keycloak (`JWT`, no `exp`).
    for (user, style) in [
        ("carol", LogoutTokenStyle::Current),
        ("dave", LogoutTokenStyle::Pre25),
    ] {
        let browser_client = browser::client();
        let session = RawClient::sign_in(&stack, user, &browser_client).await;
        assert_eq!(
            stack.whoami(&session.access_token).await.status(),
            StatusCode::OK
        );
        let answers = stack.idp.emit_backchannel_logout(user, style).await;
        assert!(!answers.is_empty(), "no session of {user} at the double");
        assert!(
            answers.iter().all(|s| s.is_success()),
            "{style:?}: mxidp answered {answers:?}"
        );
        let took = until_refused(&stack, &session.access_token, Duration::from_secs(5)).await;
        println!("{user} ({style:?}): device gone {took:?} after the logout token");
        assert_eq!(
            stack.introspect(&session.access_token).await["active"],
            false
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phase_two_user_disabled_webhook_locks_the_user_and_signs_them_out() {
    let stack = Stack::keycloak(vec![KcUser::new("erin"), KcUser::new("frank")]).await;
    let browser_client = browser::client();
    let erin = RawClient::sign_in(&stack, "erin", &browser_client).await;
    let browser_client = browser::client();
    let frank = RawClient::sign_in(&stack, "frank", &browser_client).await;

    // An administrator switches erin off in the admin console; Phase Two sends the admin event.
    stack.idp.disable_user("erin");
    let event = stack.idp.phase_two_user_update("erin", false);
    let status = stack.idp.emit_phase_two_webhook(&event).await;
    assert!(status.is_success(), "webhook answered {status}");
    let took = until_refused(&stack, &erin.access_token, Duration::from_secs(5)).await;
    println!("erin signed out {took:?} after the webhook");

    // mxidp read the user back from the admin REST API with its service account.
    let requests = stack.idp.requests();
    let erin_id = stack.idp.user_id("erin");
    assert!(
        requests
            .iter()
            .any(|r| r == "POST /token client_credentials"),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.ends_with(&format!("/users/{erin_id}"))),
        "{requests:?}"
    );
    assert_eq!(stack.introspect(&erin.access_token).await["active"], false);
    // Synapse's view of erin: the account exists, not deactivated (locking is mxidp's: it
    // refuses her tokens and new sessions); her device is gone.
    let user: Value = stack
        .synapse
        .mas_get("query_user", &[("localpart", "erin")])
        .await
        .json()
        .await
        .unwrap();
    println!("query_user erin: {user}");
    assert_eq!(user["is_deactivated"], false, "{user}");
    // Locking ends her sessions, marks her locked (provision_user) and syncs her devices away.
    let start = Instant::now();
    loop {
        let calls = stack.proxy.mas_calls();
        if calls
            .iter()
            .any(|c| c.contains("sync_devices") || c.contains("delete_device"))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "erin's devices were not removed: {calls:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The same webhook again (Phase Two retries) changes nothing; frank is untouched.
    let again = stack.idp.emit_phase_two_webhook(&event).await;
    assert!(again.is_success(), "retry answered {again}");
    assert_eq!(
        whoami_user(&stack, &frank.access_token).await["user_id"],
        stack.user_id("frank")
    );
    // A wrong signature is refused.
    let forged = reqwest::Client::new()
        .post(stack.mxidp.join("upstream/webhook").unwrap())
        .header("content-type", "application/json")
        .header("X-Keycloak-Signature", "00".repeat(32))
        .body(stack.idp.phase_two_user_update("frank", false).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        stack.whoami(&frank.access_token).await.status(),
        StatusCode::OK
    );
}

/// Re-validation at Keycloak: reconciliation introspects each session's upstream refresh token
/// with mxidp's confidential client (RFC 7662) and asks the admin REST API about each user, off
/// the introspection hot path; a session that ended silently at Keycloak (idle timeout, no logout
/// token) and a user disabled without any webhook are signed out in Synapse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_revalidates_sessions_at_keycloak_by_introspection_and_user_status() {
    let stack = Stack::keycloak(vec![
        KcUser::new("gina"),
        KcUser::new("hank"),
        KcUser::new("ivy"),
    ])
    .await;
    let mut sessions = Vec::new();
    for user in ["gina", "hank", "ivy"] {
        let browser_client = browser::client();
        sessions.push(RawClient::sign_in(&stack, user, &browser_client).await);
    }
    let settings = mxidp_core::config::ReconciliationConfig {
        enabled: Some(true),
        interval_seconds: 60,
        batch_size: 100,
        max_requests_per_second: 50,
    };

    // Nothing changed at Keycloak: a round ends nothing.
    let round =
        mxidp_core::reconcile::reconcile_round(stack.app(), &settings, mxidp_core::ids::now_unix())
            .await
            .unwrap();
    assert_eq!(
        (round.checked, round.ended, round.users),
        (3, 0, 0),
        "{round:?}"
    );

    // gina's SSO session times out at Keycloak (no logout token); hank is disabled by an admin
    // with no event listener installed.
    stack.idp.expire_sessions("gina");
    stack.idp.disable_user("hank");
    let round =
        mxidp_core::reconcile::reconcile_round(stack.app(), &settings, mxidp_core::ids::now_unix())
            .await
            .unwrap();
    assert!(round.ended >= 1 && round.users == 1, "{round:?}");
    assert!(
        stack
            .idp
            .requests()
            .iter()
            .any(|r| r == "POST /token/introspect"),
        "{:?}",
        stack.idp.requests()
    );
    for session in &sessions[..2] {
        until_refused(&stack, &session.access_token, Duration::from_secs(5)).await;
    }
    assert_eq!(
        whoami_user(&stack, &sessions[2].access_token).await["user_id"],
        stack.user_id("ivy")
    );
}

/// `upstream.revalidation = "introspect"`: introspection at mxidp answers from its own state at
/// once and re-validates the token at Keycloak in the background (RFC 7662 with mxidp's client);
/// a token Keycloak calls inactive ends the session, and Synapse refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspect_revalidation_ends_a_session_keycloak_no_longer_knows() {
    let stack = Stack::keycloak_with(
        vec![KcUser::new("jane"), KcUser::new("kim")],
        "revalidation = \"introspect\"\nrevalidation_cache_seconds = 1",
        "",
    )
    .await;
    let browser_client = browser::client();
    let jane = RawClient::sign_in(&stack, "jane", &browser_client).await;
    let browser_client = browser::client();
    let kim = RawClient::sign_in(&stack, "kim", &browser_client).await;
    let introspections = || {
        stack
            .idp
            .requests()
            .iter()
            .filter(|r| *r == "POST /token/introspect")
            .count()
    };

    // Synapse's first introspection of each token starts one check at Keycloak: active.
    for token in [&jane.access_token, &kim.access_token] {
        assert_eq!(stack.whoami(token).await.status(), StatusCode::OK);
    }
    let start = Instant::now();
    while introspections() < 2 {
        assert!(start.elapsed() < Duration::from_secs(5), "no re-validation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Within the cache period, asking again (many times, concurrently) costs Keycloak nothing.
    let asks: Vec<_> = (0..10)
        .map(|_| {
            let url = stack.mxidp.join("oauth2/introspect").unwrap();
            let token = jane.access_token.clone();
            tokio::spawn(async move {
                reqwest::Client::new()
                    .post(url)
                    .bearer_auth(support::stack::SHARED_SECRET)
                    .form(&[("token", token.as_str())])
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()
            })
        })
        .collect();
    for answer in asks {
        assert_eq!(answer.await.unwrap()["active"], true);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(introspections(), 2, "{:?}", stack.idp.requests());

    // jane's SSO session ends at Keycloak without any message to mxidp.
    stack.idp.expire_sessions("jane");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The hot path still answers from mxidp's state, without waiting for Keycloak…
    assert_eq!(stack.introspect(&jane.access_token).await["active"], true);
    // …and the check behind it ends the session.
    let took = until_refused(&stack, &jane.access_token, Duration::from_secs(5)).await;
    println!("jane signed out {took:?} after re-validation started");
    assert_eq!(stack.introspect(&jane.access_token).await["active"], false);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(stack.introspect(&kim.access_token).await["active"], true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        whoami_user(&stack, &kim.access_token).await["user_id"],
        stack.user_id("kim")
    );
}

/// Element X's SDK through mxidp and Keycloak: registration, login (Keycloak's form, mxidp's
/// consent), token exchange, whoami and a refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn element_x_sdk_signs_in_through_keycloak_and_refreshes() {
    use matrix_sdk::authentication::oauth::registration::{
        ApplicationType, ClientMetadata, Localized, OAuthGrantType,
    };
    use matrix_sdk::ruma::serde::Raw;
    use matrix_sdk::utils::UrlOrQuery;

    let stack = Stack::keycloak(vec![KcUser::new("lena")]).await;
    let client = matrix_sdk::Client::builder()
        .homeserver_url(stack.synapse.base_url())
        .build()
        .await
        .expect("client");
    let metadata = ClientMetadata::new(
        ApplicationType::Native,
        vec![OAuthGrantType::AuthorizationCode {
            redirect_uris: vec!["http://127.0.0.1/callback".parse().unwrap()],
        }],
        Localized::new("https://sdk-client.example.org/".parse().unwrap(), None),
    );
    let redirect: url::Url = "http://127.0.0.1:47614/callback".parse().unwrap();
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
    let journey = browser::login(
        &browser::client(),
        auth.url.clone(),
        browser::LoginOptions::new("lena").password("lena-password"),
    )
    .await;
    assert!(
        journey
            .pages
            .iter()
            .any(|p| p.body.contains("kc-form-login")),
        "Keycloak's login form was shown"
    );
    client
        .oauth()
        .finish_login(UrlOrQuery::Url(journey.final_url))
        .await
        .expect("finish_login");
    let whoami = client.whoami().await.expect("whoami");
    assert_eq!(whoami.user_id.as_str(), stack.user_id("lena"));

    let before = client.access_token().expect("token");
    client
        .oauth()
        .refresh_access_token()
        .await
        .expect("refresh");
    assert_ne!(client.access_token().expect("token"), before);
    assert_eq!(
        client.whoami().await.expect("whoami").user_id.as_str(),
        stack.user_id("lena")
    );
    assert!(stack
        .idp
        .requests()
        .iter()
        .any(|r| r == "POST /token refresh_token"));
}

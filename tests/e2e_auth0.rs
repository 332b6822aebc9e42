//! End to end with Auth0 as the IdP: the Auth0 double of `tests/support/auth0.rs` (Universal
//! Login, an API audience, the Management API, a Log Stream sender), real Synapse in
//! `matrix_authentication_service` mode, and mxidp in this process with `provider = "auth0"`.

mod support;

use std::time::{Duration, Instant};

use mxidp_core::events::{EventState, IdpEvent};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::auth0::{
    Auth0Double, Auth0User, Format, ADMIN_ROLE, AUDIENCE, LOG_STREAM_AUTHORIZATION,
};
use support::browser;
use support::raw_client::RawClient;
use support::stack::Stack;

const ADMIN_SCOPE: &str = "urn:synapse:admin:*";

async fn until_refused(stack: &Stack<Auth0Double>, token: &str, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if stack.whoami(token).await.status() == StatusCode::UNAUTHORIZED {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the token still works after {limit:?}");
}

async fn whoami_ok(stack: &Stack<Auth0Double>, token: &str) {
    assert_eq!(stack.whoami(token).await.status(), StatusCode::OK);
}

async fn all_events(stack: &Stack<Auth0Double>) -> Vec<mxidp_core::events::StoredEvent> {
    stack.app().store.list_events(None, 1000).await.unwrap()
}

async fn stored_with_key(stack: &Stack<Auth0Double>, key: &str) -> Vec<IdpEvent> {
    all_events(stack)
        .await
        .into_iter()
        .filter(|e| e.dedupe_key == key)
        .map(|e| e.event)
        .collect()
}

/// Waits until the event stored under `key` is applied; returns its attempts.
async fn applied(stack: &Stack<Auth0Double>, key: &str) -> i64 {
    let start = Instant::now();
    loop {
        let event = all_events(stack)
            .await
            .into_iter()
            .find(|e| e.dedupe_key == key)
            .unwrap_or_else(|| panic!("nothing stored under {key}"));
        if event.state == EventState::Applied {
            return event.attempts;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{event:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn log_id(entry: &Value) -> &str {
    entry["log_id"].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_signs_in_through_auth0_with_the_api_audience_and_a_role_grants_synapse_admin() {
    use matrix_sdk::authentication::oauth::registration::{
        ApplicationType, ClientMetadata, Localized, OAuthGrantType,
    };
    use matrix_sdk::ruma::serde::Raw;
    use matrix_sdk::utils::UrlOrQuery;

    let stack = Stack::auth0(
        vec![
            Auth0User::new("lena"),
            Auth0User::new("ada").role(ADMIN_ROLE),
            Auth0User::new("bob").role("staff"),
        ],
        Format::Array,
    )
    .await;
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
    let auth = client
        .oauth()
        .login(
            "http://127.0.0.1:47615/callback".parse().unwrap(),
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
            .any(|p| p.body.contains("auth0-universal-login")),
        "Auth0's Universal Login was shown"
    );
    client
        .oauth()
        .finish_login(UrlOrQuery::Url(journey.final_url))
        .await
        .expect("finish_login");
    let whoami = client.whoami().await.expect("whoami");
    assert_eq!(whoami.user_id.as_str(), stack.user_id("lena"));
    // The authorize named the API: Auth0 then issues a JWT access token (the double issues an
    // encrypted one otherwise), which mxidp re-validates locally.
    let requests = stack.idp.requests();
    assert!(
        requests.contains(&format!("GET /authorize audience={AUDIENCE} screen_hint=-")),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .filter(|r| r.starts_with("GET /authorize"))
            .all(|r| r.contains(&format!("audience={AUDIENCE}"))),
        "{requests:?}"
    );
    assert!(requests
        .iter()
        .any(|r| r == "POST /oauth/token authorization_code"));
    // lena is keyed on her Auth0 user id.
    let identity = stack
        .app()
        .store
        .identity_by_subject(&stack.app().mapping.upstream_id, &stack.idp.user_id("lena"))
        .await;
    assert!(matches!(identity, Ok(Some(_))), "{identity:?}");

    // ada's namespaced roles claim holds matrix-admin: the admin scope is granted.
    let browser_client = browser::client();
    let (ada, granted) =
        RawClient::sign_in_with_scope(&stack, "ada", &browser_client, ADMIN_SCOPE).await;
    assert!(granted.split(' ').any(|s| s == ADMIN_SCOPE), "{granted}");
    let admin_users = stack.synapse.url(&format!(
        "/_synapse/admin/v2/users/{}",
        stack.user_id("ada")
    ));
    let answer = reqwest::Client::new()
        .get(admin_users.clone())
        .bearer_auth(&ada.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    // bob's does not.
    let browser_client = browser::client();
    let (bob, granted) =
        RawClient::sign_in_with_scope(&stack, "bob", &browser_client, ADMIN_SCOPE).await;
    assert!(!granted.split(' ').any(|s| s == ADMIN_SCOPE), "{granted}");
    let answer = reqwest::Client::new()
        .get(admin_users)
        .bearer_auth(&bob.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);

    // bob signs out: mxidp hands the refresh token back at Auth0's /oauth/revoke.
    assert_eq!(
        bob.revoke(&bob.access_token, "access_token").await,
        StatusCode::OK
    );
    until_refused(&stack, &bob.access_token, Duration::from_secs(5)).await;
    let start = Instant::now();
    while !stack
        .idp
        .requests()
        .iter()
        .any(|r| r == "POST /oauth/revoke")
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "nothing revoked at Auth0: {:?}",
            stack.idp.requests()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sapi_user_deletion_in_the_log_stream_deactivates_and_tombstones_once() {
    let stack = Stack::auth0(
        vec![Auth0User::new("carol"), Auth0User::new("dan")],
        Format::Lines,
    )
    .await;
    let browser_client = browser::client();
    let carol = RawClient::sign_in(&stack, "carol", &browser_client).await;
    let browser_client = browser::client();
    let dan = RawClient::sign_in(&stack, "dan", &browser_client).await;

    // An admin deletes carol in the Dashboard: Auth0 logs a `sapi` with the admin as
    // `user_id` and carol URL-encoded in the path.
    assert_eq!(stack.idp.admin(Method::DELETE, "carol", None).await, 204);
    let entry = stack.idp.last_sapi();
    assert!(
        entry["data"]["details"]["request"]["path"]
            .as_str()
            .unwrap()
            .contains("auth0%7C"),
        "{entry}"
    );
    assert_eq!(
        stack.idp.deliver(std::slice::from_ref(&entry)).await,
        vec![200]
    );
    until_refused(&stack, &carol.access_token, Duration::from_secs(5)).await;
    let start = Instant::now();
    loop {
        let user: Value = stack
            .synapse
            .mas_get("query_user", &[("localpart", "carol")])
            .await
            .json()
            .await
            .unwrap();
        if user["is_deactivated"] == true {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "carol is not deactivated in Synapse: {user}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let key = log_id(&entry);
    assert_eq!(
        stored_with_key(&stack, key).await,
        vec![IdpEvent::UserDeleted {
            subject: stack.idp.user_id("carol")
        }]
    );
    assert_eq!(applied(&stack, key).await, 1);
    // The localpart is tombstoned: the identity is marked deleted for good.
    let identity = stack
        .app()
        .store
        .identity_by_subject(
            &stack.app().mapping.upstream_id,
            &stack.idp.user_id("carol"),
        )
        .await
        .unwrap()
        .expect("carol's identity");
    assert!(identity.deleted_at.is_some(), "{identity:?}");

    // Auth0 delivers the same entry again (at least once): stored and applied once.
    let before = all_events(&stack).await.len();
    assert_eq!(
        stack.idp.deliver(std::slice::from_ref(&entry)).await,
        vec![200]
    );
    assert_eq!(all_events(&stack).await.len(), before);
    assert_eq!(stored_with_key(&stack, key).await.len(), 1);
    assert_eq!(applied(&stack, key).await, 1);
    whoami_ok(&stack, &dan.access_token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_locks_an_unblock_unlocks_and_a_logout_ends_the_session() {
    let stack = Stack::auth0(
        vec![Auth0User::new("erin"), Auth0User::new("frank")],
        Format::Object,
    )
    .await;
    let browser_client = browser::client();
    let erin = RawClient::sign_in(&stack, "erin", &browser_client).await;
    let browser_client = browser::client();
    let frank = RawClient::sign_in(&stack, "frank", &browser_client).await;

    assert_eq!(
        stack
            .idp
            .admin(Method::PATCH, "erin", Some(json!({"blocked": true})))
            .await,
        200
    );
    let block = stack.idp.last_sapi();
    assert_eq!(
        stack.idp.deliver(std::slice::from_ref(&block)).await,
        vec![200]
    );
    until_refused(&stack, &erin.access_token, Duration::from_secs(5)).await;
    assert_eq!(
        stored_with_key(&stack, log_id(&block)).await,
        vec![IdpEvent::UserLocked {
            subject: stack.idp.user_id("erin")
        }]
    );
    // Locked is not deactivated: the account stays in Synapse.
    let user: Value = stack
        .synapse
        .mas_get("query_user", &[("localpart", "erin")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(user["is_deactivated"], false, "{user}");

    assert_eq!(
        stack
            .idp
            .admin(Method::PATCH, "erin", Some(json!({"blocked": false})))
            .await,
        200
    );
    let unblock = stack.idp.last_sapi();
    assert_eq!(
        stack.idp.deliver(std::slice::from_ref(&unblock)).await,
        vec![200]
    );
    applied(&stack, log_id(&unblock)).await;
    assert_eq!(
        stored_with_key(&stack, log_id(&unblock)).await,
        vec![IdpEvent::UserUnlocked {
            subject: stack.idp.user_id("erin")
        }]
    );
    // Unlocked: erin signs in again.
    let browser_client = browser::client();
    let again = RawClient::sign_in(&stack, "erin", &browser_client).await;
    whoami_ok(&stack, &again.access_token).await;

    // frank logs out at Auth0: the `slo` names his session, which ends; erin's stays.
    let logout = stack.idp.logout("frank");
    assert_eq!(
        stack.idp.deliver(std::slice::from_ref(&logout)).await,
        vec![200]
    );
    assert_eq!(
        stored_with_key(&stack, log_id(&logout)).await,
        vec![IdpEvent::SessionEnded {
            sid: stack.idp.session_of("frank").unwrap()
        }]
    );
    until_refused(&stack, &frank.access_token, Duration::from_secs(5)).await;
    whoami_ok(&stack, &again.access_token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deliveries_are_refused_whole_or_entry_by_entry() {
    let stack = Stack::auth0(
        vec![Auth0User::new("gus"), Auth0User::new("hal")],
        Format::Array,
    )
    .await;
    let browser_client = browser::client();
    let gus = RawClient::sign_in(&stack, "gus", &browser_client).await;
    let browser_client = browser::client();
    let hal = RawClient::sign_in(&stack, "hal", &browser_client).await;
    let endpoint = stack.idp.streams()[0].endpoint.clone();
    let gus_id = stack.idp.user_id("gus");
    let block_gus = stack.idp.entry(
        "sapi",
        "auth0|admin0000000000000000000",
        json!({"request": {"method": "patch",
            "path": format!("/api/v2/users/{}", gus_id.replace('|', "%7C")),
            "body": {"blocked": true}}, "response": {"statusCode": 200}}),
    );
    let body = serde_json::to_vec(&[&block_gus]).unwrap();

    // The wrong Authorization: 401 on every one of Auth0's three attempts, nothing stored.
    let before = all_events(&stack).await.len();
    for wrong in ["Bearer wrong", &LOG_STREAM_AUTHORIZATION.to_lowercase(), ""] {
        assert_eq!(
            stack.idp.post_raw(&endpoint, wrong, body.clone()).await,
            vec![401, 401, 401],
            "{wrong:?}"
        );
    }
    assert_eq!(all_events(&stack).await.len(), before);
    whoami_ok(&stack, &gus.access_token).await;

    // A body over the limit: 413, nothing stored.
    let mut big = vec![block_gus.clone()];
    let filler = "x".repeat(70 * 1024);
    big[0]["data"]["details"]["padding"] = json!(filler);
    let status = stack
        .idp
        .post_raw(
            &endpoint,
            LOG_STREAM_AUTHORIZATION,
            serde_json::to_vec(&big).unwrap(),
        )
        .await;
    assert_eq!(status[0], 413, "{status:?}");
    assert_eq!(all_events(&stack).await.len(), before);

    // One bad entry among good ones: the good ones are stored and applied, the bad one is
    // recorded as unactionable.
    let mut bad = stack.idp.entry("sdu", &stack.idp.user_id("hal"), json!({}));
    bad["data"]["date"] = json!("not a date");
    let logout_hal = stack.idp.logout("hal");
    assert_eq!(
        stack
            .idp
            .deliver(&[block_gus.clone(), bad.clone(), logout_hal.clone()])
            .await,
        vec![200]
    );
    until_refused(&stack, &gus.access_token, Duration::from_secs(5)).await;
    until_refused(&stack, &hal.access_token, Duration::from_secs(5)).await;
    assert!(matches!(
        stored_with_key(&stack, log_id(&bad)).await.as_slice(),
        [IdpEvent::Unactionable { reason }] if reason.contains("date")
    ));
    // hal was not deleted by the malformed `sdu`.
    let user: Value = stack
        .synapse
        .mas_get("query_user", &[("localpart", "hal")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(user["is_deactivated"], false, "{user}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_reads_user_state_from_the_management_api_with_one_cached_token() {
    let stack = Stack::auth0(
        vec![
            Auth0User::new("ivy"),
            Auth0User::new("jon"),
            Auth0User::new("kim"),
        ],
        Format::Array,
    )
    .await;
    let mut sessions = Vec::new();
    for user in ["ivy", "jon", "kim"] {
        let browser_client = browser::client();
        sessions.push(RawClient::sign_in(&stack, user, &browser_client).await);
    }
    let settings = mxidp_core::config::ReconciliationConfig {
        enabled: Some(true),
        interval_seconds: 60,
        batch_size: 100,
        max_requests_per_second: 50,
    };
    let round = |stack: &Stack<Auth0Double>| {
        let app = stack.app().clone();
        let settings = settings.clone();
        async move {
            mxidp_core::reconcile::reconcile_round(&app, &settings, mxidp_core::ids::now_unix())
                .await
                .unwrap()
        }
    };

    // Nothing changed at Auth0.
    let report = round(&stack).await;
    assert_eq!(report.users, 0, "{report:?}");
    // ivy is blocked and kim deleted at Auth0 with no Log Stream delivery at all.
    stack.idp.set_blocked("ivy", true);
    stack.idp.admin(Method::DELETE, "kim", None).await;
    let report = round(&stack).await;
    assert_eq!(report.users, 2, "{report:?}");
    until_refused(&stack, &sessions[0].access_token, Duration::from_secs(5)).await;
    until_refused(&stack, &sessions[2].access_token, Duration::from_secs(5)).await;
    whoami_ok(&stack, &sessions[1].access_token).await;
    let requests = stack.idp.requests();
    assert!(
        requests
            .iter()
            .any(|r| r == &format!("GET /api/v2/users/{}", stack.idp.user_id("ivy"))),
        "{requests:?}"
    );
    // One client_credentials token served every call of both rounds.
    assert_eq!(
        requests
            .iter()
            .filter(|r| *r == "POST /oauth/token client_credentials")
            .count(),
        1,
        "{requests:?}"
    );

    // Auth0's rate limit: the call is refused, counted as an error, and nothing changes.
    let before = stack.idp.requests().len();
    stack.idp.rate_limit(1);
    let report = round(&stack).await;
    assert!(report.errors >= 1, "{report:?}");
    whoami_ok(&stack, &sessions[1].access_token).await;
    // Until the reset the adapter does not call again (jon is the only active session).
    let calls = stack.idp.requests()[before..]
        .iter()
        .filter(|r| r.starts_with("GET /api/v2/users/"))
        .count();
    let report = round(&stack).await;
    assert!(report.errors >= 1, "{report:?}");
    let calls_after = stack.idp.requests()[before..]
        .iter()
        .filter(|r| r.starts_with("GET /api/v2/users/"))
        .count();
    assert_eq!(calls, calls_after, "called again before the reset");
}

/// `deploy/auth0/setup.sh` against the double: it creates the API, the roles Action (deployed
/// and bound to the Login flow) and the Log Stream from its JSON bodies; the stream it created
/// then delivers to mxidp with the right `Authorization`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_setup_script_creates_the_api_the_roles_action_and_a_working_log_stream() {
    let stack = Stack::auth0(vec![Auth0User::new("max")], Format::Array).await;
    let browser_client = browser::client();
    let max = RawClient::sign_in(&stack, "max", &browser_client).await;
    let script = support::repo_root().join("deploy/auth0/setup.sh");
    let token = stack.idp.admin_token();
    let audience = "https://matrix2.example.org/api";
    let claim = "https://matrix2.example.org/roles";
    let output = tokio::process::Command::new("bash")
        .arg(&script)
        .env("AUTH0_DOMAIN", stack.idp.issuer().as_str())
        .env("AUTH0_MGMT_TOKEN", &token)
        .env("MXIDP_URL", stack.mxidp.as_str())
        .env("API_AUDIENCE", audience)
        .env("ROLES_CLAIM", claim)
        .env("LOG_STREAM_AUTHORIZATION", LOG_STREAM_AUTHORIZATION)
        .output()
        .await
        .expect("bash runs the script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for secret in [token.as_str(), LOG_STREAM_AUTHORIZATION] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret));
    }
    let created = stack.idp.created();
    let paths: Vec<&str> = created.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths[0], "POST /api/v2/resource-servers");
    assert_eq!(paths[1], "POST /api/v2/actions/actions");
    assert!(paths[2].ends_with("/deploy"), "{paths:?}");
    assert_eq!(
        paths[3],
        "PATCH /api/v2/actions/triggers/post-login/bindings"
    );
    assert_eq!(paths[4], "POST /api/v2/log-streams");
    assert_eq!(created[0].1["identifier"], audience);
    assert_eq!(created[0].1["signing_alg"], "RS256");
    let code = created[1].1["code"].as_str().unwrap();
    assert!(code.contains(&format!("'{claim}'")), "{code}");
    assert!(!code.contains("__ROLES_CLAIM__"));
    let stream = &created[4].1;
    assert_eq!(
        stream["sink"]["httpEndpoint"],
        stack.mxidp.join("upstream/webhook").unwrap().as_str()
    );
    assert_eq!(stream["sink"]["httpContentFormat"], "JSONARRAY");
    assert!(
        stdout.contains(&format!("audience = \"{audience}\"")),
        "{stdout}"
    );

    // The stream the script created reaches mxidp and is accepted.
    assert_eq!(stack.idp.streams().len(), 2);
    assert_eq!(
        stack
            .idp
            .admin(Method::PATCH, "max", Some(json!({"blocked": true})))
            .await,
        200
    );
    let block = stack.idp.last_sapi();
    assert_eq!(stack.idp.deliver(&[block]).await, vec![200]);
    until_refused(&stack, &max.access_token, Duration::from_secs(5)).await;
}

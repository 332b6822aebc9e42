//! End to end with Okta as the IdP: the Okta double of `tests/support/okta.rs` (a custom
//! authorization server, the Users API, the System Log, an Event Hook sender), real Synapse in
//! `matrix_authentication_service` mode, and mxidp in this process with `provider = "okta"`.
//!
//! The System Log is read by the tests (`log_stream::poll_once`) rather than by waiting for the
//! background task, so nothing here depends on timing beyond "eventually, within a bound".

mod support;

use std::time::{Duration, Instant};

use mxidp_core::events::log_stream::{poll_once, PollOutcome};
use mxidp_core::events::IdpEvent;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::browser;
use support::okta::{Delivery, OktaDouble, OktaUser, ADMIN_GROUP, HOOK_SECRET};
use support::raw_client::RawClient;
use support::stack::Stack;

const ADMIN_SCOPE: &str = "urn:synapse:admin:*";

async fn until_refused(stack: &Stack<OktaDouble>, token: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if stack.whoami(token).await.status() == StatusCode::UNAUTHORIZED {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the token still works after {limit:?}");
}

async fn whoami_ok(stack: &Stack<OktaDouble>, token: &str) {
    assert_eq!(stack.whoami(token).await.status(), StatusCode::OK);
}

/// Events mxidp stored under the given dedupe key.
async fn stored_with_key(stack: &Stack<OktaDouble>, key: &str) -> Vec<IdpEvent> {
    stack
        .app()
        .store
        .list_events(None, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.dedupe_key == key)
        .map(|e| e.event)
        .collect()
}

async fn read_log(stack: &Stack<OktaDouble>) -> (usize, Duration) {
    match poll_once(stack.app()).await.expect("a System Log read") {
        PollOutcome::Read { stored, next_poll } => (stored, next_poll),
        PollOutcome::NoLog => panic!("the Okta adapter reads the System Log"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_signs_in_through_okta_and_the_admin_group_grants_synapse_admin() {
    use matrix_sdk::authentication::oauth::registration::{
        ApplicationType, ClientMetadata, Localized, OAuthGrantType,
    };
    use matrix_sdk::ruma::serde::Raw;
    use matrix_sdk::utils::UrlOrQuery;

    let stack = Stack::okta(vec![
        OktaUser::new("lena"),
        OktaUser::new("ada").group(ADMIN_GROUP),
        OktaUser::new("bob"),
    ])
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
            .any(|p| p.body.contains("okta-login-form")),
        "Okta's sign-in form was shown"
    );
    client
        .oauth()
        .finish_login(UrlOrQuery::Url(journey.final_url))
        .await
        .expect("finish_login");
    let whoami = client.whoami().await.expect("whoami");
    assert_eq!(whoami.user_id.as_str(), stack.user_id("lena"));
    // The double refuses a `state` outside Okta's characters and a code without its PKCE
    // verifier, so getting here means core's values passed.
    let requests = stack.idp.requests();
    for step in [
        "GET /v1/authorize",
        "POST /v1/authorize/login",
        "POST /v1/token authorization_code",
    ] {
        assert!(
            requests.iter().any(|r| r == step),
            "{step} not in {requests:?}"
        );
    }
    // mxidp keyed lena on the Okta user id (the ID token's `sub`), not on her login, which is
    // the access token's `sub`.
    let identity = stack
        .app()
        .store
        .identity_by_subject(&stack.app().mapping.upstream_id, &stack.idp.user_id("lena"))
        .await;
    assert!(
        matches!(identity, Ok(Some(_))),
        "no identity for lena's Okta id: {identity:?}"
    );

    // ada is in matrix-admins: the admin scope is granted and Synapse's admin API answers.
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
    // bob is not: asking for the scope does not get it.
    let browser_client = browser::client();
    let (bob, granted) =
        RawClient::sign_in_with_scope(&stack, "bob", &browser_client, ADMIN_SCOPE).await;
    assert!(!granted.split(' ').any(|s| s == ADMIN_SCOPE), "{granted}");
    let answer = reqwest::Client::new()
        .get(admin_users.clone())
        .bearer_auth(&bob.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);

    // bob signs out: mxidp ends the session and hands Okta's tokens back at its revocation
    // endpoint.
    assert_eq!(
        bob.revoke(&bob.access_token, "access_token").await,
        StatusCode::OK
    );
    until_refused(&stack, &bob.access_token, Duration::from_secs(5)).await;
    let start = Instant::now();
    while !stack.idp.requests().iter().any(|r| r == "POST /v1/revoke") {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "nothing revoked at Okta: {:?}",
            stack.idp.requests()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_hook_deactivation_deactivates_the_matrix_account() {
    let stack = Stack::okta(vec![OktaUser::new("carol"), OktaUser::new("dan")]).await;
    let browser_client = browser::client();
    let carol = RawClient::sign_in(&stack, "carol", &browser_client).await;
    let browser_client = browser::client();
    let dan = RawClient::sign_in(&stack, "dan", &browser_client).await;

    // Okta's one-time verification, answered by mxidp.
    let (status, body) = stack.idp.send_verification(true).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["verification"].is_string(), "{body}");

    let event = stack
        .idp
        .act("user.lifecycle.deactivate", "carol", Delivery::Hook)
        .await;
    assert_eq!(stack.idp.hook_attempts(), vec![200]);
    let took = until_refused(&stack, &carol.access_token, Duration::from_secs(5)).await;
    println!("carol signed out {took:?} after the Event Hook");
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
    assert_eq!(
        stored_with_key(&stack, event["uuid"].as_str().unwrap()).await,
        vec![IdpEvent::UserDeactivated {
            subject: stack.idp.user_id("carol"),
            erase: false
        }]
    );
    whoami_ok(&stack, &dan.access_token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_log_locks_a_suspended_user_applies_each_event_once_and_recovers_lost_deliveries(
) {
    let stack = Stack::okta(vec![
        OktaUser::new("erin"),
        OktaUser::new("fay"),
        OktaUser::new("gus"),
        OktaUser::new("hal"),
    ])
    .await;
    let mut sessions = Vec::new();
    for user in ["erin", "fay", "gus", "hal"] {
        let browser_client = browser::client();
        sessions.push(RawClient::sign_in(&stack, user, &browser_client).await);
    }

    // A suspension reaches mxidp only through the System Log.
    let suspend = stack
        .idp
        .act("user.lifecycle.suspend", "erin", Delivery::LogOnly)
        .await;
    assert!(stack.idp.hook_attempts().is_empty());
    whoami_ok(&stack, &sessions[0].access_token).await;
    let (stored, _) = read_log(&stack).await;
    assert_eq!(stored, 1);
    until_refused(&stack, &sessions[0].access_token, Duration::from_secs(5)).await;
    assert_eq!(
        stored_with_key(&stack, suspend["uuid"].as_str().unwrap()).await,
        vec![IdpEvent::UserLocked {
            subject: stack.idp.user_id("erin")
        }]
    );

    // The same deactivation through the hook and then the log: stored and applied once.
    let both = stack
        .idp
        .act("user.lifecycle.deactivate", "fay", Delivery::Hook)
        .await;
    until_refused(&stack, &sessions[1].access_token, Duration::from_secs(5)).await;
    let (stored, _) = read_log(&stack).await;
    assert_eq!(stored, 0, "the log's copy is a duplicate");
    let key = both["uuid"].as_str().unwrap();
    assert_eq!(stored_with_key(&stack, key).await.len(), 1);
    let start = Instant::now();
    let applied = loop {
        let event = stack
            .app()
            .store
            .list_events(None, 1000)
            .await
            .unwrap()
            .into_iter()
            .find(|e| e.dedupe_key == key)
            .unwrap();
        if event.state == mxidp_core::events::EventState::Applied {
            break event;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{event:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(applied.attempts, 1, "{applied:?}");

    // A delivery lost on the way (Okta tried twice): the next read of the log recovers it.
    stack
        .idp
        .act("user.lifecycle.deactivate", "gus", Delivery::Lost)
        .await;
    assert_eq!(stack.idp.hook_attempts(), vec![200, 0, 0]);
    whoami_ok(&stack, &sessions[2].access_token).await;
    let (stored, next_poll) = read_log(&stack).await;
    assert_eq!(stored, 1);
    assert_eq!(
        next_poll,
        Duration::from_secs(86400),
        "caught up: the configured interval"
    );
    until_refused(&stack, &sessions[2].access_token, Duration::from_secs(5)).await;

    // Okta's rate limit: the read waits for the reset and the cursor stays where it was.
    let cursor_before = stack
        .app()
        .store
        .setting("event_log_cursor:okta")
        .await
        .unwrap();
    stack.idp.rate_limit_logs(1);
    stack
        .idp
        .act("user.lifecycle.suspend", "hal", Delivery::LogOnly)
        .await;
    let (stored, wait) = read_log(&stack).await;
    assert_eq!(stored, 0);
    assert!(
        wait > Duration::from_secs(1) && wait <= Duration::from_secs(30),
        "{wait:?}"
    );
    assert_eq!(
        stack
            .app()
            .store
            .setting("event_log_cursor:okta")
            .await
            .unwrap(),
        cursor_before
    );
    let (stored, _) = read_log(&stack).await;
    assert_eq!(stored, 1);
    until_refused(&stack, &sessions[3].access_token, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hook_input_is_refused_and_changes_nothing() {
    let stack = Stack::okta(vec![OktaUser::new("ivy"), OktaUser::new("jo")]).await;
    let browser_client = browser::client();
    let ivy = RawClient::sign_in(&stack, "ivy", &browser_client).await;
    let webhook = stack.mxidp.join("upstream/webhook").unwrap();
    let before = stack
        .app()
        .store
        .list_events(None, 1000)
        .await
        .unwrap()
        .len();

    // A wrong secret: 401, nothing stored, ivy untouched.
    let event = stack.idp.record("user.lifecycle.deactivate", "ivy");
    let body = stack.idp.envelope(vec![event]);
    let answer = reqwest::Client::new()
        .post(webhook.clone())
        .header("Authorization", "not-the-secret")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        stack
            .app()
            .store
            .list_events(None, 1000)
            .await
            .unwrap()
            .len(),
        before
    );
    whoami_ok(&stack, &ivy.access_token).await;

    // The verification without its challenge header: 400.
    let (status, _) = stack.idp.send_verification(false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A batch with one malformed event: the good one stored and applied, the bad one reported.
    let good = stack.idp.record("user.session.end", "jo");
    let mut bad = stack.idp.record("user.lifecycle.suspend", "ivy");
    bad["target"] = json!([{"id": "0oa1app", "type": "AppInstance"}]);
    let answer = reqwest::Client::new()
        .post(webhook)
        .header("Authorization", HOOK_SECRET)
        .json(&stack.idp.envelope(vec![good.clone(), bad.clone()]))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        stored_with_key(&stack, good["uuid"].as_str().unwrap()).await,
        vec![IdpEvent::AllSessionsEnded {
            subject: stack.idp.user_id("jo")
        }]
    );
    let reported = stored_with_key(&stack, bad["uuid"].as_str().unwrap()).await;
    assert!(
        matches!(&reported[..], [IdpEvent::Unactionable { reason }] if reason.contains("names no user")),
        "{reported:?}"
    );
    // Once the worker is through with the batch, the malformed suspension did nothing to ivy.
    let start = Instant::now();
    loop {
        let events = stack.app().store.list_events(None, 1000).await.unwrap();
        if events
            .iter()
            .filter(|e| e.dedupe_key == good["uuid"] || e.dedupe_key == bad["uuid"])
            .all(|e| e.finished_at.is_some())
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    whoami_ok(&stack, &ivy.access_token).await;
}

/// Reconciliation asks the Users API: a user suspended at Okta without any event mxidp saw is
/// signed out; an active one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_reads_user_status_from_the_users_api() {
    let stack = Stack::okta(vec![OktaUser::new("kit"), OktaUser::new("lou")]).await;
    let mut sessions = Vec::new();
    for user in ["kit", "lou"] {
        let browser_client = browser::client();
        sessions.push(RawClient::sign_in(&stack, user, &browser_client).await);
    }
    let settings = mxidp_core::config::ReconciliationConfig {
        enabled: Some(true),
        interval_seconds: 60,
        batch_size: 100,
        max_requests_per_second: 50,
    };
    // Introspection is out of budget (429): that is no verdict, and nothing ends.
    stack.idp.spend_introspection_budget();
    let round =
        mxidp_core::reconcile::reconcile_round(stack.app(), &settings, mxidp_core::ids::now_unix())
            .await
            .unwrap();
    assert_eq!((round.ended, round.users), (0, 0), "{round:?}");
    assert!(stack
        .idp
        .requests()
        .iter()
        .any(|r| r == "POST /v1/introspect"));
    for session in &sessions {
        whoami_ok(&stack, &session.access_token).await;
    }

    stack.idp.set_status("kit", "SUSPENDED");
    let round =
        mxidp_core::reconcile::reconcile_round(stack.app(), &settings, mxidp_core::ids::now_unix())
            .await
            .unwrap();
    assert_eq!(round.users, 1, "{round:?}");
    let kit_id = stack.idp.user_id("kit");
    assert!(stack
        .idp
        .requests()
        .iter()
        .any(|r| r == &format!("GET /api/v1/users/{kit_id}")));
    until_refused(&stack, &sessions[0].access_token, Duration::from_secs(5)).await;
    whoami_ok(&stack, &sessions[1].access_token).await;
}

/// `deploy/okta/setup.sh` against the double: it creates the app, the `groups` claim and the
/// Event Hook from its JSON bodies, and the hook's verification goes through mxidp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_setup_script_creates_the_app_the_groups_claim_and_a_verified_event_hook() {
    let stack = Stack::okta(vec![OktaUser::new("max")]).await;
    let script = support::repo_root().join("deploy/okta/setup.sh");
    let org = stack
        .idp
        .base_url()
        .as_str()
        .trim_end_matches('/')
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("okta_client_secret");
    let output = tokio::process::Command::new("bash")
        .arg(&script)
        .env("OKTA_ORG_URL", &org)
        .env("OKTA_API_TOKEN", support::okta::API_TOKEN)
        .env("OKTA_AUTH_SERVER_ID", support::okta::AUTH_SERVER)
        .env("MXIDP_URL", stack.mxidp.as_str().trim_end_matches('/'))
        .env("OKTA_HOOK_SECRET", HOOK_SECRET)
        .env("CLIENT_SECRET_FILE", &secret_file)
        .output()
        .await
        .expect("bash runs the script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    // The API token is never printed.
    assert!(
        !stdout.contains(support::okta::API_TOKEN) && !stderr.contains(support::okta::API_TOKEN)
    );
    let created = stack.idp.created();
    let paths: Vec<&str> = created.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "POST /api/v1/apps",
            &format!(
                "POST /api/v1/authorizationServers/{}/claims",
                support::okta::AUTH_SERVER
            ),
            "POST /api/v1/eventHooks"
        ]
    );
    let app = &created[0].1;
    assert_eq!(
        app["settings"]["oauthClient"]["redirect_uris"],
        json!([stack.mxidp.join("upstream/callback").unwrap().as_str()])
    );
    let claim = &created[1].1;
    assert_eq!(claim["name"], "groups");
    let hook = &created[2].1;
    let types: Vec<&str> = hook["events"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(types, mxidp_okta::log_event::EVENT_TYPES);
    let (uri, _, verified) = stack.idp.hook().unwrap();
    assert_eq!(uri, stack.mxidp.join("upstream/webhook").unwrap());
    assert!(verified, "the verification through mxidp failed");
    // The client id is printed for mxidp's configuration, the secret written to its file:
    // together they are a client the double knows.
    let client_id = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("client_id = \""))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no client_id in {stdout}"));
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    assert!(!stdout.contains(secret.trim()));
    let token = reqwest::Client::new()
        .post(format!("{}/v1/token", stack.idp.issuer()))
        .basic_auth(client_id, Some(secret.trim()))
        .form(&[("grant_type", "authorization_code"), ("code", "none")])
        .send()
        .await
        .unwrap();
    // Authenticated (the code is what fails), so the id and secret are a pair.
    assert_eq!(token.status(), StatusCode::BAD_REQUEST);
}

/// Re-validation defaults to local JWT checks for a custom authorization server: Okta's access
/// tokens carry the server's audience (`api://default`) and no `azp`, which the adapter names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn okta_access_tokens_pass_local_verification_with_the_servers_audience() {
    use mxidp_core::revalidate::{verify_access_jwt, JwtVerdict};
    let stack = Stack::okta(vec![OktaUser::new("nia")]).await;
    let upstream = stack.app().upstream.get().expect("discovered");
    let token = stack
        .idp
        .mint_access_token("nia", support::stack::CLIENT_ID);
    let now = mxidp_core::ids::now_unix();
    // `upstream.revalidation` is not set in the stack: the adapter's default applies.
    assert!(stack.app().revalidator.is_some());
    assert_eq!(
        stack.app().provider.default_revalidation(),
        mxidp_core::config::Revalidation::Jwt
    );
    assert_eq!(
        verify_access_jwt(
            &upstream,
            stack.app().provider.access_token_audience(),
            &token,
            now
        )
        .await,
        JwtVerdict::Valid
    );
    // Without the adapter's audience the same token is not for mxidp.
    assert!(matches!(
        verify_access_jwt(&upstream, None, &token, now).await,
        JwtVerdict::Invalid(_)
    ));

    // The double introspects as Okta documents: the same members as Okta's example, `scope` a
    // string, `sub` the login and `uid` the user id, with the rate-limit headers.
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/introspect", stack.idp.issuer()))
        .basic_auth(
            support::stack::CLIENT_ID,
            Some(support::stack::CLIENT_SECRET),
        )
        .form(&[
            ("token", token.as_str()),
            ("token_type_hint", "access_token"),
        ])
        .send()
        .await
        .unwrap();
    assert!(answer.headers().contains_key("x-rate-limit-remaining"));
    let answer: Value = answer.json().await.unwrap();
    let documented: Value = serde_json::from_str(include_str!(
        "../adapters/okta/tests/fixtures/introspect_response_access_token_active.json"
    ))
    .unwrap();
    let keys = |v: &Value| {
        v.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(keys(&answer), keys(&documented));
    assert!(answer["scope"].is_string());
    assert_eq!(answer["uid"], stack.idp.user_id("nia"));
    assert_eq!(answer["sub"], "nia@example.org");
}

//! End to end with ZITADEL as the IdP: the ZITADEL double of `tests/support/zitadel.rs` (one
//! instance, organisations Acme and Globex, one project with the role `matrix-admin`, an Actions
//! v2 target on mxidp's webhook), real Synapse in `matrix_authentication_service` mode, and
//! mxidp in this process with `provider = "zitadel"` restricted to Acme.
//!
//! Reconciliation rounds are run by the tests (`reconcile_round`) rather than waited for.

mod support;

use std::time::{Duration, Instant};

use mxidp_core::events::IdpEvent;
use reqwest::StatusCode;
use serde_json::Value;
use support::browser;
use support::raw_client::RawClient;
use support::stack::Stack;
use support::zitadel::{Delivery, ZUser, ZitadelDouble, ACME_ORG, ADMIN_ROLE, SIGNING_KEY};

const ADMIN_SCOPE: &str = "urn:synapse:admin:*";

async fn until_refused(stack: &Stack<ZitadelDouble>, token: &str, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if stack.whoami(token).await.status() == StatusCode::UNAUTHORIZED {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the token still works after {limit:?}");
}

async fn whoami_ok(stack: &Stack<ZitadelDouble>, token: &str) {
    assert_eq!(stack.whoami(token).await.status(), StatusCode::OK);
}

async fn stored_events(stack: &Stack<ZitadelDouble>) -> Vec<mxidp_core::events::StoredEvent> {
    stack.app().store.list_events(None, 1000).await.unwrap()
}

async fn query_user(stack: &Stack<ZitadelDouble>, localpart: &str) -> Value {
    stack
        .synapse
        .mas_get("query_user", &[("localpart", localpart)])
        .await
        .json()
        .await
        .unwrap()
}

async fn until_deactivated(stack: &Stack<ZitadelDouble>, localpart: &str) {
    let start = Instant::now();
    loop {
        let user = query_user(stack, localpart).await;
        if user["is_deactivated"] == true {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{localpart} is not deactivated in Synapse: {user}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// mxidp's authorization URL for a client registered through matrix-rust-sdk.
async fn sdk_authorization_url(stack: &Stack<ZitadelDouble>) -> (matrix_sdk::Client, url::Url) {
    use matrix_sdk::authentication::oauth::registration::{
        ApplicationType, ClientMetadata, Localized, OAuthGrantType,
    };
    use matrix_sdk::ruma::serde::Raw;
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
    (client, auth.url)
}

/// Walks a sign-in by hand up to the first page that is not ZITADEL's login form: returns that
/// page's status and body (a refusal page, or ZITADEL's own error).
async fn walk_to_page(start: url::Url, login_name: &str) -> (StatusCode, String, Vec<String>) {
    let http = browser::client();
    let mut next = (reqwest::Method::GET, start, Vec::<(String, String)>::new());
    let mut visited = Vec::new();
    for _ in 0..15 {
        visited.push(next.1.to_string());
        let answer = http
            .request(next.0.clone(), next.1.clone())
            .form(&next.2)
            .send()
            .await
            .unwrap();
        let status = answer.status();
        if status.is_redirection() {
            let location = answer.headers()["location"].to_str().unwrap();
            next = (reqwest::Method::GET, next.1.join(location).unwrap(), vec![]);
            continue;
        }
        let body = answer.text().await.unwrap();
        let page = browser::Page {
            forms: browser::parse_forms(&body),
            url: next.1.clone(),
            status,
            body: body.clone(),
        };
        match browser::fill_login_form(&page, login_name, Some("password")) {
            Some(submission) if status.is_success() => {
                next = (submission.method, submission.url, submission.fields);
            }
            _ => return (status, body, visited),
        }
    }
    panic!("no page after 15 steps: {visited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_signs_in_through_zitadel_with_userinfo_claims_and_a_project_role_grants_synapse_admin(
) {
    use matrix_sdk::utils::UrlOrQuery;
    let stack = Stack::zitadel(vec![
        ZUser::new("lena"),
        ZUser::new("ada").role(ADMIN_ROLE),
        ZUser::new("bob").role("matrix-user"),
    ])
    .await;
    let (client, url) = sdk_authorization_url(&stack).await;
    let journey = browser::login(
        &browser::client(),
        url,
        browser::LoginOptions::new("lena@acme.zitadel.example").password("lena-password"),
    )
    .await;
    assert!(
        journey
            .pages
            .iter()
            .any(|p| p.body.contains("zitadel-login")),
        "ZITADEL's login form was shown"
    );
    client
        .oauth()
        .finish_login(UrlOrQuery::Url(journey.final_url))
        .await
        .expect("finish_login");
    let whoami = client.whoami().await.expect("whoami");
    // The localpart comes from userinfo's `preferred_username` (the ID token has no profile
    // claims), before its `@`.
    assert_eq!(whoami.user_id.as_str(), stack.user_id("lena"));
    let requests = stack.idp.requests();
    assert!(
        requests.iter().any(|r| r == "GET /oidc/v1/userinfo"),
        "{requests:?}"
    );
    // The adapter's scopes reached ZITADEL's authorize: project roles, the resource owner, and
    // the organisation.
    let scopes = requests
        .iter()
        .find_map(|r| r.strip_prefix("authorize scopes="))
        .unwrap();
    for scope in [
        "urn:zitadel:iam:org:projects:roles",
        "urn:zitadel:iam:user:resourceowner",
        &format!("urn:zitadel:iam:org:id:{ACME_ORG}"),
    ] {
        assert!(scopes.split(' ').any(|s| s == scope), "{scope} in {scopes}");
    }
    // The display name is userinfo's `name`.
    let profile: Value = reqwest::Client::new()
        .get(stack.synapse.url(&format!(
            "/_matrix/client/v3/profile/{}",
            stack.user_id("lena")
        )))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(profile["displayname"], "lena Example", "{profile}");
    // Keyed on the ZITADEL user id.
    let identity = stack
        .app()
        .store
        .identity_by_subject(&stack.app().mapping.upstream_id, &stack.idp.user_id("lena"))
        .await;
    assert!(matches!(identity, Ok(Some(_))), "{identity:?}");

    // ada holds the project role matrix-admin: the admin scope is granted, Synapse's admin API
    // answers.
    let (ada, granted) =
        RawClient::sign_in_with_scope(&stack, "ada", &browser::client(), ADMIN_SCOPE).await;
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
    // bob holds another role: no admin.
    let (bob, granted) =
        RawClient::sign_in_with_scope(&stack, "bob", &browser::client(), ADMIN_SCOPE).await;
    assert!(!granted.split(' ').any(|s| s == ADMIN_SCOPE), "{granted}");
    let answer = reqwest::Client::new()
        .get(admin_users)
        .bearer_auth(&bob.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);

    // Sign-up: a client's `prompt=create` reaches ZITADEL, which shows its registration form.
    let (_, mut url) = sdk_authorization_url(&stack).await;
    url.query_pairs_mut().append_pair("prompt", "create");
    let (_, body, _) = walk_to_page(url, "nobody-yet").await;
    assert!(stack
        .idp
        .requests()
        .iter()
        .any(|r| r == "authorize prompt=create"));
    // The double has no such user: its own error after the registration form.
    assert!(body.contains("User could not be found"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_of_another_organisation_is_refused_with_a_clear_page() {
    let stack = Stack::zitadel(vec![ZUser::new("gus").of_globex(), ZUser::new("hal")]).await;
    // ZITADEL's login honours the org scope: Globex's user is not found there.
    let (_, url) = sdk_authorization_url(&stack).await;
    let (status, body, _) = walk_to_page(url, "gus@globex.zitadel.example").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("User could not be found"), "{body}");

    // A login that ignores the scope still does not let him in: mxidp checks the resource
    // owner and says why, with a way back to the app.
    stack.idp.ignore_org_scope();
    let (_, url) = sdk_authorization_url(&stack).await;
    let (status, body, visited) = walk_to_page(url, "gus@globex.zitadel.example").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{visited:?}\n{body}");
    assert!(body.contains("Sign-in refused"), "{body}");
    assert!(
        body.contains("your account belongs to another one (Globex)"),
        "{body}"
    );
    assert!(visited.last().unwrap().contains("/upstream/callback"));
    // Nothing was created for him.
    assert!(stack
        .app()
        .store
        .identity_by_subject(&stack.app().mapping.upstream_id, &stack.idp.user_id("gus"))
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        stack
            .synapse
            .mas_get("query_user", &[("localpart", "gus")])
            .await
            .status(),
        StatusCode::NOT_FOUND,
        "no Synapse account for gus"
    );
    // Acme's user still signs in through the same login.
    let hal = RawClient::sign_in(&stack, "hal", &browser::client()).await;
    whoami_ok(&stack, &hal.access_token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_v2_events_deactivate_lock_remove_and_end_one_session() {
    let stack = Stack::zitadel(vec![
        ZUser::new("carol"),
        ZUser::new("dan"),
        ZUser::new("erin"),
        ZUser::new("fay"),
        ZUser::new("ada").role(ADMIN_ROLE),
    ])
    .await;
    let mut s = Vec::new();
    for user in ["carol", "dan", "erin", "fay"] {
        s.push(RawClient::sign_in(&stack, user, &browser::client()).await);
    }
    let fay_second = RawClient::sign_in(&stack, "fay", &browser::client()).await;
    let (ada, _) =
        RawClient::sign_in_with_scope(&stack, "ada", &browser::client(), ADMIN_SCOPE).await;

    // user.deactivated: the Matrix account is deactivated. The subject is the aggregate (carol),
    // not the admin in `userID`.
    let body = stack
        .idp
        .act("user.deactivated", "carol", Delivery::Sent)
        .await;
    assert_eq!(stack.idp.deliveries(), vec![200]);
    until_refused(&stack, &s[0].access_token, Duration::from_secs(5)).await;
    until_deactivated(&stack, "carol").await;
    let key = format!(
        "zitadel:{}:user:{}:{}",
        body["instanceID"].as_str().unwrap(),
        stack.idp.user_id("carol"),
        body["sequence"]
    );
    let stored: Vec<IdpEvent> = stored_events(&stack)
        .await
        .into_iter()
        .filter(|e| e.dedupe_key == key)
        .map(|e| e.event)
        .collect();
    assert_eq!(
        stored,
        vec![IdpEvent::UserDeactivated {
            subject: stack.idp.user_id("carol"),
            erase: false
        }]
    );

    // user.locked: signed out and locked in Synapse, not deactivated.
    stack.idp.act("user.locked", "dan", Delivery::Sent).await;
    until_refused(&stack, &s[1].access_token, Duration::from_secs(5)).await;
    let start = Instant::now();
    loop {
        let dan: Value = reqwest::Client::new()
            .get(stack.synapse.url(&format!(
                "/_synapse/admin/v2/users/{}",
                stack.user_id("dan")
            )))
            .bearer_auth(&ada.access_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if dan["locked"] == true {
            assert_eq!(dan["deactivated"], false, "{dan}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{dan}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // user.removed: deactivated, and the localpart tombstoned.
    stack.idp.act("user.removed", "erin", Delivery::Sent).await;
    until_refused(&stack, &s[2].access_token, Duration::from_secs(5)).await;
    until_deactivated(&stack, "erin").await;
    let start = Instant::now();
    loop {
        let identity = stack
            .app()
            .store
            .identity_by_subject(&stack.app().mapping.upstream_id, &stack.idp.user_id("erin"))
            .await
            .unwrap()
            .unwrap();
        if identity.deleted_at.is_some() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{identity:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // session.terminated: only the device of that ZITADEL session is signed out.
    let sessions = stack.idp.sessions_of("fay");
    assert_eq!(sessions.len(), 2);
    stack
        .idp
        .terminate_session(&sessions[0], Delivery::Sent, false)
        .await;
    until_refused(&stack, &s[3].access_token, Duration::from_secs(5)).await;
    whoami_ok(&stack, &fay_second.access_token).await;
    assert_eq!(stack.idp.deliveries(), vec![200; 4]);
    assert!(stack.idp.logouts().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_are_refused_and_store_nothing() {
    let stack = Stack::zitadel(vec![ZUser::new("ivy")]).await;
    let ivy = RawClient::sign_in(&stack, "ivy", &browser::client()).await;
    let webhook = stack.mxidp.join("upstream/webhook").unwrap();
    let before = stored_events(&stack).await.len();
    let body = stack
        .idp
        .event_body("user.deactivated", "user", &stack.idp.user_id("ivy"))
        .to_string();
    let now = mxidp_core::ids::now_unix();
    let sign = |key: &str, t: i64, body: &str| {
        mxidp_zitadel::actions::signature_header(key, t, body.as_bytes())
    };
    let changed = body.replace("user.deactivated", "user.reactivated");
    for (what, header, sent) in [
        ("wrong key", sign("not-the-key", now, &body), body.clone()),
        ("too old", sign(SIGNING_KEY, now - 600, &body), body.clone()),
        (
            "far future",
            sign(SIGNING_KEY, now + 86_400, &body),
            body.clone(),
        ),
        (
            "body changed",
            sign(SIGNING_KEY, now, &body),
            changed.clone(),
        ),
        ("no v1", format!("t={now}"), body.clone()),
    ] {
        let answer = reqwest::Client::new()
            .post(webhook.clone())
            .header("content-type", "application/json")
            .header("ZITADEL-Signature", header)
            .body(sent)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "{what}");
    }
    let answer = reqwest::Client::new()
        .post(webhook.clone())
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "unsigned");
    assert_eq!(stored_events(&stack).await.len(), before);
    whoami_ok(&stack, &ivy.access_token).await;

    // Several v1, one valid: accepted.
    let good = sign(SIGNING_KEY, now, &body);
    let v1 = good.split_once(",v1=").unwrap().1;
    let other = sign("old-key", now, &body);
    let other_v1 = other.split_once(",v1=").unwrap().1;
    let answer = reqwest::Client::new()
        .post(webhook)
        .header("content-type", "application/json")
        .header(
            "ZITADEL-Signature",
            format!("t={now},v1={other_v1},v1={v1}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{}", answer.status());
    until_refused(&stack, &ivy.access_token, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_channel_logout_typed_jwt_ends_that_session() {
    let stack = Stack::zitadel(vec![ZUser::new("kit")]).await;
    let first = RawClient::sign_in(&stack, "kit", &browser::client()).await;
    let second = RawClient::sign_in(&stack, "kit", &browser::client()).await;
    let sessions = stack.idp.sessions_of("kit");
    // The event is lost; ZITADEL's logout token (typ JWT) alone ends the session.
    stack
        .idp
        .terminate_session(&sessions[1], Delivery::Dropped, true)
        .await;
    assert_eq!(stack.idp.logouts(), vec![200]);
    until_refused(&stack, &second.access_token, Duration::from_secs(5)).await;
    whoami_ok(&stack, &first.access_token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_webhook_is_caught_by_reconciliation_on_by_default() {
    let stack = Stack::zitadel(vec![
        ZUser::new("lou"),
        ZUser::new("max"),
        ZUser::new("ned"),
    ])
    .await;
    let mut s = Vec::new();
    for user in ["lou", "max", "ned"] {
        s.push(RawClient::sign_in(&stack, user, &browser::client()).await);
    }
    // On by default for this adapter, without any [reconciliation] in the configuration.
    let settings = mxidp_core::config::ReconciliationConfig::default();
    assert!(settings.is_enabled(stack.app().provider.as_ref()));

    // ZITADEL could not deliver (mxidp was down): the event is gone for good.
    stack
        .idp
        .act("user.deactivated", "lou", Delivery::Dropped)
        .await;
    stack
        .idp
        .act("user.removed", "max", Delivery::Dropped)
        .await;
    assert_eq!(stack.idp.deliveries(), vec![0, 0]);
    whoami_ok(&stack, &s[0].access_token).await;

    let round = mxidp_core::reconcile::reconcile_round(
        stack.app(),
        &mxidp_core::config::ReconciliationConfig {
            max_requests_per_second: 50,
            ..settings
        },
        mxidp_core::ids::now_unix(),
    )
    .await
    .unwrap();
    assert_eq!(round.users, 2, "{round:?}");
    for name in ["lou", "max", "ned"] {
        let id = stack.idp.user_id(name);
        assert!(
            stack
                .idp
                .requests()
                .iter()
                .any(|r| *r == format!("GET /v2/users/{id}")),
            "{name}"
        );
    }
    until_refused(&stack, &s[0].access_token, Duration::from_secs(5)).await;
    until_refused(&stack, &s[1].access_token, Duration::from_secs(5)).await;
    whoami_ok(&stack, &s[2].access_token).await;
}

/// mxidp's own app authenticates with `private_key_jwt` (ZITADEL's JSON key file): the code
/// exchange, introspection (audience-bound: the token was issued to mxidp's app) and revocation
/// all carry a signed assertion, and no secret exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_signs_in_introspects_and_revokes_without_a_secret() {
    use mxidp_core::upstream::TokenTypeHint;
    let stack = Stack::zitadel_with(vec![ZUser::new("oda")], true).await;
    let oda = RawClient::sign_in(&stack, "oda", &browser::client()).await;
    whoami_ok(&stack, &oda.access_token).await;
    assert!(stack
        .idp
        .requests()
        .iter()
        .any(|r| r == "POST /oauth/v2/token authorization_code"));
    // Introspection with mxidp's client: the double answers only an authenticated caller in the
    // token's audience.
    let upstream = stack.app().upstream.get().expect("discovered");
    let sessions = stack
        .app()
        .store
        .active_sessions_of_subject(&stack.app().mapping.upstream_id, &stack.idp.user_id("oda"))
        .await
        .unwrap();
    assert_eq!(sessions.len(), 1);
    let access = stack
        .app()
        .sealer
        .open_secret(sessions[0].sealed_access_token.as_deref().unwrap())
        .unwrap();
    let access = access.expose();
    assert!(
        upstream
            .introspect(access, TokenTypeHint::AccessToken)
            .await
            .unwrap()
            .active
    );
    // Without a valid assertion ZITADEL answers 401, which is an error, never "inactive".
    let plain = reqwest::Client::new()
        .post(format!("{}oauth/v2/introspect", stack.idp.issuer()))
        .form(&[
            ("token", access),
            ("client_id", support::zitadel::KEY_CLIENT_ID),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::UNAUTHORIZED);
    upstream
        .revoke(access, TokenTypeHint::AccessToken)
        .await
        .unwrap();
    assert!(
        !upstream
            .introspect(access, TokenTypeHint::AccessToken)
            .await
            .unwrap()
            .active
    );
}

/// `deploy/zitadel/setup.sh` against the double: the project and roles, the OIDC app with
/// back-channel logout, the service user with its token and role, the Actions v2 target and its
/// executions; the secrets go to files, never to the output, and work where they are used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_setup_script_creates_the_project_app_service_user_target_and_executions() {
    let stack = Stack::zitadel(vec![ZUser::new("pia")]).await;
    let script = support::repo_root().join("deploy/zitadel/setup.sh");
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new("bash")
        .arg(&script)
        .env(
            "ZITADEL_URL",
            stack.idp.issuer().as_str().trim_end_matches('/'),
        )
        .env("ZITADEL_TOKEN", support::zitadel::ADMIN_TOKEN)
        .env("MXIDP_URL", stack.mxidp.as_str().trim_end_matches('/'))
        .env("SECRETS_DIR", dir.path())
        .output()
        .await
        .expect("bash runs the script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let created = stack.idp.created();
    let paths: Vec<&str> = created.iter().map(|(p, _)| p.as_str()).collect();
    let project = support::zitadel::PROJECT_ID;
    let mut expected = vec![
        "POST /management/v1/projects".to_owned(),
        format!("POST /management/v1/projects/{project}/roles/_bulk"),
        format!("POST /management/v1/projects/{project}/apps/oidc"),
        "POST /management/v1/users/machine".into(),
        "POST /management/v1/orgs/me/members".into(),
    ];
    let pat_path = paths[5].to_owned();
    assert!(pat_path.ends_with("/pats"), "{paths:?}");
    expected.push(pat_path);
    expected.push("POST /v2/actions/targets".into());
    expected.extend(std::iter::repeat_n(
        "PUT /v2/actions/executions".to_owned(),
        7,
    ));
    assert_eq!(paths, expected);
    assert_eq!(created[0].1["projectRoleAssertion"], true);
    let roles: Vec<&str> = created[1].1["roles"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["key"].as_str())
        .collect();
    assert!(roles.contains(&ADMIN_ROLE));
    let app = &created[2].1;
    assert_eq!(
        app["redirectUris"][0],
        stack.mxidp.join("upstream/callback").unwrap().as_str()
    );
    assert_eq!(
        app["backChannelLogoutUri"],
        stack
            .mxidp
            .join("upstream/backchannel-logout")
            .unwrap()
            .as_str()
    );
    assert_eq!(created[4].1["roles"][0], "ORG_USER_MANAGER");
    // The Actions v2 bodies have the shape of ZITADEL's documented requests.
    let keys = |v: &Value| {
        v.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
    };
    let documented_target: Value = serde_json::from_str(include_str!(
        "../adapters/zitadel/tests/fixtures/actions-v2-create-target-request.json"
    ))
    .unwrap();
    let target = &created[6].1;
    assert_eq!(keys(target), keys(&documented_target));
    assert_eq!(
        keys(&target["restWebhook"]),
        keys(&documented_target["restWebhook"])
    );
    let documented_execution: Value = serde_json::from_str(include_str!(
        "../adapters/zitadel/tests/fixtures/actions-v2-set-execution-event-request.json"
    ))
    .unwrap();
    for (_, execution) in &created[7..] {
        assert_eq!(keys(execution), keys(&documented_execution));
        assert_eq!(
            keys(&execution["condition"]["event"]),
            keys(&documented_execution["condition"]["event"])
        );
        assert!(execution["targets"][0].is_string(), "{execution}");
    }
    // The target points at mxidp's webhook; one execution per event mxidp maps (the legacy
    // `user.password.changed` aside).
    let (targets, conditions) = stack.idp.actions();
    let (endpoint, signing_key) = targets.last().unwrap();
    assert_eq!(endpoint, &stack.mxidp.join("upstream/webhook").unwrap());
    let events: Vec<&str> = conditions
        .iter()
        .skip(mxidp_zitadel::actions::EVENT_TYPES.len())
        .filter_map(|c| c["event"]["event"].as_str())
        .collect();
    for event in [
        "user.deactivated",
        "user.locked",
        "user.removed",
        "session.terminated",
    ] {
        assert!(events.contains(&event), "{event} in {events:?}");
    }
    // Secrets are in their files, not in the output; each works where mxidp uses it.
    let read = |name: &str| {
        std::fs::read_to_string(dir.path().join(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(&read("signing_key"), signing_key);
    let (client_secret, token) = (read("client_secret"), read("service_user_token"));
    for secret in [
        &client_secret,
        &token,
        signing_key,
        &support::zitadel::ADMIN_TOKEN.to_owned(),
    ] {
        assert!(!stdout.contains(secret.as_str()) && !stderr.contains(secret.as_str()));
    }
    let client_id = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("client_id = \""))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no client_id in {stdout}"));
    let answer = reqwest::Client::new()
        .post(format!("{}oauth/v2/token", stack.idp.issuer()))
        .basic_auth(client_id, Some(&client_secret))
        .form(&[("grant_type", "authorization_code"), ("code", "none")])
        .send()
        .await
        .unwrap();
    // Authenticated (the code is what fails), so the id and secret are a pair.
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    let api = mxidp_zitadel::UserApi::new(
        &stack.idp.issuer(),
        mxidp_core::secret::SecretString::new(token),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(
        api.user_status(&stack.idp.user_id("pia")).await.unwrap(),
        mxidp_core::provider::UserStatus::Active
    );
}

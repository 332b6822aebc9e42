//! IdP-initiated sign-out and offboarding end to end: oidc-provider sends OIDC back-channel
//! logout to mxidp, mxidp's durable pipeline deletes the device in real Synapse. Also crash
//! safety (kill -9 between the 2xx and the action) and a Synapse outage with 1,000 events.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use support::browser;
use support::raw_client::RawClient;
use support::stack::Stack;
use support::IdpAccount;

/// Polls until Synapse refuses the token; returns how long it took.
async fn until_refused(stack: &Stack, token: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if stack.whoami(token).await.status() == StatusCode::UNAUTHORIZED {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the token still works after {limit:?}");
}

fn mas_calls_named(stack: &Stack, call: &str) -> usize {
    stack
        .proxy
        .mas_calls()
        .iter()
        .filter(|l| l.contains(&format!("/_synapse/mas/{call}")))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_at_the_idp_signs_the_matrix_device_out_within_5_seconds() {
    let stack = Stack::start(vec![IdpAccount::new("carol")]).await;
    let browser_client = browser::client();
    let session = RawClient::sign_in(&stack, "carol", &browser_client).await;
    assert_eq!(
        stack.whoami(&session.access_token).await.status(),
        StatusCode::OK
    );

    // The IdP ends carol's session and sends a logout token to mxidp.
    stack.idp.end_sessions_of("sub-carol").await;
    let took = until_refused(&stack, &session.access_token, Duration::from_secs(5)).await;
    println!("device gone {took:?} after the IdP logout");
    assert_eq!(
        stack.introspect(&session.access_token).await["active"],
        false
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_the_acknowledgement_applies_the_action_exactly_once_after_restart() {
    let mut stack = Stack::start_with(
        vec![IdpAccount::new("dave")],
        true,
        "[events]\nretry_initial_seconds = 1\nretry_max_seconds = 1\nmax_age_seconds = 600",
    )
    .await;
    let browser_client = browser::client();
    let session = RawClient::sign_in(&stack, "dave", &browser_client).await;
    assert_eq!(
        stack.whoami(&session.access_token).await.status(),
        StatusCode::OK
    );

    // Synapse unreachable for mxidp: the logout is acknowledged and stored, not applied.
    stack.proxy.set_up(false);
    stack.idp.end_sessions_of("sub-dave").await;
    let events = wait_for_events(&stack, 1).await;
    assert!(events.contains("backchannel_logout"), "{events}");
    let before_crash =
        mas_calls_named(&stack, "sync_devices") + mas_calls_named(&stack, "delete_device");

    stack.kill9();
    stack.proxy.set_up(true);
    stack.restart().await;
    until_refused(&stack, &session.access_token, Duration::from_secs(20)).await;
    // Give a second chance to apply it twice, then count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = mas_calls_named(&stack, "sync_devices") + mas_calls_named(&stack, "delete_device");
    assert_eq!(before_crash, 0, "nothing reached Synapse while it was down");
    assert_eq!(
        after,
        1,
        "the device removal reached Synapse exactly once: {:?}",
        stack.proxy.mas_calls()
    );
    let listing = events_cli(&stack, &["list"]);
    assert!(listing.contains("applied"), "{listing}");
}

/// `mxidp events list` until it shows `n` events.
async fn wait_for_events(stack: &Stack, n: usize) -> String {
    for _ in 0..100 {
        let out = events_cli(stack, &["list"]);
        if out
            .lines()
            .filter(|l| l.contains("backchannel_logout"))
            .count()
            >= n
        {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no event stored: {}", events_cli(stack, &["list"]));
}

fn events_cli(stack: &Stack, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mxidp"))
        .arg("events")
        .args(args)
        .arg("--config")
        .arg(stack.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// 1,000 back-channel logouts while Synapse is unreachable: all accepted at once, none lost,
/// all applied once Synapse is back, none applied twice. Real Synapse behind the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_events_survive_a_synapse_outage_and_apply_once() {
    use mxidp_core::cache::ActiveToken;
    use mxidp_core::events::{Acceptance, EventState, IdpEvent, ReceivedEvent};
    use mxidp_core::homeserver::ProvisionRequest;
    use mxidp_core::ids::{now_unix, DeviceId, Localpart, TokenHash};
    use mxidp_core::store::{Session, SessionState, TokenKind, TokenRecord};

    const USERS: usize = 10;
    const DEVICES: usize = 100;
    let stack = Stack::start_with(
        vec![],
        false,
        "[events]\nretry_initial_seconds = 1\nretry_max_seconds = 2\nmax_age_seconds = 600",
    )
    .await;
    let app = stack.app();
    let now = now_unix();

    // 1,000 signed-in devices: sessions in mxidp, users and devices in Synapse.
    let mut tokens = Vec::new();
    for u in 0..USERS {
        let localpart = Localpart::parse(&format!("load{u}")).unwrap();
        app.homeserver
            .provision_user(&ProvisionRequest::new(localpart.clone()))
            .await
            .unwrap();
        for d in 0..DEVICES {
            let device = DeviceId::parse(&format!("LOADDEV{u:02}{d:04}")).unwrap();
            app.homeserver
                .upsert_device(&localpart, &device, None)
                .await
                .unwrap();
            let session = Session {
                id: format!("load-{u}-{d}").into(),
                provider: app.mapping.upstream_id.clone(),
                subject: format!("sub-load{u}"),
                localpart: localpart.clone(),
                device_id: device,
                client_id: "load-client".into(),
                idp_sid: Some(format!("sid-{u}-{d}")),
                scope: "urn:matrix:client:api:*".into(),
                admin: false,
                state: SessionState::Active,
                sealed_refresh_token: None,
                sealed_access_token: None,
                created_at: now,
                ended_at: None,
                end_reason: None,
            };
            let token = mxidp_core::tokens::issue(TokenKind::Access)
                .expose()
                .to_owned();
            let record = TokenRecord {
                hash: TokenHash::of(&token),
                session_id: session.id.to_string(),
                kind: TokenKind::Access,
                expires_at: Some(now + 3600),
                issued_at: now,
                rotated_at: None,
            };
            app.store
                .add_session(&session, std::slice::from_ref(&record))
                .await
                .unwrap();
            app.cache
                .insert(record.hash, ActiveToken::new(&record, &session));
            tokens.push(token);
        }
    }
    assert_eq!(stack.whoami(&tokens[0]).await.status(), StatusCode::OK);

    // Synapse goes away; 1,000 logouts arrive and are all acknowledged (stored durably).
    stack.proxy.set_up(false);
    let calls_before = stack.proxy.mas_calls().len();
    let event = |u: usize, d: usize| ReceivedEvent {
        dedupe_key: format!("jti-{u}-{d}"),
        occurred_at: now,
        event: IdpEvent::SessionEnded {
            sid: format!("sid-{u}-{d}"),
        },
    };
    for u in 0..USERS {
        for d in 0..DEVICES {
            let accepted = app
                .events
                .accept("backchannel_logout", event(u, d))
                .await
                .unwrap();
            assert!(matches!(accepted, Acceptance::Stored(_)));
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        stack.proxy.mas_calls().len(),
        calls_before,
        "nothing reached Synapse while down"
    );
    let waiting = app.store.list_events(None, 2000).await.unwrap();
    assert_eq!(waiting.len(), USERS * DEVICES, "every event is stored");
    assert!(
        waiting.iter().all(|e| e.state != EventState::Applied),
        "none applied while Synapse was down"
    );
    assert!(
        waiting.iter().any(|e| e.state == EventState::Failed),
        "the worker tried and will retry"
    );

    // Synapse is back: everything is applied, once.
    stack.proxy.set_up(true);
    let started = Instant::now();
    loop {
        let applied = app
            .store
            .list_events(Some(EventState::Applied), 2000)
            .await
            .unwrap()
            .len();
        if applied == USERS * DEVICES {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "only {applied} applied"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "1,000 events applied {:?} after Synapse returned",
        started.elapsed()
    );
    // Delivered again (an IdP retry): nothing new is stored or done.
    for u in 0..USERS {
        for d in 0..DEVICES {
            assert_eq!(
                app.events
                    .accept("backchannel_logout", event(u, d))
                    .await
                    .unwrap(),
                Acceptance::Duplicate
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let syncs = stack.proxy.mas_calls()[calls_before..]
        .iter()
        .filter(|l| l.contains("/_synapse/mas/sync_devices"))
        .count();
    assert_eq!(
        syncs,
        USERS * DEVICES,
        "one device sync per event, none twice"
    );
    for token in &tokens {
        assert_eq!(
            stack.whoami(token).await.status(),
            StatusCode::UNAUTHORIZED,
            "{token}"
        );
    }
}

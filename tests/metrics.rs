//! Prometheus metrics on their own listener: after a real sign-in (oidc-provider, Synapse), an
//! introspection and an IdP event, a scrape shows each counter moved.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use support::browser;
use support::raw_client::RawClient;
use support::stack::Stack;
use support::IdpAccount;

/// The value of the first sample of `name` whose labels contain every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_sign_ins_introspections_idp_events_and_outbound_calls() {
    let port = support::free_port();
    let stack = Stack::start_with(
        vec![IdpAccount::new("erin")],
        false,
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .await;
    let scrape = || async {
        reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .expect("the metrics listener answers")
            .text()
            .await
            .unwrap()
    };
    // The public listener does not serve them.
    let public = reqwest::get(stack.mxidp.join("metrics").unwrap())
        .await
        .unwrap();
    assert_eq!(public.status(), StatusCode::NOT_FOUND);

    let session = RawClient::sign_in(&stack, "erin", &browser::client()).await;
    assert_eq!(
        stack.whoami(&session.access_token).await.status(),
        StatusCode::OK
    );
    stack.idp.end_sessions_of("sub-erin").await;
    // The IdP's logout reaches mxidp and is applied.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape().await;
        if sample(
            &text,
            "mxidp_events_processed_total",
            &["outcome=\"applied\""],
        )
        .is_some()
        {
            break text;
        }
        assert!(Instant::now() < deadline, "no applied event in:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let at_least_one = |name: &str, labels: &[&str]| {
        let value = sample(&text, name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"));
        assert!(value >= 1.0, "{name} {labels:?} = {value}");
    };
    at_least_one("mxidp_signins_total", &["outcome=\"completed\""]);
    at_least_one(
        "mxidp_token_grants_total",
        &["grant_type=\"authorization_code\"", "outcome=\"ok\""],
    );
    at_least_one(
        "mxidp_introspection_requests_total",
        &["kind=\"own\"", "outcome=\"active\""],
    );
    at_least_one(
        "mxidp_introspection_duration_seconds_count",
        &["kind=\"own\""],
    );
    at_least_one(
        "mxidp_events_received_total",
        &["source=\"backchannel_logout\""],
    );
    at_least_one(
        "mxidp_homeserver_request_duration_seconds_count",
        &["call=\"upsert_device\""],
    );
    at_least_one(
        "mxidp_idp_request_duration_seconds_count",
        &["call=\"token\""],
    );
    let depth = sample(&text, "mxidp_events_outbox_depth", &[]).expect("outbox depth");
    assert_eq!(depth, 0.0, "everything applied");
    assert!(sample(&text, "mxidp_introspection_cache_entries", &[]).is_some());
}

//! Prometheus metrics, on a listener of their own (`[metrics] listen`, off by default) so that
//! they are never exposed with the public endpoints. Without it, no recorder is installed and
//! every call here does nothing. The introspection path only uses static labels: recording
//! allocates nothing there. Names and meanings: docs/operations.md.

use std::net::SocketAddr;
use std::time::Instant;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;

use crate::app::App;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served (e.g. `127.0.0.1:9464`). Unset: no metrics.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

/// Latency buckets, in seconds: introspection lives in the tens of microseconds, calls to the
/// IdP and Synapse in the tens of milliseconds.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Installs the process's recorder and serves `/metrics` on `listen`. A second call in the same
/// process (tests) keeps the first recorder and still serves.
pub fn spawn(app: App, listen: SocketAddr) -> tokio::task::JoinHandle<()> {
    let handle = match PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .map(PrometheusBuilder::install_recorder)
    {
        Ok(Ok(handle)) => Some(handle),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics recorder not installed");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics buckets refused");
            None
        }
    };
    tokio::spawn(async move {
        let Some(handle) = handle else { return };
        let router = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || render(app.clone(), handle.clone())),
        );
        match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => {
                tracing::info!(%listen, "metrics served at /metrics");
                if let Err(e) = axum::serve(listener, router).await {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            }
            Err(e) => tracing::error!(%listen, error = %e, "cannot listen for metrics"),
        }
    })
}

/// The gauges that describe state are read when scraped, then everything is rendered.
async fn render(app: App, handle: PrometheusHandle) -> String {
    gauge!("mxidp_introspection_cache_entries").set(app.cache.len() as f64);
    gauge!("mxidp_introspection_cache_complete").set(f64::from(u8::from(app.cache.is_complete())));
    let now = crate::ids::now_unix();
    match app.store.outbox(now).await {
        Ok((depth, oldest)) => {
            gauge!("mxidp_events_outbox_depth").set(depth as f64);
            let age = oldest.map_or(0, |queued| (now - queued).max(0));
            gauge!("mxidp_events_outbox_oldest_age_seconds").set(age as f64);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot read the event outbox"),
    }
    handle.run_upkeep();
    handle.render()
}

/// One introspection answer: `kind` is `own` (mxidp's tokens) or `jwt` (the shim), `outcome`
/// `active`, `inactive` or `error`.
pub fn introspection(kind: &'static str, outcome: &'static str, started: Instant) {
    counter!("mxidp_introspection_requests_total", "kind" => kind, "outcome" => outcome)
        .increment(1);
    histogram!("mxidp_introspection_duration_seconds", "kind" => kind)
        .record(started.elapsed().as_secs_f64());
}

/// A sign-in's end: `completed` (the client got its tokens), `denied` (the user said no at the
/// consent page), `refused` (policy), `failed` (the IdP or the homeserver).
pub fn signin(outcome: &'static str) {
    counter!("mxidp_signins_total", "outcome" => outcome).increment(1);
}

/// A token endpoint answer, by grant type (`authorization_code`, `refresh_token`, `other`).
pub fn token_grant(grant_type: &'static str, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    counter!("mxidp_token_grants_total", "grant_type" => grant_type, "outcome" => outcome)
        .increment(1);
}

/// An IdP event stored (`duplicate: false`) or dropped as a duplicate.
pub fn event_received(source: &str, kind: &'static str, duplicate: bool) {
    let name = if duplicate {
        "mxidp_events_duplicates_total"
    } else {
        "mxidp_events_received_total"
    };
    counter!(name, "source" => source.to_owned(), "kind" => kind).increment(1);
}

/// An event attempt's outcome: `applied`, `ignored`, `failed` (will retry) or `dead`.
pub fn event_outcome(kind: &'static str, outcome: &'static str) {
    counter!("mxidp_events_processed_total", "kind" => kind, "outcome" => outcome).increment(1);
}

/// A call to Synapse's `/_synapse/mas/*` (`ok`: an answer below 500).
pub fn homeserver_call(call: &'static str, started: Instant, ok: bool) {
    histogram!("mxidp_homeserver_request_duration_seconds", "call" => call)
        .record(started.elapsed().as_secs_f64());
    if !ok {
        counter!("mxidp_homeserver_errors_total", "call" => call).increment(1);
    }
}

/// A call to the IdP (`ok`: an answer below 500).
pub fn upstream_call(call: &'static str, started: Instant, ok: bool) {
    histogram!("mxidp_idp_request_duration_seconds", "call" => call)
        .record(started.elapsed().as_secs_f64());
    if !ok {
        counter!("mxidp_idp_errors_total", "call" => call).increment(1);
    }
}

/// One reconciliation round and the events it raised.
pub fn reconciliation_round(users: u32, errors: u32) {
    counter!("mxidp_reconciliation_rounds_total").increment(1);
    counter!("mxidp_reconciliation_events_total").increment(u64::from(users));
    counter!("mxidp_reconciliation_errors_total").increment(u64::from(errors));
}

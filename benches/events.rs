//! IdP-events benchmark (a load generator, not criterion), with real Synapse as the sink.
//!
//! Starts the end-to-end stack of `tests/support` (oidc-provider, Synapse 1.163.2 from the
//! repository's `.venv`, mxidp in this process with its production wiring and event worker) and
//! a `TestIdp` as a Shared Signals transmitter, then measures:
//!
//! 1. **Acknowledgement latency**: `BENCH_EVENTS` (default 10,000) distinct SETs (RS256, CAEP
//!    `session-revoked`, each for its own subject that has no identity in mxidp), POSTed to
//!    `/upstream/ssf` over `BENCH_CONCURRENCY` (default `1,32`: one run per value) keep-alive
//!    HTTP/1.1 connections. Each 202 means: signature and claims verified, event stored durably
//!    in SQLite, audited. The worker, running meanwhile, ignores them (unknown subject) without
//!    calling Synapse.
//! 2. **Events applied per second**: `BENCH_SESSIONS` (default 2,000) sessions over
//!    `BENCH_USERS` (default 20) users, each with its device in Synapse, then as many
//!    `SessionEnded` events accepted in-process (`app.events.accept`, as the back-channel logout
//!    receiver does after verifying a logout token); timed from the first accept until the last
//!    event is `applied`, each application being a `sync_devices` call to Synapse.
//!
//! `cargo bench --bench events`; see BENCHMARKS.md. Needs `.venv` and `tests/idp/node_modules`
//! like the end-to-end tests (`.ci/run` installs them).

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{header, Request, StatusCode};
use common::{cpu_seconds, env_or, Latencies};
use http_body_util::{BodyExt, Full};
use mxidp_core::cache::ActiveToken;
use mxidp_core::events::{Acceptance, EventState, IdpEvent, ReceivedEvent};
use mxidp_core::homeserver::ProvisionRequest;
use mxidp_core::ids::{now_unix, DeviceId, Localpart, TokenHash};
use mxidp_core::store::{Session, SessionState, TokenKind, TokenRecord};
use mxidp_core::upstream::test_idp::TestIdp;
use serde_json::json;
use support::stack::Stack;

const SSF_PATH: &str = "/upstream/ssf";
const AUDIENCE: &str = "https://mxidp.bench/ssf";
const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
/// SETs sent (one connection, one at a time) before each measured run: JWKS fetch, pool, code.
const WARM_UP_EVENTS: usize = 100;
/// Upper bound on any wait for the worker.
const WAIT_LIMIT: Duration = Duration::from_secs(600);

/// `n` distinct SETs for subjects without an identity in mxidp (stored, then ignored).
fn mint_sets(idp: &TestIdp, run: &str, n: usize) -> Vec<String> {
    let header = json!({"alg": "RS256", "kid": "rsa-1", "typ": "secevent+jwt"});
    let iat = now_unix();
    (0..n)
        .map(|i| {
            let claims = json!({
                "iss": idp.issuer(),
                "jti": format!("bench-{run}-{i}"),
                "iat": iat,
                "aud": AUDIENCE,
                "events": {SESSION_REVOKED: {
                    "subject": {"format": "iss_sub", "iss": idp.issuer(), "sub": format!("nobody-{run}-{i}")},
                    "event_timestamp": iat,
                }},
            });
            idp.mint_id_token(header.clone(), claims)
        })
        .collect()
}

/// One transmitter connection: takes the next SET until none is left; latency per 202.
async fn transmitter(
    addr: SocketAddr,
    sets: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
) -> Vec<Duration> {
    let (mut sender, conn) = common::connect(addr).await;
    let mut latencies = Vec::new();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(set) = sets.get(i) else { break };
        let request = Request::post(SSF_PATH)
            .header(header::HOST, addr.to_string())
            .header(header::CONTENT_TYPE, "application/secevent+jwt")
            .body(Full::new(Bytes::from(set.clone())))
            .expect("request");
        let started = Instant::now();
        let response = sender.send_request(request).await.expect("send");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let elapsed = started.elapsed();
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "{}",
            String::from_utf8_lossy(&body)
        );
        latencies.push(elapsed);
    }
    drop(sender);
    let _ = conn.await;
    latencies
}

/// POSTs every SET over `concurrency` connections; returns the latencies (summary and
/// histogram) and the wall time.
async fn send_all(
    addr: SocketAddr,
    sets: Vec<String>,
    concurrency: usize,
) -> (Latencies, String, f64) {
    let sets = Arc::new(sets);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(transmitter(addr, sets.clone(), next.clone())))
        .collect();
    let mut all = Vec::with_capacity(sets.len());
    for t in tasks {
        all.extend(t.await.expect("transmitter task"));
    }
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(all.len(), sets.len(), "every SET answered");
    let histogram = histogram(&all);
    (Latencies::of(all), histogram, seconds)
}

/// Waits until the worker has nothing left to do (no pending or failed event).
async fn drained(app: &mxidp_core::app::App) -> Duration {
    let started = Instant::now();
    loop {
        if app
            .store
            .due_events(i64::MAX, 1)
            .await
            .expect("due events")
            .is_empty()
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < WAIT_LIMIT,
            "the worker did not drain within {WAIT_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The audit records written after `after_seq`, counted by action; and the last `seq`.
async fn audit_since(app: &mxidp_core::app::App, after_seq: i64) -> (i64, String) {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    let mut last = after_seq;
    loop {
        let page = app
            .store
            .audit_records(last, None, 10_000)
            .await
            .expect("audit records");
        let Some(end) = page.last() else { break };
        last = end.seq;
        for record in &page {
            *counts.entry(record.action.clone()).or_default() += 1;
        }
    }
    let text = counts
        .iter()
        .map(|(action, n)| format!("{n} × {action}"))
        .collect::<Vec<_>>()
        .join(", ");
    (last, text)
}

fn mas_call_counts(calls: &[String]) -> String {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for line in calls {
        let name = line
            .split_whitespace()
            .nth(1)
            .and_then(|path| path.strip_prefix("/_synapse/mas/"))
            .map(|p| p.split('?').next().unwrap_or(p))
            .unwrap_or("?");
        *counts.entry(name).or_default() += 1;
    }
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(name, n)| format!("{n} × {name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

struct AckRun {
    concurrency: usize,
    events: usize,
    seconds: f64,
    latencies: Latencies,
    drain: Duration,
    synapse_calls: String,
    audit: String,
    histogram: String,
}

/// How many latencies fall in each bucket, as text.
fn histogram(latencies: &[Duration]) -> String {
    const BOUNDS_MS: [f64; 7] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0];
    let mut counts = [0usize; BOUNDS_MS.len() + 1];
    for l in latencies {
        let ms = l.as_secs_f64() * 1e3;
        let bucket = BOUNDS_MS
            .iter()
            .position(|&b| ms < b)
            .unwrap_or(BOUNDS_MS.len());
        counts[bucket] += 1;
    }
    let mut parts = Vec::new();
    let mut low = 0.0;
    for (i, n) in counts.iter().enumerate() {
        let label = match BOUNDS_MS.get(i) {
            Some(high) => format!("{low}–{high} ms"),
            None => format!("≥ {low} ms"),
        };
        parts.push(format!("{label}: {n}"));
        low = BOUNDS_MS.get(i).copied().unwrap_or(low);
    }
    parts.join(", ")
}

/// Creates `sessions` sessions spread over `users` users: the user and each device in Synapse,
/// the session (with an access token, also in the introspection cache) in mxidp. Returns the
/// access tokens, session `i` being user `i % users`'s.
async fn create_sessions(stack: &Stack, sessions: usize, users: usize) -> Vec<String> {
    let app = stack.app();
    let now = now_unix();
    let started = Instant::now();
    for u in 0..users {
        let localpart = Localpart::parse(&format!("bench{u}")).expect("localpart");
        app.homeserver
            .provision_user(&ProvisionRequest::new(localpart))
            .await
            .expect("provision_user");
    }
    let mut tokens = Vec::with_capacity(sessions);
    let step = (sessions / 10).max(1);
    for i in 0..sessions {
        let u = i % users;
        let localpart = Localpart::parse(&format!("bench{u}")).expect("localpart");
        let device = DeviceId::parse(&format!("BENCHDEV{i:06}")).expect("device id");
        app.homeserver
            .upsert_device(&localpart, &device, None)
            .await
            .expect("upsert_device");
        let session = Session {
            id: format!("bench-{i}").into(),
            provider: app.mapping.upstream_id.clone(),
            subject: format!("sub-bench{u}"),
            localpart,
            device_id: device,
            client_id: "bench-client".into(),
            idp_sid: Some(format!("sid-{i}")),
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
            .expect("add_session");
        app.cache
            .insert(record.hash, ActiveToken::new(&record, &session));
        tokens.push(token);
        if (i + 1) % step == 0 || i + 1 == sessions {
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "  created {:>6}/{sessions} sessions with devices  {secs:6.1} s  ({:.0}/s)",
                i + 1,
                (i + 1) as f64 / secs
            );
        }
    }
    tokens
}

#[tokio::main]
async fn main() {
    let smoke = common::smoke();
    let events: usize = env_or("BENCH_EVENTS", if smoke { 200 } else { 10_000 });
    let concurrencies: Vec<usize> = env_or::<String>("BENCH_CONCURRENCY", "1,32".into())
        .split(',')
        .map(|c| c.trim().parse().expect("BENCH_CONCURRENCY: numbers"))
        .collect();
    let sessions: usize = env_or("BENCH_SESSIONS", if smoke { 100 } else { 2_000 });
    let users: usize = env_or("BENCH_USERS", if smoke { 4 } else { 20 });
    assert!(
        events > 0 && sessions > 0 && users > 0 && concurrencies.iter().all(|&c| c > 0),
        "nothing to do"
    );

    println!(
        "mxidp IdP-events benchmark: {events} SETs per acknowledgement run at concurrency {concurrencies:?}; \
         {sessions} sessions over {users} users applied through Synapse; {} tokio worker threads{}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        if smoke { " (smoke test: the numbers mean nothing)" } else { "" },
    );

    // The transmitter, then the stack with Shared Signals configured to trust it.
    let transmitter_idp = TestIdp::start().await;
    let extra = format!(
        "[events]\nretry_initial_seconds = 1\nretry_max_seconds = 2\nmax_age_seconds = 3600\n\
         [events.ssf]\nissuer = \"{}\"\njwks_uri = \"{}\"\naudience = \"{AUDIENCE}\"\n",
        transmitter_idp.issuer(),
        transmitter_idp.jwks_uri(),
    );
    eprintln!("starting oidc-provider, Synapse and mxidp");
    let stack = Stack::start_with(vec![], false, &extra).await;
    let app = stack.app();
    let mxidp: SocketAddr = format!(
        "{}:{}",
        stack.mxidp.host_str().expect("host"),
        stack.mxidp.port().expect("port")
    )
    .parse()
    .expect("mxidp address");
    let synapse_pid = stack.synapse.pid();
    let own_pid = std::process::id();

    // 1. Acknowledgement latency with the durable write.
    let mut ack_runs = Vec::new();
    for (run, &concurrency) in concurrencies.iter().enumerate() {
        let minted = Instant::now();
        let warm_up = mint_sets(&transmitter_idp, &format!("warm{run}"), WARM_UP_EVENTS);
        let sets = mint_sets(&transmitter_idp, &format!("run{run}"), events);
        eprintln!(
            "minted {} SETs in {:.1} s",
            WARM_UP_EVENTS + events,
            minted.elapsed().as_secs_f64()
        );
        send_all(mxidp, warm_up, 1).await;
        drained(app).await;
        let (audit_before, _) = audit_since(app, 0).await;
        let calls_before = stack.proxy.mas_calls().len();
        eprintln!("acknowledgement run: {events} SETs over {concurrency} connection(s)");
        let (latencies, histogram, seconds) = send_all(mxidp, sets, concurrency).await;
        let drain = drained(app).await;
        let (_, audit) = audit_since(app, audit_before).await;
        ack_runs.push(AckRun {
            concurrency,
            events,
            seconds,
            latencies,
            drain,
            synapse_calls: mas_call_counts(&stack.proxy.mas_calls()[calls_before..]),
            audit,
            histogram,
        });
    }
    let ignored = app
        .store
        .list_events(Some(EventState::Ignored), i64::MAX)
        .await
        .expect("list events")
        .len();
    let expected_ignored = concurrencies.len() * (WARM_UP_EVENTS + events);
    assert_eq!(ignored, expected_ignored, "every SET stored, then ignored");

    // 2. Events applied per second, end to end.
    eprintln!("creating {sessions} sessions over {users} users (devices in Synapse)");
    let create_started = Instant::now();
    let tokens = create_sessions(&stack, sessions, users).await;
    let create_secs = create_started.elapsed().as_secs_f64();
    assert_eq!(
        stack.whoami(&tokens[0]).await.status(),
        reqwest::StatusCode::OK
    );

    let (audit_before, _) = audit_since(app, 0).await;
    let calls_before = stack.proxy.mas_calls().len();
    let cpu_before = (cpu_seconds(synapse_pid), cpu_seconds(own_pid));
    let now = now_unix();
    let started = Instant::now();
    let mut last_id = 0;
    for i in 0..sessions {
        let received = ReceivedEvent {
            dedupe_key: format!("bench-logout-{i}"),
            occurred_at: now,
            event: IdpEvent::SessionEnded {
                sid: format!("sid-{i}"),
            },
        };
        match app
            .events
            .accept("backchannel_logout", received)
            .await
            .expect("accept")
        {
            Acceptance::Stored(id) => last_id = id,
            Acceptance::Duplicate => panic!("event {i} is a duplicate"),
        }
    }
    let accepted_secs = started.elapsed().as_secs_f64();
    // Events are applied in (occurred_at, id) order, all with the same occurred_at: the last one
    // is applied last unless something failed. Poll it cheaply, then check them all.
    loop {
        let last = app
            .store
            .event(last_id)
            .await
            .expect("event")
            .expect("stored");
        if last.state == EventState::Applied {
            let applied = app
                .store
                .list_events(Some(EventState::Applied), i64::MAX)
                .await
                .expect("list events")
                .len();
            if applied == sessions {
                break;
            }
        }
        assert!(
            started.elapsed() < WAIT_LIMIT,
            "not all applied within {WAIT_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let apply_secs = started.elapsed().as_secs_f64();
    let cpu_after = (cpu_seconds(synapse_pid), cpu_seconds(own_pid));
    let apply_calls = stack.proxy.mas_calls()[calls_before..].to_vec();
    let (_, apply_audit) = audit_since(app, audit_before).await;
    let syncs = apply_calls
        .iter()
        .filter(|l| l.contains("/_synapse/mas/sync_devices"))
        .count();
    assert_eq!(syncs, sessions, "one device sync per event");
    for token in [&tokens[0], &tokens[sessions - 1]] {
        assert_eq!(
            stack.whoami(token).await.status(),
            reqwest::StatusCode::UNAUTHORIZED,
            "{token} still works"
        );
    }
    let failed_attempts = app
        .store
        .list_events(Some(EventState::Applied), i64::MAX)
        .await
        .expect("list events")
        .iter()
        .filter(|e| e.attempts > 1)
        .count();

    println!();
    println!("| acknowledgement (POST /upstream/ssf → 202) | SETs | connections | req/s | p50 | p99 | max | worker drained after |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &ack_runs {
        println!(
            "| verify + durable insert + audit | {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.1} ms | {:.2} s |",
            r.events,
            r.concurrency,
            r.events as f64 / r.seconds,
            r.latencies.p50.as_secs_f64() * 1e3,
            r.latencies.p99.as_secs_f64() * 1e3,
            r.latencies.max.as_secs_f64() * 1e3,
            r.drain.as_secs_f64(),
        );
    }
    println!();
    println!("| end to end (accept → applied in Synapse) | events | accepted in | all applied after | events applied/s |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| SessionEnded → sync_devices, {} device(s) per user | {sessions} | {accepted_secs:.2} s | {apply_secs:.2} s | {:.0} |",
        sessions.div_ceil(users),
        sessions as f64 / apply_secs,
    );
    println!();
    for r in &ack_runs {
        println!(
            "Acknowledgement run at concurrency {}: Synapse calls: {}; audit records (SETs and \
             the worker ignoring them): {}",
            r.concurrency, r.synapse_calls, r.audit
        );
        println!("  latencies: {}", r.histogram);
    }
    println!(
        "Synapse calls while applying: {} (events applied on a retry: {failed_attempts})",
        mas_call_counts(&apply_calls)
    );
    println!("Audit records while applying (accepts included): {apply_audit}");
    if let ((Some(s0), Some(m0)), (Some(s1), Some(m1))) = (cpu_before, cpu_after) {
        println!(
            "CPU while applying ({apply_secs:.1} s wall): Synapse {:.1} s ({:.0} % of one core), \
             this process (mxidp, worker, proxy) {:.1} s ({:.0} %)",
            s1 - s0,
            100.0 * (s1 - s0) / apply_secs,
            m1 - m0,
            100.0 * (m1 - m0) / apply_secs,
        );
    }
    println!(
        "Set-up: {sessions} sessions with devices created in {create_secs:.1} s ({:.0}/s)",
        sessions as f64 / create_secs
    );
}

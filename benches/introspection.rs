//! Introspection load benchmark (a load generator, not criterion).
//!
//! Fills a file-backed SQLite store with `BENCH_SESSIONS` (default 100,000) sessions, each with
//! one access token, serves mxidp's real router and a static axum handler on loopback, and
//! drives each with `BENCH_CONCURRENCY` (default 32) client tasks, one keep-alive HTTP/1.1
//! connection each, for `BENCH_SECONDS` (default 10) after a 2 s warm-up. Reports requests/s
//! and p50/p99 latency per scenario, and the ratio introspection / static handler.
//!
//! Everything runs in one process on one multi-threaded tokio runtime (one worker per core):
//! both servers and the client tasks share it, so the client's cost is in every figure alike.
//!
//! `cargo bench --bench introspection`; see BENCHMARKS.md.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{header, Request, StatusCode};
use common::{env_or, Latencies};
use http_body_util::{BodyExt, Full};
use mxidp_core::app::App;
use mxidp_core::config::Config;
use mxidp_core::homeserver::MemoryHomeserver;
use mxidp_core::ids::{now_unix, random_token, DeviceId, Localpart, TokenHash};
use mxidp_core::provider::GenericOidc;
use mxidp_core::store::{Session, SessionState, SqliteStore, Store, TokenKind, TokenRecord};
use rand::{Rng, SeedableRng};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const WARM_UP: Duration = Duration::from_secs(2);
const BATCH: usize = 10_000;

/// What the static handler answers: a fixed body of the size and shape of an active answer.
const STATIC_BODY: &str = r#"{"active":true,"scope":"urn:matrix:client:api:* urn:matrix:org.matrix.msc2967.client:api:* urn:matrix:client:device:BENCHDEVICE0 urn:matrix:org.matrix.msc2967.client:device:BENCHDEVICE0","username":"user0","sub":"subject-0","client_id":"bench-client","token_type":"access_token","iat":1700000000,"device_id":"BENCHDEVICE0","exp":1700003600,"expires_in":3600}"#;

fn config_toml(db_url: &str) -> String {
    format!(
        r#"
[http]
public_base = "https://auth.example.org/"
[database]
url = "{db_url}"
encryption_key = "0123456789abcdef0123456789abcdef"
[matrix]
homeserver = "example.org"
endpoint = "http://synapse:8008/"
secret = "{SECRET}"
[upstream]
issuer = "https://idp.example.org/realms/matrix"
client_id = "mxidp"
client_secret = "s3cret"
"#
    )
}

/// Which tokens a scenario presents.
#[derive(Clone)]
enum Tokens {
    /// None: the static handler ignores the body, but gets the same request.
    Fixed(Arc<String>),
    /// A random one of the stored tokens per request.
    Random(Arc<Vec<String>>),
    /// A fresh well-formed mxidp token per request that was never issued (always a cache miss,
    /// then a store miss while the cache is incomplete).
    Unknown,
    /// A token mxidp did not issue (an IdP's JWT, a typo): refused by its format alone.
    Foreign,
}

impl Tokens {
    fn pick(&self, rng: &mut impl Rng) -> String {
        match self {
            Tokens::Fixed(t) => t.as_str().to_owned(),
            Tokens::Random(all) => all[rng.gen_range(0..all.len())].clone(),
            Tokens::Unknown => new_token(),
            Tokens::Foreign => random_token(32),
        }
    }
}

struct Scenario {
    name: &'static str,
    addr: SocketAddr,
    path: &'static str,
    /// Tokens presented during the warm-up (not measured).
    warm_up: Tokens,
    /// Tokens presented during the measurement.
    measure: Tokens,
    /// A substring every measured answer must contain.
    expect: &'static str,
}

struct Outcome {
    name: &'static str,
    requests: usize,
    seconds: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Outcome {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// One client task: one keep-alive connection, requests back to back until `end`.
/// Returns the latencies of the requests completed inside the measurement window.
async fn client(
    addr: SocketAddr,
    path: &'static str,
    warm_up: Tokens,
    measure: Tokens,
    expect: &'static str,
    measure_from: Instant,
    end: Instant,
) -> Vec<Duration> {
    let (mut sender, conn) = common::connect(addr).await;
    let mut rng = rand::rngs::StdRng::from_entropy();
    let authorization = format!("Bearer {SECRET}");
    let mut latencies = Vec::with_capacity(1 << 14);
    loop {
        let started = Instant::now();
        if started >= end {
            break;
        }
        let measuring = started >= measure_from;
        let token = if measuring {
            measure.pick(&mut rng)
        } else {
            warm_up.pick(&mut rng)
        };
        let request = Request::post(path)
            .header(header::HOST, "127.0.0.1")
            .header(header::AUTHORIZATION, authorization.as_str())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(format!("token={token}"))))
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
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        if measuring {
            assert!(
                contains(&body, expect.as_bytes()),
                "expected {expect} in {}",
                String::from_utf8_lossy(&body)
            );
            latencies.push(elapsed);
        }
    }
    drop(sender);
    let _ = conn.await;
    latencies
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn run(scenario: &Scenario, concurrency: usize, seconds: Duration) -> Outcome {
    let measure_from = Instant::now() + WARM_UP;
    let end = measure_from + seconds;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            tokio::spawn(client(
                scenario.addr,
                scenario.path,
                scenario.warm_up.clone(),
                scenario.measure.clone(),
                scenario.expect,
                measure_from,
                end,
            ))
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    // Requests in flight at `end` finish a little after it; count the real window.
    let window = (Instant::now() - measure_from).as_secs_f64();
    let latencies = Latencies::of(all);
    Outcome {
        name: scenario.name,
        requests: latencies.count,
        seconds: window,
        p50: latencies.p50,
        p99: latencies.p99,
        max: latencies.max,
    }
}

/// A Matrix access token in mxidp's own format.
fn new_token() -> String {
    mxidp_core::tokens::issue(TokenKind::Access)
        .expose()
        .to_owned()
}

async fn fill(store: &SqliteStore, count: usize) -> Vec<String> {
    let now = now_unix();
    let started = Instant::now();
    let mut tokens = Vec::with_capacity(count);
    for batch in 0..count.div_ceil(BATCH) {
        for i in batch * BATCH..((batch + 1) * BATCH).min(count) {
            let token = new_token();
            let device = DeviceId::parse(&format!("BENCHDEV{i:08}")).expect("device id");
            let session = Session {
                id: format!("session-{i}").into(),
                provider: "generic".into(),
                subject: format!("subject-{i}"),
                localpart: Localpart::parse(&format!("user{i}")).expect("localpart"),
                device_id: device.clone(),
                client_id: "bench-client".into(),
                idp_sid: None,
                scope: format!("urn:matrix:client:api:* urn:matrix:client:device:{device}"),
                admin: false,
                state: SessionState::Active,
                sealed_refresh_token: None,
                sealed_access_token: None,
                created_at: now,
                ended_at: None,
                end_reason: None,
            };
            let record = TokenRecord {
                hash: TokenHash::of(&token),
                session_id: session.id.to_string(),
                kind: TokenKind::Access,
                expires_at: Some(now + 3600),
                issued_at: now,
                rotated_at: None,
            };
            store
                .add_session(&session, &[record])
                .await
                .expect("add_session");
            tokens.push(token);
        }
        let done = tokens.len();
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "  stored {done:>7}/{count} sessions  {secs:6.1} s  ({:.0} sessions/s)",
            done as f64 / secs
        );
    }
    tokens
}

async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    addr
}

/// `BENCH_ONLY=shim`: the static handler and the two shim scenarios, `BENCH_ROUNDS` (3) times
/// interleaved, with the median of each (machines shared with other work drift between runs).
async fn shim_only(smoke: bool, concurrency: usize, seconds: Duration) {
    let rounds: usize = env_or("BENCH_ROUNDS", if smoke { 1 } else { 3 });
    let pool: usize = if smoke { 50 } else { 1_000 };
    let (cached_app, _idp, jwts) = shim_app(pool, 10_000).await;
    let (first_app, _idp2, first_jwts) = shim_app(pool, 1).await;
    let shim = serve(mxidp_core::server::router(cached_app)).await;
    let first = serve(mxidp_core::server::router(first_app)).await;
    let static_addr = serve(axum::Router::new().route(
        "/",
        axum::routing::post(|_body: Bytes| async {
            ([(header::CONTENT_TYPE, "application/json")], STATIC_BODY)
        }),
    ))
    .await;
    let fixed = Tokens::Fixed(Arc::new("static".into()));
    let scenarios = [
        Scenario {
            name: "static axum handler",
            addr: static_addr,
            path: "/",
            warm_up: fixed.clone(),
            measure: fixed,
            expect: "\"active\":true",
        },
        Scenario {
            name: "JWT shim: cached verdict",
            addr: shim,
            path: "/oauth2/introspect",
            warm_up: jwts.clone(),
            measure: jwts,
            expect: "\"active\":true",
        },
        Scenario {
            name: "JWT shim: first sight (RS256 verified every request)",
            addr: first,
            path: "/oauth2/introspect",
            warm_up: first_jwts.clone(),
            measure: first_jwts,
            expect: "\"active\":true",
        },
    ];
    println!(
        "JWT shim benchmark: {rounds} interleaved rounds, {concurrency} connections, {:.1} s per \
         scenario after {} s warm-up",
        seconds.as_secs_f64(),
        WARM_UP.as_secs()
    );
    let mut outcomes = Vec::new();
    for round in 1..=rounds {
        for scenario in &scenarios {
            eprintln!("round {round}: {}", scenario.name);
            outcomes.push(run(scenario, concurrency, seconds).await);
        }
    }
    print_table(&outcomes);
    println!();
    let median = |name: &str| {
        let mut rps: Vec<f64> = outcomes
            .iter()
            .filter(|o| o.name == name)
            .map(Outcome::rps)
            .collect();
        rps.sort_by(|a, b| a.total_cmp(b));
        (rps[rps.len() / 2], rps[0], rps[rps.len() - 1])
    };
    let (ceiling, _, _) = median(scenarios[0].name);
    for scenario in &scenarios {
        let (m, min, max) = median(scenario.name);
        println!(
            "{:<55} median {m:>8.0} req/s (min {min:.0}, max {max:.0}), {:5.1} % of the static handler's median",
            scenario.name,
            100.0 * m / ceiling
        );
    }
}

/// An app with the JWT shim on, trusting a test IdP, with one service account `bench-bot`
/// provisioned, and `pool` distinct RS256 access tokens of that bot (minted up front: signing
/// is the IdP's cost, not mxidp's). `cache_entries` bounds the verdicts kept.
async fn shim_app(
    pool: usize,
    cache_entries: usize,
) -> (App, mxidp_core::upstream::test_idp::TestIdp, Tokens) {
    use mxidp_core::upstream::test_idp::{TestIdp, TestKey};
    let idp = TestIdp::start().await;
    let toml = format!(
        r#"
[http]
public_base = "https://auth.example.org/"
[database]
encryption_key = "0123456789abcdef0123456789abcdef"
[matrix]
homeserver = "example.org"
endpoint = "http://synapse:8008/"
secret = "{SECRET}"
[upstream]
issuer = "{issuer}"
client_id = "mxidp"
client_secret = "s3cret"
[jwt_shim]
enabled = true
cache_entries = {cache_entries}
[[jwt_shim.issuers]]
audiences = ["https://matrix.example.org/api"]
[[jwt_shim.issuers.service_accounts]]
client_id = "bench-bot"
localpart = "bench-bot"
"#,
        issuer = idp.issuer()
    );
    let config = Config::from_toml_str(&toml).expect("shim config");
    assert_eq!(config.check(), vec![], "shim config problems");
    let app: App = mxidp_core::server::assemble(
        &config,
        Arc::new(SqliteStore::in_memory().await.expect("store")),
        Arc::new(MemoryHomeserver::new("example.org")),
        Arc::new(GenericOidc),
    )
    .expect("assemble");
    app.upstream.set(idp.upstream().await);
    mxidp_core::jwt_shim::spawn_service_accounts(app.clone());
    let shim = app.jwt_shim.as_ref().expect("shim on");
    let deadline = Instant::now() + Duration::from_secs(10);
    while shim.accounts_ready() != (1, 1) || shim.issuers_ready(&app) != (1, 1) {
        assert!(
            Instant::now() < deadline,
            "the bench bot was not provisioned"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now = now_unix();
    let header = serde_json::json!({"alg": "RS256", "kid": TestKey::Rsa.kid(), "typ": "at+jwt"});
    let tokens = (0..pool)
        .map(|i| {
            idp.mint_id_token(
                header.clone(),
                serde_json::json!({
                    "iss": idp.issuer(), "aud": "https://matrix.example.org/api",
                    "sub": "bench-bot", "client_id": "bench-bot", "scope": "matrix",
                    "iat": now, "exp": now + 3_600, "jti": format!("bench-{i}"),
                }),
            )
        })
        .collect();
    (app, idp, Tokens::Random(Arc::new(tokens)))
}

fn print_table(outcomes: &[Outcome]) {
    println!();
    println!("| scenario | requests | req/s | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|---:|");
    for o in outcomes {
        println!(
            "| {} | {} | {:.0} | {:.0} µs | {:.0} µs | {:.1} ms |",
            o.name,
            o.requests,
            o.rps(),
            o.p50.as_secs_f64() * 1e6,
            o.p99.as_secs_f64() * 1e6,
            o.max.as_secs_f64() * 1e3,
        );
    }
}

#[tokio::main]
async fn main() {
    // `cargo test --benches` runs benches as a smoke test.
    let smoke = common::smoke();
    let sessions: usize = env_or("BENCH_SESSIONS", if smoke { 1_000 } else { 100_000 });
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 32);
    let seconds = Duration::from_secs_f64(env_or("BENCH_SECONDS", if smoke { 0.5 } else { 10.0 }));
    assert!(sessions > 0 && concurrency > 0, "nothing to do");

    if std::env::var("BENCH_ONLY").as_deref() == Ok("shim") {
        return shim_only(smoke, concurrency, seconds).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let db_url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let config_path = dir.path().join("mxidp.toml");
    std::fs::write(&config_path, config_toml(&db_url)).expect("write config");
    let config = Config::load(Some(&config_path)).expect("config");
    assert_eq!(config.check(), vec![], "config problems");
    let store = Arc::new(
        SqliteStore::open(&config.database.url)
            .await
            .expect("store"),
    );

    println!(
        "mxidp introspection benchmark: {sessions} sessions, {concurrency} connections, \
         {:.1} s per scenario after {} s warm-up, {} worker threads",
        seconds.as_secs_f64(),
        WARM_UP.as_secs(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    eprintln!("filling {db_url} ({sessions} × add_session, one transaction each)");
    let fill_started = Instant::now();
    let tokens = Arc::new(fill(&store, sessions).await);
    let fill_secs = fill_started.elapsed().as_secs_f64();

    let app: App = mxidp_core::server::assemble(
        &config,
        store,
        Arc::new(MemoryHomeserver::new("example.org")),
        Arc::new(GenericOidc),
    )
    .expect("assemble");
    let mxidp = serve(mxidp_core::server::router(app.clone())).await;
    let static_router = axum::Router::new().route(
        "/",
        axum::routing::post(|_body: Bytes| async {
            ([(header::CONTENT_TYPE, "application/json")], STATIC_BODY)
        }),
    );
    let static_addr = serve(static_router).await;

    let fixed = Tokens::Fixed(Arc::new(tokens[0].clone()));
    let random = Tokens::Random(tokens.clone());
    let mut outcomes = Vec::new();

    let static_scenario = Scenario {
        name: "static axum handler",
        addr: static_addr,
        path: "/",
        warm_up: fixed.clone(),
        measure: fixed.clone(),
        expect: "\"active\":true",
    };
    eprintln!("running: {}", static_scenario.name);
    outcomes.push(run(&static_scenario, concurrency, seconds).await);

    // Store fallback: the app was assembled without loading the cache, as when the cache has
    // overflowed (more active tokens than sessions.introspection_cache_entries). The warm-up
    // presents unknown tokens (connections, SQLite pool and code paths warm, the cache stays
    // empty); the measurement then presents random stored tokens, so the cache fills as it goes.
    assert_eq!(app.cache.len(), 0);
    assert!(!app.cache.is_complete());
    let cold = Scenario {
        name: "store fallback: first pass (cache cold)",
        addr: mxidp,
        path: "/oauth2/introspect",
        warm_up: Tokens::Unknown,
        measure: random.clone(),
        expect: "\"active\":true",
    };
    eprintln!("running: {}", cold.name);
    outcomes.push(run(&cold, concurrency, seconds).await);
    let cached_after_cold = app.cache.len();
    let unknown_fallback = Scenario {
        name: "store fallback: unknown token",
        addr: mxidp,
        path: "/oauth2/introspect",
        warm_up: Tokens::Unknown,
        measure: Tokens::Unknown,
        expect: "\"active\":false",
    };
    eprintln!("running: {}", unknown_fallback.name);
    outcomes.push(run(&unknown_fallback, concurrency, seconds).await);

    // Production: at start mxidp loads every active access token, and the cache is complete.
    let load_started = Instant::now();
    let loaded = mxidp_core::server::warm_introspection_cache(&app)
        .await
        .expect("load the cache");
    let load_secs = load_started.elapsed().as_secs_f64();
    assert_eq!(loaded, sessions);
    assert!(app.cache.is_complete());
    let warm = Scenario {
        name: "introspection (cache loaded at start)",
        addr: mxidp,
        path: "/oauth2/introspect",
        warm_up: random.clone(),
        measure: random.clone(),
        expect: "\"active\":true",
    };
    eprintln!("running: {}", warm.name);
    outcomes.push(run(&warm, concurrency, seconds).await);

    let unknown = Scenario {
        name: "introspection, unknown token",
        addr: mxidp,
        path: "/oauth2/introspect",
        warm_up: Tokens::Unknown,
        measure: Tokens::Unknown,
        expect: "\"active\":false",
    };
    eprintln!("running: {}", unknown.name);
    outcomes.push(run(&unknown, concurrency, seconds).await);

    let foreign = Scenario {
        name: "introspection, foreign token (not mxidp's format)",
        addr: mxidp,
        path: "/oauth2/introspect",
        warm_up: Tokens::Foreign,
        measure: Tokens::Foreign,
        expect: "\"active\":false",
    };
    eprintln!("running: {}", foreign.name);
    outcomes.push(run(&foreign, concurrency, seconds).await);

    // The JWT shim (docs/jwt-shim.md): a bot's IdP-issued RS256 JWTs. Cached: a pool of tokens
    // whose verdicts are kept after their first sight (the warm-up). First sight: the same kind
    // of pool on an app that keeps one verdict only, so every request verifies the signature
    // and the claims, maps the client and writes the first-use audit record.
    let pool: usize = if smoke { 50 } else { 1_000 };
    let (cached_app, idp, jwts) = shim_app(pool, 10_000).await;
    let shim = serve(mxidp_core::server::router(cached_app.clone())).await;
    let (first_sight_app, _idp2, first_sight_jwts) = shim_app(pool, 1).await;
    let first_sight = serve(mxidp_core::server::router(first_sight_app.clone())).await;
    let shim_cached = Scenario {
        name: "JWT shim: cached verdict",
        addr: shim,
        path: "/oauth2/introspect",
        warm_up: jwts.clone(),
        measure: jwts,
        expect: "\"active\":true",
    };
    eprintln!("running: {}", shim_cached.name);
    outcomes.push(run(&shim_cached, concurrency, seconds).await);
    let shim_first = Scenario {
        name: "JWT shim: first sight (RS256 verified every request)",
        addr: first_sight,
        path: "/oauth2/introspect",
        warm_up: first_sight_jwts.clone(),
        measure: first_sight_jwts,
        expect: "\"active\":true",
    };
    eprintln!("running: {}", shim_first.name);
    outcomes.push(run(&shim_first, concurrency, seconds).await);
    drop(idp);

    // The ceiling again, to see how much the machine drifted during the run.
    let static_again = Scenario {
        name: "static axum handler (again, last)",
        ..static_scenario
    };
    eprintln!("running: {}", static_again.name);
    outcomes.push(run(&static_again, concurrency, seconds).await);

    print_table(&outcomes);
    println!();
    println!(
        "store fill: {sessions} sessions in {fill_secs:.1} s ({:.0}/s); cache entries after the \
         cold pass: {cached_after_cold} of {sessions} ({:.0} %); cache load at start: {load_secs:.2} s",
        sessions as f64 / fill_secs,
        100.0 * cached_after_cold as f64 / sessions as f64,
    );
    let last = outcomes.len() - 1;
    let ceiling = (outcomes[0].rps() + outcomes[last].rps()) / 2.0;
    for o in &outcomes[1..last] {
        println!(
            "{:<42} {:5.1} % of the static handler (mean of its two runs)",
            o.name,
            100.0 * o.rps() / ceiling
        );
    }
}

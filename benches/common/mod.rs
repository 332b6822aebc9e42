//! Helpers shared by the load generators in `benches/` (each uses a subset).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// `cargo bench` passes `--bench`; without it (`cargo test --benches`) a bench is a smoke test
/// whose numbers mean nothing.
pub fn smoke() -> bool {
    std::env::args().any(|a| a == "--test") || !std::env::args().any(|a| a == "--bench")
}

/// The environment variable parsed, or `default` when unset; panics on a bad value.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

/// One keep-alive HTTP/1.1 connection (hyper's low-level client, `TCP_NODELAY`); the
/// connection task runs until the returned sender is dropped.
pub async fn connect(addr: SocketAddr) -> (SendRequest<Full<Bytes>>, tokio::task::JoinHandle<()>) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, conn)
}

/// Percentiles of a set of latencies.
pub struct Latencies {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Latencies {
    /// Panics on an empty set.
    pub fn of(mut all: Vec<Duration>) -> Self {
        assert!(!all.is_empty(), "at least one request");
        all.sort_unstable();
        let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
        Latencies {
            count: all.len(),
            p50: pct(0.50),
            p99: pct(0.99),
            max: *all.last().expect("not empty"),
        }
    }
}

/// CPU time (user + system, all threads) a process has used so far, from `/proc/<pid>/stat`;
/// `None` where that cannot be read.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its ')' are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state (field 3).
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

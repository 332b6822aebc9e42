//! The README's first command, `deploy/quickstart/run`, end to end on this machine: it starts a
//! local OpenID Provider, Synapse and mxidp, signs the demo user in as a Matrix client would
//! (reaching Synapse's whoami), waits, and on Ctrl-C (SIGINT) stops everything it started.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

fn port_is_free(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_err()
}

#[test]
fn the_quickstart_signs_the_demo_user_in_and_ctrl_c_stops_everything() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [
        support::free_port(),
        support::free_port(),
        support::free_port(),
    ];
    let mut child = Command::new(support::repo_root().join("deploy/quickstart/run"))
        .env("QUICKSTART_DIR", dir.path())
        .env("QUICKSTART_IDP_PORT", ports[0].to_string())
        .env("QUICKSTART_SYNAPSE_PORT", ports[1].to_string())
        .env("QUICKSTART_MXIDP_PORT", ports[2].to_string())
        .env("MXIDP_BIN", env!("CARGO_BIN_EXE_mxidp"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run deploy/quickstart/run");
    // Read in a thread to the end, as a terminal would: the script prints while it stops too.
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    while let Ok(line) = received.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let done = line.starts_with("Ctrl-C stops everything");
        seen.push(line);
        if done {
            break;
        }
    }
    let output = seen.join("\n");
    assert!(
        output.contains("signed in as @demo:localhost"),
        "the demo user was not signed in:\n{output}\n--- stderr: see {}/logs",
        dir.path().display()
    );
    assert!(output.contains("[quickstart"), "a progress line per step");
    for port in ports {
        assert!(!port_is_free(port), "port {port} should be serving");
    }

    // Ctrl-C: the script stops the three servers and exits.
    let pid = child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the quickstart did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        status.code(),
        Some(130),
        "exit status of an interrupted run"
    );
    let rest: Vec<String> = received.iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("stopping (3 processes)")),
        "{rest:?}"
    );
    for port in ports {
        let free_by = Instant::now() + Duration::from_secs(10);
        while !port_is_free(port) {
            assert!(
                Instant::now() < free_by,
                "port {port} still served after Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

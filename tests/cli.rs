//! The `mxidp` binary as an admin uses it: `config check` and `serve` on the example config.

use std::process::{Command, Stdio};
use std::time::Duration;

fn mxidp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mxidp"))
}

fn example_config() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/mxidp.example.toml")
}

#[test]
fn config_check_accepts_the_example_config() {
    let out = mxidp()
        .args(["config", "check", "--config"])
        .arg(example_config())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "configuration OK"
    );
}

#[test]
fn config_check_builds_the_keycloak_adapter_and_names_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keycloak.toml");
    let secret = dir.path().join("webhook-secret");
    std::fs::write(&secret, "phase-two-webhook-secret-0123456789\n").unwrap();
    let config = std::fs::read_to_string(example_config())
        .unwrap()
        .replace("provider = \"generic\"", "provider = \"keycloak\"");
    std::fs::write(
        &path,
        format!(
            "{config}\n[adapters.keycloak]\nwebhook_secret_file = {:?}\n",
            secret.display().to_string()
        ),
    )
    .unwrap();
    let out = mxidp()
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "configuration OK"
    );
    // Half of a credential pair, and an admin API on an issuer that is not a Keycloak realm.
    let out = mxidp()
        .args(["config", "check", "--config"])
        .arg(&path)
        .env("MXIDP__ADAPTERS__KEYCLOAK__WEBHOOK_USERNAME", "keycloak")
        .env("MXIDP__ADAPTERS__KEYCLOAK__ADMIN_CLIENT_ID", "mxidp-admin")
        .env(
            "MXIDP__ADAPTERS__KEYCLOAK__ADMIN_CLIENT_SECRET",
            "admin-secret-value",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for key in ["adapters.keycloak.webhook_username", "upstream.issuer"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("{key}: "))),
            "{key} missing in:\n{stdout}"
        );
    }
    assert!(!stdout.contains("admin-secret-value"));
}

#[test]
fn config_check_builds_the_auth0_adapter_and_requires_its_audience() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth0.toml");
    let config = std::fs::read_to_string(example_config())
        .unwrap()
        .replace("provider = \"generic\"", "provider = \"auth0\"");
    std::fs::write(&path, &config).unwrap();
    let check = |extra: &[(&str, &str)]| {
        let mut command = mxidp();
        command.args(["config", "check", "--config"]).arg(&path);
        for (k, v) in extra {
            command.env(k, v);
        }
        command.output().unwrap()
    };
    // No audience: Auth0 would issue access tokens mxidp cannot check.
    let out = check(&[]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("adapters.auth0.audience: ")),
        "{stdout}"
    );
    let audience = (
        "MXIDP__ADAPTERS__AUTH0__AUDIENCE",
        "https://matrix.example.org/api",
    );
    let out = check(&[audience]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "configuration OK"
    );
    // Half of the Management API's credentials; the secret is never printed.
    let out = check(&[
        audience,
        (
            "MXIDP__ADAPTERS__AUTH0__MANAGEMENT_CLIENT_SECRET",
            "m2m-secret-value",
        ),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("adapters.auth0.management_client_id: ")),
        "{stdout}"
    );
    assert!(!stdout.contains("m2m-secret-value"));
    // An issuer with a path is not an Auth0 tenant.
    std::fs::write(
        &path,
        config.replace(
            "issuer = \"http://127.0.0.1:9000/\"",
            "issuer = \"http://127.0.0.1:9000/realms/x\"",
        ),
    )
    .unwrap();
    let out = check(&[audience]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("upstream.issuer: ")),
        "{stdout}"
    );
}

#[test]
fn config_check_lists_every_problem_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let bad = std::fs::read_to_string(example_config()).unwrap().replace(
        "public_base = \"http://127.0.0.1:8080/\"",
        "public_base = \"http://auth.example.org\"",
    );
    std::fs::write(&path, bad).unwrap();
    let out = mxidp()
        .args(["config", "check", "--config"])
        .arg(&path)
        .env("MXIDP__MATRIX__SECRET", "too-short")
        .env("MXIDP__UPSTREAM__PROVIDER", "nonesuch")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for key in ["http.public_base", "matrix.secret", "upstream.provider"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("{key}: "))),
            "{key} missing in:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("too-short"),
        "a secret must never be printed"
    );
}

#[test]
fn serve_starts_on_the_embedded_default_and_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = mxidp()
        .args(["serve", "--config"])
        .arg(example_config())
        .env("MXIDP__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "MXIDP__DATABASE__URL",
            format!("sqlite://{}", dir.path().join("mxidp.db").display()),
        )
        // An IdP that does not answer: mxidp must start anyway and say it is not ready.
        .env("MXIDP__UPSTREAM__ISSUER", "http://127.0.0.1:9/")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (live, ready) = rt.block_on(async {
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        for _ in 0..100 {
            if let Ok(r) = http.get(format!("{base}/health/live")).send().await {
                let ready = http
                    .get(format!("{base}/health/ready"))
                    .send()
                    .await
                    .unwrap();
                return (r.status().as_u16(), ready.status().as_u16());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("mxidp did not start");
    });
    assert_eq!(live, 200);
    assert_eq!(ready, 503, "not ready while the IdP is unreachable");
    assert!(
        dir.path().join("mxidp.db").exists(),
        "the SQLite store was created"
    );

    // SIGTERM: graceful shutdown, exit 0.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

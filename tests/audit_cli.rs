//! `mxidp audit verify` and `mxidp audit export` as an operator runs them, on a database the
//! server wrote (records appended through mxidp-core) and then someone tampered with.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mxidp_core::audit::{AuditEntry, AuditStore};
use mxidp_core::store::SqliteStore;

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/mxidp.example.toml")
}

fn mxidp(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mxidp"))
        .args(["audit"])
        .args(args)
        .arg("--config")
        .arg(example_config())
        .env("MXIDP__DATABASE__URL", url)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn write_records(url: &str, n: i64) {
    let store = SqliteStore::open(url).await.unwrap();
    for i in 1..=n {
        let entry = AuditEntry {
            actor: "client:element".into(),
            action: "session.started".into(),
            target: format!("session-{i}"),
            source: "token".into(),
            outcome: "ok".into(),
            correlation_id: format!("session-{i}"),
            details: serde_json::json!({"localpart": "alice"}),
        };
        store.append_audit(&entry, 1_700_000_000 + i).await.unwrap();
    }
}

async fn tamper(url: &str, sql: &str) {
    use sqlx::ConnectOptions as _;
    let mut conn = url
        .parse::<sqlx::sqlite::SqliteConnectOptions>()
        .unwrap()
        .connect()
        .await
        .unwrap();
    for statement in [
        "DROP TRIGGER IF EXISTS audit_log_no_update",
        "DROP TRIGGER IF EXISTS audit_log_no_delete",
        sql,
    ] {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
}

#[tokio::test]
async fn verify_reports_ok_then_a_modified_and_a_deleted_record() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("mxidp.db").display());
    write_records(&url, 6).await;

    let out = mxidp(&url, &["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let line = stdout(&out);
    assert!(
        line.starts_with("audit log OK: 6 records, last seq 6, last hash "),
        "{line}"
    );

    tamper(
        &url,
        "UPDATE audit_log SET outcome = 'failed' WHERE seq = 3",
    )
    .await;
    let out = mxidp(&url, &["verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).lines().any(|l| l.starts_with("seq 3: ")),
        "{}",
        stdout(&out)
    );

    tamper(&url, "DELETE FROM audit_log WHERE seq = 5").await;
    let out = mxidp(&url, &["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.lines().any(|l| l.starts_with("seq 3: ")), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("seq 6: ") && l.contains("missing")),
        "{text}"
    );
}

#[tokio::test]
async fn export_writes_json_lines_since_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("mxidp.db").display());
    write_records(&url, 4).await;

    // Unix seconds, to stdout.
    let out = mxidp(&url, &["export", "--since", "1700000003"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["seq"], 3);
    assert_eq!(lines[0]["at_unix"], 1_700_000_003);
    assert_eq!(lines[0]["at"], "2023-11-14T22:13:23Z");
    assert_eq!(lines[1]["details"]["localpart"], "alice");

    // RFC 3339, to a file.
    let file = dir.path().join("audit.jsonl");
    let out = mxidp(
        &url,
        &[
            "export",
            "--since",
            "2023-11-14T22:13:22Z",
            "--output",
            file.to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 3);

    let out = mxidp(&url, &["export", "--since", "last tuesday"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--since"));
}

//! `mxidp doctor` against a real stack (oidc-provider, Synapse, mxidp): all checks pass, and a
//! wrong shared secret, a wrong client secret or Synapse down each fail with their own line and
//! exit status 1.

mod support;

use std::process::Command;

use support::stack::Stack;
use support::IdpAccount;

fn doctor(stack: &Stack, env: &[(&str, &str)]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_mxidp"))
        .args(["doctor", "--config"])
        .arg(stack.config_path())
        .envs(env.iter().copied())
        .output()
        .expect("run mxidp doctor");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

fn failing_line<'a>(text: &'a str, check: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(&format!("FAIL  {check}:")))
        .unwrap_or_else(|| panic!("no failing {check:?} line in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_on_a_healthy_stack_and_names_each_broken_part() {
    let stack = Stack::start(vec![IdpAccount::new("frank")]).await;
    // Synapse fetches mxidp's metadata when a client first asks for it.
    let (ok, text) = doctor(&stack, &[]);
    assert!(ok, "a healthy stack:\n{text}");
    for check in [
        "IdP discovery",
        "IdP signing keys",
        "IdP client credentials",
        "clock",
        "Synapse",
        "Synapse's auth metadata",
        "public base",
        "encryption key",
    ] {
        assert!(
            text.contains(&format!("ok    {check}:")),
            "no passing {check:?} line in:\n{text}"
        );
    }
    assert!(text.contains("redirect URI"), "{text}");

    let (ok, text) = doctor(
        &stack,
        &[(
            "MXIDP__MATRIX__SECRET",
            "a-wrong-shared-secret-0123456789abcdef0123",
        )],
    );
    assert!(!ok);
    assert!(
        failing_line(&text, "Synapse").contains("refuses the shared secret"),
        "{text}"
    );

    let (ok, text) = doctor(
        &stack,
        &[("MXIDP__UPSTREAM__CLIENT_SECRET", "not-the-client-secret")],
    );
    assert!(!ok);
    assert!(
        failing_line(&text, "IdP client credentials").contains("refuses client"),
        "{text}"
    );

    let (ok, text) = doctor(
        &stack,
        &[("MXIDP__MATRIX__ENDPOINT", "http://127.0.0.1:9/")],
    );
    assert!(!ok);
    assert!(
        failing_line(&text, "Synapse").contains("cannot reach Synapse"),
        "{text}"
    );
}

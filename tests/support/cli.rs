//! Runs an `mxidp` subcommand as an operator would: the example configuration, the database
//! given by `MXIDP__DATABASE__URL`.

use std::process::Command;

/// `mxidp <command> <args…> --config deploy/mxidp.example.toml`: (success, stdout, stderr).
pub fn mxidp(command: &str, db: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mxidp"))
        .arg(command)
        .args(args)
        .arg("--config")
        .arg(super::example_config())
        .env("MXIDP__DATABASE__URL", db)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

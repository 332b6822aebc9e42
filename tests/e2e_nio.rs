//! A real legacy client through the documented reverse-proxy routes: nginx (Debian package,
//! `/usr/sbin/nginx`) runs deploy/reverse-proxy/nginx-matrix.conf in front of Synapse 1.163.2
//! and mxidp; the test browser does the SSO redirect through nginx, the IdP and mxidp's consent;
//! matrix-nio (from PyPI, in `.venv`) signs in with the login token, checks whoami, sends a
//! message and logs out. `.ci/run` installs nginx and matrix-nio.

mod support;

use std::process::{Child, Command, Stdio};

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::browser::{self, LoginOptions};
use support::stack::Stack;
use support::{free_port, query_param, repo_root, IdpAccount};
use url::Url;

const NGINX: &str = "/usr/sbin/nginx";
const REDIRECT: &str = "http://nio-client.example.org/sso-done";

/// nginx with the documented Matrix-host configuration, its ports and upstreams replaced by the
/// test's (and without TLS). Stopped on drop.
struct Nginx {
    child: Child,
    url: Url,
    _dir: tempfile::TempDir,
}

impl Nginx {
    async fn start(synapse: &Url, mxidp: &Url) -> Nginx {
        let documented =
            std::fs::read_to_string(repo_root().join("deploy/reverse-proxy/nginx-matrix.conf"))
                .unwrap();
        let port = free_port();
        let host_port = |u: &Url| format!("127.0.0.1:{}", u.port().unwrap());
        let site = documented
            .replace("listen 443 ssl;", &format!("listen 127.0.0.1:{port};"))
            .replace("http2 on;", "")
            .replace(
                "server 127.0.0.1:8008;",
                &format!("server {};", host_port(synapse)),
            )
            .replace(
                "server 127.0.0.1:8080;",
                &format!("server {};", host_port(mxidp)),
            );
        assert!(site.contains(&format!("listen 127.0.0.1:{port};")));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        std::fs::write(path.join("site.conf"), site).unwrap();
        std::fs::write(
            path.join("nginx.conf"),
            format!(
                "pid {p}/nginx.pid;\nerror_log {p}/error.log info;\nevents {{}}\nhttp {{\n\
                 access_log {p}/access.log;\nclient_body_temp_path {p}/body;\nproxy_temp_path {p}/proxy;\n\
                 fastcgi_temp_path {p}/fastcgi;\nuwsgi_temp_path {p}/uwsgi;\nscgi_temp_path {p}/scgi;\n\
                 include {p}/site.conf;\n}}\n",
                p = path.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(NGINX)
            .arg("-p")
            .arg(path)
            .arg("-c")
            .arg(path.join("nginx.conf"))
            .args(["-g", "daemon off; master_process off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {NGINX} (installed by .ci/run): {e}"));
        let url: Url = format!("http://127.0.0.1:{port}/").parse().unwrap();
        for _ in 0..100 {
            if reqwest::get(url.join("_matrix/client/versions").unwrap())
                .await
                .is_ok()
            {
                return Nginx {
                    child,
                    url,
                    _dir: dir,
                };
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("nginx did not answer on {url}");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_signs_in_with_sso_through_nginx_chats_and_logs_out() {
    let stack = Stack::start(vec![IdpAccount::new("carol")]).await;
    let nginx = Nginx::start(&stack.synapse.base_url(), &stack.mxidp).await;

    // Through nginx: /versions is Synapse's, /login is mxidp's.
    let flows: Value = reqwest::get(nginx.url.join("_matrix/client/v3/login").unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        flows["flows"][0]["delegated_oidc_compatibility"], true,
        "{flows}"
    );

    // The SSO redirect, started at the Matrix host name as a legacy client starts it.
    let mut start = nginx
        .url
        .join("_matrix/client/v3/login/sso/redirect")
        .unwrap();
    start.query_pairs_mut().append_pair("redirectUrl", REDIRECT);
    let journey = browser::login(
        &browser::client(),
        start,
        LoginOptions::new("carol").redirect_uri(REDIRECT),
    )
    .await;
    let login_token = query_param(&journey.final_url, "loginToken").expect("a login token");

    // matrix-nio takes it from there.
    let output = tokio::process::Command::new(repo_root().join(".venv/bin/python"))
        .arg(repo_root().join("tests/compat/nio_client.py"))
        .arg(nginx.url.as_str().trim_end_matches('/'))
        .arg(&login_token)
        .output()
        .await
        .expect("run matrix-nio (installed in .venv by .ci/run)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let nio: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("matrix-nio printed no result ({e}); stderr:\n{stderr}"));
    assert_eq!(nio["user_id"], stack.user_id("carol"), "{nio}\n{stderr}");
    assert_eq!(nio["whoami_user_id"], stack.user_id("carol"), "{nio}");
    assert_eq!(nio["whoami_device_id"], nio["device_id"], "{nio}");
    assert!(
        nio["event_id"].as_str().is_some(),
        "a message was sent: {nio}"
    );
    assert_eq!(nio["reuse_error"], "M_FORBIDDEN", "{nio}");
    assert_eq!(nio["logged_out"], true, "{nio}");

    // The logout ended the session: mxidp calls the token inactive and Synapse, whose device
    // check goes through mxidp's event worker, refuses it within moments.
    let access = nio["access_token"].as_str().unwrap();
    assert_eq!(stack.introspect(access).await, json!({"active": false}));
    for _ in 0..100 {
        if stack.whoami(access).await.status() == StatusCode::UNAUTHORIZED {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("Synapse still accepts matrix-nio's token after /logout");
}

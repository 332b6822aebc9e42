//! `mxidp doctor --config F`: live checks of a deployment, each with one line that says what is
//! wrong and what to do. Exit status 0 only when every check passes. Nothing is changed: the
//! probes are a token request with a code that does not exist (the IdP checks the client's
//! credentials before the code), a Synapse lookup of a user that does not exist, and reads.

use std::time::{Duration, SystemTime};

use mxidp_core::config::Config;
use mxidp_core::homeserver::{HomeserverConnection, HomeserverError, SynapseConnection};
use mxidp_core::ids::Localpart;
use mxidp_core::upstream::{Upstream, UpstreamError};

/// One check's result, printed as it comes.
struct Report {
    failures: usize,
}

impl Report {
    fn ok(&mut self, check: &str, detail: impl std::fmt::Display) {
        println!("ok    {check}: {detail}");
    }

    fn fail(&mut self, check: &str, detail: impl std::fmt::Display) {
        self.failures += 1;
        println!("FAIL  {check}: {detail}");
    }

    fn info(&mut self, check: &str, detail: impl std::fmt::Display) {
        println!("info  {check}: {detail}");
    }
}

/// Runs every check; returns whether all passed.
pub async fn run(config: &Config) -> bool {
    let mut report = Report { failures: 0 };
    let problems = config.check();
    if !problems.is_empty() {
        for p in &problems {
            report.fail("configuration", p);
        }
        return false;
    }
    report.ok("configuration", "no problem found");
    let timeout = Duration::from_secs(config.upstream.timeout_seconds.min(10));
    let http = match mxidp_core::outbound::client(timeout) {
        Ok(http) => http,
        Err(e) => {
            report.fail("HTTP client", e);
            return false;
        }
    };

    idp(config, &http, &mut report).await;
    synapse(config, &http, &mut report).await;
    public_base(config, &http, &mut report).await;
    encryption_key(config, &mut report).await;

    let callback = config
        .http
        .public_base
        .join("upstream/callback")
        .expect("valid path");
    let logout = config
        .http
        .public_base
        .join("upstream/backchannel-logout")
        .expect("valid path");
    report.info(
        "register at the IdP",
        format!(
            "redirect URI {callback}; back-channel logout URI {logout} (with sessions required)"
        ),
    );
    if report.failures == 0 {
        println!("all checks passed");
        true
    } else {
        println!("{} check(s) failed", report.failures);
        false
    }
}

async fn idp(config: &Config, http: &reqwest::Client, report: &mut Report) {
    let settings = match mxidp_core::server::upstream_settings(config) {
        Ok(s) => s,
        Err(e) => return report.fail("IdP client settings", e),
    };
    let issuer = settings.issuer.clone();
    // The IdP's clock, from the discovery answer's Date header.
    // OpenID Connect Discovery §4: the issuer, without a trailing slash, then the well-known path.
    let discovery = format!(
        "{}/.well-known/openid-configuration",
        issuer.as_str().trim_end_matches('/')
    );
    match http.get(discovery.clone()).send().await {
        Ok(response) => {
            if let Some(date) = response
                .headers()
                .get(reqwest::header::DATE)
                .and_then(|d| d.to_str().ok())
                .and_then(httpdate)
            {
                let now = SystemTime::now();
                let skew = match now.duration_since(date) {
                    Ok(behind) => behind.as_secs() as i64,
                    Err(ahead) => -(ahead.duration().as_secs() as i64),
                };
                let leeway = config.upstream.leeway_seconds as i64;
                if skew.abs() > leeway {
                    report.fail(
                        "clock",
                        format!("this machine and the IdP differ by {skew} s, more than upstream.leeway_seconds ({leeway}): fix NTP on one of them"),
                    );
                } else {
                    report.ok("clock", format!("{skew} s from the IdP's clock"));
                }
            }
        }
        Err(e) => {
            return report.fail(
                "IdP discovery",
                format!(
                    "{discovery}: {e}: check upstream.issuer and that this machine reaches the IdP"
                ),
            )
        }
    }
    let upstream = match Upstream::discover(settings, http.clone()).await {
        Ok(u) => u,
        Err(e) => {
            return report.fail(
                "IdP discovery",
                format!("{e}: check upstream.issuer (it must equal the issuer the IdP names, trailing slash included)"),
            )
        }
    };
    report.ok(
        "IdP discovery",
        format!("issuer {}", upstream.metadata().issuer),
    );
    match upstream.jwks().load().await {
        Ok(()) => report.ok(
            "IdP signing keys",
            format!(
                "{} key(s) from {}",
                upstream.jwks().len(),
                upstream.metadata().jwks_uri
            ),
        ),
        Err(e) => report.fail("IdP signing keys", e),
    }
    // A code that cannot exist: a good client gets `invalid_grant`, a bad one `invalid_client`.
    let redirect = config
        .http
        .public_base
        .join("upstream/callback")
        .expect("valid path");
    match upstream
        .exchange_code("mxidp-doctor-probe-not-a-code", &redirect, "mxidp-doctor-probe-verifier-0000000000000000000000000")
        .await
    {
        Err(UpstreamError::InvalidGrant(_)) => report.ok(
            "IdP client credentials",
            format!("the token endpoint accepts client {}", config.upstream.client_id),
        ),
        Err(UpstreamError::OAuth { error, description }) if error == "invalid_client" || error == "unauthorized_client" => {
            report.fail(
                "IdP client credentials",
                format!("the IdP refuses client {} ({error}: {description}): check upstream.client_id, the client secret and upstream.auth_method", config.upstream.client_id),
            )
        }
        Err(UpstreamError::OAuth { error, description }) => report.ok(
            "IdP client credentials",
            format!("the token endpoint answered {error} ({description}) to a made-up code, not invalid_client"),
        ),
        Err(e) => report.fail("IdP client credentials", e),
        Ok(_) => report.fail(
            "IdP client credentials",
            "the IdP issued tokens for a made-up code: it is not checking codes",
        ),
    }
}

async fn synapse(config: &Config, http: &reqwest::Client, report: &mut Report) {
    let secret = match config.matrix_secret() {
        Ok(s) => s,
        Err(e) => return report.fail("Synapse shared secret", e),
    };
    let connection = SynapseConnection::new(
        config.matrix.endpoint.clone(),
        config.matrix.homeserver.clone(),
        secret,
        http.clone(),
    );
    let probe = Localpart::parse("mxidp-doctor-probe").expect("a valid localpart");
    match connection.query_user(&probe).await {
        Ok(_) => report.ok(
            "Synapse",
            format!("{} accepts the shared secret on /_synapse/mas/*", config.matrix.endpoint),
        ),
        Err(HomeserverError::Unauthorized) => {
            return report.fail(
                "Synapse",
                "Synapse refuses the shared secret: matrix.secret must be the same value as Synapse's matrix_authentication_service.secret (or secret_path)",
            )
        }
        Err(HomeserverError::Transport(e)) => {
            return report.fail(
                "Synapse",
                format!("cannot reach Synapse at matrix.endpoint: {e}: is it running, and is the address its client listener?"),
            )
        }
        Err(e) => {
            return report.fail(
                "Synapse",
                format!("{e}: is matrix_authentication_service enabled in Synapse (≥ 1.136)?"),
            )
        }
    }
    // Synapse hands clients the metadata it fetched from mxidp: the issuer must be ours.
    let url = config
        .matrix
        .endpoint
        .join("_matrix/client/v1/auth_metadata")
        .expect("valid path");
    let expected = config.http.public_base.as_str();
    match http.get(url.clone()).send().await {
        Ok(r) if r.status().is_success() => match r.json::<serde_json::Value>().await {
            Ok(metadata) if metadata["issuer"] == expected => {
                report.ok("Synapse's auth metadata", format!("issuer {expected}"))
            }
            Ok(metadata) => report.fail(
                "Synapse's auth metadata",
                format!(
                    "Synapse serves issuer {} but http.public_base is {expected}: point Synapse's matrix_authentication_service.endpoint at this mxidp, and restart Synapse after changing public_base (it caches the metadata)",
                    metadata["issuer"]
                ),
            ),
            Err(e) => report.fail("Synapse's auth metadata", e),
        },
        Ok(r) => report.fail(
            "Synapse's auth metadata",
            format!("{url} answered {}: is mxidp running where Synapse's matrix_authentication_service.endpoint points?", r.status()),
        ),
        Err(e) => report.fail("Synapse's auth metadata", e),
    }
}

async fn public_base(config: &Config, http: &reqwest::Client, report: &mut Report) {
    let url = config
        .http
        .public_base
        .join("health/live")
        .expect("valid path");
    match http.get(url.clone()).send().await {
        Ok(r) if r.status().is_success() => report.ok("public base", format!("{url} answers")),
        Ok(r) => report.fail(
            "public base",
            format!("{url} answered {}: does the reverse proxy send http.public_base to mxidp?", r.status()),
        ),
        Err(e) => report.fail(
            "public base",
            format!("{url}: {e}: clients and the IdP reach mxidp there; is mxidp running and the proxy set up?"),
        ),
    }
}

async fn encryption_key(config: &Config, report: &mut Report) {
    let key = match config.encryption_key() {
        Ok(k) => k,
        Err(e) => return report.fail("encryption key", e),
    };
    let store = match mxidp_core::store::SqliteStore::open(&config.database.url).await {
        Ok(s) => s,
        Err(e) => {
            return report.fail(
                "database",
                format!("{}: {e}", config.database.url_for_log()),
            )
        }
    };
    report.ok("database", config.database.url_for_log());
    let sealer = mxidp_core::crypto::Sealer::new(&key);
    match mxidp_core::server::verify_encryption_key(&store, &sealer).await {
        Ok(()) => report.ok("encryption key", "opens what this database holds"),
        Err(e) => report.fail("encryption key", e),
    }
}

/// An HTTP date (RFC 9110 §5.6.7, IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`).
fn httpdate(text: &str) -> Option<SystemTime> {
    let format = time::format_description::parse_borrowed::<2>(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT",
    )
    .ok()?;
    let parsed = time::PrimitiveDateTime::parse(text, &format).ok()?;
    let unix = parsed.assume_utc().unix_timestamp();
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).ok()?))
}

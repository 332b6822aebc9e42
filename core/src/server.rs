//! Building the application from configuration and running it: the store opens (migrations
//! run), the IdP is discovered in the background (mxidp starts and reports not-ready while the
//! IdP is unreachable), expired sign-ins are pruned, and shutdown is graceful.

use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::cache::IntrospectionCache;
use crate::config::{Config, ConflictMode};
use crate::crypto::Sealer;
use crate::homeserver::{HomeserverConnection, SynapseConnection};
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::routing::{get, post};
use axum::Router;

use crate::app::{App, AppState, Lifetimes, MappingSettings, UpstreamSlot};
use crate::http;
use crate::identity::{AccessPolicy, AdminPolicy, ConflictPolicy, LocalpartTemplate};
use crate::limits::Bucket;
use crate::provider::Provider;
use crate::store::{SqliteStore, Store};
use crate::upstream::{Upstream, UpstreamSettings};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretString;

    #[tokio::test]
    async fn a_changed_encryption_key_is_refused_at_start() {
        let store = SqliteStore::in_memory().await.unwrap();
        let original = Sealer::new(&SecretString::new("original-key-0123456789abcdef0123"));
        verify_encryption_key(&store, &original).await.unwrap();
        verify_encryption_key(&store, &original).await.unwrap();
        let other = Sealer::new(&SecretString::new("another-key-0123456789abcdef01234"));
        let err = verify_encryption_key(&store, &other).await.unwrap_err();
        assert!(
            err.to_string().starts_with("database.encryption_key"),
            "{err}"
        );
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Problem(crate::config::Problem),
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    #[error(
        "database.encryption_key: not the key this database was created with; \
         restore the original key (a new key cannot read the sealed refresh tokens)"
    )]
    WrongEncryptionKey,
}

/// Checks that the store key is the one the database was written with: the first start seals a
/// check value, every later start must open it. A wrong key would otherwise only show much
/// later, as sessions that cannot be ended at the IdP.
pub async fn verify_encryption_key(store: &dyn Store, sealer: &Sealer) -> Result<(), BuildError> {
    const CHECK: &str = "mxidp encryption key check";
    let stored = store
        .init_setting("encryption_key_check", &sealer.seal_str(CHECK))
        .await?;
    match sealer.open(&stored) {
        Ok(plain) if plain == CHECK.as_bytes() => Ok(()),
        _ => Err(BuildError::WrongEncryptionKey),
    }
}

pub fn upstream_settings(config: &Config) -> Result<UpstreamSettings, BuildError> {
    use crate::upstream::ClientAuthMethod;
    let up = &config.upstream;
    Ok(UpstreamSettings {
        issuer: up.issuer.clone(),
        client_id: up.client_id.clone(),
        client_secret: match up.auth_method {
            ClientAuthMethod::PrivateKeyJwt => config.client_secret().unwrap_or_default(),
            _ => config.client_secret().map_err(BuildError::Problem)?,
        },
        auth_method: up.auth_method,
        client_key: match up.auth_method {
            ClientAuthMethod::PrivateKeyJwt => Some(std::sync::Arc::new(
                config.client_key().map_err(BuildError::Problem)?,
            )),
            _ => None,
        },
        scopes: up.scopes.clone(),
        allowed_algorithms: up
            .allowed_algorithms
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect(),
        fetch_userinfo: up.fetch_userinfo,
        leeway: Duration::from_secs(up.leeway_seconds),
        jwks_refetch_cooldown: Duration::from_secs(up.jwks_refetch_cooldown_seconds),
        jwks_refresh: Duration::from_secs(up.jwks_refresh_seconds),
        http_timeout: config.upstream_timeout(),
    })
}

pub fn mapping_settings(config: &Config) -> Result<MappingSettings, BuildError> {
    let m = &config.mapping;
    let template = |key: &str, t: &str| {
        LocalpartTemplate::parse(t).map_err(|e| {
            BuildError::Problem(crate::config::Problem {
                key: key.into(),
                message: e.to_string(),
            })
        })
    };
    Ok(MappingSettings {
        upstream_id: config.upstream.upstream_id(),
        localpart_template: template("mapping.localpart_template", &m.localpart_template)?,
        displayname_template: m
            .displayname_template
            .as_deref()
            .map(|t| template("mapping.displayname_template", t))
            .transpose()?,
        keep_before_at: m.keep_before_at,
        conflict: match m.on_conflict {
            ConflictMode::Fail => ConflictPolicy::Fail,
            ConflictMode::Suffix => ConflictPolicy::Suffix { max: m.suffix_max },
        },
        sync_emails: m.sync_emails,
        access: config.policy.access.as_ref().map(|r| AccessPolicy {
            claim: r.claim.clone(),
            value: r.value.clone(),
        }),
        admin: config.policy.admin.as_ref().map(|r| AdminPolicy {
            claim: r.claim.clone(),
            value: r.value.clone(),
        }),
    })
}

/// Builds the application state with the given parts (tests inject doubles).
pub fn assemble(
    config: &Config,
    store: Arc<dyn Store>,
    homeserver: Arc<dyn HomeserverConnection>,
    provider: Arc<dyn Provider>,
) -> Result<App, BuildError> {
    let s = &config.sessions;
    let revalidator = revalidator(config, provider.as_ref());
    Ok(Arc::new(AppState {
        issuer: config.http.public_base.clone(),
        mapping: mapping_settings(config)?,
        events: crate::events::EventPipeline::with_settings(store.clone(), config.events.clone()),
        store,
        homeserver,
        provider,
        upstream: UpstreamSlot::default(),
        matrix_secret: config.matrix_secret().map_err(BuildError::Problem)?,
        sealer: Sealer::new(&config.encryption_key().map_err(BuildError::Problem)?),
        cache: IntrospectionCache::new(s.introspection_cache_entries),
        lifetimes: Lifetimes {
            pending_authorization: s.pending_authorization_seconds as i64,
            authorization_code: s.authorization_code_seconds as i64,
            device_code: s.device_code_seconds as i64,
            default_access_token: s.default_access_token_seconds as i64,
        },
        consent: config.consent.clone(),
        branding: crate::branding::Branding::new(&config.branding, &config.matrix.homeserver),
        account_url: config.upstream.account_url.clone(),
        max_body_bytes: config.http.max_body_bytes,
        receivers: crate::receivers::ReceiverKeys::from_config(config)
            .map_err(|e| BuildError::Http(e.to_string()))?,
        revalidator,
        limits: crate::limits::RateLimiter::new(config.limits.clone()),
        jwt_shim: crate::jwt_shim::JwtShim::from_config(config).map_err(BuildError::Http)?,
        subject_tokens: crate::jwt_shim::SubjectRules::default(),
    }))
}

/// `upstream.revalidation`, or the adapter's default when unset.
fn revalidator(config: &Config, provider: &dyn Provider) -> Option<crate::revalidate::Revalidator> {
    let mode = config
        .upstream
        .revalidation
        .unwrap_or_else(|| provider.default_revalidation());
    (mode != crate::config::Revalidation::Session).then(|| {
        crate::revalidate::Revalidator::with_mode(
            Duration::from_secs(config.upstream.revalidation_cache_seconds),
            mode,
        )
        .with_budget(
            config
                .upstream
                .revalidation_max_per_minute
                .or_else(|| provider.revalidation_budget_per_minute()),
        )
    })
}

/// The outbound client (see [`crate::outbound`]), for the builders here.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, BuildError> {
    crate::outbound::client(timeout).map_err(|e| BuildError::Http(e.to_string()))
}

/// Builds the production application: SQLite store, Synapse connection, the given provider.
pub async fn build(config: &Config, provider: Arc<dyn Provider>) -> Result<App, BuildError> {
    let store = Arc::new(SqliteStore::open(&config.database.url).await?);
    let sealer = Sealer::new(&config.encryption_key().map_err(BuildError::Problem)?);
    verify_encryption_key(store.as_ref(), &sealer).await?;
    adopt_upstream_id(store.as_ref(), config).await?;
    let homeserver = Arc::new(SynapseConnection::new(
        config.matrix.endpoint.clone(),
        config.matrix.homeserver.clone(),
        config.matrix_secret().map_err(BuildError::Problem)?,
        http_client(Duration::from_secs(config.matrix.timeout_seconds))?,
    ));
    let app = assemble(config, store, homeserver, provider)?;
    warm_introspection_cache(&app).await?;
    load_subject_token_rules(&app).await?;
    Ok(app)
}

/// The adapters' code names, which keyed identities before `upstream.id` existed.
const LEGACY_UPSTREAM_NAMES: &[&str] = &["generic", "keycloak", "okta", "zitadel", "auth0"];

/// Moves records keyed on an adapter's name to `upstream.id` (once; later starts find none).
pub async fn adopt_upstream_id(store: &dyn Store, config: &Config) -> Result<u64, BuildError> {
    let id = config.upstream.upstream_id();
    let moved = store.adopt_upstream_id(&id, LEGACY_UPSTREAM_NAMES).await?;
    if moved > 0 {
        tracing::info!(identities = moved, upstream_id = %id, "identities moved to the upstream id");
    }
    Ok(moved)
}

/// Loads every active access token into the introspection cache, which makes it complete
/// (see [`crate::cache`]). Call once at start, before serving.
pub async fn warm_introspection_cache(app: &AppState) -> Result<usize, crate::store::StoreError> {
    let tokens = app
        .store
        .active_access_tokens(crate::ids::now_unix())
        .await?;
    let count = tokens.len();
    app.cache.warm(
        tokens.iter().map(|(record, session)| {
            (record.hash, crate::cache::ActiveToken::new(record, session))
        }),
    );
    tracing::info!(
        active_tokens = count,
        complete = app.cache.is_complete(),
        "introspection cache loaded"
    );
    Ok(count)
}

/// Loads which users' IdP-issued JWTs are refused (for the JWT shim). Call once at start.
pub async fn load_subject_token_rules(app: &AppState) -> Result<usize, crate::store::StoreError> {
    let count = app
        .subject_tokens
        .load(app.store.as_ref(), &app.mapping.upstream_id)
        .await?;
    if app.jwt_shim.is_some() {
        tracing::info!(restricted_subjects = count, "JWT shim enabled");
    }
    Ok(count)
}

/// Discovers the IdP, retrying with back-off until it answers; logs each failure.
pub fn spawn_discovery(app: App, settings: UpstreamSettings) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut delay = Duration::from_secs(1);
        loop {
            let http = match http_client(settings.http_timeout) {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!(error = %e, "cannot build the HTTP client");
                    return;
                }
            };
            match Upstream::discover(settings.clone(), http).await {
                Ok(upstream) => {
                    tracing::info!(issuer = %settings.issuer, "identity provider discovered");
                    app.upstream.set(upstream);
                    return;
                }
                Err(e) => {
                    tracing::warn!(issuer = %settings.issuer, error = %e, retry_in_s = delay.as_secs(), "identity provider discovery failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(60));
                }
            }
        }
    })
}

/// Starts everything that runs beside the HTTP server: IdP discovery, pruning, the event
/// worker and reconciliation (when enabled). `serve` and the end-to-end tests both use it.
pub fn spawn_background(app: App, config: &Config) -> Result<(), BuildError> {
    let mut settings = upstream_settings(config)?;
    settings.scopes.extend(app.provider.scopes());
    spawn_discovery(app.clone(), settings);
    spawn_pruning(app.clone());
    // Its first round picks up the events accepted before a crash or a stop.
    crate::events::spawn_worker(app.clone());
    crate::jwt_shim::spawn_service_accounts(app.clone());
    if let Some(listen) = config.metrics.listen {
        crate::metrics::spawn(app.clone(), listen);
    }
    // Stops at once for a provider without an event log.
    crate::events::log_stream::spawn(app.clone());
    let r = &config.reconciliation;
    if crate::reconcile::spawn_reconciliation(app, r.clone()).is_some() {
        tracing::info!(
            interval_s = r.interval_seconds,
            batch_size = r.batch_size,
            max_requests_per_second = r.max_requests_per_second,
            "reconciliation enabled"
        );
    }
    Ok(())
}

/// Prunes expired sign-ins and codes, and registrations nobody used, every minute.
pub fn spawn_pruning(app: App) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            prune_once(&app, crate::ids::now_unix()).await;
        }
    })
}

/// One pruning round (also what `spawn_pruning` runs every minute).
pub async fn prune_once(app: &AppState, now: i64) {
    // A sign-in that expired before it became a session hands its IdP tokens back first.
    match app.store.expired_logins(now, 1_000).await {
        Ok(logins) => {
            for login in &logins {
                crate::http::revoke_sealed_login(app, login).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "reading expired sign-ins failed"),
    }
    match app.store.prune(now).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(pruned = n, "pruned expired sign-ins"),
        Err(e) => tracing::warn!(error = %e, "pruning failed"),
    }
    let unused_before = now.saturating_sub(app.limits.settings().unused_client_seconds as i64);
    match app.store.prune_unused_clients(unused_before).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            deleted = n,
            "deleted client registrations never used for a sign-in"
        ),
        Err(e) => tracing::warn!(error = %e, "pruning unused clients failed"),
    }
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish.
pub async fn run(
    app: App,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router(app);
    // The peer address feeds the per-address limits (crate::limits).
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// The issuer's URL joined with a path, for callers outside the HTTP module.
pub fn public_url(app: &AppState, path: &str) -> Url {
    app.url(path)
}

/// The whole HTTP application: the OAuth server's endpoints, the IdP-event receivers and the
/// health probes, with the body limit, CORS for browser clients and request tracing.
pub fn router(state: App) -> Router {
    let max_body = state.max_body_bytes;
    // Browser clients (Element Web) call these from their own origin. No credentials are
    // involved (public clients, tokens in the body), so any origin may.
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
        .allow_headers([header::CONTENT_TYPE, header::ACCEPT, header::AUTHORIZATION]);
    let limited = |bucket| {
        axum::middleware::from_fn_with_state((state.clone(), bucket), crate::limits::limit)
    };
    let browser_api = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(http::metadata::get),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(http::metadata::get),
        )
        .route(
            &format!("/{}", http::paths::REGISTER),
            post(http::registration::post).layer(limited(Bucket::Registration)),
        )
        .route(&format!("/{}", http::paths::TOKEN), post(http::token::post))
        .route(
            &format!("/{}", http::paths::DEVICE_AUTHORIZATION),
            post(http::device::post).layer(limited(Bucket::Authorization)),
        )
        .route(
            &format!("/{}", http::paths::REVOKE),
            post(http::revoke::post),
        )
        // The compatibility layer (the reverse proxy sends these Matrix paths to mxidp).
        .route(
            "/_matrix/client/{version}/login",
            get(http::compat::flows).post(http::compat::login),
        )
        .route(
            "/_matrix/client/{version}/logout",
            post(http::compat::logout),
        )
        .route(
            "/_matrix/client/{version}/logout/all",
            post(http::compat::logout_all),
        )
        .route(
            "/_matrix/client/{version}/refresh",
            post(http::compat::refresh),
        )
        .layer(cors);
    Router::new()
        .merge(browser_api)
        .route(
            &format!("/{}", http::paths::AUTHORIZE),
            get(http::authorize::get).layer(limited(Bucket::Authorization)),
        )
        .route(
            &format!("/{}", http::paths::LINK),
            get(http::device::link).layer(limited(Bucket::Authorization)),
        )
        .route(
            "/_matrix/client/{version}/login/sso/redirect",
            get(http::compat::sso_redirect).layer(limited(Bucket::Authorization)),
        )
        .route(
            "/_matrix/client/{version}/login/sso/redirect/{idp}",
            get(http::compat::sso_redirect).layer(limited(Bucket::Authorization)),
        )
        .route(&format!("/{}", http::paths::CALLBACK), get(http::callback::get))
        .route(
            &format!("/{}", http::paths::CONSENT),
            get(http::consent::get).post(http::consent::post),
        )
        .route(&format!("/{}", http::paths::INTROSPECT), post(http::introspect::post))
        .route(
            &format!("/{}", http::paths::ACCOUNT),
            get(http::account::get).layer(limited(Bucket::Account)),
        )
        .route(
            &format!("/{}", http::paths::ACCOUNT_CONFIRM),
            get(http::account::confirmation).post(http::account::confirm),
        )
        .route(
            &format!("/{}", crate::receivers::paths::BACKCHANNEL_LOGOUT),
            post(crate::receivers::backchannel_logout::post),
        )
        .route(
            &format!("/{}", crate::receivers::paths::SSF),
            post(crate::receivers::ssf::post),
        )
        .route(
            &format!("/{}", crate::receivers::paths::GLOBAL_TOKEN_REVOCATION),
            post(crate::receivers::global_token_revocation::post),
        )
        .route(
            &format!("/{}", crate::receivers::paths::WEBHOOK),
            post(crate::receivers::webhook::post).get(crate::receivers::webhook::get),
        )
        .route("/health/live", get(http::health::live))
        .route("/health/ready", get(http::health::ready))
        // Every page into the branded document, with the headers pages carry.
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            http::pages::render,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(max_body))
        .layer(
            // Only method and path: query strings carry codes and states.
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<_>| {
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path())
                })
                // Handlers log their own failures with a reference; a 503 readiness probe is
                // not an error worth a line per probe.
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .with_state(state)
}

//! The application's state, owned by the application rather than by the web layer: the
//! engine's parts (store, event pipeline, homeserver, provider, upstream, sealer, introspection
//! cache, re-validation, receivers' keys) that the HTTP handlers, the event worker and the
//! background jobs are all handed. Nothing here depends on `http/` (docs/architecture.md).

use std::sync::{Arc, RwLock};

use url::Url;

use crate::cache::IntrospectionCache;
use crate::crypto::Sealer;
use crate::homeserver::HomeserverConnection;
use crate::identity::{ConflictPolicy, LocalpartTemplate};
use crate::provider::Provider;
use crate::secret::SecretString;
use crate::store::Store;
use crate::upstream::Upstream;

/// Paths of mxidp's endpoints, relative to the public base URL.
pub mod paths {
    pub const AUTHORIZE: &str = "oauth2/authorize";
    pub const TOKEN: &str = "oauth2/token";
    pub const REVOKE: &str = "oauth2/revoke";
    pub const REGISTER: &str = "oauth2/registration";
    pub const INTROSPECT: &str = "oauth2/introspect";
    pub const CALLBACK: &str = "upstream/callback";
    pub const CONSENT: &str = "consent";
    pub const ACCOUNT: &str = "account";
    pub const ACCOUNT_CONFIRM: &str = "account/confirm";
    pub const DEVICE_AUTHORIZATION: &str = "oauth2/device";
    pub const LINK: &str = "link";
}

/// Settings of the identity mapping, parsed once at start.
pub struct MappingSettings {
    pub upstream_id: String,
    pub localpart_template: LocalpartTemplate,
    pub displayname_template: Option<LocalpartTemplate>,
    pub keep_before_at: bool,
    pub conflict: ConflictPolicy,
    pub sync_emails: bool,
    pub access: Option<crate::identity::AccessPolicy>,
    pub admin: Option<crate::identity::AdminPolicy>,
}

impl MappingSettings {
    /// The claims the mapping reads: the localpart and display-name templates, the e-mail when
    /// e-mails are synced, the claims the policies test (`roles` is the adapter's extraction,
    /// not a claim). What `upstream.fetch_userinfo = "auto"` looks for in the ID token.
    pub fn claims_needed(&self) -> Vec<&str> {
        let mut claims: Vec<&str> = self.localpart_template.claims().collect();
        if let Some(template) = &self.displayname_template {
            claims.extend(template.claims());
        }
        if self.sync_emails {
            claims.extend(["email", "email_verified"]);
        }
        let policies = [
            self.access.as_ref().map(|p| p.claim.as_str()),
            self.admin.as_ref().map(|p| p.claim.as_str()),
        ];
        claims.extend(policies.into_iter().flatten().filter(|c| *c != "roles"));
        claims
    }
}

/// Lifetimes, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub pending_authorization: i64,
    pub authorization_code: i64,
    pub device_code: i64,
    pub default_access_token: i64,
}

/// The upstream client, loaded by discovery in the background: mxidp starts (and reports
/// not-ready) while the IdP is unreachable.
#[derive(Default)]
pub struct UpstreamSlot(RwLock<Option<Arc<Upstream>>>);

impl UpstreamSlot {
    pub fn get(&self) -> Option<Arc<Upstream>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, upstream: Upstream) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(upstream));
    }
}

pub struct AppState {
    /// mxidp's public URL, the issuer (ends in `/`).
    pub issuer: Url,
    pub store: Arc<dyn Store>,
    /// Where receivers hand verified IdP events (durable, deduplicated).
    pub events: crate::events::EventPipeline,
    pub homeserver: Arc<dyn HomeserverConnection>,
    pub provider: Arc<dyn Provider>,
    pub upstream: UpstreamSlot,
    /// The secret Synapse presents at introspection, and mxidp at `/_synapse/mas/*`.
    pub matrix_secret: SecretString,
    pub sealer: Sealer,
    pub cache: IntrospectionCache,
    pub mapping: MappingSettings,
    pub lifetimes: Lifetimes,
    /// Who the pages belong to (`[branding]`).
    pub branding: crate::branding::Branding,
    /// When a remembered consent spares the page (`[consent]`).
    pub consent: crate::consent::ConsentConfig,
    /// Where users manage their account at the IdP, when known.
    pub account_url: Option<Url>,
    pub max_body_bytes: usize,
    /// Keys of the configured event transmitters (Shared Signals, global token revocation).
    pub receivers: crate::receivers::keys::ReceiverKeys,
    /// Per-address limits on anonymous requests that store something.
    pub limits: crate::limits::RateLimiter,
    /// Background re-validation at the IdP (`upstream.revalidation = "introspect"`).
    pub revalidator: Option<crate::revalidate::Revalidator>,
    /// The JWT-to-introspection shim, when `[jwt_shim]` is enabled.
    pub jwt_shim: Option<crate::jwt_shim::JwtShim>,
    /// Which users' IdP-issued JWTs are refused (their sessions were ended, they are locked):
    /// kept by the event worker whether or not the shim is on, so that turning it on later
    /// does not bring old tokens back.
    pub subject_tokens: crate::jwt_shim::SubjectRules,
}

pub type App = Arc<AppState>;

impl AppState {
    pub fn url(&self, path: &str) -> Url {
        // The issuer ends in '/', so joining a relative path appends to it.
        self.issuer
            .join(path)
            .expect("endpoint paths are valid relative URLs")
    }

    pub fn callback_url(&self) -> Url {
        self.url(paths::CALLBACK)
    }

    /// Cookies get `Secure` whenever mxidp is served over https.
    pub fn secure_cookies(&self) -> bool {
        self.issuer.scheme() == "https"
    }
}

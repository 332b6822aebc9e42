//! Matrix OAuth scopes (MSC2967, spec v1.15 "OAuth 2.0 API" → "Scope").
//!
//! A Matrix client asks for the client-server API scope and exactly one device scope that names
//! the device id it chose. Two spellings exist: the stable `urn:matrix:client:…` (matrix-js-sdk
//! ≥ 42) and the unstable `urn:matrix:org.matrix.msc2967.client:…` (matrix-rust-sdk). A request
//! must stay within one family; we answer in that family, and give Synapse both (it only looks
//! for either spelling, and Synapse < 1.138 only knows the unstable one).

use std::fmt;

use crate::ids::{DeviceId, IdError};

/// `urn:synapse:admin:*`: Synapse treats a token carrying it as a server admin.
pub const SYNAPSE_ADMIN_SCOPE: &str = "urn:synapse:admin:*";

const STABLE_API: &str = "urn:matrix:client:api:*";
const STABLE_DEVICE_PREFIX: &str = "urn:matrix:client:device:";
const UNSTABLE_API: &str = "urn:matrix:org.matrix.msc2967.client:api:*";
const UNSTABLE_DEVICE_PREFIX: &str = "urn:matrix:org.matrix.msc2967.client:device:";

/// Which spelling of the Matrix scopes a client used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeFamily {
    /// `urn:matrix:client:…` (Matrix spec v1.15).
    Stable,
    /// `urn:matrix:org.matrix.msc2967.client:…` (MSC2967 unstable prefix).
    Unstable,
}

impl ScopeFamily {
    /// The full client-server API scope in this family.
    pub fn api_scope(self) -> &'static str {
        match self {
            Self::Stable => STABLE_API,
            Self::Unstable => UNSTABLE_API,
        }
    }

    /// The device scope for `device` in this family.
    pub fn device_scope(self, device: &DeviceId) -> String {
        let prefix = match self {
            Self::Stable => STABLE_DEVICE_PREFIX,
            Self::Unstable => UNSTABLE_DEVICE_PREFIX,
        };
        format!("{prefix}{device}")
    }
}

/// Why a requested scope was refused. The `Display` text is meant for the OAuth
/// `error_description` of an `invalid_scope` error, so it only contains characters RFC 6749
/// §5.2 allows there (no `"` or `\`, ASCII only).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("unknown scope {}", for_error_text(.0))]
    Unknown(String),
    #[error("scope mixes the stable (urn:matrix:client:) and unstable (urn:matrix:org.matrix.msc2967.client:) Matrix scopes")]
    MixedFamilies,
    #[error("more than one device scope requested; exactly one is allowed")]
    MultipleDeviceScopes,
    #[error("a device scope was requested without the Matrix client API scope")]
    DeviceWithoutApi,
    #[error("the Matrix client API scope (urn:matrix:client:api:*) is required")]
    MissingApi,
    #[error("a device scope (urn:matrix:client:device:<device id>) is required")]
    MissingDevice,
    #[error("invalid device id in device scope: {0}")]
    InvalidDeviceId(#[source] IdError),
}

/// A validated Matrix authorization scope: the client-server API scope and exactly one device,
/// all in one family, plus the optional extras the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixScope {
    family: ScopeFamily,
    device: DeviceId,
    openid: bool,
    email: bool,
    admin_requested: bool,
}

impl MatrixScope {
    /// Parses a space-separated OAuth `scope` parameter (RFC 6749 §3.3). Empty tokens from
    /// repeated spaces are skipped and a token repeated verbatim counts once, since a scope is a
    /// set; two *different* device scopes are an error.
    pub fn parse(scope: &str) -> Result<Self, ScopeError> {
        let mut family: Option<ScopeFamily> = None;
        let mut api = false;
        let mut device_raw: Option<&str> = None;
        let mut openid = false;
        let mut email = false;
        let mut admin_requested = false;

        let mut note_family = |f: ScopeFamily| match family {
            Some(existing) if existing != f => Err(ScopeError::MixedFamilies),
            _ => {
                family = Some(f);
                Ok(())
            }
        };

        for token in scope.split(' ').filter(|t| !t.is_empty()) {
            match token {
                "openid" => openid = true,
                "email" => email = true,
                SYNAPSE_ADMIN_SCOPE => admin_requested = true,
                STABLE_API => {
                    note_family(ScopeFamily::Stable)?;
                    api = true;
                }
                UNSTABLE_API => {
                    note_family(ScopeFamily::Unstable)?;
                    api = true;
                }
                _ => {
                    let (f, id) = if let Some(id) = token.strip_prefix(STABLE_DEVICE_PREFIX) {
                        (ScopeFamily::Stable, id)
                    } else if let Some(id) = token.strip_prefix(UNSTABLE_DEVICE_PREFIX) {
                        (ScopeFamily::Unstable, id)
                    } else {
                        return Err(ScopeError::Unknown(token.to_owned()));
                    };
                    note_family(f)?;
                    match device_raw {
                        Some(previous) if previous != id => {
                            return Err(ScopeError::MultipleDeviceScopes)
                        }
                        _ => device_raw = Some(id),
                    }
                }
            }
        }

        let (family, device_raw) = match (api, device_raw) {
            (true, Some(d)) => (family, d),
            (false, Some(_)) => return Err(ScopeError::DeviceWithoutApi),
            (false, None) => return Err(ScopeError::MissingApi),
            (true, None) => return Err(ScopeError::MissingDevice),
        };
        // `api` is only set together with a family.
        let family = family.ok_or(ScopeError::MissingApi)?;
        let device = DeviceId::parse(device_raw).map_err(ScopeError::InvalidDeviceId)?;

        Ok(Self {
            family,
            device,
            openid,
            email,
            admin_requested,
        })
    }

    pub fn device_id(&self) -> &DeviceId {
        &self.device
    }

    pub fn family(&self) -> ScopeFamily {
        self.family
    }

    /// The client asked for `urn:synapse:admin:*`. Whether it gets it is policy, decided
    /// elsewhere; see [`MatrixScope::granted_string`].
    pub fn admin_requested(&self) -> bool {
        self.admin_requested
    }

    /// The client asked for `openid` (matrix-js-sdk ≤ 41 does). Recorded only: the IdP's ID
    /// token is for mxidp, and mxidp issues none to clients (docs/synapse-contract.md).
    pub fn openid_requested(&self) -> bool {
        self.openid
    }

    pub fn email_requested(&self) -> bool {
        self.email
    }

    /// The `scope` of the token response, in the client's own family: the API scope, the device
    /// scope, and `urn:synapse:admin:*` when the client asked for it *and* `admin` (policy) says
    /// it may have it. `openid` and `email` are left out because nothing is issued for them;
    /// RFC 6749 §5.1 has the server report the scope it actually granted.
    pub fn granted_string(&self, admin: bool) -> String {
        let mut out = format!(
            "{} {}",
            self.family.api_scope(),
            self.family.device_scope(&self.device)
        );
        if admin && self.admin_requested {
            out.push(' ');
            out.push_str(SYNAPSE_ADMIN_SCOPE);
        }
        out
    }
}

impl fmt::Display for MatrixScope {
    /// The scope as requested (normalised order), e.g. for the consent page or the audit log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.family.api_scope())?;
        write!(f, " {}", self.family.device_scope(&self.device))?;
        if self.openid {
            f.write_str(" openid")?;
        }
        if self.email {
            f.write_str(" email")?;
        }
        if self.admin_requested {
            write!(f, " {SYNAPSE_ADMIN_SCOPE}")?;
        }
        Ok(())
    }
}

/// The `scope` of an introspection answer for Synapse: both families' API scope and both
/// families' device scope (Synapse accepts either, older Synapse only the unstable one; MAS
/// answers with both, docs/synapse-contract.md), plus `urn:synapse:admin:*` when the user is an admin.
pub fn introspection_scope(device: &DeviceId, admin: bool) -> String {
    let mut out = format!(
        "{} {} {} {}",
        STABLE_API,
        UNSTABLE_API,
        ScopeFamily::Stable.device_scope(device),
        ScopeFamily::Unstable.device_scope(device),
    );
    if admin {
        out.push(' ');
        out.push_str(SYNAPSE_ADMIN_SCOPE);
    }
    out
}

/// Quotes client-supplied text for an OAuth `error_description`: RFC 6749 §5.2 allows only
/// `%x20-21 / %x23-5B / %x5D-7E`, so anything else becomes `?`, and the text is cut to a
/// length that keeps error responses small.
pub(crate) fn for_error_text(raw: &str) -> String {
    const MAX: usize = 80;
    let mut out = String::from("`");
    for (i, c) in raw.chars().enumerate() {
        if i == MAX {
            out.push_str("...");
            break;
        }
        let allowed = matches!(c, '\x20'..='\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e');
        out.push(if allowed { c } else { '?' });
    }
    out.push('`');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = "ABCDEFGHIJ";

    fn stable() -> String {
        format!("{STABLE_API} {STABLE_DEVICE_PREFIX}{DEV}")
    }

    fn unstable() -> String {
        format!("{UNSTABLE_API} {UNSTABLE_DEVICE_PREFIX}{DEV}")
    }

    #[test]
    fn stable_family_accepted() {
        let s = MatrixScope::parse(&stable()).unwrap();
        assert_eq!(s.family(), ScopeFamily::Stable);
        assert_eq!(s.device_id().as_str(), DEV);
    }

    #[test]
    fn unstable_family_accepted() {
        let s = MatrixScope::parse(&unstable()).unwrap();
        assert_eq!(s.family(), ScopeFamily::Unstable);
        assert_eq!(s.device_id().as_str(), DEV);
    }

    #[test]
    fn order_and_extra_spaces_do_not_matter() {
        let s = MatrixScope::parse(&format!(
            "  openid {UNSTABLE_DEVICE_PREFIX}{DEV}   {UNSTABLE_API} "
        ))
        .unwrap();
        assert_eq!(s.family(), ScopeFamily::Unstable);
        assert!(s.openid_requested());
        assert!(!s.email_requested());
    }

    #[test]
    fn openid_email_and_admin_are_recorded() {
        let s = MatrixScope::parse(&format!("{} openid email {SYNAPSE_ADMIN_SCOPE}", stable()))
            .unwrap();
        assert!(s.openid_requested());
        assert!(s.email_requested());
        assert!(s.admin_requested());
    }

    #[test]
    fn mixed_families_rejected() {
        let mixed = format!("{STABLE_API} {UNSTABLE_DEVICE_PREFIX}{DEV}");
        assert_eq!(MatrixScope::parse(&mixed), Err(ScopeError::MixedFamilies));
        let both_api = format!("{STABLE_API} {UNSTABLE_API} {STABLE_DEVICE_PREFIX}{DEV}");
        assert_eq!(
            MatrixScope::parse(&both_api),
            Err(ScopeError::MixedFamilies)
        );
    }

    #[test]
    fn two_device_scopes_rejected() {
        let two = format!("{} {STABLE_DEVICE_PREFIX}KLMNOPQRST", stable());
        assert_eq!(
            MatrixScope::parse(&two),
            Err(ScopeError::MultipleDeviceScopes)
        );
    }

    #[test]
    fn the_same_device_scope_twice_counts_once() {
        let twice = format!("{} {STABLE_DEVICE_PREFIX}{DEV}", stable());
        assert!(MatrixScope::parse(&twice).is_ok());
    }

    #[test]
    fn device_scope_without_api_scope_rejected() {
        let only_device = format!("openid {STABLE_DEVICE_PREFIX}{DEV}");
        assert_eq!(
            MatrixScope::parse(&only_device),
            Err(ScopeError::DeviceWithoutApi)
        );
    }

    #[test]
    fn api_scope_without_device_scope_rejected() {
        assert_eq!(
            MatrixScope::parse(STABLE_API),
            Err(ScopeError::MissingDevice)
        );
    }

    #[test]
    fn no_matrix_scope_at_all_rejected() {
        assert_eq!(
            MatrixScope::parse("openid email"),
            Err(ScopeError::MissingApi)
        );
        assert_eq!(MatrixScope::parse(""), Err(ScopeError::MissingApi));
    }

    #[test]
    fn unknown_scope_rejected() {
        let s = format!("{} profile", stable());
        assert_eq!(
            MatrixScope::parse(&s),
            Err(ScopeError::Unknown("profile".into()))
        );
        // Only the wildcard API scope exists.
        let narrow = format!("urn:matrix:client:api:read {STABLE_DEVICE_PREFIX}{DEV}");
        assert!(matches!(
            MatrixScope::parse(&narrow),
            Err(ScopeError::Unknown(_))
        ));
    }

    #[test]
    fn device_id_of_nine_chars_rejected() {
        let s = format!("{STABLE_API} {STABLE_DEVICE_PREFIX}ABCDEFGHI");
        assert_eq!(
            MatrixScope::parse(&s),
            Err(ScopeError::InvalidDeviceId(IdError::DeviceIdTooShort))
        );
    }

    #[test]
    fn device_id_with_quote_rejected() {
        let s = format!("{STABLE_API} {STABLE_DEVICE_PREFIX}ABCDE\"FGHIJ");
        assert_eq!(
            MatrixScope::parse(&s),
            Err(ScopeError::InvalidDeviceId(IdError::DeviceIdChars))
        );
    }

    #[test]
    fn device_id_with_space_rejected() {
        // A space ends the scope token, so the id is cut short and the rest is an unknown scope.
        let s = format!("{STABLE_API} {STABLE_DEVICE_PREFIX}ABCDE FGHIJKLMN");
        assert!(MatrixScope::parse(&s).is_err());
        // Other whitespace stays inside the token and is not a scope character.
        let tab = format!("{STABLE_API} {STABLE_DEVICE_PREFIX}ABCDE\tFGHIJ");
        assert_eq!(
            MatrixScope::parse(&tab),
            Err(ScopeError::InvalidDeviceId(IdError::DeviceIdChars))
        );
    }

    #[test]
    fn granted_string_uses_the_clients_family() {
        let s = MatrixScope::parse(&unstable()).unwrap();
        assert_eq!(s.granted_string(false), unstable());
        let s = MatrixScope::parse(&format!("openid {}", stable())).unwrap();
        assert_eq!(s.granted_string(false), stable());
    }

    #[test]
    fn granted_string_has_admin_only_when_requested_and_allowed() {
        let requested = MatrixScope::parse(&format!("{} {SYNAPSE_ADMIN_SCOPE}", stable())).unwrap();
        assert!(requested
            .granted_string(true)
            .ends_with(SYNAPSE_ADMIN_SCOPE));
        assert!(!requested.granted_string(false).contains("admin"));
        let not_requested = MatrixScope::parse(&stable()).unwrap();
        assert!(!not_requested.granted_string(true).contains("admin"));
    }

    #[test]
    fn introspection_scope_contains_all_four() {
        let d = DeviceId::parse(DEV).unwrap();
        let s = introspection_scope(&d, false);
        let tokens: Vec<&str> = s.split(' ').collect();
        assert_eq!(tokens.len(), 4);
        for expected in [
            STABLE_API.to_owned(),
            UNSTABLE_API.to_owned(),
            format!("urn:matrix:client:device:{DEV}"),
            format!("urn:matrix:org.matrix.msc2967.client:device:{DEV}"),
        ] {
            assert!(tokens.contains(&expected.as_str()), "{expected} missing");
        }
        assert!(introspection_scope(&d, true)
            .split(' ')
            .any(|t| t == SYNAPSE_ADMIN_SCOPE));
    }

    #[test]
    fn error_text_is_safe_for_error_description() {
        let e = ScopeError::Unknown("bad\"scope\\ünï".into()).to_string();
        assert!(e
            .chars()
            .all(|c| matches!(c, '\x20'..='\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e')));
        assert!(e.contains("bad?scope?"));
    }
}

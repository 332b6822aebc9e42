//! When a sign-in may skip the consent page.
//!
//! A consent is what the user allowed one client: the scopes, recorded without the device scope
//! (every sign-in names a new device, and the device is not a power over the account). A later
//! request is approved without asking only when
//! - it asks for nothing beyond what was allowed;
//! - it does not ask for `urn:synapse:admin:*`: administering the server is asked for every
//!   time, and never remembered;
//! - the client's identity can be assured. A web client's redirect URI is https on the host it
//!   registered, so the code can only reach that host. A native client's loopback or private-use
//!   redirect can be claimed by any app on the device (RFC 8252 §8.6), so its earlier consent
//!   counts only within `consent.native_remember_seconds` (default 0: always ask).

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::scope::{MatrixScope, SYNAPSE_ADMIN_SCOPE};

/// `[consent]` in the configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsentConfig {
    /// How long a native client's (loopback or private-use redirect) earlier consent spares the
    /// user the page. 0 (the default) asks every time.
    pub native_remember_seconds: u64,
}

/// Longest `consent.native_remember_seconds` `config check` accepts: a short window, not a
/// standing approval.
pub const MAX_NATIVE_REMEMBER_SECONDS: u64 = 3600;

/// The scopes a consent covers, family-independent: the stable and unstable Matrix API scopes
/// grant the same power, so a client switching spelling is not asked again. Device scopes are
/// left out; the admin scope is included when asked for (and [`covers`] never honours it).
pub fn scopes_of(scope: &MatrixScope) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    out.insert("urn:matrix:client:api:*".to_owned());
    if scope.openid_requested() {
        out.insert("openid".to_owned());
    }
    if scope.email_requested() {
        out.insert("email".to_owned());
    }
    if scope.admin_requested() {
        out.insert(SYNAPSE_ADMIN_SCOPE.to_owned());
    }
    out
}

/// What is stored after the user allowed `requested`: the union with what was allowed before,
/// without the admin scope (asked for every time).
pub fn to_remember(previous: &BTreeSet<String>, requested: &BTreeSet<String>) -> String {
    previous
        .union(requested)
        .filter(|s| s.as_str() != SYNAPSE_ADMIN_SCOPE)
        .cloned()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses a stored consent's scopes (space-separated; empty for consents recorded before
/// scopes were, which therefore cover nothing and ask once more).
pub fn parse_stored(stored: &str) -> BTreeSet<String> {
    stored
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A remembered consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    pub scopes: BTreeSet<String>,
    pub granted_at: i64,
}

/// Whether the client's identity is assured by its redirect URI (see the module comment).
pub fn redirect_identifies_client(redirect_uri: &str) -> bool {
    url::Url::parse(redirect_uri).is_ok_and(|u| u.scheme() == "https")
}

/// Whether `remembered` lets this request through without the page.
pub fn covers(
    remembered: Option<&Remembered>,
    requested: &BTreeSet<String>,
    identity_assured: bool,
    native_remember_seconds: u64,
    now: i64,
) -> bool {
    let Some(remembered) = remembered else {
        return false;
    };
    if requested.contains(SYNAPSE_ADMIN_SCOPE) {
        return false;
    }
    if !identity_assured {
        let window = i64::try_from(native_remember_seconds).unwrap_or(i64::MAX);
        if now.saturating_sub(remembered.granted_at) >= window {
            return false;
        }
    }
    requested.is_subset(&remembered.scopes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(s: &str) -> BTreeSet<String> {
        scopes_of(&MatrixScope::parse(s).unwrap())
    }

    const API: &str = "urn:matrix:client:api:* urn:matrix:client:device:DEVICE000001";
    const UNSTABLE: &str =
        "urn:matrix:org.matrix.msc2967.client:api:* urn:matrix:org.matrix.msc2967.client:device:DEVICE000002";

    fn remembered(s: &str, at: i64) -> Remembered {
        Remembered {
            scopes: parse_stored(&to_remember(&BTreeSet::new(), &scopes(s))),
            granted_at: at,
        }
    }

    #[test]
    fn the_same_scopes_on_a_new_device_and_in_the_other_family_are_covered() {
        let r = remembered(API, 0);
        assert!(covers(Some(&r), &scopes(API), true, 0, 100));
        assert!(covers(Some(&r), &scopes(UNSTABLE), true, 0, 100));
    }

    #[test]
    fn more_scopes_than_allowed_ask_again() {
        let r = remembered(API, 0);
        assert!(!covers(
            Some(&r),
            &scopes(&format!("{API} email")),
            true,
            0,
            100
        ));
        assert!(!covers(None, &scopes(API), true, 0, 100));
    }

    #[test]
    fn the_admin_scope_always_asks_and_is_never_remembered() {
        let with_admin = format!("{API} {SYNAPSE_ADMIN_SCOPE}");
        let r = remembered(&with_admin, 0);
        assert!(!r.scopes.contains(SYNAPSE_ADMIN_SCOPE));
        assert!(!covers(Some(&r), &scopes(&with_admin), true, 0, 1));
        // ...while the rest of that consent still counts.
        assert!(covers(Some(&r), &scopes(API), true, 0, 1));
    }

    #[test]
    fn a_native_client_is_remembered_only_within_the_window() {
        let r = remembered(API, 1000);
        assert!(!covers(Some(&r), &scopes(API), false, 0, 1000));
        assert!(covers(Some(&r), &scopes(API), false, 300, 1299));
        assert!(!covers(Some(&r), &scopes(API), false, 300, 1300));
    }

    #[test]
    fn consents_recorded_before_scopes_cover_nothing() {
        let legacy = Remembered {
            scopes: parse_stored(""),
            granted_at: 0,
        };
        assert!(!covers(Some(&legacy), &scopes(API), true, 0, 1));
    }

    #[test]
    fn only_https_redirects_identify_the_client() {
        assert!(redirect_identifies_client("https://app.example.org/cb"));
        assert!(!redirect_identifies_client("http://127.0.0.1:3456/cb"));
        assert!(!redirect_identifies_client("org.example.app:/cb"));
    }
}

//! `[branding]`: who the pages belong to. Every page mxidp shows names the server (or
//! organisation), and may show its logo and links to its support, terms and privacy pages, so a
//! user can tell whose sign-in this is. Unset, the pages name the Matrix server and show no logo
//! or links.

use serde::Deserialize;
use url::Url;

/// Characters of `branding.display_name`: it is a heading, not a paragraph.
pub const DISPLAY_NAME_CHARS: usize = 64;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrandingConfig {
    /// The name shown at the top of every page; default: the Matrix server name.
    pub display_name: Option<String>,
    /// An https image shown next to the name.
    pub logo_url: Option<Url>,
    /// Where users get help: an https page or a `mailto:` address.
    pub support_url: Option<Url>,
    /// The server's terms of service (https).
    pub terms_url: Option<Url>,
    /// The server's privacy policy (https).
    pub policy_url: Option<Url>,
}

impl BrandingConfig {
    /// `(key, problem)` for every value `config check` refuses.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(name) = &self.display_name {
            if name.trim().is_empty()
                || name.chars().count() > DISPLAY_NAME_CHARS
                || name.chars().any(char::is_control)
            {
                out.push((
                    "branding.display_name",
                    format!(
                        "must be 1 to {DISPLAY_NAME_CHARS} characters, without control characters"
                    ),
                ));
            }
        }
        // https only: the pages' Content-Security-Policy loads images from https alone, and a
        // link on a sign-in page must not be downgraded.
        for (key, url) in [
            ("branding.logo_url", &self.logo_url),
            ("branding.terms_url", &self.terms_url),
            ("branding.policy_url", &self.policy_url),
        ] {
            if url.as_ref().is_some_and(|u| u.scheme() != "https") {
                out.push((key, "must be an https URL".into()));
            }
        }
        if self
            .support_url
            .as_ref()
            .is_some_and(|u| !matches!(u.scheme(), "https" | "mailto"))
        {
            out.push((
                "branding.support_url",
                "must be an https URL or a mailto: address".into(),
            ));
        }
        out
    }
}

/// What the pages show, resolved at start.
#[derive(Debug, Clone)]
pub struct Branding {
    pub display_name: String,
    pub logo_url: Option<Url>,
    pub support_url: Option<Url>,
    pub terms_url: Option<Url>,
    pub policy_url: Option<Url>,
}

impl Branding {
    pub fn new(config: &BrandingConfig, server_name: &str) -> Self {
        Self {
            display_name: config
                .display_name
                .clone()
                .unwrap_or_else(|| server_name.to_owned()),
            logo_url: config.logo_url.clone(),
            support_url: config.support_url.clone(),
            terms_url: config.terms_url.clone(),
            policy_url: config.policy_url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_links_and_a_short_name_are_accepted() {
        let ok = BrandingConfig {
            display_name: Some("Example Corp".into()),
            logo_url: Some("https://example.org/logo.png".parse().unwrap()),
            support_url: Some("mailto:help@example.org".parse().unwrap()),
            terms_url: Some("https://example.org/terms".parse().unwrap()),
            policy_url: None,
        };
        assert!(ok.problems().is_empty());
        let bad = BrandingConfig {
            display_name: Some("x".repeat(DISPLAY_NAME_CHARS + 1)),
            logo_url: Some("http://example.org/logo.png".parse().unwrap()),
            support_url: Some("javascript:alert(1)".parse().unwrap()),
            ..Default::default()
        };
        let keys: Vec<_> = bad.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "branding.display_name",
                "branding.logo_url",
                "branding.support_url"
            ]
        );
        assert_eq!(
            Branding::new(&BrandingConfig::default(), "example.org").display_name,
            "example.org"
        );
    }
}

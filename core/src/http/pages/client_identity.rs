//! How a client is named on a page, so that its name cannot impersonate another app.
//!
//! A client chooses its own name: "Element" is one registration away. What mxidp can vouch for
//! is where the answer goes. A web client's redirect URI is https on the host it registered, so
//! that host is shown next to the name, in the heading, where the eye lands. A native client's
//! loopback or private-use redirect proves nothing (any app on the device can listen there), so
//! its name is marked as not verified, and the address it claims is shown as plain text, not as
//! a link that looks checked. Its logo, terms and privacy links are left out for the same
//! reason. A long name is shortened (the full name in a tooltip) so that the misleading part
//! cannot push the rest out of sight.

use url::Url;

use super::escape;
use crate::registration::ClientMetadata;

/// Characters of a client name shown before it is shortened.
pub const NAME_CHARS: usize = 40;

pub struct ClientIdentity {
    /// The name as registered (or the client_uri host when it gave none).
    pub full_name: String,
    /// The host of the https redirect URI the answer goes to; `None` for a native client.
    pub verified_host: Option<String>,
    /// What the client says its home page is.
    pub client_uri: Url,
    logo: Option<Url>,
    tos: Option<Url>,
    policy: Option<Url>,
}

impl ClientIdentity {
    pub fn new(metadata: &ClientMetadata, redirect_uri: &str) -> Self {
        let verified_host = Url::parse(redirect_uri)
            .ok()
            .filter(|u| u.scheme() == "https")
            .and_then(|u| u.host_str().map(str::to_owned));
        let full_name = metadata
            .client_name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| {
                metadata
                    .client_uri
                    .host_str()
                    .unwrap_or("an application")
                    .to_owned()
            });
        let verified = verified_host.is_some();
        Self {
            full_name,
            client_uri: metadata.client_uri.clone(),
            logo: metadata.logo_uri.clone().filter(|_| verified),
            tos: metadata.tos_uri.clone().filter(|_| verified),
            policy: metadata.policy_uri.clone().filter(|_| verified),
            verified_host,
        }
    }

    /// The name, cut to [`NAME_CHARS`] characters with an ellipsis when longer.
    pub fn short_name(&self) -> String {
        if self.full_name.chars().count() <= NAME_CHARS {
            return self.full_name.clone();
        }
        let mut short: String = self.full_name.chars().take(NAME_CHARS - 1).collect();
        short.push('…');
        short
    }

    /// The name in bold; a shortened one carries the full name in its `title`.
    pub fn name_html(&self) -> String {
        let short = self.short_name();
        if short == self.full_name {
            format!("<strong class=\"client-name\">{}</strong>", escape(&short))
        } else {
            format!(
                "<strong class=\"client-name\" title=\"{}\">{}</strong>",
                escape(&self.full_name),
                escape(&short)
            )
        }
    }

    /// The name with what vouches for it: the verified host, or the "not verified" mark.
    pub fn heading_html(&self) -> String {
        match &self.verified_host {
            Some(host) => format!(
                "{} <span class=\"host\">({})</span>",
                self.name_html(),
                escape(host)
            ),
            None => format!(
                "{} <span class=\"unverified\">name not verified</span>",
                self.name_html()
            ),
        }
    }

    /// The client's logo (verified clients only), before the heading.
    pub fn logo_html(&self) -> String {
        self.logo
            .as_ref()
            .map(|u| {
                format!(
                    "<img class=\"client-logo\" src=\"{}\" alt=\"\">",
                    escape(u.as_str())
                )
            })
            .unwrap_or_default()
    }

    /// Where the client comes from: a link (new tab) for a verified client, a warning with the
    /// claimed address as text for a native one.
    pub fn origin_html(&self) -> String {
        match &self.verified_host {
            Some(host) => {
                let mut out = format!(
                    "<p class=\"meta\">After you answer, you go back to <strong>{}</strong>. \
<a href=\"{}\" target=\"_blank\" rel=\"noopener noreferrer\">About this app</a>",
                    escape(host),
                    escape(self.client_uri.as_str())
                );
                for (label, url) in [
                    ("Terms of service", &self.tos),
                    ("Privacy policy", &self.policy),
                ] {
                    if let Some(url) = url {
                        out.push_str(&format!(
                            " · <a href=\"{}\" target=\"_blank\" rel=\"noopener noreferrer\">{label}</a>",
                            escape(url.as_str())
                        ));
                    }
                }
                out.push_str("</p>");
                out
            }
            None => {
                format!(
                "<p class=\"warning\">This is an app installed on a device, and its name is not \
verified: it calls itself {} and says it comes from <span class=\"claimed\">{}</span>, but any app \
can say that. Continue only if you started this sign-in yourself, from an app you trust.</p>",
                self.name_html(),
                // The host only: a claimed path of up to 2 KB would bury the warning.
                escape(self.client_uri.host_str().unwrap_or(self.client_uri.as_str()))
            )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(name: &str, redirect: &str) -> ClientMetadata {
        ClientMetadata {
            redirect_uris: vec![redirect.parse().unwrap()],
            client_uri: "https://app.element.io/".parse().unwrap(),
            client_name: Some(name.into()),
            logo_uri: Some("https://app.element.io/logo.png".parse().unwrap()),
            tos_uri: None,
            policy_uri: None,
            application_type: crate::registration::ApplicationType::Native,
            grant_types: vec![],
        }
    }

    #[test]
    fn a_long_name_is_shortened_with_the_full_name_in_the_title() {
        let name = "A".repeat(200);
        let id = ClientIdentity::new(
            &metadata(&name, "https://x.example/cb"),
            "https://x.example/cb",
        );
        assert_eq!(id.short_name().chars().count(), NAME_CHARS);
        assert!(id.name_html().contains(&format!("title=\"{name}\"")));
    }

    #[test]
    fn a_native_client_gets_no_link_logo_or_host() {
        let id = ClientIdentity::new(
            &metadata("Element", "http://127.0.0.1/cb"),
            "http://127.0.0.1:5555/cb",
        );
        assert!(id.verified_host.is_none());
        assert!(id.heading_html().contains("not verified"));
        assert!(!id.origin_html().contains("<a "));
        assert!(id.logo_html().is_empty());
    }

    #[test]
    fn markup_in_a_name_is_escaped() {
        let id = ClientIdentity::new(
            &metadata("<img src=x onerror=alert(1)>", "https://x.example/cb"),
            "https://x.example/cb",
        );
        assert!(!id.heading_html().contains("<img"));
    }
}

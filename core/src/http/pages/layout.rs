//! The one document every page is rendered into: the server's name (and logo) at the top, the
//! page in `<main>`, the server's support, terms and privacy links at the bottom.
//!
//! Robust on any screen: a word as long as registration allows (a 256-character name without
//! spaces, a 2 KiB URI) wraps anywhere instead of widening the page; buttons and the links of
//! the footer are at least 44 px high; dark mode follows the system.

use super::escape;
use crate::branding::Branding;

const STYLE: &str = "\
:root{color-scheme:light dark;--fg:#1b1d22;--bg:#fff;--muted:#5a6270;--border:#d0d4da;\
--accent:#0b6e4f;--on-accent:#fff;--warn-bg:#fff4e5;--warn-fg:#6b3600;--warn-border:#e59a3c;\
--code:#f1f3f5}\
@media (prefers-color-scheme:dark){:root{--fg:#e8eaed;--bg:#15171a;--muted:#a7adb7;\
--border:#3a3f47;--accent:#4cd7a0;--on-accent:#0b1f17;--warn-bg:#35260f;--warn-fg:#ffd9a8;\
--warn-border:#b36b00;--code:#25282d}}\
*{box-sizing:border-box}\
html{-webkit-text-size-adjust:100%}\
body{margin:0;background:var(--bg);color:var(--fg);font-family:system-ui,-apple-system,\"Segoe UI\",Roboto,sans-serif;\
line-height:1.5;overflow-wrap:anywhere;word-break:break-word}\
header.site,footer.site,main{max-width:34rem;margin:0 auto;padding:1rem}\
header.site{display:flex;align-items:center;gap:.6rem;font-weight:600}\
header.site img{width:32px;height:32px;object-fit:contain;flex:none}\
main{padding-top:0}\
.card{border:1px solid var(--border);border-radius:12px;padding:1.25rem}\
h1{font-size:1.35rem;line-height:1.3;margin:0 0 1rem}h2{font-size:1.1rem;margin:1.25rem 0 .5rem}\
a{color:var(--accent)}\
.host,.meta{color:var(--muted)}\
.host{font-weight:400}\
.meta{font-size:.9rem}\
.unverified{font-weight:400;font-size:.9rem;color:var(--warn-fg);background:var(--warn-bg);\
border:1px solid var(--warn-border);border-radius:6px;padding:0 .35rem;white-space:nowrap}\
.warning{background:var(--warn-bg);color:var(--warn-fg);border:1px solid var(--warn-border);\
border-radius:8px;padding:.6rem .8rem;margin:.5rem 0}\
ul{padding-left:1.25rem}ul .warning{list-style:none;margin-left:-1.25rem}\
img.client-logo{width:48px;height:48px;object-fit:contain;float:right;margin:0 0 .5rem .75rem}\
.actions{display:flex;flex-wrap:wrap;gap:.75rem;margin-top:1.25rem}\
button,a.button{font:inherit;min-height:44px;min-width:44px;padding:.55rem 1.2rem;border-radius:8px;\
border:1px solid var(--border);background:transparent;color:var(--fg);cursor:pointer;\
display:inline-flex;align-items:center;justify-content:center;text-decoration:none}\
button.primary,a.button.primary{background:var(--accent);border-color:var(--accent);color:var(--on-accent)}\
button.danger{background:#b42318;border-color:#b42318;color:#fff}\
button.link{border:0;padding:0 .25rem;color:var(--accent);text-decoration:underline;font-size:inherit}\
code{background:var(--code);padding:.1rem .3rem;border-radius:4px}\
footer.site{display:flex;flex-wrap:wrap;gap:0 1.25rem;font-size:.9rem;color:var(--muted)}\
footer.site a{display:inline-block;min-height:44px;line-height:44px}\
@media (max-width:30rem){.actions{flex-direction:column}.actions button,.actions a.button{width:100%}\
.card a{display:inline-block;min-height:44px;line-height:44px}}";

/// The whole HTML document. `main` is markup already escaped by its maker.
pub fn document(branding: &Branding, title: &str, main: &str) -> String {
    let server = escape(&branding.display_name);
    let logo = branding
        .logo_url
        .as_ref()
        .map(|u| format!("<img src=\"{}\" alt=\"\">", escape(u.as_str())))
        .unwrap_or_default();
    let mut links = Vec::new();
    for (label, url) in [
        ("Help", &branding.support_url),
        ("Terms of service", &branding.terms_url),
        ("Privacy policy", &branding.policy_url),
    ] {
        if let Some(url) = url {
            links.push(format!(
                "<a href=\"{}\" target=\"_blank\" rel=\"noopener noreferrer\">{label}</a>",
                escape(url.as_str())
            ));
        }
    }
    let footer = if links.is_empty() {
        String::new()
    } else {
        format!("<footer class=\"site\">{}</footer>", links.join(""))
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"referrer\" content=\"no-referrer\"><meta name=\"color-scheme\" content=\"light dark\">\
<title>{title} · {server}</title><style>{STYLE}</style></head>\
<body><header class=\"site\">{logo}<span class=\"server\">{server}</span></header>\
<main><div class=\"card\">{main}</div></main>{footer}</body></html>",
        title = escape(title),
    )
}

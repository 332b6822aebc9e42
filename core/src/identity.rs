//! From IdP claims to a Matrix user (docs/identity.md): the localpart template, sanitising, conflict
//! candidates, access and admin policies, display name and e-mail.
//!
//! Nothing here picks the user: users are keyed on (provider, subject). These functions only
//! propose a localpart for a *new* subject and read profile data on each login.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::ids::{IdError, Localpart};

/// Why a claim could not be turned into a Matrix identity. Messages name claims, never their
/// values: values are personal data and errors end up in logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("invalid template: {0}")]
    TemplateSyntax(String),
    #[error("template has no {{{{ claim }}}} placeholder")]
    TemplateWithoutClaim,
    #[error("claim `{0}` is missing")]
    MissingClaim(String),
    #[error("claim `{0}` is not a string or number")]
    ClaimNotText(String),
    #[error("nothing usable as a Matrix localpart is left after sanitising")]
    EmptyLocalpart,
    #[error("the sanitised localpart is all digits, which Matrix reserves for guests")]
    AllDigitsLocalpart,
    #[error("invalid localpart: {0}")]
    InvalidLocalpart(#[from] IdError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Claim(String),
}

/// A template over claims: literal text and `{{ claim }}` placeholders, e.g.
/// `{{ preferred_username }}` or `staff.{{ user.name }}`. A dotted name walks into nested
/// objects; a claim whose own name contains dots (Auth0 namespaced claims such as
/// `https://example.com/username`) is found too, see [`lookup_claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalpartTemplate {
    segments: Vec<Segment>,
}

impl LocalpartTemplate {
    pub fn parse(template: &str) -> Result<Self, MappingError> {
        let mut segments = Vec::new();
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                segments.push(Segment::Literal(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| MappingError::TemplateSyntax("`{{` without closing `}}`".into()))?;
            let name = after[..end].trim();
            if name.is_empty() {
                return Err(MappingError::TemplateSyntax("empty `{{ }}`".into()));
            }
            if name
                .chars()
                .any(|c| c.is_whitespace() || c == '{' || c == '}')
            {
                return Err(MappingError::TemplateSyntax(format!(
                    "`{name}` is not a claim name (filters and expressions are not supported)"
                )));
            }
            if name.split('.').any(str::is_empty) {
                return Err(MappingError::TemplateSyntax(format!(
                    "`{name}` has an empty path segment"
                )));
            }
            segments.push(Segment::Claim(name.to_owned()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Literal(rest.to_owned()));
        }
        // A template without a claim would give every user the same name.
        if !segments.iter().any(|s| matches!(s, Segment::Claim(_))) {
            return Err(MappingError::TemplateWithoutClaim);
        }
        Ok(Self { segments })
    }

    /// The claim names the template reads.
    pub fn claims(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Claim(name) => Some(name.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Fills the placeholders. Strings are used as they are, numbers in their JSON form; a
    /// missing or `null` claim is an error naming it. The result is not sanitised.
    pub fn render(&self, claims: &Map<String, Value>) -> Result<String, MappingError> {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Claim(name) => match lookup_claim(claims, name) {
                    None | Some(Value::Null) => {
                        return Err(MappingError::MissingClaim(name.clone()))
                    }
                    Some(Value::String(s)) => out.push_str(s),
                    Some(Value::Number(n)) => out.push_str(&n.to_string()),
                    Some(_) => return Err(MappingError::ClaimNotText(name.clone())),
                },
            }
        }
        Ok(out)
    }
}

/// Finds a claim by a possibly dotted name. An exact key wins (so `https://example.com/roles`
/// works); otherwise the name is split at a dot whose left part is an object key, and the search
/// continues inside that object.
pub fn lookup_claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    name.match_indices('.').find_map(|(i, _)| {
        let inner = claims.get(&name[..i])?.as_object()?;
        lookup_claim(inner, &name[i + 1..])
    })
}

/// What replaces characters a localpart cannot hold. Not `_`: a leading `_` is reserved
/// (application services) and Synapse refuses it by default.
const REPLACEMENT: char = '.';

/// Turns a rendered claim into a localpart, or says why it cannot.
///
/// - `keep_before_at`: for e-mail-like values (Okta and ZITADEL often put one in
///   `preferred_username`) keep only the part before the last `@`.
/// - ASCII letters are lowercased; every other character outside `[a-z0-9._=/+-]`, including
///   all non-ASCII (nothing is transliterated, and Unicode case mapping is not applied because
///   e.g. the Kelvin sign would lowercase to `k`), becomes `.`.
/// - Runs of `.` collapse to one, and leading/trailing `.`, `-`, `_` are trimmed.
/// - Empty and all-digit results are errors: a name is never invented.
pub fn sanitize_localpart(raw: &str, keep_before_at: bool) -> Result<Localpart, MappingError> {
    let value = match raw.rfind('@') {
        Some(at) if keep_before_at => &raw[..at],
        _ => raw,
    };
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii() && crate::ids::is_localpart_byte(c as u8) {
            c
        } else {
            REPLACEMENT
        };
        if c == REPLACEMENT && out.ends_with(REPLACEMENT) {
            continue;
        }
        out.push(c);
    }
    let trimmed = out.trim_matches(|c| matches!(c, '.' | '-' | '_'));
    if trimmed.is_empty() {
        return Err(MappingError::EmptyLocalpart);
    }
    if trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MappingError::AllDigitsLocalpart);
    }
    Ok(Localpart::parse(trimmed)?)
}

/// What to do when the proposed localpart is taken (docs/identity.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConflictPolicy {
    /// Refuse the login; an operator resolves it. Never link to the existing user silently.
    #[default]
    Fail,
    /// Try `base`, then `base-2`, `base-3`, … up to `base-{max}`.
    Suffix { max: u32 },
}

/// The localparts to try, in order, for a new subject. Candidates that would not be valid
/// localparts (too long) are skipped; the caller still checks the full Matrix ID length with
/// [`Localpart::check_length`] and availability at the homeserver.
pub fn candidates(base: &Localpart, policy: ConflictPolicy) -> impl Iterator<Item = Localpart> {
    let max = match policy {
        ConflictPolicy::Fail => 1,
        ConflictPolicy::Suffix { max } => max,
    };
    let base = base.clone();
    std::iter::once(base.clone()).chain(
        (2..=max).filter_map(move |n| Localpart::parse(&format!("{}-{n}", base.as_str())).ok()),
    )
}

/// A claim condition: `claim` (dotted path allowed) must equal `value`, or contain it when the
/// claim is an array. Strings, booleans and numbers compare by their text (`"true"`, `"42"`).
/// The claim name `roles` means the roles the provider adapter extracted (Keycloak realm and
/// client roles, Okta groups, …), not a raw claim.
fn condition_holds(
    claim: &str,
    value: &str,
    claims: &Map<String, Value>,
    roles: &[String],
) -> bool {
    if claim == "roles" {
        return roles.iter().any(|r| r == value);
    }
    let scalar_matches = |v: &Value| match v {
        Value::String(s) => s == value,
        Value::Bool(b) => b.to_string() == value,
        Value::Number(n) => n.to_string() == value,
        _ => false,
    };
    match lookup_claim(claims, claim) {
        Some(Value::Array(items)) => items.iter().any(scalar_matches),
        Some(v) => scalar_matches(v),
        None => false,
    }
}

/// Who may use Matrix at all. Without a configured policy everyone the IdP authenticates may.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AccessPolicy {
    pub claim: String,
    pub value: String,
}

impl AccessPolicy {
    pub fn allows(&self, claims: &Map<String, Value>, roles: &[String]) -> bool {
        condition_holds(&self.claim, &self.value, claims, roles)
    }
}

/// Who gets `urn:synapse:admin:*` (when the client asks for it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AdminPolicy {
    pub claim: String,
    pub value: String,
}

impl AdminPolicy {
    pub fn allows(&self, claims: &Map<String, Value>, roles: &[String]) -> bool {
        condition_holds(&self.claim, &self.value, claims, roles)
    }
}

/// Synapse refuses longer display names (`MAX_DISPLAYNAME_LEN`, 256).
const MAX_DISPLAY_NAME_CHARS: usize = 256;

/// The display name to sync: the template if one is configured and renders, else `name`, else
/// `preferred_username`. A template that fails for this user falls back rather than blocking
/// the login: a display name is cosmetic. Whitespace is trimmed and the result capped at 256
/// characters; nothing usable gives `None` (leave the current display name alone).
pub fn display_name(
    claims: &Map<String, Value>,
    template: Option<&LocalpartTemplate>,
) -> Option<String> {
    let tidy = |s: &str| {
        let s = s.trim();
        (!s.is_empty()).then(|| s.chars().take(MAX_DISPLAY_NAME_CHARS).collect::<String>())
    };
    template
        .and_then(|t| t.render(claims).ok())
        .and_then(|s| tidy(&s))
        .or_else(|| claims.get("name").and_then(Value::as_str).and_then(tidy))
        .or_else(|| {
            claims
                .get("preferred_username")
                .and_then(Value::as_str)
                .and_then(tidy)
        })
}

/// The e-mail addresses to sync. Synapse stores them as *validated* 3PIDs (usable for password
/// reset elsewhere, invites, lookups), so an address counts only when the IdP asserts
/// `email_verified: true` (JSON boolean). A missing `email_verified` is not taken as verified:
/// some IdPs let users type any address.
///
/// An address Synapse would refuse is skipped (see [`synapse_accepts_email`]): profile data
/// never blocks a sign-in. The caller logs it.
pub fn verified_emails(claims: &Map<String, Value>) -> Vec<String> {
    let verified = claims.get("email_verified") == Some(&Value::Bool(true));
    match claims.get("email").and_then(Value::as_str).map(str::trim) {
        Some(email) if verified && synapse_accepts_email(email) => vec![email.to_owned()],
        _ => Vec::new(),
    }
}

/// Whether Synapse can parse the address as a 3PID: it splits on `@` and wants exactly two
/// non-empty parts, and refuses over 500 characters (its `MAX_EMAIL_ADDRESS_LENGTH`); an address
/// with white space or control characters is no address either. Otherwise Synapse answers 400
/// "Unable to parse email address" and the whole provisioning fails.
pub fn synapse_accepts_email(email: &str) -> bool {
    let mut parts = email.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && email.len() <= 500
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn emails_synapse_would_refuse_are_skipped() {
        for bad in [
            "a@b@c",
            "@example.org",
            "alice@",
            "al ice@example.org",
            "no-at-sign",
        ] {
            assert!(!synapse_accepts_email(bad), "{bad}");
            let c = claims(json!({"email": bad, "email_verified": true}));
            assert_eq!(verified_emails(&c), Vec::<String>::new(), "{bad}");
        }
        assert!(synapse_accepts_email("alice@example.org"));
        assert!(!synapse_accepts_email(&format!(
            "{}@example.org",
            "a".repeat(500)
        )));
    }

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("claims must be an object"),
        }
    }

    fn lp(s: &str) -> Localpart {
        Localpart::parse(s).unwrap()
    }

    #[test]
    fn template_renders_preferred_username() {
        let t = LocalpartTemplate::parse("{{ preferred_username }}").unwrap();
        let c = claims(json!({"preferred_username": "alice", "sub": "123"}));
        assert_eq!(t.render(&c).unwrap(), "alice");
        let tight = LocalpartTemplate::parse("{{preferred_username}}").unwrap();
        assert_eq!(tight.render(&c).unwrap(), "alice");
    }

    #[test]
    fn template_with_literals_and_dotted_path() {
        let t = LocalpartTemplate::parse("staff.{{ user.name }}-{{ employee_no }}").unwrap();
        let c = claims(json!({"user": {"name": "bob"}, "employee_no": 42}));
        assert_eq!(t.render(&c).unwrap(), "staff.bob-42");
    }

    #[test]
    fn template_finds_claim_names_with_dots() {
        let t = LocalpartTemplate::parse("{{ https://example.com/username }}").unwrap();
        let c = claims(json!({"https://example.com/username": "carol"}));
        assert_eq!(t.render(&c).unwrap(), "carol");
    }

    #[test]
    fn missing_claim_is_named() {
        let t = LocalpartTemplate::parse("{{ user.login }}").unwrap();
        let err = t.render(&claims(json!({"user": {}}))).unwrap_err();
        assert_eq!(err, MappingError::MissingClaim("user.login".into()));
        assert!(err.to_string().contains("user.login"));
        let null = t.render(&claims(json!({"user": {"login": null}})));
        assert_eq!(null, Err(MappingError::MissingClaim("user.login".into())));
        let t = LocalpartTemplate::parse("{{ groups }}").unwrap();
        assert_eq!(
            t.render(&claims(json!({"groups": ["a"]}))),
            Err(MappingError::ClaimNotText("groups".into()))
        );
    }

    #[test]
    fn template_syntax_errors() {
        assert!(matches!(
            LocalpartTemplate::parse("{{ preferred_username"),
            Err(MappingError::TemplateSyntax(_))
        ));
        assert!(matches!(
            LocalpartTemplate::parse("{{ }}"),
            Err(MappingError::TemplateSyntax(_))
        ));
        assert!(matches!(
            LocalpartTemplate::parse("{{ name | lower }}"),
            Err(MappingError::TemplateSyntax(_))
        ));
        assert!(matches!(
            LocalpartTemplate::parse("{{ a..b }}"),
            Err(MappingError::TemplateSyntax(_))
        ));
        assert_eq!(
            LocalpartTemplate::parse("everyone"),
            Err(MappingError::TemplateWithoutClaim)
        );
    }

    #[test]
    fn email_like_username_keeps_part_before_at() {
        assert_eq!(
            sanitize_localpart("John.Doe@Example.COM", true).unwrap(),
            lp("john.doe")
        );
        // Without keep_before_at the domain stays, with `@` replaced.
        assert_eq!(
            sanitize_localpart("John.Doe@Example.COM", false).unwrap(),
            lp("john.doe.example.com")
        );
    }

    #[test]
    fn unicode_name_sanitised_sensibly() {
        // Non-ASCII becomes a separator; nothing is transliterated or invented.
        assert_eq!(
            sanitize_localpart("Ünïcode Name", true).unwrap(),
            lp("n.code.name")
        );
        assert_eq!(
            sanitize_localpart("  José   García ", true).unwrap(),
            lp("jos.garc.a")
        );
        // The Kelvin sign is not a `k`.
        assert_eq!(
            sanitize_localpart("\u{212A}elvin", true).unwrap(),
            lp("elvin")
        );
        assert_eq!(
            sanitize_localpart("日本語", true),
            Err(MappingError::EmptyLocalpart)
        );
    }

    #[test]
    fn valid_localparts_pass_unchanged() {
        assert_eq!(
            sanitize_localpart("a+b=c/d-e_f", true).unwrap(),
            lp("a+b=c/d-e_f")
        );
    }

    #[test]
    fn leading_underscore_and_separators_trimmed() {
        assert_eq!(sanitize_localpart("_bot_", true).unwrap(), lp("bot"));
        assert_eq!(sanitize_localpart("-.alice.-", true).unwrap(), lp("alice"));
    }

    #[test]
    fn all_digit_result_is_an_error() {
        assert_eq!(
            sanitize_localpart("12345", true),
            Err(MappingError::AllDigitsLocalpart)
        );
        assert_eq!(
            sanitize_localpart("12345@example.com", true),
            Err(MappingError::AllDigitsLocalpart)
        );
        assert_eq!(
            sanitize_localpart("__", true),
            Err(MappingError::EmptyLocalpart)
        );
        assert_eq!(
            sanitize_localpart("", true),
            Err(MappingError::EmptyLocalpart)
        );
    }

    #[test]
    fn too_long_is_an_error_not_truncated() {
        assert_eq!(
            sanitize_localpart(&"a".repeat(300), true),
            Err(MappingError::InvalidLocalpart(IdError::LocalpartTooLong))
        );
    }

    #[test]
    fn suffix_candidates() {
        let got: Vec<String> = candidates(&lp("alice"), ConflictPolicy::Suffix { max: 4 })
            .map(|l| l.to_string())
            .collect();
        assert_eq!(got, ["alice", "alice-2", "alice-3", "alice-4"]);
    }

    #[test]
    fn fail_policy_gives_only_the_base() {
        let got: Vec<Localpart> = candidates(&lp("alice"), ConflictPolicy::Fail).collect();
        assert_eq!(got, vec![lp("alice")]);
        assert_eq!(ConflictPolicy::default(), ConflictPolicy::Fail);
    }

    #[test]
    fn suffix_candidates_skip_invalid_ones() {
        let base = lp(&"a".repeat(251));
        let got: Vec<Localpart> = candidates(&base, ConflictPolicy::Suffix { max: 3 }).collect();
        assert_eq!(got, vec![base]);
    }

    #[test]
    fn access_policy_on_string_array_and_nested_claims() {
        let c = claims(json!({
            "department": "eng",
            "groups": ["matrix-users", "staff"],
            "org": {"tier": "gold"},
            "matrix_enabled": true
        }));
        let p = |claim: &str, value: &str| AccessPolicy {
            claim: claim.into(),
            value: value.into(),
        };
        assert!(p("department", "eng").allows(&c, &[]));
        assert!(!p("department", "sales").allows(&c, &[]));
        assert!(p("groups", "matrix-users").allows(&c, &[]));
        assert!(!p("groups", "matrix").allows(&c, &[]));
        assert!(p("org.tier", "gold").allows(&c, &[]));
        assert!(p("matrix_enabled", "true").allows(&c, &[]));
        assert!(!p("absent", "x").allows(&c, &[]));
    }

    #[test]
    fn roles_claim_uses_the_extracted_roles() {
        let c = claims(json!({"roles": ["matrix-admin"]}));
        let admin = AdminPolicy {
            claim: "roles".into(),
            value: "matrix-admin".into(),
        };
        assert!(admin.allows(&claims(json!({})), &["matrix-admin".into()]));
        // The raw `roles` claim is not what counts.
        assert!(!admin.allows(&c, &[]));
    }

    #[test]
    fn display_name_defaults() {
        let both = claims(json!({"name": " Alice Smith ", "preferred_username": "alice"}));
        assert_eq!(display_name(&both, None).as_deref(), Some("Alice Smith"));
        let only_user = claims(json!({"preferred_username": "alice", "name": ""}));
        assert_eq!(display_name(&only_user, None).as_deref(), Some("alice"));
        assert_eq!(display_name(&claims(json!({})), None), None);
    }

    #[test]
    fn display_name_template_and_fallback() {
        let t = LocalpartTemplate::parse("{{ given_name }} {{ family_name }}").unwrap();
        let c = claims(json!({"given_name": "Ada", "family_name": "Lovelace", "name": "X"}));
        assert_eq!(display_name(&c, Some(&t)).as_deref(), Some("Ada Lovelace"));
        let missing = claims(json!({"name": "Ada L."}));
        assert_eq!(display_name(&missing, Some(&t)).as_deref(), Some("Ada L."));
        let long = claims(json!({"name": "x".repeat(300)}));
        assert_eq!(
            display_name(&long, None).map(|s| s.chars().count()),
            Some(256)
        );
    }

    #[test]
    fn emails_need_email_verified_true() {
        let ok = claims(json!({"email": "a@example.com", "email_verified": true}));
        assert_eq!(verified_emails(&ok), vec!["a@example.com".to_string()]);
        let absent = claims(json!({"email": "a@example.com"}));
        assert!(verified_emails(&absent).is_empty());
        let unverified = claims(json!({"email": "a@example.com", "email_verified": false}));
        assert!(verified_emails(&unverified).is_empty());
        let stringly = claims(json!({"email": "a@example.com", "email_verified": "true"}));
        assert!(verified_emails(&stringly).is_empty());
    }
}

//! Project roles from ZITADEL's claims.
//!
//! `urn:zitadel:iam:org:project:roles` holds the roles of the project of the client that signed
//! in (mxidp's), `urn:zitadel:iam:org:project:<projectId>:roles` those of each project asked for
//! with `urn:zitadel:iam:org:projects:roles`. Both map a role key to the organisations that
//! granted it: `{"matrix-admin": {"336392597046099971": "acme.zitadel.cloud"}}`.

use std::collections::BTreeSet;

use mxidp_core::provider::Claims;
use serde_json::Value;

const PREFIX: &str = "urn:zitadel:iam:org:project:";
const SUFFIX: &str = ":roles";

/// The role keys the user holds. `project`: per-project claims of other projects are ignored.
/// `organization`: only roles granted by that organisation count (a role another organisation
/// granted through a project grant does not make an admin here).
pub fn project_roles(
    claims: &Claims,
    project: Option<&str>,
    organization: Option<&str>,
) -> Vec<String> {
    let mut roles = BTreeSet::new();
    for (name, value) in claims {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let wanted = match rest.strip_suffix(SUFFIX) {
            // `…:project:roles`: the client's own project.
            None if rest == "roles" => true,
            Some(id) if !id.is_empty() && !id.contains(':') => project.is_none_or(|p| p == id),
            _ => false,
        };
        if !wanted {
            continue;
        }
        let Some(grants) = value.as_object() else {
            continue;
        };
        for (role, orgs) in grants {
            let granted_here = match organization {
                None => true,
                Some(org) => orgs.as_object().is_some_and(|o| o.contains_key(org)),
            };
            if granted_here {
                roles.insert(role.clone());
            }
        }
    }
    roles.into_iter().collect()
}

/// Whether a value is ZITADEL's role claim shape (tests and the double share it).
pub fn is_role_claim(value: &Value) -> bool {
    value
        .as_object()
        .is_some_and(|roles| roles.values().all(Value::is_object))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: Value) -> Claims {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn both_claim_shapes_give_role_keys() {
        let c = claims(json!({
            "sub": "1",
            "urn:zitadel:iam:org:project:roles": {
                "matrix-admin": {"100": "acme.zitadel.cloud"}
            },
            "urn:zitadel:iam:org:project:200:roles": {
                "editor": {"100": "acme.zitadel.cloud"},
                "viewer": {"300": "globex.zitadel.cloud"}
            },
            "urn:zitadel:iam:org:project:201:roles": {"other-app": {"100": "acme"}},
            // Not role claims.
            "urn:zitadel:iam:org:project:roles:extra": {"x": {}},
            "roles": ["spoofed"],
        }));
        assert!(is_role_claim(&c["urn:zitadel:iam:org:project:roles"]));
        assert_eq!(
            project_roles(&c, None, None),
            ["editor", "matrix-admin", "other-app", "viewer"]
        );
        // Only project 200 (and mxidp's own project's claim).
        assert_eq!(
            project_roles(&c, Some("200"), None),
            ["editor", "matrix-admin", "viewer"]
        );
        // Only grants of organisation 100.
        assert_eq!(
            project_roles(&c, Some("200"), Some("100")),
            ["editor", "matrix-admin"]
        );
    }

    #[test]
    fn malformed_role_claims_give_nothing() {
        let c = claims(json!({
            "urn:zitadel:iam:org:project:roles": ["matrix-admin"],
            "urn:zitadel:iam:org:project:200:roles": "matrix-admin",
        }));
        assert!(project_roles(&c, None, None).is_empty());
        // A role whose organisations are not an object counts only without an org restriction.
        let c = claims(json!({"urn:zitadel:iam:org:project:roles": {"r": "x"}}));
        assert_eq!(project_roles(&c, None, None), ["r"]);
        assert!(project_roles(&c, None, Some("100")).is_empty());
    }
}

//! The JSON bodies `deploy/okta/setup.sh` sends have the shape of Okta's documented requests
//! (the fixtures beside this file, from Okta's API reference), and the Event Hook subscribes to
//! exactly the event types the adapter acts on.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

fn deploy(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/okta")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// The object keys of `value` as dotted paths (array contents left out).
fn paths(value: &Value) -> BTreeSet<String> {
    fn walk(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        if let Value::Object(map) = value {
            for (k, v) in map {
                let path = format!("{prefix}{k}");
                out.insert(path.clone());
                walk(v, &format!("{path}."), out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(value, "", &mut out);
    out
}

#[test]
fn the_event_hook_body_is_oktas_create_request_with_the_adapters_event_types() {
    let ours = deploy("event-hook.json");
    let documented = fixture(include_str!(
        "fixtures/event_hook_management_create_request.json"
    ));
    assert_eq!(paths(&ours), paths(&documented));
    assert_eq!(ours["channel"]["config"]["authScheme"]["type"], "HEADER");
    let types: Vec<&str> = ours["events"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(types, mxidp_okta::log_event::EVENT_TYPES);
}

#[test]
fn the_app_body_is_an_oidc_web_app_in_oktas_documented_shape() {
    let ours = deploy("app.json");
    let documented = fixture(include_str!(
        "fixtures/apps_api_create_oidc_app_request.json"
    ));
    assert_eq!(ours["name"], documented["name"]);
    assert_eq!(ours["signOnMode"], documented["signOnMode"]);
    // Every key ours sends is one Okta's example sends, except two documented settings of
    // OIDC apps the example leaves out.
    let extra: BTreeSet<String> = paths(&ours)
        .difference(&paths(&documented))
        .cloned()
        .collect();
    assert_eq!(
        extra,
        BTreeSet::from([
            "settings.oauthClient.consent_method".to_owned(),
            "settings.oauthClient.pkce_required".to_owned(),
        ])
    );
    assert_eq!(ours["settings"]["oauthClient"]["application_type"], "web");
    assert_eq!(
        ours["settings"]["oauthClient"]["grant_types"],
        serde_json::json!(["authorization_code", "refresh_token"])
    );
}

#[test]
fn the_groups_claim_goes_into_id_tokens() {
    let claim = deploy("groups-claim.json");
    assert_eq!(claim["name"], "groups");
    assert_eq!(claim["claimType"], "IDENTITY");
    assert_eq!(claim["valueType"], "GROUPS");
}

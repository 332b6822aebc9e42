//! The entry points of the fuzz targets: every parser that takes bytes from outside, each as a
//! function that must return (refusing the input is fine) and never panic, whatever the bytes.
//!
//! `fuzz/` runs them under libFuzzer (coverage-guided, long runs; SECURITY.md has the
//! commands); [`smoke`] runs each over its committed seed corpus and a few thousand seeded
//! mutations in the ordinary test suite, so a parser that starts to panic fails `cargo test`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};

use crate::jwt::{check_claims, verify_jwt, JwtRules};
use crate::upstream::JwksCache;

/// A fuzz target: takes any bytes, never panics.
pub type Target = fn(&[u8]);

/// The targets, by the name of their corpus folder (`fuzz/corpus/<name>`).
pub const TARGETS: &[(&str, Target)] = &[
    ("jws", jws),
    ("jwt_claims", jwt_claims),
    ("registration", registration),
    ("scope", scope),
    ("forms", forms),
    ("receivers", receivers),
    ("config", config),
    ("tokens", tokens),
];

/// A compact JWS through the one JWT verifier, against a fixed key set (no network): segments,
/// base64url, header JSON, algorithm allow-list, `crit`, `kid` lookup, signature, claims.
pub fn jws(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let runtime = runtime();
    let rules = rules();
    let _ = runtime.block_on(verify_jwt(token, keys(), &ALGORITHMS, &rules));
}

/// The claim checks after a good signature: the input is `{"header": {...}, "claims": {...}}`.
pub fn jwt_claims(data: &[u8]) {
    let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let header = match doc.remove("header") {
        Some(Value::Object(h)) => h,
        _ => Map::new(),
    };
    let claims = match doc.remove("claims") {
        Some(Value::Object(c)) => c,
        _ => Map::new(),
    };
    let _ = check_claims(&header, claims, &rules());
}

/// A dynamic client registration body (MSC2966 rules, bounds).
pub fn registration(data: &[u8]) {
    if let Ok(request) =
        serde_json::from_slice::<crate::registration::ClientRegistrationRequest>(data)
    {
        let _ = crate::registration::validate(request);
    }
}

/// A Matrix scope string (both families, device, admin).
pub fn scope(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(scope) = crate::scope::MatrixScope::parse(text) {
            let _ = scope.granted_string(true);
        }
    }
}

/// The form bodies of the token, revocation and consent endpoints and the logout receiver.
pub fn forms(data: &[u8]) {
    let _ = serde_urlencoded::from_bytes::<crate::http::token::TokenForm>(data);
    let _ = serde_urlencoded::from_bytes::<crate::http::revoke::RevokeForm>(data);
    let _ = serde_urlencoded::from_bytes::<crate::http::consent::ConsentForm>(data);
    let _ = crate::receivers::backchannel_logout::logout_token(data);
}

/// What the receivers read from a verified token or body: RFC 9493 subject identifiers, SET
/// event types, event timestamps, the compact token of a body.
pub fn receivers(data: &[u8]) {
    let _ = crate::receivers::body_token(data);
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let _ = crate::receivers::SubjectId::parse(&value);
    let _ = crate::receivers::event_timestamp(Some(&value));
    if let Some(events) = value.get("events").and_then(Value::as_object) {
        for name in events.keys() {
            let _ = crate::receivers::ssf::event_for(name, "subject".into());
        }
    }
}

/// A configuration file (TOML), then its checks.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = crate::config::Config::from_toml_str(text) {
            let _ = config.check();
        }
    }
}

/// mxidp's own token format check.
pub fn tokens(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::tokens::recognise(text);
    }
}

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

fn rules() -> JwtRules<'static> {
    static AUDIENCES: OnceLock<Vec<String>> = OnceLock::new();
    JwtRules {
        types: &[Some("logout+jwt"), Some("secevent+jwt"), None],
        issuer: "https://idp.example",
        audiences: AUDIENCES.get_or_init(|| vec!["mxidp".to_owned()]),
        require_jti: true,
        authorized_party: Some("mxidp"),
        require_iat: false,
        require_exp: false,
        max_age_without_exp: Some(600),
        leeway: 30,
        now: 1_700_000_000,
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// The test key set, preloaded: an unknown `kid` would fetch from a closed port, at most once
/// an hour (the cooldown), and keep these keys.
fn keys() -> &'static JwksCache {
    static KEYS: OnceLock<JwksCache> = OnceLock::new();
    KEYS.get_or_init(|| {
        let _guard = runtime().enter();
        let cache = JwksCache::new(
            reqwest::Client::new(),
            "http://127.0.0.1:9/jwks".parse().expect("a URL"),
            Duration::from_millis(50),
            Duration::from_secs(3600),
        );
        cache
            .preload(include_bytes!("../../fuzz/keys.json"))
            .expect("the fuzz key set parses");
        cache
    })
}

/// Runs a target over its seed corpus, then over mutations of it (bit flips, byte inserts and
/// deletes, splices, chunk repeats) from a fixed seed, for at most `budget`. Returns how many
/// inputs ran. A panic fails the caller's test with the input in the message.
pub fn smoke(name: &str, target: Target, corpus: &[Vec<u8>], budget: Duration) -> usize {
    let started = Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x006d_7869_6470);
    let mut ran = 0;
    let run = |input: &[u8], ran: &mut usize| {
        let outcome = std::panic::catch_unwind(|| target(input));
        if outcome.is_err() {
            panic!(
                "fuzz target {name} panicked on input {:?}",
                String::from_utf8_lossy(input)
            );
        }
        *ran += 1;
    };
    for seed in corpus {
        run(seed, &mut ran);
    }
    let seeds: Vec<&Vec<u8>> = corpus.iter().collect();
    while started.elapsed() < budget && !seeds.is_empty() {
        let mut input = seeds[rng.gen_range(0..seeds.len())].clone();
        for _ in 0..rng.gen_range(1..8) {
            mutate(&mut input, &seeds, &mut rng);
        }
        run(&input, &mut ran);
    }
    ran
}

fn mutate(input: &mut Vec<u8>, seeds: &[&Vec<u8>], rng: &mut impl Rng) {
    const INTERESTING: &[&[u8]] = &[
        b"\"", b"{", b"}", b"[", b"]", b".", b"%", b"=", b"&", b"\\", b"\0", b"\xff", b"-1",
        b"1e309", b"null", b"..", b"%2e", b"urn:", b":*", b" ",
    ];
    let len = input.len();
    match rng.gen_range(0..6) {
        0 if len > 0 => {
            let i = rng.gen_range(0..len);
            input[i] ^= 1 << rng.gen_range(0..8);
        }
        1 => {
            let i = rng.gen_range(0..=len);
            input.insert(i, rng.gen());
        }
        2 if len > 0 => {
            let i = rng.gen_range(0..len);
            let n = rng.gen_range(1..=(len - i).min(16));
            input.drain(i..i + n);
        }
        3 => {
            let i = rng.gen_range(0..=len);
            let token = INTERESTING[rng.gen_range(0..INTERESTING.len())];
            input.splice(i..i, token.iter().copied());
        }
        4 => {
            let other = seeds[rng.gen_range(0..seeds.len())];
            if !other.is_empty() {
                let from = rng.gen_range(0..other.len());
                let to = rng.gen_range(from..=other.len());
                let at = rng.gen_range(0..=len);
                input.splice(at..at, other[from..to].iter().copied());
            }
        }
        _ if len > 0 && len < 64 * 1024 => {
            let from = rng.gen_range(0..len);
            let to = rng.gen_range(from..=len.min(from + 64));
            let chunk = input[from..to].to_vec();
            input.splice(from..from, chunk);
        }
        _ => {}
    }
}

/// The committed seed corpus of a target (`fuzz/corpus/<name>/*`).
pub fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| std::fs::read(path).expect("a corpus file"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds per target in the ordinary test run; long runs use libFuzzer (SECURITY.md).
    const BUDGET: Duration = Duration::from_secs(2);

    #[test]
    fn every_target_survives_its_corpus_and_seeded_mutations() {
        for (name, target) in TARGETS {
            let corpus = corpus(name);
            assert!(!corpus.is_empty(), "fuzz/corpus/{name} has no seed");
            let ran = smoke(name, *target, &corpus, BUDGET);
            assert!(ran > corpus.len(), "{name}: only {ran} inputs ran");
        }
    }

    #[test]
    fn a_panicking_target_is_caught_with_its_input() {
        fn fragile(data: &[u8]) {
            assert!(!data.contains(&b'!'), "found it");
        }
        let outcome = std::panic::catch_unwind(|| {
            smoke(
                "fragile",
                fragile,
                &[b"hello".to_vec()],
                Duration::from_secs(5),
            )
        });
        let message = *outcome.unwrap_err().downcast::<String>().unwrap();
        assert!(
            message.contains("fuzz target fragile panicked"),
            "{message}"
        );
    }
}

//! The introspection cache: token hash → what introspection needs, in memory. Synapse
//! introspects on every request it has not cached itself, so this keeps the hot path off the
//! database (docs/token-model.md).
//!
//! mxidp is the only writer of tokens: it issues them, rotates them and ends their sessions.
//! So after [`IntrospectionCache::warm`] has loaded every active access token, the cache is
//! *complete*: every issuance inserts, every rotation or session end evicts, and a miss means
//! the token is not active, with no database round trip. If the cache ever overflows its
//! capacity it stops being complete and misses go to the store again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::ids::TokenHash;
use crate::scope::introspection_scope;
use crate::store::{Session, TokenRecord};

/// Everything introspection answers for one active access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveToken {
    pub session_id: String,
    pub subject: String,
    pub localpart: String,
    pub client_id: String,
    /// The introspection scope: both families, device, admin.
    pub scope: String,
    pub device_id: String,
    pub issued_at: i64,
    pub expires_at: Option<i64>,
    /// The introspection answer up to what changes with the clock (`expires_in`), rendered
    /// once when the token is cached: the hot path appends a number and a brace.
    answer_prefix: String,
}

impl ActiveToken {
    pub fn new(token: &TokenRecord, session: &Session) -> Self {
        let mut active = Self {
            session_id: session.id.to_string(),
            subject: session.subject.clone(),
            localpart: session.localpart.to_string(),
            client_id: session.client_id.clone(),
            scope: introspection_scope(&session.device_id, session.admin),
            device_id: session.device_id.to_string(),
            issued_at: token.issued_at,
            expires_at: token.expires_at,
            answer_prefix: String::new(),
        };
        active.answer_prefix = active.render_prefix();
        active
    }

    /// The answer for an IdP-issued JWT the shim accepted (docs/jwt-shim.md): the same
    /// members as for mxidp's own tokens, from the token's claims and its mapping.
    pub fn for_jwt(grant: JwtGrant<'_>, issued_at: i64, expires_at: i64) -> Self {
        let mut active = Self {
            session_id: grant.session_id.to_owned(),
            subject: grant.subject.to_owned(),
            localpart: grant.localpart.to_owned(),
            client_id: grant.client_id.to_owned(),
            scope: introspection_scope(grant.device_id, grant.admin),
            device_id: grant.device_id.to_string(),
            issued_at,
            expires_at: Some(expires_at),
            answer_prefix: String::new(),
        };
        active.answer_prefix = active.render_prefix();
        active
    }

    fn render_prefix(&self) -> String {
        let mut answer = serde_json::json!({
            "active": true,
            "scope": self.scope,
            "username": self.localpart,
            "sub": self.subject,
            "client_id": self.client_id,
            "token_type": "access_token",
            "iat": self.issued_at,
            "device_id": self.device_id,
        });
        if let Some(exp) = self.expires_at {
            answer["exp"] = serde_json::json!(exp);
        }
        let mut text = answer.to_string();
        text.pop(); // the closing brace, appended by `answer` with `expires_in`
        text
    }

    /// The JSON introspection answer at `now` (RFC 7662 with Synapse's fields): `expires_in` is
    /// an integer, as Synapse requires.
    pub fn answer(&self, now: i64) -> String {
        let mut answer = String::with_capacity(self.answer_prefix.len() + 24);
        answer.push_str(&self.answer_prefix);
        if let Some(exp) = self.expires_at {
            answer.push_str(",\"expires_in\":");
            answer.push_str(&(exp - now).max(0).to_string());
        }
        answer.push('}');
        answer
    }
}

/// Who an accepted IdP-issued JWT maps to, for [`ActiveToken::for_jwt`].
pub struct JwtGrant<'a> {
    pub session_id: &'a str,
    pub subject: &'a str,
    pub localpart: &'a str,
    pub client_id: &'a str,
    pub device_id: &'a crate::ids::DeviceId,
    pub admin: bool,
}

/// What the cache knows about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Shared, not copied: a hit costs a reference count, not six strings.
    Active(Arc<ActiveToken>),
    /// The cache is complete and does not hold the token: it is not active.
    NotActive,
    /// Ask the store.
    Unknown,
}

pub struct IntrospectionCache {
    entries: RwLock<HashMap<TokenHash, Arc<ActiveToken>>>,
    capacity: usize,
    complete: AtomicBool,
}

impl IntrospectionCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: RwLock::new(HashMap::with_capacity(capacity.min(1 << 16))),
            capacity,
            complete: AtomicBool::new(false),
        }
    }

    /// Loads every active access token (at start). Complete when they all fit.
    pub fn warm(&self, tokens: impl IntoIterator<Item = (TokenHash, ActiveToken)>) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.clear();
        let mut fits = true;
        for (hash, token) in tokens {
            if entries.len() >= self.capacity {
                fits = false;
                break;
            }
            entries.insert(hash, Arc::new(token));
        }
        self.complete.store(fits, Ordering::Release);
        if !fits {
            tracing::warn!(
                capacity = self.capacity,
                "more active tokens than sessions.introspection_cache_entries: introspection misses go to the store"
            );
        }
    }

    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    pub fn lookup(&self, hash: &TokenHash) -> Lookup {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        match entries.get(hash) {
            Some(token) => Lookup::Active(token.clone()),
            None if self.is_complete() => Lookup::NotActive,
            None => Lookup::Unknown,
        }
    }

    pub fn insert(&self, hash: TokenHash, token: ActiveToken) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&hash) {
            // Full: drop everything rather than track recency on the hot path; from now on
            // misses go to the store, which refills entries on demand.
            entries.clear();
            self.complete.store(false, Ordering::Release);
        }
        entries.insert(hash, Arc::new(token));
    }

    /// Inserts an active token, then re-reads its session: if the session ended meanwhile, the
    /// entry goes again. Ending a session writes the store and then evicts, so between this
    /// check and that eviction no ended session can stay cached.
    pub async fn insert_checked(
        &self,
        store: &dyn crate::store::Store,
        hash: TokenHash,
        token: ActiveToken,
    ) -> Result<(), crate::store::StoreError> {
        let session_id = token.session_id.clone();
        self.insert(hash, token);
        let still_active = store
            .session(&session_id)
            .await?
            .is_some_and(|s| s.state == crate::store::SessionState::Active);
        if !still_active {
            self.remove(&[hash]);
        }
        Ok(())
    }

    pub fn remove(&self, hashes: &[TokenHash]) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        for h in hashes {
            entries.remove(h);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(n: u8) -> (TokenHash, ActiveToken) {
        (
            TokenHash::of(&format!("t{n}")),
            ActiveToken {
                session_id: format!("s{n}"),
                subject: "sub".into(),
                localpart: "alice".into(),
                client_id: "c".into(),
                scope: "s".into(),
                device_id: "DEVICEDEVICE".into(),
                issued_at: 0,
                expires_at: None,
                answer_prefix: String::new(),
            },
        )
    }

    #[test]
    fn a_complete_cache_answers_misses_itself_until_it_overflows() {
        let cache = IntrospectionCache::new(2);
        assert_eq!(
            cache.lookup(&token(9).0),
            Lookup::Unknown,
            "not warmed: ask the store"
        );
        cache.warm([token(1)]);
        assert!(matches!(cache.lookup(&token(1).0), Lookup::Active(_)));
        assert_eq!(cache.lookup(&token(9).0), Lookup::NotActive);
        let (h, t) = token(2);
        cache.insert(h, t);
        assert!(cache.is_complete());
        let (h, t) = token(3);
        cache.insert(h, t);
        assert!(!cache.is_complete(), "overflow gives up completeness");
        assert_eq!(cache.lookup(&token(1).0), Lookup::Unknown);
    }

    #[test]
    fn the_prerendered_answer_is_the_introspection_answer() {
        let (_, mut t) = token(1);
        t.expires_at = Some(1_000);
        t.answer_prefix = t.render_prefix();
        let answer: serde_json::Value = serde_json::from_str(&t.answer(900)).unwrap();
        assert_eq!(
            answer,
            serde_json::json!({"active": true, "scope": "s", "username": "alice", "sub": "sub",
                "client_id": "c", "token_type": "access_token", "iat": 0,
                "device_id": "DEVICEDEVICE", "exp": 1_000, "expires_in": 100})
        );
        // Past its expiry (a race with the clock): never negative.
        let late: serde_json::Value = serde_json::from_str(&t.answer(2_000)).unwrap();
        assert_eq!(late["expires_in"], 0);
    }

    #[test]
    fn warming_more_than_fits_is_incomplete() {
        let cache = IntrospectionCache::new(1);
        cache.warm([token(1), token(2)]);
        assert!(!cache.is_complete());
        assert_eq!(cache.lookup(&token(7).0), Lookup::Unknown);
    }
}

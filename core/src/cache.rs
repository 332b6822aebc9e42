//! The introspection cache: token hash → what introspection needs, in memory. Synapse
//! introspects on every request it has not cached, so this keeps the hot path off the
//! database. Entries are evicted when their session ends.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::ids::TokenHash;

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
}

pub struct IntrospectionCache {
    entries: RwLock<HashMap<TokenHash, ActiveToken>>,
    capacity: usize,
}

impl IntrospectionCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: RwLock::new(HashMap::with_capacity(capacity.min(1 << 16))),
            capacity,
        }
    }

    pub fn get(&self, hash: &TokenHash) -> Option<ActiveToken> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
            .cloned()
    }

    pub fn insert(&self, hash: TokenHash, token: ActiveToken) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&hash) {
            // Full: drop everything rather than track recency on the hot path; the store
            // refills entries on demand.
            entries.clear();
        }
        entries.insert(hash, token);
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

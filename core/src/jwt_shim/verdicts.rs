//! Verdicts on IdP-issued JWTs, by token hash, until the token expires: the second
//! introspection of a token costs a hash and a map lookup, not a signature verification. Only
//! active verdicts are kept (a refused token may become acceptable: its user may sign in), and
//! what can change after the verdict (the user's status, the account's configuration) is
//! checked on every hit by the caller. Bounded: when full, expired verdicts go first; if none
//! has expired, the new verdict is not kept and the token is simply verified again next time.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::cache::ActiveToken;
use crate::ids::TokenHash;

/// Who an active verdict is for, to check again on every hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A configured service account: (issuer index, account index).
    Account(usize, usize),
    /// A user token: the upstream subject and the token's `iat`.
    User { subject: String, issued_at: i64 },
}

#[derive(Debug, Clone)]
pub struct Verdict {
    pub active: Arc<ActiveToken>,
    pub holder: Holder,
    pub expires_at: i64,
}

pub struct Verdicts {
    entries: RwLock<HashMap<TokenHash, Arc<Verdict>>>,
    capacity: usize,
}

impl Verdicts {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The verdict for a token that has not expired at `now`.
    pub fn get(&self, hash: &TokenHash, now: i64) -> Option<Arc<Verdict>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.get(hash).filter(|v| v.expires_at > now).cloned()
    }

    pub fn insert(&self, hash: TokenHash, verdict: Verdict, now: i64) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&hash) {
            entries.retain(|_, v| v.expires_at > now);
            if entries.len() >= self.capacity {
                tracing::debug!(
                    capacity = self.capacity,
                    "jwt_shim.cache_entries reached: the verdict is not kept"
                );
                return;
            }
        }
        entries.insert(hash, Arc::new(verdict));
    }

    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(expires_at: i64) -> Verdict {
        Verdict {
            active: Arc::new(ActiveToken::for_jwt(
                crate::cache::JwtGrant {
                    session_id: "s",
                    subject: "sub",
                    localpart: "bot",
                    client_id: "c",
                    device_id: &crate::ids::DeviceId::parse("ABCDEFGHIJ").unwrap(),
                    admin: false,
                },
                0,
                expires_at,
            )),
            holder: Holder::Account(0, 0),
            expires_at,
        }
    }

    #[test]
    fn a_full_cache_drops_expired_verdicts_first_and_never_grows() {
        let verdicts = Verdicts::new(2);
        verdicts.insert(TokenHash::of("a"), verdict(10), 0);
        verdicts.insert(TokenHash::of("b"), verdict(100), 0);
        // Full, nothing expired: not kept.
        verdicts.insert(TokenHash::of("c"), verdict(100), 5);
        assert_eq!(verdicts.len(), 2);
        assert!(verdicts.get(&TokenHash::of("c"), 5).is_none());
        // "a" expired at 10: it makes room.
        verdicts.insert(TokenHash::of("c"), verdict(100), 20);
        assert_eq!(verdicts.len(), 2);
        assert!(verdicts.get(&TokenHash::of("c"), 20).is_some());
        assert!(verdicts.get(&TokenHash::of("a"), 20).is_none());
    }

    #[test]
    fn an_expired_verdict_is_not_returned() {
        let verdicts = Verdicts::new(10);
        verdicts.insert(TokenHash::of("a"), verdict(10), 0);
        assert!(verdicts.get(&TokenHash::of("a"), 9).is_some());
        assert!(verdicts.get(&TokenHash::of("a"), 10).is_none());
    }
}

//! STUB: JWKS cache (refetch on unknown kid with cooldown + single flight, keep last good set).
pub struct JwksCache;

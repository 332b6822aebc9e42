//! STUB: in-memory homeserver double.
pub struct MemoryHomeserver;

//! mxidp-core: the engine of mxidp. See DESIGN.md for the architecture.

pub mod homeserver;
pub mod identity;
pub mod ids;
pub mod provider;
pub mod registration;
pub mod scope;
pub mod secret;
pub mod upstream;

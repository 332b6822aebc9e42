//! mxidp-core: the engine of mxidp. See DESIGN.md for the architecture.

pub mod homeserver;
pub mod ids;
pub mod provider;
pub mod secret;
pub mod upstream;

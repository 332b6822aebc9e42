//! mxidp-core: the engine of mxidp. See docs/architecture.md.

pub mod app;
pub mod audit;
pub mod branding;
pub mod cache;
pub mod config;
pub mod consent;
pub mod crypto;
pub mod error_reply;
pub mod events;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz_targets;
pub mod homeserver;
pub mod http;
pub mod identity;
pub mod ids;
pub mod jwt;
pub mod jwt_shim;
pub mod limits;
pub mod metrics;
pub mod outbound;
pub mod provider;
pub mod receivers;
pub mod reconcile;
pub mod registration;
pub mod revalidate;
pub mod scope;
pub mod secret;
pub mod server;
pub mod sessions;
pub mod signin;
pub mod store;
pub mod tokens;
pub mod upstream;

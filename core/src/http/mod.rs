//! The HTTP endpoints of the OAuth server: one module per endpoint, each with its own error
//! enum that maps to the OAuth or Matrix error shape in one place. The router that mounts them
//! (with the IdP-event receivers) is assembled in [`crate::server::router`].

pub(crate) use crate::app::{paths, App, AppState};
pub(crate) use crate::error_reply::{internal, no_store, oauth_error};

pub(crate) mod account;
pub(crate) mod authorize;
mod browser_flow;
pub(crate) mod callback;
pub(crate) mod compat;
pub(crate) mod consent;
pub(crate) mod device;
pub(crate) mod health;
pub(crate) mod introspect;
pub(crate) mod metadata;
pub(crate) mod pages;
pub(crate) mod registration;
pub(crate) mod revoke;
pub(crate) mod token;

pub use browser_flow::revoke_sealed_login;
pub use introspect::introspect_token;

#[cfg(test)]
mod tests;

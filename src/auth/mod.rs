//! Who may do what (issue 9): bearer-token authentication ([`authenticate`], [`token_file`],
//! [`admin_token`]), one tower layer in front of every surface ([`layer`]), and the one
//! authorization decision ([`authorize`]). TLS is [`crate::tls`].

pub mod admin_token;
pub mod authenticate;
pub mod authorize;
mod cache;
pub mod caller;
pub mod identity;
pub mod layer;
pub mod token_file;

pub use authenticate::Authenticator;
pub use authorize::{Authorizer, Denied, Resource, Verb};
pub use caller::Caller;
pub use identity::Identity;
pub use layer::{Auth, AuthConfig, AuthLayer, ConnectionInfo};

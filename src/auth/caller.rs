//! Who asks the service layer for something: a [`Caller`]. Every edge turns its request into one
//! ([`Caller::from_extensions`]) and the service layer hands it to
//! [`crate::auth::Authorizer::permit`], the one place a request is allowed or refused.

use crate::auth::Identity;

/// The party an operation runs for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A request the auth layer authenticated: its identity is authorized for every operation.
    User(Identity),
    /// The operator's own configuration of this process (startup `MODULES`), benches and
    /// in-process tests: trusted, never authorized. No request can become this.
    Operator,
    /// A request that reached the service without an identity. Only open paths (health, docs)
    /// may get that far, so this is a wiring bug: it is answered Unauthenticated.
    Anonymous,
}

impl Caller {
    /// The caller of a request, from the extensions the auth layer filled in (`http::Request`'s
    /// or `tonic::Request`'s, which are the same).
    pub fn from_extensions(extensions: &http::Extensions) -> Self {
        match Identity::from_extensions(extensions) {
            Some(identity) => Caller::User(identity.clone()),
            None => Caller::Anonymous,
        }
    }

    /// The user name for logs and messages (`operator`, `anonymous` otherwise).
    pub fn name(&self) -> &str {
        match self {
            Caller::User(identity) => &identity.user,
            Caller::Operator => "operator",
            Caller::Anonymous => "anonymous",
        }
    }
}

impl From<Identity> for Caller {
    fn from(identity: Identity) -> Self {
        Caller::User(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_without_an_identity_is_anonymous_never_the_operator() {
        let mut extensions = http::Extensions::new();
        assert_eq!(Caller::from_extensions(&extensions), Caller::Anonymous);
        extensions.insert(Identity::new("alice"));
        assert_eq!(Caller::from_extensions(&extensions), Caller::User(Identity::new("alice")));
        assert_eq!(Caller::from_extensions(&extensions).name(), "alice");
    }
}

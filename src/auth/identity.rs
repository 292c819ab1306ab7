//! Who made a request: the [`Identity`] an authenticator vouches for, and how it travels with the
//! request. [`crate::auth::layer::Auth`] inserts it into the `http::Request` extensions; axum
//! handlers read it with `Extension<Identity>`, tonic handlers with
//! [`Identity::from_extensions`]`(request.extensions())` (tonic keeps the HTTP extensions).
//!
//! A request without an `Identity` was not authenticated: only the open paths (health, docs)
//! get that far, and they never need one.

use std::collections::BTreeMap;

/// An authenticated user, shaped like Kubernetes' `UserInfo` so it maps 1:1 onto a
/// SubjectAccessReview.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The user name, e.g. `admin` or `system:serviceaccount:NS:NAME`.
    pub user: String,
    /// A stable id when the source has one (token file column, TokenReview `uid`).
    pub uid: Option<String>,
    /// Group names, e.g. `jac-orc:admins` or `system:serviceaccounts`.
    pub groups: Vec<String>,
    /// Further attributes from a TokenReview (e.g. the pod name of a projected token), passed
    /// on unchanged to SubjectAccessReviews.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Identity {
    /// A user with no uid, groups or extra attributes.
    pub fn new(user: impl Into<String>) -> Self {
        Identity { user: user.into(), uid: None, groups: Vec::new(), extra: BTreeMap::new() }
    }

    #[must_use]
    pub fn with_uid(mut self, uid: impl Into<String>) -> Self {
        self.uid = Some(uid.into());
        self
    }

    #[must_use]
    pub fn with_groups<I, G>(mut self, groups: I) -> Self
    where
        I: IntoIterator<Item = G>,
        G: Into<String>,
    {
        self.groups = groups.into_iter().map(Into::into).collect();
        self
    }

    #[must_use]
    pub fn with_extra(mut self, extra: BTreeMap<String, Vec<String>>) -> Self {
        self.extra = extra;
        self
    }

    /// Whether the identity belongs to `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// The identity the auth layer attached to a request, if any.
    pub fn of<B>(request: &http::Request<B>) -> Option<&Identity> {
        Self::from_extensions(request.extensions())
    }

    /// The same from bare extensions (`tonic::Request::extensions()`).
    pub fn from_extensions(extensions: &http::Extensions) -> Option<&Identity> {
        extensions.get::<Identity>()
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_rides_in_request_extensions() {
        let alice = Identity::new("alice").with_uid("u1").with_groups(["jac-orc:viewers"]);
        let mut req = http::Request::new(());
        assert!(Identity::of(&req).is_none(), "nothing before the layer ran");
        req.extensions_mut().insert(alice.clone());
        assert_eq!(Identity::of(&req), Some(&alice));
        assert!(alice.in_group("jac-orc:viewers"));
        assert!(!alice.in_group("jac-orc:admins"));
        assert_eq!(alice.to_string(), "alice");
    }
}

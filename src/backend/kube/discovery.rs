//! Kind → resource resolution through legacy discovery (`/api/v1`, `/apis/<group>/<version>`),
//! cached per group-version-kind.
//!
//! One group-version request per kind replaces a full `Discovery::run` of every group on every
//! deploy; aggregated discovery is avoided on purpose (Kubernetes < 1.26 lacks it). The cache
//! entry of a group is dropped when a CRD of that group is applied, so new kinds appear.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::api::ApiResource;
use kube::core::GroupVersionKind;
use kube::discovery::{pinned_kind, ApiCapabilities};

use crate::backend::Error;
use crate::plan::ObjectRef;

pub(crate) type Resolved = (ApiResource, ApiCapabilities);

#[derive(Clone)]
pub(crate) struct Resolver {
    client: kube::Client,
    cache: Arc<Mutex<HashMap<GroupVersionKind, Resolved>>>,
}

impl Resolver {
    pub(crate) fn new(client: kube::Client) -> Self {
        Resolver { client, cache: Arc::default() }
    }

    /// Seeds the cache (tests use it to skip discovery requests).
    #[cfg(test)]
    pub(crate) fn insert(&self, gvk: GroupVersionKind, resolved: Resolved) {
        self.cache.lock().expect("resolver cache poisoned").insert(gvk, resolved);
    }

    /// `Ok(None)` when the server does not serve the kind (`no matches for kind …`).
    pub(crate) async fn resolve(&self, gvk: &GroupVersionKind) -> Result<Option<Resolved>, kube::Error> {
        if let Some(hit) = self.cache.lock().expect("resolver cache poisoned").get(gvk) {
            return Ok(Some(hit.clone()));
        }
        match pinned_kind(&self.client, gvk).await {
            Ok(resolved) => {
                self.cache.lock().expect("resolver cache poisoned").insert(gvk.clone(), resolved.clone());
                Ok(Some(resolved))
            }
            // An unknown group-version answers 404; a known one without the kind is a discovery error.
            Err(kube::Error::Discovery(_)) => Ok(None),
            Err(e) if super::errors::is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Forgets every cached kind of `group` (after a CRD of that group was applied or deleted).
    pub(crate) fn forget_group(&self, group: &str) {
        self.cache.lock().expect("resolver cache poisoned").retain(|gvk, _| gvk.group != group);
    }
}

pub(crate) fn gvk_of(object: &ObjectRef) -> GroupVersionKind {
    let (group, version) = match object.api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", object.api_version.as_str()),
    };
    GroupVersionKind::gvk(group, version, &object.kind)
}

/// kubectl's wording for a kind the server does not serve.
pub(crate) fn no_match(object: &ObjectRef) -> Error {
    Error::Rejected {
        object: object.kubectl_name(),
        message: format!("no matches for kind \"{}\" in version \"{}\"", object.kind, object.api_version),
    }
}

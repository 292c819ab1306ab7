//! Direct access to a python-module deployment (`GetModuleAccess`,
//! `GET /module/access/{namespace}/{deployment}`): its ready module servers and the call token
//! they accept, so a client that can reach them calls `ModuleService` on them itself, one
//! network hop instead of two through `ModuleProxy`.
//!
//! Who may: exactly who may call the deployment through `ModuleProxy` (`call` on `modules`
//! named by the deployment), decided before the deployment is even looked up, so a refused
//! caller learns nothing about what exists. The answer is valid for a while (the
//! [`ProxyConfig::access_ttl`](crate::proxy::ProxyConfig::access_ttl)); clients ask again after
//! it, or when a module server stops answering, and see replicas that came or went and a new
//! call token after a redeploy.

use serde::Serialize;
use utoipa::ToSchema;

use super::{Result, Service};
use crate::auth::{Caller, Resource, Verb};
use crate::backend;
use crate::identity::DeploymentId;
use crate::proxy::{CALL_TOKEN, PYTHON_MODULE};

/// What `GetModuleAccess` can fail with besides authorization and the backend's own errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("python-module deployment {namespace}/{deployment} not found")]
    NotFound { namespace: String, deployment: String },
    #[error("deployment {namespace}/{deployment} has no ready module server (it is starting, failing or scaled to zero; EnsureModule wakes a sleeping one)")]
    NoReadyServer { namespace: String, deployment: String },
    /// The record holds no call token (deployed before module servers had one).
    #[error(
        "deployment {namespace}/{deployment} has no call token for its module servers; deploy it again to give it one"
    )]
    NoCallToken { namespace: String, deployment: String },
    #[error("cannot list the module servers of {namespace}/{deployment}")]
    Backend {
        namespace: String,
        deployment: String,
        #[source]
        source: Box<backend::Error>,
    },
}

impl Error {
    /// The request field the error is about.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Error::Invalid { field, .. } => Some(field),
            Error::NotFound { .. } | Error::NoReadyServer { .. } | Error::NoCallToken { .. } => Some("deployment"),
            Error::Backend { .. } => None,
        }
    }
}

/// Which deployment a caller asks access to.
#[derive(Debug, Clone, Default)]
pub struct AccessRequest {
    /// Empty or absent: the orchestrator's namespace.
    pub namespace: Option<String>,
    pub deployment: String,
}

/// Direct access to a deployment's module servers.
#[derive(Clone, PartialEq, Serialize, ToSchema)]
pub struct ModuleAccessView {
    pub namespace: String,
    pub deployment: String,
    /// The Python module the deployment serves (its `module` placeholder).
    pub module: String,
    /// `host:port` of every ready module server, in address order.
    pub endpoints: Vec<String>,
    /// Sent as `authorization: Bearer <call_token>` to the module servers.
    pub call_token: String,
    /// Seconds this answer stays valid for.
    pub ttl_seconds: u32,
    /// When it expires (RFC 3339, the server's clock).
    pub expires_at: String,
}

impl std::fmt::Debug for ModuleAccessView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleAccessView")
            .field("namespace", &self.namespace)
            .field("deployment", &self.deployment)
            .field("module", &self.module)
            .field("endpoints", &self.endpoints)
            .field("call_token", &"<redacted>")
            .field("ttl_seconds", &self.ttl_seconds)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The deployment `request` names (python-module deployments only).
fn target(default_namespace: &str, request: &AccessRequest) -> Result<DeploymentId, Error> {
    if request.deployment.is_empty() {
        return Err(Error::Invalid {
            field: "deployment",
            reason: "missing: name the python-module deployment".into(),
        });
    }
    let namespace = request.namespace.as_deref().filter(|ns| !ns.is_empty()).unwrap_or(default_namespace);
    DeploymentId::new(namespace, PYTHON_MODULE, request.deployment.as_str()).map_err(|e| {
        let field = if e.field() == "namespace" { "namespace" } else { "deployment" };
        Error::Invalid { field, reason: e.to_string() }
    })
}

impl Service {
    /// Direct access to a python-module deployment's ready module servers (see the module doc).
    pub async fn module_access(&self, caller: &Caller, request: &AccessRequest) -> Result<ModuleAccessView> {
        let id = target(&self.settings.namespace, request)?;
        let (ns, name) = (id.namespace.clone(), id.name.clone());
        self.permit(caller, Verb::Call, Resource::Modules, Some(&ns), Some(&name)).await?;
        let not_found = || Error::NotFound { namespace: ns.clone(), deployment: name.clone() };
        let record = self.backend.get(&id).await?.ok_or_else(not_found)?;
        let call_token = record
            .config
            .get(CALL_TOKEN)
            .and_then(serde_json::Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::NoCallToken { namespace: ns.clone(), deployment: name.clone() })?
            .to_string();
        let mut endpoints = match self.backend.module_endpoints(&id).await {
            Ok(endpoints) => endpoints,
            Err(backend::Error::NotFound(_)) => return Err(not_found().into()),
            Err(e) => return Err(Error::Backend { namespace: ns, deployment: name, source: Box::new(e) }.into()),
        };
        if endpoints.is_empty() {
            return Err(Error::NoReadyServer { namespace: ns, deployment: name }.into());
        }
        endpoints.sort();
        endpoints.dedup();
        let ttl = self.settings.proxy.access_ttl;
        let module = record.config.get("module").and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
        tracing::debug!(deployment = %id, ready = endpoints.len(), "handing out direct module access");
        Ok(ModuleAccessView {
            namespace: ns,
            deployment: name,
            module,
            endpoints,
            call_token,
            ttl_seconds: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX).max(1),
            expires_at: backend::rfc3339_after(ttl),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(namespace: &str, deployment: &str) -> AccessRequest {
        AccessRequest { namespace: Some(namespace.into()), deployment: deployment.into() }
    }

    #[test]
    fn the_target_defaults_to_the_orchestrators_namespace_and_names_the_bad_field() {
        let id = target("home", &request("", "np")).unwrap();
        assert_eq!((id.namespace.as_str(), id.module.as_str(), id.name.as_str()), ("home", PYTHON_MODULE, "np"));
        assert_eq!(target("home", &request("team", "np")).unwrap().namespace, "team");
        for (ns, name, field) in
            [("", "", "deployment"), ("", "Not_Valid", "deployment"), ("Bad Ns", "np", "namespace")]
        {
            let e = target("home", &request(ns, name)).unwrap_err();
            assert_eq!(e.field(), Some(field), "{e}");
            assert!(e.to_string().starts_with(&format!("invalid {field}")), "{e}");
        }
    }

    #[tokio::test]
    async fn a_deployment_without_a_ready_module_server_is_a_failed_precondition_naming_it() {
        use futures::StreamExt;

        use crate::service::testing::Recording;
        use crate::service::{DeploymentRequest, Event};

        // The recording backend applies, and never has a ready module server.
        let (service, _) = Recording::service();
        let config = serde_json::json!({"name": "asleep", "module": "json"});
        let deploy = DeploymentRequest {
            module: PYTHON_MODULE.into(),
            version: None,
            config: config.as_object().cloned().unwrap(),
        };
        let mut stream = service.deploy(&Caller::Operator, &deploy, Default::default()).await.unwrap();
        while let Some(event) = stream.next().await {
            assert!(!matches!(event, Event::Failed(_)), "the deploy succeeds");
        }
        let err = service.module_access(&Caller::Operator, &request("", "asleep")).await.unwrap_err();
        assert!(
            matches!(err, super::super::Error::Access(ref e) if matches!(**e, Error::NoReadyServer { .. })),
            "{err:?}"
        );
        assert_eq!(err.field().as_deref(), Some("deployment"));
        let status = crate::api::status::to_status(&err);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().starts_with("deployment default/asleep has no ready module server"), "{status:?}");
    }

    #[test]
    fn the_call_token_never_shows_in_debug_output() {
        let view = ModuleAccessView {
            namespace: "default".into(),
            deployment: "np".into(),
            module: "numpy".into(),
            endpoints: vec!["127.0.0.1:1".into()],
            call_token: "s3cr3t-token".into(),
            ttl_seconds: 60,
            expires_at: "2026-01-01T00:00:00Z".into(),
        };
        let text = format!("{view:?}");
        assert!(!text.contains("s3cr3t") && text.contains("<redacted>"), "{text}");
    }
}

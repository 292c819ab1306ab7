//! `GetModuleAccess` on the gRPC edge: the request as the service's [`AccessRequest`], its
//! [`ModuleAccessView`] as the message.

use tonic::{Request, Status};

use super::status::to_status;
use crate::auth::Caller;
use crate::pb;
use crate::service::{AccessRequest, ModuleAccessView, Service};

pub(super) async fn get_module_access(
    service: &Service,
    request: Request<pb::GetModuleAccessRequest>,
) -> Result<pb::ModuleAccess, Status> {
    let caller = Caller::from_extensions(request.extensions());
    let r = request.into_inner();
    let request = AccessRequest { namespace: Some(r.namespace), deployment: r.deployment };
    let view = service.module_access(&caller, &request).await.map_err(|e| to_status(&e))?;
    Ok(message(view))
}

fn message(view: ModuleAccessView) -> pb::ModuleAccess {
    pb::ModuleAccess {
        namespace: view.namespace,
        deployment: view.deployment,
        module: view.module,
        endpoints: view.endpoints.into_iter().map(|address| pb::ModuleEndpoint { address }).collect(),
        call_token: view.call_token,
        ttl_seconds: view.ttl_seconds,
        expires_at: view.expires_at,
    }
}

//! Revisions on the gRPC edge: `History`, `Rollback` and `Diff` as thin calls of the service,
//! and their views ⇄ messages (the CLI decodes the same messages back into the views).

use std::time::Duration;

use tonic::{Request, Response, Status};

use super::convert::{self, from_struct, to_struct, Error, Result};
use super::events::{events, EventStream};
use super::status::to_status;
use crate::auth::Caller;
use crate::backend::{ApplyOptions, ObjectEvent, Revision};
use crate::identity::DeploymentId;
use crate::pb;
use crate::plan::ObjectRef;
use crate::service::{DeploymentRequest, DiffView, Service, DEFAULT_WAIT};

fn id_of(namespace: String, module: String, name: String) -> Result<DeploymentId, Status> {
    DeploymentId::new(namespace, module, name).map_err(|e| to_status(&e.into()))
}

pub(super) async fn history(
    service: &Service,
    request: Request<pb::HistoryRequest>,
) -> Result<pb::HistoryResponse, Status> {
    let caller = Caller::from_extensions(request.extensions());
    let r = request.into_inner();
    let id = id_of(r.namespace, r.module, r.name)?;
    let revisions = service.history(&caller, &id).await.map_err(|e| to_status(&e))?;
    Ok(pb::HistoryResponse { revisions: revisions.iter().map(revision).collect() })
}

pub(super) async fn rollback(
    service: &Service,
    request: Request<pb::RollbackRequest>,
) -> Result<Response<EventStream>, Status> {
    let caller = Caller::from_extensions(request.extensions());
    let r = request.into_inner();
    let id = id_of(r.namespace, r.module, r.name)?;
    let opts = ApplyOptions {
        wait: r.wait.then(|| match r.wait_timeout_seconds {
            0 => DEFAULT_WAIT,
            s => Duration::from_secs(u64::from(s)),
        }),
        ..ApplyOptions::default()
    };
    let stream = service.rollback(&caller, &id, r.revision, opts).await.map_err(|e| to_status(&e))?;
    Ok(Response::new(events(stream)))
}

pub(super) async fn diff(service: &Service, request: Request<pb::DiffRequest>) -> Result<pb::DiffResponse, Status> {
    let caller = Caller::from_extensions(request.extensions());
    let r = request.into_inner();
    let req = DeploymentRequest {
        module: r.module,
        version: Some(r.version).filter(|v| !v.is_empty()),
        config: r.config.as_ref().map(from_struct).unwrap_or_default(),
    };
    let view = service.diff(&caller, &req, r.reuse_values).await.map_err(|e| to_status(&e))?;
    Ok(diff_response(&view))
}

pub fn revision(r: &Revision) -> pb::Revision {
    pb::Revision {
        revision: r.revision,
        version: r.version.clone(),
        config: Some(to_struct(&r.config)),
        secret_keys: r.secret_keys.clone(),
        objects: r.objects.iter().map(convert::object_ref).collect(),
        time: r.time.clone(),
        deployed_by: r.deployed_by.clone(),
        description: r.description.clone(),
    }
}

pub fn diff_response(v: &DiffView) -> pb::DiffResponse {
    pb::DiffResponse { changed: v.changed, objects: v.objects.iter().map(convert::object_event).collect() }
}

impl TryFrom<&pb::Revision> for Revision {
    type Error = Error;

    fn try_from(r: &pb::Revision) -> Result<Self> {
        Ok(Revision {
            revision: r.revision,
            version: r.version.clone(),
            config: r.config.as_ref().map(from_struct).unwrap_or_default(),
            secret_keys: r.secret_keys.clone(),
            objects: r.objects.iter().map(ObjectRef::try_from).collect::<Result<_>>()?,
            time: r.time.clone(),
            deployed_by: r.deployed_by.clone(),
            description: r.description.clone(),
        })
    }
}

impl TryFrom<&pb::DiffResponse> for DiffView {
    type Error = Error;

    fn try_from(d: &pb::DiffResponse) -> Result<Self> {
        let objects = d.objects.iter().map(ObjectEvent::try_from).collect::<Result<Vec<_>>>()?;
        Ok(DiffView { changed: d.changed, objects })
    }
}

//! Watching a python-module deployment's ready endpoints: EndpointSlices
//! (`discovery.k8s.io/v1`, labelled `kubernetes.io/service-name=<service>`) where the API server
//! serves that group version, Endpoints (`v1`, the Service's name) otherwise (Kubernetes 1.20).
//! Which one is decided once from the API group list.
//!
//! Each of the deployment's Services gets a `kube::runtime::watcher` (which lists, then watches,
//! and relists after a broken watch); the stream yields the union of ready `ip:port` addresses
//! of the port named `grpc` (or the only port) after every change, each with its pod's uid (the
//! address's `targetRef`) so a pod replaced on the same IP is another replica.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio::sync::OnceCell;

use super::errors;
use super::records::Records;
use crate::backend::endpoints::{Endpoint, EndpointStream};
use crate::backend::{Error, Result};
use crate::plan::{DeploymentId, Kind};

const SLICE_GROUP: &str = "discovery.k8s.io";
const SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// Whether the API server serves `discovery.k8s.io/v1` (1.21 and later).
pub(super) async fn serves_endpoint_slices(client: &kube::Client) -> bool {
    match client.list_api_groups().await {
        Ok(list) => list.groups.iter().any(|g| g.name == SLICE_GROUP && g.versions.iter().any(|v| v.version == "v1")),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list API groups; watching Endpoints (v1) instead of EndpointSlices");
            false
        }
    }
}

/// One change of one watched object: `(service, object name)` → its ready endpoints.
enum Change {
    /// A (re)list of one service: its objects now.
    Reset(String, Vec<(String, Vec<Endpoint>)>),
    Upsert(String, String, Vec<Endpoint>),
    Remove(String, String),
}

/// The stream of [`crate::backend::Backend::watch_endpoints`] for the Kubernetes backend.
pub(super) fn watch(
    client: kube::Client,
    records: Records,
    slices: Arc<OnceCell<bool>>,
    id: DeploymentId,
) -> EndpointStream {
    let start = async move {
        let record = match records.get(&id).await {
            Ok(Some(r)) => r,
            Ok(None) => return stream::iter([Err(Error::NotFound(id))]).boxed(),
            Err(e) => return stream::iter([Err(e)]).boxed(),
        };
        let use_slices = *slices.get_or_init(|| serves_endpoint_slices(&client)).await;
        let services: Vec<(String, String)> = record
            .objects
            .iter()
            .filter(|o| o.is(Kind::SERVICE))
            .map(|o| (o.namespace.clone().unwrap_or_else(|| id.namespace.clone()), o.name.clone()))
            .collect();
        tracing::debug!(deployment = %id, use_slices, ?services, "watching module server endpoints");
        let changes = stream::select_all(services.into_iter().map(|(ns, service)| {
            if use_slices {
                slice_changes(client.clone(), ns, service)
            } else {
                endpoints_changes(client.clone(), ns, service)
            }
        }));
        follow(changes.boxed())
    };
    stream::once(start).flatten().boxed()
}

/// Folds the changes into the ready set and yields it whenever it changed.
fn follow(changes: stream::BoxStream<'static, Result<Change>>) -> EndpointStream {
    type State = (BTreeMap<(String, String), Vec<Endpoint>>, Option<Vec<Endpoint>>);
    changes
        .scan(State::default(), |(objects, last), change| {
            let out = match change {
                Err(e) => Some(Err(e)),
                Ok(change) => {
                    match change {
                        Change::Reset(service, now) => {
                            objects.retain(|(s, _), _| *s != service);
                            objects.extend(now.into_iter().map(|(name, e)| ((service.clone(), name), e)));
                        }
                        Change::Upsert(service, name, e) => {
                            objects.insert((service, name), e);
                        }
                        Change::Remove(service, name) => {
                            objects.remove(&(service, name));
                        }
                    }
                    let mut set: Vec<Endpoint> = objects.values().flatten().cloned().collect();
                    set.sort_by(|a, b| a.address.cmp(&b.address));
                    set.dedup();
                    (last.as_ref() != Some(&set)).then(|| {
                        *last = Some(set.clone());
                        Ok(set)
                    })
                }
            };
            futures::future::ready(Some(out))
        })
        .filter_map(futures::future::ready)
        .boxed()
}

/// Turns watcher events of one service's objects into [`Change`]s.
fn changes_of<K>(
    service: String,
    events: impl stream::Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    ready: fn(&K) -> Vec<Endpoint>,
    what: String,
) -> stream::BoxStream<'static, Result<Change>>
where
    K: kube::Resource + Send + 'static,
{
    let name = |k: &K| k.meta().name.clone().unwrap_or_default();
    events
        .scan(None::<Vec<(String, Vec<Endpoint>)>>, move |buffer, event| {
            let out = match event {
                Ok(Event::Init) => {
                    *buffer = Some(Vec::new());
                    None
                }
                Ok(Event::InitApply(k)) => {
                    buffer.get_or_insert_with(Vec::new).push((name(&k), ready(&k)));
                    None
                }
                Ok(Event::InitDone) => Some(Ok(Change::Reset(service.clone(), buffer.take().unwrap_or_default()))),
                Ok(Event::Apply(k)) => Some(Ok(Change::Upsert(service.clone(), name(&k), ready(&k)))),
                Ok(Event::Delete(k)) => Some(Ok(Change::Remove(service.clone(), name(&k)))),
                Err(e) => Some(Err(watch_error(&what, e))),
            };
            futures::future::ready(Some(out))
        })
        .filter_map(futures::future::ready)
        .boxed()
}

fn watch_error(what: &str, e: watcher::Error) -> Error {
    match e {
        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            errors::api_error(what, e)
        }
        other => Error::Rejected { object: what.to_string(), message: other.to_string() },
    }
}

fn slice_changes(client: kube::Client, ns: String, service: String) -> stream::BoxStream<'static, Result<Change>> {
    let api: Api<EndpointSlice> = Api::namespaced(client, &ns);
    let config = watcher::Config::default().labels(&format!("{SERVICE_LABEL}={service}"));
    let what = format!("endpointslices.discovery.k8s.io ({SERVICE_LABEL}={service}) in {ns}");
    changes_of(service, watcher::watcher(api, config).default_backoff(), slice_ready, what)
}

fn endpoints_changes(client: kube::Client, ns: String, service: String) -> stream::BoxStream<'static, Result<Change>> {
    let api: Api<Endpoints> = Api::namespaced(client, &ns);
    let config = watcher::Config::default().fields(&format!("metadata.name={service}"));
    let what = format!("endpoints/{service} in {ns}");
    changes_of(service, watcher::watcher(api, config).default_backoff(), endpoints_ready, what)
}

/// `ip:port`, bracketing IPv6.
fn address(ip: &str, port: i32) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// The port named `grpc`, or the only one.
fn grpc_port<P>(ports: &[P], name: impl Fn(&P) -> Option<&str>) -> Option<&P> {
    ports.iter().find(|p| name(p) == Some("grpc")).or(if ports.len() == 1 { ports.first() } else { None })
}

/// Ready endpoints of an EndpointSlice (`ready` unset counts as ready, as the API says).
pub(super) fn slice_ready(slice: &EndpointSlice) -> Vec<Endpoint> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let Some(port) = grpc_port(ports, |p| p.name.as_deref()).and_then(|p| p.port) else { return Vec::new() };
    let mut out = Vec::new();
    for e in &slice.endpoints {
        if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
            continue;
        }
        let uid = e.target_ref.as_ref().and_then(|t| t.uid.clone()).unwrap_or_default();
        out.extend(e.addresses.iter().map(|ip| Endpoint::new(address(ip, port), uid.clone())));
    }
    out
}

/// Ready addresses of an Endpoints object (its `addresses`; `notReadyAddresses` are not).
pub(super) fn endpoints_ready(ep: &Endpoints) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for subset in ep.subsets.iter().flatten() {
        let ports = subset.ports.as_deref().unwrap_or_default();
        let Some(port) = grpc_port(ports, |p| p.name.as_deref()) else { continue };
        for a in subset.addresses.iter().flatten() {
            let uid = a.target_ref.as_ref().and_then(|t| t.uid.clone()).unwrap_or_default();
            out.push(Endpoint::new(address(&a.ip, port.port), uid));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use std::collections::HashMap;

    use super::*;

    fn by_address(set: &[Endpoint]) -> HashMap<&str, &str> {
        set.iter().map(|e| (e.address.as_str(), e.instance.as_str())).collect()
    }

    #[test]
    fn ready_slice_endpoints_of_the_grpc_port_carry_their_pod_uid() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "addressType": "IPv4",
            "metadata": {"name": "np-abc", "labels": {SERVICE_LABEL: "np"}},
            "ports": [{"name": "metrics", "port": 9090}, {"name": "grpc", "port": 50051}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "uid": "u1"}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}, "targetRef": {"kind": "Pod", "uid": "u2"}},
                {"addresses": ["10.0.0.3"], "targetRef": {"kind": "Pod", "uid": "u3"}},
                {"addresses": ["fd00::4"], "conditions": {"ready": true}}
            ]
        }))
        .unwrap();
        let ready = slice_ready(&slice);
        let seen = by_address(&ready);
        assert_eq!(seen.len(), 3, "{ready:?}");
        assert_eq!(seen["10.0.0.1:50051"], "u1");
        assert_eq!(seen["10.0.0.3:50051"], "u3", "no conditions: ready");
        assert_eq!(seen["[fd00::4]:50051"], "");
    }

    #[test]
    fn ready_endpoints_addresses_exclude_not_ready_ones() {
        let ep: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": "np"},
            "subsets": [{
                "addresses": [{"ip": "10.0.0.1", "targetRef": {"kind": "Pod", "uid": "u1"}}],
                "notReadyAddresses": [{"ip": "10.0.0.2"}],
                "ports": [{"port": 50051}]
            }]
        }))
        .unwrap();
        assert_eq!(endpoints_ready(&ep), [Endpoint::new("10.0.0.1:50051", "u1")]);
    }

    #[tokio::test]
    async fn changes_fold_into_the_union_and_only_changes_are_yielded() {
        let e = |a: &str| Endpoint::new(a, "");
        let changes = vec![
            Ok(Change::Reset("np".into(), vec![("s1".into(), vec![e("a:1")])])),
            Ok(Change::Upsert("np".into(), "s2".into(), vec![e("b:1")])),
            Ok(Change::Upsert("np".into(), "s2".into(), vec![e("b:1")])),
            Ok(Change::Remove("np".into(), "s1".into())),
            Ok(Change::Reset("np".into(), vec![])),
        ];
        let sets: Vec<Vec<Endpoint>> = follow(stream::iter(changes).boxed()).map(|r| r.unwrap()).collect().await;
        assert_eq!(sets, vec![vec![e("a:1")], vec![e("a:1"), e("b:1")], vec![e("b:1")], vec![]]);
    }
}

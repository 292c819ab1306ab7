//! [`Backend::logs`](crate::backend::Backend::logs) on Kubernetes: the logs of the deployment's
//! pods, as `kubectl logs` reads them (the `pods/log` subresource, with timestamps).
//!
//! The pods are those its record's Deployments, StatefulSets and DaemonSets select (their
//! `spec.selector.matchLabels`) and the Pods it created itself, in name order; a pod with more
//! than one container is read once per container. Without `follow` the pods are read one after
//! the other; with it, all at once, each until its container stops (a pod that a rollout
//! replaces later is not picked up: ask again). A container that has not started has no log
//! yet and is skipped.

use std::collections::BTreeMap;

use futures::{AsyncRead, AsyncReadExt, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams, LogParams};

use super::errors::{self, Error as KubeError};
use crate::backend::logs::{split_lines, LogLine, LogOptions, LogStream};
use crate::backend::{DeploymentRecord, Result};
use crate::plan::Kind;

/// Bytes read from a log response at a time.
const READ: usize = 16 * 1024;

/// `matchLabels` as a label selector (`None` when there are none: that would select everything).
fn selector_of(selector: Option<&LabelSelector>) -> Option<String> {
    let labels = selector?.match_labels.as_ref().filter(|l| !l.is_empty())?;
    Some(labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
}

/// The deployment's pods, by namespace and name.
async fn pods(client: &kube::Client, record: &DeploymentRecord) -> Result<BTreeMap<(String, String), Pod>> {
    let mut pods = BTreeMap::new();
    for o in &record.objects {
        let ns = o.namespace.clone().unwrap_or_else(|| record.id.namespace.clone());
        let failed = |e| errors::api_error(&o.kubectl_name(), e);
        let selector = if o.is(Kind::DEPLOYMENT) {
            let d = Api::<Deployment>::namespaced(client.clone(), &ns).get_opt(&o.name).await.map_err(failed)?;
            d.and_then(|d| selector_of(d.spec.as_ref().map(|s| &s.selector)))
        } else if o.is(Kind::STATEFUL_SET) {
            let s = Api::<StatefulSet>::namespaced(client.clone(), &ns).get_opt(&o.name).await.map_err(failed)?;
            s.and_then(|s| selector_of(s.spec.as_ref().map(|s| &s.selector)))
        } else if o.is(Kind::DAEMON_SET) {
            let d = Api::<DaemonSet>::namespaced(client.clone(), &ns).get_opt(&o.name).await.map_err(failed)?;
            d.and_then(|d| selector_of(d.spec.as_ref().map(|s| &s.selector)))
        } else if o.is(Kind::POD) {
            if let Some(p) = Api::<Pod>::namespaced(client.clone(), &ns).get_opt(&o.name).await.map_err(failed)? {
                pods.insert((ns, o.name.clone()), p);
            }
            continue;
        } else {
            continue;
        };
        let Some(selector) = selector else { continue };
        let api = Api::<Pod>::namespaced(client.clone(), &ns);
        let listed = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| errors::api_error(&format!("pods in {ns} ({selector})"), e))?;
        for p in listed.items {
            let Some(name) = p.metadata.name.clone() else { continue };
            pods.insert((ns.clone(), name), p);
        }
    }
    Ok(pods)
}

/// A line as the API server sends it with `timestamps=true`: `2026-01-02T03:04:05.123456789Z text`.
fn line_of(source: &str, text: String) -> LogLine {
    let stamped = text.split_once(' ').filter(|(t, _)| {
        let b = t.as_bytes();
        b.len() >= 20 && b[0].is_ascii_digit() && b[4] == b'-' && b[10] == b'T'
    });
    match stamped {
        Some((time, line)) => LogLine::new(source, line).at(time),
        None => LogLine::new(source, text),
    }
}

/// The lines of one log response as they arrive; an error reading it is the last item.
fn lines<R: AsyncRead + Send + Unpin + 'static>(reader: R, source: String, object: String) -> LogStream {
    struct Reading<R> {
        reader: R,
        source: String,
        object: String,
        pending: Vec<u8>,
        queue: std::collections::VecDeque<String>,
        done: bool,
    }
    let start = Reading { reader, source, object, pending: Vec::new(), queue: Default::default(), done: false };
    Box::pin(futures::stream::unfold(start, |mut r| async move {
        loop {
            if let Some(text) = r.queue.pop_front() {
                let line = line_of(&r.source, text);
                return Some((Ok(line), r));
            }
            if r.done {
                return None;
            }
            let mut buf = vec![0u8; READ];
            match r.reader.read(&mut buf).await {
                Ok(0) => {
                    r.done = true;
                    if !r.pending.is_empty() {
                        r.queue.push_back(String::from_utf8_lossy(&std::mem::take(&mut r.pending)).into_owned());
                    }
                }
                Ok(n) => r.queue.extend(split_lines(&mut r.pending, &buf[..n])),
                Err(e) => {
                    r.done = true;
                    let object = std::mem::take(&mut r.object);
                    return Some((Err(KubeError::LogRead { object, source: Box::new(e) }.into()), r));
                }
            }
        }
    }))
}

/// The logs of `record`'s pods (see the module doc).
pub(super) async fn logs(client: &kube::Client, record: &DeploymentRecord, opts: &LogOptions) -> Result<LogStream> {
    let mut streams = Vec::new();
    for ((ns, name), pod) in pods(client, record).await? {
        let containers: Vec<String> =
            pod.spec.iter().flat_map(|s| s.containers.iter().map(|c| c.name.clone())).collect();
        let api = Api::<Pod>::namespaced(client.clone(), &ns);
        for container in &containers {
            let source = if containers.len() == 1 { name.clone() } else { format!("{name}/{container}") };
            let params = LogParams {
                container: Some(container.clone()),
                follow: opts.follow,
                tail_lines: opts.tail.map(i64::from),
                timestamps: true,
                ..LogParams::default()
            };
            let object = format!("pods/{name}/log ({container})");
            match api.log_stream(&name, &params).await {
                Ok(reader) => streams.push(lines(Box::pin(reader), source, object)),
                // "container ... is waiting to start": nothing to read yet.
                Err(e) if errors::status_code(&e) == Some(400) => {
                    tracing::debug!(pod = %name, %container, error = %e, "no log to read yet");
                }
                Err(e) => return Err(errors::api_error(&object, e)),
            }
        }
    }
    Ok(if opts.follow {
        Box::pin(futures::stream::select_all(streams))
    } else {
        Box::pin(futures::stream::iter(streams).flatten())
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn timestamps_are_split_off_and_lines_without_one_are_kept_whole() {
        let l = line_of("p", "2026-01-02T03:04:05.123456789Z hello world".into());
        assert_eq!((l.line.as_str(), l.time.as_deref()), ("hello world", Some("2026-01-02T03:04:05.123456789Z")));
        let l = line_of("p", "no stamp here".into());
        assert_eq!((l.line.as_str(), l.time), ("no stamp here", None));
    }

    /// A record whose Deployment `web` selects pods `app=web`: one pod with one container, one
    /// with two, and one whose container waits to start.
    #[tokio::test]
    async fn pods_selected_by_a_deployment_are_read_per_container_with_the_tail_and_timestamps() {
        use http::{Request, Response};
        use kube::client::Body;
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "default");
        let object = crate::plan::ObjectRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "web".into(),
            namespace: None,
            section: crate::plan::Section::Modules,
            file: "web.yaml".into(),
        };
        let record = DeploymentRecord {
            id: crate::plan::DeploymentId { namespace: "ns1".into(), module: "m".into(), name: "web".into() },
            version: "latest".into(),
            config: Default::default(),
            secret_keys: vec![],
            endpoints: vec![],
            status: crate::backend::Status::Deployed,
            message: String::new(),
            objects: vec![object],
            backend: crate::backend::Kind::Kubernetes,
            updated_at: String::new(),
            wakeups: 0,
        };
        let respond = |body: serde_json::Value| Response::new(Body::from(serde_json::to_vec(&body).unwrap()));
        let api = async move {
            let mut seen = Vec::new();
            for _ in 0..6 {
                let (req, send) = handle.next_request().await.expect("a request");
                let uri = req.uri().to_string();
                seen.push(uri.clone());
                let path = req.uri().path();
                let reply = if path == "/apis/apps/v1/namespaces/ns1/deployments/web" {
                    respond(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {}}}))
                } else if path == "/api/v1/namespaces/ns1/pods" {
                    let pod = |name: &str, containers: &[&str]| {
                        json!({"metadata": {"name": name},
                        "spec": {"containers": containers.iter().map(|c| json!({"name": c})).collect::<Vec<_>>()}})
                    };
                    respond(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
                        pod("web-b", &["app", "sidecar"]), pod("web-a", &["app"]), pod("web-c", &["app"])]}))
                } else if path.ends_with("/web-c/log") {
                    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 400,
                        "message": "container \"app\" in pod \"web-c\" is waiting to start: ContainerCreating"});
                    Response::builder().status(400).body(Body::from(serde_json::to_vec(&status).unwrap())).unwrap()
                } else {
                    let container = uri.split("container=").nth(1).unwrap().split('&').next().unwrap().to_string();
                    let pod = path.trim_end_matches("/log").rsplit('/').next().unwrap().to_string();
                    Response::new(Body::from(format!("2026-01-02T03:04:05Z {pod} {container} says hi\n").into_bytes()))
                };
                send.send_response(reply);
            }
            seen
        };
        let opts = LogOptions { follow: false, tail: Some(2) };
        let read = async {
            let stream = logs(&client, &record, &opts).await.unwrap();
            stream.map(|l| l.unwrap()).collect::<Vec<_>>().await
        };
        let (seen, lines) = tokio::time::timeout(std::time::Duration::from_secs(10), async { tokio::join!(api, read) })
            .await
            .expect("in time");
        assert!(seen[1].contains("labelSelector=app%3Dweb"), "{seen:?}");
        let log_queries: Vec<&String> = seen.iter().filter(|u| u.contains("/log")).collect();
        assert!(log_queries.iter().all(|u| u.contains("tailLines=2") && u.contains("timestamps=true")), "{seen:?}");
        assert!(log_queries.iter().all(|u| !u.contains("follow")), "{seen:?}");
        assert_eq!(
            lines,
            [
                LogLine::new("web-a", "web-a app says hi").at("2026-01-02T03:04:05Z"),
                LogLine::new("web-b/app", "web-b app says hi").at("2026-01-02T03:04:05Z"),
                LogLine::new("web-b/sidecar", "web-b sidecar says hi").at("2026-01-02T03:04:05Z"),
            ]
        );
    }

    #[tokio::test]
    async fn a_response_is_read_as_lines_with_the_unfinished_last_one_at_its_end() {
        let body: &[u8] = b"2026-01-02T03:04:05Z one\n2026-01-02T03:04:06Z two\nthree";
        let got: Vec<LogLine> = lines(futures::io::Cursor::new(body.to_vec()), "p".into(), "pods/p/log".into())
            .map(|l| l.unwrap())
            .collect()
            .await;
        assert_eq!(
            got,
            [
                LogLine::new("p", "one").at("2026-01-02T03:04:05Z"),
                LogLine::new("p", "two").at("2026-01-02T03:04:06Z"),
                LogLine::new("p", "three")
            ]
        );
    }
}

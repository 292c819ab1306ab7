//! Request-shape and error-mapping tests against kube's `tower-test` mock API server: no cluster.

use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ApiResource;
use kube::client::Body;
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, Scope};
use serde_json::{json, Value};
use tower_test::mock::{self, Handle};

use super::apply::{Applier, ServerFeatures};
use super::discovery::Resolver;
use crate::backend::{Action, Error};
use crate::plan::{DeploymentId, ObjectRef, PlannedObject, Section};

type MockHandle = Handle<Request<Body>, Response<Body>>;

fn setup() -> (kube::Client, Resolver, MockHandle) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let resolver = Resolver::new(client.clone());
    let caps = ApiCapabilities { scope: Scope::Namespaced, subresources: vec![], operations: vec![] };
    resolver.insert(GroupVersionKind::gvk("", "v1", "ConfigMap"), (ApiResource::erase::<ConfigMap>(&()), caps));
    (client, resolver, handle)
}

fn planned() -> PlannedObject {
    PlannedObject {
        object: ObjectRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "cm".into(),
            namespace: None,
            section: Section::Modules,
            file: "redis.yaml".into(),
        },
        manifest: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"a": "1"}}),
    }
}

fn id() -> DeploymentId {
    DeploymentId { namespace: "ns1".into(), module: "redis".into(), name: "cache".into() }
}

fn json_response(code: u16, body: &Value) -> Response<Body> {
    Response::builder().status(code).body(Body::from(serde_json::to_vec(body).unwrap())).unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message}),
    )
}

fn object(rv: &str) -> Value {
    object_with(rv, "1")
}

fn object_with(rv: &str, a: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "ns1", "resourceVersion": rv}, "data": {"a": a}})
}

/// Serves one GET (answered with `existing`) and one PATCH (answered by `respond`), checking the
/// request shapes, and returns the PATCH query string.
async fn serve(mut handle: MockHandle, existing: Response<Body>, respond: Response<Body>) -> String {
    let (req, send) = handle.next_request().await.expect("GET expected");
    assert_eq!(req.method(), http::Method::GET);
    assert_eq!(req.uri().path(), "/api/v1/namespaces/ns1/configmaps/cm");
    send.send_response(existing);

    let (req, send) = handle.next_request().await.expect("PATCH expected");
    assert_eq!(req.method(), http::Method::PATCH);
    assert_eq!(req.uri().path(), "/api/v1/namespaces/ns1/configmaps/cm");
    assert_eq!(req.headers()["content-type"], "application/apply-patch+yaml");
    let query = req.uri().query().unwrap_or_default().to_string();
    let body: Value = serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
    assert_eq!(body["metadata"]["namespace"], "ns1", "the namespace is filled in");
    assert_eq!(body["metadata"]["labels"]["jac-orc/deployment"], "cache");
    assert_eq!(body["metadata"]["labels"]["app.kubernetes.io/managed-by"], "jac-orc");
    send.send_response(respond);
    query
}

async fn run(
    force: bool,
    existing: Response<Body>,
    respond: Response<Body>,
) -> (Result<(ObjectRef, Action), Error>, String) {
    let (client, resolver, handle) = setup();
    let server = tokio::spawn(serve(handle, existing, respond));
    let features = ServerFeatures { version: "v1.33.0".into(), grpc_probes: true };
    let applier = Applier {
        client: &client,
        resolver: &resolver,
        field_manager: "jac-orc",
        force,
        crd_timeout: Duration::from_secs(1),
        server: &features,
    };
    let result = tokio::time::timeout(Duration::from_secs(5), applier.apply(&planned(), &id(), "latest"))
        .await
        .expect("apply hung");
    let query = tokio::time::timeout(Duration::from_secs(5), server).await.expect("mock hung").expect("mock panicked");
    (result, query)
}

#[tokio::test]
async fn apply_is_a_server_side_apply_patch_with_our_field_manager() {
    let (result, query) =
        run(false, status(404, "NotFound", "configmaps \"cm\" not found"), json_response(201, &object("7"))).await;
    assert!(query.contains("fieldManager=jac-orc"), "{query}");
    assert!(!query.contains("force"), "no force unless asked: {query}");
    let (object, action) = result.unwrap();
    assert_eq!(action, Action::Created);
    assert_eq!(object.namespace.as_deref(), Some("ns1"));
}

#[tokio::test]
async fn force_conflicts_sets_force() {
    let (result, query) = run(true, json_response(200, &object_with("7", "0")), json_response(200, &object("8"))).await;
    assert!(query.contains("force=true"), "{query}");
    assert_eq!(result.unwrap().1, Action::Configured);
}

#[tokio::test]
async fn unchanged_resource_version_reports_unchanged() {
    let (result, _) = run(false, json_response(200, &object("7")), json_response(200, &object("7"))).await;
    assert_eq!(result.unwrap().1, Action::Unchanged);
}

#[tokio::test]
async fn a_409_becomes_a_conflict_naming_the_other_manager() {
    let msg = r#"Apply failed with 1 conflict: conflict with "helm" using v1: .data.a"#;
    let (result, _) = run(false, json_response(200, &object("7")), status(409, "Conflict", msg)).await;
    match result.unwrap_err() {
        Error::Kube(super::KubeError::Conflict { object, manager, message, .. }) => {
            assert_eq!(object, "configmap/cm");
            assert_eq!(manager, "helm");
            assert_eq!(message, msg);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn a_422_becomes_a_rejection_with_the_server_message() {
    let msg = r#"ConfigMap "cm" is invalid: data[a b]: Invalid value: "a b": a valid config key must consist of alphanumeric characters"#;
    let (result, _) = run(false, status(404, "NotFound", "not found"), status(422, "Invalid", msg)).await;
    match result.unwrap_err() {
        Error::Rejected { object, message } => {
            assert_eq!(object, "configmap/cm");
            assert_eq!(message, msg);
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn dry_run_is_one_apply_patch_with_dry_run_all_and_nothing_else() {
    let (client, resolver, mut handle) = setup();
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.expect("PATCH expected");
        assert_eq!(req.method(), http::Method::PATCH);
        assert_eq!(req.headers()["content-type"], "application/apply-patch+yaml");
        let query = req.uri().query().unwrap_or_default().to_string();
        send.send_response(json_response(200, &object("7")));
        // Nothing else is asked: the mock ends when the handle drops.
        query
    });
    let features = ServerFeatures { version: "v1.20.2".into(), grpc_probes: false };
    let applier = Applier {
        client: &client,
        resolver: &resolver,
        field_manager: "jac-orc",
        force: false,
        crd_timeout: Duration::from_secs(1),
        server: &features,
    };
    let checked = tokio::time::timeout(Duration::from_secs(5), applier.dry_run(&planned(), &id(), "latest"))
        .await
        .expect("dry run hung")
        .unwrap();
    assert!(checked);
    let query = tokio::time::timeout(Duration::from_secs(5), server).await.expect("mock hung").expect("mock panicked");
    assert!(query.contains("dryRun=All") && query.contains("fieldManager=jac-orc"), "{query}");
}

#[tokio::test]
async fn dry_run_rejections_carry_the_server_message() {
    let (client, resolver, mut handle) = setup();
    let msg = "ConfigMap \"cm\" is invalid: data: Invalid value";
    let server = tokio::spawn(async move {
        let (_, send) = handle.next_request().await.expect("PATCH expected");
        send.send_response(status(422, "Invalid", msg));
    });
    let features = ServerFeatures { version: "v1.20.2".into(), grpc_probes: false };
    let applier = Applier {
        client: &client,
        resolver: &resolver,
        field_manager: "jac-orc",
        force: false,
        crd_timeout: Duration::from_secs(1),
        server: &features,
    };
    let err = tokio::time::timeout(Duration::from_secs(5), applier.dry_run(&planned(), &id(), "latest"))
        .await
        .expect("dry run hung")
        .unwrap_err();
    assert!(
        matches!(&err, Error::Rejected { object, message } if object == "configmap/cm" && message == msg),
        "{err:?}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_dry_run_answered_404_is_not_checked_rather_than_rejected() {
    // e.g. a RoleBinding whose Role the same plan creates first: `roles "x" not found`.
    let (client, resolver, mut handle) = setup();
    let server = tokio::spawn(async move {
        let (_, send) = handle.next_request().await.expect("PATCH expected");
        send.send_response(status(404, "NotFound", "roles.rbac.authorization.k8s.io \"x\" not found"));
    });
    let features = ServerFeatures { version: "v1.20.2".into(), grpc_probes: false };
    let applier = Applier {
        client: &client,
        resolver: &resolver,
        field_manager: "jac-orc",
        force: false,
        crd_timeout: Duration::from_secs(1),
        server: &features,
    };
    let checked = tokio::time::timeout(Duration::from_secs(5), applier.dry_run(&planned(), &id(), "latest"))
        .await
        .expect("dry run hung")
        .unwrap();
    assert!(!checked);
    server.await.unwrap();
}

#[tokio::test]
async fn a_preview_whose_object_moved_under_it_compares_again_against_what_the_dry_run_used() {
    let (client, resolver, mut handle) = setup();
    let with_revision = |rv: &str| {
        let mut o = object(rv);
        o["metadata"]["annotations"] = json!({"deployment.kubernetes.io/revision": "3"});
        o
    };
    let server = tokio::spawn(async move {
        // Read at 7; a controller writes its annotation (8) before the dry run answers from it.
        let reads = [(object("7"), with_revision("8")), (with_revision("8"), with_revision("8"))];
        for (live, dry_run) in reads {
            let (req, send) = handle.next_request().await.expect("GET expected");
            assert_eq!(req.method(), http::Method::GET);
            send.send_response(json_response(200, &live));
            let (req, send) = handle.next_request().await.expect("dry-run PATCH expected");
            assert!(req.uri().query().unwrap_or_default().contains("dryRun=All"));
            send.send_response(json_response(200, &dry_run));
        }
    });
    let features = ServerFeatures { version: "v1.20.2".into(), grpc_probes: false };
    let applier = Applier {
        client: &client,
        resolver: &resolver,
        field_manager: "jac-orc",
        force: false,
        crd_timeout: Duration::from_secs(1),
        server: &features,
    };
    let (_, action, _) = tokio::time::timeout(Duration::from_secs(5), applier.preview(&planned(), &id(), "latest"))
        .await
        .expect("preview hung")
        .unwrap();
    assert_eq!(action, Action::Unchanged, "the controller's write is not ours to report");
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("mock hung").expect("mock panicked");
}

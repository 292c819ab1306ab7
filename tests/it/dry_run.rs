//! DryRun over gRPC and REST: the seed's example, and bad input.

use jac_splice_orc::pb;
use serde_json::{json, Value};
use tonic::Code;

use crate::support::{struct_of, within, yaml_docs, TestServer};

fn seed_request() -> pb::DryRunRequest {
    pb::DryRunRequest {
        module: "mongodb".into(),
        version: String::new(),
        config: Some(struct_of(json!({"name": "testing-db", "namespace": "testing"}))),
    }
}

#[tokio::test]
async fn seed_dry_run_example_works_over_grpc() {
    let server = TestServer::start().await;
    let mut c = server.grpc().await;
    let r = within(c.dry_run(seed_request())).await.unwrap().into_inner();
    let current = |n: &str| r.placeholders[n].current.clone().unwrap().kind;
    assert_eq!(current("name"), Some(prost_types::value::Kind::StringValue("testing-db".into())));
    assert_eq!(current("namespace"), Some(prost_types::value::Kind::StringValue("testing".into())));
    assert!(r.has_dependencies);
    let mut deps: Vec<_> = r.dependencies.keys().cloned().collect();
    deps.sort();
    assert_eq!(deps, ["custom_resource_definition.yaml", "operator.yaml"]);
    assert!(r.modules.contains_key("mongodb.yaml"));
    assert!(r.modules["mongodb.yaml"].contains("name: \"testing-db\""));
    assert_eq!(r.objects.first().unwrap().kind, "CustomResourceDefinition");
    server.stop().await;
}

#[tokio::test]
async fn seed_dry_run_example_works_over_rest() {
    let server = TestServer::start().await;
    let body: Value = within(
        server
            .http()
            .post(format!("{}/deployment/dry_run", server.url()))
            .json(&json!({"module": "mongodb", "config": {"name": "testing-db", "namespace": "testing"}}))
            .send(),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(body["placeholders"]["name"]["current"], "testing-db");
    assert_eq!(body["placeholders"]["name"]["default"], "jac-mongodb");
    assert_eq!(body["placeholders"]["namespace"]["current"], "testing");
    assert_eq!(body["placeholders"]["replicaset"]["current"], 1);
    let deps = body["dependencies"].as_object().unwrap();
    assert!(deps.contains_key("custom_resource_definition.yaml") && deps.contains_key("operator.yaml"));
    let docs = yaml_docs(body["modules"]["mongodb.yaml"].as_str().unwrap());
    assert_eq!(docs[0]["metadata"]["name"], "testing-db");
    assert_eq!(docs[0]["metadata"]["namespace"], "testing");
    // The password is a generated secret, never the original's fixed 12345678.
    assert_eq!(body["placeholders"]["password"]["secret"], true);
    let pw = docs[1]["stringData"]["password"].as_str().unwrap();
    assert!(pw.len() >= 24 && pw != "12345678", "{pw}");
    server.stop().await;
}

#[tokio::test]
async fn redis_without_dependencies_reports_null_dependencies_and_defaults() {
    let server = TestServer::start().await;
    let body: Value = within(
        server.http().post(format!("{}/deployment/dry_run", server.url())).json(&json!({"module": "redis"})).send(),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(body["dependencies"], Value::Null);
    assert_eq!(body["placeholders"]["namespace"]["current"], "default");
    let docs = yaml_docs(body["modules"]["redis.yaml"].as_str().unwrap());
    let kinds: Vec<_> = docs.iter().map(|d| d["kind"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds, ["Service", "Deployment", "ConfigMap"]);
    assert_eq!(docs[2]["data"]["redis-config"], "maxmemory 1000mb\nmaxmemory-policy allkeys-lru\n");
    assert_eq!(docs[1]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"], "0.2");
    server.stop().await;
}

async fn grpc_error(server: &TestServer, module: &str, version: &str, config: Value) -> tonic::Status {
    let mut c = server.grpc().await;
    let req = pb::DryRunRequest { module: module.into(), version: version.into(), config: Some(struct_of(config)) };
    within(c.dry_run(req)).await.unwrap_err()
}

#[tokio::test]
async fn unknown_module_or_version_is_not_found_listing_valid_ones() {
    let server = TestServer::start().await;
    let s = grpc_error(&server, "postgres", "", json!({})).await;
    assert_eq!(s.code(), Code::NotFound);
    assert!(s.message().contains("redis") && s.message().contains("mongodb"), "{}", s.message());
    let s = grpc_error(&server, "redis", "9.9.9", json!({})).await;
    assert_eq!(s.code(), Code::NotFound);
    assert!(s.message().contains("7.4.2") && s.message().contains("latest"), "{}", s.message());
    let r = within(
        server
            .http()
            .post(format!("{}/deployment/dry_run", server.url()))
            .json(&json!({"module": "redis", "version": "9"}))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("7.4.2"));
    assert_eq!(body["field"], "version");
    server.stop().await;
}

#[tokio::test]
async fn path_like_names_are_invalid_arguments() {
    let server = TestServer::start().await;
    for (m, v) in [
        ("../redis", "latest"),
        ("redis", "../latest"),
        ("a/b", "latest"),
        ("Redis", "latest"),
        ("redis", ".."),
        ("redis", "lat est"),
    ] {
        let s = grpc_error(&server, m, v, json!({})).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{m} {v}: {}", s.message());
    }
    let r = within(
        server.http().post(format!("{}/deployment/dry_run", server.url())).json(&json!({"module": "../../etc"})).send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    server.stop().await;
}

#[tokio::test]
async fn unknown_placeholder_is_named_with_valid_ones() {
    let server = TestServer::start().await;
    let s = grpc_error(&server, "redis", "", json!({"memroy": "1gb"})).await;
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("memroy") && s.message().contains("memory") && s.message().contains("cpu"),
        "{}",
        s.message()
    );
    server.stop().await;
}

#[tokio::test]
async fn wrong_type_names_placeholder_and_expected_type() {
    let server = TestServer::start().await;
    let s = grpc_error(&server, "jac-cloud", "", json!({"replicas": "two"})).await;
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("replicas") && s.message().contains("integer"), "{}", s.message());
    let r = within(
        server
            .http()
            .post(format!("{}/deployment/dry_run", server.url()))
            .json(&json!({"module": "jac-cloud", "config": {"env-vars": ["x"]}}))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("env-vars"));
    assert!(body["detail"].as_str().unwrap().contains("map"));
    assert_eq!(body["field"], "config.env-vars");
    server.stop().await;
}

#[tokio::test]
async fn values_with_newlines_and_document_markers_stay_in_one_scalar() {
    let server = TestServer::start().await;
    let evil = "x\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: pwned";
    let body: Value = within(
        server
            .http()
            .post(format!("{}/deployment/dry_run", server.url()))
            .json(&json!({"module": "jac-cloud", "config": {"image": evil, "env-vars": {"K": evil}, "args": [evil]}}))
            .send(),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let docs = yaml_docs(body["modules"]["jac-cloud.yml"].as_str().unwrap());
    assert_eq!(docs.len(), 3, "no extra objects");
    assert!(docs.iter().all(|d| d["metadata"]["name"] != "pwned"));
    assert_eq!(docs[1]["stringData"]["K"], evil);
    assert_eq!(docs[2]["spec"]["template"]["spec"]["containers"][0]["image"], evil);
    server.stop().await;
}

#[tokio::test]
async fn malformed_json_and_oversized_bodies_get_json_details() {
    let server = TestServer::start().await;
    let url = format!("{}/deployment/dry_run", server.url());
    let r = within(server.http().post(&url).header("content-type", "application/json").body("{\"module\": ").send())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("invalid JSON"));
    let r = within(server.http().post(&url).json(&json!({"config": {}})).send()).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "module");
    let big = format!("{{\"module\": \"redis\", \"config\": {{\"name\": \"{}\"}}}}", "a".repeat(1024 * 1024 + 10));
    let r = within(server.http().post(&url).header("content-type", "application/json").body(big).send()).await.unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.json::<Value>().await.unwrap()["detail"].as_str().unwrap().contains("larger than"));
    server.stop().await;
}

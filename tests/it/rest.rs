//! The REST gateway: the seed's deploy shape, NDJSON streaming, and the small routes.

use serde_json::{json, Value};

use crate::support::{redis_available, redis_ping, within, TestServer};

#[tokio::test]
async fn seed_deploy_example_gets_results_and_errors_with_failed_precondition() {
    let server = TestServer::start().await;
    let r = within(
        server
            .http()
            .post(format!("{}/deployment", server.url()))
            .json(&json!({"module": "mongodb", "version": "latest", "config": {"name": "testing-db", "namespace": "testing"}}))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 412);
    let body: Value = r.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("`mongod`"));
    assert_eq!(body["reason"], "PROGRAM_MISSING");
    server.stop().await;
}

#[tokio::test]
async fn redis_deploys_over_rest_with_kubectl_style_results() {
    assert!(redis_available());
    let server = TestServer::start().await;
    let http = server.http();
    let r = within(
        http.post(format!("{}/deployment", server.url()))
            .json(&json!({"module": "redis", "config": {"name": "jac-redis"}}))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let results: Vec<String> = serde_json::from_value(body["modules"]["results"].clone()).unwrap();
    assert_eq!(
        &results[..3],
        ["service/jac-redis created", "deployment.apps/jac-redis created", "configmap/jac-redis created"]
    );
    assert_eq!(body["errors"], json!([]));
    assert_eq!(body["dependencies"], json!({"results": [], "errors": []}));
    assert_eq!(body["deployment"]["config"]["memory"], "1000mb");
    let endpoint = body["endpoints"][0].as_str().unwrap().to_string();
    assert_eq!(redis_ping(&endpoint).await.unwrap(), "+PONG");

    let one: Value = within(http.get(format!("{}/deployment/default/redis/jac-redis", server.url())).send())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["endpoints"][0], endpoint.as_str());
    let all: Value =
        within(http.get(format!("{}/deployment", server.url())).send()).await.unwrap().json().await.unwrap();
    assert_eq!(all["default"]["redis"]["jac-redis"]["module"], "redis");

    // NDJSON: one line per event, then the summary.
    let text = within(
        http.post(format!("{}/deployment", server.url()))
            .header("accept", "application/x-ndjson")
            .json(&json!({"module": "redis", "config": {"name": "jac-redis"}}))
            .send(),
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["event"]["line"], "service/jac-redis unchanged");
    assert!(lines.last().unwrap()["summary"]["deployment"]["name"] == "jac-redis");

    let r = within(http.delete(format!("{}/deployment/default/redis/jac-redis", server.url())).send()).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert!(body["results"].as_array().unwrap().iter().any(|l| l == "service/jac-redis deleted"), "{body}");
    assert!(redis_ping(&endpoint).await.is_err());
    let r = within(http.get(format!("{}/deployment/default/redis/jac-redis", server.url())).send()).await.unwrap();
    assert_eq!(r.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn small_routes_answer() {
    let server = TestServer::start().await;
    let http = server.http();
    let h: Value = within(http.get(format!("{}/healthz", server.url())).send()).await.unwrap().json().await.unwrap();
    assert_eq!(h, "OK");
    let t: Value = within(http.get(format!("{}/templates", server.url())).send()).await.unwrap().json().await.unwrap();
    let modules: Vec<&str> = t.as_array().unwrap().iter().map(|m| m["module"].as_str().unwrap()).collect();
    for m in ["jac-cloud", "mongodb", "mongodb-cluster", "python-module", "redis"] {
        assert!(modules.contains(&m), "{modules:?}");
    }
    let o: Value =
        within(http.get(format!("{}/openapi.json", server.url())).send()).await.unwrap().json().await.unwrap();
    assert_eq!(o["openapi"], "3.1.0");
    assert!(o["paths"]["/deployment/dry_run"]["post"].is_object());
    let r = within(http.get(format!("{}/nope", server.url())).send()).await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["detail"].as_str().unwrap().contains("/nope"));
    let r =
        within(http.post(format!("{}/deployment", server.url())).json(&json!({"module": "redis", "confg": {}})).send())
            .await
            .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "confg");
    server.stop().await;
}

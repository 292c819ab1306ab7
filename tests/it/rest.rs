//! The REST gateway: the seed's deploy shape, NDJSON streaming, and the small routes.

use serde_json::{json, Value};

use crate::support::{redis_available, redis_ping, within, KubeServe, TestServer};

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

#[tokio::test]
async fn every_documented_operation_has_an_id_and_tags_and_answers_on_its_route() {
    let server = TestServer::start().await;
    let http = server.http();
    let doc: Value =
        within(http.get(format!("{}/openapi.json", server.url())).send()).await.unwrap().json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(!id.is_empty(), "{method} {path} has no operationId");
            assert!(!op["tags"].as_array().map(Vec::is_empty).unwrap_or(true), "{method} {path} has no tags");
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let expected = [
        ("delete", "/deployment/{namespace}/{module}/{name}"),
        ("get", "/deployment"),
        ("get", "/deployment/{namespace}/{module}/{name}"),
        ("get", "/deployment/{namespace}/{module}/{name}/history"),
        ("get", "/deployment/{namespace}/{module}/{name}/logs"),
        ("get", "/deployment/{namespace}/{module}/{name}/secrets"),
        ("get", "/healthz"),
        ("get", "/metrics"),
        ("get", "/module/access/{namespace}/{deployment}"),
        ("get", "/openapi.json"),
        ("get", "/readyz"),
        ("get", "/templates"),
        ("post", "/deployment"),
        ("post", "/deployment/dry_run"),
        ("post", "/deployment/{namespace}/{module}/{name}/diff"),
        ("post", "/deployment/{namespace}/{module}/{name}/rollback"),
        ("post", "/module/ensure"),
    ];
    assert_eq!(documented, expected.map(|(m, p)| (m.to_string(), p.to_string())));
    let ids: std::collections::BTreeSet<&str> = paths
        .values()
        .flat_map(|i| i.as_object().unwrap().values())
        .filter_map(|o| o["operationId"].as_str())
        .collect();
    assert_eq!(ids.len(), documented.len(), "operationIds are unique: {ids:?}");
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer", "{doc}");
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    assert_eq!(paths["/healthz"]["get"]["security"], json!([{}]), "health is open");
    assert_eq!(paths["/readyz"]["get"]["security"], json!([{}]), "readiness is open");

    // Each documented operation reaches a route of its own (never the JSON 404 for unknown
    // paths, never 405): the document and the router come from one registration.
    for (method, path) in &documented {
        let url = format!(
            "{}{}",
            server.url(),
            path.replace("{namespace}", "default")
                .replace("{module}", "redis")
                .replace("{name}", "nope")
                .replace("{deployment}", "nope")
        );
        let req = http.request(method.to_uppercase().parse().unwrap(), url);
        let req = if method == "post" { req.json(&json!({})) } else { req };
        let r = within(req.send()).await.unwrap();
        assert_ne!(r.status(), 405, "{method} {path}");
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_ne!(body["reason"], "NO_ROUTE", "{method} {path}: {body}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ndjson_client_that_leaves_during_wait_stops_the_wait_and_the_deploy_is_still_recorded() {
    // The test API server has no kubelet: pods never become Ready, so the wait never ends by itself.
    let Some(server) = KubeServe::start("gone-rest").await else {
        return;
    };
    let mut response = within(
        server
            .http()
            .post(format!("{}/deployment?wait=true&timeout=600", server.url()))
            .header("accept", "application/x-ndjson")
            .json(&json!({"module": "redis", "config": {"name": "gone"}}))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    while !text.lines().any(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["event"]["action"] == "waiting")) {
        let chunk = within(response.chunk()).await.unwrap().expect("the stream stays open while waiting");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(response);

    server.wait_for_log("the caller left").await;
    let d = server.wait_for_record("gone", |d| d.message.contains("disconnected")).await;
    assert_eq!(d.status(), jac_splice_orc::pb::DeploymentStatus::Deployed, "{d:?}");
    assert_eq!(d.objects.len(), 3, "{d:?}");
    server.stop().await;
}

//! `GetModuleAccess` / `GET /module/access/{namespace}/{deployment}` (issue 13) on the local
//! backend through the real server: an authorized caller gets the ready module servers and the
//! call token they accept (and calls one directly with it); callers who may not call the
//! deployment are refused before it is looked up; unknown deployments and bad names get errors
//! naming the field (a deployment without a ready module server: `service::access`'s tests).

use std::collections::BTreeSet;

use jac_splice_orc::pb::{self, module_service_client::ModuleServiceClient, value::Kind};
use serde_json::{json, Value};
use tonic::Code;
use tonic_types::StatusExt;

use crate::proxy::{call_token, kind};
use crate::support::{http_client, within, TestServer, CALLER, VIEWER};

fn access(deployment: &str) -> pb::GetModuleAccessRequest {
    pb::GetModuleAccessRequest { namespace: String::new(), deployment: deployment.into() }
}

async fn rest_access(server: &TestServer, token: Option<&str>, namespace: &str, deployment: &str) -> (u16, Value) {
    let url = format!("{}/module/access/{namespace}/{deployment}", server.url());
    let r = within(http_client(token).get(url).send()).await.unwrap();
    let status = r.status().as_u16();
    (status, within(r.json()).await.expect("a JSON body"))
}

/// Deploys a python-module deployment (REST, admin) and returns its recorded endpoints.
async fn deploy(server: &TestServer, config: Value) -> Vec<String> {
    let body = json!({"module": "python-module", "config": config, "wait": true});
    let r = within(server.http().post(format!("{}/deployment", server.url())).json(&body).send()).await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let body: Value = r.json().await.unwrap();
    let endpoints = body["deployment"]["endpoints"].as_array().cloned().unwrap_or_default();
    endpoints.iter().map(|e| e.as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn an_allowed_caller_gets_the_ready_module_servers_and_the_call_token_they_accept() {
    let server = TestServer::start().await;
    deploy(&server, json!({"name": "direct", "module": "json", "replicas": 2})).await;
    let token = call_token(&server, "direct").await;

    let mut grpc = server.grpc_as(Some(CALLER)).await;
    let got = within(grpc.get_module_access(access("direct"))).await.unwrap().into_inner();
    assert_eq!((got.namespace.as_str(), got.deployment.as_str(), got.module.as_str()), ("default", "direct", "json"));
    assert_eq!(got.call_token, token);
    assert_eq!(got.ttl_seconds, 60, "the default validity");
    assert!(got.expires_at.ends_with('Z') && got.expires_at.len() == 20, "{}", got.expires_at);
    let addresses: Vec<String> = got.endpoints.iter().map(|e| e.address.clone()).collect();
    assert_eq!(addresses.len(), 2, "both replicas are ready: {addresses:?}");
    let mut sorted = addresses.clone();
    sorted.sort();
    assert_eq!(addresses, sorted, "in address order");

    // Each endpoint answers a direct ModuleService call carrying the call token.
    for address in &addresses {
        let mut direct = within(ModuleServiceClient::connect(format!("http://{address}"))).await.unwrap();
        let mut request = tonic::Request::new(pb::CallRequest {
            session: "direct-access".into(),
            target: String::new(),
            path: vec!["loads".into()],
            args: vec![pb::Value { kind: Some(Kind::StrValue("[1, 2]".into())) }],
            kwargs: vec![],
        });
        request.metadata_mut().insert("authorization", format!("Bearer {}", got.call_token).parse().unwrap());
        let answer = within(direct.call(request)).await.unwrap().into_inner();
        assert!(matches!(kind(answer), Kind::ListValue(l) if l.items.len() == 2), "{address}");
    }

    // REST answers the same through the same service call.
    let (status, body) = rest_access(&server, Some(CALLER), "default", "direct").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["call_token"], token.as_str());
    assert_eq!(body["module"], "json");
    assert_eq!(body["ttl_seconds"], 60);
    let rest: BTreeSet<&str> = body["endpoints"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    assert_eq!(rest, addresses.iter().map(String::as_str).collect());
    server.stop().await;
}

#[tokio::test]
async fn callers_not_allowed_to_call_are_refused_before_the_deployment_is_looked_up() {
    let server = TestServer::start().await;
    deploy(&server, json!({"name": "guarded", "module": "json"})).await;
    for name in ["guarded", "no-such-deployment"] {
        let mut viewer = server.grpc_as(Some(VIEWER)).await;
        let err = within(viewer.get_module_access(access(name))).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert_eq!(err.message(), format!("user vera may not call modules \"{name}\" in namespace default"));
        let (status, body) = rest_access(&server, Some(VIEWER), "default", name).await;
        assert_eq!((status, body["reason"].as_str()), (403, Some("PERMISSION_DENIED")), "{body}");
        assert!(body.get("call_token").is_none(), "{body}");

        let mut anonymous = server.grpc_as(None).await;
        let err = within(anonymous.get_module_access(access(name))).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        let (status, body) = rest_access(&server, None, "default", name).await;
        assert_eq!((status, body["reason"].as_str()), (401, Some("UNAUTHENTICATED")), "{body}");
    }
    server.stop().await;
}

#[tokio::test]
async fn unknown_deployments_and_bad_names_get_errors_naming_the_field() {
    let server = TestServer::start().await;
    let mut grpc = server.grpc_as(Some(CALLER)).await;

    let err = within(grpc.get_module_access(access("nowhere"))).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(err.message(), "python-module deployment default/nowhere not found");
    assert_eq!(err.get_error_details().error_info().unwrap().reason, "DEPLOYMENT_NOT_FOUND");
    let (status, body) = rest_access(&server, Some(CALLER), "default", "nowhere").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!((body["field"].as_str(), body["reason"].as_str()), (Some("deployment"), Some("DEPLOYMENT_NOT_FOUND")));

    for (namespace, deployment, field) in
        [("", "", "deployment"), ("", "Not_A_Name", "deployment"), ("Bad_Ns", "x", "namespace")]
    {
        let request = pb::GetModuleAccessRequest { namespace: namespace.into(), deployment: deployment.into() };
        let err = within(grpc.get_module_access(request)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(&format!("invalid {field}")), "{err:?}");
        let violations = err.get_error_details().bad_request().unwrap().field_violations.clone();
        assert_eq!(violations[0].field, field);
    }
    let (status, body) = rest_access(&server, Some(CALLER), "default", "Not_A_Name").await;
    assert_eq!((status, body["field"].as_str()), (400, Some("deployment")), "{body}");

    server.stop().await;
}

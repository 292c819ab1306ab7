//! gRPC reflection (what grpcurl uses to list and describe services) and the health service.

use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

use crate::support::{within, TestServer};

async fn ask(client: &mut ServerReflectionClient<tonic::transport::Channel>, req: MessageRequest) -> MessageResponse {
    let request = ServerReflectionRequest { host: String::new(), message_request: Some(req) };
    let mut stream =
        within(client.server_reflection_info(tokio_stream::iter(vec![request]))).await.unwrap().into_inner();
    within(stream.message()).await.unwrap().unwrap().message_response.unwrap()
}

#[tokio::test]
async fn reflection_lists_and_describes_every_service() {
    let server = TestServer::start().await;
    let channel = within(tonic::transport::Endpoint::from_shared(server.url()).unwrap().connect()).await.unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let MessageResponse::ListServicesResponse(list) =
        ask(&mut client, MessageRequest::ListServices(String::new())).await
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["jac.splice.v1.Orchestrator", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    let MessageResponse::FileDescriptorResponse(files) =
        ask(&mut client, MessageRequest::FileContainingSymbol("jac.splice.v1.Orchestrator".into())).await
    else {
        panic!("expected descriptors");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn health_reports_serving() {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    let server = TestServer::start().await;
    let channel = within(tonic::transport::Endpoint::from_shared(server.url()).unwrap().connect()).await.unwrap();
    let mut h = HealthClient::new(channel);
    for service in ["", "jac.splice.v1.Orchestrator"] {
        let r = within(h.check(HealthCheckRequest { service: service.into() })).await.unwrap().into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    server.stop().await;
}

/// What grpcurl (1.8, v1alpha reflection) sees: the services this server answers, not the module
/// servers' ModuleService, and the error details of a failed call decoded by name.
#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_lists_only_served_services_and_decodes_error_info() {
    let Some(grpcurl) = crate::tls::grpcurl() else { return };
    let served = crate::served::Served::start(&[], &[]).await;
    let target = served.addr.clone();
    let bearer = format!("authorization: Bearer {}", served.admin_token());
    let grpcurl_run = |args: &[&str]| {
        let mut all = vec!["-plaintext", "-H", bearer.as_str()];
        all.push(target.as_str());
        all.extend_from_slice(args);
        tokio::task::block_in_place(|| crate::tls::run(&grpcurl, &all, &[]))
    };
    let (ok, out, err) = grpcurl_run(&["list"]);
    assert!(ok, "{err}{out}");
    for want in ["jac.splice.v1.Orchestrator", "jac.splice.v1.ModuleProxy", "grpc.health.v1.Health"] {
        assert!(out.lines().any(|l| l == want), "{want} missing from {out}");
    }
    assert!(!out.contains("ModuleService"), "ModuleService answers Unimplemented here: {out}");

    let (ok, out, err) = grpcurl_run(&["describe", "google.rpc.ErrorInfo"]);
    assert!(ok && out.contains("reason"), "{err}{out}");

    let body = r#"{"namespace":"default","module":"redis","name":"absent"}"#;
    let (ok, out, err) = tokio::task::block_in_place(|| {
        crate::tls::run(
            &grpcurl,
            &["-plaintext", "-H", &bearer, "-d", body, &target, "jac.splice.v1.Orchestrator/GetDeployment"],
            &[],
        )
    });
    let text = format!("{out}{err}");
    assert!(!ok && text.contains("NotFound"), "{text}");
    assert!(text.contains("google.rpc.ErrorInfo") && text.contains("DEPLOYMENT_NOT_FOUND"), "{text}");
    assert!(!text.contains("not recognized"), "the details decode: {text}");
    served.stop().await;
}

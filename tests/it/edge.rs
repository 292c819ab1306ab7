//! The HTTP edge against browsers and malformed requests (issue 9): JSON bodies only (a
//! `text/plain` no-preflight POST deploys nothing), CORS off unless an origin is allowed, a
//! loopback listener answers only loopback names (DNS rebinding), every error status has a JSON
//! body (405, 414, query and path errors, unknown routes), undecodable protobuf is
//! InvalidArgument, and ModuleProxy buffers at most 8 MiB of an out-of-order request, whatever
//! its size, while the orchestrator's memory stays low.

use std::convert::Infallible;

use bytes::Bytes;
use jac_splice_orc::config::EdgeConfig;
use jac_splice_orc::pb;
use jac_splice_orc::service::Settings;
use prost::Message;
use serde_json::{json, Value};
use tonic::Code;
use tonic_types::StatusExt;

use crate::local_backend::lab::Lab;
use crate::support::{within, Options, TestServer};

async fn json_of(r: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {status} {text:?}"));
    (status, headers, body)
}

fn error_shape(body: &Value) {
    let keys: Vec<&str> = body.as_object().expect("an object").keys().map(String::as_str).collect();
    assert_eq!(keys, ["detail", "field", "reason"], "{body}");
}

async fn deployments(server: &TestServer) -> Value {
    within(server.http().get(format!("{}/deployment", server.url())).send()).await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415_and_deploys_nothing() {
    let server = TestServer::start().await;
    let body = json!({"module": "redis", "config": {"name": "csrf"}}).to_string();
    let http = server.http();
    for (path, content_type) in [
        ("deployment", Some("text/plain")),
        ("deployment", Some("text/plain;charset=UTF-8")),
        ("deployment", Some("application/x-www-form-urlencoded")),
        ("deployment", Some("multipart/form-data; boundary=x")),
        ("deployment", None),
        ("deployment/dry_run", Some("text/plain")),
    ] {
        let mut r = http.post(format!("{}/{path}", server.url())).body(body.clone());
        if let Some(ct) = content_type {
            r = r.header("content-type", ct);
        }
        let (status, _, b) = json_of(within(r.send()).await.unwrap()).await;
        assert_eq!(status, 415, "{content_type:?}: {b}");
        error_shape(&b);
        assert_eq!((b["reason"].as_str(), b["field"].as_str()), (Some("UNSUPPORTED_MEDIA_TYPE"), Some("content-type")));
    }
    assert_eq!(deployments(&server).await, json!({}), "nothing was deployed");
    // JSON with parameters is JSON.
    let r = http
        .post(format!("{}/deployment/dry_run", server.url()))
        .header("content-type", "application/json; charset=utf-8")
        .body(body.clone());
    assert_eq!(within(r.send()).await.unwrap().status(), 200);
    // DELETE: a body must be JSON too; without one it goes through.
    let url = format!("{}/deployment/default/redis/csrf", server.url());
    let (status, _, b) =
        json_of(within(http.delete(&url).header("content-type", "text/plain").body("x").send()).await.unwrap()).await;
    assert_eq!((status, b["reason"].as_str()), (415, Some("UNSUPPORTED_MEDIA_TYPE")), "{b}");
    let (status, _, b) = json_of(within(http.delete(&url).send()).await.unwrap()).await;
    assert_eq!((status, b["reason"].as_str()), (404, Some("DEPLOYMENT_NOT_FOUND")), "{b}");
    server.stop().await;
}

#[tokio::test]
async fn a_loopback_listener_refuses_hosts_that_are_not_loopback_names() {
    let server = TestServer::start().await;
    let port = server.addr.port();
    let http = server.http();
    for host in [format!("evil.example:{port}"), "evil.example".into(), format!("127.0.0.1.nip.io:{port}")] {
        let (status, _, b) =
            json_of(within(http.get(format!("{}/healthz", server.url())).header("host", &host).send()).await.unwrap())
                .await;
        assert_eq!(status, 421, "{host}: {b}");
        error_shape(&b);
        assert_eq!(b["reason"], "HOST_NOT_ALLOWED");
        let deploy = http
            .post(format!("{}/deployment", server.url()))
            .header("host", &host)
            .json(&json!({"module": "redis", "config": {"name": "rebound"}}));
        assert_eq!(within(deploy.send()).await.unwrap().status(), 421);
    }
    assert_eq!(deployments(&server).await, json!({}), "nothing was deployed");
    for host in
        [format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}"), "app.localhost".into()]
    {
        let r = within(http.get(format!("{}/healthz", server.url())).header("host", &host).send()).await.unwrap();
        assert_eq!(r.status(), 200, "{host}");
    }
    // gRPC names the host in :authority; the ModuleProxy fast path checks it too.
    let evil: http::Uri = format!("http://evil.example:{port}").parse().unwrap();
    let channel = tonic::transport::Endpoint::from_shared(server.url()).unwrap().origin(evil).connect().await.unwrap();
    let err = within(
        pb::orchestrator_client::OrchestratorClient::new(channel.clone()).list_templates(pb::ListTemplatesRequest {}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(err.get_error_details().error_info().unwrap().reason, "HOST_NOT_ALLOWED");
    let describe = pb::ProxyDescribeRequest {
        target: Some(pb::ProxyTarget { deployment: "any".into(), namespace: String::new() }),
        request: Some(pb::DescribeRequest::default()),
    };
    let err = within(pb::module_proxy_client::ModuleProxyClient::new(channel).describe(describe)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let mut ok = server.grpc().await;
    assert!(within(ok.list_templates(pb::ListTemplatesRequest {})).await.is_ok());
    server.stop().await;
}

fn preflight(http: &reqwest::Client, url: String, origin: &str) -> reqwest::RequestBuilder {
    http.request(reqwest::Method::OPTIONS, url)
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,x-grpc-web")
}

#[tokio::test]
async fn cors_is_off_by_default_so_other_origins_get_no_preflight_and_no_answer() {
    let server = TestServer::start().await;
    let http = server.http();
    let (status, headers, b) = json_of(
        within(preflight(&http, format!("{}/deployment", server.url()), "https://app.example").send()).await.unwrap(),
    )
    .await;
    assert_eq!((status, b["reason"].as_str()), (403, Some("ORIGIN_NOT_ALLOWED")), "{b}");
    assert!(!headers.contains_key("access-control-allow-origin"));
    let deploy = http
        .post(format!("{}/deployment", server.url()))
        .header("origin", "https://evil.example")
        .json(&json!({"module": "redis", "config": {"name": "cross"}}));
    let (status, _, b) = json_of(within(deploy.send()).await.unwrap()).await;
    assert_eq!((status, b["field"].as_str()), (403, Some("origin")), "{b}");
    assert_eq!(deployments(&server).await, json!({}), "nothing was deployed");
    // The server's own pages (/docs) are same-origin.
    let same = http
        .post(format!("{}/deployment/dry_run", server.url()))
        .header("origin", server.url())
        .json(&json!({"module": "redis"}));
    assert_eq!(within(same.send()).await.unwrap().status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn allowed_origins_get_preflights_and_cors_headers_for_rest_and_grpc_web() {
    let settings = Settings { edge: EdgeConfig::default().cors_origin("https://app.example"), ..Settings::default() };
    let server = TestServer::start_with(Options { settings, ..Options::default() }).await;
    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(reqwest::header::AUTHORIZATION, format!("Bearer {}", crate::support::ADMIN).parse().unwrap());
    // Preflights carry no credentials (browsers send none); the requests after them do.
    let bare = reqwest::Client::builder().http1_only().build().unwrap();
    let http = reqwest::Client::builder().http1_only().default_headers(auth).build().unwrap();
    for path in ["deployment", "jac.splice.v1.Orchestrator/ListTemplates"] {
        let r =
            within(preflight(&bare, format!("{}/{path}", server.url()), "https://app.example").send()).await.unwrap();
        assert_eq!(r.status(), 204, "{path}");
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example");
        assert!(h["access-control-allow-methods"].to_str().unwrap().contains("POST"));
        assert!(h["access-control-allow-headers"].to_str().unwrap().contains("x-grpc-web"));
        let r =
            within(preflight(&bare, format!("{}/{path}", server.url()), "https://evil.example").send()).await.unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }
    let r = within(http.get(format!("{}/templates", server.url())).header("origin", "https://app.example").send())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "https://app.example");
    // grpc-web from the allowed origin: the browser may read grpc-status.
    let msg = pb::ListTemplatesRequest {}.encode_to_vec();
    let mut body = vec![0u8];
    body.extend((msg.len() as u32).to_be_bytes());
    body.extend(msg);
    let r = within(
        http.post(format!("{}/jac.splice.v1.Orchestrator/ListTemplates", server.url()))
            .header("origin", "https://app.example")
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .body(body.clone())
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "https://app.example");
    assert!(r.headers()["access-control-expose-headers"].to_str().unwrap().contains("grpc-status"));
    // The same call from another origin is a grpc-web error, not an answer.
    let r = within(
        http.post(format!("{}/jac.splice.v1.Orchestrator/ListTemplates", server.url()))
            .header("origin", "https://evil.example")
            .header("content-type", "application/grpc-web+proto")
            .body(body)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.headers()["grpc-status"], "7", "PERMISSION_DENIED");
    server.stop().await;
}

#[tokio::test]
async fn every_error_status_has_a_json_body() {
    let server = TestServer::start().await;
    let http = server.http();
    let url = server.url();
    // 405 for a known path with another method, keeping Allow.
    for (method, path) in [(reqwest::Method::PUT, "deployment"), (reqwest::Method::PATCH, "healthz")] {
        let r = within(http.request(method.clone(), format!("{url}/{path}")).json(&json!({})).send()).await.unwrap();
        let (status, headers, b) = json_of(r).await;
        assert_eq!((status, b["reason"].as_str()), (405, Some("METHOD_NOT_ALLOWED")), "{method} {path}: {b}");
        error_shape(&b);
        assert!(b["detail"].as_str().unwrap().contains(method.as_str()), "{b}");
        assert!(headers.contains_key("allow"), "{headers:?}");
    }
    // 414 for a URI over the limit (8 KiB).
    let long = "a".repeat(10 * 1024);
    let (status, _, b) =
        json_of(within(http.get(format!("{url}/deployment?namespace={long}")).send()).await.unwrap()).await;
    assert_eq!((status, b["reason"].as_str()), (414, Some("URI_TOO_LONG")), "{b}");
    error_shape(&b);
    // Query strings and paths that do not parse.
    let (status, _, b) = json_of(
        within(http.post(format!("{url}/deployment?wait=maybe")).json(&json!({"module": "redis"})).send())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, b["reason"].as_str(), b["field"].as_str()), (400, Some("BAD_QUERY"), Some("query")), "{b}");
    let (status, _, b) =
        json_of(within(http.get(format!("{url}/deployment?module=a&module=b")).send()).await.unwrap()).await;
    assert_eq!((status, b["reason"].as_str()), (400, Some("BAD_QUERY")), "{b}");
    let (status, _, b) = json_of(within(http.get(format!("{url}/deployment/%FF/redis/x")).send()).await.unwrap()).await;
    assert_eq!((status, b["reason"].as_str(), b["field"].as_str()), (400, Some("BAD_PATH"), Some("path")), "{b}");
    // Unknown routes.
    let (status, _, b) = json_of(within(http.get(format!("{url}/no/such/route")).send()).await.unwrap()).await;
    assert_eq!((status, b["reason"].as_str()), (404, Some("NO_ROUTE")), "{b}");
    error_shape(&b);
    server.stop().await;
}

/// A unary gRPC call with `message` as the request bytes, whatever they are.
async fn raw_call(server: &TestServer, path: &'static str, message: Bytes) -> tonic::Status {
    let channel = within(tonic::transport::Endpoint::from_shared(server.url()).unwrap().connect()).await.unwrap();
    let bearer = crate::support::Bearer::new(Some(crate::support::ADMIN));
    let mut grpc = tonic::client::Grpc::new(tonic::service::interceptor::InterceptedService::new(channel, bearer));
    within(grpc.ready()).await.unwrap();
    let path = http::uri::PathAndQuery::from_static(path);
    let codec = jac_splice_orc::proxy::codec::RawCodec;
    let result: Result<tonic::Response<Bytes>, _> = within(grpc.unary(tonic::Request::new(message), path, codec)).await;
    result.expect_err("an undecodable request fails")
}

#[tokio::test]
async fn undecodable_protobuf_is_invalid_argument_on_orchestrator_rpcs_and_module_proxy() {
    let server = TestServer::start().await;
    // Field 1, wire type 7 (there is none).
    let garbage = Bytes::from_static(&[0x0f, 0xff, 0xff, 0xff]);
    for path in ["/jac.splice.v1.Orchestrator/ListTemplates", "/jac.splice.v1.Orchestrator/Deploy"] {
        let status = raw_call(&server, path, garbage.clone()).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        assert_eq!(status.get_error_details().error_info().unwrap().reason, "BAD_PROTOBUF");
    }
    // A string field (ProxyTarget.deployment) that is not UTF-8.
    let bad_target = pb::ProxyTarget { deployment: "x".into(), namespace: String::new() }.encode_to_vec();
    let mut invalid_utf8 = bad_target.clone();
    *invalid_utf8.last_mut().unwrap() = 0xff;
    let mut outer = Vec::new();
    prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut outer);
    prost::encoding::encode_varint(invalid_utf8.len() as u64, &mut outer);
    outer.extend(invalid_utf8);
    for message in [garbage.clone(), Bytes::from(outer)] {
        let status = raw_call(&server, "/jac.splice.v1.ModuleProxy/Call", message).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    // A good target and a request the module server cannot decode: the caller's error too.
    let mut c = server.grpc().await;
    let deploy = pb::DeployRequest {
        module: "python-module".into(),
        config: Some(crate::support::struct_of(json!({"name": "undecodable", "module": "json"}))),
        wait: true,
        ..Default::default()
    };
    let mut events = within(c.deploy(deploy)).await.unwrap().into_inner();
    while let Some(event) = within(tokio_stream::StreamExt::next(&mut events)).await {
        event.expect("the module server deploys");
    }
    let target = pb::ProxyTarget { deployment: "undecodable".into(), namespace: String::new() }.encode_to_vec();
    let mut outer = Vec::new();
    for (n, bytes) in [(1, &target[..]), (2, &garbage[..])] {
        prost::encoding::encode_key(n, prost::encoding::WireType::LengthDelimited, &mut outer);
        prost::encoding::encode_varint(bytes.len() as u64, &mut outer);
        outer.extend_from_slice(bytes);
    }
    let status = raw_call(&server, "/jac.splice.v1.ModuleProxy/Call", Bytes::from(outer)).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    server.stop().await;
}

/// High-water mark of a process's resident memory, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Sends one `ModuleProxy/Call` whose message is `prefix`, then `chunks` MiB of zeros, then
/// `suffix`, generated as it is sent (the client never holds it); returns the call's status.
async fn streamed_call(url: &str, token: &str, prefix: Vec<u8>, chunks: usize, suffix: Vec<u8>) -> tonic::Status {
    use http_body_util::BodyExt;
    let total = prefix.len() + (chunks << 20) + suffix.len();
    let mut head = vec![0u8];
    head.extend((total as u32).to_be_bytes());
    head.extend(prefix);
    let zeros = Bytes::from(vec![0u8; 1 << 20]);
    let frames = std::iter::once(Bytes::from(head))
        .chain(std::iter::repeat_n(zeros, chunks))
        .chain(std::iter::once(Bytes::from(suffix)))
        .map(|b| Ok::<_, Infallible>(hyper::body::Frame::data(b)));
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed();
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).http2_only(true).build_http();
    let request = http::Request::post(format!("{url}/jac.splice.v1.ModuleProxy/Call"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(body)
        .unwrap();
    let response = within(client.request(request)).await.expect("an answer");
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return status;
    }
    let collected = within(response.into_body().collect()).await.expect("a body");
    tonic::Status::from_header_map(collected.trailers().expect("trailers")).expect("a status")
}

#[tokio::test]
async fn an_out_of_order_300_mib_proxy_request_is_resource_exhausted_and_the_orchestrator_stays_small() {
    let mut lab = Lab::new();
    let serve = lab.serve().await;
    let before = peak_rss_kib(serve.pid);
    let target = pb::ProxyTarget { deployment: "anything".into(), namespace: String::new() }.encode_to_vec();
    let field = |n: u32, len: usize| {
        let mut b = Vec::new();
        prost::encoding::encode_key(n, prost::encoding::WireType::LengthDelimited, &mut b);
        prost::encoding::encode_varint(len as u64, &mut b);
        b
    };
    let mut target_field = field(1, target.len());
    target_field.extend(&target);
    const MIB: usize = 300;
    // Field 2 (the request) first, the target after it.
    let status = streamed_call(&serve.url, &serve.token, field(2, MIB << 20), MIB, target_field.clone()).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.get_error_details().error_info().unwrap().reason, "PROXY_BUFFER_LIMIT");
    // An unknown field of 300 MiB before the target and the request.
    let mut suffix = target_field;
    suffix.extend(field(2, 0));
    let status = streamed_call(&serve.url, &serve.token, field(9, MIB << 20), MIB, suffix).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let grown = peak_rss_kib(serve.pid).saturating_sub(before);
    assert!(grown < 100 * 1024, "the orchestrator's peak memory grew by {} MiB", grown / 1024);
    // It still serves.
    let r = within(serve.http().get(format!("{}/healthz", serve.url)).send()).await.unwrap();
    assert_eq!(r.status(), 200);
    serve.term().await;
}

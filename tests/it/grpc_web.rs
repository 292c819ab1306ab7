//! grpc-web over plain HTTP/1.1, as a browser sends it.

use jac_splice_orc::pb;
use prost::Message;

use crate::support::{within, TestServer};

/// Splits a grpc-web body into (flags, payload) frames.
fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let flags = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        out.push((flags, body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    out
}

#[tokio::test]
async fn list_templates_over_grpc_web_http1() {
    let server = TestServer::start().await;
    let http = reqwest::Client::builder().http1_only().build().unwrap();
    let mut body = vec![0u8];
    let msg = pb::ListTemplatesRequest {}.encode_to_vec();
    body.extend((msg.len() as u32).to_be_bytes());
    body.extend(msg);
    let r = within(
        http.post(format!("{}/jac.splice.v1.Orchestrator/ListTemplates", server.url()))
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .header("authorization", format!("Bearer {}", crate::support::VIEWER))
            .body(body.clone())
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/grpc-web"));
    let bytes = r.bytes().await.unwrap();
    let frames = frames(&bytes);
    let data = frames.iter().find(|(f, _)| *f == 0).expect("a data frame");
    let reply = pb::ListTemplatesResponse::decode(data.1.as_slice()).unwrap();
    assert!(reply.templates.iter().any(|t| t.module == "redis"));
    let trailers = frames.iter().find(|(f, _)| *f & 0x80 != 0).expect("a trailer frame");
    assert!(String::from_utf8_lossy(&trailers.1).contains("grpc-status:0"));

    // Without a token: Unauthenticated (16), as a grpc-web answer, and no templates.
    let r = within(
        http.post(format!("{}/jac.splice.v1.Orchestrator/ListTemplates", server.url()))
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .body(body)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "gRPC errors travel as grpc-status");
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/grpc-web"));
    assert_eq!(r.headers()["grpc-status"], "16", "{:?}", r.headers());
    assert!(self::frames(&r.bytes().await.unwrap()).iter().all(|(f, _)| *f & 0x80 != 0), "no data frame");
    server.stop().await;
}

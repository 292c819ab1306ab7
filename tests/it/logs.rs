//! `Logs` / `GET …/logs` / `jac-orc logs` on the local backend: a process that prints known
//! lines (and one line per message it is sent) read back over gRPC, REST NDJSON and the CLI
//! binary, with `tail` and `follow`; a follow ends when the deployment is undeployed; a bad
//! `tail` is InvalidArgument naming it; viewers and callers may not read logs (PermissionDenied,
//! 403), nobody without a token (Unauthenticated, 401); an unknown deployment is NotFound.
//!
//! The store beside the built-in catalog has `talker`: a Python process that prints three
//! lines, then serves TCP and prints `got: TEXT` for each message.

use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

use jac_splice_orc::catalog::Catalog;
use jac_splice_orc::pb;
use serde_json::{json, Value};
use tokio_stream::{Stream, StreamExt};
use tonic::Code;
use tonic_types::StatusExt;

use crate::cli::{ran, JacOrc};
use crate::support::{run, struct_of, within, Options, TestServer, ADMIN, CALLER, VIEWER};

const TALKER: &str = r#"import socket, sys
print("talker says hello")
print("line 2")
print("line 3", flush=True)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
while True:
    c = s.accept()[0]
    data = c.recv(4096).decode().strip()
    if data:
        print("got: " + data, flush=True)
    c.close()
"#;

fn store(root: &Path) {
    let dir = root.join("talker/latest");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("placeholders.yaml"),
        "placeholders:\n  name: {type: string, default: talker}\n  namespace: {type: string, default: \"\"}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("talker.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{name}}\n  namespace: {{namespace}}\ndata:\n  said: hello\n",
    )
    .unwrap();
    let local = json!({
        "program": "{{local.python}}",
        "args": ["-c", TALKER, "{{local.host}}", "{{local.port}}"],
        "readiness": {"kind": "tcp"},
        "protocol": "tcp",
    });
    std::fs::write(dir.join("local.yaml"), local.to_string()).unwrap();
}

struct Talking {
    server: TestServer,
    /// Where the talker listens.
    endpoint: String,
    _templates: tempfile::TempDir,
}

/// A server with the talker deployed as `default/talker/t`, ready.
async fn start() -> Talking {
    start_as("t").await
}

/// A server with the talker deployed as `default/talker/NAME`, ready.
async fn start_as(name: &str) -> Talking {
    let templates = tempfile::tempdir().unwrap();
    store(templates.path());
    let catalog = Some(Catalog::with_override(templates.path()).unwrap());
    let server = TestServer::start_with(Options { catalog, ..Options::default() }).await;
    let req = pb::DeployRequest {
        module: "talker".into(),
        config: Some(struct_of(json!({"name": name}))),
        wait: true,
        ..Default::default()
    };
    let stream = within(server.grpc().await.deploy(req)).await.unwrap().into_inner();
    let (_, summary) = run(stream).await;
    let deployment = summary.expect("deployed").deployment.expect("a deployment");
    let endpoint = deployment.endpoints.first().expect("an endpoint").clone();
    Talking { server, endpoint, _templates: templates }
}

fn request(name: &str, follow: bool, tail: Option<i64>) -> pb::LogsRequest {
    pb::LogsRequest { namespace: "default".into(), module: "talker".into(), name: name.into(), follow, tail }
}

/// Sends `text` to the talker, which logs `got: TEXT`.
async fn say(endpoint: &str, text: &str) {
    use tokio::io::AsyncWriteExt;
    let mut s = within(tokio::net::TcpStream::connect(endpoint)).await.unwrap();
    s.write_all(text.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
}

/// Every line of a logs call that ends by itself.
async fn lines(c: &mut crate::support::Grpc, req: pb::LogsRequest) -> Result<Vec<pb::LogLine>, tonic::Status> {
    let mut stream = within(c.logs(req)).await?.into_inner();
    let mut out = Vec::new();
    while let Some(item) = within(stream.next()).await {
        out.push(item?);
    }
    Ok(out)
}

/// Says `tag-N` until a line saying it arrives on `lines` (a follow starts reading at some
/// point after the call; what was logged before that is in no tail of 0), and returns that line.
async fn said_until_seen(endpoint: &str, tag: &str, lines: &mut (impl Stream<Item = String> + Unpin)) -> String {
    for n in 0..40 {
        say(endpoint, &format!("{tag}-{n}")).await;
        if let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(1), lines.next()).await {
            return line;
        }
    }
    panic!("no line of {tag} was followed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_log_is_read_over_grpc_with_its_tail_and_followed_until_the_undeploy() {
    let t = start().await;
    let mut c = t.server.grpc().await;

    let all = lines(&mut c, request("t", false, None)).await.unwrap();
    let texts: Vec<&str> = all.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(texts, ["talker says hello", "line 2", "line 3"], "{all:?}");
    assert!(all.iter().all(|l| l.source == "replica 0" && l.time.is_empty()), "{all:?}");
    let two = lines(&mut c, request("t", false, Some(2))).await.unwrap();
    assert_eq!(two.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(), ["line 2", "line 3"]);
    assert!(lines(&mut c, request("t", false, Some(0))).await.unwrap().is_empty());

    let mut follow = within(c.logs(request("t", true, Some(0)))).await.unwrap().into_inner();
    let mut followed = (&mut follow).map(|item| item.expect("a line").line);
    let seen = said_until_seen(&t.endpoint, "grpc", &mut followed).await;
    drop(followed);
    assert!(seen.starts_with("got: grpc-"), "{seen}");

    // Undeployed: the follow ends by itself.
    let undeploy = pb::UndeployRequest {
        namespace: "default".into(),
        module: "talker".into(),
        name: "t".into(),
        ..Default::default()
    };
    let (_, done) = run(within(c.undeploy(undeploy)).await.unwrap().into_inner()).await;
    done.expect("undeployed");
    within(async {
        while let Some(item) = follow.next().await {
            item.expect("a line or the end");
        }
    })
    .await;
    t.server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_streams_ndjson_lines_and_refuses_a_bad_tail_naming_it() {
    let t = start().await;
    let http = t.server.http();
    let url = format!("{}/deployment/default/talker/t/logs", t.server.url());

    let r = within(http.get(format!("{url}?follow=&tail=2")).send()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let body = within(r.text()).await.unwrap();
    let objects: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        objects,
        [json!({"source": "replica 0", "line": "line 2"}), json!({"source": "replica 0", "line": "line 3"})],
        "{body}"
    );

    for bad in ["-1", "abc", "100001"] {
        let r = within(http.get(format!("{url}?tail={bad}")).send()).await.unwrap();
        assert_eq!(r.status(), 400, "tail={bad}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["field"], "tail", "{e}");
        assert!(e["detail"].as_str().unwrap().contains("tail"), "{e}");
    }

    let r = within(http.get(format!("{url}?follow=sometimes")).send()).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "follow");

    // A follow over REST: the tail, then what is logged, as it happens.
    let mut r = within(http.get(format!("{url}?follow=true&tail=1")).send()).await.unwrap();
    assert_eq!(r.status(), 200);
    let mut pending = String::new();
    let first = within(async {
        loop {
            if let Some(i) = pending.find('\n') {
                break pending[..i].to_string();
            }
            let bytes = r.chunk().await.unwrap().expect("the follow goes on");
            pending.push_str(std::str::from_utf8(&bytes).unwrap());
        }
    })
    .await;
    assert_eq!(serde_json::from_str::<Value>(&first).unwrap(), json!({"source": "replica 0", "line": "line 3"}));
    drop(r);
    t.server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_prints_the_tail_and_follows_with_f() {
    let t = start().await;
    let out = ran(JacOrc::on(&t.server, &["logs", "talker", "t", "--tail", "2"]));
    assert_eq!(out.out(), "line 2\nline 3\n");
    let out = ran(JacOrc::on(&t.server, &["logs", "talker", "t", "-n", "default", "--prefix", "--tail", "1"]));
    assert_eq!(out.out(), "[replica 0] line 3\n");
    let out = ran(JacOrc::on(&t.server, &["logs", "talker", "t", "-o", "json"]));
    let first: Value = serde_json::from_str(out.out().lines().next().unwrap()).unwrap();
    assert_eq!(first, json!({"source": "replica 0", "line": "talker says hello"}));
    let err = ran(JacOrc::on(&t.server, &["logs", "talker", "t", "--tail", "-5"]));
    assert!(err.err().contains("tail"), "{}", err.stderr);

    let mut child = JacOrc::on(&t.server, &["logs", "talker", "t", "-f", "--tail", "0"]).spawn();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || stdout.lines().map_while(Result::ok).for_each(|l| drop(tx.send(l))));
    let mut rx = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    let seen = said_until_seen(&t.endpoint, "cli", &mut rx).await;
    assert!(seen.starts_with("got: cli-"), "{seen}");
    child.kill().unwrap();
    let _ = tokio::task::block_in_place(|| child.wait());
    t.server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_need_their_own_permission_and_an_unknown_deployment_is_not_found() {
    let t = start().await;
    let url = format!("{}/deployment/default/talker/t/logs", t.server.url());
    for token in [VIEWER, CALLER] {
        let mut c = t.server.grpc_as(Some(token)).await;
        let err = lines(&mut c, request("t", false, None)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(err.message().contains("may not get jacdeployments/log \"t\" in namespace default"), "{err:?}");
        let r = within(crate::support::http_client(Some(token)).get(&url).send()).await.unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(r.json::<Value>().await.unwrap()["reason"], "PERMISSION_DENIED");
    }
    let mut anonymous = t.server.grpc_as(None).await;
    let err = lines(&mut anonymous, request("t", false, None)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(within(crate::support::http_client(None).get(&url).send()).await.unwrap().status(), 401);
    let viewer = ran(JacOrc::on(&t.server, &["logs", "talker", "t"]).token(VIEWER));
    assert!(viewer.err().contains("PermissionDenied"), "{}", viewer.stderr);

    let mut c = t.server.grpc_as(Some(ADMIN)).await;
    let err = lines(&mut c, request("nope", false, None)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(err.message(), "deployment default/talker/nope not found");
    let r = within(t.server.http().get(format!("{}/deployment/default/talker/nope/logs", t.server.url())).send())
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["reason"], "DEPLOYMENT_NOT_FOUND");
    let missing = ran(JacOrc::on(&t.server, &["logs", "talker", "nope"]));
    assert!(missing.err().contains("deployment default/talker/nope not found"), "{}", missing.stderr);

    let err = lines(&mut c, request("t", false, Some(-1))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let violations = err.get_details_bad_request().expect("field violations").field_violations;
    assert_eq!(violations.iter().map(|v| v.field.as_str()).collect::<Vec<_>>(), ["tail"]);
    t.server.stop().await;
}

/// `jac_orc_log_streams` of `deployment`, as the server's `/metrics` says (the registry is the
/// process's: each test counts a deployment name of its own).
async fn open_streams(server: &TestServer, deployment: &str) -> i64 {
    let text =
        within(server.http().get(format!("{}/metrics", server.url())).send()).await.unwrap().text().await.unwrap();
    let series = format!("jac_orc_log_streams{{deployment=\"{deployment}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |v| v.trim().parse().unwrap())
}

/// Waits (bounded) until `open_streams` is `want`.
async fn streams_become(server: &TestServer, deployment: &str, want: i64) {
    for _ in 0..100 {
        if open_streams(server, deployment).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{deployment} never had {want} open logs streams (now {})", open_streams(server, deployment).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follow_whose_client_goes_away_stops_on_the_server_over_grpc_and_rest() {
    let t = start_as("gone").await;
    let deployment = "default/talker/gone";
    let mut c = t.server.grpc().await;
    let mut follow = within(c.logs(request("gone", true, Some(1)))).await.unwrap().into_inner();
    assert_eq!(within(follow.next()).await.unwrap().unwrap().line, "line 3");
    streams_become(&t.server, deployment, 1).await;
    drop(follow);
    streams_become(&t.server, deployment, 0).await;

    let url = format!("{}/deployment/default/talker/gone/logs?follow=true&tail=1", t.server.url());
    let mut r = within(t.server.http().get(url).send()).await.unwrap();
    let first = within(r.chunk()).await.unwrap().expect("the tail");
    assert!(std::str::from_utf8(&first).unwrap().contains("line 3"));
    streams_become(&t.server, deployment, 1).await;
    // Nothing is logged from here on: the server learns of the closed connection by itself.
    drop(r);
    streams_become(&t.server, deployment, 0).await;
    t.server.stop().await;
}

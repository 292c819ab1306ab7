//! Revisions on the local backend through gRPC, REST and the CLI: history, rollback, diff
//! (against the object store and the running workload), reused values and the history limit.

use jac_splice_orc::pb;
use jac_splice_orc::service::Settings;
use serde_json::{json, Value};
use tonic::Code;

use crate::cli::{ran, JacOrc};
use crate::support::{redis_available, run, struct_of, within, Grpc, Options, TestServer, VIEWER};

async fn deploy(c: &mut Grpc, name: &str, config: Value) -> pb::DeploySummary {
    let mut config = config;
    config["name"] = json!(name);
    let req = pb::DeployRequest { module: "redis".into(), config: Some(struct_of(config)), ..Default::default() };
    run(within(c.deploy(req)).await.unwrap().into_inner()).await.1.expect("deploy succeeds")
}

async fn history(c: &mut Grpc, name: &str) -> Vec<pb::Revision> {
    let req = pb::HistoryRequest { namespace: "default".into(), module: "redis".into(), name: name.into() };
    within(c.history(req)).await.expect("history").into_inner().revisions
}

fn memory_of(r: &pb::Revision) -> String {
    let config = jac_splice_orc::api::convert::from_struct(r.config.as_ref().expect("config"));
    config["memory"].as_str().expect("memory").to_string()
}

async fn live_memory(c: &mut Grpc, name: &str) -> Value {
    let req = pb::GetDeploymentRequest { namespace: "default".into(), module: "redis".into(), name: name.into() };
    let d = within(c.get_deployment(req)).await.unwrap().into_inner();
    jac_splice_orc::api::convert::from_struct(d.config.as_ref().unwrap())["memory"].clone()
}

fn rollback(name: &str, revision: Option<u64>) -> pb::RollbackRequest {
    pb::RollbackRequest {
        namespace: "default".into(),
        module: "redis".into(),
        name: name.into(),
        revision,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn history_rollback_and_diff_through_grpc_rest_and_the_cli() {
    assert!(redis_available());
    let server = TestServer::start().await;
    let mut c = server.grpc().await;
    deploy(&mut c, "hist", json!({"memory": "64mb"})).await;
    deploy(&mut c, "hist", json!({"memory": "128mb"})).await;

    let revisions = history(&mut c, "hist").await;
    assert_eq!(revisions.iter().map(|r| r.revision).collect::<Vec<_>>(), [1, 2]);
    assert_eq!((memory_of(&revisions[0]).as_str(), memory_of(&revisions[1]).as_str()), ("64mb", "128mb"));
    assert_eq!(revisions[1].deployed_by, "admin");
    assert!(revisions[0].objects.iter().any(|o| o.kind == "ConfigMap" && o.name == "hist"), "{:?}", revisions[0]);

    // The CLI's JSON: an array of revisions with revision, version, config and time.
    let json = ran(JacOrc::on(&server, &["history", "redis", "hist", "-o", "json"])).json();
    let list = json.as_array().expect("an array");
    assert_eq!(list.len(), 2);
    assert_eq!(list[1]["revision"], 2);
    assert_eq!(list[1]["version"], "latest");
    assert_eq!(list[1]["config"]["memory"], "128mb");
    assert!(list[1]["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{json}");

    // Rollback (CLI, default: the previous revision) → revision 1's config, history 3.
    let r = ran(JacOrc::on(&server, &["rollback", "redis", "hist"]));
    assert!(r.out().contains("configmap/hist configured"), "{}", r.stdout);
    assert_eq!(live_memory(&mut c, "hist").await, "64mb");
    let revisions = history(&mut c, "hist").await;
    assert_eq!(revisions.len(), 3);
    assert_eq!(memory_of(&revisions[2]), "64mb");
    assert_eq!(revisions[2].description, "rollback to 1");
    assert_eq!(revisions[2].objects, revisions[0].objects);

    // REST shows the same history.
    let url = format!("{}/deployment/default/redis/hist/history", server.url());
    let body: Value = within(server.http().get(&url).send()).await.unwrap().json().await.unwrap();
    assert_eq!(body.as_array().map(Vec::len), Some(3), "{body}");
    assert_eq!(body[2]["config"]["memory"], "64mb");

    // Diff after the rollback: nothing would change (exit 0); another memory would (exit 1).
    let same = ran(JacOrc::on(&server, &["diff", "redis", "hist"]));
    assert_eq!(same.code, Some(0), "{same:?}");
    assert!(same.stdout.contains("no changes"), "{}", same.stdout);
    let changed = ran(JacOrc::on(&server, &["diff", "redis", "hist", "--set", "memory=32mb"]));
    assert_eq!(changed.code, Some(1), "{changed:?}");
    assert!(changed.stdout.contains("~ configmap/hist configured"), "{}", changed.stdout);
    assert!(changed.stderr.is_empty(), "{}", changed.stderr);
    // Nothing was applied by the diffs.
    assert_eq!(live_memory(&mut c, "hist").await, "64mb");
    assert_eq!(history(&mut c, "hist").await.len(), 3);
    // REST diff, as JSON.
    let url = format!("{}/deployment/default/redis/hist/diff", server.url());
    let body: Value =
        within(server.http().post(&url).json(&json!({"config": {"memory": "32mb"}, "reuse_values": true})).send())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(body["changed"], true, "{body}");
    assert!(body["objects"].as_array().unwrap().iter().any(|o| o["line"] == "configmap/hist configured"), "{body}");
    // A diff the server cannot answer exits 2.
    let bad = ran(JacOrc::on(&server, &["diff", "redis", "hist", "--set", "nope=1"]));
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert!(bad.stderr.contains("unknown placeholder `nope`"), "{}", bad.stderr);

    // Unknown revision: NotFound over gRPC, 404 over REST, naming it; nothing changes.
    let e = within(c.rollback(rollback("hist", Some(99)))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("revision 99"), "{}", e.message());
    let url = format!("{}/deployment/default/redis/hist/rollback", server.url());
    let resp = within(server.http().post(&url).json(&json!({"revision": 99})).send()).await.unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], "REVISION_NOT_FOUND", "{body}");
    assert_eq!(body["detail"], e.message());
    assert_eq!(history(&mut c, "hist").await.len(), 3);

    // REST rollback to revision 2.
    let resp = within(server.http().post(&url).json(&json!({"revision": 2})).send()).await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    assert_eq!(live_memory(&mut c, "hist").await, "128mb");

    // A viewer reads the history but may not roll back.
    let mut viewer = server.grpc_as(Some(VIEWER)).await;
    assert_eq!(history(&mut viewer, "hist").await.len(), 4);
    let e = within(viewer.rollback(rollback("hist", None))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // Undeploy removes the history with the deployment.
    ran(JacOrc::on(&server, &["undeploy", "redis", "hist"])).out();
    let req = pb::HistoryRequest { namespace: "default".into(), module: "redis".into(), name: "hist".into() };
    assert_eq!(within(c.history(req)).await.unwrap_err().code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_reuses_values_and_rest_resets_them_unless_asked() {
    assert!(redis_available());
    let server = TestServer::start().await;
    let mut c = server.grpc().await;
    ran(JacOrc::on(&server, &["deploy", "redis", "reuse", "--set", "memory=64mb"])).out();
    ran(JacOrc::on(&server, &["deploy", "redis", "reuse"])).out();
    assert_eq!(live_memory(&mut c, "reuse").await, "64mb", "the CLI keeps the previous memory");
    ran(JacOrc::on(&server, &["deploy", "redis", "reuse", "--reset-values"])).out();
    assert_eq!(live_memory(&mut c, "reuse").await, "1000mb", "--reset-values returns to the default");

    ran(JacOrc::on(&server, &["deploy", "redis", "reuse", "--set", "memory=64mb"])).out();
    let url = format!("{}/deployment", server.url());
    let body = json!({"module": "redis", "config": {"name": "reuse"}, "reuse_values": true});
    assert_eq!(within(server.http().post(&url).json(&body).send()).await.unwrap().status(), 200);
    assert_eq!(live_memory(&mut c, "reuse").await, "64mb", "REST with reuse_values keeps it");
    let body = json!({"module": "redis", "config": {"name": "reuse"}});
    assert_eq!(within(server.http().post(&url).json(&body).send()).await.unwrap().status(), 200);
    assert_eq!(live_memory(&mut c, "reuse").await, "1000mb", "REST without reuse_values resets to the default");
    // gRPC too: unset placeholders take their defaults unless reuse_values.
    deploy(&mut c, "reuse", json!({"memory": "64mb"})).await;
    deploy(&mut c, "reuse", json!({})).await;
    assert_eq!(live_memory(&mut c, "reuse").await, "1000mb");
    assert_eq!(history(&mut c, "reuse").await.len(), 8);
    ran(JacOrc::on(&server, &["undeploy", "redis", "reuse"])).out();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_history_limit_is_kept_and_a_lone_revision_has_nothing_to_roll_back_to() {
    assert!(redis_available());
    let settings = Settings { history_limit: 2, ..Settings::default() };
    let server = TestServer::start_with(Options { settings, ..Options::default() }).await;
    let mut c = server.grpc().await;
    deploy(&mut c, "lone", json!({"memory": "8mb"})).await;
    let e = within(c.rollback(rollback("lone", None))).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("no revision before"), "{}", e.message());
    let url = format!("{}/deployment/default/redis/lone/rollback", server.url());
    let resp = within(server.http().post(&url).json(&json!({})).send()).await.unwrap();
    assert_eq!(resp.status(), 412);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], "NO_PREVIOUS_REVISION", "{body}");
    assert_eq!(body["detail"], e.message());

    for memory in ["16mb", "32mb"] {
        deploy(&mut c, "lone", json!({"memory": memory})).await;
    }
    let revisions = history(&mut c, "lone").await;
    assert_eq!(revisions.iter().map(|r| r.revision).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(memory_of(&revisions[1]), "32mb");
    // Revision 1 is gone: rolling back to it is NotFound.
    let e = within(c.rollback(rollback("lone", Some(1)))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    ran(JacOrc::on(&server, &["undeploy", "redis", "lone"])).out();
    server.stop().await;
}

//! The `jac-orc` binary's client commands against a running server.

use std::process::Command;

use serde_json::{json, Value};

use crate::support::{redis_available, within, TestServer};

fn jac_orc(server: &TestServer, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_jac-orc"))
        .args(args)
        .env("JAC_ORC_SERVER", server.url())
        .output()
        .expect("run jac-orc");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_dry_run_deploy_list_undeploy() {
    assert!(redis_available());
    let server = TestServer::start().await;
    let s = &server;
    let (ok, out, err) = tokio::task::block_in_place(|| {
        jac_orc(s, &["dry-run", "redis", "--set", "name=cli-cache", "--set", "cpu=0.5", "-o", "json"])
    });
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["placeholders"]["name"]["current"], "cli-cache");
    assert_eq!(v["placeholders"]["cpu"]["current"], 0.5);
    assert!(v["modules"]["redis.yaml"].as_str().unwrap().contains("cli-cache"));

    let (ok, out, err) = tokio::task::block_in_place(|| {
        jac_orc(s, &["deploy", "redis", "--set", "name=cli-cache", "--set", "memory=8mb"])
    });
    assert!(ok, "{err}");
    assert!(out.contains("service/cli-cache created"), "{out}");
    assert!(out.contains("deployed redis/cli-cache in default: deployed"), "{out}");

    let (ok, out, _) = tokio::task::block_in_place(|| jac_orc(s, &["list"]));
    assert!(ok);
    assert!(out.lines().any(|l| l.contains("cli-cache") && l.contains("127.0.0.1:")), "{out}");

    let (ok, _, err) = tokio::task::block_in_place(|| jac_orc(s, &["dry-run", "redis", "--set", "nope=1"]));
    assert!(!ok);
    assert!(err.contains("unknown placeholder `nope`"), "{err}");

    let (ok, out, err) = tokio::task::block_in_place(|| jac_orc(s, &["undeploy", "redis", "cli-cache"]));
    assert!(ok, "{err}");
    assert!(out.contains("process.local.jac-orc/cli-cache stopped"), "{out}");
    server.stop().await;
}

/// What REST answers to `GET path`.
async fn rest_get(server: &TestServer, path: &str) -> Value {
    within(server.http().get(format!("{}{path}", server.url())).send()).await.unwrap().json().await.unwrap()
}

fn cli_json(server: &TestServer, args: &[&str]) -> Value {
    let (ok, out, err) = tokio::task::block_in_place(|| jac_orc(server, args));
    assert!(ok, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

/// A deploy outcome without what differs between two runs of the same deploy.
fn timeless(mut outcome: Value) -> Value {
    let o = outcome.as_object_mut().unwrap();
    o.remove("elapsed_ms").expect("elapsed_ms");
    o["deployment"].as_object_mut().unwrap().remove("updated_at").expect("updated_at");
    outcome
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_json_output_is_what_rest_returns_for_the_same_view() {
    assert!(redis_available());
    let server = TestServer::start().await;
    let s = &server;
    let body = json!({"module": "redis", "config": {"name": "same-view", "memory": "8mb"}});
    let deploy = || async {
        let r = within(s.http().post(format!("{}/deployment", s.url())).json(&body).send()).await.unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    deploy().await;

    let get = cli_json(s, &["get", "redis", "same-view", "-o", "json"]);
    assert_eq!(get, rest_get(s, "/deployment/default/redis/same-view").await);
    assert_eq!(get["status"], "deployed");
    assert_eq!(cli_json(s, &["list", "-o", "json"]), rest_get(s, "/deployment").await);
    assert_eq!(cli_json(s, &["templates", "-o", "json"]), rest_get(s, "/templates").await);

    let dry = cli_json(s, &["dry-run", "redis", "--set", "name=same-view", "--set", "memory=8mb", "-o", "json"]);
    let rest_dry: Value = within(s.http().post(format!("{}/deployment/dry_run", s.url())).json(&body).send())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dry, rest_dry);

    // Two unchanged redeploys, one through each edge, report the same outcome.
    let by_cli = cli_json(s, &["deploy", "redis", "--set", "name=same-view", "--set", "memory=8mb", "-o", "json"]);
    let by_rest = deploy().await;
    assert_eq!(by_cli["unchanged"], 4, "{by_cli}");
    assert_eq!(timeless(by_cli), timeless(by_rest));
    server.stop().await;
}

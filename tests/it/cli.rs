//! The `jac-orc` binary's client commands against a running server.

use std::process::Command;

use serde_json::Value;

use crate::support::{redis_available, TestServer};

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

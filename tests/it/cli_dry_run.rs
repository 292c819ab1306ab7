//! `deploy --dry-run` (and REST `?dry_run=true`) on the local backend: it reports what a deploy
//! would change against the backend's records and changes nothing; and `status`.

use serde_json::{json, Value};

use super::{ran, JacOrc};
use crate::support::{redis_available, redis_ping, within, TestServer};

fn lines(out: &str) -> Vec<&str> {
    out.lines().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_dry_run_on_the_local_backend_reports_and_changes_nothing() {
    assert!(redis_available());
    let server = TestServer::start().await;
    let s = &server;

    // A first deploy: everything would be created, nothing is.
    let out = ran(JacOrc::on(s, &["deploy", "redis", "cache", "--set", "memory=8mb", "--dry-run"])).out().to_string();
    assert_eq!(
        lines(&out),
        [
            "service/cache created (dry run)",
            "deployment.apps/cache created (dry run)",
            "configmap/cache created (dry run)",
            "process.local.jac-orc/cache started (dry run; would start on a free port)",
            "dry run of redis/cache in default: 3 to create, 0 to configure, 0 unchanged, 0 to delete; nothing was applied or recorded",
        ]
    );
    assert_eq!(ran(JacOrc::on(s, &["list", "-o", "json"])).json(), json!({}));
    let r = ran(JacOrc::on(s, &["status", "redis", "cache"]));
    assert!(r.err().contains("not found"), "{}", r.stderr);

    // REST: ?dry_run=true answers the outcome a deploy would have, and records nothing either.
    let body = json!({"module": "redis", "config": {"name": "cache", "memory": "8mb"}});
    let rest = within(s.http().post(format!("{}/deployment?dry_run=true", s.url())).json(&body).send()).await.unwrap();
    assert_eq!(rest.status(), 200);
    let rest: Value = rest.json().await.unwrap();
    assert_eq!(rest["created"], 3, "{rest}");
    assert_eq!(rest["deployment"]["message"], "dry run: nothing was applied or recorded");
    assert_eq!(rest["endpoints"], json!([]));
    assert_eq!(ran(JacOrc::on(s, &["list", "-o", "json"])).json(), json!({}));

    // Deployed for real, then a changed dry run: the change is reported, the record and the
    // running process stay as they were.
    ran(JacOrc::on(s, &["deploy", "redis", "cache", "--set", "memory=8mb"])).out();
    let before = ran(JacOrc::on(s, &["get", "redis", "cache", "-o", "json"])).json();
    let endpoint = before["endpoints"][0].as_str().unwrap().to_string();
    let out = ran(JacOrc::on(s, &["deploy", "redis", "cache", "--set", "memory=16mb", "--dry-run"])).out().to_string();
    assert_eq!(
        lines(&out),
        [
            "service/cache unchanged (dry run)",
            "deployment.apps/cache unchanged (dry run)",
            "configmap/cache configured (dry run)",
            &format!("process.local.jac-orc/cache started (dry run; would restart on {endpoint})"),
            "dry run of redis/cache in default: 0 to create, 1 to configure, 2 unchanged, 0 to delete; nothing was applied or recorded",
        ]
    );
    let json =
        ran(JacOrc::on(s, &["deploy", "redis", "cache", "--set", "memory=16mb", "--dry-run", "-o", "json"])).json();
    assert_eq!(json["deployment"]["config"]["memory"], "16mb", "the record a deploy would store: {json}");
    assert_eq!(json["deployment"]["endpoints"], json!([endpoint]));
    assert_eq!(ran(JacOrc::on(s, &["get", "redis", "cache", "-o", "json"])).json(), before, "the record is untouched");
    assert_eq!(within(redis_ping(&endpoint)).await.unwrap(), "+PONG", "the process still runs");

    // Unchanged values: every object and the process would stay.
    let out = ran(JacOrc::on(s, &["deploy", "redis", "cache", "--set", "memory=8mb", "--dry-run"])).out().to_string();
    assert!(out.contains(&format!("process.local.jac-orc/cache unchanged (dry run; running on {endpoint})")), "{out}");
    assert!(out.contains("0 to create, 0 to configure, 4 unchanged"), "{out}");
    assert_eq!(ran(JacOrc::on(s, &["get", "redis", "cache", "-o", "json"])).json(), before);

    // --dry-run and --wait contradict each other.
    let r = ran(JacOrc::on(s, &["deploy", "redis", "cache", "--dry-run", "--wait"]));
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_status_message_endpoints_objects_and_update_time() {
    assert!(redis_available());
    let server = TestServer::start().await;
    let s = &server;
    ran(JacOrc::on(s, &["deploy", "redis", "st", "-n", "ops", "--set", "memory=8mb"])).out();
    let view = ran(JacOrc::on(s, &["get", "redis", "st", "-n", "ops", "-o", "json"])).json();
    let out = ran(JacOrc::on(s, &["status", "redis", "st", "-n", "ops"])).out().to_string();
    let field = |name: &str| -> String {
        let line = out.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name}: {out}"));
        line[name.len()..].trim().to_string()
    };
    assert_eq!(field("DEPLOYMENT"), "redis/st");
    assert_eq!(field("NAMESPACE"), "ops");
    assert_eq!(field("STATUS"), "deployed");
    assert_eq!(field("MESSAGE"), "-");
    assert_eq!(field("UPDATED"), view["updated_at"].as_str().unwrap());
    assert_eq!(field("ENDPOINTS"), view["endpoints"][0].as_str().unwrap());
    for object in ["service/st", "deployment.apps/st", "configmap/st"] {
        assert!(out.lines().any(|l| l.starts_with(object) && l.contains("ops") && l.contains("redis.yaml")), "{out}");
    }
    assert!(!out.contains("memory"), "status shows no values (get does): {out}");
    let yaml = ran(JacOrc::on(s, &["status", "redis", "st", "-n", "ops", "-o", "yaml"])).out().to_string();
    let from_yaml: Value = serde_norway::from_str(&yaml).unwrap();
    assert_eq!(from_yaml, view);
    server.stop().await;
}

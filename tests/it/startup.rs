//! Startup MODULES: each entry deploys on its own; a bad one does not stop the others.

use jac_splice_orc::pb;
use jac_splice_orc::startup;

use crate::support::{redis_available, redis_ping, within, TestServer};

#[tokio::test]
async fn modules_replay_deploys_good_entries_and_skips_bad_ones() {
    assert!(redis_available());
    let server = TestServer::start().await;
    let modules = r#"{
      "default": {
        "postgres": {"db": {"module": "postgres", "version": "latest", "config": {}}},
        "redis": {
          "bad": {"module": "redis", "config": {"memory": 12}},
          "startup-cache": {"module": "redis", "version": "7.4.2", "config": {"memory": "16mb"}}
        }
      }
    }"#;
    let reqs = startup::parse(modules).unwrap();
    assert_eq!(reqs.len(), 3);
    let ok = within(startup::replay(server.service.clone(), reqs)).await;
    assert_eq!(ok, 1);
    let mut c = server.grpc().await;
    let list = within(c.list_deployments(pb::ListDeploymentsRequest::default())).await.unwrap().into_inner();
    assert_eq!(list.deployments.len(), 1);
    let d = &list.deployments[0];
    assert_eq!((d.name.as_str(), d.version.as_str()), ("startup-cache", "7.4.2"));
    assert_eq!(redis_ping(&d.endpoints[0]).await.unwrap(), "+PONG");

    // Replaying again is idempotent.
    let ok = within(startup::replay(server.service.clone(), startup::parse(modules).unwrap())).await;
    assert_eq!(ok, 1);
    let again = within(c.list_deployments(pb::ListDeploymentsRequest::default())).await.unwrap().into_inner();
    assert_eq!(again.deployments[0].endpoints, d.endpoints);
    server.stop().await;
}

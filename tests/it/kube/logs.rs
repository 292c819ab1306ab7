//! `Logs` on the Kubernetes backend, as far as an API server without a kubelet lets it go: the
//! deployment's pods are found through its Deployment's selector (the controller manager makes
//! them; they stay Pending), a pod with no node has no log yet and is skipped instead of failing
//! the call, and an unknown deployment is NotFound. Reading real pod logs needs a kubelet:
//! `tests/cluster` has the node. The RBAC side (the install's `pods/log`, who may read
//! `jacdeployments/log`) is checked in `install.rs`.

use futures::StreamExt;
use jac_splice_orc::service::{Error as ServiceError, LogsRequest};

use super::*;

#[tokio::test]
async fn logs_of_pending_pods_are_empty_and_an_unknown_deployment_is_not_found() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("logs").await;
    let svc = service(&c.backend(&ns), &ns);
    let req = request("redis", &ns, "chatty", json!({}));
    timed(async { svc.deploy(&Caller::Operator, &req, ApplyOptions::default()).await?.finish().await })
        .await
        .expect("deployed");
    // The Deployment's pods exist (Pending: no node), so the call reaches their log endpoints.
    let id = jac_splice_orc::identity::DeploymentId::new(ns.as_str(), "redis", "chatty").unwrap();
    let found = eventually("a pod of the redis Deployment", || async {
        let list = Api::<Pod>::namespaced(c.client.clone(), &ns).list(&ListParams::default()).await.ok()?;
        (!list.items.is_empty()).then_some(list.items.len())
    })
    .await;
    assert!(found > 0);
    for follow in [false, true] {
        let stream = timed(svc.logs(&Caller::Operator, &id, &LogsRequest { follow, tail: Some(10) }))
            .await
            .expect("pods without a node are skipped");
        let lines: Vec<_> = timed(stream.collect::<Vec<_>>()).await;
        assert!(lines.is_empty(), "no kubelet, no lines: {lines:?}");
    }

    let missing = jac_splice_orc::identity::DeploymentId::new(ns.as_str(), "redis", "nope").unwrap();
    let err = timed(svc.logs(&Caller::Operator, &missing, &LogsRequest::default())).await.err().expect("an error");
    assert!(matches!(err, ServiceError::NotFound(_)), "{err}");
    assert_eq!(err.to_string(), format!("deployment {ns}/redis/nope not found"));
}

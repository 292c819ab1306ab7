//! `EnsureModule` on the Kubernetes backend (the API server alone; a stand-in kubelet marks the
//! pods ready): racing callers get one deployment, whose objects carry the on-demand label so
//! they can be listed together.

use jac_splice_orc::service::{EnsureRequest, LABEL_ON_DEMAND};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service as KubeService;

use super::*;

#[tokio::test]
async fn ensure_module_on_kube_deploys_once_for_racing_callers_and_labels_its_objects() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("ensure").await;
    let backend = c.backend(&ns);
    let svc = service(&backend, &ns);
    let kubelet = {
        let (client, ns) = (c.client.clone(), ns.clone());
        tokio::spawn(async move { mark_ready(&client, &ns, "jac-orc/module-server=json").await })
    };
    let req = EnsureRequest { module: "json".into(), wait: Some(Duration::from_secs(60)), ..EnsureRequest::default() };
    let (a, b) = timed(async {
        tokio::join!(svc.ensure_module(&Caller::Operator, &req), svc.ensure_module(&Caller::Operator, &req))
    })
    .await;
    timed(kubelet).await.unwrap();
    let (a, b) = (a.expect("first"), b.expect("second"));
    assert_eq!(u8::from(a.deployed) + u8::from(b.deployed), 1, "one deploy: {a:?} {b:?}");
    assert_eq!((a.deployment.name.as_str(), b.deployment.name.as_str()), ("json", "json"));
    assert_eq!(b.deployment.status, Status::Deployed, "{b:?}");

    let selector = format!("{LABEL_ON_DEMAND}=true");
    let on_demand = ListParams::default().labels(&selector);
    let deployments = timed(Api::<Deployment>::namespaced(c.client.clone(), &ns).list(&on_demand)).await.unwrap();
    let names: Vec<_> = deployments.items.iter().filter_map(|d| d.metadata.name.clone()).collect();
    assert_eq!(names, ["json"]);
    let services = timed(Api::<KubeService>::namespaced(c.client.clone(), &ns).list(&on_demand)).await.unwrap();
    assert_eq!(services.items.len(), 1);
    let template_labels =
        deployments.items[0].spec.as_ref().and_then(|s| s.template.metadata.as_ref()).and_then(|m| m.labels.as_ref());
    assert_eq!(template_labels.and_then(|l| l.get(LABEL_ON_DEMAND)).map(String::as_str), Some("true"), "pods too");

    // Found again without a deploy.
    let again = timed(svc.ensure_module(&Caller::Operator, &req)).await.expect("found");
    assert!(!again.deployed);
}

#[tokio::test]
async fn ensure_module_on_kube_deploys_a_failed_on_demand_deployment_again() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("ensure-again").await;
    let backend = c.backend(&ns);
    let svc = service(&backend, &ns);
    // Nobody marks the pod ready: the first call times out and the record says failed.
    let quick = EnsureRequest { module: "math".into(), wait: Some(Duration::from_secs(2)), ..EnsureRequest::default() };
    let err = timed(svc.ensure_module(&Caller::Operator, &quick)).await.unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    let id = jac_splice_orc::identity::DeploymentId::new(ns.clone(), "python-module", "math").unwrap();
    assert_eq!(timed(backend.get(&id)).await.unwrap().unwrap().status, Status::Failed);

    // The next call deploys it again (not hands out the failed one) and waits for it.
    let kubelet = {
        let (client, ns) = (c.client.clone(), ns.clone());
        tokio::spawn(async move { mark_ready(&client, &ns, "jac-orc/module-server=math").await })
    };
    let req = EnsureRequest { wait: Some(Duration::from_secs(60)), ..quick };
    let again = timed(svc.ensure_module(&Caller::Operator, &req)).await.expect("deployed again");
    timed(kubelet).await.unwrap();
    assert!(again.deployed);
    assert_eq!((again.deployment.name.as_str(), again.deployment.status), ("math", Status::Deployed));
}

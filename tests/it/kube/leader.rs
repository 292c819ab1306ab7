//! Two orchestrators against one API server: one Lease, one leader. The leader applies (its
//! name is on the Events); the other writes the desired state and follows the leader's status;
//! when the leader stops, the other takes over and applies.

use jac_splice_orc::backend::kube::resource::JacDeployment;
use jac_splice_orc::reconcile::{ControllerConfig, KubeLoops, LeaseConfig};
use k8s_openapi::api::events::v1::Event;

use super::*;

/// One orchestrator replica: its loops, backend and service.
struct Replica {
    name: &'static str,
    loops: KubeLoops,
    backend: Arc<KubeBackend>,
}

fn replica(c: &Cluster, ns: &str, name: &'static str) -> Replica {
    // A short Lease so the takeover happens within the test's bounds.
    let lease = LeaseConfig::new(ns, name).lease_duration(Duration::from_secs(3));
    let mut loops = KubeLoops::elect(c.client.clone(), lease);
    let options = KubeOptions::default()
        .orchestrator_namespace(ns)
        .leadership(loops.leading())
        .identity(name)
        .follow_timeout(STEP);
    let backend = Arc::new(KubeBackend::new(c.client.clone(), options));
    let svc = Arc::new(service(&backend, ns));
    let config = ControllerConfig::default()
        .namespace(Some(ns.to_string()))
        .not_ready(Duration::from_secs(1))
        .resync(Duration::from_secs(5))
        .retry(Duration::from_secs(1));
    loops.start(backend.clone(), svc, config);
    Replica { name, loops, backend }
}

/// Whether `a` leads once the election settled with exactly one leader of `a` and `b`.
async fn a_leads(a: &Replica, b: &Replica) -> bool {
    let (la, lb) = (a.loops.leading(), b.loops.leading());
    eventually("exactly one leader", || async {
        let (x, y) = (*la.borrow(), *lb.borrow());
        (x != y).then_some(x)
    })
    .await
}

/// Who reported the Events about resource `name` with `reason`.
async fn reporters(client: &kube::Client, ns: &str, name: &str, reason: &str) -> Vec<String> {
    let events = timed(Api::<Event>::namespaced(client.clone(), ns).list(&ListParams::default())).await.unwrap();
    events
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.reporting_instance)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_orchestrators_elect_one_leader_and_the_other_takes_over_when_it_stops() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("leader").await;
    let (a, b) = (replica(&c, &ns, "replica-a"), replica(&c, &ns, "replica-b"));
    let (leader, follower) = if a_leads(&a, &b).await { (a, b) } else { (b, a) };
    assert!(leader.backend.is_leader() && !follower.backend.is_leader(), "one leads, the other does not");

    // A deploy on the follower: it writes the spec, the leader applies, the follower reports.
    let svc = service(&follower.backend, &ns);
    let p = plan(&svc, "redis", &ns, "shared", json!({"memory": "32mb"})).await;
    let (tx, rx) = progress();
    let record = timed(follower.backend.apply(&p, &ApplyOptions::default(), &tx)).await.unwrap();
    drop(tx);
    assert_eq!(record.status, Status::Deployed, "{record:?}");
    let got = lines(&drain(rx));
    for line in ["service/shared created", "deployment.apps/shared created", "configmap/shared created"] {
        assert!(got.contains(&line.to_string()), "{got:?}");
    }
    let applied_by = eventually("the Applied event", || async {
        let by = reporters(&c.client, &ns, "shared", "Applied").await;
        (!by.is_empty()).then_some(by)
    })
    .await;
    assert_eq!(applied_by, [leader.name.to_string()], "only the leader applies");

    // The same deploy again on the follower: the spec (and its generation) stays, so every
    // object is unchanged, not the first revision's "created" lines again.
    let (tx, rx) = progress();
    let record = timed(follower.backend.apply(&p, &ApplyOptions::default(), &tx)).await.unwrap();
    drop(tx);
    assert_eq!(record.status, Status::Deployed, "{record:?}");
    let got = lines(&drain(rx));
    for line in ["service/shared unchanged", "deployment.apps/shared unchanged", "configmap/shared unchanged"] {
        assert!(got.contains(&line.to_string()), "{got:?}");
    }

    // The leader stops (and releases the Lease): the other takes over and acts on an edit.
    let leader_name = leader.name;
    leader.loops.stop().await;
    eventually("the follower takes over", || async { follower.backend.is_leader().then_some(()) }).await;
    let resources = Api::<JacDeployment>::namespaced(c.client.clone(), &ns);
    let edit = Patch::Merge(json!({"spec": {"config": {"memory": "48mb"}}}));
    timed(resources.patch("shared", &PatchParams::default(), &edit)).await.unwrap();
    let cms = Api::<ConfigMap>::namespaced(c.client.clone(), &ns);
    eventually("the new leader applies the edit", || async {
        let cm = cms.get_opt("shared").await.ok()??;
        cm.data?.get("redis-config")?.contains("maxmemory 48mb").then_some(())
    })
    .await;
    let applied_by = eventually("the new leader's Applied event", || async {
        let by = reporters(&c.client, &ns, "shared", "Applied").await;
        by.contains(&follower.name.to_string()).then_some(by)
    })
    .await;
    assert!(applied_by.iter().all(|r| r == leader_name || r == follower.name), "{applied_by:?}");
    follower.loops.stop().await;
}

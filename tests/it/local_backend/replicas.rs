//! Extra replicas across an orchestrator crash: a python-module deployment with `replicas: 3`
//! keeps all three module servers through a kill -9 of `jac-orc serve`, the next serve adopts
//! every one of them (the same pids, ports and records), and the objects that sessions placed
//! on each replica (a `random.Random` per session) answer on with their state.

use std::collections::{BTreeMap, BTreeSet};

use jac_splice_orc::pb;
use serde_json::{json, Value};

use super::lab::{grpc_deploy, log_count, rounds, workloads, Lab, POLL};
use crate::affinity::{alive, generator, local_randoms, next_random, pid_of, SEED};
use crate::proxy::target;
use crate::support::{proxy_client, Proxy};

const NAME: &str = "rng";
/// Draws before the restart; as many again after it.
const DRAWS: usize = 5;

/// Each replica's recorded `(pid, port)` by index (0: the workload, 1..: the extras), from the
/// state file.
fn recorded(lab: &Lab) -> BTreeMap<u64, (i64, u64)> {
    let state = lab.state();
    let w = &state["deployments"][format!("default/python-module/{NAME}")]["workload"];
    let pid = |p: &Value| p["pid"].as_i64().expect("a recorded pid");
    let mut out = BTreeMap::new();
    if !w["process"].is_null() {
        out.insert(0, (pid(&w["process"]), w["port"].as_u64().unwrap()));
    }
    for x in w["extras"].as_array().into_iter().flatten() {
        out.insert(x["index"].as_u64().unwrap(), (pid(&x["process"]), x["port"].as_u64().unwrap()));
    }
    out
}

/// The pid of the module server a fresh session reaches, once the proxy has a ready one.
async fn try_pid_of(proxy: &mut Proxy, session: &str) -> Option<i64> {
    let request = pb::ProxyDescribeRequest {
        target: target(NAME),
        request: Some(pb::DescribeRequest { session: session.into() }),
    };
    proxy.describe(request).await.ok().map(|r| r.into_inner().pid)
}

#[tokio::test]
async fn kill_9_keeps_every_replica_and_the_next_serve_adopts_them_with_their_sessions_objects() {
    let mut lab = Lab::new();
    let serve = lab.serve().await;
    let config = json!({"name": NAME, "module": "random", "replicas": 3, "packages": []});
    grpc_deploy(&serve, "python-module", config).await.unwrap();
    let before = recorded(&lab);
    assert_eq!(before.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2], "every replica is recorded: {before:?}");
    let pids: BTreeSet<i64> = before.values().map(|(pid, _)| *pid).collect();
    let endpoints = serve.records().await[NAME]["endpoints"].clone();

    // A session on every replica (rendezvous hashing spreads them), each with its own generator.
    let mut proxy = proxy_client(&serve.url, Some(&serve.token)).await;
    let mut on: BTreeMap<i64, String> = BTreeMap::new();
    for i in 0..200 {
        if on.len() == pids.len() {
            break;
        }
        let session = format!("keeper-{i:03}");
        on.entry(pid_of(&mut proxy, NAME, &session).await).or_insert(session);
    }
    assert_eq!(on.keys().copied().collect::<BTreeSet<_>>(), pids, "sessions reach every recorded replica");
    let mut objects = Vec::new();
    for (n, (pid, session)) in on.iter().enumerate() {
        let seed = SEED + n as i64;
        let id = generator(&mut proxy, NAME, session, seed).await;
        let mut drawn = Vec::new();
        for _ in 0..DRAWS {
            drawn.push(next_random(&mut proxy, NAME, session, &id).await);
        }
        assert_eq!(drawn, local_randoms(seed, DRAWS), "session {session} on pid {pid}");
        objects.push((*pid, session.clone(), id, seed));
    }
    drop(proxy);

    serve.kill9().await;
    for pid in &pids {
        assert!(alive(*pid), "a kill -9 of the orchestrator leaves replica pid {pid} running");
    }

    let serve = lab.serve().await;
    let mut proxy = proxy_client(&serve.url, Some(&serve.token)).await;
    // Until the proxy sees all three ready, a new session may land elsewhere; probe sessions of
    // their own, so the kept ones are first placed over the full set (where they were).
    let mut seen = BTreeSet::new();
    for i in 0..rounds() {
        if let Some(pid) = try_pid_of(&mut proxy, &format!("probe-{i:05}")).await {
            seen.insert(pid);
        }
        if seen.len() >= pids.len() {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(seen, pids, "after the restart sessions reach the same three processes, none started afresh");
    assert_eq!(recorded(&lab), before, "the same pids and ports are recorded");
    assert_eq!(serve.records().await[NAME]["endpoints"], endpoints, "the endpoints are kept");
    assert_eq!(log_count(&lab, "adopting a running replica"), 2, "both extras were adopted");
    let running: BTreeSet<i64> = workloads(&lab.data).iter().map(|p| i64::from(p.pid)).collect();
    assert_eq!(running, pids, "no replica was reaped or started again");

    // Every session's object still answers, on its replica, with its state intact.
    for (pid, session, id, seed) in &objects {
        assert_eq!(pid_of(&mut proxy, NAME, session).await, *pid, "session {session} stays on its replica");
        let mut drawn = Vec::new();
        for _ in 0..DRAWS {
            drawn.push(next_random(&mut proxy, NAME, session, id).await);
        }
        assert_eq!(drawn, &local_randoms(*seed, 2 * DRAWS)[DRAWS..], "session {session}'s generator went on");
    }

    // Scaled down to two: the third stops and its record goes; the others run on, as recorded.
    let config = json!({"name": NAME, "module": "random", "replicas": 2, "packages": []});
    grpc_deploy(&serve, "python-module", config).await.unwrap();
    let two = recorded(&lab);
    assert_eq!(two, before.iter().filter(|(i, _)| **i < 2).map(|(i, r)| (*i, *r)).collect::<BTreeMap<_, _>>());
    let (third, _) = before[&2];
    for _ in 0..rounds() {
        if !alive(third) {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(!alive(third), "the surplus replica stopped");

    serve.term().await;
    for _ in 0..rounds() {
        if workloads(&lab.data).is_empty() {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(workloads(&lab.data).is_empty(), "SIGTERM stops every replica");
}

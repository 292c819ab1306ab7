//! Session affinity across replicas (issue 12 items 3 and 4) on the local backend: a
//! python-module deployment with `replicas: 3` runs three module servers; every call of one
//! session reaches the same one (a `random.Random` keeps its state over 100 calls), sessions
//! spread over all three, a killed replica's session gets `REPLICA_GONE` for its old reference
//! and carries on elsewhere, and redeploys scale the processes while placed sessions stay put.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use jac_splice_orc::pb::{self, value::Kind};
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

use crate::proxy::{kind, target};
use crate::support::{struct_of, within, TestServer, ADMIN};

pub(crate) const SEED: i64 = 20_261_202;

/// Deploys (or redeploys) `name` serving `random` with `replicas` module servers; its endpoints.
async fn deploy_replicas(server: &TestServer, name: &str, replicas: u32) -> Vec<String> {
    let mut c = server.grpc().await;
    let request = pb::DeployRequest {
        module: "python-module".into(),
        config: Some(struct_of(json!({"name": name, "module": "random", "replicas": replicas, "packages": []}))),
        wait: true,
        ..Default::default()
    };
    let mut stream = within(c.deploy(request)).await.unwrap().into_inner();
    let mut summary = None;
    while let Some(item) = within(stream.next()).await {
        if let pb::DeployEvent { event: Some(pb::deploy_event::Event::Summary(s)) } = item.expect("deploy succeeds") {
            summary = Some(s);
        }
    }
    summary.expect("summary").deployment.expect("deployment").endpoints
}

pub(crate) fn call(
    name: &str,
    session: &str,
    target_ref: &str,
    path: &[&str],
    args: Vec<Kind>,
) -> pb::ProxyCallRequest {
    pb::ProxyCallRequest {
        target: target(name),
        request: Some(pb::CallRequest {
            session: session.into(),
            target: target_ref.into(),
            path: path.iter().map(|s| s.to_string()).collect(),
            args: args.into_iter().map(|k| pb::Value { kind: Some(k) }).collect(),
            kwargs: vec![],
        }),
    }
}

/// The pid of the module server that answers `session`.
pub(crate) async fn pid_of(proxy: &mut crate::support::Proxy, name: &str, session: &str) -> i64 {
    let request = pb::ProxyDescribeRequest {
        target: target(name),
        request: Some(pb::DescribeRequest { session: session.into() }),
    };
    within(proxy.describe(request)).await.unwrap().into_inner().pid
}

/// A `random.Random(seed)` of `session`, as a reference.
pub(crate) async fn generator(proxy: &mut crate::support::Proxy, name: &str, session: &str, seed: i64) -> String {
    let r = within(proxy.call(call(name, session, "", &["Random"], vec![Kind::IntValue(seed)]))).await.unwrap();
    match kind(r.into_inner()) {
        Kind::Ref(r) => r.id,
        other => panic!("expected a reference to a Random, got {other:?}"),
    }
}

pub(crate) async fn next_random(proxy: &mut crate::support::Proxy, name: &str, session: &str, id: &str) -> f64 {
    let r = within(proxy.call(call(name, session, id, &["random"], vec![]))).await.unwrap().into_inner();
    match kind(r) {
        Kind::FloatValue(v) => v,
        other => panic!("expected a float, got {other:?}"),
    }
}

/// The first `n` values of Python's own `random.Random(seed)`, computed here.
pub(crate) fn local_randoms(seed: i64, n: usize) -> Vec<f64> {
    let python = std::env::var("JAC_ORC_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = format!("import random\nr = random.Random({seed})\nfor _ in range({n}): print(repr(r.random()))");
    let out = std::process::Command::new(python).args(["-c", &script]).output().expect("python runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| l.parse().unwrap()).collect()
}

pub(crate) fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[tokio::test]
async fn a_session_keeps_its_replica_sessions_spread_and_a_dead_replica_is_reported() {
    let server = TestServer::start().await;
    let endpoints = deploy_replicas(&server, "rng", 3).await;
    assert_eq!(endpoints.len(), 3, "{endpoints:?}");
    assert_eq!(endpoints.iter().collect::<HashSet<_>>().len(), 3, "each replica has its own port: {endpoints:?}");
    let mut proxy = server.proxy_as(Some(ADMIN)).await;

    // One session's generator keeps its state over 100 calls: each reaches the replica holding it.
    let id = generator(&mut proxy, "rng", "keeper", SEED).await;
    let mut remote = Vec::new();
    for _ in 0..100 {
        remote.push(next_random(&mut proxy, "rng", "keeper", &id).await);
    }
    assert_eq!(remote, local_randoms(SEED, 100));

    // 30 sessions spread over all three replicas, each staying on its own.
    let mut placed: HashMap<String, i64> = HashMap::new();
    for i in 0..30 {
        let session = format!("spread-{i:02}");
        let pid = pid_of(&mut proxy, "rng", &session).await;
        placed.insert(session, pid);
    }
    let pids: HashSet<i64> = placed.values().copied().collect();
    assert_eq!(pids.len(), 3, "30 sessions reached {pids:?}");
    for (session, pid) in &placed {
        assert_eq!(pid_of(&mut proxy, "rng", session).await, *pid, "session {session} moved");
    }

    // Its replica dies: the old reference is reported gone, new work carries on elsewhere.
    let holder = pid_of(&mut proxy, "rng", "keeper").await;
    assert!(pids.contains(&holder));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(holder as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    within(async {
        while alive(holder) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Until the proxy sees the replica leave, a call may still find it unreachable.
    let gone = within(async {
        loop {
            match proxy.call(call("rng", "keeper", &id, &["random"], vec![])).await {
                Err(e) if e.code() == Code::Unavailable => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => break e,
                Ok(r) => panic!("the dead replica's generator answered: {r:?}"),
            }
        }
    })
    .await;
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    assert_eq!(gone.get_error_details().error_info().expect("error info").reason, "REPLICA_GONE", "{gone:?}");
    assert!(gone.message().contains("rng") && gone.message().contains("went away"), "{gone:?}");

    let fresh = generator(&mut proxy, "rng", "keeper", SEED).await;
    let mut again = Vec::new();
    for _ in 0..10 {
        again.push(next_random(&mut proxy, "rng", "keeper", &fresh).await);
    }
    assert_eq!(again, local_randoms(SEED, 10));
    let now = pid_of(&mut proxy, "rng", "keeper").await;
    assert_ne!(now, holder);
    assert!(alive(now));
    server.stop().await;
}

#[tokio::test]
async fn redeploys_scale_the_processes_and_placed_sessions_stay_put() {
    let server = TestServer::start().await;
    assert_eq!(deploy_replicas(&server, "scaled", 2).await.len(), 2);
    let mut proxy = server.proxy_as(Some(ADMIN)).await;
    let mut placed: HashMap<String, i64> = HashMap::new();
    for i in 0..20 {
        let session = format!("early-{i:02}");
        placed.insert(session.clone(), pid_of(&mut proxy, "scaled", &session).await);
    }
    let two: HashSet<i64> = placed.values().copied().collect();
    assert_eq!(two.len(), 2, "{two:?}");

    // A third replica: the placed sessions stay where they are; new ones reach all three.
    assert_eq!(deploy_replicas(&server, "scaled", 3).await.len(), 3);
    for (session, pid) in &placed {
        assert_eq!(pid_of(&mut proxy, "scaled", session).await, *pid, "session {session} moved");
    }
    let mut three = HashSet::new();
    for i in 0..40 {
        three.insert(pid_of(&mut proxy, "scaled", &format!("late-{i:02}")).await);
    }
    assert_eq!(three.len(), 3, "{three:?}");
    assert!(two.is_subset(&three), "the first two replicas kept running: {two:?} {three:?}");
    let all: Vec<i64> = three.iter().copied().collect();

    // Back to one: two processes stop; every session is answered by the one left.
    assert_eq!(deploy_replicas(&server, "scaled", 1).await.len(), 1);
    let mut left = HashSet::new();
    for i in 0..10 {
        left.insert(pid_of(&mut proxy, "scaled", &format!("late-{i:02}")).await);
    }
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(all.iter().filter(|p| alive(**p)).count(), 1, "{all:?}");

    // Undeploy stops every process.
    assert_eq!(deploy_replicas(&server, "scaled", 3).await.len(), 3);
    let mut running = HashSet::new();
    for i in 0..40 {
        running.insert(pid_of(&mut proxy, "scaled", &format!("last-{i:02}")).await);
    }
    let mut c = server.grpc().await;
    let request = pb::UndeployRequest {
        namespace: "default".into(),
        module: "python-module".into(),
        name: "scaled".into(),
        ..Default::default()
    };
    let mut stream = within(c.undeploy(request)).await.unwrap().into_inner();
    while let Some(item) = within(stream.next()).await {
        item.expect("undeploy succeeds");
    }
    within(async {
        while running.iter().any(|p| alive(*p)) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    server.stop().await;
}

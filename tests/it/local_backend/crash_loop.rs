//! The crash loop: kill -9 of `jac-orc serve` at 20 random points (a seeded RNG picks the
//! deploys, gRPC or REST, and the kill point: after N stream events or after a delay) across
//! redis and python-module deploys (one with a virtualenv from a local wheel), restarting on the
//! same data dir in between. Checked on every round and at the end: no record lost, endpoints
//! never move, workloads outlive the kill, then every deployment answers on its recorded
//! endpoint with exactly one process (the one its record names).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use jac_splice_orc::pb::{self, deploy_event::Event};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio_stream::StreamExt;

use super::lab::{answers, build_wheel, eventually, log_count, workloads, Lab, BOUND};
use crate::support::{redis_available, struct_of};

/// What the crash loop deploys: a name, its module, and the configs it alternates between.
struct Target {
    name: &'static str,
    module: &'static str,
    configs: Vec<Value>,
    /// Relative chance of being picked (virtualenv deploys are slow).
    weight: u32,
}

fn targets() -> Vec<Target> {
    let redis = |name: &'static str| Target {
        name,
        module: "redis",
        configs: ["16mb", "24mb"].iter().map(|m| json!({"name": name, "memory": m})).collect(),
        weight: 4,
    };
    let module = |name: &'static str| Target {
        name,
        module: "python-module",
        configs: ["json", "math"].iter().map(|m| json!({"name": name, "module": m})).collect(),
        weight: 3,
    };
    vec![
        redis("r0"),
        redis("r1"),
        redis("r2"),
        module("m0"),
        module("m1"),
        Target {
            name: "v0",
            module: "python-module",
            configs: vec![json!({"name": "v0", "module": "jacorc_crash_pkg", "packages": ["jacorc-crash-pkg"]})],
            weight: 1,
        },
    ]
}

#[tokio::test]
async fn kill_9_at_20_random_points_across_deploys_leaves_every_deployment_answering_with_one_process() {
    assert!(redis_available());
    const ITERATIONS: usize = 20;
    let seed: u64 = std::env::var("JAC_ORC_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("crash loop seed {seed} (rerun with JAC_ORC_CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let wheels = tempfile::tempdir().unwrap();
    build_wheel(wheels.path());
    let mut lab = Lab::new().arg("--pip-find-links").arg(wheels.path().display().to_string());
    let targets = targets();
    let total_weight: u32 = targets.iter().map(|t| t.weight).sum();
    // First endpoint seen per deployment: it must never change.
    let mut endpoints: HashMap<&str, String> = HashMap::new();
    // Deploys that completed: their records must exist at the end.
    let mut certain: HashSet<&str> = HashSet::new();
    let mut kills_by_events = 0;

    for iteration in 0..ITERATIONS {
        let serve = lab.serve().await;
        let records = serve.records().await;
        for name in &certain {
            assert!(records.contains_key(*name), "iteration {iteration}: record {name} was lost: {records:?}");
        }
        for (name, d) in &records {
            let ep = d["endpoints"][0].as_str().unwrap_or_default().to_string();
            let first =
                endpoints.entry(targets.iter().find(|t| t.name == name).expect("known").name).or_insert(ep.clone());
            assert_eq!(*first, ep, "iteration {iteration}: the endpoint of {name} moved");
        }
        // 1-3 deploys, over gRPC or REST; kill -9 after a random number of events or a random delay.
        let ops: Vec<(usize, usize, bool)> = (0..rng.random_range(1..=3))
            .map(|_| {
                let mut pick = rng.random_range(0..total_weight);
                let t = targets.iter().position(|t| {
                    let hit = pick < t.weight;
                    pick = pick.saturating_sub(t.weight);
                    hit
                });
                let t = t.unwrap_or(0);
                (t, rng.random_range(0..targets[t].configs.len()), rng.random_bool(0.7))
            })
            .collect();
        let by_events = rng.random_bool(0.5);
        let kill_after_events: usize = rng.random_range(0..8);
        // A virtualenv takes seconds to build: give those iterations room to finish sometimes.
        let slow = ops.iter().any(|(t, _, _)| !targets[*t].configs[0]["packages"].is_null());
        let kill_after = Duration::from_millis(rng.random_range(0..if slow { 15_000 } else { 2_500 }));
        let pid = serve.pid;
        let timer = (!by_events).then(|| {
            tokio::spawn(async move {
                tokio::time::sleep(kill_after).await;
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            })
        });
        println!(
            "iteration {iteration}: {} then kill -9 {}",
            ops.iter()
                .map(|(t, c, g)| format!("{}#{c}{}", targets[*t].name, if *g { "/grpc" } else { "/rest" }))
                .collect::<Vec<_>>()
                .join(", "),
            if by_events { format!("after {kill_after_events} events") } else { format!("after {kill_after:?}") }
        );
        let mut events = 0usize;
        let mut completed: Vec<&str> = Vec::new();
        let mut interrupted: Vec<&str> = Vec::new();
        'ops: for (t, c, grpc) in &ops {
            let target = &targets[*t];
            let config = target.configs[*c].clone();
            let done: Option<String> = if *grpc {
                let req = pb::DeployRequest {
                    module: target.module.into(),
                    config: Some(struct_of(config)),
                    wait: true,
                    wait_timeout_seconds: 120,
                    ..Default::default()
                };
                let mut endpoint = None;
                // The kill may come before the connection: that is an interrupted deploy too.
                let client =
                    tokio::time::timeout(BOUND, crate::support::try_grpc_client(&serve.url, Some(&serve.token))).await;
                let stream = match client {
                    Ok(Ok(mut client)) => tokio::time::timeout(BOUND, client.deploy(req)).await.ok(),
                    _ => None,
                };
                if let Some(Ok(stream)) = stream {
                    let mut stream = stream.into_inner();
                    while let Ok(Some(Ok(ev))) = tokio::time::timeout(BOUND, stream.next()).await {
                        events += 1;
                        if by_events && events == kill_after_events {
                            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                            kills_by_events += 1;
                        }
                        if let Some(Event::Summary(s)) = ev.event {
                            endpoint = s.deployment.and_then(|d| d.endpoints.first().cloned());
                        }
                    }
                }
                endpoint
            } else {
                let url = format!("{}/deployment", serve.url);
                match serve.http().post(url).json(&json!({"module": target.module, "config": config})).send().await {
                    Ok(r) if r.status().is_success() => {
                        r.json::<Value>().await.ok().and_then(|b| b["endpoints"][0].as_str().map(String::from))
                    }
                    _ => None,
                }
            };
            match done {
                Some(ep) => {
                    let first = endpoints.entry(target.name).or_insert(ep.clone());
                    assert_eq!(*first, ep, "iteration {iteration}: the endpoint of {} moved", target.name);
                    certain.insert(target.name);
                    completed.retain(|n| *n != target.name);
                    completed.push(target.name);
                }
                None => {
                    interrupted.push(target.name);
                    break 'ops;
                }
            }
        }
        if let Some(timer) = timer {
            timer.abort();
        }
        println!("iteration {iteration}: completed {completed:?}, interrupted {interrupted:?}");
        serve.kill9().await;
        // The orchestrator's death takes no workload down.
        for name in completed.iter().filter(|n| !interrupted.contains(n)) {
            let t = targets.iter().find(|t| t.name == *name).unwrap();
            assert!(
                answers(t.module, &endpoints[name]).await,
                "iteration {iteration}: {name} died with the orchestrator"
            );
        }
    }

    // The last serve: everything comes back (or is still there) and settles.
    let serve = lab.serve().await;
    let records = eventually("every record deployed and answering", || async {
        let records = serve.records().await;
        for (name, d) in &records {
            let t = targets.iter().find(|t| t.name == name).unwrap();
            let ep = d["endpoints"][0].as_str().unwrap_or_default();
            if d["status"] != "deployed" || !answers(t.module, ep).await {
                return None;
            }
        }
        Some(records)
    })
    .await;
    for name in &certain {
        assert!(records.contains_key(*name), "record {name} was lost: {records:?}");
    }
    for (name, d) in &records {
        assert_eq!(d["endpoints"], json!([endpoints[name.as_str()]]), "the endpoint of {name} moved");
    }
    let procs = eventually("exactly one process per workload", || async {
        let procs = workloads(&lab.data);
        let mut by: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for p in &procs {
            by.entry(p.deployment.clone().unwrap_or_else(|| "?".into())).or_default().push(p.pid);
        }
        let expected: Vec<String> = records
            .values()
            .map(|d| format!("default/{}/{}", d["module"].as_str().unwrap(), d["name"].as_str().unwrap()))
            .collect();
        let ok = by.len() == records.len() && expected.iter().all(|k| by.get(k).is_some_and(|v| v.len() == 1));
        if !ok {
            println!("waiting: processes {by:?}, records {expected:?}");
        }
        ok.then_some(procs)
    })
    .await;
    for p in &procs {
        let dep = p.deployment.as_deref().unwrap();
        let (module, name) = dep.split_once('/').unwrap().1.split_once('/').unwrap();
        assert_eq!(lab.recorded_pid(module, name), Some(p.pid), "the record names the process of {dep}");
    }
    println!(
        "crash loop seed {seed}: {ITERATIONS} kills ({kills_by_events} after an event count), {} deployments, {} processes; serves adopted {} workloads, reaped {} processes",
        records.len(),
        procs.len(),
        log_count(&lab, "adopting a running workload"),
        log_count(&lab, "reaping a process"),
    );
    serve.term().await;
    eventually("SIGTERM stops every workload", || async { workloads(&lab.data).is_empty().then_some(()) }).await;
}

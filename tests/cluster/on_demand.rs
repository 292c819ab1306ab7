//! Deploy on first import in the cluster (issue 12, item 1): `import_module("colorsys",
//! deploy=True)` from this machine against the orchestrator in the cluster deploys the module when
//! nothing serves it, waits for its pod and answers; two importers racing get one deployment.
//! Each round is then removed and imported again, and the time from the import to the first
//! answer is printed for each round and as their median (a figure, never asserted).

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const ROUNDS: usize = 3;
const SELECTOR: &str = "jac-orc/module-server=colorsys";

fn answered(result: &Value) -> f64 {
    let hsv: Vec<f64> = result["hsv"].as_array().expect("hsv").iter().map(|v| v.as_f64().unwrap()).collect();
    let want = [0.5, 0.5, 0.4];
    assert!(hsv.iter().zip(want).all(|(got, want)| (got - want).abs() < 1e-9), "rgb_to_hsv(0.2, 0.4, 0.4): {result}");
    result["first_answer_s"].as_f64().expect("first_answer_s")
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[tokio::test]
async fn import_module_with_deploy_deploys_once_for_racing_importers_and_answers() {
    let Some(mut node) = Node::connect().await else {
        return;
    };
    let orc = node.install("ondemand", None).await;
    let ns = orc.namespace.clone();
    let token = node.token();
    let target = orc.target();
    let mut firsts = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        // The first round races two importers; the others import alone.
        let importers = if round == 0 { 2 } else { 1 };
        let args = ["ondemand", target.as_str(), ns.as_str()];
        let runs = (0..importers).map(|_| drive(&token, &args));
        let results = timed(futures::future::join_all(runs)).await;
        let deployed = results.iter().filter(|r| r["progress"].as_array().is_some_and(|p| !p.is_empty())).count();
        assert_eq!(deployed, 1, "exactly one importer deploys (the other waits for it): {results:?}");
        let names = orc.deployment_names().await;
        assert_eq!(names.iter().filter(|n| n.as_str() == "colorsys").count(), 1, "one deployment: {names:?}");
        assert_eq!(pods(&node.client, &ns, SELECTOR).await.len(), 1, "one pod serves the module");
        // A round lasts until its last importer has its answer.
        let slowest = results.iter().map(answered).fold(0.0, f64::max);
        timing(&format!("on demand round {round}: import_module(deploy=True) → first answer"), secs(slowest));
        firsts.push(slowest);

        let (code, body) = orc.undeploy(&ns, "python-module", "colorsys").await;
        assert_eq!(code, 200, "{body}");
        pods_gone(&node.client, &ns, SELECTOR).await;
    }
    timing(
        &format!("on demand: import_module(deploy=True) → first answer, median of {ROUNDS} rounds"),
        secs(median(firsts)),
    );
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

//! Cluster tier: end-to-end tests in a real one-node Kubernetes whose pods run
//! (`scripts/k8s-test-cluster.sh run --node -- cargo test --test cluster`), with the images of
//! `scripts/images.sh`. The orchestrator is installed with `kubectl apply` of the shipped manifests
//! and driven from this machine through its REST API and from Python (`jac_splice`), as users do.
//!
//! Gated by `JAC_ORC_TEST_NODE_KUBECONFIG`: unset, each test says why it skips, unless
//! `JAC_ORC_REQUIRE_NODE=1` (CI), where it fails. Each test installs its own orchestrator in its own
//! namespace and deletes it at the end. Timings (install → Ready, deploy → pod Ready → first call,
//! fail-fast) are printed as `[timing]` lines, never asserted; waits are bounded generously.

mod affinity;
mod failures;
mod idle;
mod images;
mod install;
mod logs;
mod on_demand;
mod rollout;
mod support;
mod workloads;

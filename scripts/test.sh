#!/usr/bin/env bash
# Runs every test of the project on a fresh or warm machine. Installs what the tests need
# (idempotently) and caches builds outside the clone. CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${JAC_ORC_CACHE:-/var/cache/jac-splice-orc}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
mkdir -p "$CACHE"

step() { printf '\n==> %s (%s)\n' "$*" "$(date +%H:%M:%S)"; }

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  step "installing ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need_apt[@]}" >/dev/null
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (deny warnings)"
cargo clippy --all-targets --locked -- -D warnings

step "test Kubernetes control plane (built once from Debian's kubernetes source, cached)"
scripts/k8s-test-cluster.sh build

step "cargo test (unit, integration, and against the test Kubernetes API server)"
# `run` starts etcd + kube-apiserver + kube-controller-manager on free loopback ports, exports
# JAC_ORC_TEST_KUBECONFIG and JAC_ORC_REQUIRE_K8S=1 (the kube tests fail rather than skip), and
# always stops them.
scripts/k8s-test-cluster.sh run -- cargo test --all-targets --locked

step "Python: jac-splice build, stubs and pytest"
# The orchestrator tests in pytest drive the jac-orc binary built above.
export JAC_ORC_BIN="$CARGO_TARGET_DIR/debug/jac-orc" JAC_ORC_REQUIRE_BIN=1
CARGO_TARGET_DIR="$CACHE/target-python" bash python/scripts/test.sh

step "all tests passed"

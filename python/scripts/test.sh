#!/usr/bin/env bash
# Lints and unit-tests the native crate, builds and installs jac-splice from this folder, lints
# and type-checks the package, checks the stubs, and runs the Python tests. Idempotent; exits
# non-zero on any failure. Extra arguments go to pytest.
#
# CARGO_TARGET_DIR picks the cargo target (default: the shared cache's target-python), and
# JAC_SPLICE_PYTHON the interpreter that gets the test tools and the wheel and runs the tests
# (default: python3), e.g. a venv's python so a worktree's build does not replace the system's
# jac_splice. That interpreter must be Python >= 3.11 (see the pytest step).
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
cd "$HERE"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/jac-splice-orc/target-python}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
PY="${JAC_SPLICE_PYTHON:-python3}"
export JAC_SPLICE_PYTHON="$PY"

step() { printf '\n==> python/: %s (%s)\n' "$*" "$(date +%H:%M:%S)"; }

if ! command -v openssl >/dev/null; then
  step "installing openssl (the TLS tests make their certificates with it)"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq openssl >/dev/null
fi

step "test tools"
# ruff is pinned exactly: its default rule set grows between releases. grpcio-tools and
# grpcio-status (google.rpc error details) serve the test that generates a grpcio client.
"$PY" -m pip install -q \
  "maturin==1.16.0" "pytest>=8" "pytest-timeout>=2.3" "numpy>=2" "rpyc>=6" \
  "grpcio>=1.70" "grpcio-tools>=1.70" "grpcio-health-checking>=1.70" "grpcio-status>=1.70" \
  "mypy>=1.15" \
  "ruff==0.17.6" "jaclang==0.10.2" "prometheus-client>=0.20"

step "native crate: cargo fmt --check"
cargo fmt --check

step "native crate: cargo clippy (deny warnings)"
cargo clippy --all-targets --locked -- -D warnings

step "native crate: cargo test"
cargo test --locked

step "build and install the wheel"
bash scripts/build.sh
# The wheel the fresh-venv test installs (tests/test_distribution.py): the one just built.
JAC_SPLICE_WHEEL="$(ls "$HERE"/dist/jac_splice-*.whl)"
export JAC_SPLICE_WHEEL

step "package: ruff format --check, ruff check, mypy --strict"
"$PY" -m ruff format --check jac_splice tests
"$PY" -m ruff check jac_splice tests
# From python/, so mypy reads the package's source and its hand-written _native.pyi.
"$PY" -m mypy

step "stubs match the native module (mypy.stubtest)"
# From elsewhere, so the installed package (with the compiled module) is what gets imported.
(cd /tmp && "$PY" -m mypy.stubtest jac_splice._native --allowlist "$HERE/stubtest-allowlist.txt")

step "pytest"
# Run from python/ with `pytest` (not `python -m pytest`, which would put the unbuilt source
# package first on sys.path). For another interpreter, whose pytest script may not exist (a venv
# sharing the system's site-packages), `-P` (Python >= 3.11) keeps python/ off sys.path instead.
if [ "$PY" = python3 ]; then
  pytest -q "$@"
else
  "$PY" -P -m pytest -q "$@"
fi

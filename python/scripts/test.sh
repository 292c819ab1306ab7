#!/usr/bin/env bash
# Installs the test tools, builds and installs jac-splice from this folder, checks the stubs,
# and runs the Python tests. Idempotent; exits non-zero on any failure.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
cd "$HERE"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/jac-splice-orc/target-python}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

python3 -m pip install -q \
  "maturin==1.16.0" "pytest>=8" "pytest-timeout>=2.3" "numpy>=2" "rpyc>=6" \
  "grpcio>=1.70" "grpcio-tools>=1.70" "grpcio-health-checking>=1.70" "mypy>=1.15" \
  "jaclang==0.10.2"

bash scripts/build.sh

# Hand-written stubs must match the native module.
(cd /tmp && python3 -m mypy.stubtest jac_splice._native --allowlist "$HERE/stubtest-allowlist.txt")

# Run from python/ with `pytest` (not `python -m pytest`, which would put the unbuilt source
# package first on sys.path).
pytest -q "$@"

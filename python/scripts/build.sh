#!/usr/bin/env bash
# Builds the jac-splice wheel (release) and installs it into the current Python.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/jac-splice-orc/target-python}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WHEELS="${CARGO_TARGET_DIR}/wheels"
rm -rf "$WHEELS"
python3 -m maturin build --release --out "$WHEELS"
python3 -m pip install -q --force-reinstall --no-deps "$WHEELS"/jac_splice-*.whl

#!/usr/bin/env bash
# Builds the jac-splice wheel once (release, abi3: one wheel serves every CPython >= 3.9 on this
# platform) and installs it into the current Python.
#
# The wheel lands in $CARGO_TARGET_DIR/wheels (where scripts/images.sh looks) and is copied to
# python/dist/, the path the READMEs give (`pip install dist/jac_splice-*.whl`). Set
# JAC_SPLICE_PYTHON to install into another interpreter (a venv's python) than python3.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/jac-splice-orc/target-python}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
PYTHON="${JAC_SPLICE_PYTHON:-python3}"
WHEELS="${CARGO_TARGET_DIR}/wheels"
rm -rf "$WHEELS"
# maturin itself comes from python3 (a venv that shares the system's site-packages has no
# maturin script of its own); an abi3 wheel does not depend on the interpreter that builds it.
python3 -m maturin build --release --out "$WHEELS"
mkdir -p dist
rm -f dist/jac_splice-*.whl
cp "$WHEELS"/jac_splice-*.whl dist/
"$PYTHON" -m pip install -q --force-reinstall --no-deps "$WHEELS"/jac_splice-*.whl
echo "built $(ls dist/jac_splice-*.whl)"

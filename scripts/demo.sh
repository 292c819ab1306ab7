#!/usr/bin/env bash
# The main job on the embedded default (local backend), on a fresh machine:
#   build jac-orc and the jac-splice Python package, start `jac-orc serve`, deploy Redis and
#   answer a PING, deploy numpy as a python-module and call it remotely through the
#   orchestrator (examples/python/numpy_remote.py), undeploy both, stop cleanly.
# Auth is on as everywhere: serve generates an admin token into its data dir, and the CLI and
# the Python client on this host read it from there (JAC_ORC_DATA_DIR), so no step handles it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${JAC_ORC_CACHE:-/var/cache/jac-splice-orc}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
mkdir -p "$CACHE" 2>/dev/null || { CACHE=$ROOT/.cache; export CARGO_TARGET_DIR=$CACHE/target; mkdir -p "$CACHE"; }

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if ! command -v redis-server >/dev/null; then
  say "installing redis-server (Debian package)"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq redis-server >/dev/null
fi

say "building jac-orc"
cargo build --locked --bin jac-orc
JAC_ORC=$CARGO_TARGET_DIR/debug/jac-orc

if ! python3 -c "import jac_splice, numpy" 2>/dev/null; then
  say "building and installing the jac-splice Python package (and numpy)"
  python3 -m pip install -q "maturin==1.16.0" "numpy>=2"
  CARGO_TARGET_DIR=$CACHE/target-python bash python/scripts/build.sh
fi

DATA=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export JAC_ORC_SERVER=http://127.0.0.1:$PORT
# One data dir for serve (its admin token lands in $DATA/token) and for the clients (they read it).
export JAC_ORC_DATA_DIR=$DATA
say "starting jac-orc serve on 127.0.0.1:$PORT (local backend, data in $DATA)"
"$JAC_ORC" serve --listen "127.0.0.1:$PORT" --python "$(command -v python3)" >"$DATA/jac-orc.log" 2>&1 &
SERVER=$!
cleanup() {
  kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -sf "$JAC_ORC_SERVER/healthz" >/dev/null 2>&1 && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$DATA/jac-orc.log"; exit 1; }
  sleep 0.1
done

say "without a token: 401 (every API but health and the API description needs one)"
curl -s "$JAC_ORC_SERVER/templates"; echo
printf 'the admin token is in %s (mode %s)\n' "$DATA/token" "$(stat -c %a "$DATA/token")"

say "templates"
"$JAC_ORC" templates

say "dry run: redis with name=cache (nothing is touched)"
"$JAC_ORC" dry-run redis --set name=cache --set memory=64mb -o json | python3 -c '
import json, sys
d = json.load(sys.stdin)
for k, v in d["placeholders"].items():
    print("  %-10s default=%-14r current=%r" % (k, v["default"], v["current"]))'

say "deploy redis"
"$JAC_ORC" deploy redis --set name=cache --set memory=64mb
ENDPOINT=$("$JAC_ORC" get redis cache -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["endpoints"][0])')
printf 'redis-cli -h 127.0.0.1 -p %s PING -> %s\n' "${ENDPOINT#*:}" "$(redis-cli -h 127.0.0.1 -p "${ENDPOINT#*:}" PING)"

say "deploy numpy as a python-module"
"$JAC_ORC" deploy python-module --set name=numpy --set module=numpy

say "call numpy remotely through jac-orc (examples/python/numpy_remote.py)"
python3 examples/python/numpy_remote.py "$JAC_ORC_SERVER"

say "deployments"
"$JAC_ORC" list

say "undeploy"
"$JAC_ORC" undeploy python-module numpy
"$JAC_ORC" undeploy redis cache

say "done: stopping jac-orc"

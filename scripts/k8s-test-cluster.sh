#!/usr/bin/env bash
# Test control plane for the Kubernetes backend: a real kube-apiserver + kube-controller-manager built
# from Debian bookworm's `kubernetes` source package (1.20.x, complete tree with vendor/) with Debian's
# Go, plus Debian's etcd. Recipe: reference/k8s-testing.md §2.1/§2.2.
#
#   scripts/k8s-test-cluster.sh build          build (or reuse) the cached binaries
#   eval "$(scripts/k8s-test-cluster.sh start [DIR])"   start on free loopback ports; prints exports
#   scripts/k8s-test-cluster.sh stop [DIR]     stop apiserver, controller-manager, etcd (in that order)
#   scripts/k8s-test-cluster.sh run -- CMD...  build, start in a fresh dir, run CMD with
#                                              JAC_ORC_TEST_KUBECONFIG and JAC_ORC_REQUIRE_K8S=1
#                                              exported, stop (also on failure); CMD's exit code
#
# Binaries are cached under $JAC_ORC_K8S_CACHE (default /var/cache/jac-splice-orc/k8s)/<debian-version>/bin
# and rebuilt only when missing. Every wait loop is bounded.
set -euo pipefail

CACHE=${JAC_ORC_K8S_CACHE:-/var/cache/jac-splice-orc/k8s}
SRC=$CACHE/src                       # private apt lists, source tarballs, go cache
DEFAULT_STATE=${JAC_ORC_K8S_STATE:-/tmp/jac-orc-k8s}
APT_LOCK=(-o DPkg::Lock::Timeout=600)

log() { echo "k8s-test-cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

# apt options that use private lists holding only bookworm's deb-src, so the system's sources stay
# untouched and `apt-get source kubernetes` can only pick bookworm's version.
apt_private_opts() {
  echo "-o Dir::Etc::SourceList=$SRC/sources.list -o Dir::Etc::SourceParts=/nonexistent" \
       "-o Dir::State::Lists=$SRC/lists -o Dir::Cache=$SRC/cache"
}

prepare_apt() {
  mkdir -p "$SRC/lists/partial" "$SRC/cache/archives/partial"
  local uri
  uri=$(sed -n 's/^URIs: //p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  [ -n "$uri" ] || uri=http://deb.debian.org/debian
  echo "deb-src $uri bookworm main" > "$SRC/sources.list"
}

# Prints the Debian version of the `kubernetes` source package bookworm ships (e.g. 1.20.5+really1.20.2-1.1+deb12u1).
debian_version() {
  # shellcheck disable=SC2046
  apt-cache $(apt_private_opts) showsrc kubernetes 2>/dev/null | sed -n 's/^Version: //p' | sort -V | tail -1
}

cached_bin_dir() {
  # newest cached build with both binaries, for `start` (no network needed)
  local d best=""
  for d in "$CACHE"/*/bin; do
    [ -x "$d/kube-apiserver" ] && [ -x "$d/kube-controller-manager" ] && best=$d
  done
  echo "$best"
}

cmd_build() {
  local need=()
  for p in golang-go etcd-server golang-github-modern-go-reflect2-dev rsync jq openssl make; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get "${APT_LOCK[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive apt-get "${APT_LOCK[@]}" install -y -qq "${need[@]}" >&2
  fi
  prepare_apt
  local version
  # shellcheck disable=SC2046
  if apt-get $(apt_private_opts) update -qq >&2; then
    version=$(debian_version)
  else
    version=""
  fi
  if [ -z "$version" ]; then
    local cached; cached=$(cached_bin_dir)
    [ -n "$cached" ] || die "cannot determine the Debian kubernetes source version and nothing is cached"
    log "apt unavailable; using cached $cached"; echo "$cached"; return
  fi
  local bin=$CACHE/$version/bin
  if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ]; then
    log "cached: $bin"; echo "$bin"; return
  fi
  log "building kubernetes $version (cold build takes ~6 min on 2 cores)"
  local start=$SECONDS work=$SRC/build-$version
  rm -rf "$work"; mkdir -p "$work"
  # shellcheck disable=SC2046
  (cd "$work" && apt-get $(apt_private_opts) source --download-only -qq kubernetes >&2)
  tar -C "$work" -xzf "$work"/kubernetes_*.orig.tar.gz
  local tree; tree=$(find "$work" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -1)
  [ -n "$tree" ] || die "no kubernetes-* tree in $work"
  # vendored reflect2 v1.0.1 segfaults with Go >= 1.18; Debian's 1.0.2 has the same API.
  rm -rf "$tree/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$tree/vendor/github.com/modern-go/reflect2"
  mkdir -p "$tree/.go/src/k8s.io" && ln -sfn ../../.. "$tree/.go/src/k8s.io/kubernetes"
  (cd "$tree" && GOPATH=$tree/.go GOCACHE=$SRC/gocache GOPROXY=off GOFLAGS=-mod=vendor CGO_ENABLED=0 \
     make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >&2)
  mkdir -p "$bin.tmp"
  cp "$tree/_output/bin/kube-apiserver" "$tree/_output/bin/kube-controller-manager" "$bin.tmp/"
  rm -rf "$bin"; mv "$bin.tmp" "$bin"
  rm -rf "$work"            # the tree is 1+ GB once built; the go cache stays for rebuilds
  log "built in $((SECONDS - start)) s: $bin"
  echo "$bin"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_for DESC SECONDS COMMAND...: polls COMMAND every 0.25 s, bounded.
wait_for() {
  local desc=$1 secs=$2; shift 2
  local i
  for ((i = 0; i < secs * 4; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  die "timed out after ${secs}s waiting for $desc"
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

cmd_start() {
  local dir=${1:-$DEFAULT_STATE}
  local bin; bin=$(cached_bin_dir)
  [ -n "$bin" ] || die "no cached binaries under $CACHE; run: $0 build"
  if alive "$dir/apiserver.pid"; then die "a control plane already runs from $dir; stop it first"; fi
  rm -rf "$dir"; mkdir -p "$dir/etcd" "$dir/certs"
  dir=$(cd "$dir" && pwd)
  local etcd_port peer_port api_port
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)
  openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
  local token; token=$(openssl rand -hex 16)
  echo "$token,admin,admin-uid,system:masters" > "$dir/tokens.csv"
  cat > "$dir/kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:$api_port
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $token
contexts:
- name: test
  context: {cluster: test, user: admin, namespace: default}
current-context: test
KCFG
  chmod 600 "$dir/kubeconfig" "$dir/tokens.csv"

  etcd --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "default=http://127.0.0.1:$peer_port" --unsafe-no-fsync \
    >"$dir/etcd.log" 2>&1 </dev/null &
  echo $! > "$dir/etcd.pid"
  wait_for "etcd" 30 curl -sf "http://127.0.0.1:$etcd_port/health"

  "$bin/kube-apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" --bind-address=127.0.0.1 \
    --secure-port="$api_port" --insecure-port=0 --cert-dir="$dir/certs" --token-auth-file="$dir/tokens.csv" \
    --authorization-mode=RBAC --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$dir/sa.pub" --service-account-signing-key-file="$dir/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 --advertise-address=127.0.0.1 --allow-privileged=true \
    --disable-admission-plugins=ServiceAccount >"$dir/apiserver.log" 2>&1 </dev/null &
  echo $! > "$dir/apiserver.pid"
  wait_for "kube-apiserver /readyz" 90 \
    bash -c "[ \"\$(curl -sk -H 'Authorization: Bearer $token' https://127.0.0.1:$api_port/readyz)\" = ok ]"

  # deployment/replicaset/statefulset make Deployments produce ReplicaSets and Pods (tests stand in
  # for the kubelet); namespace + garbagecollector finish namespace deletion and cascading deletes.
  "$bin/kube-controller-manager" --kubeconfig="$dir/kubeconfig" \
    --controllers=deployment,replicaset,statefulset,namespace,garbagecollector \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 --port=0 \
    >"$dir/controller-manager.log" 2>&1 </dev/null &
  echo $! > "$dir/controller-manager.pid"
  sleep 0.5
  alive "$dir/controller-manager.pid" || die "kube-controller-manager exited; see $dir/controller-manager.log"
  log "ready: https://127.0.0.1:$api_port (state in $dir)"
  echo "export KUBECONFIG=$dir/kubeconfig"
  echo "export JAC_ORC_TEST_KUBECONFIG=$dir/kubeconfig"
}

# stop_pid NAME PIDFILE: SIGTERM, then SIGKILL after 10 s.
stop_pid() {
  local name=$1 f=$2 pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop within 10 s; killing"; kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 20; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
  fi
  rm -f "$f"
}

cmd_stop() {
  local dir=${1:-$DEFAULT_STATE}
  # apiserver first: with etcd gone it loops on reconnects and ignores SIGTERM.
  stop_pid kube-apiserver "$dir/apiserver.pid"
  stop_pid kube-controller-manager "$dir/controller-manager.pid"
  stop_pid etcd "$dir/etcd.pid"
  log "stopped ($dir)"
}

cmd_run() {
  [ "${1:-}" = "--" ] && shift
  [ $# -gt 0 ] || die "usage: $0 run -- CMD..."
  cmd_build >/dev/null
  local dir; dir=$(mktemp -d /tmp/jac-orc-k8s-run.XXXXXX)
  trap 'cmd_stop "'"$dir"'"; rm -rf "'"$dir"'"' EXIT
  eval "$(cmd_start "$dir")"
  export JAC_ORC_REQUIRE_K8S=1
  local rc=0
  "$@" || rc=$?
  return $rc
}

case "${1:-}" in
  build) cmd_build >/dev/null ;;
  run) shift; cmd_run "$@" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *) echo "usage: $0 build | start [DIR] | stop [DIR] | run -- CMD..." >&2; exit 2 ;;
esac

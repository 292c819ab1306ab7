#!/usr/bin/env bash
# Test clusters for the Kubernetes backend, built from Debian bookworm's `kubernetes` source package
# (1.20.x, complete tree with vendor/) with Debian's Go, plus Debian's etcd, containerd, runc and CNI
# plugins. Two modes:
#
#   API server only (loopback, free ports; no kubelet, pods never run; tests patch pod status):
#     scripts/k8s-test-cluster.sh build                 build (or reuse) kube-apiserver + kube-controller-manager
#     eval "$(scripts/k8s-test-cluster.sh start [DIR])" start; prints KUBECONFIG + JAC_ORC_TEST_KUBECONFIG
#     scripts/k8s-test-cluster.sh stop [DIR]            stop apiserver, controller-manager, etcd
#     scripts/k8s-test-cluster.sh run -- CMD...         build, start, CMD with JAC_ORC_REQUIRE_K8S=1, stop
#
#   One-node cluster whose pods run (--node; one per machine: fixed bridges and addresses):
#     scripts/k8s-test-cluster.sh build --node          all five binaries (+ kubelet, kube-scheduler,
#                                                       kube-proxy) in ONE make, and the pause binary
#     eval "$(scripts/k8s-test-cluster.sh start --node)" network guards, etcd, apiserver, controller-manager,
#                                                       scheduler, containerd (images imported), kubelet,
#                                                       kube-proxy; waits for Node Ready; prints KUBECONFIG
#                                                       + JAC_ORC_TEST_NODE_KUBECONFIG
#     scripts/k8s-test-cluster.sh stop --node           pods first, then every process by PID, KUBE-* chains,
#                                                       containers, mounts, netns, cgroups, links, sysctls
#                                                       restored; the guards last
#     scripts/k8s-test-cluster.sh run --node -- CMD...  build, start, CMD with JAC_ORC_REQUIRE_NODE=1, stop
#     scripts/k8s-test-cluster.sh import --node         (re-)import $JAC_ORC_CACHE/images/current into a running node
#   `stop` without arguments stops both the node cluster and the default API-server control plane.
#
# Node mode needs root and the images of scripts/images.sh (imported from $JAC_ORC_CACHE/images/current).
# Network safety (nothing a pod, the node or a test does may leave the machine), installed before any
# component starts and removed last:
#   - mangle FORWARD: drop everything forwarded out of the uplink(s) (v4 and v6), and everything
#     forwarded from the pod bridge anywhere but back to it;
#   - mangle POSTROUTING: drop pod/service/node CIDR traffic towards the uplink(s);
#   - the service CIDR is routed to a bridge with no ports (un-NATed ClusterIP traffic dies locally);
#   - no NAT towards the uplink (CNI ipMasq off, kubelet iptables util chains off); pod DNS is
#     `nameserver 127.0.0.1`; every image registry is mapped to http://127.0.0.1:1 in containerd.
# Nothing here touches OUTPUT or the machine's own traffic. Uplinks are the interfaces of the default
# routes. Every wait is bounded; processes are stopped by PID.
#
# Binaries are cached under $JAC_ORC_K8S_CACHE (default $JAC_ORC_CACHE/k8s, $JAC_ORC_CACHE defaulting to
# /var/cache/jac-splice-orc) in <debian-version>/bin and rebuilt only when missing. The Go build cache
# lives in $JAC_ORC_K8S_CACHE/gocache (hack/lib/golang.sh forces GOCACHE into the tree, so the tree's
# cache directory is a symlink to it) and the tree is unpacked at a stable path, so a rebuild is warm.
set -euo pipefail

CACHE_ROOT=${JAC_ORC_CACHE:-/var/cache/jac-splice-orc}
CACHE=${JAC_ORC_K8S_CACHE:-$CACHE_ROOT/k8s}
SRC=$CACHE/src                       # private apt lists and source tarballs
GOCACHE_DIR=$CACHE/gocache           # the Go build cache, outside any tree
IMAGES=${JAC_ORC_IMAGES:-$CACHE_ROOT/images}
DEFAULT_STATE=${JAC_ORC_K8S_STATE:-/tmp/jac-orc-k8s}
APT_LOCK=(-o DPkg::Lock::Timeout=600)
CONTROL_BINS=(kube-apiserver kube-controller-manager)
NODE_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

# --- node mode constants (one node cluster per machine) ---
NODE_STATE=${JAC_ORC_NODE_STATE:-/var/tmp/jac-orc-node}   # etcd, PKI, logs, kubelet root (wiped on start)
NODE_CTR_ROOT=$CACHE_ROOT/node/containerd                 # containerd's content store: imported images persist
NODE_RUN=/run/jac-orc-node                                # containerd socket and state, CNI IPAM
SYSCTL_SAVE=/run/jac-orc-node.sysctl                      # original sysctls (survives a crashed run, not a reboot)
NODE_NAME=jac-orc-node
NODE_BRIDGE=jorc-node0      # port-less bridge: node IP + dead end for the service CIDR
POD_BRIDGE=jorc-cni0        # CNI bridge of the pods
NODE_IP=10.99.0.1
NODE_CIDR=10.99.0.0/24
POD_CIDR=10.88.0.0/16
POD_GW=10.88.0.1
SVC_CIDR=10.96.0.0/24
API_PORT=16443
SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys
  kernel/keys/root_maxbytes net/ipv4/conf/all/route_localnet net/ipv4/ip_forward
  net/bridge/bridge-nf-call-iptables net/bridge/bridge-nf-call-ip6tables)

log() { echo "k8s-test-cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }
now_ms() { date +%s%3N; }
since() { local t=$1; printf '%d.%01d' $(( ($(now_ms) - t) / 1000 )) $(( ($(now_ms) - t) % 1000 / 100 )); }

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
  [ -n "$uri" ] || uri=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
  [ -n "$uri" ] || uri=http://deb.debian.org/debian
  echo "deb-src $uri bookworm main" > "$SRC/sources.list"
}

# Prints the Debian version of the `kubernetes` source package bookworm ships (e.g. 1.20.5+really1.20.2-1.1+deb12u1).
debian_version() {
  # shellcheck disable=SC2046
  apt-cache $(apt_private_opts) showsrc kubernetes 2>/dev/null | sed -n 's/^Version: //p' | sort -V | tail -1
}

has_bins() { # DIR BIN...
  local d=$1 b; shift
  for b in "$@"; do [ -x "$d/$b" ] || return 1; done
}

# Newest cached build holding all of BIN... (for `start`: no network needed).
cached_bin_dir() {
  local d best=""
  for d in "$CACHE"/*/bin; do
    has_bins "$d" "$@" && best=$d
  done
  echo "$best"
}

install_packages() { # PKG...: installs the missing ones
  local need=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  log "installing ${need[*]}"
  apt-get "${APT_LOCK[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive apt-get "${APT_LOCK[@]}" install -y -qq --no-install-recommends "${need[@]}" >&2
}

# build [--node]: prints the bin directory.
cmd_build() {
  local node=0
  [ "${1:-}" = "--node" ] && node=1
  local want=("${CONTROL_BINS[@]}")
  install_packages golang-go etcd-server golang-github-modern-go-reflect2-dev rsync jq openssl make curl
  if [ $node = 1 ]; then
    want=("${NODE_BINS[@]}")
    install_packages containerd runc containernetworking-plugins iptables iproute2 gcc libc6-dev
  fi
  prepare_apt
  local version=""
  # shellcheck disable=SC2046
  if apt-get $(apt_private_opts) update -qq >&2; then
    version=$(debian_version)
  fi
  if [ -z "$version" ]; then
    local cached; cached=$(cached_bin_dir "${want[@]}")
    [ -n "$cached" ] || die "cannot determine the Debian kubernetes source version and nothing is cached"
    log "apt unavailable; using cached $cached"; echo "$cached"; return
  fi
  local bin=$CACHE/$version/bin missing=() b
  for b in "${want[@]}"; do [ -x "$bin/$b" ] || missing+=("$b"); done
  [ $node = 1 ] && [ ! -x "$bin/pause" ] && missing+=(pause)
  if [ ${#missing[@]} -eq 0 ]; then
    log "cached: $bin"; echo "$bin"; return
  fi
  local what=() t0; t0=$(now_ms)
  for b in "${missing[@]}"; do [ "$b" = pause ] || what+=("cmd/$b"); done
  log "building kubernetes $version: ${missing[*]} (cold: ~10-15 min on 2 cores; warm Go cache: ~3 min)"
  # A stable tree path: Go's action IDs include source paths, so the cache only hits at the same path.
  local work=$SRC/tree-$version
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
  # hack/lib/golang.sh exports GOCACHE=_output/local/go/cache (a GOCACHE variable is ignored):
  # make that directory a link to the persistent cache.
  mkdir -p "$GOCACHE_DIR" "$tree/_output/local/go"
  ln -sfn "$GOCACHE_DIR" "$tree/_output/local/go/cache"
  if [ ${#what[@]} -gt 0 ]; then
    (cd "$tree" && GOPATH=$tree/.go GOPROXY=off GOFLAGS=-mod=vendor CGO_ENABLED=0 make WHAT="${what[*]}" >&2)
  fi
  mkdir -p "$bin"
  for b in "${missing[@]}"; do
    if [ "$b" = pause ]; then
      # The sandbox image's binary: upstream's pause.c (exits on SIGTERM, reaps zombies), static.
      gcc -Os -Wall -Werror -static -DVERSION=v3.4.1-jac-orc -o "$bin/.pause.tmp" "$tree/build/pause/linux/pause.c"
      strip "$bin/.pause.tmp"
    else
      cp "$tree/_output/bin/$b" "$bin/.$b.tmp"
    fi
    mv -f "$bin/.$b.tmp" "$bin/$b"      # one file at a time: other binaries of $bin stay
  done
  rm -rf "$work"            # the tree is 1+ GB once built; the Go cache stays (it is not inside it)
  log "built ${missing[*]} in $(since "$t0") s: $bin"
  echo "$bin"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_for DESC SECONDS COMMAND...: polls COMMAND every 0.25 s, bounded.
wait_for() {
  local desc=$1 secs=$2; shift 2
  local i t0; t0=$(now_ms)
  for ((i = 0; i < secs * 4; i++)); do
    if "$@" >/dev/null 2>&1; then log "$desc: ok after $(since "$t0") s"; return 0; fi
    sleep 0.25
  done
  die "timed out after ${secs}s waiting for $desc"
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

cmd_start() {
  local dir=${1:-$DEFAULT_STATE}
  local bin; bin=$(cached_bin_dir "${CONTROL_BINS[@]}")
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
  write_kubeconfig "$dir/kubeconfig" "https://127.0.0.1:$api_port" "$token"
  chmod 600 "$dir/tokens.csv"

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
  # for the kubelet); namespace + garbagecollector finish namespace deletion and cascading deletes;
  # clusterrole-aggregation fills aggregated ClusterRoles (jac-orc's roles into view/edit/admin).
  "$bin/kube-controller-manager" --kubeconfig="$dir/kubeconfig" \
    --controllers=deployment,replicaset,statefulset,namespace,garbagecollector,clusterrole-aggregation \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 --port=0 \
    >"$dir/controller-manager.log" 2>&1 </dev/null &
  echo $! > "$dir/controller-manager.pid"
  sleep 0.5
  alive "$dir/controller-manager.pid" || die "kube-controller-manager exited; see $dir/controller-manager.log"
  log "ready: https://127.0.0.1:$api_port (state in $dir)"
  echo "export KUBECONFIG=$dir/kubeconfig"
  echo "export JAC_ORC_TEST_KUBECONFIG=$dir/kubeconfig"
}

# write_kubeconfig FILE SERVER TOKEN
write_kubeconfig() {
  cat > "$1" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: $2
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $3
contexts:
- name: test
  context: {cluster: test, user: admin, namespace: default}
current-context: test
KCFG
  chmod 600 "$1"
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

# ======================================================================================
# Node mode
# ======================================================================================

need_root() { [ "$(id -u)" = 0 ] || die "node mode needs root (network namespaces, iptables, mounts)"; }

# Interfaces of the default routes (IPv4 and IPv6), i.e. where traffic would leave the machine.
uplinks() {
  { ip -4 route show default 2>/dev/null; ip -6 route show default 2>/dev/null; } |
    awk '{for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1)}' | sort -u
}

node_kc() { kubectl --kubeconfig="$NODE_STATE/admin.kubeconfig" --request-timeout=20s "$@"; }
node_ctr() { timeout 20 ctr --address "$NODE_RUN/containerd.sock" -n k8s.io "$@"; }

# The guards. Idempotent (-C before -I); recorded in $NODE_RUN/guards so `stop` removes exactly these.
guard_add() { # TOOL TABLE CHAIN RULE...
  local tool=$1 table=$2 chain=$3; shift 3
  "$tool" -w 5 -t "$table" -C "$chain" "$@" 2>/dev/null || "$tool" -w 5 -t "$table" -I "$chain" 1 "$@"
  printf '%s\n' "$tool $table $chain $*" >> "$NODE_RUN/guards"
}

install_guards() {
  mkdir -p "$NODE_RUN"; : > "$NODE_RUN/guards"
  local up c
  # Pods may only talk to each other and to this machine: nothing they send is forwarded elsewhere,
  # whatever the uplink is called.
  guard_add iptables mangle FORWARD -i "$POD_BRIDGE" ! -o "$POD_BRIDGE" -j DROP
  for up in $(uplinks); do
    guard_add iptables mangle FORWARD -o "$up" -j DROP
    guard_add ip6tables mangle FORWARD -o "$up" -j DROP
    for c in "-s $POD_CIDR" "-d $POD_CIDR" "-d $SVC_CIDR" "-d $NODE_CIDR"; do
      # shellcheck disable=SC2086
      guard_add iptables mangle POSTROUTING -o "$up" $c -j DROP
    done
    log "guards on uplink $up"
  done
  # The node IP lives on a bridge without ports (the kubelet refuses loopback node IPs; this kernel may
  # have no dummy driver); the service CIDR is routed there, so ClusterIP traffic kube-proxy did not
  # translate dies locally instead of following the default route.
  ip link show "$NODE_BRIDGE" >/dev/null 2>&1 || ip link add "$NODE_BRIDGE" type bridge
  ip addr replace "$NODE_IP/32" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  ip route replace "$SVC_CIDR" dev "$NODE_BRIDGE"
}

remove_guards() {
  local line
  if [ -f "$NODE_RUN/guards" ]; then
    while read -r line; do
      # shellcheck disable=SC2086
      set -- $line
      local tool=$1 table=$2 chain=$3; shift 3
      local i
      for ((i = 0; i < 10; i++)); do     # a rule inserted twice by two crashed runs goes too
        "$tool" -w 5 -t "$table" -C "$chain" "$@" 2>/dev/null || break
        "$tool" -w 5 -t "$table" -D "$chain" "$@"
      done
    done < "$NODE_RUN/guards"
    rm -f "$NODE_RUN/guards"
  fi
  ip link del "$NODE_BRIDGE" 2>/dev/null || true     # also drops the service CIDR route
}

save_sysctls() {
  [ -f "$SYSCTL_SAVE" ] && return 0      # a crashed run's save holds the real originals
  local k
  for k in "${SYSCTLS[@]}"; do
    if [ -f "/proc/sys/$k" ]; then echo "$k=$(cat "/proc/sys/$k")"; fi
  done > "$SYSCTL_SAVE.tmp"
  mv "$SYSCTL_SAVE.tmp" "$SYSCTL_SAVE"
}

restore_sysctls() {
  [ -f "$SYSCTL_SAVE" ] || return 0
  local k v
  while IFS='=' read -r k v; do
    [ "$(cat "/proc/sys/$k" 2>/dev/null)" = "$v" ] && continue
    echo "$v" > "/proc/sys/$k" 2>/dev/null || log "could not restore $k=$v"
  done < "$SYSCTL_SAVE"
  rm -f "$SYSCTL_SAVE"
}

node_pki() {
  local d=$NODE_STATE/pki
  mkdir -p "$d"
  (
    cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 -subj "/CN=jac-orc-node-ca" 2>/dev/null
    # The apiserver's client certificate towards the kubelet (logs, exec, port-forward).
    openssl req -newkey rsa:2048 -nodes -keyout kubelet-client.key -out kubelet-client.csr \
      -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n' > client.ext
    openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out kubelet-client.crt \
      -days 30 -extfile client.ext 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    chmod 600 ./*.key
  )
  local a n s p u
  a=$(openssl rand -hex 16); n=$(openssl rand -hex 16); s=$(openssl rand -hex 16); p=$(openssl rand -hex 16)
  # Static tokens: the admin, the node (Node authorizer + NodeRestriction), the scheduler and kube-proxy
  # (bound by the default RBAC roles system:kube-scheduler and system:node-proxier).
  printf '%s\n' "$a,admin,admin-uid,system:masters" "$n,system:node:$NODE_NAME,node-uid,system:nodes" \
    "$s,system:kube-scheduler,sched-uid" "$p,system:kube-proxy,proxy-uid" > "$d/tokens.csv"
  chmod 600 "$d/tokens.csv"
  for u in admin:$a kubelet:$n scheduler:$s proxy:$p; do
    write_kubeconfig "$NODE_STATE/${u%%:*}.kubeconfig" "https://$NODE_IP:$API_PORT" "${u#*:}"
  done
}

node_configs() {
  mkdir -p "$NODE_STATE/cni" "$NODE_STATE/certs.d" "$NODE_CTR_ROOT" "$NODE_RUN"
  cat > "$NODE_STATE/containerd.toml" <<EOF
version = 2
root = "$NODE_CTR_ROOT"
state = "$NODE_RUN/containerd-state"
[grpc]
  address = "$NODE_RUN/containerd.sock"
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "docker.io/library/pause:3.4.1"   # imported by start; never pulled
    restrict_oom_score_adj = true                      # no CAP_SYS_RESOURCE here: pause's -998 fails otherwise
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false                        # cgroupfs, like the kubelet
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "$NODE_STATE/cni"
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "$NODE_STATE/certs.d"              # every registry -> http://127.0.0.1:1
  [plugins."io.containerd.internal.v1.opt"]
    path = "$NODE_STATE/containerd-opt"
EOF
  cat > "$NODE_STATE/cni/10-jac-orc.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "jac-orc-pods", "plugins": [
  {"type": "bridge", "bridge": "$POD_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GW"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$NODE_RUN/ipam"}}]}
EOF
  local r
  for r in _default docker.io quay.io registry.k8s.io gcr.io ghcr.io; do   # _default covers any other registry
    mkdir -p "$NODE_STATE/certs.d/$r"
    printf 'server = "http://127.0.0.1:1"\n[host."http://127.0.0.1:1"]\n  capabilities = ["pull", "resolve"]\n' \
      > "$NODE_STATE/certs.d/$r/hosts.toml"
  done
  echo "nameserver 127.0.0.1" > "$NODE_STATE/resolv.conf"   # pod DNS never leaves the pod
  cat > "$NODE_STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
cgroupDriver: cgroupfs
failSwapOn: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $NODE_STATE/pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
resolvConf: $NODE_STATE/resolv.conf
serializeImagePulls: false
imageGCHighThresholdPercent: 100
# Disk thresholds as small absolute sizes: on a shared machine whose disk is nearly full, a
# percentage would put DiskPressure (a NoSchedule taint) on the node and leave every pod Pending.
evictionHard: {memory.available: "100Mi", nodefs.available: "256Mi", imagefs.available: "256Mi", nodefs.inodesFree: "1%"}
makeIPTablesUtilChains: false
EOF
}

# node_start_proc NAME CMD...: background, logs in $NODE_STATE/NAME.log, PID in $NODE_STATE/NAME.pid.
node_start_proc() {
  local name=$1; shift
  "$@" >"$NODE_STATE/$name.log" 2>&1 </dev/null &
  echo $! > "$NODE_STATE/$name.pid"
}

node_alive() { alive "$NODE_STATE/apiserver.pid"; }

# Imports every image of $IMAGES/current whose manifest is not already present under its name.
import_images() {
  local tar name digest have n=0 t0; t0=$(now_ms)
  [ -f "$IMAGES/current/pause.tar" ] || die "no images in $IMAGES/current (run scripts/images.sh build first)"
  for tar in "$IMAGES"/current/*.tar; do
    name=$(tar -xOf "$tar" index.json | python3 -c 'import json,sys; m=json.load(sys.stdin)["manifests"][0]; print(m["annotations"]["io.containerd.image.name"], m["digest"])')
    digest=${name#* }; name=${name% *}
    have=$(node_ctr images ls -q "name==$name" 2>/dev/null | head -1)
    if [ -n "$have" ] && node_ctr images ls "name==$name" | grep -q "$digest"; then continue; fi
    # Hundreds of MB on a loaded machine: a generous bound of its own.
    timeout 600 ctr --address "$NODE_RUN/containerd.sock" -n k8s.io images import --all-platforms "$tar" >/dev/null
    n=$((n + 1))
  done
  log "images: imported $n, the rest were present ($(since "$t0") s)"
}

# The node's pressure conditions and taints, and this machine's free disk and memory: what a
# pod that stays Pending is most often waiting on.
node_diagnostics() {
  node_kc get node $NODE_NAME -o jsonpath='conditions: {range .status.conditions[*]}{.type}={.status} ({.reason}) {end}; taints: {.spec.taints}' 2>&1 || true
  printf '; disk free: %s; memory available: %s MiB' \
    "$(df -h --output=avail "$NODE_STATE" | tail -1 | tr -d ' ')" "$(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo)"
}

# Bounded: the node lifecycle controller drops the not-ready taint a moment after Ready; any
# taint still there (DiskPressure, MemoryPressure...) would leave every test pod Pending.
node_schedulable() {
  local i taints t0; t0=$(now_ms)
  for ((i = 0; i < 240; i++)); do
    taints=$(node_kc get node $NODE_NAME -o jsonpath='{.spec.taints}' 2>/dev/null) || taints=unknown
    if [ -z "$taints" ]; then log "node schedulable (no taints): ok after $(since "$t0") s"; return 0; fi
    sleep 0.25
  done
  return 1
}

cmd_start_node() {
  need_root
  local bin; bin=$(cached_bin_dir "${NODE_BINS[@]}")
  if [ -z "$bin" ] || [ ! -x "$bin/pause" ]; then die "no cached node binaries under $CACHE; run: $0 build --node"; fi
  if node_alive; then die "a node cluster already runs from $NODE_STATE; $0 stop --node first"; fi
  command -v containerd >/dev/null || die "containerd is not installed; run: $0 build --node"
  local t0; t0=$(now_ms)
  # Leftovers of a crashed run go first (this also restores its saved sysctls).
  node_teardown quiet
  rm -rf "$NODE_STATE"; mkdir -p "$NODE_STATE/etcd" "$NODE_STATE/certs" "$NODE_STATE/kubelet" "$NODE_RUN"
  save_sysctls
  install_guards             # before anything can enable forwarding or route a packet
  node_pki
  node_configs
  local etcd_port peer_port
  etcd_port=$(free_port); peer_port=$(free_port)
  node_start_proc etcd etcd --data-dir "$NODE_STATE/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "default=http://127.0.0.1:$peer_port" --unsafe-no-fsync
  wait_for etcd 30 curl -sf "http://127.0.0.1:$etcd_port/health"
  local p=$NODE_STATE/pki
  node_start_proc apiserver "$bin/kube-apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address=$NODE_IP --advertise-address=$NODE_IP --secure-port=$API_PORT --insecure-port=0 \
    --cert-dir="$NODE_STATE/certs" --token-auth-file="$p/tokens.csv" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$p/sa.pub" \
    --service-account-signing-key-file="$p/sa.key" --service-cluster-ip-range=$SVC_CIDR --allow-privileged=true \
    --kubelet-client-certificate="$p/kubelet-client.crt" --kubelet-client-key="$p/kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP
  local tok; tok=$(awk -F, 'NR == 1 {print $1}' "$p/tokens.csv")
  wait_for "kube-apiserver /readyz" 90 \
    bash -c "[ \"\$(curl -sk -H 'Authorization: Bearer $tok' https://$NODE_IP:$API_PORT/readyz)\" = ok ]"
  # --root-ca-file: the CA pods find in their token secret = the apiserver's self-signed serving chain.
  node_start_proc controller-manager "$bin/kube-controller-manager" --kubeconfig="$NODE_STATE/admin.kubeconfig" \
    --controllers=deployment,replicaset,statefulset,namespace,garbagecollector,endpoint,endpointslice,nodelifecycle,podgc,serviceaccount,serviceaccount-token,clusterrole-aggregation \
    --service-account-private-key-file="$p/sa.key" --root-ca-file="$NODE_STATE/certs/apiserver.crt" \
    --use-service-account-credentials=false --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 --port=0
  node_start_proc scheduler "$bin/kube-scheduler" --kubeconfig="$NODE_STATE/scheduler.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 --port=0
  node_start_proc containerd containerd --config "$NODE_STATE/containerd.toml"
  wait_for containerd 30 timeout 2 ctr --address "$NODE_RUN/containerd.sock" version
  import_images
  node_start_proc kubelet "$bin/kubelet" --config="$NODE_STATE/kubelet.yaml" \
    --kubeconfig="$NODE_STATE/kubelet.kubeconfig" --container-runtime=remote \
    --container-runtime-endpoint="unix://$NODE_RUN/containerd.sock" --hostname-override=$NODE_NAME \
    --node-ip=$NODE_IP --root-dir="$NODE_STATE/kubelet" --cert-dir="$NODE_STATE/kubelet-pki" --v=1
  node_start_proc kube-proxy "$bin/kube-proxy" --kubeconfig="$NODE_STATE/proxy.kubeconfig" \
    --hostname-override=$NODE_NAME --proxy-mode=iptables --cluster-cidr=$POD_CIDR \
    --nodeport-addresses=$NODE_CIDR --healthz-bind-address=127.0.0.1:10256 --metrics-bind-address=127.0.0.1:10249 \
    --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0
  wait_for "node registered" 120 node_kc get node $NODE_NAME
  wait_for "node Ready" 180 bash -c "kubectl --kubeconfig='$NODE_STATE/admin.kubeconfig' --request-timeout=5s get node $NODE_NAME \
    -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
  wait_for "default ServiceAccount" 60 node_kc get serviceaccount default
  node_schedulable || die "the node takes no pods: $(node_diagnostics)"
  local up
  for up in kube-proxy kubelet scheduler controller-manager; do
    alive "$NODE_STATE/$up.pid" || die "$up exited; see $NODE_STATE/$up.log"
  done
  log "node cluster up in $(since "$t0") s: https://$NODE_IP:$API_PORT (state in $NODE_STATE)"
  echo "export KUBECONFIG=$NODE_STATE/admin.kubeconfig"
  echo "export JAC_ORC_TEST_NODE_KUBECONFIG=$NODE_STATE/admin.kubeconfig"
}

# Full teardown, in the order the recipe found clean: workloads (the kubelet does CNI DEL and unmounts
# while it still runs), processes by PID, KUBE-* chains, containers, containerd, mounts, netns, cgroups,
# links, sysctls, and the guards last. Safe to run when nothing (or half of it) is up.
node_teardown() {
  local quiet=${1:-} t0 i; t0=$(now_ms)
  if node_alive && [ -f "$NODE_STATE/admin.kubeconfig" ]; then
    node_kc delete deploy,statefulset,rs,svc,job --all --all-namespaces --wait=false >/dev/null 2>&1 || true
    node_kc delete pod --all --all-namespaces --grace-period=1 --wait=false >/dev/null 2>&1 || true
    for ((i = 0; i < 120; i++)); do
      [ -z "$(node_kc get pod -A -o name 2>/dev/null)" ] && [ -z "$(find /run/netns -name 'cni-*' 2>/dev/null)" ] && break
      sleep 0.5
    done
    log "pods gone after $((i / 2)) s"
  fi
  stop_pid kube-proxy "$NODE_STATE/kube-proxy.pid"
  local bin; bin=$(cached_bin_dir "${NODE_BINS[@]}")
  if [ -n "$bin" ]; then "$bin/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
  stop_pid kubelet "$NODE_STATE/kubelet.pid"
  stop_pid kube-scheduler "$NODE_STATE/scheduler.pid"
  stop_pid kube-controller-manager "$NODE_STATE/controller-manager.pid"
  stop_pid kube-apiserver "$NODE_STATE/apiserver.pid"
  stop_pid etcd "$NODE_STATE/etcd.pid"
  # kube-proxy --cleanup leaves KUBE-PROXY-CANARY / KUBE-MARK-* behind: drop every KUBE-* jump and chain.
  local tool table rule ch
  for tool in iptables ip6tables; do
    for table in filter nat mangle; do
      { "$tool" -w 5 -t $table -S 2>/dev/null | grep -E '^-A [A-Z-]+ .*-j KUBE-' | grep -vE '^-A KUBE-' || true; } |
        while read -r rule; do
          # shellcheck disable=SC2086
          "$tool" -w 5 -t $table ${rule/-A /-D } 2>/dev/null || true
        done
      for ch in $("$tool" -w 5 -t $table -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
        "$tool" -w 5 -t $table -F "$ch" 2>/dev/null || true
      done
      for ch in $("$tool" -w 5 -t $table -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
        "$tool" -w 5 -t $table -X "$ch" 2>/dev/null || true
      done
    done
  done
  if alive "$NODE_STATE/containerd.pid" && timeout 3 ctr --address "$NODE_RUN/containerd.sock" version >/dev/null 2>&1; then
    local c
    for c in $(node_ctr tasks ls -q 2>/dev/null); do node_ctr tasks kill -s KILL "$c" >/dev/null 2>&1 || true; done
    sleep 1
    for c in $(node_ctr tasks ls -q 2>/dev/null); do node_ctr tasks rm -f "$c" >/dev/null 2>&1 || true; done
    for c in $(node_ctr containers ls -q 2>/dev/null); do node_ctr containers rm "$c" >/dev/null 2>&1 || true; done
  fi
  stop_pid containerd "$NODE_STATE/containerd.pid"
  # Shims of killed containers exit with containerd's tasks; any left (containerd crashed) are ours by path.
  local f m
  for f in /run/netns/cni-*; do [ -e "$f" ] && { umount "$f" 2>/dev/null || true; rm -f "$f"; }; done
  { findmnt -rn -o TARGET 2>/dev/null | grep -E "^($NODE_STATE|$NODE_RUN|$NODE_CTR_ROOT)" || true; } | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  for c in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/k8s.io /sys/fs/cgroup/unified/kubepods; do
    [ -d "$c" ] && { find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true; }
  done
  if [ -d /run/netns ] && [ -z "$(ls -A /run/netns 2>/dev/null)" ] && mountpoint -q /run/netns; then
    umount /run/netns 2>/dev/null || true
  fi
  ip link del "$POD_BRIDGE" 2>/dev/null || true
  rm -rf "$NODE_RUN/ipam" "$NODE_RUN/containerd-state" "$NODE_RUN/containerd.sock"
  restore_sysctls
  remove_guards            # last: nothing runs any more that could send a packet
  rm -rf "$NODE_RUN"
  [ "$quiet" = quiet ] || log "node cluster down in $(since "$t0") s"
}

cmd_stop_node() {
  need_root
  node_teardown
}

cmd_run() {
  local node=0
  [ "${1:-}" = "--node" ] && { node=1; shift; }
  [ "${1:-}" = "--" ] && shift
  [ $# -gt 0 ] || die "usage: $0 run [--node] -- CMD..."
  local rc=0
  if [ $node = 1 ]; then
    cmd_build --node >/dev/null
    trap 'node_teardown' EXIT
    local exports; exports=$(cmd_start_node) || die "the node cluster did not start"
    eval "$exports"
    export JAC_ORC_REQUIRE_NODE=1
  else
    cmd_build >/dev/null
    local dir; dir=$(mktemp -d /tmp/jac-orc-k8s-run.XXXXXX)
    trap 'cmd_stop "'"$dir"'"; rm -rf "'"$dir"'"' EXIT
    local exports; exports=$(cmd_start "$dir") || die "the control plane did not start"
    eval "$exports"
    export JAC_ORC_REQUIRE_K8S=1
  fi
  "$@" || rc=$?
  return $rc
}

case "${1:-}" in
  build) shift; cmd_build "$@" >/dev/null ;;
  run) shift; cmd_run "$@" ;;
  import)
    need_root
    node_alive || die "no node cluster runs ($0 start --node)"
    import_images ;;
  start)
    shift
    if [ "${1:-}" = "--node" ]; then cmd_start_node; else cmd_start "$@"; fi ;;
  stop)
    shift
    if [ "${1:-}" = "--node" ]; then
      cmd_stop_node
    elif [ $# -gt 0 ]; then
      cmd_stop "$1"
    else
      cmd_stop "$DEFAULT_STATE"
      if [ "$(id -u)" = 0 ] && { [ -d "$NODE_STATE" ] || [ -d "$NODE_RUN" ]; }; then node_teardown; fi
    fi ;;
  *) echo "usage: $0 build [--node] | start [--node | DIR] | stop [--node | DIR] | run [--node] -- CMD... | import --node" >&2
     exit 2 ;;
esac

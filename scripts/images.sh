#!/usr/bin/env bash
# Offline container images for the one-node test cluster (scripts/k8s-test-cluster.sh --node), built
# from the project's own definitions (images/images.json) without a registry, Docker or buildah:
# debootstrap makes a Debian bookworm rootfs from the machine's apt mirror, scripts/mkimage.py packs
# a directory into an OCI archive, and `k8s-test-cluster.sh start --node` imports the archives.
#
#   scripts/images.sh build     build what is missing or changed; $IMAGES/current/NAME.tar link to them
#   scripts/images.sh bases     only the debootstrap base rootfs tarballs (no project inputs needed)
#   scripts/images.sh list      print the current archives
#
# Images (names as containerd normalises the ones in manifests/ and templates/):
#   docker.io/library/jac-orc:0.1.0            the release jac-orc on a minbase rootfs, user 65532
#   docker.io/library/jac-splice-module:0.1.0  python3 + the jac-splice wheel + numpy, user 10001
#   docker.io/library/redis:latest             Debian's redis-server standing in for the official image
#   docker.io/library/pause:3.4.1              the pod sandbox (upstream pause.c)
#
# Inputs: the jac-orc binary ($JAC_ORC_BIN, else `cargo build --release --bin jac-orc` is run so it is
# never stale), the jac-splice wheel ($JAC_SPLICE_WHEEL, else the newest in
# $JAC_ORC_PYTHON_TARGET_DIR/wheels (default $JAC_ORC_CACHE/target-python), built by
# python/scripts/build.sh), the pause binary of
# `k8s-test-cluster.sh build --node`, numpy (pip-downloaded on the host once: pip inside the chroot
# cannot verify TLS here). Base rootfs tarballs are cached by a hash of (mirror, suite, packages,
# debootstrap version), images by a hash of their inputs (binary, wheel, definitions, these scripts),
# so an image is rebuilt exactly when something it contains changed. Needs root (debootstrap, chroot).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE_ROOT=${JAC_ORC_CACHE:-/var/cache/jac-splice-orc}
IMAGES=${JAC_ORC_IMAGES:-$CACHE_ROOT/images}
K8S_CACHE=${JAC_ORC_K8S_CACHE:-$CACHE_ROOT/k8s}
WHEELS=${JAC_ORC_PYTHON_TARGET_DIR:-$CACHE_ROOT/target-python}/wheels
DEFS=$ROOT/images/images.json
SUITE=bookworm
APT_LOCK=(-o DPkg::Lock::Timeout=600)
# A clean environment for commands run inside a rootfs (the host's PIP_*, proxies etc. do not apply).
CHROOT_ENV=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8)

log() { echo "images: $*" >&2; }
die() { log "error: $*"; exit 1; }
now_ms() { date +%s%3N; }
since() { local t=$1; printf '%d.%01d' $(( ($(now_ms) - t) / 1000 )) $(( ($(now_ms) - t) % 1000 / 100 )); }

# def IMAGE KEY: a field of images/images.json (lists and objects as JSON, strings as they are).
def() {
  python3 - "$DEFS" "$1" "$2" <<'PY'
import json, sys
value = json.load(open(sys.argv[1]))[sys.argv[2]]
for key in sys.argv[3].split("."):
    value = value[key]
print(value if isinstance(value, str) else json.dumps(value))
PY
}

# Words of a JSON list of strings, one per line.
words() { python3 -c 'import json, sys; [print(w) for w in json.loads(sys.argv[1])]' "$1"; }

sha() { sha256sum "$@" | awk '{print $1}' | sha256sum | cut -c1-16; }
# A wheel's identity by content (member names and bytes), not by its zip's bytes: maturin writes
# fresh timestamps on every build, and a fresh SBOM (serial number, time) with the RECORD that
# lists its hash; none of that may rebuild the image.
wheel_sha() {
  python3 - "$@" <<'PY' | cut -c1-16
import hashlib, re, sys, zipfile
volatile = re.compile(r"\.dist-info/(RECORD|sboms/.*)$")
h = hashlib.sha256()
for path in sys.argv[1:]:
    with zipfile.ZipFile(path) as z:
        for name in sorted(n for n in z.namelist() if not volatile.search(n)):
            h.update(name.encode() + b"\0" + hashlib.sha256(z.read(name)).digest())
print(h.hexdigest())
PY
}
sha_text() { printf '%s' "$*" | sha256sum | cut -c1-16; }

mirror() {
  local uri
  uri=$(sed -n 's/^URIs: //p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  [ -n "$uri" ] || uri=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
  echo "${uri:-http://deb.debian.org/debian}"
}

install_tools() {
  local need=()
  command -v debootstrap >/dev/null || need+=(debootstrap)
  python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
  [ ${#need[@]} -eq 0 ] && return 0
  log "installing ${need[*]}"
  apt-get "${APT_LOCK[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive apt-get "${APT_LOCK[@]}" install -y -qq --no-install-recommends "${need[@]}" >&2
}

# base_rootfs PACKAGE...: prints the cached tarball of a minbase rootfs with PACKAGE... (built if missing).
base_rootfs() {
  local packages="$*" key out work t0
  key=$(sha_text "$(mirror) $SUITE minbase $packages $(dpkg-query -W -f='${Version}' debootstrap)")
  out=$IMAGES/bases/minbase-$key.tar
  if [ -f "$out" ]; then echo "$out"; return; fi
  t0=$(now_ms)
  work=$IMAGES/work/base-$key
  rm -rf "$work"; mkdir -p "$work" "$IMAGES/bases"
  local include=()
  [ -n "$packages" ] && include=("--include=${packages// /,}")
  log "debootstrap $SUITE minbase ${packages:-(no extra packages)} from $(mirror)"
  debootstrap --variant=minbase "${include[@]}" "$SUITE" "$work" "$(mirror)" >"$IMAGES/work/base-$key.log" 2>&1 ||
    die "debootstrap failed; see $IMAGES/work/base-$key.log"
  rm -rf "$work"/var/cache/apt/archives/*.deb "$work"/var/lib/apt/lists/* "$work"/var/log/*.log "$work"/root/.cache
  tar -C "$work" --numeric-owner -cf "$out.tmp" .
  mv "$out.tmp" "$out"
  rm -rf "$work"
  log "base $out in $(since "$t0") s"
  echo "$out"
}

# fresh_rootfs TARBALL DIR: DIR becomes a copy of the base.
fresh_rootfs() {
  rm -rf "$2"; mkdir -p "$2"
  tar -C "$2" --numeric-owner -xpf "$1"
}

# add_user ROOTFS NAME UID:GID HOME: passwd/group entries and an owned home (no chroot needed).
add_user() {
  local r=$1 name=$2 uid=${3%%:*} gid=${3##*:} home=$4
  grep -q "^$name:" "$r/etc/group" || echo "$name:x:$gid:" >> "$r/etc/group"
  grep -q "^$name:" "$r/etc/passwd" || echo "$name:x:$uid:$gid:$name:$home:/usr/sbin/nologin" >> "$r/etc/passwd"
  [ -f "$r/etc/shadow" ] && { grep -q "^$name:" "$r/etc/shadow" || echo "$name:!:19000::::::" >> "$r/etc/shadow"; }
  mkdir -p "$r$home"; chown "$uid:$gid" "$r$home"; chmod 755 "$r$home"
}

# pack IMAGE ROOTFS OUT [USER]: mkimage with the definition's entrypoint, cmd, env, workdir, ports.
pack() {
  local image=$1 rootfs=$2 out=$3 user=${4:-} args=() e p
  args+=(--entrypoint "$(def "$image" entrypoint)" --cmd "$(def "$image" cmd)" --workdir "$(def "$image" workdir)")
  while read -r e; do [ -n "$e" ] && args+=(--env "$e"); done < <(words "$(def "$image" env)")
  while read -r p; do [ -n "$p" ] && args+=(--expose "$p"); done < <(python3 -c 'import json,sys; [print(p) for p in json.loads(sys.argv[1])]' "$(def "$image" expose)")
  [ -n "$user" ] && args+=(--user "$user")
  python3 "$ROOT/scripts/mkimage.py" "$rootfs" "$(def "$image" name)" "$out" "${args[@]}" >&2
}

# Identity of the builder itself: any change to the definitions or these scripts rebuilds.
builder_key() { sha "$DEFS" "$ROOT/scripts/images.sh" "$ROOT/scripts/mkimage.py"; }

# archive IMAGE KEY: the archive path of this image for this input key.
archive() { echo "$IMAGES/$1-$2.tar"; }

jac_orc_binary() {
  if [ -n "${JAC_ORC_BIN:-}" ]; then
    [ -x "$JAC_ORC_BIN" ] || die "JAC_ORC_BIN=$JAC_ORC_BIN is not an executable"
    echo "$JAC_ORC_BIN"; return
  fi
  local target=${CARGO_TARGET_DIR:-$CACHE_ROOT/target}
  log "cargo build --release --bin jac-orc (target $target)"
  (cd "$ROOT" && CARGO_TARGET_DIR=$target cargo build --release --locked --bin jac-orc >&2)
  echo "$target/release/jac-orc"
}

splice_wheel() {
  if [ -n "${JAC_SPLICE_WHEEL:-}" ]; then
    [ -f "$JAC_SPLICE_WHEEL" ] || die "JAC_SPLICE_WHEEL=$JAC_SPLICE_WHEEL does not exist"
    echo "$JAC_SPLICE_WHEEL"; return
  fi
  local w
  w=$(find "$WHEELS" -maxdepth 1 -name 'jac_splice-*.whl' -printf '%T@ %p\n' 2>/dev/null |
    sort -n | tail -1 | cut -d' ' -f2- || true)
  [ -n "$w" ] || die "no jac-splice wheel in $WHEELS: run python/scripts/build.sh (or set JAC_SPLICE_WHEEL)"
  echo "$w"
}

pause_binary() {
  local d best=""
  for d in "$K8S_CACHE"/*/bin; do [ -x "$d/pause" ] && best=$d/pause; done
  [ -n "$best" ] || die "no pause binary under $K8S_CACHE: run scripts/k8s-test-cluster.sh build --node"
  echo "$best"
}

build_jac_orc() {
  local bin base key out r user
  bin=$(jac_orc_binary); base=$(base_rootfs)
  user=$(def jac-orc user)
  key=$(sha_text "$(builder_key) $(basename "$base") $(sha "$bin")")
  out=$(archive jac-orc "$key")
  if [ -f "$out" ]; then echo "$out"; return; fi
  r=$IMAGES/work/jac-orc; fresh_rootfs "$base" "$r"
  install -m 0755 "$bin" "$r$(def jac-orc binary)"
  add_user "$r" "$(def jac-orc user_name)" "$user" "$(def jac-orc home)"
  pack jac-orc "$r" "$out" "$user"
  rm -rf "$r"
  echo "$out"
}

# numpy (and any other pip requirement of the definition) for the image's Python, downloaded once.
module_wheels() {
  local dir req
  dir=$IMAGES/wheels/cp$(def jac-splice-module python_version | tr -d .)
  mkdir -p "$dir"
  while read -r req; do
    [ -n "$req" ] || continue
    local file=${req%%==*}-${req##*==}-
    if ! ls "$dir/$file"*.whl >/dev/null 2>&1; then
      log "pip download $req (for Python $(def jac-splice-module python_version))"
      python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$(def jac-splice-module python_version)" \
        --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$dir" "$req" >&2
    fi
  done < <(words "$(def jac-splice-module pip)")
  echo "$dir"
}

build_module() {
  local wheel wheels base key out r user pkgs reqs=()
  wheel=$(splice_wheel); wheels=$(module_wheels)
  mapfile -t pkgs < <(words "$(def jac-splice-module base.packages)")
  base=$(base_rootfs "${pkgs[@]}")
  user=$(def jac-splice-module user)
  key=$(sha_text "$(builder_key) $(basename "$base") $(wheel_sha "$wheel" "$wheels"/*.whl)")
  out=$(archive jac-splice-module "$key")
  if [ -f "$out" ]; then echo "$out"; return; fi
  r=$IMAGES/work/jac-splice-module; fresh_rootfs "$base" "$r"
  mkdir -p "$r/tmp/wheels"
  cp "$wheel" "$wheels"/*.whl "$r/tmp/wheels/"
  mapfile -t reqs < <(words "$(def jac-splice-module pip)")
  # PEP 668: Debian's Python is "externally managed"; the image is single-purpose, so install system-wide.
  "${CHROOT_ENV[@]}" chroot "$r" python -m pip install -q --no-cache-dir --break-system-packages --no-index \
    --find-links /tmp/wheels "/tmp/wheels/$(basename "$wheel")" "${reqs[@]}" >&2
  rm -rf "$r/tmp/wheels" "$r/root/.cache"
  find "$r/usr/local/lib" -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
  add_user "$r" "$(def jac-splice-module user_name)" "$user" "$(def jac-splice-module home)"
  "${CHROOT_ENV[@]}" chroot "$r" python -c 'import jac_splice, jac_splice.probe, numpy' ||
    die "the module image's Python cannot import jac_splice and numpy"
  pack jac-splice-module "$r" "$out" "$user"
  rm -rf "$r"
  echo "$out"
}

build_redis() {
  local base key out r pkgs uid gid
  mapfile -t pkgs < <(words "$(def redis base.packages)")
  base=$(base_rootfs "${pkgs[@]}")
  key=$(sha_text "$(builder_key) $(basename "$base")")
  out=$(archive redis "$key")
  if [ -f "$out" ]; then echo "$out"; return; fi
  r=$IMAGES/work/redis; fresh_rootfs "$base" "$r"
  uid=$(awk -F: -v u="$(def redis user)" '$1 == u {print $3}' "$r/etc/passwd")
  gid=$(awk -F: -v u="$(def redis user)" '$1 == u {print $4}' "$r/etc/passwd")
  [ -n "$uid" ] || die "the redis rootfs has no user $(def redis user)"
  # The official image's build turns protected mode off, so a server without a password (and without
  # a `bind` in its config) answers other pods; Debian's default keeps it on. Same behaviour here, for
  # whatever command line the template gives.
  cat > "$r/usr/local/bin/redis-server" <<'SH'
#!/bin/sh
exec /usr/bin/redis-server "$@" --protected-mode no
SH
  chmod 0755 "$r/usr/local/bin/redis-server"
  mkdir -p "$r/data"; chown "$uid:$gid" "$r/data"
  pack redis "$r" "$out" "$uid:$gid"
  rm -rf "$r"
  echo "$out"
}

build_pause() {
  local bin key out r
  bin=$(pause_binary)
  key=$(sha_text "$(builder_key) $(sha "$bin")")
  out=$(archive pause "$key")
  if [ -f "$out" ]; then echo "$out"; return; fi
  r=$IMAGES/work/pause; rm -rf "$r"; mkdir -p "$r"/{dev,proc,sys}
  install -m 0755 "$bin" "$r/pause"
  pack pause "$r" "$out"
  rm -rf "$r"
  echo "$out"
}

# current NAME ARCHIVE: $IMAGES/current/NAME.tar -> ARCHIVE; older archives of NAME are removed.
make_current() {
  local name=$1 file=$2 old
  mkdir -p "$IMAGES/current"
  ln -sfn "../$(basename "$file")" "$IMAGES/current/$name.tar.tmp"
  mv -Tf "$IMAGES/current/$name.tar.tmp" "$IMAGES/current/$name.tar"
  for old in "$IMAGES/$name"-*.tar; do
    [ "$old" = "$file" ] || [ ! -f "$old" ] || rm -f "$old"
  done
}

cmd_build() {
  [ "$(id -u)" = 0 ] || die "building rootfs images needs root (debootstrap, chroot, numeric owners)"
  install_tools
  mkdir -p "$IMAGES/work"
  local t0 name file; t0=$(now_ms)
  for name in pause redis jac-orc jac-splice-module; do
    local t1; t1=$(now_ms)
    case $name in
      pause) file=$(build_pause) ;;
      redis) file=$(build_redis) ;;
      jac-orc) file=$(build_jac_orc) ;;
      jac-splice-module) file=$(build_module) ;;
    esac
    make_current "$name" "$file"
    log "$name: $(basename "$file") ($(du -m "$file" | cut -f1) MB, $(since "$t1") s)"
  done
  log "all images ready in $(since "$t0") s: $IMAGES/current"
}

cmd_bases() {
  [ "$(id -u)" = 0 ] || die "building rootfs images needs root (debootstrap, chroot, numeric owners)"
  install_tools
  local image pkgs
  for image in jac-orc redis jac-splice-module; do
    mapfile -t pkgs < <(words "$(def "$image" base.packages)")
    base_rootfs "${pkgs[@]}" >/dev/null
  done
  log "bases ready in $IMAGES/bases"
}

cmd_list() {
  local f
  for f in "$IMAGES"/current/*.tar; do [ -e "$f" ] && echo "$f -> $(readlink -f "$f")"; done
  return 0
}

case "${1:-}" in
  build) cmd_build ;;
  bases) cmd_bases ;;
  list) cmd_list ;;
  *) echo "usage: $0 build | bases | list" >&2; exit 2 ;;
esac

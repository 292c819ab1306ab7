#!/usr/bin/env python3
"""Build a single-layer OCI image archive from a directory, offline, with the standard library only.

usage: mkimage.py ROOTFS NAME:TAG OUT.tar [--entrypoint JSON] [--cmd JSON] [--env K=V ...]
                  [--workdir DIR] [--user UID:GID] [--expose PORT ...]

The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/...) whose index entry
carries `io.containerd.image.name` (the full name, used by `ctr images import`) and
`org.opencontainers.image.ref.name` (the tag). `ctr -n k8s.io images import OUT.tar` imports and
unpacks it. File owners and modes are kept (numeric: a home directory chowned to the image's user
stays writable by it); the contents of dev/, proc/ and sys/ are skipped (the runtime mounts them).
The output is deterministic (fixed timestamps in the archive and the config), so the same rootfs
gives the same image digest. index.json is written first, so a reader finds it without scanning.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tarfile

SKIP_CONTENT = {"dev", "proc", "sys"}
EPOCH = "1970-01-01T00:00:00Z"


def layer_tar(rootfs: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            filenames.sort()
            rel = os.path.relpath(dirpath, rootfs)
            if rel != ".":
                add(tar, rootfs, rel)  # the directory itself
            if rel in SKIP_CONTENT:
                dirnames[:] = []  # keep dev/ proc/ sys/ empty
                continue
            base = "" if rel == "." else rel + "/"
            real_dirs = []
            for n in dirnames:  # links to directories show up here; os.walk does not follow them
                if os.path.islink(os.path.join(dirpath, n)):
                    add(tar, rootfs, base + n)
                else:
                    real_dirs.append(n)
            dirnames[:] = real_dirs
            for n in filenames:
                add(tar, rootfs, base + n)
    return buf.getvalue()


def add(tar: tarfile.TarFile, rootfs: str, rel: str) -> None:
    full = os.path.join(rootfs, rel)
    info = tar.gettarinfo(full, arcname=rel)
    info.uname = info.gname = ""  # numeric owners only: names would be mapped by the unpacker
    if info.isreg():
        with open(full, "rb") as f:
            tar.addfile(info, f)
    else:
        tar.addfile(info)


def add_bytes(out: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    out.addfile(info, io.BytesIO(data))


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rootfs")
    ap.add_argument("name", help="full name, e.g. docker.io/library/jac-orc:0.1.0")
    ap.add_argument("out")
    ap.add_argument("--entrypoint", type=json.loads, default=None)
    ap.add_argument("--cmd", type=json.loads, default=None)
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--workdir", default="/")
    ap.add_argument("--user", default=None, help="numeric UID:GID, so runAsNonRoot can verify it")
    ap.add_argument("--expose", action="append", default=[], help="e.g. 8000 (documentation only)")
    a = ap.parse_args()

    raw = layer_tar(a.rootfs)
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] + a.env
    config: dict = {"Env": env, "WorkingDir": a.workdir}
    if a.entrypoint is not None:
        config["Entrypoint"] = a.entrypoint
    if a.cmd is not None:
        config["Cmd"] = a.cmd
    if a.user is not None:
        config["User"] = a.user
    if a.expose:
        config["ExposedPorts"] = {f"{p}/tcp": {} for p in a.expose}
    cfg = {
        "architecture": "amd64",
        "os": "linux",
        "created": EPOCH,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [digest(raw)]},
        "history": [{"created": EPOCH, "created_by": "scripts/mkimage.py"}],
    }
    cfg_b = json.dumps(cfg, separators=(",", ":"), sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(cfg_b), "size": len(cfg_b)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(raw), "size": len(raw)}],
    }
    man_b = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
    last = a.name.rsplit("/", 1)[-1]
    tag = last.rsplit(":", 1)[1] if ":" in last else "latest"
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest(man_b),
                "size": len(man_b),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"io.containerd.image.name": a.name, "org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    tmp = a.out + ".tmp"
    with tarfile.open(tmp, "w") as out:
        add_bytes(out, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add_bytes(out, "index.json", json.dumps(index, sort_keys=True).encode())
        for data in (man_b, cfg_b, raw):
            add_bytes(out, "blobs/sha256/" + hashlib.sha256(data).hexdigest(), data)
    os.replace(tmp, a.out)
    print(f"{a.name}: {len(raw)} bytes, manifest {digest(man_b)}")


if __name__ == "__main__":
    main()

"""Host side of the cluster tests: jac_splice against the orchestrator running in the cluster.

    driver.py numpy TARGET                          numpy through jac-orc's ModuleProxy
    driver.py calls TARGET DEPLOYMENT NAMESPACE S   plain-value calls for S seconds (retrying)
    driver.py affinity TARGET DEPLOYMENT NAMESPACE  sessions across replicas: prints one line, waits
                                                    for a line on stdin (a replica was deleted),
                                                    prints another
    driver.py ondemand TARGET NAMESPACE             colorsys imported with deploy=True: deployed if
                                                    nothing serves it, then one call

Each prints one JSON line for the Rust test to check (nothing is asserted here). jac-orc's token
comes from JAC_ORC_TOKEN (the cluster admin's kubeconfig token, which its TokenReview accepts).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jac_splice
from jac_splice._native import Client
from jac_splice.exceptions import NotFoundError, TransportError

SEED = 20261202


def numpy(target: str) -> dict[str, Any]:
    started = time.monotonic()
    splice = jac_splice.connect(target, os.environ["JAC_ORC_TOKEN"])
    np = splice.import_module("numpy")
    total = np.array([1, 2, 3, 4]).sum()  # np.array runs in the pod; the result is plain data
    first_call = time.monotonic() - started
    # The pod's name, as numpy itself reads it from the pod's /etc/hostname (module servers serve
    # no foreign modules such as os, so this is numpy's own file reading).
    host = bytes(np.fromfile("/etc/hostname", dtype="uint8")).decode().strip()
    return {
        "orchestrator": splice.is_orchestrator,
        "sum": int(total),
        "mean": float(np.arange(10).mean()),
        "host": str(host),
        "first_call_s": first_call,
    }


def calls(target: str, deployment: str, namespace: str, seconds: float) -> dict[str, Any]:
    """Calls returning plain values (no object references, so any replica may answer each one)."""
    client = Client(target, token=os.environ["JAC_ORC_TOKEN"]).via_proxy(deployment, namespace)
    deadline = time.monotonic() + seconds
    done = retried = failed = 0
    hosts: dict[str, int] = {}
    errors: list[str] = []
    while time.monotonic() < deadline and done < 100_000:
        for attempt in range(5):
            try:
                data = client.call("", ["fromfile"], ("/etc/hostname",), {"dtype": "uint8"})
                host = bytes(data).decode().strip()
                value = client.call("", ["add"], (2, 3))
                if int(value) != 5:
                    raise AssertionError(f"add(2, 3) returned {value!r}")
                hosts[str(host)] = hosts.get(str(host), 0) + 1
                done += 1
                break
            except Exception as e:  # noqa: BLE001 - counted and reported, the test decides
                if attempt == 4:
                    failed += 1
                    errors.append(f"{type(e).__name__}: {e}")
                else:
                    retried += 1
                    time.sleep(0.2)
        time.sleep(0.05)
    return {
        "calls": done,
        "retried": retried,
        "failed": failed,
        "hosts": hosts,
        "errors": errors[:5],
    }


def _host(client: Client) -> str:
    """The pod answering this session, as numpy reads its /etc/hostname."""
    return bytes(client.call("", ["fromfile"], ("/etc/hostname",), {"dtype": "uint8"})).decode().strip()


def _draws(client: Client, n: int) -> tuple[Any, list[float]]:
    """A numpy Generator of this session and its first n draws, one call each."""
    rng = client.call("", ["random", "default_rng"], (SEED,))
    return rng, [float(client.call(rng.id, ["random"], ())) for _ in range(n)]


def affinity(target: str, deployment: str, namespace: str) -> None:
    """One session's Generator over 100 calls, 30 sessions' pods; then (after the test deleted
    the first session's pod) its old reference and new work."""
    root = Client(target, token=os.environ["JAC_ORC_TOKEN"])
    keeper = root.via_proxy(deployment, namespace)
    rng, drawn = _draws(keeper, 100)
    _, expected = _draws(root.via_proxy(deployment, namespace), 100)
    try:
        import numpy

        local: list[float] | None = numpy.random.default_rng(SEED).random(100).tolist()
    except ImportError:
        local = None
    sessions = [root.via_proxy(deployment, namespace) for _ in range(30)]
    hosts = [_host(s) for s in sessions]
    stable = all(_host(s) == h for s, h in zip(sessions, hosts))
    first = {
        "same_state": drawn == expected,
        "matches_local": None if local is None else drawn == local,
        "hosts": sorted(set(hosts)),
        "stable": stable,
        "keeper_host": _host(keeper),
    }
    print(json.dumps(first), flush=True)
    sys.stdin.readline()
    try:
        second = _after_deletion(keeper, rng, expected)
    except Exception as e:  # reported to the test, which shows it, rather than a silent exit
        second = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(second), flush=True)


def _after_deletion(keeper: Client, rng: Any, expected: list[float]) -> dict[str, Any]:
    """The keeper's old reference once its pod is gone (retrying while the proxy still sees the
    dying pod), then new work of the same session."""
    gone = ""
    for _ in range(300):
        try:
            keeper.call(rng.id, ["random"], ())
            gone = "the old reference still answered"
            break
        except NotFoundError as e:
            gone = str(e)
            break
        except TransportError as e:
            gone = f"{type(e).__name__}: {e}"
            time.sleep(0.1)
    again: list[float] = []
    for _ in range(100):
        try:
            _, again = _draws(keeper, 10)
            break
        except TransportError:
            time.sleep(0.1)
    return {"gone": gone, "again_ok": again == expected[:10], "new_host": _host(keeper)}


def ondemand(target: str, namespace: str) -> dict[str, Any]:
    """``import_module("colorsys", deploy=True)`` then one call, timed from before connecting."""
    started = time.monotonic()
    splice = jac_splice.connect(target, os.environ["JAC_ORC_TOKEN"])
    progress: list[str] = []
    colorsys = splice.import_module(
        "colorsys",
        namespace=namespace,
        deploy=True,
        packages=[],
        cpu="50m",
        cpu_limit="1",
        memory="64Mi",
        wait_timeout=240,
        progress=progress.append,
    )
    hsv = colorsys.rgb_to_hsv(0.2, 0.4, 0.4)
    return {
        "hsv": [float(x) for x in hsv],
        "first_answer_s": time.monotonic() - started,
        "progress": progress,
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["affinity"] and len(argv) == 4:
        affinity(argv[1], argv[2], argv[3])
        return 0
    if argv[:1] == ["numpy"] and len(argv) == 2:
        result = numpy(argv[1])
    elif argv[:1] == ["ondemand"] and len(argv) == 3:
        result = ondemand(argv[1], argv[2])
    elif argv[:1] == ["calls"] and len(argv) == 5:
        result = calls(argv[1], argv[2], argv[3], float(argv[4]))
    else:
        sys.stderr.write(__doc__ or "")
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

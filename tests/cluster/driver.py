"""Host side of the cluster tests: jac_splice against the orchestrator running in the cluster.

    driver.py numpy TARGET                          numpy through jac-orc's ModuleProxy
    driver.py calls TARGET DEPLOYMENT NAMESPACE S   plain-value calls for S seconds (retrying)

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


def main(argv: list[str]) -> int:
    if argv[:1] == ["numpy"] and len(argv) == 2:
        result = numpy(argv[1])
    elif argv[:1] == ["calls"] and len(argv) == 5:
        result = calls(argv[1], argv[2], argv[3], float(argv[4]))
    else:
        sys.stderr.write(__doc__ or "")
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

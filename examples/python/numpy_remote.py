"""Calls numpy in a module server, directly or through jac-orc.

python -m jac_splice.server numpy --port 50051 &
python examples/python/numpy_remote.py 127.0.0.1:50051
python examples/python/numpy_remote.py http://127.0.0.1:8000 --deployment my-numpy
"""

import argparse
import os

import jac_splice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", help="module server or jac-orc address")
    parser.add_argument("--deployment", help="jac-orc python-module deployment (default: look up)")
    parser.add_argument("--namespace")
    parser.add_argument("--token", default=os.environ.get("JAC_SPLICE_TOKEN"))
    args = parser.parse_args()

    splice = jac_splice.connect(args.target, args.token)
    np = splice.import_module("numpy", args.deployment, args.namespace)
    if splice.is_orchestrator:
        deployment, namespace = (args.deployment, args.namespace or "")
        if deployment is None:
            deployment, namespace = splice.resolve_deployment("numpy", args.namespace)
        info = splice.describe(deployment, namespace)
        where = f"python-module deployment {namespace}/{deployment} of jac-orc"
    else:
        info = splice.describe()
        where = f"module server {args.target}"
    print(f"numpy {info['module_version']} runs in pid {info['pid']} ({where}); this client is pid {os.getpid()}")
    a = np.array([1, 2, 3, 4])
    print("array:", a)  # plain data: a local numpy array
    print("sum:", a.sum())
    print("mean of arange(10):", np.arange(10).mean())
    rng = np.random.default_rng(0)  # not plain data: a proxy to the remote Generator
    print("remote generator:", rng)
    print("normal(size=3):", rng.normal(size=3))
    try:
        np.array([1, 2]).reshape(3)
    except ValueError as e:  # remote ValueError, raised here as one
        print("remote error:", type(e).__name__, e)


if __name__ == "__main__":
    main()

"""Remote-call benchmark on loopback: jac-splice vs RPyC vs plain grpcio (see README.md).

python benches/remote_calls/run.py [--orchestrator HOST:PORT --deployment NAME] [--quick]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MIB64 = 8 * 1024 * 1024  # float64 elements in 64 MiB


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(args: List[str], ready: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(HERE))
    proc = subprocess.Popen(args, cwd=HERE, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if ready not in line:
        proc.kill()
        raise RuntimeError(f"{args} did not start: {line!r}")
    proc.ready_line = line  # type: ignore[attr-defined]
    return proc


def rpyc_connect(port: int) -> Any:
    import rpyc

    deadline = time.monotonic() + 20
    while True:
        try:
            return rpyc.classic.connect("127.0.0.1", port, keepalive=True)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def latencies(fn: Callable[[], Any], n: int) -> Dict[str, float]:
    for _ in range(min(50, n)):
        fn()
    samples = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    samples.sort()
    return {
        "p50_us": statistics.median(samples) * 1e6,
        "p99_us": samples[int(len(samples) * 0.99) - 1] * 1e6,
        "calls_s": n / total,
    }


def concurrent(make_fn: Callable[[], Callable[[], Any]], callers: int, per: int) -> float:
    fns = [make_fn() for _ in range(callers)]
    barrier = threading.Barrier(callers + 1)

    def run(fn: Callable[[], Any]) -> None:
        for _ in range(20):
            fn()
        barrier.wait()
        for _ in range(per):
            fn()

    with ThreadPoolExecutor(callers) as pool:
        futures = [pool.submit(run, fn) for fn in fns]
        barrier.wait()
        start = time.perf_counter()
        for f in futures:
            f.result()
    return callers * per / (time.perf_counter() - start)


def big(fn: Callable[[np.ndarray], Any], arr: np.ndarray, n: int) -> float:
    out = fn(arr)
    assert np.array_equal(out, arr)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn(arr)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def bench_splice(address: str, args: argparse.Namespace, deployment: str = "") -> Dict[str, float]:
    import jac_splice

    def module() -> Any:
        splice = jac_splice.connect(address)
        return splice.import_module("bench_mod", deployment or None)

    m = module()
    sqrt, echo = m.sqrt, m.echo
    r = latencies(lambda: sqrt(2.0), args.n)
    r["big_ms"] = big(echo, args.arr, args.big_n)
    shared = module().sqrt  # 32 callers share one client (pooled channels)
    r["c32_calls_s"] = concurrent(lambda: lambda: shared(2.0), 32, args.per)
    return r


def bench_rpyc(args: argparse.Namespace) -> Dict[str, float]:
    from rpyc.utils.classic import deliver, obtain

    port = free_port()
    code = (
        "from rpyc.utils.server import ThreadedServer; from rpyc.core.service import ClassicService;"
        f"ThreadedServer(ClassicService, hostname='127.0.0.1', port={port}).start()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=HERE, env=dict(os.environ, PYTHONPATH=str(HERE))
    )
    try:
        conn = rpyc_connect(port)
        conn._config["sync_request_timeout"] = 600
        sqrt, echo = conn.modules.bench_mod.sqrt, conn.modules.bench_mod.echo
        r = latencies(lambda: sqrt(2.0), args.n)
        r["big_ms"] = big(
            lambda a: obtain(echo(deliver(conn, a))), args.arr, max(1, args.big_n // 3)
        )

        def make() -> Callable[[], Any]:
            c = rpyc_connect(port)  # one connection per caller
            s = c.modules.bench_mod.sqrt
            return lambda: s(2.0)

        r["c32_calls_s"] = concurrent(make, 32, args.per)
        return r
    finally:
        proc.kill()
        proc.wait()


def bench_grpcio(args: argparse.Namespace) -> Dict[str, float]:
    import grpc
    from grpc_tools import protoc

    gen = tempfile.mkdtemp(prefix="jac-splice-bench-")
    proto = ROOT / "proto"
    files = [str(proto / "jac/splice/v1" / f) for f in ("value.proto", "module.proto")]
    if (
        protoc.main(
            ["protoc", f"-I{proto}", f"--python_out={gen}", f"--grpc_python_out={gen}", *files]
        )
        != 0
    ):
        raise RuntimeError("protoc failed")
    sys.path.insert(0, gen)
    from jac.splice.v1 import module_pb2, module_pb2_grpc, value_pb2

    port = free_port()
    proc = spawn([sys.executable, str(HERE / "grpcio_server.py"), gen, str(port)], "ready")
    try:
        limit = [
            ("grpc.max_send_message_length", 1 << 30),
            ("grpc.max_receive_message_length", 1 << 30),
        ]
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=limit)
        stub = module_pb2_grpc.ModuleServiceStub(channel)
        tiny = module_pb2.CallRequest(
            session="s", path=["sqrt"], args=[value_pb2.Value(float_value=2.0)]
        )
        r = latencies(lambda: stub.Call(tiny).value.float_value, args.n)

        def echo(a: np.ndarray) -> np.ndarray:
            v = value_pb2.Value(
                ndarray=value_pb2.NdArray(dtype=a.dtype.str, shape=a.shape, data=a.tobytes())
            )
            n = stub.Call(
                module_pb2.CallRequest(session="s", path=["echo"], args=[v])
            ).value.ndarray
            return np.frombuffer(n.data, n.dtype).reshape(tuple(n.shape))

        r["big_ms"] = big(echo, args.arr, args.big_n)
        r["c32_calls_s"] = concurrent(lambda: lambda: stub.Call(tiny), 32, args.per)
        return r
    finally:
        proc.kill()
        proc.wait()


def raw_tcp_ms(arr: np.ndarray, n: int) -> float:
    data = arr.tobytes()
    size = len(data)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def echo_server() -> None:
        conn, _ = server.accept()
        buf = bytearray(size)
        with conn:
            while True:
                view, got = memoryview(buf), 0
                while got < size:
                    k = conn.recv_into(view[got:])
                    if not k:
                        return
                    got += k
                conn.sendall(buf)

    threading.Thread(target=echo_server, daemon=True).start()
    client = socket.create_connection(("127.0.0.1", port))
    back = bytearray(size)

    def round_trip(_: Any) -> np.ndarray:
        client.sendall(data)
        view, got = memoryview(back), 0
        while got < size:
            got += client.recv_into(view[got:])
        return arr

    ms = big(round_trip, arr, n)
    client.close()
    server.close()
    return ms


def start_orchestrator(binary: str) -> tuple[subprocess.Popen, str, str]:
    """Starts jac-orc on the local backend and deploys bench_mod as a python-module; returns
    (process, address, deployment). The process is stopped by the caller."""
    import json
    import urllib.request

    port = free_port()
    data = tempfile.mkdtemp(prefix="jac-orc-bench-")
    env = dict(os.environ, PYTHONPATH=str(HERE), JAC_ORC_LOG="warn")
    proc = subprocess.Popen(
        [binary, "serve", "--backend", "local", "--listen", f"127.0.0.1:{port}", "--data-dir", data,
         "--python", sys.executable],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=1).read()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"{binary} serve did not start")
            time.sleep(0.05)
    body = json.dumps({"module": "python-module", "config": {"name": "bench", "module": "bench_mod"}}).encode()
    req = urllib.request.Request(f"{url}/deployment", body, {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        status = json.load(r)["deployment"]["status"]
    if status != "deployed":
        proc.kill()
        raise RuntimeError(f"python-module bench_mod: {status}")
    return proc, f"127.0.0.1:{port}", "bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orchestrator", help="jac-orc address serving ModuleProxy (optional)")
    parser.add_argument("--deployment", default="", help="python-module deployment of bench_mod")
    parser.add_argument(
        "--jac-orc", default=os.environ.get("JAC_ORC_BIN"),
        help="jac-orc binary to start on the local backend for the ModuleProxy row (env JAC_ORC_BIN)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    args.n, args.big_n, args.per = (300, 3, 50) if args.quick else (3000, 8, 300)
    args.arr = np.random.default_rng(0).random(MIB64)

    results: Dict[str, Dict[str, float]] = {}
    port = free_port()
    server = spawn(
        [sys.executable, "-m", "jac_splice.server", "bench_mod", "--port", str(port)],
        "listening on",
    )
    try:
        results["jac-splice direct"] = bench_splice(f"127.0.0.1:{port}", args)
    finally:
        server.terminate()
        server.wait()
    if args.orchestrator:
        results["jac-splice via jac-orc"] = bench_splice(args.orchestrator, args, args.deployment)
    elif args.jac_orc:
        orc, address, deployment = start_orchestrator(args.jac_orc)
        try:
            results["jac-splice via jac-orc"] = bench_splice(address, args, deployment)
        finally:
            orc.terminate()
            orc.wait(timeout=30)
    else:
        print("skipped: jac-splice via jac-orc ModuleProxy (pass --jac-orc BIN or --orchestrator HOST:PORT)")
    results["RPyC classic"] = bench_rpyc(args)
    results["grpcio (Python)"] = bench_grpcio(args)
    tcp = raw_tcp_ms(args.arr, args.big_n)

    print(f"\n{'system':<24}{'tiny p50 µs':>12}{'p99 µs':>10}{'calls/s':>10}"
          f"{'64MiB ms':>10}{'32 callers/s':>14}")  # fmt: skip
    for name, r in results.items():
        print(f"{name:<24}{r['p50_us']:>12.0f}{r['p99_us']:>10.0f}{r['calls_s']:>10.0f}"
              f"{r['big_ms']:>10.1f}{r['c32_calls_s']:>14.0f}")  # fmt: skip
    print(f"{'raw TCP 64 MiB echo':<24}{'':>32}{tcp:>10.1f}")
    rp = results["RPyC classic"]
    print("\nratios vs RPyC (targets: tiny p50 <= 0.8x direct and <= 1.2x via jac-orc, 64 MiB >= 5x faster,"
          " 32 callers >= 2x):")  # fmt: skip
    for name, r in results.items():
        if name == "RPyC classic":
            continue
        print(f"  {name:<24} tiny p50 {r['p50_us'] / rp['p50_us']:.2f}x   "
              f"64 MiB {rp['big_ms'] / r['big_ms']:.1f}x faster   "
              f"32 callers {r['c32_calls_s'] / rp['c32_calls_s']:.2f}x   "
              f"64 MiB vs raw TCP {tcp / r['big_ms']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()

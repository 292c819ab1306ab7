"""Remote-call benchmark on loopback: jac-splice (direct, through jac-orc with route=auto, through
ModuleProxy) vs RPyC vs plain grpcio vs raw TCP (ping-pong, bulk, and a relay through a third
process); see README.md.

python benches/remote_calls/run.py [--jac-orc BIN] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MIB64 = 8 * 1024 * 1024  # float64 elements in 64 MiB
PING = 64  # bytes of a raw TCP ping-pong message (a tiny call's request is about this size)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: List[str], ready: str, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(HERE), **(env or {}))
    proc = subprocess.Popen(args, cwd=HERE, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if ready not in line:
        proc.kill()
        raise RuntimeError(f"{args} did not start: {line!r}")
    proc.ready_line = line  # type: ignore[attr-defined]
    return proc


# -- workloads ---------------------------------------------------------------------------------


def latencies(fn: Callable[[], Any], n: int) -> Dict[str, float]:
    for _ in range(min(200, n)):
        fn()
    samples = []
    start_all = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    total = time.perf_counter() - start_all
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
        start_all = time.perf_counter()
        for f in futures:
            f.result()
    return callers * per / (time.perf_counter() - start_all)


def big(fn: Callable[[np.ndarray], Any], arr: np.ndarray, n: int, check: bool = True) -> float:
    """Median ms of n round trips; with ``check``, the first is compared (and not counted)."""
    if check:
        assert np.array_equal(fn(arr), arr)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn(arr)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def pipelined(fn: Any, n: int) -> Dict[str, float]:
    """n sequential calls vs n spawned then gathered vs n concurrent acalls (ms each)."""
    import jac_splice

    for _ in range(50):
        jac_splice.spawn(fn, 2.0).result()
    t = time.perf_counter()
    for _ in range(n):
        fn(2.0)
    seq = time.perf_counter() - t
    t = time.perf_counter()
    futures = [jac_splice.spawn(fn, 2.0) for _ in range(n)]
    results = [f.result() for f in futures]
    spawned = time.perf_counter() - t
    assert results == [fn(2.0)] * n

    async def gather() -> List[Any]:
        return await asyncio.gather(*(jac_splice.acall(fn, 2.0) for _ in range(n)))

    t = time.perf_counter()
    assert len(asyncio.run(gather())) == n
    acalls = time.perf_counter() - t
    return {"seq_ms": seq * 1e3, "spawn_ms": spawned * 1e3, "acall_ms": acalls * 1e3}


# -- subjects ----------------------------------------------------------------------------------


@dataclass
class Subject:
    """One row: how to make a tiny call, a 64 MiB round trip, a caller of many."""

    name: str
    tiny: Callable[[], Any]
    bulk: Callable[[np.ndarray], Any]
    caller: Optional[Callable[[], Callable[[], Any]]] = None
    remote_fn: Any = None  # a jac-splice callable, for the pipelined workloads
    bulk_n_divisor: int = 1
    check_bulk: bool = True
    note: str = ""


def splice_subject(name: str, address: str, args: argparse.Namespace, **connect: Any) -> Subject:
    import jac_splice

    def module() -> Any:
        splice = jac_splice.connect(address, **connect)
        return splice, splice.import_module("bench_mod")

    splice, m = module()
    note = ""
    routes = list(splice._routes.values())
    if routes:
        note = f"calls went {routes[0].route_kind}"
    sqrt, echo = m.sqrt, m.echo
    _, shared_module = module()
    shared = shared_module.sqrt  # 32 callers share one client (pooled channels)
    return Subject(name, lambda: sqrt(2.0), echo, lambda: lambda: shared(2.0), sqrt, note=note)


def rpyc_subject(procs: List[subprocess.Popen]) -> Subject:
    import rpyc
    from rpyc.utils.classic import deliver, obtain

    port = free_port()
    code = (
        "from rpyc.utils.server import ThreadedServer; from rpyc.core.service import ClassicService;"
        f"ThreadedServer(ClassicService, hostname='127.0.0.1', port={port}).start()"
    )
    procs.append(
        subprocess.Popen(
            [sys.executable, "-c", code], cwd=HERE, env=dict(os.environ, PYTHONPATH=str(HERE))
        )
    )

    def connect() -> Any:
        deadline = time.monotonic() + 20
        while True:
            try:
                return rpyc.classic.connect("127.0.0.1", port, keepalive=True)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    conn = connect()
    conn._config["sync_request_timeout"] = 600
    sqrt, echo = conn.modules.bench_mod.sqrt, conn.modules.bench_mod.echo

    def make() -> Callable[[], Any]:
        s = connect().modules.bench_mod.sqrt  # one connection per caller
        return lambda: s(2.0)

    return Subject(
        "RPyC classic",
        lambda: sqrt(2.0),
        lambda a: obtain(echo(deliver(conn, a))),
        make,
        bulk_n_divisor=8,  # hundreds of times slower: fewer round trips
    )


def grpcio_subject(procs: List[subprocess.Popen]) -> Subject:
    import grpc
    from grpc_tools import protoc

    gen = tempfile.mkdtemp(prefix="jac-splice-bench-")
    proto = ROOT / "proto"
    files = [str(proto / "jac/splice/v1" / f) for f in ("value.proto", "module.proto")]
    argv = ["protoc", f"-I{proto}", f"--python_out={gen}", f"--grpc_python_out={gen}", *files]
    if protoc.main(argv) != 0:
        raise RuntimeError("protoc failed")
    sys.path.insert(0, gen)
    from jac.splice.v1 import module_pb2, module_pb2_grpc, value_pb2

    port = free_port()
    procs.append(start([sys.executable, str(HERE / "grpcio_server.py"), gen, str(port)], "ready"))
    limit = [("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)]
    stub = module_pb2_grpc.ModuleServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}", options=limit))
    tiny = module_pb2.CallRequest(session="s", path=["sqrt"], args=[value_pb2.Value(float_value=2.0)])

    def echo(a: np.ndarray) -> np.ndarray:
        v = value_pb2.Value(ndarray=value_pb2.NdArray(dtype=a.dtype.str, shape=a.shape, data=a.tobytes()))
        n = stub.Call(module_pb2.CallRequest(session="s", path=["echo"], args=[v])).value.ndarray
        return np.frombuffer(n.data, n.dtype).reshape(tuple(n.shape))

    return Subject(
        "grpcio (Python)",
        lambda: stub.Call(tiny).value.float_value,
        echo,
        lambda: lambda: stub.Call(tiny),
    )


def tcp_client(port: int) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port))
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def round_trip(client: socket.socket, data: bytes, back: bytearray) -> None:
    client.sendall(data)
    view, got = memoryview(back), 0
    while got < len(back):
        got += client.recv_into(view[got:])


def tcp_subjects(procs: List[subprocess.Popen]) -> Tuple[Subject, Subject]:
    """Raw TCP to an echo process, and the same through a relay process in between."""
    tcp = [sys.executable, str(HERE / "tcp.py")]
    ping = start([*tcp, "echo", str(PING)], "ready")
    bulk = start([*tcp, "echo", str(MIB64 * 8)], "ready")
    procs += [ping, bulk]
    ping_port, bulk_port = (int(p.ready_line.split()[1]) for p in (ping, bulk))  # type: ignore[attr-defined]
    ping_relay = start([*tcp, "relay", str(ping_port)], "ready")
    bulk_relay = start([*tcp, "relay", str(bulk_port)], "ready")
    procs += [ping_relay, bulk_relay]

    def subject(name: str, ping_to: int, bulk_to: int) -> Subject:
        small, small_back = b"x" * PING, bytearray(PING)
        pinger, mover = tcp_client(ping_to), tcp_client(bulk_to)
        back = bytearray(MIB64 * 8)

        def move(a: np.ndarray) -> np.ndarray:
            round_trip(mover, a.tobytes(), back)
            return a

        return Subject(name, lambda: round_trip(pinger, small, small_back), move, check_bulk=False)

    relay_ports = [int(p.ready_line.split()[1]) for p in (ping_relay, bulk_relay)]  # type: ignore[attr-defined]
    return (
        subject("raw TCP", ping_port, bulk_port),
        subject("raw TCP relay", relay_ports[0], relay_ports[1]),
    )


def start_orchestrator(binary: str) -> Tuple[subprocess.Popen, str, str]:
    """Starts jac-orc on the local backend and deploys bench_mod as a python-module; returns
    (process, URL, admin token)."""
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
    token = (Path(data) / "token").read_text().strip()
    body = {"module": "python-module", "config": {"name": "bench", "module": "bench_mod"}, "wait": True}
    headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
    req = urllib.request.Request(f"{url}/deployment", json.dumps(body).encode(), headers)
    with urllib.request.urlopen(req, timeout=300) as r:
        status = json.load(r)["deployment"]["status"]
    if status != "deployed":
        proc.kill()
        raise RuntimeError(f"python-module bench_mod: {status}")
    return proc, url, token


# -- rounds and reporting ----------------------------------------------------------------------


def measure(s: Subject, args: argparse.Namespace, n: int, warm_up: bool = False) -> Dict[str, float]:
    r = latencies(s.tiny, n)
    bulk_n = max(1, args.big_n // s.bulk_n_divisor)
    r["big_ms"] = big(s.bulk, args.arr, bulk_n, check=warm_up and s.check_bulk)
    if s.caller is not None:
        r["c32_calls_s"] = concurrent(s.caller, 32, args.per)
    if s.remote_fn is not None:
        r.update(pipelined(s.remote_fn, 1000))
    return r


def spread(values: List[float], digits: int = 2) -> str:
    """median (min–max) of one figure over the rounds."""
    med = statistics.median(values)
    return f"{med:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--jac-orc", default=os.environ.get("JAC_ORC_BIN"),
        help="jac-orc binary to start on the local backend for the jac-orc rows (env JAC_ORC_BIN)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (after one warm-up)")
    parser.add_argument("--quick", action="store_true", help="fewer iterations per round")
    args = parser.parse_args()
    args.n, args.big_n, args.per = (300, 2, 50) if args.quick else (3000, 8, 300)
    args.arr = np.random.default_rng(0).random(MIB64)

    procs: List[subprocess.Popen] = []
    subjects: List[Subject] = []
    orc = None
    try:
        port = free_port()
        procs.append(
            start([sys.executable, "-m", "jac_splice.server", "bench_mod", "--port", str(port)],
                  "listening on")
        )  # fmt: skip
        subjects.append(splice_subject("jac-splice direct", f"127.0.0.1:{port}", args))
        if args.jac_orc:
            orc, url, token = start_orchestrator(args.jac_orc)
            subjects.append(splice_subject("jac-orc route=auto", url, args, token=token))
            subjects.append(
                splice_subject("jac-orc route=proxy", url, args, token=token, route="proxy")
            )
        else:
            print("skipped: the jac-orc rows (pass --jac-orc BIN or set JAC_ORC_BIN)")
        subjects.append(rpyc_subject(procs))
        subjects.append(grpcio_subject(procs))
        subjects.extend(tcp_subjects(procs))

        for s in subjects:  # warm-up round, discarded
            measure(s, argparse.Namespace(**{**vars(args), "big_n": 1, "per": 20}), 300, warm_up=True)
        rounds: List[Dict[str, Dict[str, float]]] = []
        for i in range(args.rounds):
            rounds.append({s.name: measure(s, args, args.n) for s in subjects})
            print(f"round {i + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        if orc is not None:
            orc.terminate()
            orc.wait(timeout=30)
        for p in procs:
            p.kill()
            p.wait()
    report(subjects, rounds)


def report(subjects: List[Subject], rounds: List[Dict[str, Dict[str, float]]]) -> None:
    def figure(name: str, key: str) -> List[float]:
        return [r[name][key] for r in rounds if key in r[name]]

    def ratio(a: str, ka: str, b: str, kb: str, invert: bool = False) -> List[float]:
        return [
            (r[b][kb] / r[a][ka]) if invert else (r[a][ka] / r[b][kb])
            for r in rounds
            if ka in r[a] and kb in r[b]
        ]

    print(f"\n{len(rounds)} rounds after a warm-up; every figure is the median (min–max) of the rounds\n")
    cols = [("p50_us", "tiny p50 µs", 0), ("p99_us", "p99 µs", 0), ("calls_s", "calls/s", 0),
            ("big_ms", "64 MiB ms", 1), ("c32_calls_s", "32 callers/s", 0),
            ("seq_ms", "1000 seq ms", 1), ("spawn_ms", "1000 spawn ms", 1), ("acall_ms", "1000 acall ms", 1)]  # fmt: skip
    for s in subjects:
        print(f"{s.name}{'  [' + s.note + ']' if s.note else ''}")
        parts = [f"    {label}: {spread(figure(s.name, key), digits)}" for key, label, digits in cols
                 if figure(s.name, key)]  # fmt: skip
        print("\n".join(parts))

    names = {s.name for s in subjects}
    checks: List[Tuple[str, List[float], float, bool]] = []  # label, per-round ratios, target, lower is better

    def add(label: str, values: List[float], target: float, lower: bool) -> None:
        if values:
            checks.append((label, values, target, lower))

    rp, tcp, relay = "RPyC classic", "raw TCP", "raw TCP relay"
    direct, auto, proxy = "jac-splice direct", "jac-orc route=auto", "jac-orc route=proxy"
    for name, target in ((direct, 0.8), (auto, 0.8), (proxy, 1.2)):
        if name in names:
            add(f"{name}: tiny p50 / RPyC's (target <= {target})", ratio(name, "p50_us", rp, "p50_us"), target, True)
    for name in (direct, auto):
        if name in names:
            add(f"{name}: tiny p50 / raw TCP ping-pong's (target <= 3)", ratio(name, "p50_us", tcp, "p50_us"), 3, True)
    if proxy in names:
        add(f"{proxy}: tiny p50 / raw TCP relay's (the relay is the ceiling)", ratio(proxy, "p50_us", relay, "p50_us"), 0, True)
    for name in (direct, auto, proxy, "grpcio (Python)", rp):
        if name in names:
            add(f"{name}: 64 MiB speed / raw TCP's (target >= 0.7)", ratio(name, "big_ms", tcp, "big_ms", invert=True), 0.7, False)
    if proxy in names:
        add(f"{proxy}: 64 MiB speed / raw TCP relay's", ratio(proxy, "big_ms", relay, "big_ms", invert=True), 0, False)
    for name, target in ((direct, 4.0), (auto, 4.0), (proxy, 3.0)):
        if name in names:
            add(f"{name}: 32 callers / RPyC's (target >= {target})", ratio(name, "c32_calls_s", rp, "c32_calls_s"), target, False)
    for name in (direct, auto, proxy):
        if name in names:
            add(f"{name}: 1000 sequential / 1000 spawned (target >= 10)", ratio(name, "seq_ms", name, "spawn_ms"), 10, False)
            add(f"{name}: 1000 sequential / 1000 acall", ratio(name, "seq_ms", name, "acall_ms"), 0, False)  # fmt: skip

    print("\nratios, median (min–max) of the per-round ratios:")
    for label, values, target, lower in checks:
        med = statistics.median(values)
        verdict = ""
        if target:
            met = med <= target if lower else med >= target
            verdict = "  met" if met else "  NOT met"
        print(f"  {label}: {spread(values)}{verdict}")


if __name__ == "__main__":
    main()

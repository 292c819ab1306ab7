"""Pipelined calls travel in batches: spawned and async calls of one session that queue behind
the requests on the wire go as one ``CallBatch`` each, and every call still answers (or raises)
exactly as it would alone. A server without ``CallBatch`` gets single calls.

Results are checked, never speed: the benchmark (benches/remote_calls) measures that.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import jac_splice
from jac_splice._native import Client

Outcome = tuple[str, Any]


def outcome(call: Callable[[], Any]) -> Outcome:
    """What a call gave: ("value", its value) or (its exception's type name, its text)."""
    try:
        return ("value", call())
    except Exception as e:  # noqa: BLE001 - compared as data
        return (type(e).__name__, str(e))


def result_of(future: concurrent.futures.Future[Any]) -> Outcome:
    return outcome(lambda: future.result(timeout=60))


def call_async(
    client: Client, target: str, path: list[str], args: tuple[Any, ...]
) -> concurrent.futures.Future[Any]:
    """``Client.call_async`` with its outcome in a future (what spawn does, without its proxies)."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def done(ok: bool, value: Any) -> None:
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    client.call_async(target, path, args, None, None, done)
    return future


def mixed_calls(tm: jac_splice.RemoteModule, n: int) -> list[tuple[Any, tuple[Any, ...]]]:
    """``n`` calls: mostly plain values, with the served code's exceptions (ValueError, a
    KeyError subclass) and a released reference (NOT_FOUND) in between."""
    gone = tm.make_thing(1)
    client = tm._jac_splice_client
    ref = gone._jac_splice_ref
    assert ref is not None
    client.release([ref.id])
    calls: list[tuple[Any, tuple[Any, ...]]] = []
    for i in range(n):
        if i % 7 == 3:
            calls.append((tm.fail_value, (f"no {i}",)))
        elif i % 11 == 5:
            calls.append((tm.fail_custom, (f"key {i}",)))
        elif i % 13 == 6:
            calls.append((tm.read_value, (gone,)))
        else:
            calls.append((tm.identity, ([i, str(i)],)))
    return calls


def spawned_match_sequential(tm: jac_splice.RemoteModule, n: int) -> None:
    calls = mixed_calls(tm, n)
    sequential = [outcome(lambda fn=fn, args=args: fn(*args)) for fn, args in calls]
    futures = [jac_splice.spawn(fn, *args) for fn, args in calls]
    assert [result_of(f) for f in futures] == sequential
    kinds = {kind for kind, _ in sequential}
    assert kinds == {"value", "RemoteValueError", "RemoteKeyError", "NotFoundError"}, kinds


def test_a_thousand_spawned_calls_answer_in_the_order_of_their_futures(
    tm: jac_splice.RemoteModule,
) -> None:
    futures = [jac_splice.spawn(tm.identity, i) for i in range(1000)]
    assert [f.result(timeout=60) for f in futures] == list(range(1000))


def test_errors_within_a_batch_raise_what_single_calls_raise(tm: jac_splice.RemoteModule) -> None:
    spawned_match_sequential(tm, 1000)


def test_a_refused_call_in_a_burst_fails_alone_as_a_single_call_would(
    tm: jac_splice.RemoteModule,
) -> None:
    client: Client = tm._jac_splice_client
    target = tm._jac_splice_target

    def send(path: list[str], args: tuple[Any, ...]) -> concurrent.futures.Future[Any]:
        return call_async(client, target, path, args)

    alone = outcome(lambda: client.call(target, ["identity", "__class__"], (1,)))
    assert alone[0] == "PermissionDeniedError", alone
    burst = [send(["identity"], (i,)) for i in range(300)]
    refused = send(["identity", "__class__"], (1,))
    burst += [send(["identity"], (i,)) for i in range(300, 600)]
    assert result_of(refused) == alone
    assert [f.result(timeout=60) for f in burst] == list(range(600))


def test_cancelled_futures_are_never_settled_and_the_others_answer(
    tm: jac_splice.RemoteModule,
) -> None:
    # A call cancelled while it still waits in the queue is never sent; one already sent runs
    # on. Which of the two each was depends on timing, so the counter is only bounded.
    counter = tm.make_thing(0)
    futures = [jac_splice.spawn(counter.bump) for _ in range(600)]
    cancelled = [f for i, f in enumerate(futures) if i % 2 and f.cancel()]
    kept = [f for i, f in enumerate(futures) if not (i % 2 and f in cancelled)]
    values = [f.result(timeout=60) for f in kept]
    assert len(set(values)) == len(values), "every bump that ran counted once"
    assert all(f.cancelled() for f in cancelled)
    ran = jac_splice.spawn(tm.read_value, counter).result(timeout=60)
    assert len(kept) <= ran <= len(futures)
    assert jac_splice.spawn(tm.identity, "after").result(timeout=60) == "after"


def test_async_calls_are_batched_too(tm: jac_splice.RemoteModule) -> None:
    import asyncio

    calls = mixed_calls(tm, 300)
    sequential = [outcome(lambda fn=fn, args=args: fn(*args)) for fn, args in calls]

    async def main() -> list[Outcome]:
        async def one(fn: Any, args: tuple[Any, ...]) -> Outcome:
            try:
                return ("value", await jac_splice.acall(fn, *args))
            except Exception as e:  # noqa: BLE001 - compared as data
                return (type(e).__name__, str(e))

        return await asyncio.gather(*(one(fn, args) for fn, args in calls))

    assert asyncio.run(asyncio.wait_for(main(), 60)) == sequential


# A module server from before CallBatch, in a process of its own (its grpcio threads must not
# change this process's thread count, which other tests check): grpcio serving only
# ModuleService/Call, each call answered with how many calls it has served so far; CallBatch is
# UNIMPLEMENTED as any server answers an unknown method.
OLD_SERVER = """
import sys, threading
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

served = 0
lock = threading.Lock()

def call(request, context):
    global served
    with lock:
        served += 1
        n = served
    zigzag = n << 1  # ValueResponse{value: Value{int_value: n}}, sint64, n < 2**20
    varint = bytearray()
    while True:
        byte, zigzag = zigzag & 0x7F, zigzag >> 7
        varint.append(byte | (0x80 if zigzag else 0))
        if not zigzag:
            break
    value = b"\\x18" + bytes(varint)
    return b"\\x0a" + bytes([len(value)]) + value

server = grpc.server(futures.ThreadPoolExecutor(8))
handler = grpc.method_handlers_generic_handler(
    "jac.splice.v1.ModuleService", {"Call": grpc.unary_unary_rpc_method_handler(call)}
)
server.add_generic_rpc_handlers((handler,))
status = health.HealthServicer()
status.set("jac.splice.v1.ModuleService", health_pb2.HealthCheckResponse.SERVING)
health_pb2_grpc.add_HealthServicer_to_server(status, server)
print(server.add_insecure_port("127.0.0.1:0"), flush=True)
server.start()
sys.stdin.read()
"""


@pytest.fixture
def old_server() -> Iterator[int]:
    with subprocess.Popen(
        [sys.executable, "-c", OLD_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            yield int(proc.stdout.readline())
        finally:
            proc.kill()


def test_a_server_without_call_batch_gets_single_calls(old_server: int) -> None:
    client = Client(f"127.0.0.1:{old_server}", heartbeat_seconds=None)
    results: list[concurrent.futures.Future[Any]] = []

    def send() -> None:
        results.append(call_async(client, "", ["f"], ()))

    for _ in range(500):
        send()
    # Every call was served once, as a single Call (the batch refused, then sent singly).
    assert sorted(f.result(timeout=60) for f in results) == list(range(1, 501))
    # Later bursts go singly from the start.
    for _ in range(100):
        send()
    assert sorted(f.result(timeout=60) for f in results) == list(range(1, 601))
    client.close()

"""Pipelined, async and time-bounded calls (issue 13): ``jac_splice.spawn``, ``acall`` and
``with_timeout``, and ``connect(call_timeout=...)``, against a module server.

Results are checked, never speed: the benchmark (benches/remote_calls) measures that.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from typing import Any

import pytest

import jac_splice
from jac_splice.exceptions import DeadlineExceededError, RemoteError, TransportError

from conftest import ModuleServerProcess


def threads() -> int:
    """This process's OS threads."""
    return len(os.listdir("/proc/self/task"))


def test_a_thousand_spawned_calls_answer_as_a_thousand_sequential_ones(
    tm: jac_splice.RemoteModule,
) -> None:
    add = tm.identity
    sequential = [add(i) for i in range(1000)]
    futures = [jac_splice.spawn(add, i) for i in range(1000)]
    assert all(isinstance(f, concurrent.futures.Future) for f in futures)
    assert [f.result(timeout=60) for f in futures] == sequential == list(range(1000))


def test_spawned_calls_carry_kwargs_objects_and_exceptions(tm: jac_splice.RemoteModule) -> None:
    echo = jac_splice.spawn(tm.kwargs_echo, 1, "two", key=[3])
    assert echo.result(timeout=60) == [[1, "two"], {"key": [3]}]
    thing = jac_splice.spawn(tm.make_thing, 9).result(timeout=60)
    assert isinstance(thing, jac_splice.RemoteObject)
    assert tm.read_value(thing) == 9
    assert jac_splice.spawn(tm.read_value, thing).result(timeout=60) == 9
    failed = jac_splice.spawn(tm.fail_value, "no")
    with pytest.raises(ValueError, match="no") as info:
        failed.result(timeout=60)
    assert isinstance(info.value, RemoteError)
    # Arguments are encoded when the call is spawned: later changes do not travel.
    items = [1, 2]
    sent = jac_splice.spawn(tm.identity, items)
    items.append(3)
    assert sent.result(timeout=60) == [1, 2]


def test_a_spawned_calls_done_callback_may_call_again(tm: jac_splice.RemoteModule) -> None:
    # Done callbacks run where the call completed (a thread of the native runtime): a blocking
    # call from there must still work.
    identity = tm.identity
    called: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def again(done: concurrent.futures.Future[Any]) -> None:
        try:
            called.set_result(identity(done.result() + 1))
        except BaseException as e:  # noqa: BLE001 - handed to the test
            called.set_exception(e)

    jac_splice.spawn(identity, 1).add_done_callback(again)
    assert called.result(timeout=60) == 2


def test_a_spawned_call_can_be_cancelled_while_in_flight(tm: jac_splice.RemoteModule) -> None:
    gate = tm.Gate()
    held = jac_splice.spawn(gate.wait, 30)
    assert gate.entered(30)
    assert held.cancel()
    assert held.cancelled()
    gate.open()
    # The connection carries on.
    assert jac_splice.spawn(tm.identity, "after").result(timeout=60) == "after"


def test_spawn_and_acall_need_a_remote_callable(tm: jac_splice.RemoteModule) -> None:
    with pytest.raises(TypeError, match="fn must be a remote callable"):
        jac_splice.spawn(print, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fn must be a remote callable"):
        asyncio.run(jac_splice.acall(len, [1]))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fn must be a remote callable"):
        jac_splice.spawn(tm, 1)  # type: ignore[arg-type]


def test_a_thousand_concurrent_acalls_leave_the_thread_count_unchanged(
    tm: jac_splice.RemoteModule,
) -> None:
    identity = tm.identity
    assert jac_splice.spawn(identity, 0).result(timeout=60) == 0  # the runtime is up
    before = threads()
    seen: list[int] = []

    async def main() -> list[Any]:
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                seen.append(threads())
                await asyncio.sleep(0)

        sampler = asyncio.create_task(sample())
        results = await asyncio.gather(*(jac_splice.acall(identity, i) for i in range(1000)))
        done.set()
        await sampler
        return results

    assert asyncio.run(asyncio.wait_for(main(), 60)) == list(range(1000))
    assert seen and max(seen) == before, (before, max(seen))
    assert threads() == before


def test_acall_never_blocks_the_event_loop(tm: jac_splice.RemoteModule) -> None:
    # The first call waits at the gate until the second one, run by the same loop while the
    # first is pending, opens it: a blocking acall would wait forever (bounded by wait_for).
    gate = tm.Gate()

    async def main() -> Any:
        held = asyncio.create_task(jac_splice.acall(gate.wait, 30))
        assert await jac_splice.acall(gate.entered, 30)
        await jac_splice.acall(gate.open)
        return await held

    assert asyncio.run(asyncio.wait_for(main(), 60)) is True


def test_acall_raises_remote_exceptions_and_cancelling_abandons_the_call(
    tm: jac_splice.RemoteModule,
) -> None:
    gate = tm.Gate()

    async def main() -> None:
        with pytest.raises(ValueError, match="async no"):
            await jac_splice.acall(tm.fail_value, "async no")
        held = asyncio.create_task(jac_splice.acall(gate.wait, 30))
        assert await jac_splice.acall(gate.entered, 30)
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held
        await jac_splice.acall(gate.open)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_with_timeout_raises_a_timeout_error_and_leaves_other_calls_alone(
    tm: jac_splice.RemoteModule,
) -> None:
    slow = jac_splice.with_timeout(tm.slow, 0.2)
    with pytest.raises(DeadlineExceededError) as info:
        slow(3)
    err = info.value
    assert isinstance(err, TimeoutError) and isinstance(err, TransportError)
    assert err.code == "DEADLINE_EXCEEDED"
    assert "timeout of 0.2 s" in str(err), err
    # Spawned and async calls of it carry the same deadline.
    with pytest.raises(DeadlineExceededError):
        jac_splice.spawn(slow, 3).result(timeout=60)
    with pytest.raises(TimeoutError):
        asyncio.run(asyncio.wait_for(jac_splice.acall(slow, 3), 60))
    # Within its timeout it answers; the unwrapped callable has none.
    assert jac_splice.with_timeout(tm.identity, 10)(4) == 4
    assert tm.slow(0.5) == "done"
    assert "timeout of 10 s" in repr(jac_splice.with_timeout(slow, 10))


def test_call_timeout_bounds_every_call_of_a_connection(server: ModuleServerProcess) -> None:
    with jac_splice.connect(server.address, call_timeout=0.2) as splice:
        tm = splice.import_module("splice_testmod")
        with pytest.raises(DeadlineExceededError):
            tm.slow(3)
        assert tm.identity("quick") == "quick"
        # with_timeout overrides the connection's default, both ways.
        assert jac_splice.with_timeout(tm.slow, 10)(0.5) == "done"


@pytest.mark.parametrize(
    ("call", "error", "text"),
    [
        (lambda tm: jac_splice.with_timeout(tm.slow, 0), ValueError, "seconds must be a positive"),
        (lambda tm: jac_splice.with_timeout(tm.slow, -1), ValueError, "seconds must be a positive"),
        (lambda tm: jac_splice.with_timeout(tm.slow, "1"), TypeError, "seconds must be a number"),
        (lambda tm: jac_splice.with_timeout(print, 1), TypeError, "fn must be a remote callable"),
        (lambda tm: jac_splice.connect("127.0.0.1:1", call_timeout=0), ValueError, "call_timeout"),
        (
            lambda tm: jac_splice.connect("127.0.0.1:1", call_timeout=True),
            TypeError,
            "call_timeout",
        ),
    ],
)
def test_bad_timeouts_are_refused_naming_the_argument(
    tm: jac_splice.RemoteModule, call: Any, error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=text):
        call(tm)

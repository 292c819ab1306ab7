"""The fast paths: zero-copy array buffers, reused large buffers, lanes and pooled channels."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest


@pytest.mark.parametrize("dtype", ["<f8", "<i4", "|u1", "<c16", "|b1"])
def test_received_arrays_are_aligned_writable_and_own_their_memory(tm: Any, dtype: str) -> None:
    # 16 MiB: the received message buffer comes from the large-buffer path of the allocator.
    a = (np.arange(2 * 1024 * 1024) % 251).astype(dtype)
    first = tm.identity(a)
    assert first.flags.aligned and first.flags.writeable and first.flags.c_contiguous
    assert first.ctypes.data % 16 == 0
    assert np.array_equal(first, a)
    first[:] = first[::-1]  # writing one result must not touch the sent array or a later result
    second = tm.identity(a)  # reuses freed large buffers on both sides
    assert np.array_equal(second, a)
    assert np.array_equal(first, a[::-1])


def test_arrays_sent_from_views_and_odd_offsets_arrive_intact(tm: Any) -> None:
    raw = np.random.default_rng(2).random(3 * 1024 * 1024 + 3)
    for view in (raw[1:], raw[3:].reshape(-1, 1024)[:, :7], raw[::-2]):
        back = tm.identity(view)
        assert back.shape == view.shape and np.array_equal(back, view)


def test_same_array_sent_repeatedly_round_trips(tm: Any) -> None:
    a = np.random.default_rng(3).random(1024 * 1024)
    for _ in range(5):
        assert np.array_equal(tm.identity(a), a)


def test_many_concurrent_callers_mixing_lanes_and_pooled_channels(tm: Any) -> None:
    # More callers than lanes: the rest go over the pooled channels; every result must match.
    def work(i: int) -> Any:
        return [tm.identity((i, j)) for j in range(20)]

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(work, range(48)))
    assert results == [[(i, j) for j in range(20)] for i in range(48)]


def test_calls_keep_flowing_while_another_thread_waits_on_a_held_call(tm: Any) -> None:
    # The held call is released only after the other calls came back: had they queued behind
    # it, it would have timed out first (30 s, a bound, not a measurement) and returned False.
    gate = tm.Gate()
    held: list[bool] = []
    holder = threading.Thread(target=lambda: held.append(gate.wait(30.0)))
    holder.start()
    assert gate.entered(30.0)
    for i in range(50):
        assert tm.identity(i) == i
    gate.open()
    holder.join(60)
    assert held == [True]


def test_a_lane_idle_for_a_while_still_works(tm: Any) -> None:
    assert tm.identity(1) == 1
    time.sleep(0.2)  # longer than the lane staleness check
    assert tm.identity(2) == 2


def test_served_code_can_itself_be_a_client(server: Any, tm: Any) -> None:
    # The call runs on the server's connection thread, outside its runtime, so a client (or any
    # tokio-based library) inside served code can block on a runtime of its own.
    assert tm.call_back(server.address, [1, "two"]) == [1, "two"]

"""Many callers at once share one client."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any


def test_32_threads_call_at_once(tm: Any) -> None:
    def work(i: int) -> Any:
        assert tm.slow(0.05) == "done"
        return tm.identity(i), tm.make_thing(i).value

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(work, range(32)))
    assert results == [(i, i) for i in range(32)]


def test_calls_run_in_several_server_threads(tm: Any) -> None:
    with ThreadPoolExecutor(8) as pool:
        names = set(pool.map(lambda _: (tm.slow(0.1), tm.thread_name())[1], range(16)))
    assert len(names) > 1

"""References: by-reference results, passing proxies back, batched release, lease expiry."""

from __future__ import annotations

import gc
import time
from typing import Any, Callable

import pytest

import jac_splice
from jac_splice import NotFoundError, RemoteObject


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_objects_come_back_as_proxies_and_go_back_as_references(tm: Any) -> None:
    thing = tm.make_thing(5)
    assert isinstance(thing, RemoteObject)
    assert thing.value == 5
    assert thing.bump(by=2) == 7
    assert tm.read_value(thing) == 7
    assert callable(tm.make_thing)


def test_dropped_proxies_are_released_in_a_batch_and_freed(server_factory: Any) -> None:
    # A server of its own: on the shared one, other tests' objects are freed asynchronously
    # (batched release, leases), which would make the live count race.
    server = server_factory("splice_testmod")
    splice = jac_splice.connect(server.address)
    tm = splice.import_module("splice_testmod")
    assert tm.live_things() == 0
    things = [tm.make_thing(i) for i in range(50)]
    assert tm.live_things() == 50
    assert splice.describe()["session_refs"] >= 50
    del things
    gc.collect()
    splice.flush()
    assert splice.describe()["session_refs"] == 0
    assert tm.live_things() == 0


def test_unknown_reference_id_is_not_found(splice: Any) -> None:
    with pytest.raises(NotFoundError) as info:
        splice.client.call("r-does-not-exist", [], ())
    assert info.value.code == "NOT_FOUND"


def test_references_of_another_session_are_refused(server: Any, tm: Any) -> None:
    other = jac_splice.connect(server.address).import_module("splice_testmod")
    with pytest.raises(ValueError, match="another module server session"):
        other.read_value(tm.make_thing(1))


def test_expired_lease_frees_everything_the_session_held(server_factory: Any) -> None:
    server = server_factory("splice_testmod", "--lease-seconds", "0.5")
    observer = jac_splice.connect(server.address, heartbeat_seconds=None)
    splice = jac_splice.connect(server.address, heartbeat_seconds=None)
    tm = splice.import_module("splice_testmod")
    keep = [tm.make_thing(i) for i in range(3)]
    assert observer.describe()["total_refs"] >= 3
    assert wait_until(lambda: observer.describe()["total_refs"] == 0)
    assert observer.import_module("splice_testmod").live_things() == 0
    with pytest.raises(NotFoundError):
        keep[0].bump()


def test_heartbeat_keeps_the_lease_alive(server_factory: Any) -> None:
    server = server_factory("splice_testmod", "--lease-seconds", "0.6")
    splice = jac_splice.connect(server.address, heartbeat_seconds=0.2)
    thing = splice.import_module("splice_testmod").make_thing(3)
    time.sleep(2.0)  # three leases long; the heartbeat renews it
    assert thing.bump() == 4

"""Direct access through a real jac-orc (issue 13): ``connect(url, route=...)`` on its local
backend, whose module servers listen on loopback (reachable from here).

``route="direct"`` (and ``"auto"``, which probes and finds them reachable) asks jac-orc for the
deployment's endpoints and call token (GetModuleAccess) and then calls the module servers
itself: calls keep answering while jac-orc is stopped (SIGSTOP) until the access expires, and
each session sits on the replica rendezvous hashing picks, as ModuleProxy would. ``"proxy"``
goes through ModuleProxy. Deadlines reach both paths; spawned and async calls run on them too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_batching import spawned_match_sequential
from test_orchestrator_proxy import Orchestrator, require_binary, start_orchestrator

import jac_splice
from jac_splice.exceptions import DeadlineExceededError, RemoteError, UnavailableError

from conftest import TESTS

DEPLOYMENT = "direct-tm"
ACCESS_TTL = 3  # seconds: short, so a test can outlive an access


@pytest.fixture(scope="module")
def orc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    binary = require_binary()
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    orc = start_orchestrator(
        binary,
        tmp_path_factory.mktemp("jac-orc-direct"),
        "--module-access-ttl",
        str(ACCESS_TTL),
        env={"PYTHONPATH": path},
    )
    try:
        body = {
            "module": "python-module",
            "config": {"name": DEPLOYMENT, "module": "splice_testmod", "replicas": 2},
            "wait": True,
        }
        deployed = orc.rest("POST", "/deployment", body)
        assert deployed["deployment"]["status"] == "deployed", deployed
        yield orc
    finally:
        orc.stop()


def endpoints(orc: Orchestrator) -> list[str]:
    found = orc.rest("GET", f"/deployment/default/python-module/{DEPLOYMENT}")
    return sorted(found["endpoints"])


def session_route(splice: jac_splice.Splice) -> Any:
    """The native client of the splice's one deployment session."""
    (client,) = splice._routes.values()
    return client


def _score(session: str, address: str) -> int:
    """jac-orc's rendezvous hash (src/proxy/affinity.rs), written out once more here."""
    mask = (1 << 64) - 1
    h = 0xCBF29CE484222325
    for b in session.encode() + b"\xff" + address.encode():
        h = ((h ^ b) * 0x100000001B3) & mask
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & mask
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & mask
    return h ^ (h >> 31)


@pytest.fixture
def stopped(orc: Orchestrator) -> Iterator[Orchestrator]:
    """jac-orc, which the test may stop (SIGSTOP); it is continued afterwards in any case."""
    try:
        yield orc
    finally:
        os.kill(orc.proc.pid, signal.SIGCONT)


def test_route_direct_calls_the_module_servers_without_jac_orc(stopped: Orchestrator) -> None:
    orc = stopped
    splice = jac_splice.connect(orc.url, orc.token, route="direct", call_timeout=30)
    tm = splice.import_module("splice_testmod")
    client = session_route(splice)
    assert client.route_kind == "direct"
    listed = endpoints(orc)
    assert len(listed) == 2, listed
    # The session sits where ModuleProxy would put it.
    assert client.endpoint == max(listed, key=lambda a: _score(client.session, a))
    identity = tm.identity
    assert identity(5) == 5
    # With jac-orc stopped, calls still answer: they never pass through it.
    os.kill(orc.proc.pid, signal.SIGSTOP)
    assert tm.identity([1, 2]) == [1, 2]
    thing = tm.make_thing(7)
    assert tm.read_value(thing) == 7
    # Once the access expires it is asked again: with jac-orc stopped that cannot answer, and
    # the call's deadline bounds the wait.
    time.sleep(ACCESS_TTL + 0.5)
    with pytest.raises(DeadlineExceededError):
        jac_splice.with_timeout(identity, 1.0)(1)
    os.kill(orc.proc.pid, signal.SIGCONT)
    assert tm.identity(6) == 6
    assert tm.read_value(thing) == 7, "the session stayed on its replica"
    assert "direct" in repr(splice)
    splice.close()


def test_route_proxy_goes_through_module_proxy(orc: Orchestrator) -> None:
    with jac_splice.connect(orc.url, orc.token, route="proxy") as splice:
        tm = splice.import_module("splice_testmod")
        assert tm.identity("via jac-orc") == "via jac-orc"
        client = session_route(splice)
        assert client.route_kind == "proxy"
        assert client.endpoint is None
        assert client.deployment == (DEPLOYMENT, "default")


def test_route_auto_is_direct_when_the_module_servers_are_reachable(orc: Orchestrator) -> None:
    with jac_splice.connect(orc.url, orc.token) as splice:
        assert splice.route == "auto"
        tm = splice.import_module("splice_testmod")
        assert tm.ANSWER == 42
        client = session_route(splice)
        assert client.route_kind == "direct"
        assert client.endpoint in endpoints(orc)


def test_a_bad_route_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"route must be 'auto', 'direct' or 'proxy', got 'fast'"):
        jac_splice.connect("127.0.0.1:1", route="fast")  # type: ignore[arg-type]


def test_sessions_are_spread_over_the_replicas_as_module_proxy_spreads_them(
    orc: Orchestrator,
) -> None:
    listed = endpoints(orc)
    seen: set[str] = set()
    for _ in range(12):
        with jac_splice.connect(orc.url, orc.token, route="direct") as splice:
            tm = splice.import_module("splice_testmod")
            client = session_route(splice)
            assert client.endpoint == max(listed, key=lambda a: _score(client.session, a))
            assert client.describe()["pid"] == tm.pid()
            seen.add(client.endpoint)
    assert seen == set(listed), "twelve sessions land on both replicas"


def test_a_direct_session_follows_its_replica_when_it_restarts(orc: Orchestrator) -> None:
    with jac_splice.connect(orc.url, orc.token, route="direct", call_timeout=30) as splice:
        tm = splice.import_module("splice_testmod")
        thing = tm.make_thing(3)
        before = tm.pid()
        os.kill(before, signal.SIGKILL)
        # The supervisor brings the replica back; meanwhile the session asks for access again
        # after each failure. Bounded: a replica that never comes back fails the test.
        answered = None
        for _ in range(300):
            try:
                answered = tm.pid()
                break
            except UnavailableError:
                time.sleep(0.1)
        assert answered is not None and answered != before
        # The objects of the session went with the old process.
        with pytest.raises(LookupError):
            tm.read_value(thing)


def test_deadlines_reach_both_routes(orc: Orchestrator) -> None:
    for route in ("direct", "proxy"):
        with jac_splice.connect(orc.url, orc.token, route=route, call_timeout=0.3) as splice:
            tm = splice.import_module("splice_testmod")
            with pytest.raises(DeadlineExceededError) as info:
                tm.slow(3)
            assert isinstance(info.value, TimeoutError)
            assert info.value.code == "DEADLINE_EXCEEDED"
            # A call within its deadline answers, and with_timeout overrides call_timeout.
            assert tm.identity(1) == 1
            assert jac_splice.with_timeout(tm.slow, 10)(0.5) == "done"


def test_spawned_and_async_calls_run_on_both_routes(orc: Orchestrator) -> None:
    for route in ("direct", "proxy"):
        with jac_splice.connect(orc.url, orc.token, route=route) as splice:
            tm = splice.import_module("splice_testmod")
            identity = tm.identity
            futures = [jac_splice.spawn(identity, i) for i in range(200)]
            assert [f.result(timeout=60) for f in futures] == list(range(200))
            with pytest.raises(ValueError) as info:
                jac_splice.spawn(tm.fail_value, "bad").result(timeout=60)
            assert isinstance(info.value, RemoteError)

            assert asyncio.run(asyncio.wait_for(_gather(identity, 200), 60)) == list(range(200))


@pytest.mark.parametrize("route", ["direct", "proxy"])
def test_batched_calls_answer_as_single_ones_on_both_routes(orc: Orchestrator, route: str) -> None:
    # Through ModuleProxy the batch's session picks the replica, so references made by earlier
    # calls (the released one too) are found or missed exactly as by single calls.
    with jac_splice.connect(orc.url, orc.token, route=route) as splice:
        tm = splice.import_module("splice_testmod")
        assert session_route(splice).route_kind == route
        spawned_match_sequential(tm, 1000)
        thing = tm.make_thing(3)
        futures = [jac_splice.spawn(thing.bump) for _ in range(500)]
        assert sorted(f.result(timeout=60) for f in futures) == list(range(4, 504))
        assert tm.read_value(thing) == 503


async def _gather(fn: Any, n: int) -> list[Any]:
    return await asyncio.gather(*(jac_splice.acall(fn, i) for i in range(n)))


def test_module_servers_refuse_a_direct_caller_without_the_call_token(orc: Orchestrator) -> None:
    # Direct access hands the call token only to authorized callers; the endpoint alone is useless.
    endpoint = endpoints(orc)[0]
    with pytest.raises(jac_splice.AuthenticationError):
        jac_splice.connect(endpoint, orc.token).import_module("splice_testmod")

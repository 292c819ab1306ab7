"""`connect(url)` tells a module server from jac-orc by asking the gRPC health service.

jac-orc reports SERVING for "jac.splice.v1.Orchestrator"; a module server answers NOT_FOUND for
that name and SERVING for "jac.splice.v1.ModuleService". The stand-ins below are grpcio servers
in this process that serve nothing but a health service, so only what it says can decide.
(The real jac-orc is covered in test_orchestrator_proxy.py.)
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent import futures
from typing import Any, Callable

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import jac_splice
from jac_splice import ClosedError, NotASpliceServerError, UnavailableError

ORCHESTRATOR = "jac.splice.v1.Orchestrator"

Serve = Callable[..., str]


@pytest.fixture
def grpc_server() -> Iterator[Serve]:
    """Starts grpcio servers on free loopback ports; each is stopped after the test."""
    started: list[grpc.Server] = []

    def serve(statuses: dict[str, Any] | None) -> str:
        """A server whose health service reports ``statuses`` (None: no health service)."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        if statuses is not None:
            servicer = health.HealthServicer()
            for name, status in statuses.items():
                servicer.set(name, status)
            health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        started.append(server)
        return f"127.0.0.1:{port}"

    yield serve
    for server in started:
        server.stop(None).wait(30)


def test_a_module_server_is_not_an_orchestrator(server: Any) -> None:
    splice = jac_splice.connect(server.address)
    assert splice.is_orchestrator is False
    assert splice.import_module("splice_testmod").pid() == server.proc.pid


def test_a_server_reporting_the_orchestrator_service_is_taken_for_jac_orc(
    grpc_server: Serve,
) -> None:
    # It serves no ModuleService at all, and nothing about that is asked.
    address = grpc_server({ORCHESTRATOR: health_pb2.HealthCheckResponse.SERVING})
    assert jac_splice.connect(address).is_orchestrator is True


def test_a_server_whose_health_service_knows_neither_name_is_refused_by_address(
    grpc_server: Serve,
) -> None:
    address = grpc_server({"": health_pb2.HealthCheckResponse.SERVING})
    splice = jac_splice.connect(address)
    with pytest.raises(NotASpliceServerError, match=address):
        splice.import_module("numpy")


def test_a_grpc_server_without_a_health_service_is_refused_by_address(grpc_server: Serve) -> None:
    address = grpc_server(None)
    with pytest.raises(NotASpliceServerError, match=f"{address}.*UNIMPLEMENTED"):
        _ = jac_splice.connect(address).is_orchestrator


def test_an_orchestrator_that_is_not_serving_is_unavailable(grpc_server: Serve) -> None:
    address = grpc_server({ORCHESTRATOR: health_pb2.HealthCheckResponse.NOT_SERVING})
    with pytest.raises(UnavailableError, match=f"{address} reports NOT_SERVING"):
        jac_splice.connect(address).import_module("numpy")


def test_an_address_nobody_listens_on_is_unavailable_and_named() -> None:
    with socket.socket() as s:  # a free port, released before the call
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(UnavailableError, match=f"cannot reach {address}"):
        jac_splice.connect(address).import_module("numpy")


def test_a_splice_says_what_it_is_connected_to_and_never_the_token(server: Any) -> None:
    splice = jac_splice.connect(server.address, token="secret-token-not-to-show")
    assert repr(splice) == f"<jac_splice.Splice {server.address}: not contacted yet>"
    with pytest.raises(jac_splice.AuthenticationError):
        splice.import_module("splice_testmod")  # the session server has a token of its own
    found = jac_splice.connect(server.address)
    found.import_module("splice_testmod")
    assert repr(found) == f"<jac_splice.Splice {server.address}: module server of 'splice_testmod'>"
    found.close()
    assert repr(found) == f"<jac_splice.Splice {server.address}: closed>"
    assert "secret" not in repr(splice)


def test_close_releases_what_the_proxies_hold_and_later_calls_raise_closed_error(
    server_factory: Any,
) -> None:
    server = server_factory("splice_testmod")
    observer = jac_splice.connect(server.address)
    splice = jac_splice.connect(server.address)
    tm = splice.import_module("splice_testmod")
    things = [tm.make_thing(i) for i in range(5)]
    box = tm.Box([1])
    assert observer.describe()["total_refs"] >= 6
    splice.close()
    # Released by close itself: no lease had to run out.
    assert observer.describe()["total_refs"] == 0
    assert observer.import_module("splice_testmod").live_things() == 0
    assert splice.closed
    thing = things[0]
    for attempt in (lambda: tm.pid(), lambda: thing.bump(), splice.describe):
        with pytest.raises(ClosedError, match=f"connection to {server.address} was closed"):
            attempt()
    with pytest.raises(ClosedError):
        splice.import_module("splice_testmod")
    assert repr(box) == f"<remote splice_testmod.Box on {server.address} (ClosedError)>"
    splice.close()  # again: nothing to do


def test_a_splice_is_a_context_manager_that_closes_on_exit(server_factory: Any) -> None:
    server = server_factory("splice_testmod")
    with jac_splice.connect(server.address) as splice:
        assert splice.import_module("splice_testmod").ANSWER == 42
        assert not splice.closed
    assert splice.closed
    with pytest.raises(ClosedError):
        splice.describe()

"""Which token a client sends when it is given none (see jac_splice.credentials).

The jac-orc stand-in is a grpcio server in this process: a health service reporting the
orchestrator service, and a ListDeployments that records the authorization it received.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import jac_splice
from jac_splice.credentials import find_token, orchestrator_data_dir, runtime_dir
from jac_splice.exceptions import DeploymentLookupError


@pytest.fixture
def orchestrator_stand_in() -> Iterator[tuple[str, list[str | None]]]:
    """(address, the authorization header of each ListDeployments call)."""
    seen: list[str | None] = []

    def list_deployments(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append(dict(context.invocation_metadata()).get("authorization"))  # type: ignore[arg-type]
        return b""  # an empty ListDeploymentsResponse

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("jac.splice.v1.Orchestrator", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    handler = grpc.unary_unary_rpc_method_handler(list_deployments)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "jac.splice.v1.Orchestrator", {"ListDeployments": handler}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", seen
    server.stop(None).wait(30)


def ask(address: str, **kwargs: Any) -> None:
    with pytest.raises(DeploymentLookupError):  # the stand-in has no deployments
        jac_splice.connect(f"http://{address}", **kwargs).import_module("numpy")


def test_jac_orc_on_loopback_gets_the_token_of_the_data_dir_the_client_would_use(
    orchestrator_stand_in: tuple[str, list[str | None]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address, seen = orchestrator_stand_in
    ask(address)
    monkeypatch.setenv("JAC_ORC_DATA_DIR", str(tmp_path))
    (tmp_path / "token").write_text("data-dir-admin-token\n")
    ask(address)
    monkeypatch.setenv("JAC_ORC_TOKEN", "from-the-environment")
    ask(address)
    ask(address, token="given")
    assert seen == [
        None,
        "Bearer data-dir-admin-token",
        "Bearer from-the-environment",
        "Bearer given",
    ]


def test_token_lookup_order_and_loopback_only(tmp_path: Path) -> None:
    (tmp_path / "orc").mkdir()
    (tmp_path / "orc" / "token").write_text("orc-file\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "server-50051.token").write_text("server-file\n")
    env = {
        "JAC_ORC_DATA_DIR": str(tmp_path / "orc"),
        "JAC_SPLICE_RUNTIME_DIR": str(tmp_path / "run"),
    }
    assert find_token("http://127.0.0.1:8000", "orchestrator", env) == "orc-file"
    assert find_token("http://localhost:8000", "orchestrator", env) == "orc-file"
    assert find_token("http://jac-orc.ns:8000", "orchestrator", env) is None
    assert find_token("127.0.0.1:50051", "module-server", env) == "server-file"
    assert find_token("127.0.0.2:50052", "module-server", env) is None  # another port's server
    assert find_token("10.0.0.5:50051", "module-server", env) is None
    env_tokens = dict(env, JAC_SPLICE_TOKEN="splice", JAC_ORC_TOKEN="orc")
    assert find_token("http://jac-orc.ns:8000", "orchestrator", env_tokens) == "orc"
    assert find_token("10.0.0.5:50051", "module-server", env_tokens) == "splice"
    # jac-orc's token is never offered to a module server.
    assert find_token("10.0.0.5:50051", "module-server", {"JAC_ORC_TOKEN": "orc"}) is None


def test_default_folders_follow_xdg_like_jac_orc_serve() -> None:
    assert orchestrator_data_dir({"HOME": "/h"}) == Path("/h/.local/state/jac-orc")
    assert orchestrator_data_dir({"HOME": "/h", "XDG_STATE_HOME": "/s"}) == Path("/s/jac-orc")
    assert runtime_dir({"HOME": "/h", "XDG_RUNTIME_DIR": "/run/user/7"}) == Path(
        "/run/user/7/jac-splice"
    )
    assert runtime_dir({"HOME": "/h"}) == Path("/h/.local/state/jac-splice")

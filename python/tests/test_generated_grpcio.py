"""A grpcio client generated from proto/ (grpcio-tools, as any Python user would make one) against
a real `jac-orc serve` on loopback: DryRun, the server-streaming Deploy and Undeploy read to their
ends, and errors whose `grpc-status-details-bin` trailer decodes into google.rpc.Status with its
ErrorInfo and BadRequest (grpcio-status, googleapis-common-protos).

Nothing of jac_splice is used on the client side: what passes here is what a plain grpcio user
gets. The server is started as the other orchestrator tests start it (`test_orchestrator_proxy`),
and the calls send its generated admin token as `authorization: Bearer <token>`.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from test_orchestrator_proxy import ROOT, require_binary, start_orchestrator

PROTO_DIR = ROOT / "proto" / "jac" / "splice" / "v1"
TIMEOUT = 120  # seconds, for every call: a hung server fails the test instead of the session


@dataclass
class Generated:
    pb2: ModuleType
    grpc: ModuleType


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Generated]:
    """orchestrator.proto compiled with `python -m grpc_tools.protoc` and imported."""
    out = tmp_path_factory.mktemp("generated")
    # The proto's own folder is the include root (it imports only google/protobuf/struct.proto,
    # which grpc_tools ships), so the modules are the top-level `orchestrator_pb2(_grpc)`. With
    # `-I proto` they would be `jac.splice.v1.*`, putting a top-level `jac` package on sys.path
    # of a session that also runs the Jac plugin's tests; the wire format is the same either way.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={PROTO_DIR}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "orchestrator.proto",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"protoc failed:\n{done.stdout}{done.stderr}"
    assert sorted(p.name for p in out.glob("*.py")) == [
        "orchestrator_pb2.py",
        "orchestrator_pb2_grpc.py",
    ]
    sys.path.insert(0, str(out))
    try:
        yield Generated(
            importlib.import_module("orchestrator_pb2"),
            importlib.import_module("orchestrator_pb2_grpc"),
        )
    finally:
        sys.path.remove(str(out))


@dataclass
class Connected:
    pb2: Any
    stub: Any
    metadata: tuple[tuple[str, str], ...]
    channel: grpc.Channel


@pytest.fixture(scope="module")
def orc(tmp_path_factory: pytest.TempPathFactory, generated: Generated) -> Iterator[Connected]:
    server = start_orchestrator(require_binary(), tmp_path_factory.mktemp("jac-orc-grpcio"))
    channel = grpc.insecure_channel(server.address)
    try:
        yield Connected(
            generated.pb2,
            generated.grpc.OrchestratorStub(channel),
            (("authorization", f"Bearer {server.token}"),),
            channel,
        )
    finally:
        channel.close()
        server.stop()


def struct(values: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


def details(error: grpc.RpcError) -> tuple[status_pb2.Status, dict[str, Any]]:
    """The google.rpc.Status of a failed call, and its details by message name."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no grpc-status-details-bin on {error!r}"
    unpacked: dict[str, Any] = {}
    for any_detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest):
            if any_detail.Is(kind.DESCRIPTOR):
                message = kind()
                any_detail.Unpack(message)
                unpacked[kind.DESCRIPTOR.name] = message
    return status, unpacked


def test_dry_run_returns_every_placeholder_and_the_rendered_manifests(orc: Connected) -> None:
    pb2 = orc.pb2
    request = pb2.DryRunRequest(module="redis", config=struct({"name": "cache", "memory": "256mb"}))
    response = orc.stub.DryRun(request, metadata=orc.metadata, timeout=TIMEOUT)

    assert (response.module, response.name, response.namespace) == ("redis", "cache", "default")
    assert response.version, "the version latest resolves to"
    memory = response.placeholders["memory"]
    assert memory.type == pb2.PLACEHOLDER_TYPE_STRING
    assert memory.default.string_value == "1000mb"
    assert memory.current.string_value == "256mb"
    assert memory.description
    cpu = response.placeholders["cpu"]
    assert cpu.type == pb2.PLACEHOLDER_TYPE_QUANTITY
    assert cpu.current == cpu.default, "not given: the default"
    assert response.placeholders["name"].current.string_value == "cache"

    assert response.modules, "rendered files of the version folder"
    rendered = "\n".join(response.modules.values())
    assert 'name: "cache"' in rendered and "256mb" in rendered, rendered
    assert "{{" not in rendered, "every placeholder is filled in"
    kinds = {(o.kind, o.name, o.namespace) for o in response.objects}
    assert ("Deployment", "cache", "default") in kinds, kinds
    assert ("Service", "cache", "default") in kinds, kinds
    assert all(o.section == pb2.SECTION_MODULES and o.file for o in response.objects)


def test_deploy_and_undeploy_stream_each_object_then_a_summary(orc: Connected) -> None:
    pb2 = orc.pb2
    request = pb2.DeployRequest(
        module="python-module",
        config=struct({"name": "grpcio-json", "module": "json"}),
        wait=True,
        wait_timeout_seconds=100,
    )
    events = list(orc.stub.Deploy(request, metadata=orc.metadata, timeout=TIMEOUT))

    assert [e.WhichOneof("event") for e in events[:-1]] == ["object"] * (len(events) - 1)
    assert events[-1].WhichOneof("event") == "summary", events[-1]
    objects = [e.object for e in events[:-1]]
    actions = [o.action for o in objects]
    assert all(o.line and o.object.kind and o.object.name for o in objects), objects
    # The local backend records each object, then starts the module server and reports it once
    # it answers its health check (with wait set, nothing is started that is not yet ready).
    assert actions[0] == pb2.ACTION_CREATED and actions[-1] == pb2.ACTION_STARTED, objects
    started = objects[-1]
    assert started.line == "process.local.jac-orc/grpcio-json started", started
    summary = events[-1].summary
    assert summary.created == actions.count(pb2.ACTION_CREATED) > 0
    deployment = summary.deployment
    assert (deployment.namespace, deployment.module, deployment.name) == (
        "default",
        "python-module",
        "grpcio-json",
    )
    assert deployment.status == pb2.DEPLOYMENT_STATUS_DEPLOYED, deployment
    assert deployment.backend == pb2.BACKEND_LOCAL
    assert deployment.endpoints and deployment.endpoints[0].startswith("127.0.0.1:")
    assert f"ready on {deployment.endpoints[0]} " in started.message, started
    assert deployment.config["module"] == "json"

    got = orc.stub.GetDeployment(
        pb2.GetDeploymentRequest(namespace="default", module="python-module", name="grpcio-json"),
        metadata=orc.metadata,
        timeout=TIMEOUT,
    )
    assert got.status == pb2.DEPLOYMENT_STATUS_DEPLOYED and got.endpoints == deployment.endpoints

    undeploy = pb2.UndeployRequest(namespace="default", module="python-module", name="grpcio-json")
    gone = list(orc.stub.Undeploy(undeploy, metadata=orc.metadata, timeout=TIMEOUT))
    assert gone[-1].WhichOneof("event") == "summary", gone[-1]
    removed = [e.object.action for e in gone[:-1]]
    assert gone[-1].summary.deleted == removed.count(pb2.ACTION_DELETED) > 0, gone
    with pytest.raises(grpc.RpcError) as info:
        orc.stub.GetDeployment(
            pb2.GetDeploymentRequest(
                namespace="default", module="python-module", name="grpcio-json"
            ),
            metadata=orc.metadata,
            timeout=TIMEOUT,
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_bad_value_is_invalid_argument_with_error_info_and_a_field_violation(
    orc: Connected,
) -> None:
    request = orc.pb2.DryRunRequest(module="redis", config=struct({"memory": "lots"}))
    with pytest.raises(grpc.RpcError) as info:
        orc.stub.DryRun(request, metadata=orc.metadata, timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status, found = details(info.value)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert status.message == info.value.details() and "memory" in status.message, status
    assert found["ErrorInfo"].reason == "INVALID_VALUE", found
    assert found["ErrorInfo"].domain == "jac-orc"
    violations = found["BadRequest"].field_violations
    assert [v.field for v in violations] == ["config.memory"], violations
    assert violations[0].description, violations


def test_an_unknown_deployment_is_not_found_with_its_reason(orc: Connected) -> None:
    request = orc.pb2.GetDeploymentRequest(namespace="default", module="redis", name="nope")
    with pytest.raises(grpc.RpcError) as info:
        orc.stub.GetDeployment(request, metadata=orc.metadata, timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    status, found = details(info.value)
    assert status.code == code_pb2.NOT_FOUND
    assert status.message == "deployment default/redis/nope not found", status
    assert found["ErrorInfo"].reason == "DEPLOYMENT_NOT_FOUND", found
    assert "BadRequest" not in found


def test_an_unknown_template_is_not_found_naming_the_templates_there_are(orc: Connected) -> None:
    request = orc.pb2.DryRunRequest(module="no-such-template")
    with pytest.raises(grpc.RpcError) as info:
        orc.stub.DryRun(request, metadata=orc.metadata, timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    status, found = details(info.value)
    assert found["ErrorInfo"].reason == "TEMPLATE_NOT_FOUND", found
    # Field violations come with InvalidArgument only; a NotFound names the module in its text.
    assert "BadRequest" not in found, found
    assert "no-such-template" in status.message and "redis" in status.message, status


def test_a_call_without_the_token_is_unauthenticated_with_its_reason(orc: Connected) -> None:
    with pytest.raises(grpc.RpcError) as info:
        orc.stub.ListTemplates(orc.pb2.ListTemplatesRequest(), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    _, found = details(info.value)
    assert found["ErrorInfo"].reason == "UNAUTHENTICATED", found
    # And with it, the same stub is served.
    listed = orc.stub.ListTemplates(
        orc.pb2.ListTemplatesRequest(), metadata=orc.metadata, timeout=TIMEOUT
    )
    assert "redis" in {t.module for t in listed.templates}

"""Module servers serve only callers with their call token, and only the module.

Each attack from the security issue is a test that now fails to get in: no token, a wrong token,
`@builtins.__import__("os")`, `@builtins.eval`, dunder paths to globals and code, a module
reached through the served one's attributes, a generator's frame. Health stays open for probes.
(Through jac-orc's ModuleProxy: test_orchestrator_proxy.py.)
"""

from __future__ import annotations

import inspect
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import jac_splice
from jac_splice import AuthenticationError, PermissionDeniedError, proxy
from jac_splice._native import BUILTIN_HELPERS, OPERATOR_HELPERS, SPLICE_HELPERS
from jac_splice.credentials import find_token, server_token_path

from conftest import TESTS, ModuleServerProcess, server_env

CALL_TOKEN = "test-call-token-0123456789"


@pytest.fixture
def guarded(server_factory: Any) -> ModuleServerProcess:
    """A module server whose deployment gave it CALL_TOKEN (so it writes no token file)."""
    server: ModuleServerProcess = server_factory(env={"JAC_SPLICE_CALL_TOKEN": CALL_TOKEN})
    return server


def test_a_server_with_a_call_token_refuses_callers_without_it(
    guarded: ModuleServerProcess,
) -> None:
    assert not server_token_path(guarded.port).exists()
    with pytest.raises(AuthenticationError) as info:
        jac_splice.connect(guarded.address).import_module("splice_testmod")
    message = str(info.value)
    assert info.value.code == "UNAUTHENTICATED"
    assert guarded.address in message and "No token was sent" in message, message
    assert "JAC_SPLICE_TOKEN" in message, message


def test_a_wrong_token_is_refused_and_the_right_one_serves(guarded: ModuleServerProcess) -> None:
    with pytest.raises(AuthenticationError, match="refused the token") as info:
        jac_splice.connect(guarded.address, token="not-the-token").import_module("splice_testmod")
    assert CALL_TOKEN not in str(info.value)
    tm = jac_splice.connect(guarded.address, token=CALL_TOKEN).import_module("splice_testmod")
    assert tm.pid() == guarded.proc.pid


def test_the_token_comes_from_the_environment(
    guarded: ModuleServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JAC_SPLICE_TOKEN", CALL_TOKEN)
    assert jac_splice.connect(guarded.address).import_module("splice_testmod").ANSWER == 42


def test_the_import_hook_sends_the_token(guarded: ModuleServerProcess) -> None:
    sys.modules.pop("splice_testmod", None)
    with jac_splice.remote_imports(["splice_testmod"], server=guarded.address, token=CALL_TOKEN):
        import splice_testmod  # type: ignore[import-not-found]

        assert splice_testmod.pid() == guarded.proc.pid


def raw_channel(server: ModuleServerProcess) -> grpc.Channel:
    return grpc.insecure_channel(server.address)


def test_health_answers_without_a_token_and_module_calls_are_unauthenticated(
    guarded: ModuleServerProcess,
) -> None:
    with raw_channel(guarded) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "jac.splice.v1.ModuleService", "ModuleService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        # Raw bytes: the token is checked before the request is even decoded.
        describe = channel.unary_unary("/jac.splice.v1.ModuleService/Describe")
        with pytest.raises(grpc.RpcError) as info:
            describe(b"\xff\xff garbage", timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            describe(b"", timeout=30, metadata=[("authorization", "Bearer wrong")])
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_server_started_by_hand_makes_a_token_prints_it_and_writes_it_for_its_user(
    server_factory: Any, tmp_path: Path
) -> None:
    server: ModuleServerProcess = server_factory(stderr_path=tmp_path / "stderr")
    said = server.stderr_text()
    path = server_token_path(server.port)
    token = path.read_text().strip()
    assert len(token) >= 32 and f"    {token}\n" in said, said
    assert str(path) in said and "JAC_SPLICE_TOKEN" in said, said
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # A client of the same user on this machine finds it; a wrong token still fails.
    assert jac_splice.connect(server.address).import_module("splice_testmod").ANSWER == 42
    with pytest.raises(AuthenticationError):
        jac_splice.connect(server.address, token="guess").import_module("splice_testmod")
    # Only a loopback address is offered the file's token (this asks nothing of the network).
    assert find_token(f"127.0.0.1:{server.port}", "module-server") == token
    assert find_token(f"http://[::1]:{server.port}", "module-server") == token
    assert find_token(f"192.0.2.7:{server.port}", "module-server") is None
    assert find_token(f"https://example.invalid:{server.port}", "module-server") is None
    server.stop()
    assert not path.exists(), "the token file goes with its server"


def test_no_auth_serves_anyone_and_warns_loudly(server_factory: Any, tmp_path: Path) -> None:
    server: ModuleServerProcess = server_factory(
        "splice_testmod", "--no-auth", stderr_path=tmp_path / "stderr"
    )
    assert "WARNING" in server.stderr_text() and "ANYONE" in server.stderr_text()
    assert not server_token_path(server.port).exists()
    assert jac_splice.connect(server.address).import_module("splice_testmod").ANSWER == 42


def test_the_call_token_can_come_from_a_file(server_factory: Any, tmp_path: Path) -> None:
    token_file = tmp_path / "call-token"
    token_file.write_text(CALL_TOKEN + "\n")
    server = server_factory("splice_testmod", "--call-token-file", str(token_file))
    tm = jac_splice.connect(server.address, token=CALL_TOKEN).import_module("splice_testmod")
    assert tm.ANSWER == 42


@pytest.mark.parametrize(
    "args, env, said",
    [
        (["--no-auth"], {"JAC_SPLICE_CALL_TOKEN": CALL_TOKEN}, "--no-auth contradicts"),
        ([], {"JAC_SPLICE_CALL_TOKEN": " "}, "set but empty"),
        (["--call-token-file", "/nonexistent/token"], {}, "no token in it"),
        (["--tls-cert", "/nonexistent/cert.pem"], {}, "go together"),
    ],
    ids=["no-auth-with-token", "empty-token", "missing-token-file", "cert-without-key"],
)
def test_contradictory_security_settings_stop_the_server(
    args: list[str], env: dict[str, str], said: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jac_splice.server", "splice_testmod", "--port", "0", *args],
        env=server_env(**env), cwd=str(TESTS), capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 2, result
    assert said in result.stderr, result.stderr


# -- what a caller with the token may reach -------------------------------------------------


def test_the_proxies_ask_for_no_helper_the_servers_refuse() -> None:
    source = inspect.getsource(proxy)
    builtins_used = set(re.findall(r'_jac_splice_fn\(BUILTINS, "(\w+)"', source))
    operators_used = set(re.findall(r'_jac_splice_fn\(OPERATOR, "(\w+)"', source))
    operators_used |= {*proxy._BINARY.values(), *proxy._COMPARE.values(), *proxy._UNARY.values()}
    operators_used |= {"i" + op.rstrip("_") for op in proxy._BINARY.values()}
    splice_used = set(re.findall(r'_jac_splice_fn\(SPLICE, "(\w+)"', source))
    assert {"len", "repr", "iter", "next", "setattr"} <= builtins_used
    assert builtins_used <= set(BUILTIN_HELPERS), builtins_used - set(BUILTIN_HELPERS)
    assert operators_used <= set(OPERATOR_HELPERS), operators_used - set(OPERATOR_HELPERS)
    assert splice_used == set(SPLICE_HELPERS) == {"describe"}


def test_describe_answers_text_only_and_is_the_one_splice_helper(
    guarded: ModuleServerProcess,
) -> None:
    splice = jac_splice.connect(guarded.address, token=CALL_TOKEN)
    tm = splice.import_module("splice_testmod")
    for obj in (tm, tm.make_thing, tm.make_thing(1), tm.Box, tm.builtin_max):
        said = splice.client.call("@splice", ["describe"], (obj,))
        assert all(isinstance(v, (str, bool, type(None))) for v in said.values()), said
    for name in ("signature", "getattr", "eval", "__import__"):
        with pytest.raises(PermissionDeniedError, match=f"@splice.{name} is not served"):
            splice.client.call("@splice", [name], (tm,))
    with pytest.raises(PermissionDeniedError, match="not served as an object"):
        splice.client.get_attr("@splice", ["describe"])
    with pytest.raises(TypeError, match="exactly one argument"):
        splice.client.call("@splice", ["describe"], (tm, tm))


@pytest.mark.parametrize(
    "name, args",
    [
        ("__import__", ("os",)),
        ("eval", ("1 + 1",)),
        ("exec", ("import os",)),
        ("compile", ("1", "f", "eval")),
        ("open", ("/etc/passwd",)),
        ("getattr", ("x", "upper")),
        ("globals", ()),
        ("locals", ()),
        ("vars", ()),
        ("breakpoint", ()),
        ("input", ()),
        ("memoryview", (b"x",)),
        ("type", ("X", (), {})),
    ],
)
def test_builtins_other_than_the_proxy_helpers_are_refused(
    guarded: ModuleServerProcess, name: str, args: tuple[Any, ...]
) -> None:
    client = jac_splice.connect(guarded.address, token=CALL_TOKEN).client
    with pytest.raises(PermissionDeniedError) as info:
        client.call("@builtins", [name], args)
    assert isinstance(info.value, PermissionError)
    assert f"@builtins.{name} is not served" in str(info.value), info.value


def test_operator_helpers_that_call_by_name_and_reads_of_the_reserved_targets_are_refused(
    guarded: ModuleServerProcess,
) -> None:
    client = jac_splice.connect(guarded.address, token=CALL_TOKEN).client
    for name in ("attrgetter", "methodcaller", "call"):
        with pytest.raises(PermissionDeniedError, match=f"@operator.{name} is not served"):
            client.call("@operator", [name], ("system",))
    for target in ("@builtins", "@operator"):
        with pytest.raises(PermissionDeniedError, match="not served as an object"):
            client.get_attr(target, ["len"])
    with pytest.raises(PermissionDeniedError):
        client.call("@builtins", ["len", "__self__"], ())


@pytest.mark.parametrize(
    "path",
    [
        ["make_thing", "__globals__"],
        ["make_thing", "__code__"],
        ["Thing", "__init__", "__globals__"],
        ["__class__", "__subclasses__"],
        ["__dict__"],
        ["__builtins__"],
        ["Thing", "__reduce__"],
        ["__loader__"],
    ],
    ids=lambda p: ".".join(p),
)
def test_dunder_paths_beyond_the_protocol_are_refused_on_the_module(
    guarded: ModuleServerProcess, path: list[str]
) -> None:
    client = jac_splice.connect(guarded.address, token=CALL_TOKEN).client
    dunder = next(name for name in path if name.startswith("__"))
    with pytest.raises(PermissionDeniedError, match=f'attribute "{dunder}" is not served'):
        client.get_attr("", path)
    with pytest.raises(PermissionDeniedError):
        client.call("", path, ())


def test_dunder_paths_and_dunder_setattr_are_refused_on_references(
    guarded: ModuleServerProcess,
) -> None:
    splice = jac_splice.connect(guarded.address, token=CALL_TOKEN)
    thing = splice.import_module("splice_testmod").make_thing(1)
    ref = thing._jac_splice_ref.id
    for path in (["__class__"], ["bump", "__func__"], ["bump", "__globals__"], ["__reduce_ex__"]):
        with pytest.raises(PermissionDeniedError):
            splice.client.get_attr(ref, path)
    with pytest.raises(PermissionDeniedError, match="__class__"):
        splice.client.call("@builtins", ["setattr"], (thing, "__class__", 1))
    with pytest.raises(PermissionDeniedError):
        splice.client.call("@builtins", ["delattr"], (thing, "__dict__"))
    # Ordinary attributes stay writable.
    thing.value = 41
    assert thing.bump() == 42


def test_modules_outside_the_served_one_are_not_reached_through_it(
    guarded: ModuleServerProcess,
) -> None:
    splice = jac_splice.connect(guarded.address, token=CALL_TOKEN)
    tm = splice.import_module("splice_testmod")
    # splice_testmod imports os, threading, gc...: `tm.os.system` would run anything.
    with pytest.raises(PermissionDeniedError, match="outside the served module"):
        tm.os  # noqa: B018
    with pytest.raises(PermissionDeniedError, match='"os" is the module "os"'):
        splice.client.call("", ["os", "system"], ("true",))


def test_a_generators_frame_is_not_reached_but_it_still_iterates(
    guarded: ModuleServerProcess,
) -> None:
    splice = jac_splice.connect(guarded.address, token=CALL_TOKEN)
    tm = splice.import_module("splice_testmod")
    generator = tm.count_up(3)
    with pytest.raises(PermissionDeniedError, match="interpreter internals"):
        splice.client.get_attr(generator._jac_splice_ref.id, ["gi_frame"])
    with pytest.raises(PermissionDeniedError, match="interpreter internals"):
        splice.client.get_attr(generator._jac_splice_ref.id, ["gi_code"])
    assert list(generator) == [0, 1, 2]


def test_proxies_answer_unserved_dunders_locally_as_missing(
    guarded: ModuleServerProcess,
) -> None:
    tm = jac_splice.connect(guarded.address, token=CALL_TOKEN).import_module("splice_testmod")
    box = tm.Box([1, 2])
    # What local libraries probe on any object stays a plain "no".
    assert not hasattr(box, "__array_interface__")
    assert not hasattr(tm, "__globals__")
    # The protocol's own dunders and the proxy protocols still work.
    assert tm.__version__ == "1.2.3" and tm.Box.__name__ == "Box"
    assert len(box) == 2 and list(box) == [1, 2] and box[1] == 2 and str(box) == "Box([1, 2])"
    assert (box + [3]).items == [1, 2, 3] and box == tm.Box([1, 2]) and 2 in box
    assert f"{box}" == "Box([1, 2])" and "make_thing" in dir(tm)
    with box as entered:  # __enter__/__exit__ through the proxy
        assert entered.items == [1, 2]
    assert box.items == [1, 2, "exited"]
    assert tm.pid() == guarded.proc.pid != os.getpid()

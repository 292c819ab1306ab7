"""Remote exceptions, transport failures, import failures and message limits."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from typing import Any

import pytest

import jac_splice
from jac_splice import NotFoundError, RemoteError, ResourceExhaustedError, UnavailableError

from conftest import TESTS, server_env


def test_remote_value_error_is_a_value_error_with_the_remote_traceback(tm: Any) -> None:
    with pytest.raises(ValueError, match="bad input") as info:
        tm.fail_value("bad input")
    assert isinstance(info.value, RemoteError)
    assert info.value.remote_type == "ValueError"
    assert "fail_value" in info.value.remote_traceback


def test_non_builtin_remote_exceptions_match_their_builtin_base(tm: Any) -> None:
    with pytest.raises(KeyError) as info:
        tm.fail_custom("k")
    assert info.value.remote_type == "splice_testmod.CustomKeyError"


def test_missing_attribute_is_an_attribute_error(tm: Any) -> None:
    with pytest.raises(AttributeError):
        tm.no_such_function()
    assert not hasattr(tm, "no_such_attribute")


def test_module_that_fails_to_import_exits_with_the_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jac_splice.server", "broken_mod", "--port", "0"],
        env=server_env(),
        cwd=str(TESTS),
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "boom-xyz" in result.stderr


def test_oversize_messages_are_resource_exhausted_and_the_server_keeps_serving(
    server_factory: Any,
) -> None:
    server = server_factory("splice_testmod", "--max-message-mb", "1")
    tm = jac_splice.connect(server.address).import_module("splice_testmod")
    with pytest.raises(ResourceExhaustedError):
        tm.identity(b"x" * (2 << 20))
    with pytest.raises(ResourceExhaustedError):
        tm.big_bytes(2 << 20)
    assert tm.identity(b"small") == b"small"


def test_server_killed_mid_call_fails_fast_and_a_restart_serves_again(server_factory: Any) -> None:
    # A deployment's token outlives its server (a hand-started server makes a new one each start).
    token = {"JAC_SPLICE_CALL_TOKEN": "restart-call-token"}
    server = server_factory(env=token)
    splice = jac_splice.connect(server.address, "restart-call-token")
    tm = splice.import_module("splice_testmod")
    errors: list[BaseException] = []

    def call() -> None:
        try:
            tm.slow(60)
        except BaseException as e:  # noqa: BLE001 - recorded for the assertion
            errors.append(e)

    caller = threading.Thread(target=call)
    caller.start()
    assert tm.pid() == server.proc.pid  # the slow call is in flight on another stream
    server.proc.kill()
    caller.join(15)
    assert not caller.is_alive()
    assert errors and isinstance(errors[0], UnavailableError), errors
    restarted = server_factory(port=server.port, env=token)
    assert tm.pid() == restarted.proc.pid


def test_transport_errors_name_the_address(server_factory: Any) -> None:
    server = server_factory("splice_testmod")
    splice = jac_splice.connect(server.address)
    tm = splice.import_module("splice_testmod")
    with pytest.raises(NotFoundError, match=f"^NOT_FOUND: {re.escape(server.address)}: unknown"):
        splice.client.call("r-no-such-id", [], ())
    assert tm.pid() == server.proc.pid
    server.stop()
    with pytest.raises(UnavailableError) as info:
        tm.pid()
    assert server.address in str(info.value), info.value

"""Fixtures that start module servers (`python -m jac_splice.server`) on free loopback ports.

Servers started without a token make one and write it to the runtime dir, which is a fresh
folder for the test session (`JAC_SPLICE_RUNTIME_DIR`): clients in the tests find it there as a
user's client on a laptop would. No token from the caller's environment leaks in.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

import jac_splice
from jac_splice.server import LISTENING

TESTS = Path(__file__).parent
TOKEN_VARIABLES = ("JAC_SPLICE_TOKEN", "JAC_ORC_TOKEN", "JAC_SPLICE_CALL_TOKEN", "JAC_ORC_DATA_DIR")


@pytest.fixture(scope="session", autouse=True)
def runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A runtime dir of the session's own, and no tokens from the environment."""
    saved = {name: os.environ.pop(name) for name in TOKEN_VARIABLES if name in os.environ}
    path = tmp_path_factory.mktemp("runtime")
    folders = {
        "JAC_SPLICE_RUNTIME_DIR": str(path),
        # Empty: a jac-orc on loopback gets this user's admin token only where a test puts one.
        "JAC_ORC_DATA_DIR": str(tmp_path_factory.mktemp("jac-orc-data")),
    }
    saved.update({name: os.environ[name] for name in folders if name in os.environ})
    os.environ.update(folders)
    yield path
    for name in folders:
        os.environ.pop(name, None)
    os.environ.update(saved)


def server_env(**extra: str) -> dict:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    return env


@dataclass
class ModuleServerProcess:
    proc: subprocess.Popen
    port: int
    stderr_path: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def stderr_text(self) -> str:
        """What the server wrote to stderr so far (started with ``stderr_path``)."""
        assert self.stderr_path is not None
        return self.stderr_path.read_text()


def _read_line(proc: subprocess.Popen, timeout: float) -> str | None:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else None


def start_server(
    module: str,
    *args: str,
    port: int = 0,
    env: dict[str, str] | None = None,
    stderr_path: Path | None = None,
    python: str = sys.executable,
    base_env: dict[str, str] | None = None,
) -> ModuleServerProcess:
    """Starts a module server; ``env`` adds variables (to ``base_env``, else this process's
    environment with the tests folder on PYTHONPATH), ``stderr_path`` keeps its stderr there,
    ``python`` is the interpreter that runs it."""
    stderr = open(stderr_path, "w") if stderr_path else subprocess.PIPE  # noqa: SIM115
    proc = subprocess.Popen(
        [python, "-m", "jac_splice.server", module, "--port", str(port), *args],
        env=dict(base_env, **(env or {})) if base_env is not None else server_env(**(env or {})),
        cwd=str(TESTS),  # not python/, whose jac_splice source would shadow the installed one
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    if stderr_path:
        stderr.close()  # type: ignore[union-attr]
    line = _read_line(proc, 30)
    if not line or not line.startswith(LISTENING):
        proc.kill()
        _, err = proc.communicate(timeout=10)
        err = stderr_path.read_text() if stderr_path else err
        raise RuntimeError(f"module server did not start: {line!r} {err}")
    return ModuleServerProcess(proc, int(line.rsplit(":", 1)[1]), stderr_path)


@pytest.fixture
def server_factory() -> Iterator[Callable[..., ModuleServerProcess]]:
    started: list[ModuleServerProcess] = []

    def factory(
        module: str = "splice_testmod",
        *args: str,
        port: int = 0,
        env: dict[str, str] | None = None,
        stderr_path: Path | None = None,
        python: str = sys.executable,
        base_env: dict[str, str] | None = None,
    ) -> ModuleServerProcess:
        server = start_server(
            module,
            *args,
            port=port,
            env=env,
            stderr_path=stderr_path,
            python=python,
            base_env=base_env,
        )
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server() -> Iterator[ModuleServerProcess]:
    s = start_server("splice_testmod")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def splice(server: ModuleServerProcess) -> jac_splice.Splice:
    return jac_splice.connect(server.address)


@pytest.fixture(scope="session")
def tm(splice: jac_splice.Splice) -> jac_splice.RemoteModule:
    return splice.import_module("splice_testmod")

"""Fixtures that start module servers (`python -m jac_splice.server`) on free loopback ports."""

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


def server_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    return env


@dataclass
class ModuleServerProcess:
    proc: subprocess.Popen
    port: int

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


def _read_line(proc: subprocess.Popen, timeout: float) -> str | None:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else None


def start_server(module: str, *args: str, port: int = 0) -> ModuleServerProcess:
    proc = subprocess.Popen(
        [sys.executable, "-m", "jac_splice.server", module, "--port", str(port), *args],
        env=server_env(),
        cwd=str(TESTS),  # not python/, whose jac_splice source would shadow the installed one
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = _read_line(proc, 30)
    if not line or not line.startswith(LISTENING):
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise RuntimeError(f"module server did not start: {line!r} {err}")
    return ModuleServerProcess(proc, int(line.rsplit(":", 1)[1]))


@pytest.fixture
def server_factory() -> Iterator[Callable[..., ModuleServerProcess]]:
    started: list[ModuleServerProcess] = []

    def factory(module: str = "splice_testmod", *args: str, port: int = 0) -> ModuleServerProcess:
        server = start_server(module, *args, port=port)
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

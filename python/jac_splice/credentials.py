"""Where tokens come from when ``connect()`` is given none, and where servers leave them.

A client sends, once it knows what the target is (its gRPC health service says, unauthenticated):

* to jac-orc: ``JAC_ORC_TOKEN``, else ``JAC_SPLICE_TOKEN``, else, when jac-orc is on loopback,
  ``<data dir>/token`` of the data dir ``jac-orc serve`` would use as this user
  (``JAC_ORC_DATA_DIR``, else ``$XDG_STATE_HOME/jac-orc``, else ``~/.local/state/jac-orc``);
* to a module server: ``JAC_SPLICE_TOKEN``, else, when it is on loopback, the token file a
  module server started by hand writes for its port (``server-PORT.token`` in the runtime dir:
  ``JAC_SPLICE_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/jac-splice``, else
  ``$XDG_STATE_HOME/jac-splice`` or ``~/.local/state/jac-splice``).

Files are read only for loopback targets: they hold this user's secrets for this machine's
servers, and are never offered to a remote address.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

Kind = Literal["orchestrator", "module-server"]


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _state_home(env: Mapping[str, str]) -> Path:
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"])
    return Path(env.get("HOME") or Path.home()) / ".local" / "state"


def orchestrator_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The data dir ``jac-orc serve`` uses by default, as its own default is computed."""
    env = _environ(environ)
    if env.get("JAC_ORC_DATA_DIR"):
        return Path(env["JAC_ORC_DATA_DIR"])
    return _state_home(env) / "jac-orc"


def runtime_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where module servers started by hand write their generated token files."""
    env = _environ(environ)
    if env.get("JAC_SPLICE_RUNTIME_DIR"):
        return Path(env["JAC_SPLICE_RUNTIME_DIR"])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "jac-splice"
    return _state_home(env) / "jac-splice"


def server_token_path(port: int, environ: Mapping[str, str] | None = None) -> Path:
    return runtime_dir(environ) / f"server-{port}.token"


def host_port(target: str) -> tuple[str, int | None]:
    """The host and port of ``"host:port"`` or ``"http(s)://host:port/..."``."""
    parts = urlsplit(target if "://" in target else f"http://{target}")
    port = parts.port
    if port is None:
        port = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.hostname or "", port


def is_loopback(host: str) -> bool:
    """``localhost`` (and ``*.localhost``), 127.0.0.0/8 or ``::1``, as jac-orc's CLI decides."""
    host = host.rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token_file(path: Path) -> str | None:
    """The token in ``path`` (its first line; of a ``token,user,groups`` line the token), if any."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        token = line.split(",", 1)[0].strip()
        if token:
            return token
    return None


def find_token(target: str, kind: Kind, environ: Mapping[str, str] | None = None) -> str | None:
    """The token to send to ``target`` (a ``kind`` server) when the caller gave none."""
    env = _environ(environ)
    names = (
        ["JAC_ORC_TOKEN", "JAC_SPLICE_TOKEN"] if kind == "orchestrator" else ["JAC_SPLICE_TOKEN"]
    )
    for name in names:
        if env.get(name):
            return env[name]
    host, port = host_port(target)
    if not is_loopback(host):
        return None
    if kind == "orchestrator":
        return read_token_file(orchestrator_data_dir(env) / "token")
    return None if port is None else read_token_file(server_token_path(port, env))


def new_token() -> str:
    """A fresh call token: 256 random bits, URL-safe text."""
    return secrets.token_urlsafe(32)


def write_private(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` readable by this user only (0600, in a 0700 folder it makes)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Created 0600 from the start (never briefly readable by others); an old file is replaced.
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")

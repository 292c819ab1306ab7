"""The module server: ``python -m jac_splice.server MODULE [--host H] [--port P]``.

Imports MODULE (``-`` in the name becomes ``_``) and serves it over gRPC (``ModuleService`` plus
the standard health service, SERVING for "", "jac.splice.v1.ModuleService" and "ModuleService").
Once listening it prints one line to stdout::

    jac-splice module server listening on 127.0.0.1:PORT

Every call but health must carry ``authorization: Bearer <call token>``. The token comes from
``JAC_SPLICE_CALL_TOKEN`` or ``--call-token-file`` (jac-orc gives its deployments one); with
neither, the server makes one, prints it to stderr once and writes it to a 0600 file for its
port, where clients of the same user on this machine find it (see
:mod:`jac_splice.credentials`); the file is removed when the server stops. ``--no-auth`` serves
anyone who reaches the port (trusted test rigs only) and says so loudly. ``--tls-cert`` and
``--tls-key`` (PEM) make it serve TLS only (clients use an ``https://`` URL).

If MODULE cannot be imported it prints the error to stderr and exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType

from jac_splice._native import ModuleServer
from jac_splice.credentials import new_token, read_token_file, server_token_path, write_private

LISTENING = "jac-splice module server listening on"
CALL_TOKEN_ENV = "JAC_SPLICE_CALL_TOKEN"


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jac_splice.server", description="Serve a Python module over gRPC."
    )
    parser.add_argument("module", help="module to import and serve, e.g. numpy")
    parser.add_argument("--host", default=os.environ.get("JAC_SPLICE_HOST", "127.0.0.1"))
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("JAC_SPLICE_PORT", "50051")),
        help="0 picks a free port (printed on startup)",
    )
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=_env_float("JAC_SPLICE_LEASE_SECONDS", 60.0),
        help="a session's references are freed this long after its last request",
    )
    parser.add_argument(
        "--max-message-mb",
        type=float,
        default=_env_float("JAC_SPLICE_MAX_MESSAGE_MB", 1024.0),
        help="largest request or response, in MiB (larger: RESOURCE_EXHAUSTED)",
    )
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument(
        "--call-token-file",
        type=Path,
        help=f"read the call token from this file (else ${CALL_TOKEN_ENV}; with neither, "
        "one is generated and written to a 0600 file)",
    )
    auth.add_argument(
        "--no-auth",
        action="store_true",
        help="serve anyone who can reach the port, without a token (trusted test rigs only)",
    )
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve TLS only")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    return args


class ConfigError(Exception):
    """The server's security settings contradict each other or cannot be read."""


def configured_token(args: argparse.Namespace) -> str | None:
    """The call token given by the deployment (file or environment), if any."""
    from_env = os.environ.get(CALL_TOKEN_ENV)
    if args.call_token_file is not None:
        token = read_token_file(args.call_token_file)
        if token is None:
            raise ConfigError(f"--call-token-file {args.call_token_file}: no token in it")
        return token
    if from_env is not None:
        if not from_env.strip():
            raise ConfigError(f"{CALL_TOKEN_ENV} is set but empty")
        if args.no_auth:
            raise ConfigError(f"--no-auth contradicts {CALL_TOKEN_ENV}, which is set")
        return from_env.strip()
    return None


def import_served(name: str) -> object:
    return importlib.import_module(name.replace("-", "_"))


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _announce_generated(token: str, host: str, port: int) -> Path | None:
    """Writes the generated token to this port's 0600 file and tells how to use it, once."""
    path = server_token_path(port)
    written: Path | None = path
    try:
        write_private(path, token)
        where = (
            f"It is also in {path} (mode 0600), where jac_splice.connect() finds it for this user."
        )
    except OSError as e:
        where = f"(It could not be written to {path}: {e}.)"
        written = None
    _say(
        "jac-splice: no call token was given, so this server made one; callers must send it:\n"
        f"    {token}\n"
        f"  {where}\n"
        f'  Elsewhere: jac_splice.connect("{host}:{port}", token="...") or JAC_SPLICE_TOKEN=...\n'
        f"  (Choose the token with {CALL_TOKEN_ENV} or --call-token-file; --no-auth serves anyone.)"
    )
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        token = configured_token(args)
        tls_cert = args.tls_cert.read_bytes() if args.tls_cert else None
        tls_key = args.tls_key.read_bytes() if args.tls_key else None
    except (ConfigError, OSError) as e:
        _say(f"jac-splice: {e}")
        return 2
    generated = token is None and not args.no_auth
    if generated:
        token = new_token()
    try:
        module = import_served(args.module)
    except BaseException as e:  # noqa: BLE001 - report any import failure, then exit
        _say(f"jac-splice: cannot import module {args.module!r}: {e!r}")
        sys.stderr.write(traceback.format_exc())
        return 1
    server = ModuleServer(
        module,
        call_token=token,
        host=args.host,
        port=args.port,
        lease_seconds=args.lease_seconds,
        max_message_bytes=int(args.max_message_mb * (1 << 20)),
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    signal.signal(signal.SIGTERM, _stop)
    token_file = None
    if args.no_auth:
        _say(
            "jac-splice: WARNING: --no-auth: this server runs code for ANYONE who can reach "
            f"{args.host}:{server.port} (the served module, and whatever it can do). "
            "Use it only on a trusted test rig."
        )
    elif generated:
        assert token is not None
        token_file = _announce_generated(token, args.host, server.port)
    print(f"{LISTENING} {args.host}:{server.port}", flush=True)
    try:
        server.wait()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.stop()
        # Only our own token: a server started later on this port may have replaced it.
        if token_file is not None and read_token_file(token_file) == token:
            token_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The module server: ``python -m jac_splice.server MODULE [--host H] [--port P]``.

Imports MODULE (``-`` in the name becomes ``_``) and serves it over gRPC (``ModuleService`` plus
the standard health service, SERVING for "", "jac.splice.v1.ModuleService" and "ModuleService").
Once listening it prints one line to stdout::

    jac-splice module server listening on 127.0.0.1:PORT

If MODULE cannot be imported it prints the error to stderr and exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import traceback
from types import FrameType

from jac_splice._native import ModuleServer

LISTENING = "jac-splice module server listening on"


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
    return parser.parse_args(argv)


def import_served(name: str) -> object:
    return importlib.import_module(name.replace("-", "_"))


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        module = import_served(args.module)
    except BaseException as e:  # noqa: BLE001 - report any import failure, then exit
        sys.stderr.write(f"jac-splice: cannot import module {args.module!r}: {e!r}\n")
        sys.stderr.write(traceback.format_exc())
        return 1
    server = ModuleServer(
        module,
        host=args.host,
        port=args.port,
        lease_seconds=args.lease_seconds,
        max_message_bytes=int(args.max_message_mb * (1 << 20)),
    )
    signal.signal(signal.SIGTERM, _stop)
    print(f"{LISTENING} {args.host}:{server.port}", flush=True)
    try:
        server.wait()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

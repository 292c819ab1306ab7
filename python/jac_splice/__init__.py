"""jac_splice: use a Python module that runs in another process as if it were imported here.

>>> np = jac_splice.connect("127.0.0.1:50051").import_module("numpy")
>>> np.array([1, 2, 3, 4]).sum()
10
"""

from typing import TYPE_CHECKING, Any

from jac_splice._native import __version__
from jac_splice.exceptions import (
    AuthenticationError,
    ClosedError,
    DeadlineExceededError,
    DeploymentLookupError,
    NotASpliceServerError,
    NotFoundError,
    NumpyRequiredError,
    PermissionDeniedError,
    RemoteError,
    ResourceExhaustedError,
    SpliceError,
    TransportError,
    UnavailableError,
)

if TYPE_CHECKING:
    from jac_splice.calls import TimedCallable, acall, spawn, with_timeout
    from jac_splice.client import Splice, connect
    from jac_splice.importer import RemoteImports, remote_imports
    from jac_splice.proxy import RemoteCallable, RemoteModule, RemoteObject

# The client side is imported on first use (PEP 562), so `python -m jac_splice.server` (a module
# server waking from zero) does not pay for it: a module server starts faster.
_LAZY = {
    "TimedCallable": "jac_splice.calls",
    "acall": "jac_splice.calls",
    "spawn": "jac_splice.calls",
    "with_timeout": "jac_splice.calls",
    "Splice": "jac_splice.client",
    "connect": "jac_splice.client",
    "RemoteImports": "jac_splice.importer",
    "remote_imports": "jac_splice.importer",
    "RemoteCallable": "jac_splice.proxy",
    "RemoteModule": "jac_splice.proxy",
    "RemoteObject": "jac_splice.proxy",
}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'jac_splice' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AuthenticationError",
    "ClosedError",
    "DeadlineExceededError",
    "DeploymentLookupError",
    "NotASpliceServerError",
    "NotFoundError",
    "NumpyRequiredError",
    "PermissionDeniedError",
    "RemoteCallable",
    "RemoteError",
    "RemoteImports",
    "RemoteModule",
    "RemoteObject",
    "ResourceExhaustedError",
    "Splice",
    "SpliceError",
    "TimedCallable",
    "TransportError",
    "UnavailableError",
    "__version__",
    "acall",
    "connect",
    "remote_imports",
    "spawn",
    "with_timeout",
]

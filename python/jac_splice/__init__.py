"""jac_splice: use a Python module that runs in another process as if it were imported here.

>>> np = jac_splice.connect("127.0.0.1:50051").import_module("numpy")
>>> np.array([1, 2, 3, 4]).sum()
10
"""

from jac_splice._native import __version__
from jac_splice.calls import TimedCallable, acall, spawn, with_timeout
from jac_splice.client import Splice, connect
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
from jac_splice.importer import RemoteImports, remote_imports
from jac_splice.proxy import RemoteCallable, RemoteModule, RemoteObject

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

"""Exceptions raised by jac_splice.

A Python exception raised in the module server arrives as a :class:`RemoteError` subclass that is
also an instance of the matching builtin exception, so ``except ValueError`` catches a remote
``ValueError`` and ``hasattr`` sees a remote ``AttributeError``. Its ``remote_traceback`` holds the
server-side traceback (also attached as a note). Transport failures raise :class:`TransportError`
subclasses named after the gRPC status code (a call past its timeout raises
:class:`DeadlineExceededError`, a ``TimeoutError``); a refused call raises :class:`AuthenticationError`
(no token, or a wrong one) or :class:`PermissionDeniedError` (not served to this caller), each
naming the address and what to do. Transport errors of a call through jac-orc also name the
python-module deployment (``default/numpy``) it was for.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Sequence


class SpliceError(Exception):
    """Base class of every jac_splice error."""


class RemoteError(SpliceError):
    """An exception raised by the remote module (see ``remote_type`` and ``remote_traceback``)."""

    remote_type: str = ""
    remote_message: str = ""
    remote_traceback: str = ""
    builtin_bases: tuple[str, ...] = ()


class TransportError(SpliceError):
    """The request did not complete: ``code`` is the gRPC status code name (``"UNAVAILABLE"``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class UnavailableError(TransportError, ConnectionError):
    """The module server (or jac-orc) cannot be reached, or the connection broke mid-call."""


class DeadlineExceededError(TransportError, TimeoutError):
    """The call did not complete within its timeout (``connect(call_timeout=...)``,
    :func:`jac_splice.with_timeout`); the module server was told the same deadline."""


class NotFoundError(TransportError, LookupError):
    """The server does not know a reference id (released, expired, or from another session)."""


class ResourceExhaustedError(TransportError):
    """A message was larger than the receiver's limit (``--max-message-mb``)."""


class AuthenticationError(TransportError):
    """The server refused the call's credentials (``UNAUTHENTICATED``): no token was sent, or
    the wrong one. Pass ``connect(url, token=...)`` or set ``JAC_SPLICE_TOKEN``/``JAC_ORC_TOKEN``."""


class PermissionDeniedError(TransportError, PermissionError):
    """The server does not serve this request (``PERMISSION_DENIED``): a builtin or attribute
    outside what module servers offer, or, at jac-orc, an action this caller is not allowed."""


class NotASpliceServerError(SpliceError):
    """The address answers, but neither as jac-orc nor as a jac-splice module server."""


class DeploymentLookupError(SpliceError, LookupError):
    """jac-orc has no single python-module deployment for the requested module."""


class ClosedError(SpliceError):
    """A call on a connection (or one of its proxies) after :meth:`Splice.close`."""


class NumpyRequiredError(SpliceError, ImportError):
    """A numpy array (or a scalar only numpy can hold) arrived where numpy cannot be imported.

    numpy is optional for clients: install it with ``pip install 'jac-splice[numpy]'``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, name="numpy")


_TRANSPORT_CLASSES: dict[str, type[TransportError]] = {
    "UNAVAILABLE": UnavailableError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
    "NOT_FOUND": NotFoundError,
    "RESOURCE_EXHAUSTED": ResourceExhaustedError,
    "UNAUTHENTICATED": AuthenticationError,
    "PERMISSION_DENIED": PermissionDeniedError,
}

_remote_classes: dict[str, type[RemoteError]] = {}
_lock = threading.Lock()


def _transport_error(code: str, message: str) -> TransportError:
    return _TRANSPORT_CLASSES.get(code, TransportError)(code, message)


def _builtin_base(names: Sequence[str]) -> type[BaseException] | None:
    for name in names:
        candidate = getattr(builtins, name, None)
        if (
            isinstance(candidate, type)
            and issubclass(candidate, Exception)
            and candidate is not Exception
        ):
            return candidate
    return None


def remote_error_class(builtin_bases: Sequence[str]) -> type[RemoteError]:
    """The RemoteError subclass for a remote exception whose builtin bases are ``builtin_bases``."""
    base = _builtin_base(builtin_bases)
    if base is None:
        return RemoteError
    with _lock:
        cls = _remote_classes.get(base.__name__)
        if cls is None:
            try:
                created = type(f"Remote{base.__name__}", (RemoteError, base), {})
            except TypeError:  # a builtin whose layout cannot be mixed in
                return RemoteError
            created.__module__ = __name__
            cls = _remote_classes[base.__name__] = created
        return cls


def _remote_error(
    remote_type: str, message: str, traceback: str, builtin_bases: list[str]
) -> RemoteError:
    cls = remote_error_class(builtin_bases)
    exc = cls(f"{remote_type}: {message}" if message else remote_type)
    exc.remote_type = remote_type
    exc.remote_message = message
    exc.remote_traceback = traceback
    exc.builtin_bases = tuple(builtin_bases)
    if traceback and hasattr(exc, "add_note"):  # Python >= 3.11
        exc.add_note("Remote traceback (module server):\n" + traceback.rstrip())
    return exc


__all__ = [
    "AuthenticationError",
    "ClosedError",
    "DeadlineExceededError",
    "DeploymentLookupError",
    "NotASpliceServerError",
    "NotFoundError",
    "NumpyRequiredError",
    "PermissionDeniedError",
    "RemoteError",
    "ResourceExhaustedError",
    "SpliceError",
    "TransportError",
    "UnavailableError",
    "remote_error_class",
]

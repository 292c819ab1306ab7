"""Pipelined, async and time-bounded calls of remote callables.

Module-level functions, so no attribute name is taken from remote objects:

>>> add = tm.add
>>> futures = [jac_splice.spawn(add, i, 1) for i in range(1000)]  # sent at once, pipelined
>>> [f.result() for f in futures][:3]
[1, 2, 3]
>>> await jac_splice.acall(add, 2, 3)  # asyncio, never blocking the event loop
5
>>> jac_splice.with_timeout(tm.slow, 0.5)()  # DeadlineExceededError after 0.5 s

:func:`spawn` and :func:`acall` send the call as a task of the native runtime over the
connection's pooled HTTP/2 channels (no thread per call); its completion settles a
:class:`concurrent.futures.Future` or an asyncio future. Calls of one session that are made
while two requests of it are on the wire wait, and go together as one ``CallBatch`` when one
returns: the module server runs a batch's calls one after another, in order, each answering
or raising as it would alone. While a request has been on the wire for long (slow served
code), waiting calls go singly instead, so slow calls still run side by side. A timeout (the
connection's ``call_timeout``, or :func:`with_timeout`'s) travels to the module server as the
call's gRPC deadline; its expiry raises :class:`~jac_splice.exceptions.DeadlineExceededError`.
"""

from __future__ import annotations

import concurrent.futures
import math
from typing import TYPE_CHECKING, Any

from jac_splice._native import Client, PendingCall
from jac_splice.proxy import RemoteCallable, wrap

if TYPE_CHECKING:
    import asyncio


class TimedCallable:
    """A remote callable whose calls have their own timeout (see :func:`with_timeout`)."""

    __slots__ = ("__wrapped__", "timeout")

    def __init__(self, fn: RemoteCallable, timeout: float) -> None:
        self.__wrapped__ = fn
        self.timeout = timeout

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        client, target = _target(self.__wrapped__, "fn")
        return wrap(client, client.call(target, [], args, kwargs or None, timeout=self.timeout))

    def __repr__(self) -> str:
        return f"<{self.__wrapped__!r} with a timeout of {self.timeout:g} s>"


def _seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not (math.isfinite(value) and 0 < value < 1e9):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _target(fn: object, name: str) -> tuple[Client, str]:
    if not isinstance(fn, RemoteCallable):
        raise TypeError(
            f"{name} must be a remote callable (a function, class or method of a module imported "
            f"with jac_splice), got {type(fn).__name__}"
        )
    return fn._jac_splice_client, fn._jac_splice_target


def _unwrap(fn: object) -> tuple[Client, str, float | None]:
    if isinstance(fn, TimedCallable):
        client, target = _target(fn.__wrapped__, "fn")
        return client, target, fn.timeout
    client, target = _target(fn, "fn")
    return client, target, None


def with_timeout(fn: RemoteCallable | TimedCallable, seconds: float) -> TimedCallable:
    """``fn`` whose every call (direct, :func:`spawn`, :func:`acall`) gives up after ``seconds``
    with :class:`~jac_splice.exceptions.DeadlineExceededError`; overrides ``call_timeout``."""
    inner = fn.__wrapped__ if isinstance(fn, TimedCallable) else fn
    _target(inner, "fn")
    return TimedCallable(inner, _seconds(seconds, "seconds"))


def _start(fn: object, args: tuple[Any, ...], kwargs: dict[str, Any], done: Any) -> PendingCall:
    client, target, timeout = _unwrap(fn)
    # The callable's and the arguments' proxies live until the call is answered: a call may wait
    # for a batch, and a proxy collected meanwhile would release its reference before the call
    # that uses it reaches the module server.
    held = (fn, args, kwargs)

    def settle(ok: bool, value: Any, held: object = held) -> None:
        done(ok, wrap(client, value) if ok else value)

    return client.call_async(target, [], args, kwargs or None, timeout, settle)


class _Spawned(concurrent.futures.Future[Any]):
    """The future of a spawned call: cancelling it abandons the call."""

    _jac_splice_pending: PendingCall | None = None

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        pending, self._jac_splice_pending = self._jac_splice_pending, None
        if pending is not None:  # the first cancel() only
            pending.cancel()
            # Its callback will not come to do it: tell concurrent.futures.wait() and
            # as_completed() now, as an executor does for a cancelled work item.
            self.set_running_or_notify_cancel()
        return True


def spawn(
    fn: RemoteCallable | TimedCallable, /, *args: Any, **kwargs: Any
) -> concurrent.futures.Future[Any]:
    """Sends ``fn(*args, **kwargs)`` without waiting and returns its future.

    The arguments are encoded now (so later changes to them do not travel); many spawned calls
    are in flight at once, batched on the wire. ``future.cancel()`` abandons the call: one still
    waiting for a batch is never sent; one already sent may still run on the module server.
    """
    client, target, timeout = _unwrap(fn)
    future = _Spawned()
    # As in _start, and in one closure: this is the per-call path of a burst of calls.
    held = (fn, args, kwargs)

    def done(ok: bool, value: Any, held: object = held) -> None:
        # One lock round instead of two (no RUNNING state in between): set_result refuses a
        # future cancelled meanwhile, whose cancel() has told the waiters already.
        try:
            if ok:
                future.set_result(wrap(client, value))
            else:
                future.set_exception(value)
        except concurrent.futures.InvalidStateError:
            pass

    future._jac_splice_pending = client.call_async(target, [], args, kwargs or None, timeout, done)
    return future


async def acall(fn: RemoteCallable | TimedCallable, /, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` awaited without blocking the event loop (or starting a thread).

    Cancelling the awaiting task abandons the call.
    """
    import asyncio  # here, not at the top: importing asyncio costs every importer ~10 ms

    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def done(ok: bool, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(settle, ok, value)
        except RuntimeError:  # the loop was closed meanwhile: nobody waits any more
            pass

    pending = _start(fn, args, kwargs, done)
    try:
        return await future
    finally:
        if not future.done() or future.cancelled():
            pending.cancel()


__all__ = ["TimedCallable", "acall", "spawn", "with_timeout"]

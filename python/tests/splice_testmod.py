"""The module the tests serve (imported by the module server subprocess)."""

from __future__ import annotations

import gc
import os
import threading
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Python 3.9's typing has no Self
    from typing_extensions import Self

__version__ = "1.2.3"

ANSWER = 42
_live: weakref.WeakSet[Thing] = weakref.WeakSet()
_UNSET = object()  # a default whose repr ("<object object at 0x...>") is no Python literal
builtin_max = max  # a builtin without a signature


class CustomKeyError(KeyError):
    """A non-builtin exception deriving from a builtin one."""


class Thing:
    def __init__(self, value: int) -> None:
        self.value = value
        _live.add(self)

    def bump(self, by: int = 1) -> int:
        self.value += by
        return self.value

    def __bytes__(self) -> bytes:
        return str(self.value).encode()

    def __complex__(self) -> complex:
        return complex(self.value, 1)


class Box:
    """A container exercising the forwarded protocols."""

    def __init__(self, items: list[Any]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]

    def __setitem__(self, i: int, value: Any) -> None:
        self.items[i] = value

    def __contains__(self, item: Any) -> bool:
        return item in self.items

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def __repr__(self) -> str:
        return f"Box({self.items!r})"

    def __add__(self, other: Any) -> Box:
        extra = other.items if isinstance(other, Box) else list(other)
        return Box(self.items + extra)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Box) and other.items == self.items

    def __lt__(self, other: Box) -> bool:
        return len(self.items) < len(other.items)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.items.append("exited")

    __hash__ = None  # type: ignore[assignment]


class Gate:
    """Holds a call until opened: lets a test know a call is in flight without timing it."""

    def __init__(self) -> None:
        self._entered = threading.Event()
        self._open = threading.Event()

    def wait(self, timeout: float) -> bool:
        self._entered.set()
        return self._open.wait(timeout)

    def entered(self, timeout: float) -> bool:
        return self._entered.wait(timeout)

    def open(self) -> None:
        self._open.set()


def identity(x: Any) -> Any:
    return x


def documented(
    a: Any,
    b: int = 2,
    /,
    c: str = "x",
    *rest: Any,
    scale: float = 1.5,
    where: Any = _UNSET,
    **options: Any,
) -> str:
    """Adds things up.

    A second paragraph, for help().
    """
    return "documented"


def set_box_doc(doc: str) -> None:
    """Changes Box's docstring (proxies cache an instance's doc per remote type)."""
    Box.__doc__ = doc


def pid() -> int:
    return os.getpid()


def thread_name() -> str:
    return threading.current_thread().name


def make_thing(value: int = 0) -> Thing:
    return Thing(value)


def read_value(thing: Thing) -> int:
    return thing.value


def live_things() -> int:
    gc.collect()
    return len(_live)


def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


def fail_value(message: str) -> None:
    raise ValueError(message)


def fail_custom(key: str) -> None:
    raise CustomKeyError(key)


def big_bytes(n: int) -> bytes:
    return b"x" * n


def count_up(n: int) -> Iterator[int]:
    """A generator: iterable through the proxy; its frame (and globals) stay out of reach."""
    yield from range(n)


def kwargs_echo(*args: Any, **kwargs: Any) -> Any:
    return [list(args), kwargs]


def call_back(address: str, value: Any) -> Any:
    """Calls this module's server from inside a call (served code that blocks on a runtime)."""
    import jac_splice

    return jac_splice.connect(address).import_module("splice_testmod").identity(value)

"""Local stand-ins for objects that live in a module server.

Attribute reads go to the server (plain data comes back by value, anything else as another
proxy); calls send their arguments by value, or by reference for proxies; Python's protocols
(``len``, ``repr``, ``in``, ``[]``, operators, conversions, ``dir``, iteration) are forwarded by
calling the server's ``builtins``/``operator`` functions on the remote object. When a proxy is
garbage-collected its reference is queued and released in batches.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any, Callable

from jac_splice._native import PROTOCOL_ATTRIBUTES, Client, RemoteRef

BUILTINS = "@builtins"
OPERATOR = "@operator"

# The dunder names module servers serve; any other is refused there (PERMISSION_DENIED), so a
# proxy answers AttributeError for it at once: hasattr(proxy, "__array_interface__") and the
# like, which local libraries ask of any object, stay False and cost no round trip.
_REMOTE_DUNDERS = frozenset(PROTOCOL_ATTRIBUTES)

_OWN = frozenset({"_jac_splice_client", "_jac_splice_ref", "__weakref__"})


def wrap(client: Client, value: Any) -> Any:
    """Turns a RemoteRef returned by the native client into a proxy; plain values pass through."""
    if isinstance(value, RemoteRef):
        return RemoteObject(client, value)
    return value


class RemoteObject:
    """A proxy for one object held by a module server for this client's session."""

    __slots__ = ("__weakref__", "_jac_splice_client", "_jac_splice_ref")

    _jac_splice_client: Client
    _jac_splice_ref: RemoteRef | None

    def __init__(self, client: Client, ref: RemoteRef | None) -> None:
        object.__setattr__(self, "_jac_splice_client", client)
        object.__setattr__(self, "_jac_splice_ref", ref)
        if ref is not None:
            finalizer = weakref.finalize(self, client.release_later, ref.id)
            finalizer.atexit = False

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def _jac_splice_target(self) -> str:
        ref = self._jac_splice_ref
        return "" if ref is None else ref.id

    def _jac_splice_call(self, path: list[str], *args: Any, **kwargs: Any) -> Any:
        client = self._jac_splice_client
        return wrap(client, client.call(self._jac_splice_target, path, args, kwargs or None))

    def _jac_splice_fn(self, module: str, name: str, *args: Any) -> Any:
        client = self._jac_splice_client
        return wrap(client, client.call(module, [name], args, None))

    # -- attributes and calls ---------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name in _OWN or (_is_dunder(name) and name not in _REMOTE_DUNDERS):
            raise AttributeError(name)
        client = self._jac_splice_client
        return wrap(client, client.get_attr(self._jac_splice_target, [name]))

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OWN:
            object.__setattr__(self, name, value)
        else:
            self._jac_splice_fn(BUILTINS, "setattr", self, name, value)

    def __delattr__(self, name: str) -> None:
        self._jac_splice_fn(BUILTINS, "delattr", self, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._jac_splice_call([], *args, **kwargs)

    def __dir__(self) -> list[str]:
        names: list[str] = self._jac_splice_fn(BUILTINS, "dir", self)
        return names

    # -- protocols --------------------------------------------------------------------------
    def __repr__(self) -> str:
        text: str = self._jac_splice_fn(BUILTINS, "repr", self)
        return text

    def __str__(self) -> str:
        text: str = self._jac_splice_fn(BUILTINS, "str", self)
        return text

    def __format__(self, spec: str) -> str:
        text: str = self._jac_splice_fn(BUILTINS, "format", self, spec)
        return text

    def __len__(self) -> int:
        n: int = self._jac_splice_fn(BUILTINS, "len", self)
        return n

    def __bool__(self) -> bool:
        return bool(self._jac_splice_fn(BUILTINS, "bool", self))

    def __hash__(self) -> int:
        h: int = self._jac_splice_fn(BUILTINS, "hash", self)
        return h

    def __int__(self) -> int:
        n: int = self._jac_splice_fn(BUILTINS, "int", self)
        return n

    def __float__(self) -> float:
        f: float = self._jac_splice_fn(BUILTINS, "float", self)
        return f

    def __bytes__(self) -> bytes:
        data: bytes = self._jac_splice_fn(BUILTINS, "bytes", self)
        return data

    def __complex__(self) -> complex:
        z: complex = self._jac_splice_fn(BUILTINS, "complex", self)
        return z

    def __index__(self) -> int:
        n: int = self._jac_splice_fn(OPERATOR, "index", self)
        return n

    def __iter__(self) -> Iterator[Any]:
        iterator = self._jac_splice_fn(BUILTINS, "iter", self)
        if not isinstance(iterator, RemoteObject):  # the server returned the items by value
            yield from iterator
            return
        while True:
            try:
                item = iterator._jac_splice_fn(BUILTINS, "next", iterator)
            except StopIteration:
                return
            yield item

    def __contains__(self, item: Any) -> bool:
        return bool(self._jac_splice_fn(OPERATOR, "contains", self, item))

    def __getitem__(self, key: Any) -> Any:
        return self._jac_splice_fn(OPERATOR, "getitem", self, key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._jac_splice_fn(OPERATOR, "setitem", self, key, value)

    def __delitem__(self, key: Any) -> None:
        self._jac_splice_fn(OPERATOR, "delitem", self, key)

    def __enter__(self) -> Any:
        return self._jac_splice_call(["__enter__"])

    def __exit__(self, *exc: object) -> Any:
        return self._jac_splice_call(["__exit__"], None, None, None)


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _binary(
    op: str,
) -> tuple[Callable[[RemoteObject, Any], Any], Callable[[RemoteObject, Any], Any]]:
    def forward(self: RemoteObject, other: Any) -> Any:
        return self._jac_splice_fn(OPERATOR, op, self, other)

    def reflected(self: RemoteObject, other: Any) -> Any:
        return self._jac_splice_fn(OPERATOR, op, other, self)

    return forward, reflected


def _unary(op: str) -> Callable[[RemoteObject], Any]:
    def forward(self: RemoteObject) -> Any:
        return self._jac_splice_fn(OPERATOR, op, self)

    return forward


_BINARY = {
    "add": "add", "sub": "sub", "mul": "mul", "truediv": "truediv", "floordiv": "floordiv",
    "mod": "mod", "pow": "pow", "matmul": "matmul", "and": "and_", "or": "or_", "xor": "xor",
    "lshift": "lshift", "rshift": "rshift",
}  # fmt: skip
_COMPARE = {"eq": "eq", "ne": "ne", "lt": "lt", "le": "le", "gt": "gt", "ge": "ge"}
_UNARY = {"neg": "neg", "pos": "pos", "abs": "abs", "invert": "invert"}

_methods: dict[str, Any] = {}
for _name, _op in _BINARY.items():
    _methods[f"__{_name}__"], _methods[f"__r{_name}__"] = _binary(_op)
    _methods[f"__i{_name}__"] = _binary("i" + _op.rstrip("_"))[0]
for _name, _op in _COMPARE.items():
    _methods[f"__{_name}__"] = _binary(_op)[0]
for _name, _op in _UNARY.items():
    _methods[f"__{_name}__"] = _unary(_op)
for _dunder, _fn in _methods.items():
    setattr(RemoteObject, _dunder, _fn)


class RemoteModule(RemoteObject):
    """The proxy of a served module (or a submodule of it), usable as an imported module.

    Import-system attributes (``__spec__``, ``__loader__``, ...) are kept locally, so the import
    machinery never writes them into the remote module.
    """

    __slots__ = ("_jac_splice_local",)

    _LOCAL = frozenset(
        {"__name__", "__spec__", "__loader__", "__package__", "__path__", "__file__", "__cached__"}
    )

    def __init__(self, client: Client, ref: RemoteRef | None, name: str) -> None:
        super().__init__(client, ref)
        object.__setattr__(self, "_jac_splice_local", {"__name__": name})

    def __getattr__(self, name: str) -> Any:
        local: dict[str, Any] = object.__getattribute__(self, "_jac_splice_local")
        if name in local:
            return local[name]
        if name in RemoteModule._LOCAL and name != "__name__":
            raise AttributeError(name)
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in RemoteModule._LOCAL or isinstance(value, RemoteModule):
            self._jac_splice_local[name] = value
        elif name == "_jac_splice_local":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def __repr__(self) -> str:
        return f"<remote module {self._jac_splice_local['__name__']!r} via {self._jac_splice_client.target}>"


_OWN = _OWN | {"_jac_splice_local"}

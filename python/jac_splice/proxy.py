"""Local stand-ins for objects that live in a module server.

Attribute reads go to the server (plain data comes back by value, anything else as another
proxy); calls send their arguments by value, or by reference for proxies; Python's protocols
(``len``, ``in``, ``[]``, operators, conversions, ``dir``, iteration) are forwarded by calling the
server's ``builtins``/``operator`` functions on the remote object. When a proxy is
garbage-collected its reference is queued and released in batches.

Proxies also answer what tools ask of an object: ``__doc__``, ``__name__``, ``__qualname__`` and
``__module__`` are the remote object's, and a callable's ``__signature__`` is parsed from the
text of the server's ``inspect.signature`` (no ``__wrapped__``), so ``help()`` and
``inspect.signature`` work. They come in one request (``@splice.describe``) and are cached: per
proxy, and per remote type for instances whose doc is their type's. ``repr()`` says that the
object is remote and where (``<remote function numpy.mean on default/numpy>``); ``str()`` of a
remote value (an instance that is not callable) is its remote ``str()``.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Iterator
from typing import Any, Callable, NamedTuple

from jac_splice._native import PROTOCOL_ATTRIBUTES, Client, RemoteRef
from jac_splice._signature import parse_signature
from jac_splice.exceptions import ClosedError, TransportError

BUILTINS = "@builtins"
OPERATOR = "@operator"
SPLICE = "@splice"

# The dunder names module servers serve; any other is refused there (PERMISSION_DENIED), so a
# proxy answers AttributeError for it at once: hasattr(proxy, "__array_interface__") and the
# like, which local libraries ask of any object, stay False and cost no round trip.
_REMOTE_DUNDERS = frozenset(PROTOCOL_ATTRIBUTES)

_OWN = frozenset({"_jac_splice_client", "_jac_splice_ref", "_jac_splice_about", "__weakref__"})

# The names a proxy answers from what ``@splice.describe`` said (the field of `About`).
_DESCRIBED = {"__name__": "name", "__qualname__": "qualname", "__module__": "module"}


class About(NamedTuple):
    """What ``@splice.describe`` says of a remote object (text only)."""

    kind: str
    """``"module"``, ``"class"``, ``"function"`` (any routine) or ``"object"``."""
    name: str | None
    qualname: str | None
    module: str | None
    doc: str | None
    signature: str | None
    """``str(inspect.signature(obj))`` of a callable, if it has one."""


# Per remote type, for instances whose doc is their type's (the server says which): keyed by
# session (one server's objects) and the type's name.
_BY_TYPE: dict[tuple[str, str], About] = {}
_BY_TYPE_LIMIT = 4096  # a bound for programs that meet endless generated types


def about(proxy: RemoteObject) -> About:
    """What the module server says ``proxy``'s object is (asked once; see the module doc)."""
    known: About | None = object.__getattribute__(proxy, "_jac_splice_about")
    if known is not None:
        return known
    ref = proxy._jac_splice_ref
    key: tuple[str, str] | None = None
    if ref is not None and not ref.callable:
        key = (ref.session, ref.type_name)
        known = _BY_TYPE.get(key)
    if known is None:
        said: dict[str, Any] = proxy._jac_splice_fn(SPLICE, "describe", proxy)
        known = About(*(said[field] for field in About._fields))
        if key is not None and said["type_level"]:
            if len(_BY_TYPE) >= _BY_TYPE_LIMIT:
                _BY_TYPE.clear()
            _BY_TYPE[key] = known
    object.__setattr__(proxy, "_jac_splice_about", known)
    return known


def where(client: Client) -> str:
    """Where a client's calls go: ``namespace/deployment`` through jac-orc, else the address."""
    via = client.deployment
    if via is None:
        return client.target
    deployment, namespace = via
    return f"{namespace}/{deployment}" if namespace else deployment


def wrap(client: Client, value: Any) -> Any:
    """Turns a RemoteRef returned by the native client into a proxy; plain values pass through."""
    if isinstance(value, RemoteRef):
        return RemoteCallable(client, value) if value.callable else RemoteObject(client, value)
    return value


class RemoteObject:
    """A proxy for one object held by a module server for this client's session."""

    __slots__ = ("__weakref__", "_jac_splice_about", "_jac_splice_client", "_jac_splice_ref")

    _jac_splice_client: Client
    _jac_splice_ref: RemoteRef | None

    def __init__(self, client: Client, ref: RemoteRef | None) -> None:
        object.__setattr__(self, "_jac_splice_client", client)
        object.__setattr__(self, "_jac_splice_ref", ref)
        object.__setattr__(self, "_jac_splice_about", None)
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

    @property
    def _jac_splice_type_name(self) -> str:
        ref = self._jac_splice_ref
        return "module" if ref is None else ref.type_name

    def _jac_splice_label(self) -> str | None:
        """``module 'numpy'``, ``function numpy.mean`` or ``class m.Box``; None for a value."""
        ref = self._jac_splice_ref
        if ref is not None and not ref.callable and ref.type_name != "module":
            return None  # an instance: known without asking
        said = about(self)
        if said.kind == "module":
            return f"module {said.name!r}"
        if said.kind in ("class", "function"):
            dotted = ".".join(part for part in (said.module, said.qualname or said.name) if part)
            return f"{said.kind} {dotted or self._jac_splice_type_name}"
        return None

    # -- attributes and calls ---------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name in _DESCRIBED:
            value = getattr(about(self), _DESCRIBED[name])
            if value is None:
                raise AttributeError(name)
            return value
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

    def __dir__(self) -> list[str]:
        names: list[str] = self._jac_splice_fn(BUILTINS, "dir", self)
        return names

    # -- protocols --------------------------------------------------------------------------
    def __repr__(self) -> str:
        place = where(self._jac_splice_client)
        try:
            label = self._jac_splice_label()
            if label is not None:
                return f"<remote {label} on {place}>"
            text: str = self._jac_splice_fn(BUILTINS, "repr", self)
        except (ClosedError, TransportError) as e:
            # A repr must not fail because the server is gone (tracebacks and debuggers print it).
            return f"<remote {self._jac_splice_type_name} on {place} ({type(e).__name__})>"
        return f"<remote {self._jac_splice_type_name} object on {place}: {text}>"

    def __str__(self) -> str:
        if self._jac_splice_label() is not None:
            return repr(self)
        text: str = self._jac_splice_fn(BUILTINS, "str", self)
        return text

    def __format__(self, spec: str) -> str:
        if not spec:
            return str(self)
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


class RemoteCallable(RemoteObject):
    """A proxy for a remote callable (function, class, bound method, or callable object).

    It is a non-binding descriptor (``__get__`` returns it unchanged, as a proxy stored on a
    class always behaved): that makes ``inspect`` and ``pydoc`` treat it as a routine, so
    ``help()`` shows its signature and docstring.
    """

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._jac_splice_call([], *args, **kwargs)

    def __get__(self, instance: object, owner: type | None = None) -> RemoteCallable:
        return self

    @property
    def __signature__(self) -> inspect.Signature | None:
        """The remote signature; None (inspect then raises ValueError) if it has none."""
        text = about(self).signature
        if text is None:
            return None
        try:
            return parse_signature(text)
        except ValueError:
            return None

    def __str__(self) -> str:
        return repr(self)  # a callable is never a value whose text to show


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

    def _jac_splice_label(self) -> str:
        return f"module {self._jac_splice_local['__name__']!r}"


_OWN = _OWN | {"_jac_splice_local"}


class _RemoteDoc:
    """A proxy's ``__doc__``: the remote object's; on the proxy class, the class's own."""

    def __init__(self, doc: str | None) -> None:
        self._doc = doc

    def __get__(self, instance: RemoteObject | None, owner: type | None = None) -> str | None:
        if instance is None:
            return self._doc
        return about(instance).doc


class _RemoteModuleName(str):
    """A proxy's ``__module__``: the remote object's.

    ``type`` reads a class's ``__module__`` from its dict without calling descriptors, and pickle
    and ``repr(cls)`` expect a ``str`` there: so this is the class's module name as a ``str``
    that is also a descriptor for instances.
    """

    def __get__(self, instance: RemoteObject | None, owner: type | None = None) -> str:
        if instance is None:
            return self
        module = about(instance).module
        if module is None:
            raise AttributeError("__module__")
        return module


for _cls in (RemoteObject, RemoteCallable, RemoteModule):
    _forwarded = {"__doc__": _RemoteDoc(_cls.__doc__), "__module__": _RemoteModuleName(__name__)}
    for _dunder, _descriptor in _forwarded.items():
        setattr(_cls, _dunder, _descriptor)

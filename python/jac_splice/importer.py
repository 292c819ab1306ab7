"""An import hook: ``import numpy`` returns the remote module for the names you choose."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

from jac_splice._native import use_numpy
from jac_splice.client import CA, Splice, connect
from jac_splice.proxy import RemoteModule

if TYPE_CHECKING:  # Python 3.9's typing has no Self; annotations are never evaluated here
    from typing_extensions import Self


class _RemoteLoader(importlib.abc.Loader):
    def __init__(self, hook: RemoteImports) -> None:
        self._hook = hook

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        module = self._hook.load(spec.name)
        # The import system only needs a module-like object; a proxy is one.
        return module  # type: ignore[return-value]

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to execute: the module already runs in the module server."""


class RemoteImports(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` finder serving the listed modules (and their submodules) remotely.

    Use as a context manager, or call :meth:`uninstall`. Modules imported before installing stay
    local (Python answers ``import`` from ``sys.modules`` first).
    """

    def __init__(
        self,
        names: Iterable[str],
        server: str | Splice,
        token: str | None = None,
        deployments: dict[str, str] | None = None,
        namespace: str | None = None,
        servers: dict[str, str | Splice] | None = None,
        *,
        ca: CA | None = None,
        deploy: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.names = frozenset(names)
        self.splice = server if isinstance(server, Splice) else connect(server, token, ca=ca)
        self.servers: dict[str, Splice] = {
            name: s if isinstance(s, Splice) else connect(s, token, ca=ca)
            for name, s in (servers or {}).items()
        }
        self.deployments = dict(deployments or {})
        self.deploy = {name: dict(settings) for name, settings in (deploy or {}).items()}
        self.namespace = namespace
        self._loaded: dict[str, RemoteModule] = {}
        self._lock = threading.Lock()
        self._loader = _RemoteLoader(self)
        self._local_numpy: ModuleType | None = None

    def handles(self, fullname: str) -> bool:
        return fullname in self.names or fullname.split(".")[0] in self.names

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if not self.handles(fullname):
            return None
        return importlib.machinery.ModuleSpec(fullname, self._loader, is_package=True)

    def load(self, fullname: str) -> RemoteModule:
        with self._lock:
            module = self._loaded.get(fullname)
            if module is None:
                top = fullname.split(".")[0]
                deployment = self.deployments.get(top)
                splice = self.servers.get(top, self.splice)
                settings = self.deploy.get(top)
                if deployment is None and settings is not None:
                    # Deployed by jac-orc on first import unless something serves it already.
                    module = splice.import_module(
                        fullname, None, self.namespace, deploy=True, **settings
                    )
                else:
                    module = splice.import_module(fullname, deployment, self.namespace)
                self._loaded[fullname] = module
            return module

    def install(self) -> Self:
        if "numpy" in self.names and self._local_numpy is None:
            self._local_numpy = _keep_local_numpy_for_the_codec()
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)
        return self

    def uninstall(self) -> None:
        """Removes the finder and forgets the remote modules it put in ``sys.modules``."""
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for name in list(sys.modules):
            if self.handles(name) and isinstance(sys.modules[name], RemoteModule):
                del sys.modules[name]
        self._loaded.clear()
        if self._local_numpy is not None:
            sys.modules.setdefault("numpy", self._local_numpy)
            self._local_numpy = None

    def __enter__(self) -> Self:
        return self.install()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()


def _keep_local_numpy_for_the_codec() -> ModuleType | None:
    """Arrays coming back by value need the real numpy: hand it to the codec, then let
    ``import numpy`` reach the finder (it answers from ``sys.modules`` otherwise)."""
    # `object`: sys.modules is typed as holding modules, but a remote proxy may stand there.
    current: object = sys.modules.get("numpy")
    if current is not None and not isinstance(current, ModuleType):
        return None
    try:
        real = importlib.import_module("numpy")
    except ImportError:  # no local numpy: arrays cannot be decoded here, everything else works
        return None
    use_numpy(real)
    sys.modules.pop("numpy", None)
    return real


def remote_imports(
    names: Iterable[str],
    server: str | Splice,
    token: str | None = None,
    deployments: dict[str, str] | None = None,
    namespace: str | None = None,
    servers: dict[str, str | Splice] | None = None,
    *,
    ca: CA | None = None,
    deploy: Mapping[str, Mapping[str, Any]] | None = None,
) -> RemoteImports:
    """Installs (and returns) a finder that imports ``names`` from ``server``.

    ``server`` is a module server or jac-orc address, or a :class:`Splice` connection;
    ``servers`` overrides it per top-level module name (a module server serves one module).
    ``deployments`` optionally maps a module name to its jac-orc deployment. ``token`` and
    ``ca`` are as for :func:`jac_splice.connect` (without a token, each connection finds its own).
    ``deploy`` maps a top-level module name to the settings jac-orc deploys it with on first
    import when nothing serves it (``packages``, ``cpu``, ``cpu_limit``, ``memory``, ``replicas``,
    ``idle_timeout``, ``wait_timeout``; see :meth:`Splice.import_module` with ``deploy=True``).
    """
    hook = RemoteImports(
        names, server, token, deployments, namespace, servers, ca=ca, deploy=deploy
    )
    return hook.install()

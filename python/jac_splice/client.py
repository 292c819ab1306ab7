"""Connecting to a module server, directly or through jac-orc."""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Union

from jac_splice._native import Client, RemoteRef
from jac_splice.credentials import find_token
from jac_splice.exceptions import ClosedError, DeploymentLookupError, SpliceError, TransportError
from jac_splice.proxy import RemoteModule, where

if TYPE_CHECKING:  # Python 3.9's typing has no Self; annotations are never evaluated here
    from typing_extensions import Self

PYTHON_MODULE = "python-module"
DEFAULT_MAX_MESSAGE_BYTES = 1 << 30

Route = Literal["auto", "direct", "proxy"]
ROUTES: tuple[Route, ...] = ("auto", "direct", "proxy")
AUTO_PROBE_SECONDS = 0.5
"""How long ``route="auto"`` waits for a module server to accept a TCP connection."""

_log = logging.getLogger("jac_splice")

CA = Union[str, "os.PathLike[str]", bytes]
"""A CA to trust for https:// targets: a PEM file's path, or the PEM itself as bytes."""


def _read_ca(ca: CA | None) -> bytes | None:
    if ca is None or isinstance(ca, bytes):
        return ca
    with open(ca, "rb") as f:
        return f.read()


class Splice:
    """A connection to a module server or to jac-orc; see :func:`connect`.

    Use it as a context manager, or call :meth:`close`, to release what its proxies hold on the
    servers and close the connection.
    """

    def __init__(
        self,
        target: str,
        token: str | None = None,
        *,
        ca: CA | None = None,
        heartbeat_seconds: float | None = 10.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        channels: int = 2,
        route: Route = "auto",
        call_timeout: float | None = None,
    ) -> None:
        if route not in ROUTES:
            raise ValueError(f"route must be 'auto', 'direct' or 'proxy', got {route!r}")
        self.target = target
        self.route: Route = route
        self._client = Client(
            target,
            token=token,
            ca=_read_ca(ca),
            heartbeat_seconds=heartbeat_seconds,
            max_message_bytes=max_message_bytes,
            channels=channels,
            call_timeout_seconds=_call_timeout(call_timeout),
        )
        self._routes: dict[tuple[str, str], Client] = {}
        self._served: str | None = None
        self._is_orchestrator: bool | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Client:
        """The native client of the direct route (a module server target), with its token."""
        self._probe()
        return self._client

    def _probe(self) -> bool:
        """True if the target is jac-orc, as its gRPC health service says (see ``server_kind``).

        The answer also tells which token applies when none was given (see
        :mod:`jac_splice.credentials`); the health service needs none.
        """
        if self._client.closed:
            # Also where no call would be made (a module server's own module is a local proxy).
            raise ClosedError(
                f"this connection to {self.target} was closed (Splice.close()); "
                "connect again with jac_splice.connect()"
            )
        if self._is_orchestrator is None:
            kind = self._client.server_kind()
            if not self._client.has_token:
                token = find_token(self.target, kind)
                if token is not None:
                    self._client.set_token(token)
            if kind == "module-server":
                self._served = str(self._client.describe()["module"])
            self._is_orchestrator = kind == "orchestrator"
        return self._is_orchestrator

    @property
    def is_orchestrator(self) -> bool:
        """Whether the target is jac-orc (calls go through its ModuleProxy) or a module server.

        Asked once, of the target's gRPC health service. Raises :class:`UnavailableError` if the
        target cannot be reached and :class:`NotASpliceServerError` if it answers as neither.
        """
        return self._probe()

    def describe(
        self, deployment: str | None = None, namespace: str | None = None
    ) -> dict[str, Any]:
        """A module server's description (pid, module, versions, reference counts).

        Without ``deployment``: the directly connected module server. With it: the module
        server of that jac-orc python-module deployment, reached through ModuleProxy.
        """
        if deployment is None:
            if self._probe():
                raise ValueError(
                    "connected to jac-orc: name the python-module deployment to describe"
                )
            return dict(self._client.describe())
        return dict(self._route(deployment, namespace or "").describe())

    def import_module(
        self,
        name: str,
        deployment: str | None = None,
        namespace: str | None = None,
        *,
        deploy: bool = False,
        packages: Sequence[str] | None = None,
        cpu: str | float | None = None,
        cpu_limit: str | float | None = None,
        memory: str | int | None = None,
        replicas: int | None = None,
        idle_timeout: float | str | None = None,
        wait_timeout: float | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> RemoteModule:
        """The remote module ``name`` as a proxy.

        With a module server target, ``name`` must be its module (or a submodule of it). With a
        jac-orc target, the python-module deployment serving ``name`` is looked up with
        ``ListDeployments`` unless ``deployment`` is given. With ``deploy=True`` and none
        serving it, jac-orc deploys one first and this waits until it is ready (see
        :meth:`ensure_module` for the settings, used only when it deploys).
        """
        if deploy and deployment is not None:
            raise ValueError(
                "deploy=True finds or deploys the deployment itself: leave out deployment="
            )
        if deployment is None and not self._probe():
            if deploy:
                raise ValueError(
                    f"deploy=True needs a jac-orc target; {self.target} is a module server"
                )
            return self._direct_module(name)
        served_module = ""
        if deployment is None and deploy and not self._serving(name, namespace)[0]:
            ensured = self.ensure_module(
                name,
                namespace=namespace,
                packages=packages,
                cpu=cpu,
                cpu_limit=cpu_limit,
                memory=memory,
                replicas=replicas,
                idle_timeout=idle_timeout,
                wait_timeout=wait_timeout,
                progress=progress,
            )
            deployment, namespace = str(ensured["name"]), str(ensured["namespace"])
            served_module = str(ensured["config"].get("module", ""))
        if deployment is None:
            deployment, namespace, served_module = self._resolve(name, namespace)
        client = self._route(deployment, namespace or "", served_module)
        served = str(client.describe()["module"])
        return _module_proxy(client, served, name)

    def _direct_module(self, name: str) -> RemoteModule:
        assert self._served is not None
        return _module_proxy(self._client, self._served, name)

    def _route(self, deployment: str, namespace: str, module: str = "") -> Client:
        self._probe()  # routes share the connection, and so the token found for it
        with self._lock:
            key = (deployment, namespace)
            if key not in self._routes:
                self._routes[key] = self._new_route(deployment, namespace, module)
            return self._routes[key]

    def _new_route(self, deployment: str, namespace: str, module: str) -> Client:
        """A session of ``deployment``: through ModuleProxy, or directly to its module servers
        (GetModuleAccess), as ``route`` says; ``module`` (the Python module it serves, if known)
        lets a direct session wake a deployment scaled to zero."""
        if self.route == "proxy":
            return self._client.via_proxy(deployment, namespace)
        if self.route == "direct":
            direct = self._client.direct(deployment, namespace, module=module)
            assert direct is not None  # only a probe answers None
            return direct
        try:
            probed = self._client.direct(
                deployment, namespace, module=module, probe_timeout_seconds=AUTO_PROBE_SECONDS
            )
        except TransportError as e:
            if e.code not in ("UNIMPLEMENTED", "FAILED_PRECONDITION"):
                raise
            # A jac-orc without direct access, or nothing ready yet (the proxy holds the calls).
            _log.info("calling %s through jac-orc's ModuleProxy (%s)", deployment, e)
            return self._client.via_proxy(deployment, namespace)
        if probed is None:
            _log.info(
                "the module servers of %s are not reachable from here: calling through "
                "jac-orc's ModuleProxy",
                deployment,
            )
            return self._client.via_proxy(deployment, namespace)
        return probed

    def ensure_module(
        self,
        name: str,
        *,
        namespace: str | None = None,
        packages: Sequence[str] | None = None,
        cpu: str | float | None = None,
        cpu_limit: str | float | None = None,
        memory: str | int | None = None,
        replicas: int | None = None,
        idle_timeout: float | str | None = None,
        wait_timeout: float | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """jac-orc's python-module deployment serving ``name``, deployed first when none does.

        Calls ``EnsureModule``, which waits until a deployment it makes is ready (at most
        ``wait_timeout`` seconds, default the server's 300); racing callers get the same one.
        ``packages`` are PEP 508 requirements, ``cpu``/``memory`` Kubernetes quantities
        ("250m", "256Mi"), ``cpu_limit`` a CPU limit above ``cpu`` to burst to (Python's start
        is CPU-bound; default: the limit is ``cpu``), ``idle_timeout`` seconds or a duration string ("90s", "10m"). Returns
        the deployment as :meth:`Client.list_deployments` does, with ``deployed`` (whether this
        call deployed it) and ``differences`` (the asked settings a found deployment does not
        have, one line each, also logged as a warning). While it deploys, each line of the
        deploy's progress (``deployment.apps/numpy created``, ``... ready``) goes to
        ``progress`` as it happens, or by default to the ``jac_splice`` logger at INFO. Raises :class:`DeploymentLookupError` if it is not ready.
        """
        if not self._probe():
            raise ValueError(
                f"ensure_module needs a jac-orc target; {self.target} is a module server"
            )
        if replicas is not None and replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {replicas}")
        _log.info(
            "asking jac-orc at %s for a deployment of %r (deploying it if none)", self.target, name
        )
        found = self._client.ensure_module(
            name,
            namespace=namespace or "",
            packages=list(packages or []),
            cpu=_text(cpu),
            cpu_limit=_text(cpu_limit),
            memory=_text(memory),
            replicas=replicas or 0,
            idle_timeout=_text(idle_timeout),
            wait_timeout_seconds=0 if wait_timeout is None else max(1, round(wait_timeout)),
            progress=progress or (lambda line: _log.info("deploying %r: %s", name, line)),
        )
        where = f"{found['namespace']}/{found['name']}"
        if found["status"] != "deployed":
            raise DeploymentLookupError(
                f"jac-orc's deployment {where} of {name!r} is {found['status']}: {found['message']}"
            )
        _log.info("%s %s serves %r", "deployed" if found["deployed"] else "found", where, name)
        if found["differences"]:
            # The existing deployment is used as it stands; changing it is a deploy.
            _log.warning(
                "%s serves %r with other settings than asked (%s); redeploy it to change them",
                where,
                name,
                "; ".join(found["differences"]),
            )
        return found

    def _serving(
        self, name: str, namespace: str | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """jac-orc's python-module deployments of ``name`` (or its top-level package), and all."""
        self._probe()
        deployments: list[dict[str, Any]] = self._client.list_deployments(
            namespace or "", PYTHON_MODULE
        )
        top = name.split(".")[0]
        modules = [d for d in deployments if d.get("module") == PYTHON_MODULE]
        return [d for d in modules if d["config"].get("module") in (name, top)], modules

    def resolve_deployment(self, name: str, namespace: str | None = None) -> tuple[str, str]:
        """The (deployment, namespace) of jac-orc's single python-module deployment of ``name``."""
        deployment, found_in, _ = self._resolve(name, namespace)
        return deployment, found_in

    def _resolve(self, name: str, namespace: str | None) -> tuple[str, str, str]:
        """:meth:`resolve_deployment`, and the module the deployment serves."""
        matches, modules = self._serving(name, namespace)
        if len(matches) == 1:
            found = matches[0]
            return str(found["name"]), str(found["namespace"]), str(found["config"]["module"])
        candidates = ", ".join(
            f"{d['namespace']}/{d['name']} (module {d['config'].get('module', '?')!r})"
            for d in (matches or modules)
        )
        if not matches:
            raise DeploymentLookupError(
                f"jac-orc at {self.target} has no python-module deployment of {name!r}; "
                f"python-module deployments: {candidates or 'none'}"
            )
        raise DeploymentLookupError(
            f"jac-orc at {self.target} has several python-module deployments of {name!r}: "
            f"{candidates}; pass deployment= (and namespace=) to choose"
        )

    def flush(self) -> None:
        """Sends queued releases of garbage-collected proxies now."""
        self._client.flush()
        for client in list(self._routes.values()):
            client.flush()

    def close(self) -> None:
        """Releases every object this connection's proxies hold on the servers (those it cannot
        reach free them when the session's lease ends), stops the heartbeats and closes the
        connection. Every later call, here or on one of its proxies, raises
        :class:`ClosedError`. Closing again does nothing.
        """
        self._client.close()

    @property
    def closed(self) -> bool:
        return self._client.closed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        # Only what is already known: a repr never dials (nor shows a token).
        if self.closed:
            state = "closed"
        elif self._is_orchestrator is None:
            state = "not contacted yet"
        elif self._is_orchestrator:
            with self._lock:
                routes = [
                    f"{where(client)} ({client.route_kind})" for client in self._routes.values()
                ]
            state = "jac-orc" + (f", deployments in use: {', '.join(routes)}" if routes else "")
        else:
            state = f"module server of {self._served!r}"
        return f"<jac_splice.Splice {self.target}: {state}>"


def _call_timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"call_timeout must be a number of seconds or None, got {value!r}")
    if not (math.isfinite(value) and 0 < value < 1e9):
        raise ValueError(
            f"call_timeout must be a positive number of seconds (or None), got {value!r}"
        )
    return float(value)


def _text(value: str | float | None) -> str:
    """A setting as EnsureModule carries it: "" for the server's default, whole numbers bare."""
    if value is None:
        return ""
    if isinstance(value, bool):
        raise TypeError(f"expected a number or a string, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _module_proxy(client: Client, served: str, name: str) -> RemoteModule:
    if name == served:
        return RemoteModule(client, None, name)
    if name.startswith(served + "."):
        path = name[len(served) + 1 :].split(".")
        ref = client.get_attr("", path)
        if not isinstance(ref, RemoteRef):
            raise SpliceError(f"{name} is plain data on the server, not a module")
        return RemoteModule(client, ref, name)
    raise SpliceError(f"the module server at {client.target} serves {served!r}, not {name!r}")


def connect(
    target: str,
    token: str | None = None,
    *,
    ca: CA | None = None,
    heartbeat_seconds: float | None = 10.0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    channels: int = 2,
    route: Route = "auto",
    call_timeout: float | None = None,
) -> Splice:
    """Connects to a module server ("127.0.0.1:50051") or to jac-orc ("http://jac-orc:8000").

    Nothing is dialled until the first request. Every call carries ``authorization: Bearer
    <token>``: ``token``, else one found for the target (environment, or this user's token file
    of a server on loopback; see :mod:`jac_splice.credentials`). ``https://`` targets use TLS,
    trusting ``ca`` (a PEM file path, or PEM bytes) if given, else the system's roots.
    ``heartbeat_seconds`` (None: off) keeps the session's references alive on the server; keep
    it below the server's lease.

    ``route`` says how calls of a jac-orc deployment travel: ``"proxy"`` through jac-orc's
    ModuleProxy; ``"direct"`` to the deployment's module servers themselves, with the endpoints
    and call token jac-orc hands out (GetModuleAccess, allowed to the same callers), each
    session on the replica ModuleProxy would pick; ``"auto"`` (the default) direct when the
    module servers accept a connection from here (inside the cluster; on the local backend),
    else through the proxy (a laptop outside the cluster). ``call_timeout`` (seconds; None:
    none) bounds every call (see :func:`jac_splice.with_timeout` for one callable); its expiry
    raises :class:`~jac_splice.exceptions.DeadlineExceededError` and the deadline travels to the
    module server.
    """
    return Splice(
        target,
        token,
        ca=ca,
        heartbeat_seconds=heartbeat_seconds,
        max_message_bytes=max_message_bytes,
        channels=channels,
        route=route,
        call_timeout=call_timeout,
    )

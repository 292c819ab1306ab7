"""Hand-written stubs for the native core (checked with mypy.stubtest)."""

from collections.abc import Callable
from typing import Any, Literal, final

__all__ = [
    "BUILTIN_HELPERS",
    "OPERATOR_HELPERS",
    "PROTOCOL_ATTRIBUTES",
    "SPLICE_HELPERS",
    "Client",
    "ModuleServer",
    "PendingCall",
    "RemoteRef",
    "__version__",
    "use_numpy",
]

__version__: str
BUILTIN_HELPERS: list[str]
OPERATOR_HELPERS: list[str]
PROTOCOL_ATTRIBUTES: list[str]
SPLICE_HELPERS: list[str]

def use_numpy(module: Any) -> None: ...

@final
class RemoteRef:
    """A reference to an object held by a module server for one client session."""

    @property
    def id(self) -> str: ...
    @property
    def type_name(self) -> str: ...
    @property
    def callable(self) -> bool: ...
    @property
    def session(self) -> str: ...

@final
class Client:
    """A client session with one module server, directly or through jac-orc's ModuleProxy."""

    def __new__(
        cls,
        target: str,
        *,
        token: str | None = None,
        ca: bytes | None = None,
        heartbeat_seconds: float | None = 10.0,
        max_message_bytes: int = ...,
        channels: int = 2,
        connect_timeout_seconds: float = 5.0,
        call_timeout_seconds: float | None = None,
    ) -> Client: ...
    def via_proxy(self, deployment: str, namespace: str) -> Client: ...
    def direct(
        self,
        deployment: str,
        namespace: str,
        *,
        module: str = ...,
        probe_timeout_seconds: float | None = None,
    ) -> Client | None: ...
    @property
    def route_kind(self) -> Literal["direct", "proxy", "server"]: ...
    @property
    def endpoint(self) -> str | None: ...
    @property
    def call_timeout(self) -> float | None: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def server_kind(self) -> Literal["orchestrator", "module-server"]: ...
    def set_token(self, token: str) -> None: ...
    @property
    def has_token(self) -> bool: ...
    @property
    def session(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def deployment(self) -> tuple[str, str] | None: ...
    def get_attr(self, target: str, path: list[str], *, timeout: float | None = None) -> Any: ...
    def call(
        self,
        target: str,
        path: list[str],
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any: ...
    def call_async(
        self,
        target: str,
        path: list[str],
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        timeout: float | None,
        done: Callable[[bool, Any], object],
    ) -> PendingCall: ...
    def release(self, ids: list[str]) -> tuple[int, int]: ...
    def release_later(self, id: str) -> None: ...
    def flush(self) -> None: ...
    def describe(self) -> dict[str, Any]: ...
    def list_deployments(self, namespace: str = ..., module: str = ...) -> list[dict[str, Any]]: ...
    def ensure_module(
        self,
        module: str,
        *,
        namespace: str = ...,
        packages: list[str] = ...,
        cpu: str = ...,
        cpu_limit: str = ...,
        memory: str = ...,
        replicas: int = ...,
        idle_timeout: str = ...,
        wait_timeout_seconds: int = ...,
        progress: Callable[[str], None] | None = ...,
    ) -> dict[str, Any]: ...

@final
class PendingCall:
    """A call sent by ``Client.call_async``."""

    def cancel(self) -> None: ...
    @property
    def finished(self) -> bool: ...

@final
class ModuleServer:
    """A module server running on the shared runtime (see ``python -m jac_splice.server``)."""

    def __new__(
        cls,
        module: Any,
        *,
        call_token: str | None,
        host: str = "127.0.0.1",
        port: int = 0,
        lease_seconds: float = 60.0,
        max_message_bytes: int = ...,
        tls_cert: bytes | None = None,
        tls_key: bytes | None = None,
    ) -> ModuleServer: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    def wait(self, timeout: float | None = None) -> bool: ...
    def stop(self) -> None: ...

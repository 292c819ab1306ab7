"""jac_splice through a real jac-orc: python-module deployments on its local backend, reached via
jac-orc's ModuleProxy (and its ListDeployments, which finds the deployment of a module).

The jac-orc binary comes from JAC_ORC_BIN (else `jac-orc` on PATH, else cargo's debug build
under CARGO_TARGET_DIR or ./target). Without one the tests skip, unless JAC_ORC_REQUIRE_BIN=1.

jac-orc authenticates every call: the tests send the admin token `jac-orc serve` generates in
its data dir (the session's own JAC_ORC_DATA_DIR is empty, so nothing is found by accident). Each
python-module deployment gets a call token of its own, which its module servers require and
ModuleProxy adds for callers allowed to call it; a direct client reads it from the deployment's
secrets.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import jac_splice
from jac_splice.exceptions import (
    AuthenticationError,
    DeploymentLookupError,
    PermissionDeniedError,
    UnavailableError,
)

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"jac-orc listening on (\S+:\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def find_binary() -> str | None:
    explicit = os.environ.get("JAC_ORC_BIN")
    if explicit:
        return explicit
    on_path = shutil.which("jac-orc")
    if on_path:
        return on_path
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    built = target / "debug" / "jac-orc"
    return str(built) if built.is_file() else None


def require_binary() -> str:
    binary = find_binary()
    required = os.environ.get("JAC_ORC_REQUIRE_BIN", "") == "1"
    if binary is None or not os.access(binary, os.X_OK):
        message = (
            f"jac-orc binary not found ({binary or 'set JAC_ORC_BIN'}); "
            "build it with `cargo build` and set JAC_ORC_BIN=$CARGO_TARGET_DIR/debug/jac-orc"
        )
        if required:
            pytest.fail(message + " (JAC_ORC_REQUIRE_BIN=1)")
        pytest.skip(message)
    return binary


@dataclass
class Orchestrator:
    proc: subprocess.Popen
    address: str
    drain: threading.Thread
    token: str = ""
    log: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def rest(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json", "authorization": f"Bearer {self.token}"}
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{method} {path}: {e.code} {e.read()!r}") from None

    def deploy_module(self, name: str, module: str) -> dict[str, Any]:
        body = {"module": "python-module", "config": {"name": name, "module": module}, "wait": True}
        return self.rest("POST", "/deployment", body)  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc.poll() is None:
            # SIGTERM: jac-orc stops the module servers it started, then exits.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.drain.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def start_orchestrator(
    binary: str, data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> Orchestrator:
    """Starts ``jac-orc serve`` on a free loopback port; ``env`` adds variables (its module
    servers inherit them)."""
    env = dict(os.environ, JAC_ORC_PYTHON=sys.executable, NO_COLOR="1", **(env or {}))
    proc = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), *args],
        env=env,
        cwd=str(data_dir),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[str] = []
    found: list[str] = []
    ready = threading.Event()

    def drain() -> None:
        # Keeps reading for the server's lifetime, so a full pipe never blocks it.
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            match = LISTENING.search(ANSI.sub("", line))
            if match and not found:
                found.append(match.group(1))
                ready.set()
        ready.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    ready.wait(30)
    orc = Orchestrator(proc, found[0] if found else "", reader, log=log)
    if not found:
        orc.stop()
        raise RuntimeError("jac-orc did not start:\n" + "".join(log))
    orc.token = (data_dir / "token").read_text().strip()
    return orc


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder jac-orc installs python-module packages from (`--pip-find-links`, no index)."""
    return tmp_path_factory.mktemp("wheels")


@pytest.fixture(scope="module")
def orchestrator(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Iterator[Orchestrator]:
    binary = require_binary()
    orc = start_orchestrator(
        binary, tmp_path_factory.mktemp("jac-orc"), "--pip-find-links", str(wheels)
    )
    try:
        yield orc
    finally:
        orc.stop()


def test_jac_orc_is_told_by_its_health_service(orchestrator: Orchestrator) -> None:
    # Before any deployment exists: nothing but the health service is asked.
    assert jac_splice.connect(orchestrator.url).is_orchestrator is True


def test_numpy_through_the_orchestrator(orchestrator: Orchestrator) -> None:
    deployed = orchestrator.deploy_module("numpy", "numpy")
    assert deployed["deployment"]["status"] == "deployed", deployed
    splice = jac_splice.connect(orchestrator.url, orchestrator.token)
    np = splice.import_module("numpy")
    assert np.array([1, 2, 3, 4]).sum() == 10
    # The call ran in the module server jac-orc started, not here.
    assert splice.is_orchestrator
    served_by = splice.describe("numpy")
    assert served_by["module"] == "numpy"
    assert served_by["pid"] not in (os.getpid(), orchestrator.proc.pid)
    with pytest.raises(ValueError, match="name the python-module deployment"):
        splice.describe()


def test_two_deployments_of_one_module_are_listed_as_candidates(
    orchestrator: Orchestrator,
) -> None:
    orchestrator.deploy_module("calc-a", "math")
    orchestrator.deploy_module("calc-b", "math")
    splice = jac_splice.connect(orchestrator.url, orchestrator.token)
    with pytest.raises(DeploymentLookupError) as info:
        splice.import_module("math")
    message = str(info.value)
    assert "default/calc-a" in message and "default/calc-b" in message, message
    # Naming the deployment picks one.
    math = splice.import_module("math", deployment="calc-b")
    assert math.sqrt(16.0) == 4.0


def make_wheel(directory: Path, name: str, source: str) -> Path:
    """A minimal pure-Python wheel, built by hand so the test needs no build tools or index."""
    import base64
    import hashlib
    import zipfile

    dist = f"{name}-0.1"
    files = {
        f"{name}.py": source.encode(),
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n".encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def digest(data: bytes) -> str:
        return (
            "sha256="
            + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        )

    record = "".join(f"{path},{digest(data)},{len(data)}\n" for path, data in files.items())
    record += f"{dist}.dist-info/RECORD,,\n"
    wheel = directory / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
        z.writestr(f"{dist}.dist-info/RECORD", record)
    return wheel


def test_packages_are_installed_into_the_deployments_virtualenv(
    orchestrator: Orchestrator, wheels: Path
) -> None:
    # The module exists only in the wheel: the deployment can import it only if the local
    # backend installed `packages` into its virtualenv. Packages are requirements; where they
    # come from is jac-orc's --pip-find-links folder, which keeps pip off the network.
    make_wheel(wheels, "splice_pkgmod", "import sys\n\ndef prefix():\n    return sys.prefix\n")
    body = {
        "module": "python-module",
        "config": {
            "name": "pkgmod",
            "module": "splice_pkgmod",
            "packages": ["splice_pkgmod==0.1"],
        },
    }
    deployed = orchestrator.rest("POST", "/deployment", body)
    assert deployed["deployment"]["status"] == "deployed", deployed
    splice = jac_splice.connect(orchestrator.url, orchestrator.token)
    remote = splice.import_module("splice_pkgmod")
    prefix = remote.prefix()
    assert prefix != sys.prefix and prefix.endswith("venv"), prefix
    with pytest.raises(ModuleNotFoundError):
        __import__("splice_pkgmod")  # not installed here
    orchestrator.rest("DELETE", "/deployment/default/python-module/pkgmod")


def test_jac_orc_and_its_module_servers_refuse_callers_without_their_tokens(
    orchestrator: Orchestrator,
) -> None:
    deployed = orchestrator.deploy_module("guarded-json", "json")
    endpoint = deployed["deployment"]["endpoints"][0]
    with pytest.raises(AuthenticationError, match=re.escape(orchestrator.url)):
        jac_splice.connect(orchestrator.url).import_module("json", deployment="guarded-json")
    with pytest.raises(AuthenticationError, match="refused the token"):
        jac_splice.connect(orchestrator.url, "wrong").import_module(
            "json", deployment="guarded-json"
        )
    remote = jac_splice.connect(orchestrator.url, orchestrator.token).import_module(
        "json", deployment="guarded-json"
    )
    assert remote.loads("[1, 2]") == [1, 2]
    # The module server itself: jac-orc's token is not its call token.
    with pytest.raises(AuthenticationError):
        jac_splice.connect(endpoint, orchestrator.token).import_module("json")
    secrets = orchestrator.rest("GET", "/deployment/default/python-module/guarded-json/secrets")
    call_token = secrets["secrets"]["call-token"]
    direct = jac_splice.connect(endpoint, call_token).import_module("json")
    assert direct.dumps([1]) == "[1]"


@pytest.fixture(scope="module")
def remote_json(orchestrator: Orchestrator) -> Any:
    """json, deployed once, reached through ModuleProxy with the call token."""
    orchestrator.deploy_module("escape-json", "json")
    splice = jac_splice.connect(orchestrator.url, orchestrator.token)
    return splice.import_module("json", deployment="escape-json")


@pytest.mark.parametrize(
    "target, path, args, said",
    [
        ("@builtins", ["__import__"], ("os",), "@builtins.__import__ is not served"),
        ("@builtins", ["eval"], ("__import__('os').getpid()",), "@builtins.eval is not served"),
        ("@builtins", ["exec"], ("import os",), "@builtins.exec is not served"),
        ("", ["loads", "__globals__"], None, '"__globals__" is not served'),
        ("", ["JSONDecoder", "__init__", "__globals__"], None, '"__init__" is not served'),
        ("", ["codecs", "sys"], None, '"codecs" is the module "codecs"'),
    ],
    ids=["import", "eval", "exec", "globals", "init-globals", "foreign-module"],
)
def test_escapes_are_refused_through_the_proxy(
    remote_json: Any, target: str, path: list[str], args: tuple[Any, ...] | None, said: str
) -> None:
    client = remote_json._jac_splice_client
    with pytest.raises(PermissionDeniedError, match=re.escape(said)):
        if args is None:
            client.get_attr(target, path)
        else:
            client.call(target, path, args)
    # The module itself is still served.
    assert remote_json.dumps({"a": 1}) == '{"a": 1}'


def test_errors_through_jac_orc_name_its_address_and_the_deployment(tmp_path: Path) -> None:
    # A jac-orc of this test's own, stopped by it: the others keep theirs.
    orc = start_orchestrator(require_binary(), tmp_path)
    try:
        orc.deploy_module("down-json", "json")
        splice = jac_splice.connect(orc.url, orc.token, route="proxy")
        # Found by ListDeployments, so its namespace is known; named without one, it is not.
        remote = splice.import_module("json")
        assert remote.loads("[1]") == [1]
        assert repr(remote) == "<remote module 'json' on default/down-json>"
        named = splice.import_module("json", deployment="down-json")
        assert repr(named.loads) == "<remote function json.loads on down-json>"
        assert "deployments in use: default/down-json (proxy), down-json (proxy)" in repr(splice)
    finally:
        orc.stop()
    with pytest.raises(UnavailableError) as info:
        remote.loads("[2]")
    message = str(info.value)
    assert orc.address in message and "python-module deployment default/down-json" in message, (
        message
    )


def test_import_module_with_deploy_deploys_the_module_on_first_import(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A jac-orc of its own: nothing serves json there until the import deploys it, and only
    # json may be deployed on import.
    orc = start_orchestrator(require_binary(), tmp_path, "--ensure-allow", "json")
    try:
        splice = jac_splice.connect(orc.url, token=orc.token)
        with pytest.raises(DeploymentLookupError, match="no python-module deployment of 'json'"):
            splice.import_module("json")
        with caplog.at_level(logging.INFO, logger="jac_splice"):
            remote = splice.import_module("json", deploy=True, packages=[], idle_timeout="10m")
        assert remote.dumps([1]) == "[1]"
        # The deploy's progress, line by line, as it happened.
        assert "deploying 'json': process.local.jac-orc/json started (grpc ready on" in caplog.text
        lines: list[str] = []
        splice.ensure_module("json", progress=lines.append)
        assert lines == [], "a found deployment has no deploy to show"
        caplog.clear()
        deployments = orc.rest("GET", "/deployment")["default"]["python-module"]
        assert list(deployments) == ["json"], deployments
        config = deployments["json"]["config"]
        assert (config["on-demand"], config["idle-timeout"]) == (True, "600s"), config
        # Another importer finds it: still one deployment, and the same module server.
        again = jac_splice.connect(orc.url, token=orc.token).import_module("json", deploy=True)
        assert again.loads("[2]") == [2]
        assert list(orc.rest("GET", "/deployment")["default"]["python-module"]) == ["json"]
        found = splice.ensure_module("json")
        assert (found["deployed"], found["name"], found["status"]) == (False, "json", "deployed")
        assert found["differences"] == []
        # Other settings than the found deployment's: it is used as it stands, and said so.
        with caplog.at_level(logging.WARNING, logger="jac_splice"):
            other = splice.ensure_module("json", replicas=2, idle_timeout="10m")
        assert other["differences"] == ["replicas: asked 2, deployed with 1"], other
        assert "default/json serves 'json' with other settings than asked" in caplog.text
        with pytest.raises(ValueError, match="leave out deployment="):
            splice.import_module("json", deployment="json", deploy=True)
        with pytest.raises(PermissionDeniedError, match="base64.*--ensure-allow"):
            splice.import_module("base64", deploy=True)
    finally:
        orc.stop()


def test_deploy_on_import_needs_a_jac_orc_target(splice: jac_splice.Splice) -> None:
    with pytest.raises(ValueError, match="needs a jac-orc target"):
        splice.import_module("splice_testmod", deploy=True)


def test_the_import_hook_deploys_a_configured_module_on_first_import(tmp_path: Path) -> None:
    from jac_splice.jac_plugin import load_config

    orc = start_orchestrator(require_binary(), tmp_path)
    config_file = tmp_path / "splice.json"
    # colorsys: stdlib, and imported nowhere here, so `import` reaches the hook.
    modules = {"colorsys": {"packages": [], "idle_timeout": 90}}
    config_file.write_text(json.dumps({"server": orc.url, "token": orc.token, "modules": modules}))
    config = load_config({"JAC_SPLICE_CONFIG": str(config_file)})
    hook = jac_splice.remote_imports(
        config["modules"], config["server"], token=config["token"], deploy=config["deploy"]
    )
    try:
        import colorsys

        assert isinstance(colorsys, jac_splice.RemoteModule)
        assert abs(colorsys.ONE_THIRD - 1 / 3) < 1e-12
        deployed = orc.rest("GET", "/deployment?on_demand=true")["default"]["python-module"]
        assert deployed["colorsys"]["config"]["idle-timeout"] == "90s", deployed
    finally:
        hook.uninstall()
        orc.stop()

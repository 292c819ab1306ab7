"""The README's Troubleshooting section quotes what the product prints, and this proves it: each
error the section lists is triggered here on jac-orc's local backend (the CLI, the Python client,
REST), and the text it got must be one of the section's ```text blocks, exactly, once the parts
that differ per run are put back to the README's defaults (the address 127.0.0.1:8000, the data
dir /home/you/.local/state/jac-orc).

An image pull failure needs a Kubernetes cluster; its README text is built from the format
strings and constants in src/ that make it (and the cluster tier's tests/cluster/failures.rs
checks those on a real node).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_orchestrator_proxy import ROOT, Orchestrator, require_binary, start_orchestrator

import jac_splice

README = ROOT / "README.md"
SHOWN_ADDRESS = "127.0.0.1:8000"
SHOWN_DATA_DIR = "/home/you/.local/state/jac-orc"


def readme_blocks() -> list[str]:
    """The ```text blocks of the README's "## Troubleshooting" section."""
    text = README.read_text()
    start = text.index("\n## Troubleshooting\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    blocks = re.findall(r"^```text\n(.*?)\n```$", section, re.DOTALL | re.MULTILINE)
    assert blocks, "no ```text blocks under ## Troubleshooting"
    return blocks


def assert_quoted(message: str) -> None:
    blocks = readme_blocks()
    assert message in blocks, (
        "the README's Troubleshooting section does not quote this message; add it as a ```text "
        f"block:\n{message}\n\nIts blocks:\n" + "\n---\n".join(blocks)
    )


@dataclass
class Local:
    """A jac-orc, and how to turn what it says into the README's defaults."""

    orc: Orchestrator
    binary: str
    data_dir: Path

    def shown(self, text: str, address: str | None = None) -> str:
        text = text.replace(address or self.orc.address, SHOWN_ADDRESS)
        return text.replace(str(self.data_dir), SHOWN_DATA_DIR)

    def cli_error(self, *args: str, env: dict[str, str] | None = None) -> str:
        """The `error: ...` line a failing client command prints last (its exit code not 0)."""
        done = subprocess.run(
            [self.binary, *args],
            check=False,
            env=dict(os.environ, NO_COLOR="1", **(env or {})),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode != 0, done
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("error: "), done.stderr
        return last

    def rest(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            self.orc.url + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    binary = require_binary()
    data_dir = tmp_path_factory.mktemp("jac-orc-troubleshooting")
    orc = start_orchestrator(binary, data_dir)
    try:
        yield Local(orc, binary, data_dir)
    finally:
        orc.stop()


def as_raised(error: BaseException) -> str:
    """The last line of the traceback Python prints for ``error``."""
    kind = type(error)
    return f"{kind.__module__}.{kind.__qualname__}: {error}"


def free_address() -> str:
    with socket.socket() as s:  # a free port, released before it is dialled
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_a_server_that_is_not_reachable(local: Local) -> None:
    address = free_address()
    said = local.cli_error("list", "--server", f"http://{address}")
    assert_quoted(local.shown(said, address))
    with pytest.raises(jac_splice.UnavailableError) as info:
        jac_splice.connect(f"http://{address}").import_module("json")
    assert_quoted(local.shown(as_raised(info.value), address))


def test_a_missing_token(local: Local, tmp_path: Path) -> None:
    # A data dir without the server's token, as for a server elsewhere or started with another one.
    said = local.cli_error(
        "list", "--server", local.orc.url, env={"JAC_ORC_DATA_DIR": str(tmp_path)}
    )
    assert_quoted(local.shown(said))
    with pytest.raises(jac_splice.AuthenticationError) as info:
        jac_splice.connect(local.orc.url).import_module("json")
    assert_quoted(local.shown(as_raised(info.value)))
    status, body = local.rest("GET", "/deployment")
    assert status == 401, body
    assert_quoted(local.shown(body["detail"]))


def test_a_wrong_token(local: Local) -> None:
    said = local.cli_error("list", "--server", local.orc.url, "--token", "wrong")
    assert_quoted(local.shown(said))
    with pytest.raises(jac_splice.AuthenticationError) as info:
        jac_splice.connect(local.orc.url, "wrong").import_module("json")
    assert_quoted(local.shown(as_raised(info.value)))


def test_a_deployment_that_is_not_found(local: Local) -> None:
    server = ("--server", local.orc.url, "--data-dir", str(local.data_dir))
    assert_quoted(local.shown(local.cli_error("status", "redis", "cache", *server)))
    status, body = local.rest("GET", "/deployment/default/redis/cache", token=local.orc.token)
    assert status == 404, body
    assert_quoted(local.shown(body["detail"]))
    splice = jac_splice.connect(local.orc.url, local.orc.token)
    with pytest.raises(jac_splice.DeploymentLookupError) as info:
        splice.import_module("json")
    assert_quoted(local.shown(as_raised(info.value)))
    with pytest.raises(jac_splice.NotFoundError) as named:
        splice.import_module("math", deployment="calc")
    assert_quoted(local.shown(as_raised(named.value)))


def test_an_ambiguous_deployment(local: Local) -> None:
    for name in ("calc-a", "calc-b"):
        local.orc.deploy_module(name, "math")
    try:
        splice = jac_splice.connect(local.orc.url, local.orc.token)
        with pytest.raises(jac_splice.DeploymentLookupError) as info:
            splice.import_module("math")
        assert_quoted(local.shown(as_raised(info.value)))
    finally:
        for name in ("calc-a", "calc-b"):
            local.orc.rest("DELETE", f"/deployment/default/python-module/{name}")


# Where the frames of Python's own import machinery sit depends on the Python version that runs
# the module server; the README quotes Python 3.11's.
FROZEN_LINES = {"_find_and_load": 1176, "_find_and_load_unlocked": 1140}


def as_python_311(text: str) -> str:
    def line(m: re.Match[str]) -> str:
        return f"{m.group(1)}{FROZEN_LINES.get(m.group(3), m.group(2))}, in {m.group(3)}"

    return re.sub(r'(File "<frozen importlib\._bootstrap>", line )(\d+), in (\w+)', line, text)


def test_a_module_the_module_server_cannot_import(local: Local) -> None:
    server = ("--server", local.orc.url, "--data-dir", str(local.data_dir))
    said = local.cli_error(
        "deploy", "python-module", "broken", "--set", "module=no_such_module_xyz", "--wait", *server
    )
    assert_quoted(as_python_311(local.shown(said)))


def test_a_namespace_the_server_does_not_deploy_into(tmp_path: Path) -> None:
    binary = require_binary()
    orc = start_orchestrator(
        binary, tmp_path, "--namespace", "orc", "--restricted-namespace", "true"
    )
    try:
        restricted = Local(orc, binary, tmp_path)
        server = ("--server", orc.url, "--data-dir", str(tmp_path))
        said = restricted.cli_error("deploy", "redis", "cache", "-n", "testing", *server)
        assert_quoted(restricted.shown(said))
        body = {"module": "redis", "config": {"name": "cache", "namespace": "testing"}}
        status, answer = restricted.rest("POST", "/deployment", body, token=orc.token)
        assert status == 400 and answer["reason"] == "RESTRICTED_NAMESPACE", answer
        assert_quoted(restricted.shown(answer["detail"]))
    finally:
        orc.stop()


def test_a_request_body_that_does_not_validate_is_400(local: Local) -> None:
    status, body = local.rest("POST", "/deployment", {"module": 3}, token=local.orc.token)
    assert status == 400, body
    assert_quoted(local.shown(body["detail"]))
    section = README.read_text().split("\n## Troubleshooting\n", 1)[1].split("\n## ", 1)[0]
    assert "**A request body that does not validate is 400 here**" in section
    assert "the original's FastAPI answered 422" in section


def rust_literal(path: str, pattern: str) -> str:
    """The one string literal of ``path`` (under the repository) that ``pattern`` matches."""
    source = (ROOT / path).read_text()
    found = re.findall(pattern, source)
    assert len(found) == 1, f"{path}: {pattern!r} matched {found!r}"
    return str(found[0])


def fill(template: str, *values: str) -> str:
    """A Rust format string with its `{...}` holes filled in order."""
    holes = re.findall(r"\{[^{}]*\}", template)
    assert len(holes) == len(values), (template, values)
    for hole, value in zip(holes, values):
        template = template.replace(hole, value, 1)
    return template


def test_an_image_pull_failure_is_quoted_as_the_source_makes_it() -> None:
    # The Kubernetes backend's readiness wait fails on a pod's fatal waiting reason:
    # WorkloadFailed("{object} failed: {reason}") around pods_or's "pod {}: {r}" around
    # pod_failure's "{reason} (container {}): {msg}", where msg is the kubelet's.
    readiness = (ROOT / "src/backend/kube/readiness.rs").read_text()
    fatal = re.search(r"const FATAL_WAITING: &\[&str\] = &\[(.*?)\];", readiness, re.DOTALL)
    assert fatal, "FATAL_WAITING in src/backend/kube/readiness.rs"
    names = re.findall(r'"(\w+)"', fatal.group(1))
    assert "ImagePullBackOff" in names, names
    # The README lists the other states that fail a wait at once.
    section = README.read_text().split("\n## Troubleshooting\n", 1)[1].split("\n## ", 1)[0]
    assert all(f"`{name}`" in section for name in names), names
    workload = rust_literal(
        "src/backend/mod.rs", r'#\[error\("([^"]*)"\)\]\s*WorkloadFailed \{ object: String'
    )
    pod = rust_literal(
        "src/backend/kube/readiness.rs", r'State::Failed\(format!\("(pod \{\}: \{r\})"'
    )
    waiting = rust_literal(
        "src/backend/kube/readiness.rs", r'format!\("(\{reason\} \(container \{\}\): \{msg\})"'
    )
    kubelet = 'Back-off pulling image "redis"'  # Kubernetes 1.20's kubelet, as the test tier's
    detail = fill(
        workload,
        "deployment.apps/cache",
        fill(
            pod,
            "cache-7d4b9c6f5d-x8k2p",
            fill(waiting, "ImagePullBackOff", "jaseci-redis-master", kubelet),
        ),
    )
    assert_quoted(detail)
    # The CLI prints it as every server error: "error: " (main.rs), then "{message} ({code:?})"
    # (cli/client.rs ServerError), with the code api/status.rs gives WorkloadFailed.
    assert rust_literal("src/main.rs", r'eprintln!\("(error: \{e:#\})"\)') == "error: {e:#}"
    server_error = rust_literal(
        "src/cli/client.rs", r'#\[error\("(\{message\} \(\{code:\?\}\))\{\}"'
    )
    code = rust_literal(
        "src/api/status.rs",
        r"backend::Error::WorkloadFailed \{ \.\. \} =>\s*\{?\s*class\(Code::(\w+), H::UNPROCESSABLE_ENTITY",
    )
    assert_quoted("error: " + fill(server_error, detail, code))

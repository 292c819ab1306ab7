"""TLS: a module server with a certificate from a test CA (made with openssl), reached at an
https:// URL with ``ca=`` and refused clearly without it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import jac_splice
from jac_splice import SpliceError, UnavailableError

from conftest import ModuleServerProcess


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem (a CA), and server.pem/server.key: a certificate it signed for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificates (apt-get install openssl)")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=jac-splice test CA", cwd=d)  # fmt: skip
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
            cwd=d)  # fmt: skip
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
            cwd=d)  # fmt: skip
    return d


@pytest.fixture
def tls_server(server_factory: Any, pki: Path) -> ModuleServerProcess:
    server: ModuleServerProcess = server_factory(
        "splice_testmod",
        "--tls-cert",
        str(pki / "server.pem"),
        "--tls-key",
        str(pki / "server.key"),
    )
    return server


def test_a_tls_module_server_is_reached_with_its_ca(
    tls_server: ModuleServerProcess, pki: Path
) -> None:
    url = f"https://127.0.0.1:{tls_server.port}"
    tm = jac_splice.connect(url, ca=pki / "ca.pem").import_module("splice_testmod")
    assert tm.pid() == tls_server.proc.pid
    # The CA as PEM bytes works the same.
    ca = (pki / "ca.pem").read_bytes()
    assert jac_splice.connect(url, ca=ca).import_module("splice_testmod").ANSWER == 42


def test_without_its_ca_a_tls_server_is_refused_with_what_to_do(
    tls_server: ModuleServerProcess,
) -> None:
    url = f"https://127.0.0.1:{tls_server.port}"
    with pytest.raises(UnavailableError) as info:
        jac_splice.connect(url).import_module("splice_testmod")
    message = str(info.value)
    assert url in message and "certificate" in message and "ca=" in message, message


def test_plaintext_to_a_tls_server_gets_nowhere(tls_server: ModuleServerProcess) -> None:
    # The health check already fails: the TLS server answers no plaintext HTTP/2.
    with pytest.raises(SpliceError):
        jac_splice.connect(tls_server.address).import_module("splice_testmod")


def test_a_ca_is_only_for_https_urls(pki: Path) -> None:
    with pytest.raises(ValueError, match="not an https:// URL"):
        jac_splice.connect("127.0.0.1:1", ca=pki / "ca.pem")

"""The jaclang plugin: `jac run` with remote numpy and a remote module."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jac_splice.jac_plugin import load_config

from conftest import server_env

JAC_PROGRAM = """
import numpy;
import splice_testmod;
import os;

with entry {
    print("sum", numpy.array([1, 2, 3, 4]).sum());
    print("server_pid", splice_testmod.pid());
    print("local_pid", os.getpid());
}
"""


# `jac run` as the `jac` script does it. jaclang 0.10.2 imports typing.override (Python >= 3.12)
# in its own CLI code, so on Python 3.11 the shim below is needed for `jac run` to start at all.
JAC_CLI = """
import sys, typing
if not hasattr(typing, "override"):
    typing.override = lambda f: f
from jaclang.jac0core.cli_boot import start_cli
sys.argv[0] = "jac"
sys.exit(start_cli())
"""


@pytest.mark.skipif(shutil.which("jac") is None, reason="jaclang is not installed")
def test_jac_run_uses_remote_modules(server_factory: Any, tmp_path: Path) -> None:
    # Both servers were given one call token; the plugin sends JAC_SPLICE_TOKEN with every call.
    token = {"JAC_SPLICE_CALL_TOKEN": "jac-plugin-call-token"}
    numpy_server = server_factory("numpy", env=token)
    testmod_server = server_factory("splice_testmod", env=token)
    program = tmp_path / "remote.jac"
    program.write_text(JAC_PROGRAM)
    config = tmp_path / "splice.json"
    config.write_text(json.dumps({"servers": {"splice_testmod": testmod_server.address}}))
    env = server_env()
    env.pop("PYTHONPATH")  # splice_testmod must come from the module server
    env.update(
        JAC_SPLICE_SERVER=numpy_server.address,
        JAC_SPLICE_MODULES="numpy,splice_testmod",
        JAC_SPLICE_CONFIG=str(config),
        JAC_SPLICE_TOKEN="jac-plugin-call-token",
    )
    result = subprocess.run(
        [sys.executable, "-c", JAC_CLI, "run", str(program)], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert lines["sum"] == "10"
    assert int(lines["server_pid"]) == testmod_server.proc.pid
    assert int(lines["local_pid"]) != testmod_server.proc.pid


def test_the_plugin_reads_token_and_ca_from_the_environment(tmp_path: Path) -> None:
    config_file = tmp_path / "splice.json"
    config_file.write_text(json.dumps({"server": "h:1", "token": "from-file", "ca": "file.pem"}))
    env = {"JAC_SPLICE_CONFIG": str(config_file), "JAC_SPLICE_MODULES": "numpy"}
    assert load_config(env)["token"] == "from-file"
    env.update(JAC_SPLICE_TOKEN="from-env", JAC_SPLICE_CA="/etc/ca.pem")
    config = load_config(env)
    assert (config["token"], config["ca"], config["modules"]) == (
        "from-env",
        "/etc/ca.pem",
        ["numpy"],
    )


def test_modules_with_settings_are_deployed_on_import_unless_deploy_is_false(
    tmp_path: Path,
) -> None:
    config_file = tmp_path / "splice.json"
    modules = {
        "numpy": {"packages": ["numpy"], "cpu": "500m", "idle_timeout": "10m"},
        "scipy": {"deploy": False},
        "json": None,
    }
    config_file.write_text(json.dumps({"server": "h:1", "modules": modules}))
    config = load_config({"JAC_SPLICE_CONFIG": str(config_file)})
    assert config["modules"] == ["numpy", "scipy", "json"]
    assert config["deploy"] == {
        "numpy": {"packages": ["numpy"], "cpu": "500m", "idle_timeout": "10m"},
        "json": {},
    }
    config_file.write_text(json.dumps({"modules": {"numpy": {"gpus": 1}}}))
    with pytest.raises(ValueError, match="unknown settings \\['gpus'\\]"):
        load_config({"JAC_SPLICE_CONFIG": str(config_file)})

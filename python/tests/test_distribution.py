"""The built wheel in a fresh venv without numpy: numpy is optional for clients, and for module
servers whose module does not need it.

The wheel is JAC_SPLICE_WHEEL (scripts/test.sh sets it to the one it built), else the one in
python/dist/; without either the test skips, saying how to build one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

DIST = Path(__file__).resolve().parents[1] / "dist"

CLIENT = """
import importlib.util, json, sys
import jac_splice

out = {"numpy_importable": importlib.util.find_spec("numpy") is not None}
out["sqrt"] = jac_splice.connect(sys.argv[1]).import_module("math").sqrt(16.0)
np = jac_splice.connect(sys.argv[2]).import_module("numpy")
total = np.sum([1, 2, 3])  # a numpy int64 there: the equal int here
out["sum"] = [total, type(total).__name__]
try:
    np.arange(3)
except jac_splice.NumpyRequiredError as e:
    out["error"] = [str(e), isinstance(e, ImportError)]
print(json.dumps(out))
"""


def built_wheel() -> Path:
    given = os.environ.get("JAC_SPLICE_WHEEL")
    if given:
        assert Path(given).is_file(), f"JAC_SPLICE_WHEEL={given} does not exist"
        return Path(given)
    wheels = sorted(DIST.glob("jac_splice-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        pytest.skip(f"no wheel in {DIST}: build one with `bash python/scripts/build.sh`")
    return wheels[-1]


def clean_env() -> dict[str, str]:
    """This environment without anything that points Python or pip elsewhere."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV", "CONDA"))
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def run(args: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def test_a_fresh_venv_without_numpy_calls_remote_modules_and_names_the_extra_for_arrays(
    tmp_path: Path, server_factory: Any
) -> None:
    wheel = built_wheel()
    env = clean_env()
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], env, tmp_path)
    python = str(venv / "bin" / "python")
    # --no-index: the wheel alone, nothing from an index (it requires no numpy).
    run([python, "-m", "pip", "install", "-q", "--no-index", str(wheel)], env, tmp_path)
    # The module server too runs in the venv: serving math needs no numpy.
    math_server = server_factory("math", python=python, base_env=env)
    numpy_server = server_factory("numpy")
    out = json.loads(
        run([python, "-c", CLIENT, math_server.address, numpy_server.address], env, tmp_path)
    )
    assert out["numpy_importable"] is False
    assert out["sqrt"] == 4.0
    assert out["sum"] == [6, "int"]
    message, is_import_error = out["error"]
    assert is_import_error, message
    assert "a numpy array (dtype '<i8', shape (3,))" in message, message
    assert "pip install 'jac-splice[numpy]'" in message, message

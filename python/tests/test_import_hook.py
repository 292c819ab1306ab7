"""`remote_imports` makes plain `import` statements return remote modules."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import jac_splice


def test_import_statement_returns_the_remote_module(server: Any) -> None:
    sys.modules.pop("splice_testmod", None)
    with jac_splice.remote_imports(["splice_testmod"], server=server.address):
        import splice_testmod  # type: ignore[import-not-found]
        from splice_testmod import pid  # type: ignore[import-not-found]

        assert isinstance(splice_testmod, jac_splice.RemoteModule)
        assert splice_testmod.pid() == pid() == server.proc.pid != os.getpid()
    assert "splice_testmod" not in sys.modules


def test_other_modules_import_normally(server: Any) -> None:
    with jac_splice.remote_imports(["splice_testmod"], server=server.address):
        json = importlib.import_module("json")
        assert not isinstance(json, jac_splice.RemoteModule)

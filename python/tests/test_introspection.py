"""Proxies answer what tools ask of an object: help(), inspect.signature, __doc__ and the names
are the remote object's, and repr() says the object is remote and where."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from typing import Any

import numpy
import pytest

import jac_splice
from jac_splice import RemoteCallable, RemoteModule, RemoteObject

import splice_testmod
from conftest import ModuleServerProcess, start_server

ADDRESS_FREE = re.compile(r" at 0x[0-9a-f]+")


@pytest.fixture(scope="module")
def np_server() -> Iterator[ModuleServerProcess]:
    server = start_server("numpy")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def np(np_server: ModuleServerProcess) -> Any:
    return jac_splice.connect(np_server.address).import_module("numpy")


def test_help_shows_the_remote_signature_and_docstring(
    np: Any, tm: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    help(np.mean)
    shown = capsys.readouterr().out
    assert f"mean{inspect.signature(numpy.mean)}" in shown, shown
    assert "Compute the arithmetic mean along the specified axis." in shown, shown
    help(tm.documented)
    shown = capsys.readouterr().out
    assert "documented(a: 'Any', b: 'int' = 2, /, c: 'str' = 'x', *rest: 'Any'" in shown, shown
    assert "Adds things up.\n" in shown and "A second paragraph, for help()." in shown, shown


def test_inspect_signature_is_the_remote_one_parsed_locally(np: Any, tm: Any) -> None:
    assert str(inspect.signature(np.mean)) == str(inspect.signature(numpy.mean))
    assert str(inspect.signature(np.add)) == str(inspect.signature(numpy.add))
    remote = inspect.signature(tm.documented)
    local = inspect.signature(splice_testmod.documented)
    assert ADDRESS_FREE.sub("", str(remote)) == ADDRESS_FREE.sub("", str(local))
    assert [(p.name, p.kind) for p in remote.parameters.values()] == [
        (p.name, p.kind) for p in local.parameters.values()
    ]
    # Literal defaults are values; the rest stand in as their remote text.
    params = remote.parameters
    assert (params["b"].default, params["c"].default, params["scale"].default) == (2, "x", 1.5)
    assert repr(params["where"].default).startswith("<object object at 0x")
    assert repr(params["scale"].annotation) == "'float'"
    assert remote.bind(1, 2, "c", 4, scale=2.0, extra=1).arguments["rest"] == (4,)
    # A class's signature is its constructor's; a method's has no self.
    assert str(inspect.signature(tm.Box)) == "(items: 'list[Any]') -> 'None'"
    assert str(inspect.signature(tm.make_thing(1).bump)) == "(by: 'int' = 1) -> 'int'"
    # Not through __wrapped__ (proxies have none), and a builtin without one has none here either.
    assert not hasattr(tm.documented, "__wrapped__")
    with pytest.raises(ValueError, match="no signature found"):
        inspect.signature(tm.builtin_max)
    with pytest.raises(TypeError, match="not a callable object"):
        inspect.signature(tm.Box([]))


def test_doc_name_qualname_and_module_are_the_remote_objects(tm: Any) -> None:
    documented = tm.documented
    assert documented.__doc__ == splice_testmod.documented.__doc__
    assert (documented.__name__, documented.__qualname__) == ("documented", "documented")
    assert documented.__module__ == "splice_testmod"
    bump = tm.make_thing(1).bump
    assert (bump.__name__, bump.__qualname__, bump.__module__) == (
        "bump",
        "Thing.bump",
        "splice_testmod",
    )
    assert (
        tm.Box.__doc__ == tm.Box([1]).__doc__ == "A container exercising the forwarded protocols."
    )
    assert tm.Box([1]).__module__ == "splice_testmod"
    assert not hasattr(tm.Box([1]), "__name__") and not hasattr(tm.Box([1]), "__qualname__")
    assert tm.__doc__ == splice_testmod.__doc__ and tm.__name__ == "splice_testmod"
    assert not hasattr(tm, "__module__")  # a module has none
    # The proxy classes keep their own.
    assert RemoteObject.__doc__ is not None and "A proxy" in RemoteObject.__doc__
    assert RemoteObject.__module__ == RemoteCallable.__module__ == "jac_splice.proxy"
    assert isinstance(RemoteModule.__module__, str)


def test_an_instances_doc_is_asked_once_per_remote_type(server_factory: Any) -> None:
    server = server_factory("splice_testmod")
    tm = jac_splice.connect(server.address).import_module("splice_testmod")
    first = tm.Box([1])
    before = first.__doc__
    tm.set_box_doc("changed on the server")
    assert tm.Box.__doc__ == "changed on the server", "a class is described for itself"
    # Another instance of the type is answered from what the first one's type said.
    assert tm.Box([2]).__doc__ == before
    # Functions are described one by one.
    assert tm.documented.__doc__ != tm.identity.__doc__


def test_repr_says_remote_and_where_while_str_of_a_value_is_its_text(
    tm: Any, server: ModuleServerProcess
) -> None:
    at = server.address
    assert repr(tm) == str(tm) == f"<remote module 'splice_testmod' on {at}>"
    assert repr(tm.documented) == f"<remote function splice_testmod.documented on {at}>"
    assert str(tm.documented) == repr(tm.documented)
    assert repr(tm.Box) == f"<remote class splice_testmod.Box on {at}>"
    assert repr(tm.make_thing(1).bump) == f"<remote function splice_testmod.Thing.bump on {at}>"
    box = tm.Box([1, 2])
    assert repr(box) == f"<remote splice_testmod.Box object on {at}: Box([1, 2])>"
    assert str(box) == f"{box}" == "Box([1, 2])"
    assert f"{tm.documented}" == repr(tm.documented)
    # Plain values come back by value: they are local already.
    assert str(tm.ANSWER) == "42" and isinstance(tm.ANSWER, int)
    assert callable(tm.documented) and not callable(box)


def test_submodules_reached_as_attributes_say_they_are_modules(np: Any, np_server: Any) -> None:
    assert repr(np.linalg) == f"<remote module 'numpy.linalg' on {np_server.address}>"
    assert np.linalg.__name__ == "numpy.linalg"
    assert str(np.random.default_rng(1)).startswith("Generator(PCG64)")

"""Python protocols on proxies are forwarded to the remote object."""

from __future__ import annotations

from typing import Any

import pytest


def test_container_protocols(tm: Any) -> None:
    box = tm.Box([1, 2, 3])
    assert len(box) == 3
    assert 2 in box and 9 not in box
    assert box[0] == 1
    box[0] = 10
    assert list(box) == [10, 2, 3]
    assert repr(box).endswith(": Box([10, 2, 3])>")
    assert str(box) == "Box([10, 2, 3])"
    assert bool(box)


def test_operators_and_comparisons(tm: Any) -> None:
    a, b = tm.Box([1]), tm.Box([1, 2])
    assert (a + b).items == [1, 1, 2]
    assert (a + [5]).items == [1, 5]
    assert a < b and not b < a
    assert a == tm.Box([1]) and a != b


def test_unhashable_remote_objects_stay_unhashable(tm: Any) -> None:
    with pytest.raises(TypeError):
        hash(tm.Box([]))


def test_dir_lists_remote_attributes(tm: Any) -> None:
    names = dir(tm)
    assert "make_thing" in names and "ANSWER" in names


def test_setattr_changes_the_remote_object(tm: Any) -> None:
    thing = tm.make_thing(1)
    thing.value = 41
    assert thing.bump() == 42


def test_plain_attributes_come_by_value(tm: Any) -> None:
    assert tm.ANSWER == 42 and isinstance(tm.ANSWER, int)
    assert tm.__name__ == "splice_testmod"


def test_conversions_are_forwarded(tm: Any) -> None:
    thing = tm.make_thing(7)
    assert bytes(thing) == b"7" and complex(thing) == complex(7, 1)
    assert int(tm.ANSWER) == 42

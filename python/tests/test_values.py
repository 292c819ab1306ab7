"""Every Value kind survives a round trip (client -> server -> client) with its type."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

PLAIN = [
    None, True, False, 0, -5, 2**63 - 1, -(2**63), 2**100, -(3**90), 1.5, -0.0, float("inf"),
    complex(1, -2), "", "héllo ✓", b"", b"\x00\xff", [], [1, [2, "a"]], (), (1, (2.5, None)),
    {}, {"a": 1, 2: "b", (1, 2): None, frozenset({1}): [3]}, set(), {1, "x"}, frozenset({"a", 2}),
]  # fmt: skip


def same_type_tree(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return all(same_type_tree(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return all(same_type_tree(a[k], b[k]) for k in a)
    return True


@pytest.mark.parametrize("value", PLAIN, ids=repr)
def test_plain_values_round_trip_with_their_types(tm: Any, value: Any) -> None:
    back = tm.identity(value)
    assert back == value
    assert same_type_tree(back, value)


def test_nan_round_trips(tm: Any) -> None:
    assert math.isnan(tm.identity(float("nan")))


def test_kwargs_travel_by_name(tm: Any) -> None:
    assert tm.kwargs_echo(1, "a", flag=True, n=None) == [[1, "a"], {"flag": True, "n": None}]


DTYPES = ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_ndarray_dtypes_round_trip(tm: Any, dtype: str) -> None:
    a = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
    back = tm.identity(a)
    assert isinstance(back, np.ndarray)
    assert back.dtype == a.dtype and back.shape == a.shape
    assert np.array_equal(back, a)


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        lambda: np.arange(40.0).reshape(5, 8)[::2, 1::3],
        lambda: np.arange(12.0).reshape(3, 4).T,
        lambda: np.arange(6, dtype=">i4"),
        lambda: np.array(3.5),
        lambda: np.zeros((0, 3)),
        lambda: np.array(["ab", "c"]),
        lambda: np.array(["2024-01-01"], dtype="datetime64[D]"),
    ],
    ids=["fortran", "strided", "transposed", "big-endian", "0-d", "empty", "unicode", "datetime"],
)
def test_array_layouts_round_trip(tm: Any, make: Any) -> None:
    a = make()
    back = tm.identity(a)
    assert back.shape == a.shape and np.array_equal(back, a)
    assert back.flags.writeable


@pytest.mark.parametrize(
    "scalar", [np.float32(1.5), np.int8(-3), np.uint64(2**63), np.bool_(True), np.complex64(1 - 1j)]
)
def test_numpy_scalars_round_trip(tm: Any, scalar: Any) -> None:
    back = tm.identity(scalar)
    assert type(back) is type(scalar) and back == scalar


def test_64_mib_array_round_trips(tm: Any) -> None:
    a = np.random.default_rng(1).random(8 * 1024 * 1024)  # 64 MiB of float64
    back = tm.identity(a)
    assert np.array_equal(back, a)


def test_object_arrays_cannot_be_sent(tm: Any) -> None:
    with pytest.raises(TypeError, match="cannot send"):
        tm.identity(np.array([1, object()], dtype=object))


def test_local_objects_cannot_be_sent(tm: Any) -> None:
    with pytest.raises(TypeError, match="cannot send"):
        tm.identity(object())

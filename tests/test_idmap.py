"""IdMap: append-only, string-normalised, round trip through parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys.data.idmap import IdMap
from recsys.errors import InputError, UnknownIdError


def test_extend_appends_new_ids_and_never_moves_old_ones() -> None:
    m = IdMap(["a", "b"], "item")
    assert m.extend(["b", "c", "a", "d", "c"]) == 2
    assert m.ids == ["a", "b", "c", "d"]
    assert m.to_index(["a", "d"]).tolist() == [0, 3]


def test_ints_and_strings_are_the_same_id() -> None:
    m = IdMap([1, 2])
    assert m.to_index("2") == 1
    assert 1 in m
    assert m.to_external(np.array([1, 0])).tolist() == ["2", "1"]


def test_integral_floats_are_the_integer_id_and_fractions_stay_distinct() -> None:
    m = IdMap([1, 2], "user")
    assert m.to_index(2.0) == 1 and m.to_index(np.float32(1.0)) == 0
    assert m.to_index([1.0, "2"]).tolist() == [0, 1]
    assert 2.0 in m and 2.5 not in m
    assert m.extend([3.0, 3]) == 1 and m.ids == ["1", "2", "3"]
    with pytest.raises(UnknownIdError, match="2.5"):
        m.to_index(2.5)


def test_unknown_ids_raise_or_map_to_minus_one() -> None:
    m = IdMap(["x"], "user")
    with pytest.raises(UnknownIdError, match="unknown user id"):
        m.to_index(["y"])
    assert m.to_index(["y", "x"], missing="ignore").tolist() == [-1, 0]
    with pytest.raises(UnknownIdError):
        m.to_external(5)


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(InputError, match="not unique"):
        IdMap(["a", "a"])


def test_save_load_round_trip(tmp_path: Path) -> None:
    m = IdMap(["u9", "u1", "u5"], "user")
    m.save(tmp_path / "m.parquet")
    back = IdMap.load(tmp_path / "m.parquet", "user")
    assert back.ids == m.ids
    assert back.to_frame()["idx"].to_list() == [0, 1, 2]


def test_append_new_is_a_bulk_extend_that_refuses_known_ids() -> None:
    m = IdMap(["a"], "item")
    m.append_new(["b", "c"])
    assert m.ids == ["a", "b", "c"] and m.to_index("c") == 2
    with pytest.raises(InputError, match="repeated or already known"):
        m.append_new(["d", "a"])
    assert m.ids == ["a", "b", "c"] and "d" not in m

"""Defect 1 of issue 22: ids of every dtype are normalised or refused, never forked.

Before: a float-typed Parquet id column turned ``1`` into ``"1.0"``, so against the previous
id maps every user and item looked new (18 -> 36 users), fractional ids were accepted and
a boolean id column collapsed all users into one or two. The cases that already held
(missing/blank ids, stripped ids, int == str ids, a missing id column) stay here too.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from data_cases import cli_build, config

from recsys.data.build import build_dataset
from recsys.data.dataset import Dataset
from recsys.data.idmap import IdMap
from recsys.data.readers import InputSpec, read_items
from recsys.data.validate import ColumnMapping, validate_rows
from recsys.errors import InputError, SchemaError

N_USERS, N_ITEMS = 18, 120


def _log(seed: int = 0, n: int = 600) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    users = np.concatenate([np.arange(N_USERS), rng.integers(0, N_USERS, n - N_USERS)]) + 1
    items = np.concatenate([np.arange(N_ITEMS), rng.integers(0, N_ITEMS, n - N_ITEMS)])[:n] + 1000
    return pl.DataFrame({"u": users.astype(np.int64), "i": items.astype(np.int64)})


def test_float_parquet_ids_keep_the_id_maps_of_an_integer_build(tmp_path: Path) -> None:
    ints = _log()
    ints.write_parquet(tmp_path / "day1.parquet")
    out = tmp_path / "ds"
    first = build_dataset(config(tmp_path / "day1.parquet"), out)
    assert (first.n_users, first.n_items) == (N_USERS, N_ITEMS)
    # day 2: the same ids, written by a job whose id columns became float64 (a NaN gap)
    floats = ints.with_columns(pl.col("u", "i").cast(pl.Float64)).vstack(pl.DataFrame({"u": [float("nan")], "i": [1000.0]}))
    floats.write_parquet(tmp_path / "day2.parquet")
    code, _ = cli_build(tmp_path / "day2.parquet", out, "--max-reject-share", "0.01")
    assert code == 0
    second = Dataset.load(out)
    assert (second.n_users, second.n_items) == (N_USERS, N_ITEMS)  # was 36 users, 240 items
    assert second.manifest["id_maps"]["users_added"] == 0 and second.manifest["id_maps"]["items_added"] == 0
    assert second.user_map.ids == first.user_map.ids and second.item_map.ids == first.item_map.ids
    assert second.manifest["rows"]["rejected_by_reason"] == {"user_id_missing": 1}  # the NaN id
    assert second.manifest["input_profile"]["user_kind"] == "float"


def test_integral_float_ids_become_integer_strings(tmp_path: Path) -> None:
    pl.DataFrame({"u": [1.0, 2.0, -3.0], "i": [10.0, 20.0, 0.0]}).write_parquet(tmp_path / "f.parquet")
    ds = build_dataset(config(tmp_path / "f.parquet"), tmp_path / "ds")
    assert sorted(ds.user_map.ids) == ["-3", "1", "2"] and sorted(ds.item_map.ids) == ["0", "10", "20"]


@pytest.mark.parametrize(
    ("values", "shown"),
    [([1.0, 1.5, 2.0], "1.5"), ([1.0, float("inf")], "inf"), ([1.0, 2.0**60], "1.15")],
    ids=["fraction", "infinite", "beyond-2**53"],
)
def test_float_ids_that_are_not_whole_numbers_are_a_schema_error(tmp_path: Path, capsys, values: list[float], shown: str) -> None:
    pl.DataFrame({"u": values, "i": [7] * len(values)}).write_parquet(tmp_path / "f.parquet")
    with pytest.raises(SchemaError, match=rf"user id column 'u' \(Float64\).*{shown}.*integers"):
        build_dataset(config(tmp_path / "f.parquet"), tmp_path / "ds")
    code, err = cli_build(tmp_path / "f.parquet", tmp_path / "ds", capsys=capsys)
    assert code == 2 and "SchemaError" in err and "Traceback" not in err
    assert not (tmp_path / "ds").exists()


def test_boolean_id_column_is_a_schema_error_naming_the_fix(tmp_path: Path, capsys) -> None:
    pl.DataFrame({"u": [True, False, True], "i": [1, 2, 3]}).write_parquet(tmp_path / "b.parquet")
    with pytest.raises(SchemaError, match=r"user id column 'u' \(Boolean\).*true/false.*--user-col"):
        build_dataset(config(tmp_path / "b.parquet"), tmp_path / "ds")
    code, err = cli_build(tmp_path / "b.parquet", tmp_path / "ds", capsys=capsys)
    assert code == 2 and "Boolean" in err
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    "column",
    [pl.Series("i", [dt.date(2026, 1, 1)] * 2), pl.Series("i", [[1], [2]]), pl.Series("i", [b"a", b"b"])],
    ids=["date", "list", "binary"],
)
def test_non_id_dtypes_are_a_schema_error(tmp_path: Path, column: pl.Series) -> None:
    pl.DataFrame({"u": [1, 2]}).with_columns(column).write_parquet(tmp_path / "x.parquet")
    with pytest.raises(SchemaError, match=r"item id column 'i' .*not an id type.*--item-col"):
        build_dataset(config(tmp_path / "x.parquet"), tmp_path / "ds")


def test_float_formatted_csv_ids_match_the_integer_ids_of_a_previous_build(tmp_path: Path) -> None:
    _log().write_csv(tmp_path / "day1.csv")
    out = tmp_path / "ds"
    first = build_dataset(config(tmp_path / "day1.csv"), out)
    # the same log exported by pandas from a float column: "1.0", "1000.0"
    (tmp_path / "day2.csv").write_text("u,i\n" + "".join(f"{u}.0,{i}.0\n" for u, i in _log().iter_rows()))
    second = build_dataset(config(tmp_path / "day2.csv"), out)
    assert second.user_map.ids == first.user_map.ids and second.item_map.ids == first.item_map.ids
    assert second.manifest["id_maps"]["users_added"] == 0
    assert second.manifest["input_profile"]["user_kind"] == "float_text"


def test_fractional_csv_ids_are_a_schema_error(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("u,i\n1.0,5\n2.0,5\n2.5,6\n")
    with pytest.raises(SchemaError, match=r"user id column 'u' \(String\).*'2.5'"):
        build_dataset(config(tmp_path / "x.csv"), tmp_path / "ds")


def test_files_mixing_integer_and_float_text_ids_are_refused_not_forked(tmp_path: Path, capsys) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.csv").write_text("u,i\n" + "".join(f"{k},10\n" for k in range(1, 1200)))
    (logs / "b.csv").write_text("u,i\n1.0,11\n")  # the first 1000 values decide: integers
    with pytest.raises(SchemaError, match=r"user ids '1.0' and '1' both occur.*integers in every file"):
        build_dataset(config(logs), tmp_path / "ds")
    code, err = cli_build(logs, tmp_path / "ds", capsys=capsys)
    assert code == 2 and "both occur" in err


def test_a_previous_map_written_from_float_ids_is_refused_with_the_fix(tmp_path: Path) -> None:
    prev = tmp_path / "prev"
    prev.mkdir()
    IdMap(["1.0", "2.0"], "user").save(prev / "user_map.parquet")  # what the old build wrote
    IdMap(["10"], "item").save(prev / "item_map.parquet")
    (tmp_path / "x.csv").write_text("u,i\n1,10\n3,10\n")
    with pytest.raises(SchemaError, match=r"previous id map.*--fresh-ids"):
        build_dataset(config(tmp_path / "x.csv"), tmp_path / "ds", previous=prev)


def test_parquet_files_with_different_id_dtypes_exit_2_naming_the_schema_problem(tmp_path: Path, capsys) -> None:
    for day, ids in (("2026-11-24", [1, 2]), ("2026-11-25", [1.0, 3.0])):
        (tmp_path / "logs" / f"dt={day}").mkdir(parents=True)
        pl.DataFrame({"u": ids, "i": [5, 6]}).write_parquet(tmp_path / "logs" / f"dt={day}" / "p.parquet")
    with pytest.raises(InputError, match="disagree on their columns or types"):
        build_dataset(config(tmp_path / "logs"), tmp_path / "ds")
    code, err = cli_build(tmp_path / "logs", tmp_path / "ds", capsys=capsys)
    assert code == 2 and "Traceback" not in err


def test_float_item_ids_of_the_metadata_meet_the_event_ids(tmp_path: Path) -> None:
    pl.DataFrame({"id": [10.0, 11.0, 12.0], "title": ["a", "b", "c"]}).write_parquet(tmp_path / "items.parquet")
    items, _, _ = read_items(InputSpec(str(tmp_path / "items.parquet")), "id", ("title",))
    assert items["external_id"].to_list() == ["10", "11", "12"]
    (tmp_path / "x.csv").write_text("u,i\n1,10\n2,11\n")
    ds = build_dataset(config(tmp_path / "x.csv", items=InputSpec(str(tmp_path / "items.parquet")), item_id_col="id",
                              item_text_cols=("title",)), tmp_path / "ds")
    assert ds.items.filter(pl.col("external_id") == "10")["title"].to_list() == ["a"]
    assert ds.manifest["items"]["items_without_metadata"] == 0


# -- what held before the fix ------------------------------------------------------------


@pytest.mark.parametrize(("bad", "reason"), [({"u": None}, "user_id_missing"), ({"u": "  "}, "user_id_missing"),
                                             ({"i": ""}, "item_id_missing"), ({"i": None}, "item_id_missing")])
def test_missing_or_blank_ids_are_rejected_with_a_reason(bad: dict, reason: str) -> None:
    rows = [{"u": "1", "i": "a"}, {"u": "2", "i": "b"}, {"u": "3", "i": "c", **bad}]
    clean, rejects = validate_rows(pl.DataFrame(rows, schema={"u": pl.String, "i": pl.String}).lazy(), ColumnMapping("u", "i"))
    assert clean["user_id"].to_list() == ["1", "2"]
    assert rejects["reason"].to_list() == [reason]


def test_padded_string_ids_and_integer_ids_are_the_same_id(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("u,i\n 7 ,x\n8,y\n")
    out = tmp_path / "ds"
    build_dataset(config(tmp_path / "a.csv"), out)
    pl.DataFrame({"u": [7, 8], "i": ["y", "x"]}).write_parquet(tmp_path / "b.parquet")
    ds = build_dataset(config(tmp_path / "b.parquet"), out)
    assert ds.user_map.ids == ["7", "8"] and ds.manifest["id_maps"]["users_added"] == 0


def test_a_missing_id_column_exits_2_naming_the_columns_present(tmp_path: Path, capsys) -> None:
    (tmp_path / "x.csv").write_text("user,i\n1,2\n")
    code, err = cli_build(tmp_path / "x.csv", tmp_path / "ds", capsys=capsys)
    assert code == 2 and "['u']" in err and "columns present: ['user', 'i']" in err
    assert not (tmp_path / "ds").exists()


def test_all_ids_missing_exits_2_as_a_data_quality_failure(tmp_path: Path, capsys) -> None:
    (tmp_path / "x.csv").write_text("u,i\n,1\n,2\n")
    code, err = cli_build(tmp_path / "x.csv", tmp_path / "ds", capsys=capsys)
    assert code == 2 and "DataQualityError" in err and "user_id_missing=2" in err

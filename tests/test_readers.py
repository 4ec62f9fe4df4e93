"""Reading logs from files, globs and date partitions, with a trailing window."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from recsys.data.readers import InputSpec, read_items, resolve_files, scan_table, window_bounds
from recsys.errors import ConfigError, InputError, SchemaError


def _partitions(root: Path, days: list[str], fmt: str = "csv") -> None:
    for k, d in enumerate(days):
        part = root / f"dt={d}"
        part.mkdir(parents=True)
        df = pl.DataFrame({"user": [f"u{k}"], "item": [f"i{k}"]})
        df.write_csv(part / "part-0.csv") if fmt == "csv" else df.write_parquet(part / "part-0.parquet")


def test_window_bounds_cover_exactly_window_days() -> None:
    assert window_bounds("2026-11-25", 7) == (dt.date(2026, 11, 19), dt.date(2026, 11, 25))
    assert window_bounds(None, None) == (None, None)
    with pytest.raises(ConfigError, match="needs as_of"):
        window_bounds(None, 3)
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        window_bounds("25/11/2026", 3)


def test_trailing_window_selects_partitions(tmp_path: Path) -> None:
    _partitions(tmp_path, ["2026-11-20", "2026-11-23", "2026-11-24", "2026-11-25", "2026-11-26"])
    lf, files = scan_table(InputSpec(str(tmp_path)), as_of="2026-11-25", window_days=3)
    assert [f.parent.name for f in files] == ["dt=2026-11-23", "dt=2026-11-24", "dt=2026-11-25"]
    assert lf.collect()["user"].to_list() == ["u1", "u2", "u3"]


def test_window_without_matching_partition_is_a_clear_error(tmp_path: Path) -> None:
    _partitions(tmp_path, ["2026-01-01"])
    with pytest.raises(InputError, match="no date partition"):
        resolve_files(str(tmp_path), "2026-11-25", 7)


def test_parquet_partitions_and_glob(tmp_path: Path) -> None:
    _partitions(tmp_path, ["2026-11-24", "2026-11-25"], fmt="parquet")
    lf, files = scan_table(InputSpec(str(tmp_path / "dt=*" / "*.parquet")))
    assert len(files) == 2
    assert lf.collect().height == 2


def test_csv_columns_are_read_as_strings(tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_text("u,i,r\n1,2,4.5\n3,4,abc\n")
    df = scan_table(InputSpec(str(f)))[0].collect()
    assert df.schema == {"u": pl.String, "i": pl.String, "r": pl.String}
    assert df["r"].to_list() == ["4.5", "abc"]


def test_headerless_tab_separated_file(tmp_path: Path) -> None:
    f = tmp_path / "u.data"
    f.write_text("1\t10\t5\t881250949\n2\t20\t3\t881250950\n")
    df = scan_table(InputSpec(str(f), sep="\t", has_header=False, columns=("u", "i", "r", "t")))[0].collect()
    assert df.columns == ["u", "i", "r", "t"]
    assert df["i"].to_list() == ["10", "20"]


def test_missing_path_and_headerless_without_columns_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        resolve_files(str(tmp_path / "nope.csv"))
    with pytest.raises(ConfigError, match="needs `columns`"):
        InputSpec("x.csv", has_header=False)


def test_read_items_latin1_dedup_and_missing_ids(tmp_path: Path) -> None:
    f = tmp_path / "items.psv"
    f.write_bytes("1|Amélie|Comedy\n1|Amélie again|Drama\n|No id|X\n2|Heat|Crime\n".encode("latin-1"))
    spec = InputSpec(str(f), sep="|", has_header=False, columns=("id", "title", "genres"), encoding="latin-1")
    items, files, stats = read_items(spec, "id", ("title", "genres"))
    assert items["external_id"].to_list() == ["1", "2"]
    assert items["title"].to_list() == ["Amélie", "Heat"]
    assert stats == {"rows": 4, "rows_missing_id": 1, "duplicate_ids": 1, "rows_unique": 2}


def test_read_items_names_missing_columns(tmp_path: Path) -> None:
    f = tmp_path / "items.csv"
    f.write_text("id,title\n1,a\n")
    with pytest.raises(SchemaError, match=r"\['genres'\].*columns present"):
        read_items(InputSpec(str(f)), "id", ("title", "genres"))

"""Defect 2 of issue 22: implausible timestamps are inferred, refused or rejected.

Before: millisecond times were read as seconds (year ~45,000), negative and far-future
times passed, and with time decay five far-future rows (0.25%) became the reference time
and gave 1,994 of 1,999 rows weight 0. Now the unit is inferred from the magnitude (or
refused with a hint to ``--time-unit``), rows before 1970 or later than one day after
``as_of`` (or now) are rejected with a reason, and rejected rows never set the reference.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from data_cases import cli_build, config

from recsys.data.build import WeightConfig, build_dataset
from recsys.data.dataset import Dataset
from recsys.data.validate import ColumnMapping, validate_rows
from recsys.errors import DataQualityError, SchemaError

T0 = 1_700_000_000  # 2023-11-14, unix seconds
DAY = 86_400
YEAR_2100 = 4_102_444_800


def _times_csv(path: Path, times: list[int | str], n_users: int = 10) -> Path:
    path.write_text("u,i,t\n" + "".join(f"{k % n_users},{k % 7},{t}\n" for k, t in enumerate(times)))
    return path


@pytest.mark.parametrize(("unit", "scale"), [("ms", 1_000), ("us", 1_000_000), ("ns", 1_000_000_000)])
def test_sub_second_units_are_inferred_not_read_as_seconds(tmp_path: Path, unit: str, scale: int) -> None:
    times = [(T0 + k * 3_600) * scale + 123 for k in range(50)]
    f = _times_csv(tmp_path / "x.csv", times)
    assert cli_build(f, tmp_path / "ds", "--time-col", "t")[0] == 0
    ds = Dataset.load(tmp_path / "ds")
    ts = ds.split("train")["timestamp"]
    assert ts.min() >= T0 and ts.max() <= T0 + 50 * 3_600  # not the year ~45,000
    assert ds.manifest["input_profile"]["time_unit"] == unit and ds.manifest["input_profile"]["time_unit_inferred"]
    assert ds.manifest["rows"]["rejected"] == 0


def test_parquet_integer_milliseconds_are_inferred_too(tmp_path: Path) -> None:
    pl.DataFrame({"u": [1, 2, 3], "i": [4, 5, 6], "t": [T0 * 1000, (T0 + 60) * 1000, (T0 + 120) * 1000]}).write_parquet(tmp_path / "x.parquet")
    ds = build_dataset(config(tmp_path / "x.parquet", time="t"), tmp_path / "ds")
    assert sorted(ds.split("train")["timestamp"].to_list()) == [T0, T0 + 60, T0 + 120]


def test_numbers_that_are_no_plausible_time_in_any_unit_are_refused_with_a_hint(tmp_path: Path, capsys) -> None:
    f = _times_csv(tmp_path / "x.csv", [50_000_000_000 + k for k in range(20)])  # 3554 in s, 1971 in ms
    with pytest.raises(SchemaError, match=r"time column 't'.*no plausible unix time.*--time-unit"):
        build_dataset(config(f, time="t"), tmp_path / "ds")
    code, err = cli_build(f, tmp_path / "ds", "--time-col", "t", capsys=capsys)
    assert code == 2 and "--time-unit" in err
    assert not (tmp_path / "ds").exists()


def test_an_explicit_time_unit_is_obeyed_and_implausible_rows_are_rejected(tmp_path: Path, capsys) -> None:
    f = _times_csv(tmp_path / "x.csv", [(T0 + k) * 1000 for k in range(20)])
    code, err = cli_build(f, tmp_path / "ds", "--time-col", "t", "--time-unit", "s", capsys=capsys)
    assert code == 2 and "timestamp_in_future=20" in err  # ms read as s: every row is in the far future
    assert cli_build(f, tmp_path / "ds", "--time-col", "t", "--time-unit", "ms")[0] == 0


def test_negative_and_far_future_rows_are_rejected_with_reasons_and_counted(tmp_path: Path) -> None:
    times = [T0 + k * 60 for k in range(300)] + [-86_400, YEAR_2100, "1969-07-20 20:17:40"]
    f = _times_csv(tmp_path / "x.csv", times)
    ds = build_dataset(config(f, time="t"), tmp_path / "ds")
    assert ds.manifest["rows"]["rejected_by_reason"] == {"timestamp_before_1970": 2, "timestamp_in_future": 1}
    rej = pl.read_parquet(tmp_path / "ds" / "rejects.parquet")
    assert sorted(rej["t"].to_list()) == sorted(["-86400", str(YEAR_2100), "1969-07-20 20:17:40"])
    assert ds.split("train")["timestamp"].max() == T0 + 299 * 60


def test_rows_later_than_one_day_after_as_of_are_rejected(tmp_path: Path) -> None:
    as_of = dt.date(2026, 11, 25)
    end = int(dt.datetime(2026, 11, 26, tzinfo=dt.timezone.utc).timestamp())  # end of the as_of day
    times = [end - k * 600 for k in range(1, 200)] + [end + 20 * 3_600, end + DAY + 1]
    f = _times_csv(tmp_path / "x.csv", times)
    ds = build_dataset(config(f, time="t", as_of=as_of.isoformat()), tmp_path / "ds")
    assert ds.manifest["rows"]["rejected_by_reason"] == {"timestamp_in_future": 1}  # +20 h is within the tolerance
    assert ds.split("train")["timestamp"].max() == end + 20 * 3_600
    assert ds.manifest["input_profile"]["max_time"] == end + DAY


def test_far_future_rows_no_longer_set_the_time_decay_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    good = (T0 + rng.integers(0, 60 * DAY, 1_995)).tolist()
    f = _times_csv(tmp_path / "x.csv", good + [YEAR_2100] * 5, n_users=50)
    cfg = config(f, time="t", weights=WeightConfig(half_life_days=30, aggregate="max"))
    ds = build_dataset(cfg, tmp_path / "ds")
    train = ds.split("train")
    assert (train["weight"] > 0).all()  # was 1,994 of 1,999 rows at weight 0
    assert ds.manifest["rows"]["rejected_by_reason"] == {"timestamp_in_future": 5}
    newest = train.filter(pl.col("timestamp") == train["timestamp"].max())
    assert newest["weight"].to_list() == pytest.approx([1.0] * newest.height)  # the reference is the newest valid row


# -- what held before the fix ------------------------------------------------------------


def test_date_time_strings_and_parquet_datetimes_parse_to_unix_seconds(tmp_path: Path) -> None:
    lf = pl.DataFrame({"u": ["1", "2"], "i": ["a", "b"], "t": ["2026-11-25 00:00:00", "2026-11-25T00:00:10"]}).lazy()
    clean, rejects = validate_rows(lf, ColumnMapping("u", "i", time="t"))
    assert rejects.height == 0 and clean["timestamp"].to_list() == [1795564800, 1795564810]
    pl.DataFrame({"u": [1], "i": [2], "t": [dt.datetime(2026, 11, 25)]}).write_parquet(tmp_path / "x.parquet")
    ds = build_dataset(config(tmp_path / "x.parquet", time="t"), tmp_path / "ds")
    assert ds.split("train")["timestamp"].to_list() == [1795564800]


@pytest.mark.parametrize(("bad", "reason"), [(None, "timestamp_missing"), ("soon", "timestamp_unparsable"),
                                             ("2026-13-45", "timestamp_unparsable")])
def test_missing_and_unparsable_times_are_rejected_with_a_reason(bad: str | None, reason: str) -> None:
    lf = pl.DataFrame({"u": ["1", "2", "3"], "i": ["a", "b", "c"], "t": [str(T0), str(T0 + 1), bad]}).lazy()
    clean, rejects = validate_rows(lf, ColumnMapping("u", "i", time="t"))
    assert clean.height == 2 and rejects["reason"].to_list() == [reason]


def test_mostly_bad_times_fail_the_build_with_exit_2(tmp_path: Path, capsys) -> None:
    f = _times_csv(tmp_path / "x.csv", [str(T0), "never", "later"])
    code, err = cli_build(f, tmp_path / "ds", "--time-col", "t", capsys=capsys)
    assert code == 2 and "timestamp_unparsable=2" in err
    with pytest.raises(DataQualityError):
        build_dataset(config(f, time="t"), tmp_path / "ds")

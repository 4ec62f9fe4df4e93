"""Defect 6 of issue 22: weights beyond the float32 range are rejected, sums that overflow refused.

Before: 1e300, 3.5e38 and the sum of two 1e308 passed validation (they are finite float64),
were stored as +inf float32 weights, and the run aborted later in training (exit 2 without
naming a file or a row). The rules that already held (missing, non-numeric, NaN, inf,
negative weights; the reject share) stay here too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from data_cases import cli_build, config

from recsys.data.build import WeightConfig, build_dataset
from recsys.data.validate import F32_MAX, ColumnMapping, validate_rows
from recsys.errors import DataQualityError

GOOD = [f"u{k % 9},i{k % 13},{1 + k % 5}" for k in range(300)]


def _weights_csv(path: Path, extra: list[str]) -> Path:
    path.write_text("\n".join(["u,i,w", *GOOD, *extra]) + "\n")
    return path


@pytest.mark.parametrize("value", ["1e300", "3.5e38", "1e308", "3.4028236e38"])
def test_weights_above_the_float32_range_are_rejected_per_row(tmp_path: Path, value: str) -> None:
    f = _weights_csv(tmp_path / "x.csv", [f"u1,i1,{value}"])
    ds = build_dataset(config(f, weight="w"), tmp_path / "ds")
    assert ds.manifest["rows"]["rejected_by_reason"] == {"weight_too_large": 1}
    assert pl.read_parquet(tmp_path / "ds" / "rejects.parquet")["w"].to_list() == [value]
    train = ds.split("train")
    assert np.isfinite(train["weight"].to_numpy()).all() and np.isfinite(train["rating"].to_numpy()).all()


def test_two_1e308_rows_of_one_pair_are_rejected_before_they_are_summed(tmp_path: Path, capsys) -> None:
    f = _weights_csv(tmp_path / "x.csv", ["u1,i1,1e308", "u1,i1,1e308"])
    code, _ = cli_build(f, tmp_path / "ds", "--weight-col", "w", capsys=capsys)
    assert code == 0
    ds = build_dataset(config(f, weight="w"), tmp_path / "ds2")
    assert ds.manifest["rows"]["rejected_by_reason"] == {"weight_too_large": 2}
    assert np.isfinite(ds.split("train")["weight"].to_numpy()).all()


def test_the_float32_maximum_itself_is_accepted() -> None:
    lf = pl.DataFrame({"u": ["1"], "i": ["a"], "w": [repr(F32_MAX)]}).lazy()
    clean, rejects = validate_rows(lf, ColumnMapping("u", "i", weight="w"))
    assert rejects.height == 0 and clean["value"].to_list() == [F32_MAX]


def test_a_sum_that_overflows_float32_after_merging_exits_2_naming_file_and_pair(tmp_path: Path, capsys) -> None:
    f = _weights_csv(tmp_path / "x.csv", ["u1,i1,2e38", "u1,i1,3e38"])  # each fits, the sum does not
    with pytest.raises(DataQualityError, match=r"x\.csv.*float32 maximum.*'user': 'u1', 'item': 'i1'.*--aggregate max"):
        build_dataset(config(f, weight="w"), tmp_path / "ds")
    code, err = cli_build(f, tmp_path / "ds", "--weight-col", "w", capsys=capsys)
    assert code == 2 and "x.csv" in err and "'rows': 5" in err  # u1,i1 also has 3 rows in GOOD
    assert not (tmp_path / "ds").exists()
    # the fix the message names works
    assert cli_build(f, tmp_path / "ds", "--weight-col", "w", "--aggregate", "max")[0] == 0


def test_an_event_weight_multiplier_that_overflows_is_refused_too(tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_text("u,i,w,e\n1,a,1,view\n2,b,3e38,purchase\n3,c,2,view\n")
    cfg = config(f, weight="w", event_type="e", weights=WeightConfig(event_weights={"view": 1.0, "purchase": 10.0}))
    with pytest.raises(DataQualityError, match=r"'user': '2', 'item': 'b'"):
        build_dataset(cfg, tmp_path / "ds")


# -- what held before the fix ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [("", "weight_missing"), ("abc", "weight_not_numeric"), ("NaN", "weight_nan"), ("inf", "weight_infinite"),
     ("-inf", "weight_infinite"), ("-0.5", "weight_negative")],
)
def test_bad_weights_are_rejected_with_a_reason_and_kept(tmp_path: Path, value: str, reason: str) -> None:
    f = _weights_csv(tmp_path / "x.csv", [f"u1,i1,{value}"])
    ds = build_dataset(config(f, weight="w"), tmp_path / "ds")
    assert ds.manifest["rows"]["rejected_by_reason"] == {reason: 1}
    rej = pl.read_parquet(tmp_path / "ds" / "rejects.parquet")
    assert rej["reason"].to_list() == [reason] and rej["w"].to_list() == [value or None]
    assert ds.manifest["rows"]["in"] == len(GOOD) + 1


def test_parquet_nan_and_negative_weights_are_rejected(tmp_path: Path) -> None:
    pl.DataFrame({"u": [1, 2, 3, 4], "i": [1, 1, 1, 1], "w": [1.0, float("nan"), -2.0, 3e39]}).write_parquet(tmp_path / "x.parquet")
    ds = build_dataset(config(tmp_path / "x.parquet", weight="w", max_reject_share=1.0), tmp_path / "ds")
    assert ds.manifest["rows"]["rejected_by_reason"] == {"weight_nan": 1, "weight_negative": 1, "weight_too_large": 1}
    assert ds.n_users == 1


def test_too_many_bad_weights_exit_2_and_write_nothing(tmp_path: Path, capsys) -> None:
    f = tmp_path / "x.csv"
    f.write_text("u,i,w\n1,a,1\n2,b,abc\n3,c,1e300\n")
    code, err = cli_build(f, tmp_path / "ds", "--weight-col", "w", capsys=capsys)
    assert code == 2 and "weight_not_numeric=1" in err and "weight_too_large=1" in err and "--max-reject-share" in err
    assert not (tmp_path / "ds").exists()

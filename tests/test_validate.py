"""Every validation rule rejects its bad input with the documented reason."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys.data.profile import infer_time_unit, time_horizon
from recsys.data.validate import ColumnMapping, check_reject_share, reason_counts, validate_rows
from recsys.errors import DataQualityError, SchemaError

FULL = ColumnMapping(user="u", item="i", weight="w", time="t", event_type="e")


def _one_bad(**bad: str | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Two good rows and one bad row (all strings, as a CSV is read)."""
    good = {"u": "1", "i": "10", "w": "4.5", "t": "1700000000", "e": "view"}
    rows = [good, {**good, "u": "2"}, {**good, **bad}]
    lf = pl.DataFrame(rows, schema={k: pl.String for k in good}).lazy()
    return validate_rows(lf, FULL, known_event_types=["view", "cart"])


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"u": None}, "user_id_missing"),
        ({"u": "   "}, "user_id_missing"),
        ({"i": ""}, "item_id_missing"),
        ({"t": None}, "timestamp_missing"),
        ({"t": "yesterday-ish"}, "timestamp_unparsable"),
        ({"w": None}, "weight_missing"),
        ({"w": "abc"}, "weight_not_numeric"),
        ({"w": "NaN"}, "weight_nan"),
        ({"w": "inf"}, "weight_infinite"),
        ({"w": "-1"}, "weight_negative"),
        ({"e": ""}, "event_type_missing"),
        ({"e": "  "}, "event_type_missing"),
        ({"e": "teleport"}, "event_type_unknown"),
    ],
)
def test_rejects_bad_row_with_reason_and_keeps_good_rows(bad: dict, reason: str) -> None:
    clean, rejects = _one_bad(**bad)
    assert clean.height == 2
    assert clean["user_id"].to_list() == ["1", "2"]
    assert rejects.height == 1
    assert rejects["reason"].to_list() == [reason]
    # the rejected row is kept with the values as written
    assert rejects.columns == ["u", "i", "w", "t", "e", "reason"]
    for col, value in bad.items():
        assert rejects[col][0] == value


def test_clean_rows_are_parsed_to_canonical_types() -> None:
    clean, rejects = _one_bad(u=" 7 ", w="3", t="2026-11-25 10:00:00")
    assert rejects.height == 0
    assert clean.columns == ["user_id", "item_id", "timestamp", "value", "event_type"]
    assert clean["user_id"].to_list() == ["1", "2", "7"]  # stripped
    assert clean["value"].to_list() == [4.5, 4.5, 3.0]
    assert clean["timestamp"].dtype == pl.Int64


def test_date_time_strings_parse_to_unix_seconds() -> None:
    lf = pl.DataFrame({"u": ["1", "2"], "i": ["a", "b"], "t": ["2026-11-25 00:00:00", "2026-11-25 00:00:10"]}).lazy()
    clean, rejects = validate_rows(lf, ColumnMapping("u", "i", time="t"))
    assert rejects.height == 0
    assert clean["timestamp"].to_list() == [1795564800, 1795564810]


def test_millisecond_timestamps_are_converted() -> None:
    lf = pl.DataFrame({"u": ["1"], "i": ["a"], "t": ["1700000000123"]}).lazy()
    clean, _ = validate_rows(lf, ColumnMapping("u", "i", time="t"), time_unit="ms")
    assert clean["timestamp"].to_list() == [1700000000]


def test_typed_parquet_columns_validate_too() -> None:
    lf = pl.DataFrame({"u": [1, None, 3], "i": [5, 6, 7], "w": [1.0, 2.0, float("nan")]}).lazy()
    clean, rejects = validate_rows(lf, ColumnMapping("u", "i", weight="w"))
    assert clean["user_id"].to_list() == [1]
    assert rejects["reason"].to_list() == ["user_id_missing", "weight_nan"]


def test_reason_counts_and_share_threshold() -> None:
    rejects = pl.DataFrame({"reason": ["weight_nan", "user_id_missing", "weight_nan"]})
    counts = reason_counts(rejects)
    assert counts == {"user_id_missing": 1, "weight_nan": 2}
    assert list(counts) == ["user_id_missing", "weight_nan"]  # rule order
    check_reject_share(300, counts, 0.01)  # exactly 1%: allowed
    with pytest.raises(DataQualityError, match=r"3 of 299 rows \(1.00%\).*weight_nan=2"):
        check_reject_share(299, counts, 0.01)


@pytest.mark.parametrize(
    ("median", "unit"),
    [(1.7e9, "s"), (8.8e8, "s"), (1.7e12, "ms"), (1.7e15, "us"), (1.7e18, "ns"), (5e5, "s"), (0.0, "s")],
)
def test_time_unit_is_inferred_from_the_magnitude(median: float, unit: str) -> None:
    horizon = time_horizon("2026-11-25")
    assert infer_time_unit(np.array([median, median, np.nan]), horizon, "t") == unit


@pytest.mark.parametrize("median", [5e10, -1e9, 1e21])
def test_an_implausible_magnitude_is_refused_with_a_time_unit_hint(median: float) -> None:
    with pytest.raises(SchemaError, match=r"time column 't'.*--time-unit"):
        infer_time_unit(np.array([median]), time_horizon("2026-11-25"), "t")


def test_time_horizon_is_one_day_after_the_end_of_as_of_or_now() -> None:
    assert time_horizon("2026-11-25") == 1795564800 + 2 * 86_400  # 2026-11-27 00:00 UTC
    assert time_horizon(None, now=1_000.0) == 1_000 + 86_400

"""What the input columns hold, decided once before the streaming validation pass.

Row rules (:mod:`recsys.data.validate`) judge one value at a time; some questions can
only be answered for a whole column, and answering them wrong corrupts every row at once:

- **Id dtypes.** A Parquet file written from a pandas column with a missing value stores
  ids as floats, so ``1`` arrives as ``1.0``; turned into the string ``"1.0"`` it no longer
  matches the ``"1"`` of the previous id map and every user and item forks into a new
  one. Integral floats are therefore normalised to integer strings; fractional values
  (``1.5``), booleans, dates and nested types cannot be ids and are refused as a
  :class:`~recsys.errors.SchemaError` naming the column, its dtype and the fix.
- **Time units.** Unix times in milliseconds read as seconds land in the year ~45,000.
  With ``time_unit="auto"`` the unit is inferred from the magnitude of the first values
  (seconds ~1e9, milliseconds ~1e12, microseconds ~1e15, nanoseconds ~1e18) and refused,
  with a hint to ``--time-unit``, when no unit gives a plausible date.

Each check reads only the head of the file (the first :data:`SAMPLE` values) except the
fractional-id check of a float id column (or of a text column of decimal numbers), which
reads that one column once.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from recsys.errors import ConfigError, SchemaError

if TYPE_CHECKING:
    from recsys.data.validate import ColumnMapping

log = logging.getLogger(__name__)

SAMPLE = 1000
TIME_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_DAY = 86_400
# unix seconds from 1973-03-03: the smallest plausible time of an inferred unit, so the
# windows of s/ms/us/ns (each x1000 apart) never overlap for dates up to the year 5138
_MIN_PLAUSIBLE = 100_000_000
_MAX_EXACT_FLOAT = 2**53  # larger integers are not exactly representable in a float64
_FLOAT_TEXT = r"^[+-]?\d+(\.\d*)?$"  # how a float column looks once written to CSV
_DOTTED_INT = r"^([+-]?\d+)\.0*$"  # "12.0" -> "12"
_FRACTIONAL_TEXT = r"^[+-]?\d*\.\d*[1-9]\d*$"

# id kinds: how an id column becomes a string id
INT, STRING, FLOAT, FLOAT_TEXT = "int", "string", "float", "float_text"


@dataclass(frozen=True)
class InputProfile:
    """Column-level decisions for one scanned log, shared by every pass over it.

    Attributes
    ----------
    user_kind, item_kind : {"int", "string", "float", "float_text"}
        How each id column is normalised (``"float_text"``: a text column of numbers
        like ``"12.0"``, normalised as a float column is).
    time_unit : str or None
        Unit of numeric timestamps after inference (``None``: no time column).
    time_unit_inferred : bool
        Whether ``time_unit`` was inferred (``time_unit="auto"``) or given.
    time_numeric : bool or None
        For a text time column: numbers (``True``), date-time strings (``False``) or
        both parsers (``None``, mixed sample).
    max_time : int
        Latest accepted timestamp (unix seconds); later rows are rejected as
        ``timestamp_in_future``.
    """

    user_kind: str
    item_kind: str
    time_unit: str | None
    time_unit_inferred: bool
    time_numeric: bool | None
    max_time: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able view, recorded in the dataset manifest."""
        d = asdict(self)
        d["max_time_utc"] = dt.datetime.fromtimestamp(self.max_time, dt.timezone.utc).isoformat(timespec="seconds")
        return d


def time_horizon(as_of: str | dt.date | None, now: float | None = None) -> int:
    """Latest plausible event time, in unix seconds: one day of tolerance after ``as_of``.

    With ``as_of`` (a date), the end of that day (UTC) plus one day, so events logged a few
    hours past midnight in another time zone still count; without it, ``now`` (default:
    the clock) plus one day. Later rows are rejected as ``timestamp_in_future``: a far-future
    row would otherwise become the reference time of the time decay.
    """
    if as_of is None:
        return int((time.time() if now is None else now) + _DAY)
    day = as_of if isinstance(as_of, dt.date) else dt.date.fromisoformat(str(as_of))
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)
    return int(end.timestamp()) + _DAY


def _head(lf: pl.LazyFrame, expr: pl.Expr, n: int = SAMPLE) -> pl.Series:
    return lf.select(expr).drop_nulls().head(n).collect().to_series()


def _fail_id(role: str, name: str, dtype: pl.DataType, what: str, fix: str) -> SchemaError:
    return SchemaError(f"{role} id column {name!r} ({dtype}) {what}; {fix}")


def id_kind(lf: pl.LazyFrame, name: str, dtype: pl.DataType, role: str, flag: str | None = None) -> str:
    """How to read the id column ``name``; refuses dtypes and values that cannot be ids.

    ``role`` ("user", "item") and ``flag`` (default ``--{role}-col``) name the column
    and its setting in error messages.

    Raises
    ------
    SchemaError
        For boolean, temporal, binary or nested columns, and for float columns (or text
        columns of decimal numbers) holding fractional, infinite or > 2**53 values.
    """
    flag = flag or f"--{role}-col"
    if dtype.is_integer():
        return INT
    if dtype == pl.Boolean:
        raise _fail_id(role, name, dtype, "holds true/false, which would collapse every row into two ids",
                       f"map {flag} to the column that holds the {role} ids")
    if dtype.is_temporal() or dtype.is_nested() or dtype in (pl.Binary, pl.Object):
        raise _fail_id(role, name, dtype, "is not an id type (integers or strings)",
                       f"map {flag} to the column that holds the {role} ids, or write them as integers or strings")
    if dtype.is_float() or dtype.is_decimal():
        x = pl.col(name).cast(pl.Float64)
        bad = lf.select(pl.col(name)).filter(~x.is_nan() & ((x != x.floor()) | (x.abs() > _MAX_EXACT_FLOAT))).head(3).collect()
        if bad.height:
            raise _fail_id(role, name, dtype, f"holds values that are not whole numbers below 2**53 (e.g. {bad.to_series().to_list()})",
                           "ids must be integers or strings: write the column as integers (or strings) upstream, "
                           "or map the right column")
        log.info("%s id column %r is %s: integral values are read as integers (1.0 -> '1')", role, name, dtype)
        return FLOAT
    if dtype == pl.String:
        sample = _head(lf, pl.col(name).str.strip_chars())
        if sample.len() and sample.str.contains(_FLOAT_TEXT).all() and sample.str.contains(".", literal=True).any():
            s = pl.col(name).str.strip_chars()
            bad = lf.select(s).filter(s.str.contains(_FRACTIONAL_TEXT)).head(3).collect()
            if bad.height:
                raise _fail_id(role, name, dtype, f"holds decimal numbers with a fraction (e.g. {bad.to_series().to_list()})",
                               "ids must be whole numbers or labels: write the ids as integers upstream, or map the right column")
            log.info("%s id column %r holds numbers written as floats ('12.0'): read as integers ('12')", role, name)
            return FLOAT_TEXT
    return STRING


def id_expr(name: str, kind: str) -> pl.Expr:
    """The normalised id: ints stay ints, float ids become ints, strings are stripped.

    Empty strings are left for the ``*_id_missing`` rule (no copy via when/then here).
    """
    c = pl.col(name)
    if kind == INT:
        return c
    if kind == FLOAT:
        x = c.cast(pl.Float64)
        return pl.when(~x.is_nan()).then(x).cast(pl.Int64, strict=False)
    if kind == FLOAT_TEXT:
        return c.str.strip_chars().str.replace(_DOTTED_INT, "${1}")
    return c.cast(pl.String).str.strip_chars()


def canonical_id_text(ids: pl.Series) -> pl.Series:
    """``"12.0"`` -> ``"12"`` for ids that are integers written as floats; others unchanged."""
    return ids.str.replace(_DOTTED_INT, "${1}")


def looks_numeric(sample: pl.Series) -> bool | None:
    """Whether a sample of a text time column holds numbers (``None``: mixed or empty).

    Parsing date-time strings with an inferred format costs ~50x more than casting
    numbers, and evaluating both parsers on every row of a 10M-row log doubles the build
    time; the head of the file picks one parser.
    """
    if sample.len() == 0:
        return None
    numeric = sample.cast(pl.Float64, strict=False).is_not_null()
    if numeric.all():
        return True
    if not numeric.any():
        return False
    return None


def infer_time_unit(values: np.ndarray, max_time: int, column: str) -> str:
    """The unit (``"s"``/``"ms"``/``"us"``/``"ns"``) that makes numeric times plausible dates.

    The median of the sample decides: the unit whose conversion lands it between
    1973-03-03 and ``max_time``; else seconds when it is a time between 1970 and
    ``max_time`` (small synthetic times); else none.

    Raises
    ------
    SchemaError
        When no unit gives a plausible date, with a hint to set ``--time-unit``.
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return "s"
    median = float(np.median(finite))
    for unit, div in TIME_UNITS.items():
        if _MIN_PLAUSIBLE <= median / div <= max_time:
            return unit
    if 0 <= median <= max_time:
        return "s"
    horizon = dt.datetime.fromtimestamp(max_time, dt.timezone.utc).date()
    raise SchemaError(
        f"time column {column!r} holds numbers like {median:.6g} that are no plausible unix time in s, ms, us or ns "
        f"(1970 .. {horizon}); pass --time-unit s|ms|us|ns (time_unit in [events]) to say which it is "
        f"(rows outside 1970 .. {horizon} are then rejected), or check --as-of and the time column mapping"
    )


def profile_input(
    lf: pl.LazyFrame,
    mapping: ColumnMapping,
    *,
    time_unit: str = "auto",
    time_format: str | None = None,
    max_time: int | None = None,
) -> InputProfile:
    """Decide id kinds and the time unit of a scanned log (see the module docstring).

    Parameters
    ----------
    time_unit : {"auto", "s", "ms", "us", "ns"}
        ``"auto"`` infers the unit of numeric timestamps from their magnitude.
    max_time : int or None
        Latest accepted timestamp (default: :func:`time_horizon` of now).
    """
    if time_unit != "auto" and time_unit not in TIME_UNITS:
        raise ConfigError(f"time_unit must be 'auto' or one of {sorted(TIME_UNITS)}, got {time_unit!r}")
    schema = lf.collect_schema()
    max_time = time_horizon(None) if max_time is None else int(max_time)
    user_kind = id_kind(lf, mapping.user, schema[mapping.user], "user")
    item_kind = id_kind(lf, mapping.item, schema[mapping.item], "item")
    unit, inferred, numeric = None, False, None
    if mapping.time is not None:
        dtype = schema[mapping.time]
        numbers: np.ndarray | None = None
        if dtype == pl.String and time_format is None:
            sample = _head(lf, pl.col(mapping.time).str.strip_chars())
            numeric = looks_numeric(sample)
            if numeric is not False:
                numbers = sample.cast(pl.Float64, strict=False).drop_nulls().to_numpy()
        elif dtype.is_numeric():
            numbers = _head(lf, pl.col(mapping.time).cast(pl.Float64)).to_numpy()
        unit = time_unit
        if time_unit == "auto":
            inferred = numbers is not None  # date-time strings and datetime columns have no unit to infer
            unit = infer_time_unit(numbers, max_time, mapping.time) if inferred else "s"
            if inferred:
                log.info("time column %r: unit inferred as %r from its first values", mapping.time, unit)
    return InputProfile(user_kind, item_kind, unit, inferred, numeric, max_time)

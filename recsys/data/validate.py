"""Row-level validation of interaction logs: every bad row is kept, with its reason.

A recommender trained on silently dropped rows cannot be debugged: a broken upstream job
that nulls half the user ids looks like a quiet traffic dip. So each rule here labels a
row with a reason instead of dropping it; the build writes those rows to
``rejects.parquet``, counts them per reason in the manifest, and stops the run with a
:class:`~recsys.errors.DataQualityError` when their share exceeds a threshold.

Rules (the first failing one names the row's reason):

=========================  ==================================================================
``user_id_missing``        null, empty or whitespace-only user id (NaN in a float column)
``item_id_missing``        null, empty or whitespace-only item id
``user_id_not_utf8``       user id holds U+FFFD, a byte replaced by ``encoding="utf8-lossy"``
``item_id_not_utf8``       item id holds U+FFFD (same)
``timestamp_missing``      time column mapped but the value is null
``timestamp_unparsable``   neither a number (unix time) nor a date-time string
``timestamp_before_1970``  a negative unix time
``timestamp_in_future``    later than ``max_time`` (``as_of`` or now, plus one day)
``weight_missing``         weight/rating column mapped but the value is null
``weight_not_numeric``     weight/rating is not a number (``"abc"``)
``weight_nan``             weight/rating is NaN
``weight_infinite``        weight/rating is +/- infinity
``weight_negative``        weight/rating below zero
``weight_too_large``       weight/rating above the float32 maximum (3.4e38): stored as inf
``event_type_missing``     event-type column mapped but the value is null/empty
``event_type_unknown``     event type not in the configured event weights
=========================  ==================================================================

Column-level problems (float or boolean id columns, the unit of numeric times) are
decided once per input by :mod:`recsys.data.profile` before these rules run.

Everything here builds polars expressions; nothing is evaluated row by row.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys.data.profile import FLOAT, INT, TIME_UNITS, InputProfile, id_expr, profile_input
from recsys.errors import ConfigError, DataQualityError

log = logging.getLogger(__name__)

REASONS = (
    "user_id_missing",
    "item_id_missing",
    "user_id_not_utf8",
    "item_id_not_utf8",
    "timestamp_missing",
    "timestamp_unparsable",
    "timestamp_before_1970",
    "timestamp_in_future",
    "weight_missing",
    "weight_not_numeric",
    "weight_nan",
    "weight_infinite",
    "weight_negative",
    "weight_too_large",
    "event_type_missing",
    "event_type_unknown",
)
REASON_COL = "reason"
# parsed columns carry a prefix so they never collide with input names like "timestamp"
P_USER, P_ITEM, P_TIME, P_VALUE, P_EVENT, P_REASON = "__user_id", "__item_id", "__timestamp", "__value", "__event_type", "__reason"
P_OK = "__ok"  # with annotate(reasons=False): True for rows passing every rule
F32_MAX = float(np.finfo(np.float32).max)  # weights are stored as float32


@dataclass(frozen=True)
class ColumnMapping:
    """Which input column plays which role; only the two ids are required."""

    user: str
    item: str
    weight: str | None = None
    time: str | None = None
    event_type: str | None = None

    def input_columns(self) -> list[str]:
        return [c for c in (self.user, self.item, self.weight, self.time, self.event_type) if c is not None]


def _id_missing(expr: pl.Expr, kind: str) -> pl.Expr:
    if kind in (INT, FLOAT):
        return expr.is_null()
    return expr.is_null() | (expr.str.len_bytes() == 0)


def _time_expr(name: str, dtype: pl.DataType, unit: str, fmt: str | None, numeric: bool | None = None) -> pl.Expr:
    """Parse a time column to int64 unix seconds; unparsable values become null.

    ``numeric`` (for string columns) selects the number parser (``True``), the
    date-time parser (``False``) or both (``None``).
    """
    if unit not in TIME_UNITS:
        raise ConfigError(f"time_unit must be one of {sorted(TIME_UNITS)}, got {unit!r}")
    div = TIME_UNITS[unit]
    c = pl.col(name)

    def from_number(x: pl.Expr) -> pl.Expr:
        x = x.cast(pl.Float64)
        ok = x.is_finite()
        return pl.when(ok).then((x / div).floor()).cast(pl.Int64, strict=False)

    if dtype.is_integer():
        return c.cast(pl.Int64) // div if div > 1 else c.cast(pl.Int64)
    if dtype.is_float():
        return from_number(c)
    if isinstance(dtype, pl.Datetime):
        return c.dt.epoch("s")
    if dtype == pl.Date:
        return c.cast(pl.Datetime("ms")).dt.epoch("s")
    s = c.cast(pl.String).str.strip_chars()
    if div <= 1_000:  # s/ms: a float64 holds every such unix time exactly; one parse
        as_num = from_number(s.cast(pl.Float64, strict=False))
    else:  # us/ns exceed float64 precision: integers first
        as_int = s.cast(pl.Int64, strict=False)
        as_num = pl.when(as_int.is_not_null()).then(as_int // div).otherwise(from_number(s.cast(pl.Float64, strict=False)))
    as_date = s.str.to_datetime(format=fmt, strict=False, time_unit="ms").dt.epoch("s")
    if fmt is not None or numeric is False:  # date-time strings
        return as_date
    if numeric:
        return as_num
    return pl.coalesce(as_num, as_date)


def _value_expr(name: str, dtype: pl.DataType) -> pl.Expr:
    c = pl.col(name)
    if dtype.is_numeric():
        return c.cast(pl.Float64)
    return c.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)


def _event_text(name: str) -> pl.Expr:
    return pl.col(name).cast(pl.String).str.strip_chars()


def _event_expr(name: str, known: Sequence[str] | None) -> pl.Expr:
    """Event types as small integer-backed values, so merging and gathering move u32 codes.

    With known types the column is an ``Enum`` in the given order (unknown -> null, so
    ``max()`` picks the last-listed type: callers list them by increasing weight),
    else a ``Categorical``.
    """
    if known is not None:
        return _event_text(name).cast(pl.Enum(list(dict.fromkeys(known))), strict=False)
    return _event_text(name).cast(pl.Categorical)


def annotate(
    lf: pl.LazyFrame,
    mapping: ColumnMapping,
    *,
    time_unit: str = "auto",
    time_format: str | None = None,
    known_event_types: Sequence[str] | None = None,
    reasons: bool = True,
    profile: InputProfile | None = None,
    max_time: int | None = None,
    lossy_utf8: bool = False,
) -> pl.LazyFrame:
    """Add parsed columns and a reason column (null for good rows) to a scanned log.

    Parameters
    ----------
    lf : polars.LazyFrame
        The input as scanned (CSV columns are strings, Parquet keeps its types).
    mapping : ColumnMapping
    time_unit : {"auto", "s", "ms", "us", "ns"}
        Unit of numeric timestamps; ``"auto"`` infers it from their magnitude.
    time_format : str or None
        strftime format of date-time strings; ``None`` accepts unix numbers and infers
        the date-time format.
    known_event_types : sequence of str or None
        When given (the keys of the event weights), other event types are rejected and
        the parsed column is an ``Enum`` of these types in this order.
    reasons : bool
        ``False`` adds only a boolean ``__ok`` (no reason strings): what a pass that
        counts rejects but does not report them needs, at a fraction of the cost.
    profile : InputProfile or None
        Column-level decisions (:func:`~recsys.data.profile.profile_input`); computed
        from ``time_unit``, ``time_format`` and ``max_time`` when ``None``. Pass the same
        profile to every pass over one input so that they agree.
    max_time : int or None
        Latest accepted unix time (default: now + 1 day); ignored with ``profile``.
    lossy_utf8 : bool
        The input was decoded with ``encoding="utf8-lossy"``: ids holding the replacement
        character U+FFFD (a damaged byte) are rejected instead of becoming new ids.

    Raises
    ------
    SchemaError
        An id column cannot hold ids (booleans, fractional floats) or no time unit gives
        plausible dates (see :mod:`recsys.data.profile`).

    Returns
    -------
    polars.LazyFrame
        The mapped input columns unchanged, plus ``__user_id``, ``__item_id``
        [``__timestamp`` int64 s, ``__value`` float64, ``__event_type``] and ``__reason``.
    """
    schema = lf.collect_schema()
    if profile is None:
        profile = profile_input(lf, mapping, time_unit=time_unit, time_format=time_format, max_time=max_time)
    parsed = [
        id_expr(mapping.user, profile.user_kind).alias(P_USER),
        id_expr(mapping.item, profile.item_kind).alias(P_ITEM),
    ]
    rules: list[tuple[pl.Expr, str]] = [
        (_id_missing(pl.col(P_USER), profile.user_kind), "user_id_missing"),
        (_id_missing(pl.col(P_ITEM), profile.item_kind), "item_id_missing"),
    ]
    if lossy_utf8:
        for col, kind, name in ((P_USER, profile.user_kind, "user_id_not_utf8"), (P_ITEM, profile.item_kind, "item_id_not_utf8")):
            if kind not in (INT, FLOAT):
                rules.append((pl.col(col).str.contains("\ufffd", literal=True), name))
    if mapping.time is not None:
        dtype = schema[mapping.time]
        unit = profile.time_unit or "s"
        parsed.append(_time_expr(mapping.time, dtype, unit, time_format, profile.time_numeric).alias(P_TIME))
        t = pl.col(P_TIME)
        rules += [
            (pl.col(mapping.time).is_null(), "timestamp_missing"),
            (t.is_null(), "timestamp_unparsable"),
            (t < 0, "timestamp_before_1970"),
            (t > profile.max_time, "timestamp_in_future"),
        ]
    if mapping.weight is not None:
        parsed.append(_value_expr(mapping.weight, schema[mapping.weight]).alias(P_VALUE))
        v = pl.col(P_VALUE)
        rules += [
            (pl.col(mapping.weight).is_null(), "weight_missing"),
            (v.is_null(), "weight_not_numeric"),
            (v.is_nan(), "weight_nan"),
            (v.is_infinite(), "weight_infinite"),
            (v < 0, "weight_negative"),
            (v > F32_MAX, "weight_too_large"),
        ]
    if mapping.event_type is not None:
        parsed.append(_event_expr(mapping.event_type, known_event_types).alias(P_EVENT))
        rules.append((pl.col(mapping.event_type).is_null() | (_event_text(mapping.event_type).str.len_bytes() == 0), "event_type_missing"))
        if known_event_types is not None:
            rules.append((pl.col(P_EVENT).is_null(), "event_type_unknown"))
    base = lf.select(*dict.fromkeys(mapping.input_columns())).with_columns(parsed)
    if not reasons:  # a cheap boolean: one OR per rule instead of a string per row
        # a null condition counts as false, exactly as in the when/then chain below
        return base.with_columns(pl.any_horizontal([cond.fill_null(False) for cond, _ in rules]).not_().alias(P_OK))
    (first_cond, first_name), *rest = rules  # the two id rules always exist
    reason = pl.when(first_cond).then(pl.lit(first_name))
    for cond, name in rest:
        reason = reason.when(cond).then(pl.lit(name))
    return base.with_columns(reason.otherwise(pl.lit(None, pl.String)).alias(P_REASON))


def rejects_frame(annotated: pl.LazyFrame, mapping: ColumnMapping) -> pl.LazyFrame:
    """Rejected rows: the input values as strings (as the user wrote them) + ``reason``."""
    cols = mapping.input_columns()
    return annotated.filter(pl.col(P_REASON).is_not_null()).select(
        *[pl.col(c).cast(pl.String) for c in dict.fromkeys(cols)], pl.col(P_REASON).alias(REASON_COL)
    )


def canonical_frame(annotated: pl.LazyFrame, mapping: ColumnMapping, keep_reason: bool = False) -> pl.LazyFrame:
    """Parsed columns under canonical names ``user_id``, ``item_id`` [``timestamp``, ``value``, ``event_type``].

    With ``keep_reason`` every row is kept together with its ``__reason`` (or ``__ok``; so one
    streaming pass can both count rejects and aggregate the good rows); otherwise
    only accepted rows are returned.
    """
    out = [pl.col(P_USER).alias("user_id"), pl.col(P_ITEM).alias("item_id")]
    for present, src, dst in ((mapping.time, P_TIME, "timestamp"), (mapping.weight, P_VALUE, "value"), (mapping.event_type, P_EVENT, "event_type")):
        if present is not None:
            out.append(pl.col(src).alias(dst))
    if keep_reason:
        names = annotated.collect_schema().names()
        return annotated.select(*out, pl.col(P_OK if P_OK in names else P_REASON))
    return annotated.filter(pl.col(P_REASON).is_null()).select(out)


def validate_rows(
    lf: pl.LazyFrame,
    mapping: ColumnMapping,
    *,
    time_unit: str = "auto",
    time_format: str | None = None,
    known_event_types: Sequence[str] | None = None,
    max_time: int | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Validate a scanned log eagerly: ``(clean rows, rejected rows)``.

    Convenient for small inputs and tests; the build pipeline streams instead (it
    aggregates good rows and counts rejects in one pass, then re-reads only the
    rejected rows with :func:`rejects_frame`). Parameters as in :func:`annotate`.

    Returns
    -------
    clean : polars.DataFrame
        As :func:`canonical_frame`.
    rejects : polars.DataFrame
        As :func:`rejects_frame` (input values as strings + ``reason``), in file order.
    """
    ann = annotate(lf, mapping, time_unit=time_unit, time_format=time_format, known_event_types=known_event_types, max_time=max_time)
    clean, rejects = pl.collect_all([canonical_frame(ann, mapping), rejects_frame(ann, mapping)])
    return clean, rejects


def empty_rejects(mapping: ColumnMapping) -> pl.DataFrame:
    """A rejects table with no rows (the schema :func:`rejects_frame` would give)."""
    return pl.DataFrame(schema={**{c: pl.String for c in dict.fromkeys(mapping.input_columns())}, REASON_COL: pl.String})


def reason_counts(rejects: pl.DataFrame) -> dict[str, int]:
    """Rejected rows per reason, in the documented rule order."""
    if rejects.height == 0:
        return {}
    counts = dict(rejects.group_by(REASON_COL).len().iter_rows())
    return {r: int(counts[r]) for r in REASONS if r in counts} | {r: int(n) for r, n in counts.items() if r not in REASONS}


def check_reject_share(n_in: int, counts: Mapping[str, int], max_share: float, sample: pl.DataFrame | None = None) -> None:
    """Fail the build when too many rows were rejected: a sign of a broken upstream job.

    Raises
    ------
    DataQualityError
        Naming the share, the threshold, the counts per reason and a few example rows.
    """
    if not 0 <= max_share <= 1:
        raise ConfigError(f"max_reject_share must be in [0, 1], got {max_share}")
    total = sum(counts.values())
    share = total / n_in if n_in else 0.0
    if share > max_share:
        detail = ", ".join(f"{r}={n}" for r, n in counts.items())
        example = ""
        if sample is not None and sample.height:
            example = f"; first rejected rows: {sample.head(3).to_dicts()}"
        raise DataQualityError(
            f"{total} of {n_in} rows ({share:.2%}) failed validation, above the limit of {max_share:.2%} "
            f"({detail}){example}. Fix the input or the column mapping, or raise max_reject_share "
            "(--max-reject-share) if these rows are expected"
        )
    if total:
        log.warning("rejected %d of %d rows (%.3f%%): %s", total, n_in, 100 * share, counts)

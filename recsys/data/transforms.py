"""Cleaning steps between validation and splitting: weights, de-duplication, k-core.

Each step is a vectorised polars (or numpy) operation on the whole table, and each
returns or reports how many rows it removed, so the manifest can account for every
input row (nothing is silently dropped).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from recsys.errors import ConfigError

log = logging.getLogger(__name__)

WEIGHTINGS = ("confidence", "threshold")
AGGREGATES = ("sum", "max", "last")
_DAY = 86_400.0


def apply_weights(
    lf: pl.LazyFrame,
    *,
    has_value: bool,
    has_time: bool,
    has_event: bool,
    weighting: str = "confidence",
    positive_threshold: float = 4.0,
    event_weights: Mapping[str, float] | None = None,
    unknown_event_weight: float | None = None,
    half_life_days: float | None = None,
    reference_time: int | None = None,
    drop_below_threshold: bool = True,
    valid: pl.Expr | None = None,
) -> pl.LazyFrame:
    """Compute the ``weight`` (confidence) of every interaction.

    ``weight = value * event_weight[event_type] * decay``, where each factor is 1 when
    its column or setting is absent:

    - ``weighting="confidence"``: the value (rating, count, dwell time) is the
      confidence, as implicit-feedback MF expects (Hu, Koren & Volinsky 2008).
    - ``weighting="threshold"``: rows with ``value >= positive_threshold`` are positives
      with value 1, the others are removed (the caller counts them). This is the usual
      "rating >= 4 is a like" protocol.
    - ``half_life_days``: an interaction ``half_life_days`` older than the reference
      time (default: the newest timestamp among the ``valid`` rows) counts half.

    The raw value is kept as ``rating`` (float32) so evaluation can still use it.
    With ``drop_below_threshold=False`` rows under the threshold are kept and marked
    by a boolean ``below_threshold`` column instead (the caller counts and drops them).
    ``valid`` marks the rows that passed validation when ``lf`` still holds rejected ones
    (one streaming pass does both): a rejected row, such as one dated in the year 2100,
    must not become the reference time that decays every other row to zero.
    """
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if weighting == "threshold" and not has_value:
        raise ConfigError("weighting='threshold' needs a rating/weight column (--weight-col)")
    if half_life_days is not None:
        if not has_time:
            raise ConfigError("time decay (half_life_days) needs a time column (--time-col)")
        if half_life_days <= 0:
            raise ConfigError(f"half_life_days must be > 0, got {half_life_days}")
    if event_weights is not None and not has_event:
        raise ConfigError("event_weights are configured but no event-type column is mapped (--event-type-col)")
    if event_weights is not None and any((w is None or not np.isfinite(w) or w < 0) for w in event_weights.values()):
        raise ConfigError(f"event weights must be finite and >= 0, got {dict(event_weights)}")

    w: pl.Expr = pl.lit(1.0, pl.Float64)
    if has_value and weighting == "confidence":
        w = pl.col("value")
    if event_weights is not None:
        ew = pl.col("event_type").replace_strict(dict(event_weights), default=unknown_event_weight, return_dtype=pl.Float64)
        w = w * ew
    if half_life_days is not None:
        ts = pl.col("timestamp") if valid is None else pl.col("timestamp").filter(valid)
        ref = ts.max() if reference_time is None else pl.lit(reference_time)
        age_days = (ref - pl.col("timestamp")).cast(pl.Float64) / _DAY
        w = w * (2.0 ** (-age_days.clip(lower_bound=0.0) / half_life_days))
    out = lf
    if weighting == "threshold":
        below = pl.col("value") < positive_threshold
        out = out.filter(~below) if drop_below_threshold else out.with_columns(below.alias("below_threshold"))
    cols = [w.cast(pl.Float32).alias("weight")]
    if has_value:
        cols.append(pl.col("value").cast(pl.Float32).alias("rating"))
    return out.with_columns(cols).drop("value", strict=False)


def aggregate_pairs(
    lf: pl.LazyFrame,
    how: str = "sum",
    keys: tuple[str, ...] = ("user_code", "item_code"),
    count: str | None = None,
    event_order_is_weight: bool = False,
    carry: tuple[str, ...] = (),
) -> pl.LazyFrame:
    """Combine repeated interactions of one user with one item into a single row.

    Parameters
    ----------
    how : {"sum", "max", "last"}
        ``"sum"`` adds confidences (a view then a purchase is stronger than either),
        ``"max"`` keeps the strongest, ``"last"`` keeps the most recent row (a re-rating
        replaces the old rating). The other columns follow: ``timestamp`` is the latest,
        ``rating`` the latest, ``event_type`` that of the strongest interaction.
    count : str or None
        Name of an extra column with the number of rows merged into each group.
    carry : tuple of str
        Columns constant within a group, kept with ``first()``.
    event_order_is_weight : bool
        ``event_type`` is an ``Enum`` ordered by weight and the weight depends on the
        event type only, so the strongest event is simply the ``max`` (a cheap reduction
        instead of a per-group arg-max and gather).
    """
    if how not in AGGREGATES:
        raise ConfigError(f"aggregate must be one of {AGGREGATES}, got {how!r}")
    names = lf.collect_schema().names()
    has_t, has_r, has_e = "timestamp" in names, "rating" in names, "event_type" in names
    # "the value at the row with the latest time / highest weight": get(arg_max) is a
    # single pass per group, unlike sort_by(...).last()
    latest = pl.col("timestamp").arg_max() if has_t else None

    def at_latest(c: str) -> pl.Expr:
        return pl.col(c).get(latest) if latest is not None else pl.col(c).last()

    aggs: list[pl.Expr] = []
    if how == "sum":
        aggs.append(pl.col("weight").sum())
    elif how == "max":
        aggs.append(pl.col("weight").max())
    else:
        aggs.append(at_latest("weight"))
    if has_t:
        aggs.append(pl.col("timestamp").max())
    if has_r:
        aggs.append(at_latest("rating"))
    if has_e:
        if how == "last":
            aggs.append(at_latest("event_type"))
        elif event_order_is_weight:
            aggs.append(pl.col("event_type").max())
        else:
            aggs.append(pl.col("event_type").get(pl.col("weight").arg_max()))
    if count is not None:
        aggs.append(pl.len().alias(count))
    aggs += [pl.col(c).first() for c in carry]
    return lf.group_by(list(keys)).agg(aggs)


def kcore_mask(user_code: np.ndarray, item_code: np.ndarray, min_user: int, min_item: int, max_iter: int = 100) -> tuple[np.ndarray, int]:
    """Rows that survive the iterative k-core filter.

    Removing sparse users can make items sparse and vice versa, so the filter repeats
    until every remaining user has ``>= min_user`` and every item ``>= min_item``
    interactions (a fixed point, reached in a few passes). Counting is ``np.bincount``
    over integer codes: a pass over 10M rows takes tens of milliseconds.

    Returns
    -------
    mask : bool array
    iterations : int
    """
    if min_user < 1 or min_item < 1:
        raise ConfigError(f"k-core minimums must be >= 1, got users={min_user} items={min_item}")
    keep = np.ones(len(user_code), dtype=bool)
    if min_user == 1 and min_item == 1:
        return keep, 0
    nu = int(user_code.max(initial=-1)) + 1
    ni = int(item_code.max(initial=-1)) + 1
    for it in range(1, max_iter + 1):
        uc = np.bincount(user_code[keep], minlength=nu)
        ic = np.bincount(item_code[keep], minlength=ni)
        bad = keep & ((uc[user_code] < min_user) | (ic[item_code] < min_item))
        n_bad = int(bad.sum())
        log.debug("k-core pass %d: removed %d rows", it, n_bad)
        if n_bad == 0:
            return keep, it
        keep &= ~bad
    log.warning("k-core did not converge in %d passes; the result may still hold sparse users/items", max_iter)
    return keep, max_iter


def new_categories() -> Any:
    """A fresh, private categorical namespace: its codes are dense ``0..k-1`` for one column."""
    if not hasattr(pl, "Categories"):
        raise ConfigError(f"recsys needs polars >= 1.32 (categorical namespaces); this is polars {pl.__version__}")
    return pl.Categories.random()


def encode_expr(column: str, keep: pl.Expr, categories: Any) -> pl.Expr:
    """An id column as a categorical of a private namespace (null where ``keep`` is false).

    Its ``to_physical()`` is a dense ``uint32`` code.

    Codes are arbitrary labels in order of appearance (possibly different between runs
    of a multi-threaded scan): they only feed the k-core counts and the merge key, and
    the final indices come from the id map via :func:`categories_frame`, so they never
    reach the output. Encoding is one hash lookup per row inside the streaming scan,
    several times cheaper than grouping or joining on 10M strings.
    """
    # encode every row, then drop the codes of bad rows: a when/then on the strings
    # would copy them; ids of bad rows only add unused entries to the namespace
    return pl.when(keep).then(pl.col(column).cast(pl.String).cast(pl.Categorical(categories)))


def categories_frame(values: pl.Series, column: str, code: str) -> pl.DataFrame:
    """The ``(code, id)`` table of the categorical values produced by :func:`encode_expr`.

    Built from the distinct values in bulk (the namespace itself can only be read one
    category at a time, in Python).
    """
    u = values.drop_nulls().unique()
    return pl.DataFrame({code: u.to_physical().cast(pl.UInt32), column: u.cast(pl.String)})

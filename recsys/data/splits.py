"""Train / validation / test splits, including a cold-start item split.

Published numbers for one model on one dataset move by 3-10x with the protocol, so the
protocol is explicit, seeded and recorded in the manifest:

- ``random``: per-user holdout. Each user with ``n`` interactions keeps
  ``round(test_frac * n)`` random ones for test (never all: at least one stays in
  training), so every evaluated user has a history.
- ``temporal``: one global cutoff time; everything at or after it is test. No
  information from the future leaks into training (the realistic protocol for a
  nightly job). ``cutoff`` fixes the time, else the ``1 - test_frac`` quantile.
- ``leave_last_n``: each user's last ``n_last`` interactions (by time) are test.
- ``cold_item_frac``: before any of the above, a fraction of the items with at least
  ``cold_min_interactions`` interactions is held out entirely. Their interactions go to
  ``test_cold`` and never appear in train/valid/test, which measures how well content
  embeddings stand in for items nobody has interacted with yet.

The validation split is carved from the training part with the same strategy
(``valid_frac``; ``n_last`` more interactions for leave-last-n).

Every function works on a table with ``user_idx``, ``item_idx`` (and ``timestamp`` for the
temporal strategies) sorted deterministically; randomness comes from a numpy generator
seeded from ``seed``, so the same input and seed give the same split.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys.errors import ConfigError, InputError

log = logging.getLogger(__name__)

STRATEGIES = ("random", "temporal", "leave_last_n")
_PART = "__part"  # 0 train, 1 valid, 2 test


@dataclass(frozen=True)
class SplitConfig:
    """How to split; see the module docstring for the semantics of each strategy."""

    strategy: str = "random"
    test_frac: float = 0.2
    valid_frac: float = 0.1
    n_last: int = 1
    cutoff: str | int | None = None
    cold_item_frac: float = 0.0
    cold_min_interactions: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"split strategy {self.strategy!r} is not one of {STRATEGIES}")
        for name in ("test_frac", "valid_frac", "cold_item_frac"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"split {name} must be in [0, 1), got {v}")
        if self.n_last < 1:
            raise ConfigError(f"split n_last must be >= 1, got {self.n_last}")
        if self.cold_min_interactions < 1:
            raise ConfigError(f"split cold_min_interactions must be >= 1, got {self.cold_min_interactions}")

    @property
    def needs_time(self) -> bool:
        return self.strategy in ("temporal", "leave_last_n")


def cutoff_seconds(cutoff: str | int | float) -> int:
    """A cutoff as unix seconds: a number, or an ISO date / date-time (UTC if naive)."""
    if isinstance(cutoff, (int, float)) and not isinstance(cutoff, bool):
        return int(cutoff)
    s = str(cutoff).strip()
    try:
        return int(float(s))
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError:
        raise ConfigError(f"split cutoff {cutoff!r} is neither unix seconds nor an ISO date (2026-11-25)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp())


def cold_items(df: pl.DataFrame, frac: float, min_interactions: int, seed: int) -> np.ndarray:
    """Choose the cold-start items: ``round(frac * eligible)`` of the items with enough interactions.

    Items need ``min_interactions`` so that ``test_cold`` has something to evaluate.
    Returns the sorted item indices (int32).
    """
    if frac <= 0 or df.height == 0:
        return np.empty(0, dtype=np.int32)
    return choose_cold(np.bincount(df["item_idx"].to_numpy()), frac, min_interactions, seed)


def choose_cold(counts: np.ndarray, frac: float, min_interactions: int, seed: int) -> np.ndarray:
    """:func:`cold_items` from the per-item interaction counts (``counts[item_idx]``).

    Separate so that an engine which counts items elsewhere (Spark: one aggregate) draws
    the same items from the same seeded generator.
    """
    eligible = np.flatnonzero(counts >= min_interactions)
    n = int(round(frac * len(eligible)))
    if n == 0:
        log.warning("cold_item_frac=%s selects no item (%d items have >= %d interactions)", frac, len(eligible), min_interactions)
        return np.empty(0, dtype=np.int32)
    rng = np.random.default_rng([seed, 1])
    return np.sort(rng.choice(eligible, size=n, replace=False)).astype(np.int32)


def _holdout_count(n: np.ndarray, frac: float) -> np.ndarray:
    """round-half-up(frac * n), capped at n - 1 so that a user always keeps one row."""
    return np.clip(np.minimum(np.floor(n * frac + 0.5).astype(np.int64), n - 1), 0, None)


def _last_count(n: np.ndarray, n_last: int) -> np.ndarray:
    return np.clip(np.minimum(n_last, n - 1), 0, None)


def _positional(user: np.ndarray, order: np.ndarray, test_frac: float | None, n_last: int | None, valid_frac: float | None) -> np.ndarray:
    """Part labels from each row's position within its user (numpy, no Python loop).

    ``order`` sorts the rows by user, then by the ranking key (random or time). The
    last ``n_test`` positions are test (a fraction, or ``n_last``); of the rest, the
    last ``n_valid`` ones are valid (a fraction of the rest, or ``n_last`` again).
    """
    counts = np.bincount(user)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    pos = np.empty(len(user), dtype=np.int64)
    pos[order] = np.arange(len(user)) - starts[user[order]] + 1  # 1-based
    # the counts are per user (few), the comparison per row (many)
    n_test = _holdout_count(counts, test_frac) if test_frac is not None else _last_count(counts, n_last or 1)
    rest = counts - n_test
    n_valid = _holdout_count(rest, valid_frac) if valid_frac is not None else _last_count(rest, n_last or 1)
    part = np.zeros(len(user), dtype=np.int8)
    part[pos > (rest - n_valid)[user]] = 1
    part[pos > rest[user]] = 2
    return part


def random_keys(seed: int, start: int, n: int) -> np.ndarray:
    """The doubles ``default_rng([seed, 2]).random(...)`` draws at positions ``[start, start + n)``.

    Each double consumes exactly one 64-bit PCG64 output, so advancing the bit generator
    by ``start`` lets a Spark partition holding the warm rows ``[start, start + n)`` draw
    its slice of the one-node engine's sequence without drawing the rows before it.
    """
    bits = np.random.PCG64(np.random.SeedSequence([seed, 2]))
    bits.advance(start)
    return np.random.Generator(bits).random(n)


def random_parts(user: np.ndarray, keys: np.ndarray, test_frac: float, valid_frac: float) -> np.ndarray:
    """Part labels of the ``random`` strategy from each row's random key (:func:`random_keys`).

    ``user`` holds whole users (every row of a user present). ``user + key`` sorts by user,
    then randomly within the user in one argsort. The sum keeps about ``52 - log2(user)``
    fractional bits, so two rows of a long history can tie; the sort is stable, so a tie
    keeps the rows' own order (item order within the user) and a block of whole users
    (the Spark engine) labels its rows exactly as the whole table does. The user codes
    enter the key as they are (their magnitude decides the rounding of the sum), and are
    shifted to start at 0 only for the counts.
    """
    order = np.argsort(user + keys, kind="stable")
    return _positional(user - user.min(), order, float(test_frac), None, float(valid_frac))


def last_n_parts(user: np.ndarray, item: np.ndarray, ts: np.ndarray, n_last: int) -> np.ndarray:
    """Part labels of ``leave_last_n``: by time within the user, ties broken by item index."""
    order = np.lexsort((item, ts, user))
    return _positional(user - user.min(), order, None, n_last, None)


def lower_quantile_rank(n: int, q: float) -> int:
    """0-based rank of polars' ``quantile(q, "lower")`` among ``n`` sorted non-null values."""
    return int(np.floor((n - 1) * q))


def temporal_part(ts: pl.Expr, cut: int, vcut: int) -> pl.Expr:
    """Part labels of ``temporal``: test from ``cut``, valid from ``vcut`` (unix seconds)."""
    return pl.when(ts >= cut).then(2).when(ts >= vcut).then(1).otherwise(0).cast(pl.Int8)


def require_time(columns: list[str], config: SplitConfig) -> None:
    """Refuse a time-based strategy on pairs without timestamps, naming the fix."""
    if config.needs_time and "timestamp" not in columns:
        raise ConfigError(
            f"the {config.strategy!r} split needs timestamps but the data has none; map a time column "
            "(--time-col) or use the 'random' split strategy"
        )


def assign_parts(df: pl.DataFrame, config: SplitConfig) -> pl.Series:
    """Label each row 0 (train), 1 (valid) or 2 (test) according to ``config``.

    ``df`` must be in a deterministic order (the build sorts by ``user_idx`` then
    ``item_idx``) so the seeded random keys land on the same rows every run.
    """
    if df.height == 0:
        return pl.Series(_PART, [], dtype=pl.Int8)
    require_time(df.columns, config)
    user = df["user_idx"].to_numpy().astype(np.int64)
    if config.strategy == "random":
        keys = random_keys(config.seed, 0, df.height)
        return pl.Series(_PART, random_parts(user, keys, config.test_frac, config.valid_frac))
    if config.strategy == "leave_last_n":
        return pl.Series(_PART, last_n_parts(user, df["item_idx"].to_numpy(), df["timestamp"].to_numpy(), config.n_last))
    # temporal: a global cutoff for test, then a second one inside train for valid
    ts = df["timestamp"]
    cut = cutoff_seconds(config.cutoff) if config.cutoff is not None else int(ts.quantile(1 - config.test_frac, "lower") if config.test_frac > 0 else ts.max() + 1)
    is_test = ts >= cut
    train_ts = ts.filter(~is_test)
    if config.valid_frac > 0 and train_ts.len():
        vcut = int(train_ts.quantile(1 - config.valid_frac, "lower"))
    else:
        vcut = cut
    if is_test.all():
        raise InputError(f"the temporal cutoff {cut} puts every interaction in test; choose a later cutoff")
    log.info("temporal split: test from %s, valid from %s (unix s)", cut, vcut)
    return df.select(temporal_part(pl.col("timestamp"), cut, vcut).alias(_PART))[_PART]


def split(df: pl.DataFrame, config: SplitConfig) -> dict[str, pl.DataFrame]:
    """Split interactions into ``train``, ``valid``, ``test`` and ``test_cold`` tables."""
    cold = cold_items(df, config.cold_item_frac, config.cold_min_interactions, config.seed)
    if len(cold):
        is_cold = df["item_idx"].is_in(pl.Series(cold, dtype=pl.Int32).implode())
        test_cold, warm = df.filter(is_cold), df.filter(~is_cold)
    else:
        test_cold, warm = df.clear(), df
    parts = assign_parts(warm, config)
    out = {
        "train": warm.filter(parts == 0),
        "valid": warm.filter(parts == 1),
        "test": warm.filter(parts == 2),
        "test_cold": test_cold,
    }
    log.info("split %s: %s", config.strategy, {k: v.height for k, v in out.items()})
    return out

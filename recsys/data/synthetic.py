"""Synthetic interaction logs for scale and performance work.

Real logs are heavy-tailed and clustered, and pipelines that are fast on uniform random
data can be slow on real data (hot items make skewed groups), so the generator mimics
the shapes that matter:

- power-law (Zipf) item popularity and log-normal user activity;
- user taste clusters: each user belongs to a cluster and picks most of its items
  from that cluster's items (so MF has structure to find);
- timestamps spread over ``days`` days from ``start``, with a daily cycle;
- event types (view / cart / purchase) and optionally ratings;
- item metadata with text (title, genres, description) tied to the clusters, for
  content embeddings;
- optional drift over time, for work on models that must follow a changing log:
  ``drift`` moves each user's taste from a first to a second cluster as the log goes on,
  and ``new_items`` launches a share of the catalogue during the log (no event before an
  item's ``launch_day``). Without them the log is the same as before they existed.

Everything is vectorised numpy (sampling by ``searchsorted`` on cumulative weights), so
20M events take seconds, and seeded, so the same arguments give the same log.
:func:`write_events` writes CSV or Parquet, optionally as ``dt=YYYY-MM-DD`` partitions.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from recsys.errors import ConfigError
from recsys.io import atomic_path

log = logging.getLogger(__name__)

EVENT_TYPES = ("view", "cart", "purchase")
EVENT_PROBS = (0.85, 0.10, 0.05)
_GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
           "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
_ADJ = ("Silent", "Red", "Lost", "Hidden", "Broken", "Golden", "Last", "Dark", "Wild", "Secret", "Electric", "Frozen")
_NOUN = ("River", "City", "Garden", "Machine", "Empire", "Voyage", "Letter", "Island", "Signal", "Harvest", "Mirror", "Storm")


@dataclass(frozen=True)
class SyntheticConfig:
    """Shape of a synthetic log.

    Parameters
    ----------
    n_events : int
    n_users, n_items : int or None
        Default to ``n_events // 50`` and ``n_events // 200`` (at least 100 / 50).
    n_clusters : int
        Taste clusters; items and users are spread over them.
    in_cluster : float
        Probability that an event's item comes from the user's own cluster.
    item_alpha : float
        Zipf exponent of item popularity (1.0 is typical of catalogues).
    start : str
        First day (ISO date) of the log.
    days : int
        Number of days covered.
    ratings : bool
        Add a ``rating`` column (0.5..5 in steps of 0.5, higher in the user's cluster).
    event_types : bool
        Add an ``event_type`` column.
    drift : float
        Taste drift in [0, 1]: an event at fraction ``f`` of the log takes its user's second
        cluster instead of the first with probability ``drift * f`` (1 = by the last day
        every user has moved). 0 (default) keeps the log unchanged.
    new_items : float
        Share in [0, 1) of items launched during the log, on a day drawn uniformly from
        ``1 .. days - 1`` (the others exist from day 0); no event precedes its item's launch.
        0 (default) keeps the log unchanged.
    seed : int
    """

    n_events: int = 1_000_000
    n_users: int | None = None
    n_items: int | None = None
    n_clusters: int = 20
    in_cluster: float = 0.8
    item_alpha: float = 1.0
    start: str = "2026-01-01"
    days: int = 30
    ratings: bool = False
    event_types: bool = True
    drift: float = 0.0
    new_items: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_events < 1 or self.days < 1 or self.n_clusters < 1:
            raise ConfigError("n_events, days and n_clusters must be >= 1")
        if not 0 <= self.in_cluster <= 1:
            raise ConfigError(f"in_cluster must be in [0, 1], got {self.in_cluster}")
        if not 0 <= self.drift <= 1:
            raise ConfigError(f"drift must be in [0, 1] (0 = no taste drift), got {self.drift}")
        if not 0 <= self.new_items < 1:
            raise ConfigError(f"new_items must be in [0, 1) (the share of items launched during the log), got {self.new_items}")
        if self.new_items > 0 and self.days < 2:
            raise ConfigError("new_items needs days >= 2: items launch on days 1 .. days - 1")

    @property
    def users(self) -> int:
        return self.n_users or max(100, self.n_events // 50)

    @property
    def items(self) -> int:
        return self.n_items or max(50, self.n_events // 200)


def _sample(cum: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Indices drawn with probabilities given by a cumulative weight array."""
    return np.searchsorted(cum, rng.random(n) * cum[-1], side="right").clip(max=len(cum) - 1)


def _clusters(cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Item popularity weights and item/user cluster assignments."""
    ranks = rng.permutation(cfg.items) + 1  # popularity rank of each item id
    pop = 1.0 / ranks.astype(np.float64) ** cfg.item_alpha
    item_cluster = rng.integers(0, cfg.n_clusters, cfg.items)
    user_cluster = rng.integers(0, cfg.n_clusters, cfg.users)
    return pop, item_cluster, user_cluster


def drift_structure(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """Each user's second taste cluster and each item's launch day (0 = from the start).

    Drawn from their own seeded stream (``[seed, 1]``), so :func:`generate_events` and
    :func:`generate_items` agree and the log without drift keeps its old random draws.
    """
    rng = np.random.default_rng([cfg.seed, 1])
    second_cluster = rng.integers(0, cfg.n_clusters, cfg.users)
    launch_day = np.zeros(cfg.items, dtype=np.int64)
    if cfg.new_items > 0:
        new = rng.random(cfg.items) < cfg.new_items
        launch_day[new] = rng.integers(1, cfg.days, int(new.sum()))
    return second_cluster, launch_day


class _ItemPicker:
    """Draws an event's item: from its cluster with probability ``in_cluster``, else from all."""

    def __init__(self, cfg: SyntheticConfig, pop: np.ndarray, item_cluster: np.ndarray) -> None:
        # items grouped by cluster; one cumulative array with cluster c living in (c, c+1]
        self.cfg, self.order = cfg, np.argsort(item_cluster, kind="stable")
        sorted_cluster = item_cluster[self.order]
        w = pop[self.order]
        totals = np.bincount(sorted_cluster, weights=w, minlength=cfg.n_clusters)
        within = np.cumsum(w) - np.repeat(np.r_[0.0, np.cumsum(totals)[:-1]], np.bincount(sorted_cluster, minlength=cfg.n_clusters))
        self.cum_by_cluster = sorted_cluster + within / np.where(totals > 0, totals, 1.0)[sorted_cluster]
        self.cluster_size = np.bincount(item_cluster, minlength=cfg.n_clusters)
        self.cum_pop = np.cumsum(pop)

    def __call__(self, ucl: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Items for events whose (effective) user clusters are ``ucl``, and which were in-cluster."""
        n = len(ucl)
        in_own = rng.random(n) < self.cfg.in_cluster
        in_own &= self.cluster_size[ucl] > 0
        items = np.empty(n, dtype=np.int64)
        k = int(in_own.sum())
        q = ucl[in_own] + rng.random(k) * (1 - 1e-12)
        items[in_own] = self.order[np.searchsorted(self.cum_by_cluster, q, side="right").clip(max=self.cfg.items - 1)]
        items[~in_own] = _sample(self.cum_pop, rng, n - k)
        return items, in_own


def _respect_launches(items: np.ndarray, in_own: np.ndarray, day: np.ndarray, ucl: np.ndarray, launch_day: np.ndarray,
                      pick: _ItemPicker, rng: np.random.Generator) -> None:
    """Redraw (in place) the items of events that precede their item's launch.

    Rejection sampling, so the redrawn items follow popularity among the items already
    launched; the few events still early after 32 rounds move to their item's launch day.
    """
    for _ in range(32):
        early = np.flatnonzero(launch_day[items] > day)
        if not early.size:
            return
        items[early], in_own[early] = pick(ucl[early], rng)
    early = launch_day[items] > day
    day[early] = launch_day[items[early]]


def generate_events(cfg: SyntheticConfig) -> pl.DataFrame:
    """A synthetic interaction log.

    Returns
    -------
    polars.DataFrame
        ``user_id`` (int64), ``item_id`` (int64), ``timestamp`` (int64 unix s), optional
        ``event_type`` (str) and ``rating`` (float32), sorted by time like a real log.
    """
    rng = np.random.default_rng(cfg.seed)
    n = cfg.n_events
    pop, item_cluster, user_cluster = _clusters(cfg, rng)
    activity = rng.lognormal(0.0, 1.0, cfg.users)
    users = _sample(np.cumsum(activity), rng, n)
    pick = _ItemPicker(cfg, pop, item_cluster)
    ucl = user_cluster[users]
    timed = cfg.drift > 0 or cfg.new_items > 0
    day = rng.integers(0, cfg.days, n) if timed else None  # drawn first only when the item depends on it
    if timed:
        second_cluster, launch_day = drift_structure(cfg)
        if cfg.drift > 0:
            moved = rng.random(n) < cfg.drift * (day + 0.5) / cfg.days
            ucl = np.where(moved, second_cluster[users], ucl)
            del moved
    items, in_own = pick(ucl, rng)
    if timed and cfg.new_items > 0:
        _respect_launches(items, in_own, day, ucl, launch_day, pick, rng)
    # timestamps: uniform day, daily cycle peaking in the evening
    start = int(dt.datetime.fromisoformat(cfg.start).replace(tzinfo=dt.timezone.utc).timestamp())
    if day is None:
        day = rng.integers(0, cfg.days, n)
    hour = (rng.normal(19.0, 4.0, n) % 24.0) * 3600.0
    ts = start + day * 86_400 + hour.astype(np.int64)
    cols: dict[str, np.ndarray | pl.Series] = {"user_id": users.astype(np.int64), "item_id": items, "timestamp": ts}
    del day, hour
    if cfg.event_types:
        codes = _sample(np.cumsum(EVENT_PROBS), rng, n)
        cols["event_type"] = pl.Series(EVENT_TYPES).gather(codes)  # no 20M-element numpy unicode array
    if cfg.ratings:
        base = np.where(in_own, 4.0, 2.5) + rng.normal(0.0, 1.0, n)
        cols["rating"] = (np.clip(np.round(base * 2) / 2, 0.5, 5.0)).astype(np.float32)
    df = pl.DataFrame(cols).sort("timestamp")
    log.info("generated %d events (%d users, %d items, %d clusters, drift %g, new items %g)",
             n, cfg.users, cfg.items, cfg.n_clusters, cfg.drift, cfg.new_items)
    return df


def generate_items(cfg: SyntheticConfig) -> pl.DataFrame:
    """Item metadata matching :func:`generate_events` (same seed): id, title, genres, description.

    Genres are drawn from the item's cluster, so text carries the same signal as the
    interactions and content embeddings can stand in for cold items. With ``new_items``
    a ``launch_day`` column (days after ``start``; 0 = from the start) is added.
    """
    rng = np.random.default_rng(cfg.seed)
    _, item_cluster, _ = _clusters(cfg, rng)
    g = np.asarray(_GENRES)
    main = g[item_cluster % len(g)]
    second = g[(item_cluster * 7 + rng.integers(0, 3, cfg.items)) % len(g)]
    adj = np.asarray(_ADJ)[rng.integers(0, len(_ADJ), cfg.items)]
    noun = np.asarray(_NOUN)[rng.integers(0, len(_NOUN), cfg.items)]
    ids = np.arange(cfg.items, dtype=np.int64)
    df = pl.DataFrame({"item_id": ids, "adj": adj, "noun": noun, "g1": main, "g2": second})
    launch = [pl.Series("launch_day", drift_structure(cfg)[1])] if cfg.new_items > 0 else []
    return df.select(
        "item_id",
        pl.concat_str([pl.lit("The "), "adj", pl.lit(" "), "noun", pl.lit(" ("), pl.col("item_id").cast(pl.String), pl.lit(")")]).alias("title"),
        pl.concat_str(["g1", "g2"], separator="|").alias("genres"),
        pl.concat_str([pl.lit("A "), pl.col("g1").str.to_lowercase(), pl.lit(" story about a "), pl.col("adj").str.to_lowercase(),
                       pl.lit(" "), pl.col("noun").str.to_lowercase(), pl.lit(", with touches of "), pl.col("g2").str.to_lowercase(), pl.lit(".")]).alias("description"),
        *launch,
    )


def write_events(df: pl.DataFrame, path: str | os.PathLike, fmt: str = "csv", partition_by_day: bool = False) -> Path:
    """Write a log as one CSV/Parquet file, or as ``path/dt=YYYY-MM-DD/part-0.<fmt>`` partitions.

    Returns the file or directory written (the value to pass as ``--events``).
    """
    if fmt not in ("csv", "parquet"):
        raise ConfigError(f"format must be 'csv' or 'parquet', got {fmt!r}")
    path = Path(path)

    def write(frame: pl.DataFrame, target: Path) -> None:
        with atomic_path(target) as tmp:
            frame.write_csv(tmp) if fmt == "csv" else frame.write_parquet(tmp)

    if not partition_by_day:
        write(df, path)
        return path
    day = pl.from_epoch("timestamp", time_unit="s").dt.strftime("%Y-%m-%d").alias("__dt")
    for (d,), part in df.with_columns(day).partition_by("__dt", as_dict=True, maintain_order=True).items():
        write(part.drop("__dt"), path / f"dt={d}" / f"part-0.{fmt}")
    return path

"""A :class:`~recsys.data.dataset.Dataset` built in memory from raw interaction tables.

Why next to :mod:`recsys.data.build`: that module is the production path (files in,
validated, weighted, written to a dataset directory); this one is the short path for
experiments, tests and benchmarks that already hold a polars table and need the same
``Dataset`` (id maps, splits, item metadata) without writing files, in particular with a
cold-item holdout for cold-start evaluation.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recsys.data.dataset import Dataset
from recsys.data.idmap import IdMap
from recsys.data.splits import SplitConfig, split
from recsys.errors import InputError

__all__ = ["build_cold_start_dataset"]


def build_cold_start_dataset(
    interactions: pl.DataFrame,
    items: pl.DataFrame | None = None,
    cold_frac: float = 0.1,
    min_interactions: int = 5,
    test_frac: float = 0.2,
    valid_frac: float = 0.1,
    seed: int = 0,
) -> Dataset:
    """A :class:`Dataset` with a cold-item holdout, from raw ``user``/``item`` tables.

    Uses the spine's seeded split (:func:`recsys.data.splits.split`): ``cold_frac`` of the
    items with at least ``min_interactions`` interactions go entirely to ``test_cold``;
    the rest is split per user at random into train/valid/test.

    Parameters
    ----------
    interactions : polars.DataFrame
        Columns ``user``, ``item`` and optionally ``weight`` (default 1) and ``timestamp``.
    items : polars.DataFrame, optional
        Item metadata with an ``item`` column (external id) and text columns. Items in it
        without interactions are added to the catalogue (they are cold by construction).
    """
    for c in ("user", "item"):
        if c not in interactions.columns:
            raise InputError(f"interactions need a {c!r} column, got {interactions.columns}")
    df = interactions.with_columns(pl.col("user").cast(pl.Utf8), pl.col("item").cast(pl.Utf8))
    if "weight" not in df.columns:
        df = df.with_columns(weight=pl.lit(1.0, pl.Float32))
    users = IdMap(sorted(df["user"].unique().to_list()), "user")
    item_ids = sorted(df["item"].unique().to_list())
    if items is not None:
        if "item" not in items.columns:
            raise InputError(f"item metadata needs an 'item' column, got {items.columns}")
        extra = set(items["item"].cast(pl.Utf8).to_list()) - set(item_ids)
        item_ids += sorted(extra)
    imap = IdMap(item_ids, "item")
    cols = ["user_idx", "item_idx", "weight"] + (["timestamp"] if "timestamp" in df.columns else [])
    df = df.with_columns(
        user_idx=pl.Series(users.to_index(df["user"].to_list()), dtype=pl.Int32),
        item_idx=pl.Series(imap.to_index(df["item"].to_list()), dtype=pl.Int32),
        weight=pl.col("weight").cast(pl.Float32),
    ).select(cols).sort("user_idx", "item_idx")
    parts = split(df, SplitConfig("random", test_frac=test_frac, valid_frac=valid_frac, cold_item_frac=cold_frac,
                                  cold_min_interactions=min_interactions, seed=seed))
    meta = pl.DataFrame({"item_idx": np.arange(len(imap), dtype=np.int32), "external_id": imap.ids})
    if items is not None:
        meta = meta.join(items.with_columns(pl.col("item").cast(pl.Utf8)).rename({"item": "external_id"}), on="external_id", how="left")
    manifest = {"split": {"strategy": "random", "test_frac": test_frac, "valid_frac": valid_frac, "cold_item_frac": cold_frac,
                          "cold_min_interactions": min_interactions, "seed": seed}}
    return Dataset(parts, users, imap, meta, manifest)

"""Shared fixtures: real MovieLens data (embedded and from ../shared) and small datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.data import Dataset, IdMap
from recsys.io import write_json

ROOT = Path(__file__).resolve().parents[1]
ML_SMALL = ROOT / "data" / "movielens-latest-small"
ML_100K = ROOT.parent / "shared" / "data" / "movielens-100k"


@pytest.fixture(scope="session")
def ml_small_path() -> Path:
    return ML_SMALL


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    if not (ML_100K / "u.data").exists():
        pytest.skip(f"MovieLens 100K not found at {ML_100K} (it may not be committed; see data/README.md)")
    return ML_100K


def random_split_dataset(ratings: pl.DataFrame, test_frac: float = 0.2, valid_frac: float = 0.1, seed: int = 0) -> Dataset:
    """A Dataset from a (user, item, weight[, timestamp]) table with a random per-user holdout.

    A small stand-in for tests that need a real-data Dataset without going through the
    build-dataset pipeline (which has its own tests).
    """
    rng = np.random.default_rng(seed)
    users = IdMap(ratings["user"].unique(maintain_order=True).cast(pl.Utf8).to_list(), "user")
    items = IdMap(ratings["item"].unique(maintain_order=True).cast(pl.Utf8).to_list(), "item")
    df = ratings.with_columns(
        user_idx=pl.Series(users.to_index(ratings["user"].cast(pl.Utf8).to_list())).cast(pl.Int32),
        item_idx=pl.Series(items.to_index(ratings["item"].cast(pl.Utf8).to_list())).cast(pl.Int32),
        _r=pl.Series(rng.random(ratings.height)),
    )
    df = df.with_columns(_rank=pl.col("_r").rank("ordinal").over("user_idx") / pl.len().over("user_idx"))
    cols = [c for c in ("user_idx", "item_idx", "weight", "timestamp") if c in df.columns]
    test = df.filter(pl.col("_rank") > 1 - test_frac).select(cols)
    rest = df.filter(pl.col("_rank") <= 1 - test_frac)
    valid = rest.filter(pl.col("_rank") > (1 - test_frac) * (1 - valid_frac)).select(cols)
    train = rest.filter(pl.col("_rank") <= (1 - test_frac) * (1 - valid_frac)).select(cols)
    empty = train.clear()
    return Dataset({"train": train, "valid": valid, "test": test, "test_cold": empty}, users, items)


@pytest.fixture(scope="session")
def ml_small() -> Dataset:
    """MovieLens latest-small, every rating an interaction (weight = rating), 72/8/20 split."""
    r = pl.read_csv(ML_SMALL / "ratings.csv").select(
        user=pl.col("userId"), item=pl.col("movieId"), weight=pl.col("rating").cast(pl.Float32), timestamp="timestamp"
    )
    return random_split_dataset(r)


@pytest.fixture(scope="session")
def ml_small_dataset_dir(ml_small: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ml_small written as a dataset directory (the layout `recsys build-dataset` produces)."""
    d = tmp_path_factory.mktemp("ml-small")
    for name, df in ml_small.splits.items():
        df.write_parquet(d / f"{name}.parquet")
    ml_small.user_map.save(d / "user_map.parquet")
    ml_small.item_map.save(d / "item_map.parquet")
    write_json(d / "manifest.json", {"schema_version": 1, "seed": 0, "rows": {k: v.height for k, v in ml_small.splits.items()}})
    return d

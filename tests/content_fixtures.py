"""Fixtures/helpers for the content-embedding tests (issue 5): small real MovieLens tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from recsys.data.dataset import SCHEMA_VERSION, Dataset
from recsys.io import write_json

ROOT = Path(__file__).resolve().parents[1]
ML_SMALL = ROOT / "data" / "movielens-latest-small"


def ml_small_ratings() -> pl.DataFrame:
    return pl.read_csv(ML_SMALL / "ratings.csv").select(
        user=pl.col("userId"), item=pl.col("movieId"), weight=pl.col("rating").cast(pl.Float32), timestamp="timestamp"
    )


def ml_small_movies(n: int | None = None) -> pl.DataFrame:
    m = pl.read_csv(ML_SMALL / "movies.csv").select(item="movieId", title="title", genres="genres")
    return m.head(n) if n is not None else m


class CountingEncoder:
    """Wraps an encoder and records every text it is asked to encode."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []

    @property
    def model_id(self) -> str:
        return self.inner.model_id  # type: ignore[attr-defined]

    @property
    def dim(self) -> int:
        return self.inner.dim  # type: ignore[attr-defined]

    @property
    def n_encoded(self) -> int:
        return sum(len(c) for c in self.calls)

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return self.inner.encode(texts)  # type: ignore[attr-defined]


def write_dataset_dir(ds: Dataset, path: Path) -> Path:
    """Write a Dataset in the on-disk layout :meth:`Dataset.load` reads."""
    path.mkdir(parents=True, exist_ok=True)
    for name, df in ds.splits.items():
        df.write_parquet(path / f"{name}.parquet")
    ds.user_map.save(path / "user_map.parquet")
    ds.item_map.save(path / "item_map.parquet")
    ds.items.write_parquet(path / "items.parquet")
    write_json(path / "manifest.json", {"schema_version": SCHEMA_VERSION, **ds.manifest})
    return path

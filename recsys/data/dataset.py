"""Read a dataset directory written by ``recsys build-dataset``.

Layout (schema version 1)::

    DIR/
      manifest.json        input hashes, row counts in/out/rejected per reason, config, seed
      train.parquet        user_idx:int32 item_idx:int32 weight:float32 [rating:float32]
      valid.parquet          [timestamp:int64 unix seconds] [event_type:str]
      test.parquet
      test_cold.parquet    interactions of held-out cold items (may be empty)
      user_map.parquet     idx:int32 external_id:str
      item_map.parquet     idx:int32 external_id:str   (covers every item, incl. cold ones)
      items.parquet        item_idx:int32 external_id:str + text columns (may be empty)
      rejects.parquet      rejected input rows (as strings) + reason
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys.data.idmap import IdMap
from recsys.data.interactions import frame_to_csr
from recsys.errors import BundleError, InputError
from recsys.io import read_json

SCHEMA_VERSION = 1
SPLITS = ("train", "valid", "test", "test_cold")


@dataclass
class Dataset:
    """An in-memory dataset: split tables on int indices plus the id maps.

    Attributes
    ----------
    splits : dict of str -> polars.DataFrame
        ``train``, ``valid``, ``test`` and ``test_cold`` tables.
    user_map, item_map : IdMap
    items : polars.DataFrame
        Item metadata (``item_idx``, ``external_id`` and text columns).
    manifest : dict
    path : Path or None
    """

    splits: dict[str, pl.DataFrame]
    user_map: IdMap
    item_map: IdMap
    items: pl.DataFrame = field(default_factory=pl.DataFrame)
    manifest: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def n_users(self) -> int:
        return len(self.user_map)

    @property
    def n_items(self) -> int:
        return len(self.item_map)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_users, self.n_items)

    def split(self, name: str) -> pl.DataFrame:
        """One split table; an unknown name raises with the list of known ones."""
        if name not in self.splits:
            raise InputError(f"unknown split {name!r}; the dataset has {sorted(self.splits)}")
        return self.splits[name]

    def matrix(self, *names: str, value: str | None = "weight") -> sp.csr_matrix:
        """User x item CSR matrix of one or more splits stacked (duplicates summed).

        ``dataset.matrix("train")`` is the MF training matrix; ``matrix("train", "valid")``
        is what a model refitted after selection trains on.
        """
        df = pl.concat([self.split(n).select("user_idx", "item_idx", *( [value] if value else [])) for n in names])
        return frame_to_csr(df, self.shape, value)

    def interaction_counts(self, *names: str) -> np.ndarray:
        """Number of interactions per item (int64, length ``n_items``) in the given splits."""
        counts = np.zeros(self.n_items, dtype=np.int64)
        for n in names or ("train",):
            np.add.at(counts, self.split(n)["item_idx"].to_numpy(), 1)
        return counts

    @classmethod
    def load(cls, path: str | os.PathLike) -> Dataset:
        """Load a dataset directory, refusing one without a manifest (i.e. incomplete)."""
        path = Path(path)
        if not (path / "manifest.json").exists():
            raise BundleError(
                f"{path} is not a complete dataset directory (no manifest.json); "
                "run `recsys build-dataset --out DIR` first"
            )
        manifest = read_json(path / "manifest.json")
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(f"{path}: dataset schema version {version}, this recsys reads {SCHEMA_VERSION}; rebuild it")
        splits = {}
        for name in SPLITS:
            f = path / f"{name}.parquet"
            if f.exists():
                splits[name] = pl.read_parquet(f)
        items_file = path / "items.parquet"
        return cls(
            splits=splits,
            user_map=IdMap.load(path / "user_map.parquet", name="user"),
            item_map=IdMap.load(path / "item_map.parquet", name="item"),
            items=pl.read_parquet(items_file) if items_file.exists() else pl.DataFrame(),
            manifest=manifest,
            path=path,
        )

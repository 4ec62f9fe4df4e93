"""The synthetic log generator: heavy tails, clusters, partitions, and it feeds the pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from recsys.data.build import BuildConfig, WeightConfig, build_dataset
from recsys.data.readers import InputSpec
from recsys.data.synthetic import SyntheticConfig, generate_events, generate_items, write_events
from recsys.data.validate import ColumnMapping


def test_events_are_seeded_and_heavy_tailed() -> None:
    cfg = SyntheticConfig(n_events=50_000, n_users=1_000, n_items=2_000, seed=1)
    a, b = generate_events(cfg), generate_events(cfg)
    assert a.equals(b)
    assert a.height == 50_000 and a.columns == ["user_id", "item_id", "timestamp", "event_type"]
    counts = np.sort(a["item_id"].value_counts()["count"].to_numpy())[::-1]
    assert counts[: len(counts) // 100].sum() > 0.2 * a.height  # top 1% of items: > 20% of events
    assert a["timestamp"].is_sorted()
    assert set(a["event_type"].unique()) == {"view", "cart", "purchase"}
    assert (a["event_type"] == "view").mean() > 0.8


def test_users_mostly_pick_items_of_their_cluster() -> None:
    cfg = SyntheticConfig(n_events=20_000, n_users=200, n_items=500, n_clusters=5, in_cluster=0.9, ratings=True)
    ev = generate_events(cfg)
    rng = np.random.default_rng(cfg.seed)
    from recsys.data.synthetic import _clusters

    _, item_cluster, user_cluster = _clusters(cfg, rng)
    same = item_cluster[ev["item_id"].to_numpy()] == user_cluster[ev["user_id"].to_numpy()]
    assert same.mean() > 0.85
    assert ev["rating"].min() >= 0.5 and ev["rating"].max() <= 5.0


def test_items_have_text_tied_to_clusters() -> None:
    items = generate_items(SyntheticConfig(n_events=10_000, n_items=100))
    assert items.height == 100 and items.columns == ["item_id", "title", "genres", "description"]
    assert items["title"][3].endswith("(3)") and "|" in items["genres"][0]


def test_partitioned_output_builds_a_dataset(tmp_path: Path) -> None:
    cfg = SyntheticConfig(n_events=5_000, days=3, seed=2)
    root = write_events(generate_events(cfg), tmp_path / "logs", fmt="parquet", partition_by_day=True)
    assert sorted(p.name for p in root.iterdir()) == ["dt=2026-01-01", "dt=2026-01-02", "dt=2026-01-03"]
    write_events(generate_items(cfg), tmp_path / "items.csv")
    config = BuildConfig(
        InputSpec(str(root)), ColumnMapping("user_id", "item_id", time="timestamp", event_type="event_type"),
        items=InputSpec(str(tmp_path / "items.csv")), item_text_cols=("title", "genres"),
        weights=WeightConfig(event_weights={"view": 1, "cart": 3, "purchase": 10}), as_of="2026-01-02", window_days=1,
    )
    ds = build_dataset(config, tmp_path / "ds")
    day2 = pl.read_parquet(root / "dt=2026-01-02")
    assert ds.manifest["rows"]["in"] == day2.height
    assert ds.items["title"].str.len_chars().min() > 0

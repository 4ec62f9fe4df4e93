"""The synthetic log generator: heavy tails, clusters, partitions, and it feeds the pipeline."""

from __future__ import annotations

from datetime import datetime, timezone
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


def _day_of(ev: pl.DataFrame, cfg: SyntheticConfig) -> np.ndarray:
    start = int(datetime.fromisoformat(cfg.start).replace(tzinfo=timezone.utc).timestamp())
    return (ev["timestamp"].to_numpy() - start) // 86_400


def _checksum(ev: pl.DataFrame) -> int:
    u, i, t = (ev[c].to_numpy() for c in ("user_id", "item_id", "timestamp"))
    return int((u * 1_000_003 + i * 7919 + t % 1_000_000_007).sum())


def test_log_without_drift_is_the_same_as_before_drift_existed() -> None:
    # golden values from the generator of commit 61a0df9 (before drift and launches)
    cfg = SyntheticConfig(n_events=30_000, n_users=800, n_items=600, ratings=True, seed=7)
    ev = generate_events(cfg)
    assert _checksum(ev) == 35137116006618
    assert ev["event_type"].value_counts(sort=True).rows() == [("view", 25516), ("cart", 3018), ("purchase", 1466)]
    assert float(ev["rating"].sum()) == 109210.5
    items = generate_items(cfg)
    assert items.columns == ["item_id", "title", "genres", "description"]
    assert items.row(5) == (5, "The Secret Signal (5)", "Children|Crime", "A children story about a secret signal, with touches of crime.")


def test_drift_moves_users_to_their_second_cluster_over_time() -> None:
    from recsys.data.synthetic import _clusters, drift_structure

    cfg = SyntheticConfig(n_events=60_000, n_users=500, n_items=1_000, n_clusters=10, in_cluster=1.0, days=20, drift=1.0, seed=3)
    ev = generate_events(cfg)
    assert ev.equals(generate_events(cfg))
    _, item_cluster, first = _clusters(cfg, np.random.default_rng(cfg.seed))
    second, _ = drift_structure(cfg)
    users, items = ev["user_id"].to_numpy(), ev["item_id"].to_numpy()
    day = _day_of(ev, cfg)
    moved = (item_cluster[items] == second[users]) & (second[users] != first[users])
    stayed = (item_cluster[items] == first[users]) & (second[users] != first[users])
    early, late = day < 2, day >= 18
    assert moved[early].mean() < 0.15 and moved[late].mean() > 0.8
    assert stayed[early].mean() > 0.8 and stayed[late].mean() < 0.15


def test_no_event_precedes_its_items_launch_day() -> None:
    cfg = SyntheticConfig(n_events=50_000, n_users=1_000, n_items=2_000, days=30, new_items=0.3, seed=5)
    ev, items = generate_events(cfg), generate_items(cfg)
    launch = items["launch_day"].to_numpy()
    assert 0.25 < (launch > 0).mean() < 0.35 and launch.max() <= 29
    day = _day_of(ev, cfg)
    assert (day >= launch[ev["item_id"].to_numpy()]).all()
    late_items = np.flatnonzero(launch >= 20)
    assert np.isin(ev["item_id"].to_numpy(), late_items).any()  # launched items do get events
    assert ev["timestamp"].is_sorted() and ev.height == 50_000


def test_bad_drift_settings_name_the_valid_range() -> None:
    import pytest

    from recsys.errors import ConfigError

    with pytest.raises(ConfigError, match=r"drift must be in \[0, 1\]"):
        SyntheticConfig(drift=1.5)
    with pytest.raises(ConfigError, match=r"new_items must be in \[0, 1\)"):
        SyntheticConfig(new_items=1.0)
    with pytest.raises(ConfigError, match="days >= 2"):
        SyntheticConfig(new_items=0.1, days=1)

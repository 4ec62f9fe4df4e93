"""Every split strategy: no leakage, the promised sizes, cold items fully held out."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys.data.splits import SplitConfig, assign_parts, cold_items, cutoff_seconds, split
from recsys.errors import ConfigError, InputError


@pytest.fixture(scope="module")
def log() -> pl.DataFrame:
    rng = np.random.default_rng(0)
    n_users, per_user = 200, 20
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate([rng.choice(300, per_user, replace=False) for _ in range(n_users)])
    ts = rng.integers(1_700_000_000, 1_700_000_000 + 86_400 * 100, len(users))
    df = pl.DataFrame({"user_idx": users.astype(np.int32), "item_idx": items.astype(np.int32), "weight": np.ones(len(users), np.float32), "timestamp": ts})
    return df.sort("user_idx", "item_idx")


def _pairs(df: pl.DataFrame) -> set[tuple[int, int]]:
    return set(zip(df["user_idx"].to_list(), df["item_idx"].to_list()))


def _assert_partition(df: pl.DataFrame, parts: dict[str, pl.DataFrame]) -> None:
    assert sum(p.height for p in parts.values()) == df.height
    names = list(parts)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            assert not _pairs(parts[names[a]]) & _pairs(parts[names[b]]), (names[a], names[b])


def test_random_split_holds_out_fraction_per_user_without_leakage(log: pl.DataFrame) -> None:
    parts = split(log, SplitConfig("random", test_frac=0.2, valid_frac=0.25, seed=3))
    _assert_partition(log, parts)
    per_user = {k: v.group_by("user_idx").len().sort("user_idx")["len"].to_list() for k, v in parts.items() if v.height}
    assert set(per_user["test"]) == {4}  # round(0.2 * 20)
    assert set(per_user["valid"]) == {4}  # round(0.25 * 16)
    assert set(per_user["train"]) == {12}


def test_random_split_is_reproducible_and_seed_dependent(log: pl.DataFrame) -> None:
    a = split(log, SplitConfig(seed=1))["test"]
    b = split(log, SplitConfig(seed=1))["test"]
    c = split(log, SplitConfig(seed=2))["test"]
    assert a.equals(b)
    assert not a.equals(c)


def test_users_with_one_interaction_stay_in_train() -> None:
    df = pl.DataFrame({"user_idx": [0, 1, 1], "item_idx": [0, 0, 1]}, schema={"user_idx": pl.Int32, "item_idx": pl.Int32})
    parts = split(df, SplitConfig(test_frac=0.5, valid_frac=0.0))
    assert parts["train"]["user_idx"].to_list().count(0) == 1
    assert parts["test"].height == 1


def test_temporal_split_puts_only_later_interactions_in_test(log: pl.DataFrame) -> None:
    parts = split(log, SplitConfig("temporal", test_frac=0.2, valid_frac=0.1))
    _assert_partition(log, parts)
    assert parts["train"]["timestamp"].max() < parts["valid"]["timestamp"].min()
    assert parts["valid"]["timestamp"].max() < parts["test"]["timestamp"].min()
    assert parts["test"].height == pytest.approx(0.2 * log.height, rel=0.02)


def test_temporal_split_with_fixed_cutoff(log: pl.DataFrame) -> None:
    cut = 1_700_000_000 + 86_400 * 50
    parts = split(log, SplitConfig("temporal", cutoff=str(cut), valid_frac=0.0))
    assert parts["test"]["timestamp"].min() >= cut
    assert parts["train"]["timestamp"].max() < cut
    assert cutoff_seconds("2026-11-25") == 1795564800


def test_leave_last_n_out_holds_out_each_users_latest(log: pl.DataFrame) -> None:
    parts = split(log, SplitConfig("leave_last_n", n_last=2))
    _assert_partition(log, parts)
    latest = log.sort("timestamp").group_by("user_idx", maintain_order=True).tail(2)
    assert _pairs(parts["test"]) == _pairs(latest)
    assert set(parts["valid"].group_by("user_idx").len()["len"].to_list()) == {2}
    test_first = parts["test"].group_by("user_idx").agg(pl.col("timestamp").min().alias("t"))
    train_last = parts["train"].group_by("user_idx").agg(pl.col("timestamp").max().alias("s"))
    joined = test_first.join(train_last, on="user_idx")
    assert (joined["t"] >= joined["s"]).all()


def test_cold_items_are_absent_from_train_valid_and_test(log: pl.DataFrame) -> None:
    parts = split(log, SplitConfig(cold_item_frac=0.1, cold_min_interactions=5, seed=0))
    _assert_partition(log, parts)
    cold = set(parts["test_cold"]["item_idx"].to_list())
    counts = log.group_by("item_idx").len()
    eligible = counts.filter(pl.col("len") >= 5).height
    assert len(cold) == round(0.1 * eligible)
    for name in ("train", "valid", "test"):
        assert not cold & set(parts[name]["item_idx"].to_list())
    # all interactions of a cold item are in test_cold
    assert parts["test_cold"].height == log.filter(pl.col("item_idx").is_in(sorted(cold))).height
    assert set(cold_items(log, 0.1, 5, 0).tolist()) == cold


def test_cold_items_need_min_interactions(log: pl.DataFrame) -> None:
    assert len(cold_items(log, 0.5, 10_000, 0)) == 0


def test_temporal_split_without_timestamps_is_a_config_error(log: pl.DataFrame) -> None:
    for strategy in ("temporal", "leave_last_n"):
        with pytest.raises(ConfigError, match="needs timestamps"):
            assign_parts(log.drop("timestamp"), SplitConfig(strategy))


def test_invalid_split_settings_are_rejected() -> None:
    with pytest.raises(ConfigError):
        SplitConfig("by-moon-phase")
    with pytest.raises(ConfigError):
        SplitConfig(test_frac=1.0)
    with pytest.raises(ConfigError):
        cutoff_seconds("next tuesday")


def test_cutoff_before_everything_is_an_input_error(log: pl.DataFrame) -> None:
    with pytest.raises(InputError, match="every interaction in test"):
        split(log, SplitConfig("temporal", cutoff=0))

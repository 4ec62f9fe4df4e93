"""The Spark engine's split (recsys/data/spark_split.py) labels the rows the polars split labels.

The pieces are tested on their own: the advanced PCG64 generator draws the one-node
engine's sequence from any offset, the exact quantile is polars' ``"lower"`` one, and the
distributed split of a generated pair table, cut into more blocks than Spark has
partitions and repartitioned so that block and partition boundaries cut through it,
writes the tables :func:`recsys.data.splits.split` returns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.data.splits import SplitConfig, lower_quantile_rank, random_keys, random_parts, split
from tests.spark_fixtures import require_spark, spark  # noqa: F401 - fixture


@pytest.mark.parametrize("seed", [0, 7, 123456789])
def test_advanced_generator_draws_the_slice_of_the_one_generator(seed: int) -> None:
    whole = np.random.default_rng([seed, 2]).random(10_000)
    for start, n in [(0, 10_000), (0, 1), (1, 5), (4_321, 1_000), (9_999, 1), (5_000, 0)]:
        np.testing.assert_array_equal(random_keys(seed, start, n), whole[start:start + n])


def test_tied_random_keys_label_a_block_of_users_as_the_whole_table() -> None:
    # keys on a coarse grid: many rows of one user tie; a block of whole users (what a Spark
    # task labels) must give its rows the labels the whole table gives them
    rng = np.random.default_rng(1)
    user = np.sort(rng.integers(0, 30, 3_000))
    keys = rng.integers(0, 4, user.size) / 4.0
    whole = random_parts(user, keys, 0.2, 0.1)
    for lo, hi in [(0, 10), (10, 11), (11, 30)]:
        rows = (user >= lo) & (user < hi)
        np.testing.assert_array_equal(random_parts(user[rows], keys[rows], 0.2, 0.1), whole[rows])


def test_lower_quantile_rank_picks_the_value_polars_picks() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        n = int(rng.integers(1, 3_000))
        values = np.sort(rng.integers(0, 50, n))  # ties on purpose
        q = float(rng.choice([rng.random(), 0.7, 0.8, 0.9, 0.95]))
        assert values[lower_quantile_rank(n, q)] == pl.Series(values).quantile(q, "lower")


@pytest.fixture
def sp(request: pytest.FixtureRequest):
    """The shared SparkSession; the test is skipped where pyspark or Java is missing."""
    require_spark()
    return request.getfixturevalue("spark")


def _pairs(n_users: int = 300, n_items: int = 120, seed: int = 0) -> pl.DataFrame:
    """A pair table as the build ends with: unique (user, item), sorted, skewed users, tied times."""
    rng = np.random.default_rng(seed)
    per_user = rng.zipf(1.6, n_users).clip(1, n_items)
    user = np.repeat(np.arange(n_users), per_user)
    item = np.concatenate([rng.choice(n_items, k, replace=False) for k in per_user])
    n = len(user)
    return pl.DataFrame({
        "user_idx": user.astype(np.int32), "item_idx": item.astype(np.int32), "weight": rng.uniform(0.5, 5, n).astype(np.float32),
        "timestamp": rng.integers(1_690_000_000, 1_690_000_000 + 500, n),  # few distinct times: ties
    }).sort("user_idx", "item_idx")


@pytest.mark.parametrize("cfg", [
    SplitConfig(strategy="random", test_frac=0.2, valid_frac=0.1, cold_item_frac=0.1, cold_min_interactions=3, seed=11),
    SplitConfig(strategy="random", test_frac=0.3, valid_frac=0.0, seed=2),
    SplitConfig(strategy="leave_last_n", n_last=2, cold_item_frac=0.2, cold_min_interactions=2, seed=5),
    SplitConfig(strategy="temporal", test_frac=0.2, valid_frac=0.1, cold_item_frac=0.1, seed=3),
    SplitConfig(strategy="temporal", cutoff=1_690_000_400, valid_frac=0.25),
], ids=["random-cold", "random-no-valid", "leave-last-n-cold", "temporal-cold", "temporal-cutoff"])
def test_distributed_split_writes_the_polars_split_across_partition_boundaries(sp, tmp_path: Path, cfg: SplitConfig) -> None:
    from recsys.data.spark_split import SPLIT_NAMES, split_to_parquet

    table = _pairs()
    expected = split(table, cfg)
    frame = sp.createDataFrame(table.sample(fraction=1.0, shuffle=True, seed=1).to_arrow()).repartition(4)
    counts, n_cold = split_to_parquet(sp, frame, cfg, tmp_path, n_blocks=7)
    for name in SPLIT_NAMES:
        got = pl.read_parquet(tmp_path / f"{name}.parquet")
        assert got.schema == expected[name].schema, name
        assert got.equals(expected[name]), f"{name}: {got.height} rows vs {expected[name].height}"
        assert counts[name] == expected[name].height
    assert n_cold == expected["test_cold"]["item_idx"].n_unique()


def test_exact_quantile_equals_polars_lower_quantile_with_ties(sp) -> None:
    from recsys.data.spark_split import exact_lower_quantile

    ts = pl.Series("timestamp", np.random.default_rng(4).integers(0, 2_000, 50_000))
    frame = sp.createDataFrame(ts.to_frame().to_arrow()).repartition(4)
    for q in (0.0, 0.1, 0.5, 0.8, 0.9, 0.999, 1.0):
        assert exact_lower_quantile(frame, "timestamp", q, ts.len()) == ts.quantile(q, "lower"), q

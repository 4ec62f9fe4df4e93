"""The Spark engine builds the dataset the polars engine builds, row for row (docs/spark.md).

One local[2] SparkSession serves the whole test session (starting a JVM costs ~10-25 s).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.spark_fixtures import require_spark, spark  # noqa: F401 - fixture

require_spark()

from recsys.data.build import BuildConfig, WeightConfig, build_dataset  # noqa: E402
from recsys.data.readers import InputSpec  # noqa: E402
from recsys.data.spark_build import build_dataset_spark  # noqa: E402
from recsys.data.splits import SplitConfig  # noqa: E402
from recsys.data.validate import ColumnMapping  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ML_SMALL = ROOT / "data" / "movielens-latest-small"
BAD_ROWS = [  # (column: value, reason) -- one row of each kind of rejected row
    ({"u": None}, "user_id_missing"), ({"u": "   "}, "user_id_missing"), ({"i": ""}, "item_id_missing"),
    ({"t": None}, "timestamp_missing"), ({"t": "yesterday-ish"}, "timestamp_unparsable"), ({"t": "-5"}, "timestamp_before_1970"),
    ({"t": "99999999999"}, "timestamp_in_future"), ({"w": None}, "weight_missing"), ({"w": "abc"}, "weight_not_numeric"),
    ({"w": "NaN"}, "weight_nan"), ({"w": "inf"}, "weight_infinite"), ({"w": "-1"}, "weight_negative"),
    ({"w": "1e39"}, "weight_too_large"), ({"e": ""}, "event_type_missing"), ({"e": "  "}, "event_type_missing"),
    ({"e": "teleport"}, "event_type_unknown"),
]


def adversarial_log(path: Path, n: int = 3000, seed: int = 0) -> Path:
    """A log of repeated pairs and event types with every kind of bad row spread through it."""
    rng = np.random.default_rng(seed)
    good = pl.DataFrame({
        "u": [f"u{x}" for x in rng.integers(0, 60, n)],
        "i": [str(x) for x in rng.zipf(1.5, n) % 80],
        "w": [f"{x:.1f}" for x in rng.uniform(0.5, 5, n)],
        "t": [str(x) for x in rng.choice(np.arange(1_690_000_000, 1_700_000_000), n, replace=False)],  # no ties
        "e": rng.choice(["view", "cart", "purchase"], n).tolist(),
    })
    rows = good.to_dicts()
    for k, (bad, _) in enumerate(BAD_ROWS * 3):
        pos = int(rng.integers(0, len(rows)))
        rows.insert(pos, {**rows[pos], **bad})
    pl.DataFrame(rows, schema={c: pl.String for c in "uitwe"}).write_csv(path)
    return path


def assert_same_dataset(a: Path, b: Path) -> None:
    for name in ("train", "valid", "test", "test_cold", "user_map", "item_map", "items", "rejects"):
        left, right = pl.read_parquet(a / f"{name}.parquet"), pl.read_parquet(b / f"{name}.parquet")
        assert left.schema == right.schema, name
        assert left.equals(right), f"{name}.parquet differs: {left.height} vs {right.height} rows"
    import json

    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    for key in ("rows", "kcore", "id_maps", "split", "weighting", "seed", "items"):
        assert ma[key] == mb[key], key
    assert ma["input_profile"] == mb["input_profile"]


def test_spark_engine_builds_the_polars_dataset_of_movielens(spark,  # noqa: F811
        tmp_path: Path) -> None:
    cfg = BuildConfig(
        InputSpec(str(ML_SMALL / "ratings.csv")), ColumnMapping("userId", "movieId", weight="rating", time="timestamp"),
        items=InputSpec(str(ML_SMALL / "movies.csv")), item_id_col="movieId", item_text_cols=("title", "genres"),
        weights=WeightConfig(aggregate="last", half_life_days=365.0),  # reference time: the newest accepted row
        min_user_interactions=3, min_item_interactions=3, as_of="2026-12-31",
        split=SplitConfig(test_frac=0.2, valid_frac=0.1, cold_item_frac=0.1), seed=7, hash_inputs=False,
    )
    build_dataset(cfg, tmp_path / "polars")
    build_dataset_spark(cfg, tmp_path / "spark", spark=spark)
    assert_same_dataset(tmp_path / "polars", tmp_path / "spark")


def test_spark_engine_rejects_every_bad_row_kind_as_polars_does(spark, tmp_path: Path) -> None:
    log = adversarial_log(tmp_path / "events.csv")
    cfg = BuildConfig(
        InputSpec(str(log)), ColumnMapping("u", "i", weight="w", time="t", event_type="e"),
        weights=WeightConfig(event_weights={"view": 1.0, "cart": 3.0, "purchase": 10.0}, aggregate="sum", half_life_days=30.0),
        min_user_interactions=2, min_item_interactions=2, as_of="2024-01-01", max_reject_share=0.5,
        split=SplitConfig(test_frac=0.2, valid_frac=0.1, cold_item_frac=0.1), seed=3, hash_inputs=False,
    )
    polars_ds = build_dataset(cfg, tmp_path / "polars")
    build_dataset_spark(cfg, tmp_path / "spark", spark=spark)
    assert_same_dataset(tmp_path / "polars", tmp_path / "spark")
    assert set(polars_ds.manifest["rows"]["rejected_by_reason"]) == {r for _, r in BAD_ROWS}
    assert polars_ds.manifest["rows"]["duplicates_merged"] > 0


def test_spark_engine_extends_a_previous_datasets_id_maps_like_polars(spark, tmp_path: Path) -> None:
    first = adversarial_log(tmp_path / "a.csv", n=800, seed=1)
    second = adversarial_log(tmp_path / "b.csv", n=800, seed=2)
    base = BuildConfig(InputSpec(str(first)), ColumnMapping("u", "i", weight="w", time="t"), weights=WeightConfig(aggregate="last", weighting="threshold"),
                       as_of="2024-01-01", max_reject_share=0.5, split=SplitConfig(strategy="temporal", test_frac=0.2, valid_frac=0.0), hash_inputs=False)
    build_dataset(base, tmp_path / "prev")
    nxt = dataclasses.replace(base, events=InputSpec(str(second)))
    build_dataset(nxt, tmp_path / "polars", previous=tmp_path / "prev")
    build_dataset_spark(nxt, tmp_path / "spark", previous=tmp_path / "prev", spark=spark)
    assert_same_dataset(tmp_path / "polars", tmp_path / "spark")


def _cli(env: dict[str, str], *flags: str, tmp_path: Path) -> tuple[int, str, float]:
    argv = [sys.executable, "-m", "pipelines.cli", "build-dataset", "--engine", "spark", "--events", str(ML_SMALL / "ratings.csv"),
            "--user-col", "userId", "--item-col", "movieId", "--no-hash", "--out", str(tmp_path / "ds"), *flags]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stderr, time.perf_counter() - t0


def test_no_java_exits_2_naming_the_fix_quickly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(Path(sys.executable).parent)  # python, but no java
    code, err, took = _cli(env, tmp_path=tmp_path)
    assert code == 2, err
    assert "java" in err.lower() and "JAVA_HOME" in err
    assert took < 60


def test_unreachable_master_exits_2_naming_the_fix_quickly(tmp_path: Path) -> None:
    cfg = tmp_path / "engine.toml"
    cfg.write_text('[engine]\nname = "spark"\nmaster = "spark://127.0.0.1:1"\n')
    code, err, took = _cli(dict(os.environ), "--config", str(cfg), tmp_path=tmp_path)
    assert code == 2, err
    assert "spark://127.0.0.1:1" in err and "local[*]" in err
    assert took < 60


# -- batch top-K on Spark ------------------------------------------------------------------------------

from tests.serving_fixtures import export_real, real  # noqa: E402,F401 - fixture


@pytest.fixture(scope="module")
def bundle(real, tmp_path_factory) -> Path:  # noqa: F811
    from recsys.serving.bundle import IndexConfig

    return export_real(tmp_path_factory.mktemp("spark-batch"), real, config=IndexConfig(backend="exact", n_queries=50)).path


def test_spark_batch_topk_equals_the_one_node_lists_on_sampled_users(spark, bundle: Path, tmp_path: Path) -> None:
    from recsys.serving.batch import read_batch, write_batch_topk
    from recsys.serving.reader import read_bundle
    from recsys.serving.spark_batch import write_batch_topk_spark

    data = read_bundle(bundle, verify=False)
    ids = data.user_map.ids
    users = [ids[i] for i in np.random.default_rng(0).choice(len(ids), 150, replace=False)] + ["never-seen-user"]
    kw = dict(k=20, users=users, rows_per_file=500, block_items=[data.item_map.ids[0]])
    one = write_batch_topk(data, tmp_path / "one", **kw)
    many = write_batch_topk_spark(spark, data, tmp_path / "spark", n_tasks=3, **kw)
    _, parts_one = read_batch(one.path)
    manifest, parts_spark = read_batch(many.path)  # sizes and sha256 of every part check out
    a, b = pl.read_parquet(parts_one), pl.read_parquet(parts_spark)
    assert a.equals(b)
    assert manifest["rows"] == one.manifest["rows"] and manifest["n_cold_users"] == 1
    seen: set[str] = set()
    for part in parts_spark:  # a user's rows never straddle two parts
        users_here = set(pl.read_parquet(part)["user_id"].to_list())
        assert not users_here & seen
        seen |= users_here


def test_recommend_batch_cli_runs_on_spark(spark, bundle: Path, tmp_path: Path) -> None:
    from pipelines.cli import main as cli
    from recsys.serving.batch import read_batch

    assert cli(["recommend-batch", "--bundle", str(bundle), "--out", str(tmp_path / "b"), "--k", "5", "--engine", "spark", "--no-progress"]) == 0
    manifest, _ = read_batch(tmp_path / "b")
    assert manifest["engine"]["name"] == "spark" and manifest["rows"] == 5 * manifest["n_users"]


def test_last_merge_with_tied_times_keeps_a_row_of_the_newest_time(spark, tmp_path: Path) -> None:  # noqa: F811
    """Ties are the one place the engines may differ (docs/spark.md): the invariant both keep."""
    rows = [("a", "1", "1.0", "100"), ("a", "1", "2.0", "200"), ("a", "1", "3.0", "200"), ("b", "1", "4.0", "50"), ("b", "2", "5.0", "60")]
    pl.DataFrame(rows, schema=list("uiwt"), orient="row").write_csv(tmp_path / "ties.csv")
    cfg = BuildConfig(InputSpec(str(tmp_path / "ties.csv")), ColumnMapping("u", "i", weight="w", time="t"),
                      weights=WeightConfig(aggregate="last"), split=SplitConfig(test_frac=0.0, valid_frac=0.0), hash_inputs=False)
    ds = build_dataset_spark(cfg, tmp_path / "spark", spark=spark)
    a1 = ds.splits["train"].join(ds.user_map.to_frame().rename({"idx": "user_idx"}), on="user_idx").filter(pl.col("external_id") == "a")
    assert a1["timestamp"].to_list() == [200] and a1["rating"][0] in (2.0, 3.0)


def test_spark_engine_reads_typed_parquet_like_polars(spark, tmp_path: Path) -> None:  # noqa: F811
    """Integer ids, float weights with nulls and negatives, integer times: the same dataset."""
    rng = np.random.default_rng(0)
    n = 2000
    row = pl.int_range(n)
    pl.DataFrame({"u": rng.integers(0, 50, n), "i": [str(x) for x in rng.integers(0, 70, n)], "w": rng.uniform(0, 5, n),
                  "t": rng.integers(1_690_000_000, 1_700_000_000, n)}).with_columns(
        pl.when(row % 97 == 0).then(None).when(row % 89 == 0).then(-1.0).otherwise(pl.col("w")).alias("w")
    ).write_parquet(tmp_path / "events.parquet")
    cfg = BuildConfig(InputSpec(str(tmp_path / "events.parquet")), ColumnMapping("u", "i", weight="w", time="t"),
                      weights=WeightConfig(aggregate="max"), max_reject_share=0.5, split=SplitConfig(test_frac=0.2, valid_frac=0.1),
                      hash_inputs=False, as_of="2024-01-01")
    ds = build_dataset(cfg, tmp_path / "polars")
    build_dataset_spark(cfg, tmp_path / "spark", spark=spark)
    assert_same_dataset(tmp_path / "polars", tmp_path / "spark")
    assert set(ds.manifest["rows"]["rejected_by_reason"]) == {"weight_missing", "weight_negative"}


def test_build_dataset_cli_with_engine_spark_writes_the_polars_dataset(spark, tmp_path: Path) -> None:  # noqa: F811
    from pipelines.cli import main as cli

    log = adversarial_log(tmp_path / "events.csv", n=500)
    flags = ["--events", str(log), "--user-col", "u", "--item-col", "i", "--weight-col", "w", "--time-col", "t",
             "--as-of", "2024-01-01", "--max-reject-share", "0.5", "--no-hash"]
    assert cli(["build-dataset", *flags, "--out", str(tmp_path / "polars")]) == 0
    assert cli(["build-dataset", *flags, "--engine", "spark", "--out", str(tmp_path / "spark")]) == 0
    assert_same_dataset(tmp_path / "polars", tmp_path / "spark")
    assert '"name": "spark"' in (tmp_path / "spark" / "manifest.json").read_text()


# -- `recsys run` with [engine] name = "spark" ------------------------------------------------------

RUN_FAST = ["--set", 'models.baselines=[]', "--set", 'models.train=["als"]', "--set", "models.als.factors=16",
            "--set", "models.als.iterations=3", "--set", "content.enabled=false", "--set", "batch.enabled=false",
            "--set", "index.n_queries=50", "--no-progress"]


def _run_argv(tmp_path: Path, config: Path, out: Path, *extra: str) -> list[str]:
    ratings = tmp_path / "ratings.csv"
    if not ratings.exists():  # a slice of latest-small: the first 100 users
        pl.read_csv(ML_SMALL / "ratings.csv").filter(pl.col("userId") <= 100).write_csv(ratings)
    return ["run", "--config", str(config), "--out", str(out), "--events", str(ratings), "--items", str(ML_SMALL / "movies.csv"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}", "--as-of", "2030-01-01", *RUN_FAST, *extra]


@pytest.mark.slow  # one ALS-only `recsys run` (MLflow start-up included): about a minute on 2 shared cores
def test_recsys_run_with_engine_spark_builds_the_polars_dataset(spark, tmp_path: Path) -> None:  # noqa: F811
    from pipelines.cli import build_parser
    from pipelines.cli import main as cli
    from pipelines.run import load_config

    config = tmp_path / "run.toml"
    config.write_text((ROOT / "configs" / "default.toml").read_text().replace("../data/", f"{ROOT / 'data'}/")
                      + '\n[engine]\nname = "spark"\nmaster = "local[2]"\n')
    argv = _run_argv(tmp_path, config, tmp_path / "out")
    assert cli(argv) == 0
    manifest = (tmp_path / "out" / "dataset" / "manifest.json").read_text()
    assert '"name": "spark"' in manifest
    _, build_config = load_config(build_parser().parse_args(argv))  # the dataset config the run built
    build_dataset(build_config, tmp_path / "polars")
    assert_same_dataset(tmp_path / "polars", tmp_path / "out" / "dataset")


def test_recsys_run_with_an_unreachable_spark_master_exits_2_naming_the_fix(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text((ROOT / "configs" / "default.toml").read_text().replace("../data/", f"{ROOT / 'data'}/")
                      + '\n[engine]\nname = "spark"\nmaster = "spark://127.0.0.1:1"\n')
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *_run_argv(tmp_path, config, tmp_path / "out")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "spark://127.0.0.1:1" in proc.stderr and "local[*]" in proc.stderr
    assert time.perf_counter() - t0 < 60

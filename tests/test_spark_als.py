"""The spark-als family trains, ranks and runs through `recsys run` like every vector family."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.spark_fixtures import require_spark, spark  # noqa: F401 - fixture

require_spark()

ROOT = Path(__file__).resolve().parents[1]


def _matrix(n_users: int = 60, n_items: int = 40, seed: int = 0):
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    cluster_u, cluster_i = rng.integers(0, 2, n_users), rng.integers(0, 2, n_items)
    dense = (cluster_u[:, None] == cluster_i[None, :]) & (rng.random((n_users, n_items)) < 0.5)
    return sp.csr_matrix(dense.astype(np.float32)), cluster_u, cluster_i


def test_spark_als_learns_the_clusters_with_the_vector_layout(spark) -> None:  # noqa: F811
    from recsys.models.registry import get_family

    m, cu, ci = _matrix()
    fam = get_family("spark-als")
    model = fam.make({"factors": 8, "iterations": 5, "regularization": 0.1, "alpha": 5.0}).fit(m)
    assert fam.vectors and model.user_factors_.shape == (60, 8) and model.item_factors_.shape == (40, 8)
    assert model.user_factors_.dtype == np.float32
    ids, _ = model.recommend(np.arange(60), k=3, exclude_seen=True)
    own = (ci[ids] == cu[:, None]).mean()
    assert own > 0.9  # unseen items of the user's own cluster come first


def test_spark_als_refuses_bad_parameters_naming_them(spark) -> None:  # noqa: F811
    from recsys.errors import ConfigError
    from recsys.models.registry import get_family

    with pytest.raises(ConfigError, match="factors"):
        get_family("spark-als").make({"factors": 0}).fit(_matrix()[0])


@pytest.mark.slow
def test_recsys_run_trains_exports_and_serves_spark_als(spark, tmp_path: Path) -> None:  # noqa: F811
    import json

    from pipelines.cli import main as cli
    from recsys.serving.reader import read_bundle

    ratings = pl.read_csv(ROOT / "data" / "movielens-latest-small" / "ratings.csv")
    ratings.filter(pl.col("userId") <= 100).write_csv(tmp_path / "ratings.csv")
    out = tmp_path / "run"
    args = ["run", "--out", str(out), "--events", str(tmp_path / "ratings.csv"), "--user-col", "userId", "--item-col", "movieId",
            "--weight-col", "rating", "--time-col", "timestamp", "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}",
            "--set", "models.baselines=[\"most-popular\"]", "--set", "models.train=[\"spark-als\"]", "--set", "models.publish=\"spark-als\"",
            "--set", "models.spark-als.factors=16", "--set", "models.spark-als.iterations=3", "--set", "content.enabled=false",
            "--set", "index.backend=\"exact\"", "--set", "index.n_queries=50", "--set", "batch.k=5", "--no-progress"]
    assert cli(args) == 0
    rec = json.loads((out / "state" / "run_record.json").read_text())
    data = read_bundle(out / "bundles" / rec["bundle_version"], verify=True)
    assert '"model": "spark-als"' in json.dumps(data.manifest)  # the published model's family
    assert data.user_vectors.shape[1] == 16

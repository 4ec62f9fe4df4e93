"""``[models] publish = "fusion"`` and the fusion candidate of ``publish = "best"`` inside ``recsys run``.

Every run is the real chain on a 200-user slice of latest-small with two small, fast vector
families (ALS and BPR) and the TF-IDF content encoder, as in ``tests/test_run_pipeline.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]
ML_SMALL = ROOT / "data" / "movielens-latest-small"
FAST = [
    "--set", "models.baselines=[\"most-popular\"]",
    "--set", "models.train=[\"als\", \"bpr\"]",
    "--set", "models.als.factors=32",
    "--set", "models.als.iterations=4",
    "--set", "models.als.regularization=5.0",
    "--set", "models.bpr.factors=16",
    "--set", "models.bpr.iterations=10",
    "--set", "models.bpr.num_threads=1",  # Hogwild threads make BPR non-deterministic
    "--set", "models.fusion.step=0.25",
    "--set", "content.encoder=\"tfidf\"",
    "--set", "index.n_queries=200",
    "--no-progress",
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("fusion-run")
    pl.read_csv(ML_SMALL / "ratings.csv").filter(pl.col("userId") <= 200).write_csv(ws / "ratings.csv")
    shutil.copy(ML_SMALL / "movies.csv", ws / "movies.csv")
    return ws


def recsys(ws: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["run", "--config", str(ROOT / "configs" / "default.toml"), "--out", str(out),
            "--events", str(ws / "ratings.csv"), "--items", str(ws / "movies.csv"),
            "--tracking-uri", f"sqlite:///{ws / 'mlruns.db'}", "--set", "promotion.registered_model=\"fusion\"",
            *FAST, *extra]
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})


def record(out: Path) -> dict:
    return json.loads((out / "state" / "run_record.json").read_text())


@pytest.fixture(scope="module")
def fusion_run(workspace: Path) -> Path:
    out = workspace / "fusion"
    res = recsys(workspace, out, "--set", "models.publish=\"fusion\"")
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_publish_fusion_trains_tests_exports_and_serves_the_fused_model(fusion_run: Path):
    from mlflow import MlflowClient

    from recsys import Retriever
    from recsys.models.base import Recommender
    from recsys.models.fusion import FusedVectors  # loading a fused model needs its class imported

    rec = record(fusion_run)
    assert rec["status"] == "ok" and rec["publish"]["model"] == "fusion"
    assert "fusion" in rec["metrics"] and rec["metrics"]["fusion"]["ndcg@10"] > 0  # the held-out table
    result = json.loads((fusion_run / "models" / "fusion" / "result.json").read_text())
    assert result["params"]["members"] == ["als", "bpr"] and result["params"]["weights_chosen_on"] == "valid"
    assert sum(result["params"]["weights"]) == pytest.approx(1.0)
    for member in ("als", "bpr"):  # the members' train-only selection models were kept, not refitted
        kept = json.loads((fusion_run / "models" / member / "result.json").read_text())["model_on_train_path"]
        assert kept and Path(kept).exists()
    run = MlflowClient(f"sqlite:///{fusion_run.parent / 'mlruns.db'}").get_run(result["run_id"])
    assert "test_ndcg_at_10" in run.data.metrics and "valid_ndcg_at_10" in run.data.metrics
    published = Recommender.load(fusion_run / "models" / "fusion-published" / "model.npz")
    assert isinstance(published, FusedVectors) and published.families == ["als", "bpr"] and published.weights == result["params"]["weights"]
    manifest = json.loads((fusion_run / "latest" / "manifest.json").read_text())
    assert manifest["extra"]["model"] == "fusion"
    ids, scores = Retriever.load(fusion_run).recommend("1", k=10)
    assert len(ids) == 10 and list(scores) == sorted(scores, reverse=True)


def test_fusion_weights_do_not_change_when_the_test_split_does(fusion_run: Path, tmp_path: Path):
    from pipelines import fusion_steps, steps
    from recsys.data.dataset import Dataset

    ds = Dataset.load(fusion_run / "dataset")
    members = {n: {"result_path": str(fusion_run / "models" / n / "result.json"),
                   "model_path": str(fusion_run / "models" / n / "model.npz")} for n in ("als", "bpr")}
    ctx = steps.RunContext(out=tmp_path / "a", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", experiment="t", seed=0,
                           show_progress=False)
    first = json.loads(Path(fusion_steps.fusion_step(ctx, ds, members, 0.25, "ndcg@10")["result_path"]).read_text())
    ds.splits["test"] = ds.splits["valid"]  # a test split on which other weights would win
    ctx.out = tmp_path / "b"
    second = json.loads(Path(fusion_steps.fusion_step(ctx, ds, members, 0.25, "ndcg@10")["result_path"]).read_text())
    assert first["metrics_test"] != second["metrics_test"]
    assert first["params"]["weights"] == second["params"]["weights"] and first["valid_grid"] == second["valid_grid"]


def test_best_chooses_on_validation_whatever_the_test_metrics_say(fusion_run: Path, tmp_path: Path):
    from pipelines.runner import Runner
    from recsys.config import validate_config
    from recsys.workflow import StepResult

    trained = {}
    for name in ("als", "bpr", "fusion"):
        res = json.loads((fusion_run / "models" / name / "result.json").read_text())
        valid = {"als": 0.30, "bpr": 0.10, "fusion": 0.20}[name]
        res["metrics_valid"], res["metrics_test"] = {"ndcg@10": valid}, {"ndcg@10": 1.0 - valid}  # test says the opposite
        (tmp_path / f"{name}.json").write_text(json.dumps(res))
        trained[name] = StepResult(name, f"fp-{name}", False, 0.0, {"result_path": str(tmp_path / f"{name}.json")})
    cfg = validate_config({"models": {"train": ["als", "bpr"], "publish": "best"}})
    runner = Runner(tmp_path, cfg, None, f"sqlite:///{tmp_path / 'm.db'}")
    choice, reason = runner._choose(["als", "bpr"], "best", trained)
    assert choice == "als" and "validation" in reason and "fusion 0.2000" in reason


@pytest.mark.parametrize("setting, key", [
    ("models.fusion.membres=[\"als\"]", "membres"),
    ("models.fusion.members=[\"als\", \"most-popular\"]", "[models.fusion] members"),
    ("models.fusion.step=0.3", "[models.fusion] step"),
])
def test_bad_fusion_config_exits_2_naming_the_key(workspace: Path, setting: str, key: str):
    res = recsys(workspace, workspace / "bad", "--set", "models.publish=\"fusion\"", "--set", setting)
    assert res.returncode == 2, res.stderr[-2000:]
    assert key in res.stderr

"""`recsys run` end to end: idempotent, crash-safe, gated, locked (issue 7).

Every run here is the real chain (dataset -> baselines -> ALS -> content -> refit ->
blend -> export -> register/promote) on a slice of the embedded MovieLens data, with a
small ALS and the TF-IDF content encoder (the test double) to stay fast. Crashes are real
SIGKILLs of a real process, stalled from outside by ``tests/fault_driver.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]
ML_SMALL = ROOT / "data" / "movielens-latest-small"

PY = sys.executable
FAST = [
    "--set", "models.baselines=[\"most-popular\"]",
    "--set", "models.train=[\"als\"]",
    "--set", "models.als.factors=32",
    "--set", "models.als.iterations=4",
    "--set", "models.als.regularization=5.0",
    "--set", "content.encoder=\"tfidf\"",
    "--set", "index.n_queries=200",
    "--set", "promotion.tolerance=0.2",  # the fault tests retrain with other seeds/settings
    "--no-progress",
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A slice of latest-small (first 200 users) as the input log, and a shared MLflow store."""
    ws = tmp_path_factory.mktemp("run")
    ratings = pl.read_csv(ML_SMALL / "ratings.csv")
    ratings.filter(pl.col("userId") <= 200).write_csv(ws / "ratings.csv")
    shutil.copy(ML_SMALL / "movies.csv", ws / "movies.csv")
    return ws


def args_for(ws: Path, out: Path, *extra: str, model: str = "good") -> list[str]:
    return ["run", "--config", str(ROOT / "configs" / "default.toml"), "--out", str(out),
            "--events", str(ws / "ratings.csv"), "--items", str(ws / "movies.csv"),
            "--tracking-uri", f"sqlite:///{ws / 'mlruns.db'}",
            "--set", f"promotion.registered_model=\"{model}\"", *FAST, *extra]


def recsys(ws: Path, out: Path, *extra: str, model: str = "good", timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "pipelines.cli", *args_for(ws, out, *extra, model=model)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def record(out: Path) -> dict:
    return json.loads((out / "state" / "run_record.json").read_text())


def champion(ws: Path, name: str) -> str:
    from mlflow import MlflowClient

    uri = f"sqlite:///{ws / 'mlruns.db'}"
    return MlflowClient(uri, registry_uri=uri).get_model_version_by_alias(name, "champion").version


@pytest.fixture(scope="module")
def good_run(workspace: Path) -> Path:
    """One successful run; tests copy its output directory before changing anything."""
    out = workspace / "good"
    res = recsys(workspace, out)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def clone(good: Path, name: str, own_model: bool = False) -> Path:
    """A copy of the good run's output directory.

    ``own_model``: the copy is promoted under its own registered model name (a run of
    the promote step alone), for tests that watch the champion alias.
    """
    out = good.parent / name
    shutil.copytree(good, out, symlinks=True)
    if own_model:
        (out / "state" / "promote.json").unlink()
        res = recsys(good.parent, out, model=name)
        assert res.returncode == 0, res.stderr[-3000:]
        assert [s["name"] for s in record(out)["steps"] if s["ran"]] == ["promote"]
    return out


def test_main_job_prints_metrics_table_and_publishes_a_loadable_bundle(good_run: Path):
    from recsys import Retriever

    rec = record(good_run)
    assert rec["status"] == "ok"
    assert {"most-popular", "als"} <= set(rec["metrics"])
    assert rec["metrics"]["als"]["ndcg@10"] > rec["metrics"]["most-popular"]["ndcg@10"]
    retriever = Retriever.load(good_run)
    ids, scores = retriever.recommend("1", k=10)
    assert len(ids) == 10 and list(scores) == sorted(scores, reverse=True)


def test_second_run_with_unchanged_input_trains_nothing(workspace: Path, good_run: Path):
    out = clone(good_run, "idem")
    second = recsys(workspace, out)
    assert second.returncode == 0, second.stderr[-3000:]
    steps = {s["name"]: s["ran"] for s in record(out)["steps"]}
    assert steps and not any(steps.values()), steps
    assert "nothing to do" in second.stderr


def test_config_change_reruns_only_downstream_steps(workspace: Path, good_run: Path):
    out = clone(good_run, "incremental")
    res = recsys(workspace, out, "--set", "index.seed=12")
    assert res.returncode == 0, res.stderr[-3000:]
    steps = {s["name"]: s["ran"] for s in record(out)["steps"]}
    assert steps["export"] and steps["promote"]
    assert not any(steps[s] for s in ("dataset", "train-als", "content", "refit", "blend")), steps


def test_degraded_model_is_refused_and_champion_does_not_move(workspace: Path, good_run: Path):
    out = clone(good_run, "gate", own_model=True)
    before_alias, before_latest = champion(workspace, "gate"), os.readlink(out / "latest")
    degraded = ("--set", "models.als.factors=2", "--set", "models.als.iterations=1",
                "--set", "models.als.regularization=1000.0", "--set", "promotion.tolerance=0.02")
    bad = recsys(workspace, out, *degraded, model="gate")
    assert bad.returncode == 3, bad.stderr[-3000:]
    assert "FAIL ndcg@10" in bad.stdout + bad.stderr
    assert champion(workspace, "gate") == before_alias
    assert os.readlink(out / "latest") == before_latest
    assert record(out)["status"] == "refused"
    again = recsys(workspace, out, *degraded, model="gate")
    assert again.returncode == 3  # the refusal is remembered, not re-registered
    assert champion(workspace, "gate") == before_alias


def test_rollback_moves_alias_and_latest_back(workspace: Path, good_run: Path):
    out = clone(good_run, "rollback", own_model=True)
    first_alias, first_latest = champion(workspace, "rollback"), os.readlink(out / "latest")
    assert recsys(workspace, out, "--set", "index.seed=11", model="rollback").returncode == 0
    assert champion(workspace, "rollback") != first_alias
    res = subprocess.run([PY, "-m", "pipelines.cli", "rollback", "--out", str(out), "--registered-model", "rollback",
                          "--tracking-uri", f"sqlite:///{workspace / 'mlruns.db'}"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert champion(workspace, "rollback") == first_alias
    assert os.readlink(out / "latest") == first_latest


def test_two_runs_at_once_exactly_one_proceeds(workspace: Path, good_run: Path):
    out = clone(good_run, "concurrent")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [PY, "-m", "pipelines.cli", *args_for(workspace, out, "--force")]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 4], [r[1][-2000:] for r in results]
    loser = results[[p.returncode for p in procs].index(4)][1]
    assert "lock" in loser.lower() and "pid" in loser.lower()


def _kill_at(workspace: Path, out: Path, where: str, *extra: str) -> None:
    marker = out.parent / f"{out.name}.{where}.stalled"
    cmd = [PY, str(ROOT / "tests" / "fault_driver.py"), where, str(marker), "--", *args_for(workspace, out, *extra)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 300
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before the stall point: {proc.stderr.read().decode()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("stall point never reached")
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("where, change", [
    ("dataset", ("--set", "split.test_frac=0.25")),
    ("train", ("--set", "models.als.factors=24")),
    ("export", ("--set", "index.seed=9")),
])
def test_sigkill_mid_step_leaves_previous_bundle_serving_and_rerun_completes(workspace: Path, good_run: Path, where, change):
    from recsys import Retriever
    from recsys.data.dataset import Dataset
    from recsys.serving.versions import list_bundles

    out = clone(good_run, f"kill-{where}")
    live = os.readlink(out / "latest")
    bundles_before = list_bundles(out)
    _kill_at(workspace, out, where, *change)
    # nothing half-written looks complete, and the old bundle still serves
    assert list_bundles(out) == bundles_before
    assert os.readlink(out / "latest") == live
    assert Retriever.load(out).recommend("1", k=5)[0].shape == (5,)
    Dataset.load(out / "dataset")  # the previous dataset is intact (new one was in a temp dir)
    rerun = recsys(workspace, out, *change)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert os.readlink(out / "latest") != live
    assert len(list_bundles(out)) == len(bundles_before) + 1


def test_windowed_partitions_rerun_only_when_the_window_changes(workspace: Path):
    """A daily job over dt= partitions: partitions outside the window change nothing."""
    ratings = pl.read_csv(workspace / "ratings.csv")
    logs = workspace / "events"
    days = ["2026-11-20", "2026-11-21", "2026-11-22"]
    for i, day in enumerate(days):
        part = logs / f"dt={day}"
        part.mkdir(parents=True)
        ratings.filter(pl.col("userId") % 3 == i).write_parquet(part / "part-0.parquet")
    out = workspace / "windowed"
    window = ("--events", str(logs), "--as-of", "2026-11-22", "--window-days", "2")
    first = recsys(workspace, out, *window, model="windowed")
    assert first.returncode == 0, first.stderr[-3000:]
    manifest = json.loads((out / "dataset" / "manifest.json").read_text())
    assert manifest["rows"]["in"] == ratings.filter(pl.col("userId") % 3 != 0).height  # 11-21 and 11-22 only
    # a late partition older than the window: nothing to do
    old = logs / "dt=2026-11-01"
    old.mkdir()
    ratings.head(10).write_parquet(old / "part-0.parquet")
    second = recsys(workspace, out, *window, model="windowed")
    assert second.returncode == 0 and not any(s["ran"] for s in record(out)["steps"])
    # tonight's partition inside the window: the dataset and everything after it re-run
    new = logs / "dt=2026-11-23"
    new.mkdir()
    ratings.filter(pl.col("userId") % 3 == 0).write_parquet(new / "part-0.parquet")
    third = recsys(workspace, out, "--events", str(logs), "--as-of", "2026-11-23", "--window-days", "2", model="windowed")
    assert third.returncode == 0, third.stderr[-3000:]
    steps = {s["name"]: s["ran"] for s in record(out)["steps"]}
    assert steps["dataset"] and steps["train-als"] and steps["export"], steps

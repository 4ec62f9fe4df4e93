"""`recsys train` / pipelines.train.train_model: MLflow runs on a real server and the local store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipelines import cli
from pipelines.tracking_uri import resolve_tracking_uri
from pipelines.train import train_model
from recsys.data import Dataset
from recsys.errors import ConfigError
from tests.mf_fixtures import fresh_store

CONFIG = """
[train]
model = "als"
[models.als]
factors = 16
iterations = 6
device = "cpu"
num_threads = 1
[tuning]
eval_every = 3
[tuning.als]
regularization = [1.0, 30.0]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dataset_dir(ml_small_dataset_dir: Path) -> Path:
    return ml_small_dataset_dir


@pytest.fixture()
def config_file(tmp_path: Path) -> Path:
    p = tmp_path / "train.toml"
    p.write_text(CONFIG)
    return p


def test_tracking_uri_prefers_flag_then_env_then_local_sqlite(tmp_path: Path) -> None:
    assert resolve_tracking_uri("http://x:1", {"MLFLOW_TRACKING_URI": "http://y:2"}) == "http://x:1"
    assert resolve_tracking_uri(None, {"MLFLOW_TRACKING_URI": "http://y:2"}) == "http://y:2"
    assert resolve_tracking_uri(None, {}, tmp_path) == f"sqlite:///{(tmp_path / 'mlruns.db').resolve().as_posix()}"


def test_cli_train_logs_everything_to_the_default_local_store(
    dataset_dir: Path, config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    fresh_store(tmp_path)  # the default store, pre-migrated to save time; the CLI picks it up from the cwd
    rc = cli.main(["train", "--dataset", str(dataset_dir), "--config", str(config_file), "--tune", "--out", "out", "--no-progress"])
    assert rc == 0
    assert (tmp_path / "mlruns.db").exists() and (tmp_path / "mlartifacts").is_dir()
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {
        "model.npz", "factors.npz", "user_map.parquet", "item_map.parquet", "config.json", "metrics.json", "metrics_at_k.png"
    }
    client = mlflow.MlflowClient("sqlite:///mlruns.db")  # what `mlflow ui --backend-store-uri sqlite:///mlruns.db` opens
    exp = client.get_experiment_by_name(f"recsys-{dataset_dir.name}")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.model = 'als'")
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert len(runs) == 3  # parent + 2 nested trials
    p = parent.data
    assert p.tags["dataset"] == dataset_dir.name and p.tags["tuned"] == "true" and "git_commit" in p.tags
    assert p.params["params.factors"] == "16" and p.params["space.regularization"] == "[1.0, 30.0]"
    assert p.params["dataset.rows.train"] == str(len(__import__("polars").read_parquet(dataset_dir / "train.parquet")))
    assert len(p.params["dataset.manifest_sha256"]) == 64
    assert p.params["final.regularization"] in ("1.0", "30.0") and p.params["final.iterations"] in ("3", "6")
    for k in (10, 20, 50, 100):
        assert 0 < p.metrics[f"test_ndcg_at_{k}"] <= 1 and 0 < p.metrics[f"test_recall_at_{k}"] <= 1
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "valid_ndcg_at_10")] == [3, 6]
    top = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert top >= {"model", "id_maps", "plots", "config.json", "metrics.json", "dataset", "tuning"}
    assert {f.path for f in client.list_artifacts(parent.info.run_id, "model")} == {"model/model.npz", "model/factors.npz"}
    plots = {f.path for f in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/metrics_at_k.png", "plots/validation_curve.png", "plots/popularity.png"}
    assert parent.info.artifact_uri.startswith((tmp_path / "mlartifacts").resolve().as_uri())


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on a free localhost port with a SQLite backend in a temp dir."""
    d = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{d / 'server.db'}", "--artifacts-destination", str(d / "artifacts"),
    ]
    log = open(d / "server.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}: {(d / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("mlflow server did not become healthy in 180 s")
            time.sleep(1)
        yield uri
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers (own session)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.slow  # server start-up (imports + SQLite migrations) takes ~50 s on 2 busy cores
def test_training_against_a_real_mlflow_server(
    mlflow_server: str, ml_small: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    params = {"factors": 8, "iterations": 4, "device": "cpu", "num_threads": 1}
    res = train_model(ml_small, "als", params, out_dir=tmp_path / "out", dataset_name="ml-small", tuning={"eval_every": 2}, show_progress=False)
    assert res.experiment == "recsys-ml-small"
    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["params.factors"] == "8" and run.data.tags["model"] == "als"
    assert run.data.metrics["test_ndcg_at_10"] == pytest.approx(res.metrics_test["ndcg@10"])
    hist = client.get_metric_history(res.run_id, "valid_ndcg_at_10")
    assert [m.step for m in hist] == [2, 4]
    local = Path(client.download_artifacts(res.run_id, "model/factors.npz", str(tmp_path)))
    with np.load(local, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["item_factors"], res.model.item_factors_)
    assert "plots/metrics_at_k.png" in {f.path for f in client.list_artifacts(res.run_id, "plots")}


def test_unreachable_tracking_server_fails_fast_with_exit_code(
    dataset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    rc = cli.main(["train", "--dataset", str(dataset_dir), "--model", "most-popular", "--out", "out", "--no-progress"])
    assert rc == cli.EXIT_INTERNAL and time.monotonic() - t0 < 30
    err = capsys.readouterr().err
    assert "unreachable" in err and "MLFLOW_TRACKING_URI" in err
    assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "out").exists()


def test_bad_parameter_is_exit_code_2(dataset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rc = cli.main(["train", "--dataset", str(dataset_dir), "--model", "als", "--param", "factorz=3", "--no-progress"])
    assert rc == cli.EXIT_BAD_INPUT
    rc = cli.main(["train", "--dataset", str(dataset_dir), "--model", "als", "--tune", "--no-progress"])
    assert rc == cli.EXIT_BAD_INPUT  # --tune without a search space


def test_two_tower_without_its_module_fails_clearly(ml_small: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "recsys.training_two_tower", None)
    with pytest.raises(ConfigError, match="cannot import 'recsys.training_two_tower"):
        train_model(ml_small, "two-tower", {}, tracking_uri="sqlite:///unused.db")


def test_without_valid_split_fits_fixed_params_and_still_logs(ml_small: Dataset, tmp_path: Path) -> None:
    import mlflow

    no_valid = Dataset({**ml_small.splits, "valid": ml_small.splits["valid"].clear()}, ml_small.user_map, ml_small.item_map)
    uri = fresh_store(tmp_path)
    res = train_model(no_valid, "most-popular", {}, tracking_uri=uri, dataset_name="no-valid", show_progress=False)
    assert res.metrics_valid == {} and 0.05 < res.metrics_test["ndcg@10"] < 0.3 and res.out_dir is None
    run = mlflow.MlflowClient(uri).get_run(res.run_id)
    assert run.data.metrics["test_ndcg_at_10"] == pytest.approx(res.metrics_test["ndcg@10"])
    with pytest.raises(ConfigError, match="valid"):
        train_model(no_valid, "als", {}, tracking_uri=uri, tune=True, space={"factors": [8]}, show_progress=False)

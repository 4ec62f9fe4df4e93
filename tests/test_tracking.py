"""recsys.tracking: fail-fast URI checks, runs, params, lineage and artifacts in MLflow."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from recsys import tracking  # noqa: E402
from recsys.errors import InputError, TrackingError  # noqa: E402


def closed_port() -> int:
    """A localhost port nobody listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tracking.local_sqlite_uri(tmp_path_factory.mktemp("mlflow"))


def test_unreachable_server_fails_fast_with_a_clear_message() -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match="unreachable.*MLFLOW_TRACKING_URI"):
        tracking.check_tracking_uri(uri, timeout_s=2)
    with pytest.raises(TrackingError):
        with tracking.start_run(uri, "x", timeout_s=2):
            pass
    # generous bound: MLflow's own retries would take minutes; imports on a loaded box take seconds
    assert time.monotonic() - t0 < 30


def test_silent_server_times_out_instead_of_hanging() -> None:
    # a socket that accepts connections (listen backlog) but never answers HTTP
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        uri = f"http://127.0.0.1:{srv.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(TrackingError, match="did not answer"):
            tracking.check_tracking_uri(uri, timeout_s=1)
        assert time.monotonic() - t0 < 30


def test_empty_uri_is_rejected() -> None:
    with pytest.raises(InputError):
        tracking.check_tracking_uri("")


def test_local_sqlite_uri_is_absolute_and_artifacts_go_beside_the_db(tmp_path: Path) -> None:
    uri = tracking.local_sqlite_uri(tmp_path)
    assert uri == f"sqlite:///{(tmp_path / 'mlruns.db').resolve().as_posix()}"
    assert tracking.artifact_root_for(uri) == (tmp_path.resolve() / "mlartifacts").as_uri()
    assert tracking.artifact_root_for("http://localhost:5000") is None


def test_flatten_nests_keys_with_dots() -> None:
    assert tracking.flatten({"a": 1, "b": {"c": 2, "d": {"e": [1, 2]}}}) == {"a": 1, "b.c": 2, "b.d.e": [1, 2]}


def test_git_commit_outside_a_repository_is_none(tmp_path: Path) -> None:
    assert tracking.git_commit(tmp_path) is None


def test_run_logs_params_lineage_metrics_and_artifacts(store: str, tmp_path: Path) -> None:
    import mlflow

    manifest = {"schema_version": 1, "rows": {"train": 10}}
    with tracking.start_run(store, "recsys-test", run_name="parent", tags={"model": "als", "skip": None}) as run:
        logged = tracking.log_config({"model": {"factors": 8, "reg": 0.1}, "seed": 3})
        tracking.log_dataset_lineage(manifest, {"train": 10, "test": 4}, name="toy")
        tracking.log_git_commit(Path(__file__).parent)
        for step in range(3):
            tracking.log_metrics({"ndcg@10": 0.1 * step, "n_users": 5, "bad": float("nan"), "name": "x"}, step=step)
        tracking.log_npz("model/factors.npz", user_factors=np.ones((2, 3), np.float32))
        tracking.log_json({"a": 1}, "config.json")
        fig, ax = plt.subplots()
        ax.plot([1, 2], [3, 4])
        tracking.log_figure(fig, "plots/curve.png")
        with tracking.start_run(store, "ignored-for-nested", run_name="child", nested=True) as child:
            tracking.log_metrics({"x": 1.0})
    assert logged == {"model.factors": "8", "model.reg": "0.1", "seed": "3"}

    client = mlflow.MlflowClient(store)
    r = client.get_run(run.info.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params["model.factors"] == "8"
    assert r.data.params["dataset.manifest_sha256"] == tracking.manifest_sha256(manifest)
    assert r.data.params["dataset.rows.test"] == "4"
    assert r.data.tags["dataset"] == "toy" and r.data.tags["model"] == "als" and "skip" not in r.data.tags
    assert "git_commit" in r.data.tags
    hist = client.get_metric_history(run.info.run_id, "ndcg_at_10")
    assert [m.step for m in hist] == [0, 1, 2]
    assert "bad" not in r.data.metrics and "name" not in r.data.metrics
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"model", "plots", "config.json", "dataset"} <= files
    # artifacts of a SQLite store live beside the database, not in the working directory
    db_dir = Path(store[len("sqlite:///") :]).parent
    assert r.info.artifact_uri.startswith((db_dir / "mlartifacts").as_uri())
    local = Path(client.download_artifacts(run.info.run_id, "model/factors.npz", str(tmp_path)))
    assert np.load(local)["user_factors"].shape == (2, 3)
    c = client.get_run(child.info.run_id)
    assert c.data.tags["mlflow.parentRunId"] == run.info.run_id
    assert c.info.experiment_id == r.info.experiment_id


def test_failed_block_marks_run_failed(store: str) -> None:
    import mlflow

    with pytest.raises(RuntimeError):
        with tracking.start_run(store, "recsys-test", run_name="boom") as run:
            raise RuntimeError("boom")
    assert mlflow.MlflowClient(store).get_run(run.info.run_id).info.status == "FAILED"


def test_nested_without_parent_is_an_input_error(store: str) -> None:
    with pytest.raises(InputError, match="active parent"):
        with tracking.start_run(store, "recsys-test", nested=True):
            pass

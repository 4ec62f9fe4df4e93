"""`recsys embed-content`: output file, cache reuse across runs, only changed items encoded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines.cli import EXIT_BAD_INPUT, main
from recsys.cold_start import build_cold_start_dataset
from tests.content_fixtures import ML_SMALL, ml_small_movies, ml_small_ratings, write_dataset_dir


@pytest.fixture()
def dataset_dir(tmp_path: Path) -> Path:
    movies = ml_small_movies(400)
    ratings = ml_small_ratings().filter(pl.col("item").is_in(movies["item"].to_list()))
    ds = build_cold_start_dataset(ratings, movies, cold_frac=0.0, seed=0)
    return write_dataset_dir(ds, tmp_path / "ds")


def _run(dataset_dir: Path, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "content.npz"
    rc = main(["embed-content", "--dataset", str(dataset_dir), "--cache", str(tmp_path / "cache"), "--encoder", "tfidf",
               "--text-cols", "title,genres", "--out", str(out), "--no-progress", *extra])
    assert rc == 0
    return json.loads(out.with_suffix(".json").read_text())


def test_rerun_encodes_nothing_and_100_changed_titles_encode_exactly_100(dataset_dir, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = _run(dataset_dir, tmp_path)
    assert first["encoded"] == 400 and first["n_items"] == 400 and first["hit_rate"] == 0.0
    capsys.readouterr()
    second = _run(dataset_dir, tmp_path)
    assert second["encoded"] == 0 and second["hit_rate"] == 1.0
    assert "0 encoded, cache hit rate 100.0%" in capsys.readouterr().err  # the CLI logs to stderr

    items = pl.read_parquet(dataset_dir / "items.parquet")
    changed = items.with_columns(title=pl.when(pl.col("item_idx") < 100).then(pl.col("title") + " [remastered]").otherwise(pl.col("title")))
    changed.write_parquet(dataset_dir / "items.parquet")
    third = _run(dataset_dir, tmp_path)
    assert third["encoded"] == 100 and third["hits"] == 300
    z = np.load(tmp_path / "content.npz", allow_pickle=False)
    assert z["vectors"].shape == (400, first["dim"]) and z["vectors"].dtype == np.float32
    assert str(z["model_id"]) == first["model_id"]  # the saved TF-IDF state is reused: same identity
    assert z["external_id"][0] == items.sort("item_idx")["external_id"][0]


def test_tags_are_joined_as_extra_text(dataset_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    stats = _run(dataset_dir, tmp_path, "--text-cols", "title,genres,tags", "--tags", str(ML_SMALL / "tags.csv"))
    assert stats["text_cols"] == ["title", "genres", "tags"] and stats["n_empty"] == 0


def test_missing_column_and_missing_dataset_exit_with_bad_input(dataset_dir, tmp_path) -> None:
    args = ["embed-content", "--dataset", str(dataset_dir), "--encoder", "tfidf", "--out", str(tmp_path / "o.npz")]
    assert main([*args, "--text-cols", "plot"]) == EXIT_BAD_INPUT
    assert main(["embed-content", "--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "o.npz")]) == EXIT_BAD_INPUT
    assert main(["embed-content", "--encoder", "tfidf"]) == EXIT_BAD_INPUT  # --dataset/--out required


def test_config_file_supplies_defaults_and_flags_override(dataset_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[embed_content]\ndataset = "{dataset_dir}"\nencoder = "tfidf"\ntext_cols = "title"\ntfidf_dim = 8\n'
                   f'out = "{tmp_path / "cfg.npz"}"\n')
    assert main(["embed-content", "--config", str(cfg), "--no-progress"]) == 0
    stats = json.loads((tmp_path / "cfg.json").read_text())
    assert stats["text_cols"] == ["title"] and stats["dim"] == 8
    cfg.write_text("[embed_content]\nencoderr = 'tfidf'\n")
    assert main(["embed-content", "--config", str(cfg)]) == EXIT_BAD_INPUT


@pytest.mark.slow  # MLflow start-up and the SQLite migrations take ~40 s on 2 shared cores
def test_statistics_are_tracked_in_mlflow_when_a_uri_is_given(dataset_dir, tmp_path, monkeypatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    from recsys.tracking import local_sqlite_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = local_sqlite_uri(tmp_path)
    _run(dataset_dir, tmp_path, "--tracking-uri", uri, "--experiment", "content-test")
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name("content-test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.metrics["encoded"] == 400.0 and run.data.metrics["hit_rate"] == 0.0
    assert run.data.params["encoder"] == "tfidf"

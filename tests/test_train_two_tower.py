"""`recsys train --model two-tower` entry point: fit_and_log on a small dataset, MLflow in tmp."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from pipelines.train_two_tower import fit_and_log, item_features_for, multi_hot
from recsys.data import Dataset, IdMap
from recsys.errors import ConfigError
from recsys.models.base import Recommender
from recsys.tracking import local_sqlite_uri
from tests.two_tower_fixtures import FAST, GROUP_SIZE, N_ITEMS, N_USERS, one_torch_thread, synthetic  # noqa: F401


@pytest.fixture(scope="module")
def dataset():
    _, pairs, held, _ = synthetic()
    test = pl.DataFrame({"user_idx": np.arange(N_USERS), "item_idx": held, "weight": np.ones(N_USERS)},
                        schema=pairs.schema)  # fmt: skip
    valid = test.clear()
    genres = [f"g{i // GROUP_SIZE}|all" for i in range(N_ITEMS)]
    items = pl.DataFrame({"item_idx": np.arange(N_ITEMS, dtype=np.int32), "external_id": [str(i) for i in range(N_ITEMS)], "genres": genres})
    return Dataset({"train": pairs, "valid": valid, "test": test, "test_cold": valid},
                   IdMap([str(u) for u in range(N_USERS)], "user"), IdMap([str(i) for i in range(N_ITEMS)], "item"), items)  # fmt: skip


def test_multi_hot_encodes_sorted_labels_and_ignores_missing():
    m = multi_hot(["b|a", None, "(no genres listed)", "a"])
    assert m.tolist() == [[1, 1], [0, 0], [0, 0], [1, 0]]


def test_item_features_auto_uses_genres_and_rejects_bad_files(dataset, tmp_path):
    f = item_features_for(dataset, "auto")
    assert f.shape == (N_ITEMS, 5) and f.sum(1).tolist() == [2.0] * N_ITEMS  # 4 groups + "all"
    assert item_features_for(dataset, "none") is None
    np.save(tmp_path / "x.npy", np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="n_items"):
        item_features_for(dataset, str(tmp_path / "x.npy"))
    with pytest.raises(ConfigError, match="does not exist"):
        item_features_for(dataset, str(tmp_path / "missing.npy"))


def test_fit_and_log_trains_evaluates_and_writes_artifacts(dataset, tmp_path):
    params = {**FAST, "user_id_dim": 0, "item_features": "auto", "epochs": 4, "lr": 3e-2}
    model, run_id, metrics = fit_and_log(dataset, params, local_sqlite_uri(tmp_path), "tt-test", tmp_path / "out")
    assert run_id and set(metrics) >= {"ndcg@10", "recall@20", "ndcg@100"}
    out = tmp_path / "out"
    assert Recommender.load(out / "model.npz").item_factors_.shape == (N_ITEMS, FAST["dim"])
    assert (out / "checkpoint" / "model.pt").exists() and (out / "factors.npz").exists()
    assert json.loads((out / "checkpoint" / "config.json").read_text())["arch"]["item_feature_dim"] == 5

    import mlflow

    run = mlflow.MlflowClient(local_sqlite_uri(tmp_path)).get_run(run_id)
    assert run.data.tags["model"] == "two-tower" and "test_ndcg_at_10" in run.data.metrics
    hist = mlflow.MlflowClient(local_sqlite_uri(tmp_path)).get_metric_history(run_id, "epoch_loss")
    assert len(hist) == 4


def test_unknown_parameter_fails_before_a_run_is_opened(dataset, tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'dims'"):
        fit_and_log(dataset, {"dims": 3}, local_sqlite_uri(tmp_path), "tt-test", tmp_path / "out")
    assert not (tmp_path / "mlruns.db").exists()


def test_refit_on_train_and_valid_takes_as_many_steps_as_the_selected_epoch(dataset, tmp_path):
    from recsys.models.two_tower_config import refit_epochs

    train = dataset.split("train")
    is_valid = np.random.default_rng(0).random(train.height) < 0.4
    ds = Dataset({**dataset.splits, "train": train.filter(pl.Series(~is_valid)), "valid": train.filter(pl.Series(is_valid))},
                 dataset.user_map, dataset.item_map, dataset.items)  # fmt: skip
    params = {**FAST, "user_id_dim": 0, "item_features": "auto", "epochs": 6, "patience": None, "lr": 3e-2}
    model, run_id, _ = fit_and_log(ds, params, local_sqlite_uri(tmp_path), "tt-test", tmp_path / "out")

    import mlflow

    m = mlflow.MlflowClient(local_sqlite_uri(tmp_path)).get_run(run_id).data.metrics
    expected = refit_epochs(int(m["valid_best_epoch"]), ds.split("train").height, train.height)
    assert m["refit_epochs"] == expected == model.epochs
    assert expected < m["valid_best_epoch"]  # 60% of the pairs: fewer epochs for the same steps


def test_refit_epochs_scales_the_selected_epoch_by_the_pair_counts():
    from recsys.models.two_tower_config import refit_epochs

    assert refit_epochs(10, 800, 1000) == 8
    assert refit_epochs(1, 10, 1000) == 1  # never zero
    with pytest.raises(ConfigError, match="positive"):
        refit_epochs(0, 800, 1000)


def test_ensemble_selects_with_one_member_and_refits_all(dataset, tmp_path, caplog):
    import logging

    train = dataset.split("train")
    is_valid = np.random.default_rng(1).random(train.height) < 0.3
    ds = Dataset({**dataset.splits, "train": train.filter(pl.Series(~is_valid)), "valid": train.filter(pl.Series(is_valid))},
                 dataset.user_map, dataset.item_map, dataset.items)  # fmt: skip
    params = {**FAST, "user_id_dim": 0, "item_features": "auto", "epochs": 3, "lr": 3e-2, "ensemble": 2}
    with caplog.at_level(logging.INFO, logger="recsys.models.two_tower"):
        model, _, metrics = fit_and_log(ds, params, local_sqlite_uri(tmp_path), "tt-test", tmp_path / "out")
    assert caplog.text.count("member 2/2") == 1  # the second member is trained once: in the refit
    assert model.ensemble == 2 and model.item_factors_.shape[1] == 2 * FAST["dim"]
    assert Recommender.load(tmp_path / "out" / "model.npz").item_factors_.shape[1] == 2 * FAST["dim"]
    assert metrics["ndcg@10"] > 0

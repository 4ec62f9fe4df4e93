"""recsys.tuning: grid expansion, selection on valid only, refit, nested MLflow trials."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recsys import tracking, tuning
from recsys.data import Dataset
from recsys.errors import ConfigError, InputError
from recsys.models import ALS
from tests.mf_fixtures import fresh_store


@pytest.fixture(scope="module")
def mats(ml_small: Dataset) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    return ml_small.matrix("train"), ml_small.matrix("valid"), ml_small.matrix("test")


BASE = {"device": "cpu", "num_threads": 1, "iterations": 6}


def test_expand_grid_is_the_cartesian_product_with_fixed_scalars() -> None:
    grid = tuning.expand_grid({"factors": [8, 16], "regularization": [1.0, 10.0], "alpha": 2.0})
    assert len(grid) == 4 and grid[0] == {"factors": 8, "regularization": 1.0, "alpha": 2.0}
    assert {(g["factors"], g["regularization"]) for g in grid} == {(8, 1.0), (8, 10.0), (16, 1.0), (16, 10.0)}
    with pytest.raises(ConfigError, match="no values"):
        tuning.expand_grid({"factors": []})


def test_sample_grid_is_a_seeded_subset() -> None:
    space = {"a": list(range(10)), "b": [1, 2, 3]}
    s1, s2 = tuning.sample_grid(space, 5, seed=1), tuning.sample_grid(space, 5, seed=1)
    assert s1 == s2 and len(s1) == 5 and all(c in tuning.expand_grid(space) for c in s1)
    assert tuning.sample_grid(space, 100) == tuning.expand_grid(space)


def test_unknown_model_or_parameter_fails_before_any_trial(mats: tuple[sp.csr_matrix, ...]) -> None:
    with pytest.raises(ConfigError, match="unknown model"):
        tuning.make_model("svd")
    with pytest.raises(ConfigError, match="unknown key 'factorz'.*did you mean 'factors'"):
        tuning.select_and_fit("als", *mats, space={"factorz": [1]}, base_params=BASE, show_progress=False)


def test_selection_never_looks_at_test(mats: tuple[sp.csr_matrix, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    train, valid, test = mats
    calls: list[int] = []
    real = tuning.evaluate

    def spy(model, tr, te, **kw):  # type: ignore[no-untyped-def]
        calls.append(te.nnz)
        return real(model, tr, te, **kw)

    monkeypatch.setattr(tuning, "evaluate", spy)
    import recsys.evaluation

    monkeypatch.setattr(recsys.evaluation, "evaluate", spy)
    res = tuning.select_and_fit(
        "als", train, valid, test, {"regularization": [0.01, 30.0]}, base_params={**BASE, "factors": 16},
        eval_every=3, show_progress=False,
    )
    # 2 trials x 2 evaluations on valid, then exactly one evaluation on test
    assert calls == [valid.nnz] * 4 + [test.nnz]
    best = max(res.trials, key=lambda t: t.score)
    assert res.best is best and res.params["regularization"] == best.params["regularization"]
    assert res.params["iterations"] == best.best_iteration in (3, 6)
    assert res.metrics_valid["ndcg@10"] == pytest.approx(best.score)
    assert set(res.metrics_test) >= {"ndcg@10", "ndcg@20", "ndcg@50", "ndcg@100", "recall@100"}
    # refitted on train + valid: valid items are now excluded from recommendations
    u = int(np.flatnonzero(valid.getnnz(axis=1))[0])
    assert not set(res.model.recommend(u, k=50)[0]) & set(valid[u].indices)


def test_strong_regularization_wins_on_movielens(mats: tuple[sp.csr_matrix, ...]) -> None:
    res = tuning.select_and_fit(
        "als", *mats, {"regularization": [0.01, 30.0]}, base_params={**BASE, "factors": 64, "iterations": 10},
        eval_every=5, show_progress=False,
    )
    scores = {t.params["regularization"]: t.score for t in res.trials}
    assert scores[30.0] > scores[0.01] and res.params["regularization"] == 30.0
    assert res.metrics_test["ndcg@10"] > 0.3


def test_baseline_models_are_tuned_with_one_evaluation_each(mats: tuple[sp.csr_matrix, ...]) -> None:
    res = tuning.select_and_fit("most-popular", *mats, {}, show_progress=False)
    assert len(res.trials) == 1 and res.best.best_iteration is None and "iterations" not in res.params
    assert 0.05 < res.metrics_test["ndcg@10"] < 0.3


def test_empty_validation_split_is_refused(mats: tuple[sp.csr_matrix, ...]) -> None:
    train, valid, test = mats
    with pytest.raises(InputError, match="validation split is empty"):
        tuning.select_and_fit("als", train, sp.csr_matrix(valid.shape, dtype=np.float32), test, {}, show_progress=False)
    with pytest.raises(InputError, match="shape"):
        tuning.select_and_fit("als", train, valid[:5], test, {}, show_progress=False)


def test_trials_are_nested_mlflow_runs_with_validation_curves(mats: tuple[sp.csr_matrix, ...], tmp_path: Path) -> None:
    import mlflow

    uri = fresh_store(tmp_path)
    with tracking.start_run(uri, "tuning-test", run_name="parent") as parent:
        res = tuning.select_and_fit(
            "als", *mats, {"factors": [8, 16]}, base_params=BASE, eval_every=2,
            callbacks=tracking.TrackingCallbacks("als"), show_progress=False
        )
    client = mlflow.MlflowClient(uri)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(r.data.params["factors"] for r in children) == ["16", "8"]
    assert {t.run_id for t in res.trials} == {r.info.run_id for r in children}
    curve = client.get_metric_history(children[0].info.run_id, "valid_ndcg_at_10")
    assert [m.step for m in curve] == [2, 4, 6]
    best_curve = client.get_metric_history(parent.info.run_id, "valid_ndcg_at_10")
    assert [m.value for m in best_curve] == pytest.approx([h["ndcg@10"] for h in res.best.history])
    files = {f.path for f in client.list_artifacts(parent.info.run_id, "tuning")}
    assert files == {"tuning/trials.json"}
    assert isinstance(res.model, ALS)


def test_the_best_trials_train_only_model_is_kept_and_scores_its_validation_metric(mats: tuple[sp.csr_matrix, ...]) -> None:
    from recsys.evaluation import evaluate

    train, valid, _ = mats
    res = tuning.select_and_fit(
        "als", *mats, {"regularization": [0.01, 30.0]}, base_params={**BASE, "factors": 32, "iterations": 10},
        eval_every=5, show_progress=False,
    )
    kept = res.model_on_train
    assert kept is not None and kept is not res.model
    assert kept.regularization == res.params["regularization"]
    # fitted on train only, at the best iteration: it reproduces the winning validation score
    again = evaluate(kept, train, valid, ks=(10,), show_progress=False)["ndcg@10"]
    assert again == pytest.approx(res.best.score, abs=1e-6)

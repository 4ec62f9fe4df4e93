"""Aligned retrains: Procrustes rotation leaves every score unchanged; drift, churn, exposure."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import ortho_group

from recsys.data.idmap import IdMap
from recsys.embeddings.align import VersionView, fit_alignment, mean_cosine, rotate_foldin, topk_churn
from recsys.errors import InputError
from recsys.models.foldin import FoldIn, FoldInSpec


def _versions(n_items=300, n_users=120, d=16, noise=0.05, seed=0, bias=False):
    """A previous version and a 'retrain': the same vectors rotated, noised, rows shuffled, items added/dropped."""
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n_items, d)).astype(np.float32)
    x = rng.normal(size=(n_users, d)).astype(np.float32)
    q = ortho_group.rvs(d, random_state=seed)
    ids = [f"i{j}" for j in range(n_items)]
    perm = rng.permutation(n_items)[: n_items - 20]          # 20 items dropped
    y_new = np.vstack([(y[perm] @ q + noise * rng.normal(size=(len(perm), d))),
                       rng.normal(size=(10, d))]).astype(np.float32)  # 10 brand-new items
    new_ids = [ids[j] for j in perm] + [f"new{j}" for j in range(10)]
    x_new = (x @ q).astype(np.float32)
    if bias:
        y, y_new = np.c_[y, rng.normal(size=n_items)], np.c_[y_new, rng.normal(size=len(y_new))]
        x, x_new = np.c_[x, np.ones(n_users)], np.c_[x_new, np.ones(n_users)]
    return (x, y, IdMap(ids, "item")), (x_new.astype(np.float32), y_new.astype(np.float32), IdMap(new_ids, "item"))


def test_rotation_leaves_every_user_item_score_unchanged():
    (_, y, ids), (x_new, y_new, new_ids) = _versions()
    al = fit_alignment(y_new, new_ids, y, ids)
    assert al.applied and al.n_shared == 280
    before = x_new.astype(np.float64) @ y_new.T.astype(np.float64)
    after = al.apply(x_new).astype(np.float64) @ al.apply(y_new).T.astype(np.float64)
    np.testing.assert_allclose(after, before, atol=1e-5 * np.abs(before).max())
    np.testing.assert_allclose(np.linalg.norm(al.apply(y_new), axis=1), np.linalg.norm(y_new, axis=1), rtol=1e-5)


def test_alignment_recovers_the_previous_space():
    (_, y, ids), (_, y_new, new_ids) = _versions()
    al = fit_alignment(y_new, new_ids, y, ids)
    assert abs(al.cosine_before) < 0.3  # a random rotation: unaligned vectors are unrelated
    assert al.cosine_after > 0.99
    prev_rows = ids.to_index(new_ids.ids[:280])
    assert mean_cosine(al.apply(y_new)[:280], y[prev_rows]) == pytest.approx(al.cosine_after, abs=1e-6)


def test_bias_column_is_not_rotated_and_scores_hold():
    (_, y, ids), (x_new, y_new, new_ids) = _versions(bias=True)
    al = fit_alignment(y_new, new_ids, y, ids, fixed_columns=1)
    assert al.applied and al.rotation.shape == (16, 16)
    np.testing.assert_array_equal(al.apply(y_new)[:, -1], y_new[:, -1])
    np.testing.assert_array_equal(al.apply(x_new)[:, -1], 1.0)
    before = x_new.astype(np.float64) @ y_new.T
    after = al.apply(x_new).astype(np.float64) @ al.apply(y_new).T
    np.testing.assert_allclose(after, before, atol=1e-5 * np.abs(before).max())
    assert al.cosine_after > 0.99


def test_dimension_mismatch_is_skipped_with_a_logged_reason(caplog):
    (_, y, ids), (_, y_new, new_ids) = _versions()
    with caplog.at_level(logging.WARNING, logger="recsys.embeddings.align"):
        al = fit_alignment(np.c_[y_new, y_new], new_ids, y, ids)
    assert not al.applied and "dims" in al.skipped and "dims" in caplog.text
    np.testing.assert_array_equal(al.apply(y_new), y_new)  # skipped: vectors pass through


def test_too_few_shared_items_is_skipped():
    (_, y, ids), (_, y_new, new_ids) = _versions()
    al = fit_alignment(y_new, new_ids, y, ids, min_shared=1000)
    assert not al.applied and "min_shared" in al.skipped and al.n_shared == 280
    assert np.isnan(al.metrics()["drift_cosine_aligned"])


def test_fit_mask_restricts_the_fit_items():
    (_, y, ids), (_, y_new, new_ids) = _versions()
    mask = np.zeros(len(y_new), bool)
    mask[:40] = True
    al = fit_alignment(y_new, new_ids, y, ids, fit_mask=mask, min_shared=30)
    assert al.n_shared == 40 and al.cosine_after > 0.98


def test_bad_fixed_columns_is_refused():
    (_, y, ids), (_, y_new, new_ids) = _versions()
    with pytest.raises(InputError, match="fixed_columns"):
        fit_alignment(y_new, new_ids, y, ids, fixed_columns=16)


def test_rotated_foldin_gives_the_rotated_user():
    (_, y, ids), (_, y_new, new_ids) = _versions()
    al = fit_alignment(y_new, new_ids, y, ids)
    spec = FoldInSpec("als", weighting="log", alpha=2.0, regularization=3.0, gram=y_new.T.astype(np.float64) @ y_new)
    u = FoldIn(spec, y_new).user([1, 5, 9], [4.0, 3.0, 5.0])
    u_rot = FoldIn(rotate_foldin(spec, al), al.apply(y_new)).user([1, 5, 9], [4.0, 3.0, 5.0])
    np.testing.assert_allclose(u_rot, u @ al.rotation, atol=1e-4)


def _view(x, y, ids, seen=None):
    return VersionView(x, IdMap([f"u{i}" for i in range(len(x))], "user"), y, ids, seen)


def test_churn_is_zero_for_a_rotated_copy_and_counts_new_item_exposure():
    (x, y, ids), _ = _versions(noise=0.0)
    q = ortho_group.rvs(16, random_state=3)
    seen = sp.random(len(x), len(y), density=0.05, format="csr", random_state=2)
    same = topk_churn(_view(x, y, ids, seen), _view(x @ q, y @ q, ids, seen), k=10, n_users=50)
    assert same["churn_topk_overlap"] == pytest.approx(1.0) and same["churn_users"] == 50
    assert same["new_item_exposure"] == 0.0 and same["new_items"] == 0
    # a new item that every user loves takes one of ten slots
    x2 = np.abs(x) + 0.1
    y2 = np.vstack([y, np.full((1, 16), 100.0, np.float32)])
    ids2 = IdMap([*ids.ids, "star"], "item")
    res = topk_churn(_view(x2, y, ids), _view(x2, y2, ids2), k=10, n_users=30)
    assert res["new_item_exposure"] == pytest.approx(0.1) and res["new_items"] == 1
    assert res["churn_topk_overlap"] == pytest.approx(0.9)


def test_churn_excludes_the_seen_items_of_both_versions():
    (x, y, ids), _ = _versions(noise=0.0)
    top = np.argsort(-(x[:1] @ y.T)[0])[:10]
    seen_new = sp.csr_matrix((np.ones(10), (np.zeros(10, int), top)), shape=(len(x), len(y)))
    # the new version saw the old top-10 (behaviour change): excluded in both rankings, no churn
    res = topk_churn(_view(x[:1], y, ids), _view(x[:1], y, ids, seen_new[:1]), k=10, n_users=1)
    assert res["churn_topk_overlap"] == 1.0


# -- `recsys run`: the align step between blend and export ---------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def _run(ws, out, *extra):
    from pipelines.cli import main
    from tests.test_update import _run_args

    return main([*_run_args(ws, out), "--set", "promotion.tolerance=0.5", *extra])


@pytest.mark.slow  # two `recsys run`s with a fresh MLflow store: ~1-2 min on 2 shared cores
def test_run_aligns_a_retrain_to_the_live_bundle_and_logs_drift_and_churn(tmp_path):
    import json

    import polars as pl
    from mlflow import MlflowClient

    from recsys.models.base import Recommender
    from recsys.serving.reader import read_bundle

    ratings = pl.read_csv(ROOT / "data" / "movielens-latest-small" / "ratings.csv")
    ratings.filter(pl.col("userId") <= 100).write_csv(tmp_path / "ratings.csv")
    out = tmp_path / "out"
    assert _run(tmp_path, out) == 0
    first = json.loads((out / "latest" / "manifest.json").read_text())
    assert first["extra"]["align"]["applied"] is False  # nothing to align to yet
    assert _run(tmp_path, out, "--set", "models.als.random_state=7") == 0  # a retrain from other random factors
    b = read_bundle(out / "latest")
    rec = b.manifest["extra"]["align"]
    assert rec["applied"] and rec["previous_version"] == first["version"]
    assert rec["cosine_after"] > rec["cosine_before"] + 0.3
    # every score of the published (rotated) vectors equals the unrotated model's
    model = Recommender.load(out / "models" / "als-published" / "model.npz")
    raw = np.asarray(model.user_factors_, np.float64) @ np.asarray(model.item_factors_, np.float64).T
    served = np.asarray(b.user_vectors, np.float64) @ np.asarray(b.item_vectors, np.float64).T
    np.testing.assert_allclose(served, raw, atol=1e-5)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    runs = MlflowClient(uri).search_runs([e.experiment_id for e in MlflowClient(uri).search_experiments()],
                                         filter_string=f"tags.`recsys.bundle_version` = '{b.manifest['version']}' "
                                                       "and tags.`recsys.step` = 'promote'")
    metrics = runs[0].data.metrics
    assert metrics["drift_cosine_aligned"] == pytest.approx(rec["cosine_after"], abs=1e-5)
    assert {"drift_cosine_unaligned", "churn_topk_overlap", "new_item_exposure", "align_applied"} <= set(metrics)
    assert metrics["new_item_exposure_batch"] == 0.0  # same catalogue: the batch top-K holds no new item

"""ALS / BPR wrappers: interface, best-iteration selection, fold-in, persistence, device switch."""

from __future__ import annotations

from pathlib import Path

import implicit.gpu
import numpy as np
import pytest
import scipy.sparse as sp

from recsys.data import Dataset
from recsys.errors import ConfigError, InputError, NotFittedError
from recsys.evaluation import evaluate
from recsys.models import ALS, BPR, Recommender
from recsys.models.mf import resolve_use_gpu

HAS_CUDA = bool(implicit.gpu.HAS_CUDA)


@pytest.fixture(scope="module")
def mats(ml_small: Dataset) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    return ml_small.matrix("train"), ml_small.matrix("valid"), ml_small.matrix("test")


@pytest.fixture(scope="module")
def als(mats: tuple[sp.csr_matrix, ...]) -> ALS:
    return ALS(factors=32, regularization=10.0, iterations=10, device="cpu", num_threads=1).fit(mats[0])


def test_als_learns_movielens_far_above_popularity(als: ALS, mats: tuple[sp.csr_matrix, ...]) -> None:
    train, _, test = mats
    assert als.user_factors_.dtype == np.float32 and als.item_factors_.dtype == np.float32
    assert als.user_factors_.shape == (train.shape[0], 32) and als.item_factors_.shape == (train.shape[1], 32)
    res = evaluate(als, train, test, ks=(10,))
    # a popularity ranking scores about 0.14 NDCG@10 on this split; ALS must clearly beat it
    assert res["ndcg@10"] > 0.25


def test_recommend_shapes_and_seen_items_excluded(als: ALS, mats: tuple[sp.csr_matrix, ...]) -> None:
    train = mats[0]
    ids, scores = als.recommend(5, k=20)
    assert ids.shape == (20,) and scores.shape == (20,) and ids.dtype == np.int64 and scores.dtype == np.float32
    assert not set(ids) & set(train[5].indices)
    assert (np.diff(scores) <= 0).all()
    ids2, _ = als.recommend(np.array([5, 7]), k=20)
    assert ids2.shape == (2, 20) and (ids2[0] == ids).all()
    with_seen, _ = als.recommend(5, k=train.shape[1], exclude_seen=False)
    assert set(train[5].indices) <= set(with_seen)


def test_save_load_roundtrip_without_pickle(als: ALS, tmp_path: Path) -> None:
    path = tmp_path / "als.npz"
    als.save(path)
    np.load(path, allow_pickle=False)  # loads without pickle
    back = Recommender.load(path)
    assert isinstance(back, ALS) and back.get_params() == als.get_params()
    np.testing.assert_array_equal(back.item_factors_, als.item_factors_)
    np.testing.assert_array_equal(back.recommend(np.arange(10), k=10)[0], als.recommend(np.arange(10), k=10)[0])


def test_als_fold_in_equals_implicits_recalculate_user(als: ALS, mats: tuple[sp.csr_matrix, ...]) -> None:
    from implicit.cpu.als import AlternatingLeastSquares

    ref = AlternatingLeastSquares(factors=32, regularization=10.0, alpha=als.alpha)
    ref.item_factors = als.item_factors_.copy()
    ref.user_factors = als.user_factors_.copy()
    row = mats[0][3]
    expected = ref.recalculate_user(0, row)
    got = als.recalculate_user(row.indices, row.data)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_als_fold_in_of_new_user_recommends_like_a_trained_one(als: ALS, mats: tuple[sp.csr_matrix, ...]) -> None:
    train, _, test = mats
    users = np.arange(0, train.shape[0], 7)
    folded = np.stack([als.recalculate_user(train[u].indices, train[u].data) for u in users])
    hits_fold = hits_trained = 0
    for u, vec in zip(users, folded):
        s = als.item_factors_ @ vec
        s[train[u].indices] = -np.inf
        hits_fold += len(set(np.argsort(-s)[:10]) & set(test[u].indices))
        hits_trained += len(set(als.recommend(int(u), k=10)[0]) & set(test[u].indices))
    assert hits_fold >= 0.8 * hits_trained > 0


def test_fold_in_rejects_bad_histories_with_reasons(als: ALS) -> None:
    with pytest.raises(InputError, match="empty history"):
        als.recalculate_user([])
    with pytest.raises(InputError, match="out of range"):
        als.recalculate_user([als.n_items_])
    with pytest.raises(InputError, match=">= 0"):
        als.recalculate_user([1, 2], [1.0, -1.0])
    with pytest.raises(InputError, match="weights has"):
        als.recalculate_user([1, 2], [1.0])
    with pytest.raises(NotFittedError):
        ALS().recalculate_user([1])


def test_validation_keeps_the_best_iteration_not_the_last(mats: tuple[sp.csr_matrix, ...]) -> None:
    train = mats[0]
    snapshots: dict[int, np.ndarray] = {}
    scores = iter([0.1, 0.5, 0.2, 0.3])

    def validation(model: ALS) -> dict[str, float]:
        snapshots[len(snapshots) + 1] = model.item_factors_.copy()
        return {"ndcg@10": next(scores)}

    curve: list[tuple[int, float]] = []
    m = ALS(factors=8, iterations=8, device="cpu", num_threads=1).fit(
        train, validation=validation, eval_every=2, on_eval=lambda it, met: curve.append((it, met["ndcg@10"]))
    )
    assert curve == [(2, 0.1), (4, 0.5), (6, 0.2), (8, 0.3)]
    assert m.best_iteration_ == 4 and m.best_score_ == 0.5
    # the kept factors are those of iteration 4, not a view that followed later iterations
    np.testing.assert_array_equal(m.item_factors_, snapshots[2])
    assert not np.array_equal(snapshots[2], snapshots[4])


def test_patience_stops_early(mats: tuple[sp.csr_matrix, ...]) -> None:
    scores = iter([0.5, 0.4, 0.3, 0.2, 0.1])
    m = ALS(factors=8, iterations=10, device="cpu", num_threads=1).fit(
        mats[0], validation=lambda _: {"ndcg@10": next(scores)}, eval_every=2, patience=2
    )
    assert [h["iteration"] for h in m.history_] == [2, 4, 6] and m.best_iteration_ == 2


def test_bpr_has_bias_column_and_fold_in_ranks_held_out_items_high(mats: tuple[sp.csr_matrix, ...]) -> None:
    train, _, test = mats
    bpr = BPR(factors=16, iterations=30, learning_rate=0.05, device="cpu", num_threads=1, random_state=3).fit(train)
    assert bpr.user_factors_.shape[1] == 17 and np.allclose(bpr.user_factors_[train.getnnz(axis=1) > 0, -1], 1.0)
    rng = np.random.default_rng(0)
    for mode in ("sgd", "lstsq"):
        bpr.fold_in = mode
        aucs = []
        for u in range(0, 100, 10):
            vec = bpr.recalculate_user(train[u].indices)
            assert vec.shape == (17,) and vec[-1] == 1.0
            s = bpr.item_factors_ @ vec
            pos = s[test[u].indices]
            neg = s[rng.integers(0, train.shape[1], 500)]
            aucs.append((pos[:, None] > neg[None, :]).mean())
        assert np.mean(aucs) > 0.75, mode
    # deterministic given random_state
    bpr.fold_in = "sgd"
    np.testing.assert_array_equal(bpr.recalculate_user([1, 2, 3]), bpr.recalculate_user([1, 2, 3]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"factors": 0}, "factors"), ({"regularization": -1.0}, "regularization"), ({"alpha": 0.0}, "alpha"), ({"weighting": "x"}, "weighting")],
)
def test_invalid_hyperparameters_raise_config_error(kwargs: dict, match: str, mats: tuple[sp.csr_matrix, ...]) -> None:
    with pytest.raises(ConfigError, match=match):
        ALS(iterations=1, device="cpu", **kwargs).fit(mats[0])


def test_fit_rejects_negative_or_non_sparse_input() -> None:
    with pytest.raises(InputError, match="scipy.sparse"):
        ALS(device="cpu").fit(np.ones((3, 3)))
    with pytest.raises(InputError, match="negative"):
        ALS(device="cpu").fit(sp.csr_matrix(-np.ones((3, 3), np.float32)))


def test_device_switch_cpu_auto_and_cuda_without_gpu() -> None:
    assert resolve_use_gpu("cpu") is False
    assert resolve_use_gpu("auto") is HAS_CUDA
    with pytest.raises(ConfigError, match="device must be"):
        resolve_use_gpu("tpu")
    if not HAS_CUDA:
        with pytest.raises(ConfigError, match="HAS_CUDA"):
            resolve_use_gpu("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="implicit was built without CUDA or no GPU is visible")
def test_gpu_fit_gives_numpy_factors_close_in_quality_to_cpu(mats: tuple[sp.csr_matrix, ...]) -> None:
    train, _, test = mats
    cpu = ALS(factors=32, regularization=10.0, iterations=10, device="cpu").fit(train)
    gpu = ALS(factors=32, regularization=10.0, iterations=10, device="cuda").fit(train)
    assert isinstance(gpu.user_factors_, np.ndarray) and gpu.user_factors_.dtype == np.float32
    a, b = evaluate(cpu, train, test, ks=(10,))["ndcg@10"], evaluate(gpu, train, test, ks=(10,))["ndcg@10"]
    assert abs(a - b) < 0.03
    bpr = BPR(factors=31, iterations=20, device="cuda").fit(train)
    assert bpr.recalculate_user([1, 2, 3]).shape == (bpr.item_factors_.shape[1],)

"""MostPopular and ItemKNN: hand-computed values, then real MovieLens behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.errors import InputError
from recsys.evaluation import activity_slices, evaluate, evaluate_slices
from recsys.models.base import Recommender
from recsys.models.baselines import ItemKNN, MostPopular

# 4 users x 4 items; item 3 is never seen
X = sp.csr_matrix(
    np.array(
        [
            [5, 1, 0, 0],
            [4, 0, 2, 0],
            [0, 3, 2, 0],
            [1, 0, 0, 0],
        ],
        dtype=np.float32,
    )
)


# --- MostPopular --------------------------------------------------------------------------------
def test_most_popular_counts_users_not_weights():
    m = MostPopular().fit(X)
    np.testing.assert_array_equal(m.popularity_, [3, 2, 2, 0])
    ids, scores = m.recommend(3, k=3)  # user 3 saw item 0
    assert ids.tolist()[0] in (1, 2) and set(ids.tolist()) == {1, 2, 3}
    np.testing.assert_array_equal(scores, [2, 2, 0])


def test_most_popular_weight_sums_confidences():
    m = MostPopular(weighting="weight").fit(X)
    np.testing.assert_array_equal(m.popularity_, [10, 4, 4, 0])


def test_most_popular_ignores_explicit_zero_entries_when_counting():
    x = sp.csr_matrix((np.array([0.0, 1.0], np.float32), (np.array([0, 1]), np.array([0, 1]))), shape=(2, 2))
    assert x.nnz == 2
    np.testing.assert_array_equal(MostPopular().fit(x).popularity_, [0, 1])


def test_most_popular_rejects_unknown_weighting_with_the_choices():
    with pytest.raises(InputError, match="'count' or 'weight'"):
        MostPopular(weighting="clicks").fit(X)


# --- ItemKNN ------------------------------------------------------------------------------------
def _cosine(x: np.ndarray, shrink: float = 0.0) -> np.ndarray:
    norms = np.linalg.norm(x, axis=0)
    s = (x.T @ x) / (np.outer(norms, norms) + shrink + 1e-12)
    np.fill_diagonal(s, 0.0)
    return s


def test_item_knn_similarity_is_cosine_of_item_columns():
    m = ItemKNN(n_neighbors=10).fit(X)
    want = _cosine(X.toarray())
    # hand check of one entry: items 0 and 1 share only user 0, who gave 5 and 1
    assert want[0, 1] == pytest.approx(5 / (np.sqrt(25 + 16 + 1) * np.sqrt(1 + 9)))
    np.testing.assert_allclose(m.similarity_.toarray(), want, rtol=1e-6)


def test_item_knn_scores_are_user_row_times_similarity():
    m = ItemKNN(n_neighbors=10).fit(X)
    np.testing.assert_allclose(m.score([0, 1, 2, 3]), X.toarray() @ _cosine(X.toarray()), rtol=1e-5)


def test_item_knn_keeps_only_top_neighbours_per_item():
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((50, 30)) < 0.3) * rng.integers(1, 6, (50, 30)), dtype=np.float32)
    full = _cosine(x.toarray())
    m = ItemKNN(n_neighbors=4).fit(x)
    sim = m.similarity_.toarray()  # column j holds j's neighbours
    assert (np.count_nonzero(sim, axis=0) <= 4).all()
    for j in range(30):
        kept = np.flatnonzero(sim[:, j])
        assert np.sort(full[kept, j]).min() >= np.sort(full[:, j])[-4] - 1e-6  # the 4 largest
        np.testing.assert_allclose(sim[kept, j], full[kept, j], rtol=1e-5)


def test_item_knn_block_size_does_not_change_the_model():
    rng = np.random.default_rng(1)
    x = sp.csr_matrix((rng.random((40, 25)) < 0.3).astype(np.float32))
    a = ItemKNN(n_neighbors=5, block_size=1).fit(x).similarity_
    b = ItemKNN(n_neighbors=5, block_size=1000).fit(x).similarity_
    np.testing.assert_allclose(a.toarray(), b.toarray(), rtol=1e-6)


def test_item_knn_shrinkage_and_binary():
    shrunk = ItemKNN(n_neighbors=10, shrinkage=3.0).fit(X).similarity_.toarray()
    np.testing.assert_allclose(shrunk, _cosine(X.toarray(), 3.0), rtol=1e-6)
    b = (X.toarray() > 0).astype(np.float32)
    m = ItemKNN(n_neighbors=10, binary=True).fit(X)
    np.testing.assert_allclose(m.similarity_.toarray(), _cosine(b), rtol=1e-6)
    np.testing.assert_allclose(m.score([1]), b[[1]] @ _cosine(b), rtol=1e-5)


def test_item_knn_similar_items_best_first_and_padded():
    m = ItemKNN(n_neighbors=10).fit(X)
    ids, sc = m.similar_items(0, k=4)
    # item 0's cosine with 1 and 2 (item 3 has no users -> no neighbour entry)
    want = _cosine(X.toarray())[0]
    assert ids.tolist()[:2] == [int(i) for i in np.argsort(-want)[:2]]
    assert ids.tolist()[2:] == [-1, -1] and np.isneginf(sc[2:]).all()
    with pytest.raises(InputError, match="item"):
        m.similar_items(4)


@pytest.mark.parametrize(
    "params, msg",
    [({"n_neighbors": 0}, "n_neighbors"), ({"n_neighbors": True}, "n_neighbors"), ({"shrinkage": -1.0}, "shrinkage"),
     ({"shrinkage": float("nan")}, "shrinkage"), ({"block_size": 0}, "block_size")],
)
def test_item_knn_rejects_bad_parameters(params, msg):
    with pytest.raises(InputError, match=msg):
        ItemKNN(**params).fit(X)


# --- real data ----------------------------------------------------------------------------------
class _Random(Recommender):
    """Uniformly random scores: the floor every baseline must clear."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def _fit(self, user_items, **kwargs):
        pass

    def _score(self, user_indices):
        return np.random.default_rng(self.seed).random((len(user_indices), self.n_items_), dtype=np.float32)


@pytest.fixture(scope="module")
def ml_results(ml_small):
    train, test = ml_small.matrix("train"), ml_small.matrix("test")
    models = {"Random": _Random(), "MostPopular": MostPopular(), "ItemKNN": ItemKNN(n_neighbors=100)}
    return {name: evaluate(m.fit(train), train, test, ks=(10, 50)) for name, m in models.items()}, models


def test_baselines_beat_random_on_movielens_small(ml_results):
    res, _ = ml_results
    # measured on the 72/8/20 random split: Random 0.004, MostPopular 0.165, ItemKNN 0.283
    assert res["Random"]["ndcg@10"] < 0.02
    assert res["MostPopular"]["ndcg@10"] > 10 * res["Random"]["ndcg@10"]
    assert res["MostPopular"]["ndcg@10"] > 0.12
    assert res["ItemKNN"]["ndcg@10"] > 1.3 * res["MostPopular"]["ndcg@10"]
    assert res["ItemKNN"]["recall@50"] > res["MostPopular"]["recall@50"]
    assert all(r["n_users"] == 610 and r["n_users_skipped"] == 0 for r in res.values())


def test_item_knn_recommends_a_longer_tail_than_most_popular(ml_results):
    res, _ = ml_results
    # MostPopular shows almost everybody the same ~40 items; ItemKNN spreads over 10x more
    assert res["MostPopular"]["coverage@10"] < 0.01
    assert res["ItemKNN"]["coverage@10"] > 5 * res["MostPopular"]["coverage@10"]
    assert res["ItemKNN"]["mean_popularity@10"] < res["MostPopular"]["mean_popularity@10"]
    assert res["Random"]["mean_popularity@10"] < res["ItemKNN"]["mean_popularity@10"]


def test_item_knn_neighbours_of_star_wars_are_its_sequels(ml_results, ml_small):
    _, models = ml_results
    star_wars = int(ml_small.item_map.to_index(["260"])[0])
    ids, _ = models["ItemKNN"].similar_items(star_wars, k=2)
    assert set(ml_small.item_map.to_external(ids).tolist()) == {"1196", "1210"}  # Episodes V and VI


def test_slices_by_activity_partition_users_and_light_users_score_lower(ml_results, ml_small):
    _, models = ml_results
    train, test = ml_small.matrix("train"), ml_small.matrix("test")
    res = evaluate_slices(models["ItemKNN"], train, test, activity_slices(train, thresholds=(20, 50)), ks=(10,))
    assert list(res) == ["all", "train<20", "20<=train<50", "train>=50"]
    assert sum(res[n]["n_users"] for n in list(res)[1:]) == res["all"]["n_users"] == 610
    # measured: ndcg@10 0.14 (< 20 ratings), 0.22, 0.37 (>= 50 ratings)
    assert res["train<20"]["ndcg@10"] < res["20<=train<50"]["ndcg@10"] < res["train>=50"]["ndcg@10"]
    assert res["all"]["ndcg@10"] == pytest.approx(evaluate(models["ItemKNN"], train, test, ks=(10,))["ndcg@10"])



def _generic_ranking(m, users, k, **kw):
    """The scoring path every model has (the fast path switched off)."""
    m._rank_block = lambda *a: None
    try:
        return m.recommend(users, k=k, **kw)
    finally:
        del m._rank_block


@pytest.mark.parametrize("k", [1, 10, 60])
def test_most_popular_fast_ranking_equals_full_catalogue_ranking(k):
    rng = np.random.default_rng(3)
    n_users, n_items = 300, 60
    dense = (rng.random((n_users, n_items)) < rng.random((n_users, 1)) ** 3).astype(np.float32)
    x = sp.csr_matrix(dense)
    x.data[::7] = 0.0  # explicit zeros are not "seen"
    full = sp.csr_matrix(np.ones((1, n_items), np.float32))
    x = sp.vstack([full, x[1:]]).tocsr()  # user 0 has seen everything: -1 / -inf slots
    for m in (MostPopular().fit(x), MostPopular().fit(x[:12])):  # counts of 12 users: many ties
        users = np.arange(m.user_items_.shape[0])
        for kw in ({}, {"exclude_seen": False}, {"user_items": x[: len(users)]}):
            fast = m.recommend(users, k=k, **kw)
            slow = _generic_ranking(m, users, k, **kw)
            np.testing.assert_array_equal(fast[0], slow[0])
            np.testing.assert_array_equal(fast[1], slow[1])
        ids, scores = m.recommend(users, k=k)
        assert (ids[0] == -1).all() and np.isneginf(scores[0]).all()

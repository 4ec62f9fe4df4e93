"""Retriever: exact exclusion, allow-lists, fallbacks, fold-in, threads, bad input."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from recsys import Retriever
from recsys.errors import BundleError, InputError, UnknownIdError
from recsys.index.exact import ExactIndex
from recsys.serving.bundle import IndexConfig, publish
from serving_fixtures import export_real, real  # noqa: F401 - real is a fixture


@pytest.fixture(scope="module")
def root(real, tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    info = export_real(root, real, config=IndexConfig(n_trees=20, n_queries=100, n_jobs=1))  # gate: test_bundle
    publish(root, info.version)
    return root


@pytest.fixture(scope="module", params=["exact", "annoy", "annoy-sk3000"])
def retriever(request, root):
    """Exact, Annoy as tuned by the gate (search_k >= n_items: rows go to the exact scan),
    and Annoy with a small search_k so the over-fetch and filter path really runs."""
    r = Retriever.load(root, backend=request.param.split("-")[0])
    if request.param == "annoy-sk3000":
        r._index.search_k = 3000
    r.variant = request.param
    return r


def _seen_ids(real, user_ext):
    u = real.dataset.user_map.to_index(user_ext)
    cols = real.train[u].indices
    return set(real.dataset.item_map.to_external(cols))


def test_small_catalogue_is_served_exactly_by_default(root, real):
    r = Retriever.load(root)
    assert r.backend == "exact" and r.n_items == real.dataset.n_items  # 9.7k items < exact_max_items
    assert Retriever.load(root, exact_max_items=100).backend == "annoy"


def test_known_user_matches_exact_model_scores(retriever, real):
    users = real.dataset.user_map.ids[:50]
    ids, scores = retriever.recommend(users, k=20)
    assert ids.shape == (50, 20) and scores.dtype == np.float32
    u = real.dataset.user_map.to_index(users)
    exact = real.user_vectors[u] @ real.item_vectors.T
    exact[real.train[u].nonzero()] = -np.inf
    truth = np.argsort(-exact, axis=1)[:, :20]
    got = np.stack([real.dataset.item_map.to_index(list(row)) for row in ids])
    overlap = np.mean([len(set(g) & set(t)) / 20 for g, t in zip(got, truth)])
    assert overlap >= {"exact": 0.999, "annoy": 0.8, "annoy-sk3000": 0.3}[retriever.variant]
    np.testing.assert_allclose(scores, np.take_along_axis(exact, got, 1), rtol=1e-4, atol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 1e-7)


def test_seen_items_are_excluded_exactly(retriever, real):
    users = real.dataset.user_map.ids[:200]
    k = 100
    ids, _ = retriever.recommend(users, k=k)
    for user, row in zip(users, ids):
        assert not (set(row) & _seen_ids(real, user))
        assert None not in set(row)
    kept, _ = retriever.recommend(users[0], k=2000, exclude_seen=False)
    assert set(kept) & _seen_ids(real, users[0])  # with exclusion off, seen items do come back


def test_candidate_allow_list_is_honoured(retriever, real):
    rng = np.random.default_rng(0)
    allowed = list(rng.choice(real.dataset.item_map.ids, 300, replace=False))
    users = real.dataset.user_map.ids[:30]
    ids, scores = retriever.recommend(users, k=10, candidates=allowed)
    assert set(ids.ravel()) <= set(allowed)
    # the best allowed unseen items, in order
    u = real.dataset.user_map.to_index(users[0])
    a = real.dataset.item_map.to_index(allowed)
    s = real.item_vectors[a] @ real.user_vectors[u]
    s[np.isin(a, real.train[u].indices)] = -np.inf
    assert list(ids[0]) == list(real.dataset.item_map.to_external(a[np.argsort(-s)[:10]]))


def test_large_allow_list_through_annoy_overfetch_is_honoured(root, real):
    r = Retriever.load(root, backend="annoy")
    r._index.exact_subset_max = 10  # force the over-fetch path instead of an exact subset scan
    allowed = real.dataset.item_map.ids[::3]
    ids, _ = r.recommend(real.dataset.user_map.ids[:20], k=50, candidates=allowed)
    assert set(ids.ravel()) <= set(allowed) and None not in set(ids.ravel())


def test_allow_list_smaller_than_k_pads_with_none_and_minus_inf(retriever, real):
    allowed = real.dataset.item_map.ids[:3]
    ids, scores = retriever.recommend(real.dataset.user_map.ids[0], k=5, candidates=allowed, exclude_seen=False)
    assert list(ids[3:]) == [None, None] and np.all(np.isneginf(scores[3:]))
    assert set(ids[:3]) == set(allowed)


def test_block_list_is_excluded(retriever, real):
    user = real.dataset.user_map.ids[5]
    top, _ = retriever.recommend(user, k=10)
    ids, _ = retriever.recommend(user, k=10, exclude=list(top[:5]))
    assert not set(ids) & set(top[:5]) and list(ids[:5]) == list(top[5:])


def test_unknown_user_gets_popular_items_and_never_crashes(retriever, real):
    ids, scores = retriever.recommend("no-such-user", k=5)
    pop = np.bincount(real.train.indices, minlength=real.dataset.n_items)
    assert list(ids) == list(real.dataset.item_map.to_external(np.argsort(-pop, kind="stable")[:5]))
    np.testing.assert_array_equal(scores, np.sort(pop)[::-1][:5])
    both, _ = retriever.recommend([real.dataset.user_map.ids[0], "no-such-user"], k=5)
    assert list(both[1]) == list(ids)


def test_unknown_user_with_history_is_folded_in_like_implicit(retriever, real):
    history = real.dataset.item_map.ids[:15]
    ids, scores = retriever.recommend("new-user", k=10, history=history)
    same, _ = retriever.recommend_from_history(history, k=10)
    assert list(ids) == list(same) and not set(ids) & set(history)
    # the ALS fold-in is implicit's own recalculate_user
    import scipy.sparse as sp

    row = sp.csr_matrix((np.ones(15, np.float32), (np.zeros(15, int), np.arange(15))), shape=(1, real.dataset.n_items))
    x = np.asarray(real.model.recalculate_user(0, row)).ravel()
    exact = real.item_vectors @ x
    exact[:15] = -np.inf
    want = real.dataset.item_map.to_external(np.argsort(-exact)[:10])
    if retriever.backend == "exact":
        assert list(ids) == list(want)
        np.testing.assert_allclose(scores, np.sort(exact)[::-1][:10], rtol=1e-3)


def test_history_for_many_users_as_dict(retriever, real):
    items = real.dataset.item_map.ids
    ids, _ = retriever.recommend(["a", "b"], k=5, history={"a": items[:5], "b": []})
    assert list(ids[0]) == list(retriever.recommend_from_history(items[:5], k=5)[0])
    assert list(ids[1]) == list(retriever.popular(k=5)[0])


def test_similar_items_excludes_the_item_itself(retriever, real):
    item = real.dataset.item_map.ids[0]
    ids, scores = retriever.similar_items(item, k=10)
    assert item not in set(ids) and len(set(ids)) == 10
    i = real.dataset.item_map.to_index(item)
    s = real.item_vectors @ real.item_vectors[i]
    s[i] = -np.inf
    if retriever.backend == "exact":
        assert list(ids) == list(real.dataset.item_map.to_external(np.argsort(-s)[:10]))
    many, _ = retriever.similar_items(real.dataset.item_map.ids[:3], k=4)
    assert many.shape == (3, 4)


def test_concurrent_queries_from_8_threads_equal_sequential(retriever, real):
    users = real.dataset.user_map.ids
    seq = {u: retriever.recommend(u, k=50) for u in users[:160]}
    with ThreadPoolExecutor(8) as pool:
        par = list(pool.map(lambda u: (u, retriever.recommend(u, k=50)), users[:160] * 2))
    for u, (ids, scores) in par:
        assert list(ids) == list(seq[u][0])
        np.testing.assert_array_equal(scores, seq[u][1])


@pytest.mark.parametrize("k", [0, -3, 1.5, True, "10", None])
def test_bad_k_is_a_value_error(retriever, k):
    with pytest.raises(InputError, match="k must be a positive integer"):
        retriever.recommend("1", k=k)


def test_bad_id_types_and_unknown_items_are_clear_errors(retriever, real):
    with pytest.raises(ValueError, match="str or int"):
        retriever.recommend([1.0, 2.0], k=3)
    with pytest.raises(ValueError, match="id or a list"):
        retriever.recommend({"user": 1}, k=3)
    with pytest.raises(KeyError, match="unknown item id"):
        retriever.recommend("1", k=3, candidates=["not-an-item"])
    with pytest.raises(UnknownIdError, match="history"):
        retriever.recommend_from_history(["not-an-item"], k=3)
    ids, _ = retriever.recommend_from_history(["not-an-item", real.dataset.item_map.ids[0]], k=3, ignore_unknown=True)
    assert len(ids) == 3
    with pytest.raises(UnknownIdError):
        retriever.similar_items("not-an-item")
    with pytest.raises(ValueError, match="NaN"):
        retriever.search(np.full(32, np.nan, np.float32), k=3)
    with pytest.raises(ValueError, match="dimension"):
        retriever.search(np.ones(7, np.float32), k=3)
    with pytest.raises(InputError, match="weights"):
        retriever.recommend_from_history(real.dataset.item_map.ids[:2], weights=[1.0, -1.0])


def test_search_by_raw_vector_matches_exact_index(root, real):
    r = Retriever.load(root, backend="exact")
    q = real.user_vectors[:3]
    ids, scores = r.search(q, k=7)
    want, _ = ExactIndex("dot").build(real.item_vectors).query(q, 7)
    assert (ids == real.dataset.item_map.to_external(want)).all()


def test_load_refuses_a_path_that_is_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        Retriever.load(tmp_path / "missing")
    with pytest.raises(BundleError, match="not a complete bundle"):
        Retriever.load(tmp_path)


def test_importing_the_retriever_pulls_in_neither_mlflow_nor_torch():
    import subprocess
    import sys

    code = "import sys; from recsys import Retriever; print('mlflow' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]

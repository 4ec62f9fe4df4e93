"""Vector indexes: MIPS transform, NaN refusal, exact filters, recall and search_k tuning."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.errors import BundleError, InputError, NotFittedError
from recsys.index.annoy_index import AnnoyIndex, augment_inner_product
from recsys.index.exact import ExactIndex
from recsys.index.recall import exact_topk, recall_at_k, sample_queries, tune_search_k


def _vectors(n=3000, d=16, seed=0):
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(n, d)).astype(np.float32) * rng.lognormal(0, 0.5, size=(n, 1)).astype(np.float32)
    return items, rng.normal(size=(200, d)).astype(np.float32)


def test_mips_augmentation_makes_angle_order_equal_dot_order():
    items, queries = _vectors()
    m, aug = augment_inner_product(items)
    norms = np.linalg.norm(aug, axis=1)
    np.testing.assert_allclose(norms, m, rtol=1e-4)  # every augmented item has norm M
    q = np.hstack([queries, np.zeros((len(queries), 1), np.float32)])
    cos = (q @ aug.T) / np.linalg.norm(q, axis=1, keepdims=True) / norms
    dot = queries @ items.T
    assert (np.argsort(-cos, axis=1)[:, :50] == np.argsort(-dot, axis=1)[:, :50]).mean() > 0.999


def test_nan_and_inf_vectors_are_refused_before_building():
    items, _ = _vectors()
    items[5, 0] = np.nan
    with pytest.raises(InputError, match="NaN or infinite"):
        AnnoyIndex("dot").build(items)
    items[5, 0], items[9, 2] = 0.0, np.inf
    with pytest.raises(InputError, match="rows \\[9\\]"):
        ExactIndex("dot").build(items)
    ok = AnnoyIndex("dot", n_trees=5, n_jobs=1).build(_vectors()[0])
    with pytest.raises(InputError, match="NaN"):
        ok.query(np.full(16, np.nan), 5)


def test_query_before_build_is_not_fitted():
    with pytest.raises(NotFittedError):
        ExactIndex().query(np.ones(3), 2)


def test_annoy_with_generous_search_k_equals_exact_and_scores_are_model_scores():
    items, queries = _vectors()
    ann = AnnoyIndex("dot", n_trees=10, search_k=3000 * 10, n_jobs=1).build(items)
    got, scores = ann.query(queries[:20], 10)
    want, want_scores = ExactIndex("dot").build(items).query(queries[:20], 10)
    assert (got == want).mean() > 0.99
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5)


@pytest.mark.parametrize("kind", ["exact", "annoy"])
def test_exclusion_is_exact_and_allow_list_is_honoured(kind):
    items, queries = _vectors()
    idx = (ExactIndex("dot") if kind == "exact" else AnnoyIndex("dot", n_trees=10, search_k=2000, n_jobs=1)).build(items)
    top, _ = idx.query(queries[0], 30)
    got, _ = idx.query(queries[0][None], 10, exclude=[top[:20]])
    assert not set(got[0]) & set(top[:20])
    allowed = np.arange(0, 3000, 7)
    got, _ = idx.query(queries[:5], 10, allowed=allowed)
    assert set(got.ravel()) <= set(allowed)
    few, s = idx.query(queries[0], 5, allowed=np.array([3, 4]))
    assert set(few[:2]) == {3, 4} and list(few[2:]) == [-1, -1, -1] and np.isneginf(s[2:]).all()
    if kind == "annoy":
        idx.exact_subset_max = 0  # over-fetch path
        got, _ = idx.query(queries[:5], 10, allowed=allowed, exclude=[allowed[:3]] * 5)
        assert set(got.ravel()) <= set(allowed[3:])


def test_cosine_index_normalises_items_and_queries():
    items, queries = _vectors()
    ids, scores = ExactIndex("cosine").build(items).query(queries[0], 5)
    cos = items @ queries[0] / np.linalg.norm(items, axis=1) / np.linalg.norm(queries[0])
    np.testing.assert_allclose(scores, np.sort(cos)[::-1][:5], rtol=1e-5)
    assert list(ids) == list(np.argsort(-cos)[:5])


def test_out_of_range_filters_and_bad_k_are_refused():
    idx = ExactIndex().build(_vectors()[0])
    with pytest.raises(InputError, match="out of range"):
        idx.query(np.ones(16), 3, allowed=np.array([5000]))
    with pytest.raises(InputError, match="one per query"):
        idx.query(np.ones((2, 16)), 3, exclude=[np.array([1])])
    with pytest.raises(InputError, match="k must be"):
        idx.query(np.ones(16), 0)


def test_tuning_raises_search_k_until_the_threshold_and_never_lowers_recall():
    items, queries = _vectors(n=5000)
    ann = AnnoyIndex("dot", n_trees=5, n_jobs=1).build(items)
    truth = exact_topk(items, queries, 100, "dot")
    res = tune_search_k(ann, queries, k=100, threshold=0.95, start=100, truth=truth)
    assert res.passed and res.recall >= 0.95 and ann.search_k == res.search_k
    assert res.history[0][0] == 100 and res.history[0][1] < 0.95
    assert recall_at_k(ann, queries, truth, 100) == pytest.approx(res.recall)
    capped = tune_search_k(ann, queries, k=100, threshold=1.0, start=100, cap=400, truth=truth)
    assert not capped.passed and capped.search_k == 400


def test_seeded_single_threaded_builds_are_identical(tmp_path):
    items, _ = _vectors(n=1000)
    for name in ("a.ann", "b.ann"):
        AnnoyIndex("dot", n_trees=5, seed=7, n_jobs=1).build(items).save_file(tmp_path / name)
    assert (tmp_path / "a.ann").read_bytes() == (tmp_path / "b.ann").read_bytes()


def test_loading_with_mismatched_vectors_is_refused(tmp_path):
    items, _ = _vectors(n=1000)
    entry = AnnoyIndex("dot", n_trees=3, n_jobs=1).build(items).save(tmp_path)
    with pytest.raises(BundleError, match="different exports"):
        AnnoyIndex.load(tmp_path, entry, items[:500], "dot")


def test_sample_queries_is_seeded():
    v = np.arange(100, dtype=np.float32).reshape(50, 2)
    assert np.array_equal(sample_queries(v, 10, seed=1), sample_queries(v, 10, seed=1))
    assert len(sample_queries(v, 100)) == 50

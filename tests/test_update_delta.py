"""The delta index of `recsys update`: new items scanned exactly beside the published index, filters on both."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsys.errors import BundleError, InputError
from recsys.index.delta import DeltaIndex, merge_topk, plan_index
from recsys.index.exact import ExactIndex


def _catalogue(seed=0, n=300, n_new=25, d=8):
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(n + n_new, d)).astype(np.float32) * rng.uniform(0.3, 2.0, (n + n_new, 1)).astype(np.float32)
    queries = rng.normal(size=(40, d)).astype(np.float32)
    return items, queries, n


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_delta_index_results_equal_an_exact_search_over_the_merged_catalogue_with_filters(similarity):
    items, q, n = _catalogue()
    base = ExactIndex(similarity).build(items[:n])
    prepared = items / np.linalg.norm(items, axis=1, keepdims=True) if similarity == "cosine" else items
    delta = DeltaIndex(base, prepared.astype(np.float32), similarity)
    exact = ExactIndex(similarity).build(items)
    rng = np.random.default_rng(1)
    exclude = [np.unique(rng.integers(0, len(items), 30)) for _ in q]  # seen items on both sides
    allowed = np.unique(np.concatenate([rng.integers(0, n, 80), rng.integers(n, len(items), 10)]))
    for kw in ({}, {"exclude": exclude}, {"allowed": allowed}, {"exclude": exclude, "allowed": allowed}):
        got_i, got_s = delta.query(q, 20, **kw)
        want_i, want_s = exact.query(q, 20, **kw)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-6)
    # an allow-list only of new items, and one only of known items
    for allow in (np.arange(n, len(items)), np.arange(0, 10)):
        got_i, _ = delta.query(q, 15, allowed=allow)
        want_i, _ = exact.query(q, 15, allowed=allow)
        np.testing.assert_array_equal(got_i, want_i)


def test_merge_keeps_the_best_k_and_pads_empty_slots():
    ids, sc = merge_topk(np.array([[3, -1]]), np.array([[0.5, -np.inf]], np.float32),
                         np.array([[7, 8]]), np.array([[0.9, 0.1]], np.float32), 4)
    assert ids.tolist() == [[7, 3, 8, -1]] and np.isneginf(sc[0, 3])


def test_index_plan_rebuilds_small_catalogues_and_moved_items_and_deltas_a_few_new_items():
    assert plan_index("auto", 1_000, 990, False) == "rebuild"  # small: a rebuild is cheap
    assert plan_index("auto", 1_000_000, 990_000, False) == "delta"
    assert plan_index("auto", 1_000_000, 900_000, False) == "rebuild"  # the delta would be 11% of the index
    assert plan_index("auto", 1_000_000, 990_000, True) == "rebuild"  # the index describes moved vectors
    assert plan_index("delta", 1_000, 990, False) == "delta"
    assert plan_index("rebuild", 1_000_000, 999_999, False) == "rebuild"
    with pytest.raises(InputError, match="moved"):
        plan_index("delta", 1_000, 990, True)
    with pytest.raises(InputError, match="index mode"):
        plan_index("sometimes", 1_000, 990, False)


def _bundle_pair(tmp_path, backend="annoy"):
    """A bundle over the known items, and a delta bundle over known + new items exported from it."""
    from recsys.serving.bundle import IndexConfig, export_bundle

    items, q, n = _catalogue(n=600, n_new=30, d=8)
    cfg = IndexConfig(backend=backend, n_trees=20, n_queries=40, recall_k=10, min_recall=0.9, norm_range_min=100,
                      exact_max_items=0, n_jobs=1)
    ids = [f"i{j}" for j in range(len(items))]
    users = q
    first = export_bundle(tmp_path, item_vectors=items[:n], item_ids=ids[:n], user_vectors=users,
                          user_ids=[f"u{j}" for j in range(len(users))], config=cfg)
    second = export_bundle(tmp_path, item_vectors=items, item_ids=ids, user_vectors=users,
                           user_ids=[f"u{j}" for j in range(len(users))], config=cfg, delta_of=first.path)
    return first, second, items, n


def test_a_delta_bundle_links_the_base_index_and_the_retriever_answers_from_both_with_filters(tmp_path):
    from recsys.serving.retriever import Retriever

    first, second, items, n = _bundle_pair(tmp_path)
    m = second.manifest
    assert m["index"]["backend"] == "delta" and m["index"]["n_base"] == n and m["quality_gate"]["delta_items"] == 30
    for f in m["index"]["files"]:  # the very bytes of the base index (hard links or copies)
        assert (second.path / f).read_bytes() == (first.path / f).read_bytes()
    r = Retriever.load(second.path, backend="index")
    ex = Retriever.load(second.path, backend="exact")
    assert type(r._index).__name__ == "DeltaIndex"
    new = [f"i{j}" for j in range(n, len(items))]
    allow = new[:10] + [f"i{j}" for j in range(0, n, 7)]
    block = new[10:20] + ["i1", "i2"]
    for kw in ({}, {"candidates": allow}, {"exclude": block}, {"candidates": allow, "exclude": block}):
        got, _ = r.recommend([f"u{j}" for j in range(10)], k=10, **kw)
        want, _ = ex.recommend([f"u{j}" for j in range(10)], k=10, **kw)
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)])
        assert overlap >= 0.9, kw  # the base is approximate (Annoy): held to the gate's recall
        if "exclude" in kw:
            assert not set(np.ravel(got)) & set(block)
        if "candidates" in kw:
            assert set(np.ravel(got)) <= set(allow)
    # a new item is its own nearest neighbour's neighbour: similar_items reaches the delta side
    j = n + 3
    sims, _ = r.similar_items(f"i{j}", k=len(items) - 1)
    assert set(sims) == set(f"i{t}" for t in range(len(items))) - {f"i{j}"}
    r.close()
    ex.close()


def test_a_delta_of_a_delta_keeps_the_first_base_and_a_moved_item_is_refused(tmp_path):
    from recsys.serving.bundle import IndexConfig, export_bundle

    first, second, items, n = _bundle_pair(tmp_path, backend="exact")
    cfg = IndexConfig(**second.manifest["config"])
    more = np.vstack([items, items[:5] * 1.5])
    ids = [f"i{j}" for j in range(len(more))]
    third = export_bundle(tmp_path, item_vectors=more, item_ids=ids, config=cfg, delta_of=second.path)
    assert third.manifest["index"]["n_base"] == n and third.manifest["quality_gate"]["recall"] == 1.0
    moved = more.copy()
    moved[0] += 1.0
    with pytest.raises(InputError, match="moved"):
        export_bundle(tmp_path, item_vectors=moved, item_ids=ids, config=cfg, delta_of=first.path)


def test_a_delta_manifest_with_a_bad_base_count_is_refused(tmp_path):
    from recsys.serving.manifest import validate_manifest

    first, second, items, n = _bundle_pair(tmp_path)
    m = json.loads((second.path / "manifest.json").read_text())
    validate_manifest(m, second.path)
    m["index"]["n_base"] = len(items) + 1
    with pytest.raises(BundleError, match="n_base"):
        validate_manifest(m, second.path)
    m["index"]["n_base"] = n - 1  # the base's norm-range bounds end at its own item count
    if "ranges" in m["index"]["base"]:
        with pytest.raises(BundleError, match="bounds"):
            validate_manifest(m, second.path)

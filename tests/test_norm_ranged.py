"""Norm-ranged Annoy: recall on skewed norms, exact filters, persistence, bundles, gate tuning."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.errors import BundleError, InputError
from recsys.index.annoy_index import AnnoyIndex
from recsys.index.exact import ExactIndex
from recsys.index.norm_ranged import NormRangedAnnoyIndex, range_bounds
from recsys.index.recall import exact_topk, recall_at_k, tune_search_k
from recsys.serving.bundle import IndexConfig, export_bundle
from recsys.serving.retriever import Retriever


def _skewed(n=40_000, dim=32, n_users=300, sigma=1.2, seed=0):
    """MF-like vectors: decaying spectrum, log-normal norms (a long tail of popular items)."""
    rng = np.random.default_rng(seed)
    scale = np.geomspace(1.0, 0.1, dim)
    items = (rng.normal(size=(n, dim)) * scale).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    items *= rng.lognormal(0.0, sigma, size=(n, 1)).astype(np.float32)
    users = (rng.normal(size=(n_users, dim)) * scale).astype(np.float32)
    return items, users


@pytest.fixture(scope="module")
def skewed():
    items, users = _skewed()
    return items, users, exact_topk(items, users, 100, "dot")


@pytest.fixture(scope="module")
def ranged(skewed):
    # exact_range_max=0: every range is searched in its forest (what most tests here exercise)
    return NormRangedAnnoyIndex(n_ranges=4, min_range=2500, exact_range_max=0, n_trees=10, n_jobs=1).build(skewed[0])


def test_ranges_grow_geometrically_from_the_longest_vectors_and_cover_every_item():
    assert range_bounds(1_000_000, 8, 5000) == [0, 7812, 15625, 31250, 62500, 125000, 250000, 500000, 1_000_000]
    assert range_bounds(40_000, 4, 2500) == [0, 5000, 10000, 20000, 40000]
    assert range_bounds(40_000, 8, 2500) == [0, 2500, 5000, 10000, 20000, 40000]  # first range >= min_range
    assert range_bounds(9_000, 8, 5000) == [0, 9000]  # too small to cut
    with pytest.raises(InputError):
        range_bounds(10, 0, 5)


def test_items_are_ordered_by_descending_norm_across_ranges(ranged, skewed):
    norms = np.linalg.norm(skewed[0], axis=1)
    assert sorted(ranged.order_.tolist()) == list(range(len(norms)))
    assert np.all(np.diff(norms[ranged.order_]) <= 1e-6)
    assert ranged.max_norms_ == pytest.approx([norms[ranged.order_[a]] for a in ranged.bounds_[:-1]], rel=1e-6)


def test_norm_ranges_keep_the_recall_one_forest_loses_on_skewed_norms(ranged, skewed):
    items, users, truth = skewed
    one = AnnoyIndex("dot", n_trees=10, n_jobs=1).build(items)
    one.search_k = ranged.search_k = 4000
    r_one, r_ranged = recall_at_k(one, users, truth, 100), recall_at_k(ranged, users, truth, 100)
    print(f"recall@100 at search_k 4000: one forest {r_one:.3f}, 4 norm ranges {r_ranged:.3f}")
    assert r_ranged >= 0.95 and r_one < 0.5


def test_scanning_the_small_long_vector_ranges_exactly_raises_recall_at_the_same_budget(ranged, skewed):
    items, users, truth = skewed
    scanned = NormRangedAnnoyIndex(n_ranges=4, min_range=2500, exact_range_max=10_000, n_trees=10, n_jobs=1)
    scanned.build(items)
    assert scanned.scanned_ranges() == [True, True, True, False]
    ranged.search_k = scanned.search_k = 500
    try:
        forest_only, with_scans = recall_at_k(ranged, users, truth, 100), recall_at_k(scanned, users, truth, 100)
    finally:
        ranged.search_k = -1
    print(f"recall@100 at search_k 500: forests only {forest_only:.3f}, ranges <= 10k scanned {with_scans:.3f}")
    assert with_scans > forest_only + 0.1 and with_scans >= 0.9


def test_full_budget_answers_equal_exact_search_with_filters(ranged, skewed):
    """A search_k above every range size scans each range exactly, so the only
    approximation left is the Cauchy-Schwarz cut-off, which must never drop an item."""
    items, users, truth = skewed
    exact = ExactIndex("dot").build(items)
    rng = np.random.default_rng(1)
    # each user's 40 best items (they fill the cut-off's first ranges) plus random ones
    blocked = [np.concatenate([truth[u][:40], rng.choice(len(items), 30, replace=False)]) for u in range(20)]
    ranged.search_k = 10**9
    try:
        got = ranged.query(users[:20], 50, exclude=blocked)
        want = exact.query(users[:20], 50, exclude=blocked)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
        allowed = rng.choice(len(items), 30_000, replace=False)  # above exact_subset_max: filtered in the ranges
        got = ranged.query(users[:5], 20, allowed=allowed)
        np.testing.assert_array_equal(got[0], exact.query(users[:5], 20, allowed=allowed)[0])
    finally:
        ranged.search_k = -1


def test_excluded_items_never_come_back_and_allow_lists_hold(ranged, skewed):
    items, users, truth = skewed
    ranged.search_k = 2000
    blocked = [t[:40] for t in truth[:10]]  # each user's 40 best items
    ids, scores = ranged.query(users[:10], 100, exclude=blocked)
    assert all(not set(i) & set(b) for i, b in zip(ids, blocked))
    assert np.all(np.diff(scores, axis=1) <= 0) and (ids >= 0).all()
    allowed = np.arange(0, len(items), 2)
    ids, _ = ranged.query(users[:10], 100, allowed=allowed)
    assert (ids % 2 == 0).all() and (ids >= 0).all()
    ids, _ = ranged.query(users[0], 10, allowed=np.array([3, 5, 7]))  # fewer than k: padded
    assert sorted(ids[:3].tolist()) == [3, 5, 7] and (ids[3:] == -1).all()


def test_saved_ranges_load_memory_mapped_with_the_same_answers(ranged, skewed, tmp_path):
    items, users, _ = skewed
    ranged.search_k = 1500
    entry = ranged.save(tmp_path)
    spec = entry["ranges"]
    assert spec["files"] == [f"index-{r:02d}.ann" for r in range(4)] and (tmp_path / spec["order_file"]).is_file()
    assert spec["exact_range_max"] == 0 and entry["files"] == [*spec["files"], spec["order_file"]]
    assert entry["search_k"] == 1500 and entry["n_trees"] == 10
    back = NormRangedAnnoyIndex.load(tmp_path, entry, items)
    for a, b in zip(ranged.query(users[:30], 100), back.query(users[:30], 100)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(BundleError, match="do not fit"):
        NormRangedAnnoyIndex.load(tmp_path, entry, items[:-1])
    np.save(tmp_path / spec["order_file"], np.zeros(len(items), np.int64))
    with pytest.raises(BundleError, match="not a permutation"):
        NormRangedAnnoyIndex.load(tmp_path, entry, items)


def test_gate_halves_a_passing_start_to_the_cheapest_search_k_that_still_passes(ranged, skewed):
    _, users, truth = skewed
    res = tune_search_k(ranged, users, k=100, threshold=0.9, start=8000, truth=truth)
    tried = dict(res.history)
    assert res.passed and res.recall >= 0.9 and ranged.search_k == res.search_k < 8000
    assert any(sk < res.search_k and rec < 0.9 for sk, rec in tried.items())  # one step lower fails
    assert res.history[1] == (4000, tried[4000])


def _bundle_args(items, users):
    seen = sp.random(len(users), len(items), density=0.0005, format="csr", random_state=0)
    return dict(item_vectors=items, item_ids=[f"i{i}" for i in range(len(items))], user_vectors=users,
                user_ids=[f"u{u}" for u in range(len(users))], seen=seen)


@pytest.fixture(scope="module")
def ranged_bundle(skewed, tmp_path_factory):
    items, users, _ = skewed
    root = tmp_path_factory.mktemp("ranged")
    cfg = IndexConfig(n_trees=10, n_jobs=1, norm_ranges=4, norm_range_min=2500, n_queries=300)
    return export_bundle(root, **_bundle_args(items, users), config=cfg)


def test_dot_bundle_over_a_large_catalogue_is_norm_ranged_and_passes_the_gate(ranged_bundle):
    info = ranged_bundle
    ix = info.manifest["index"]
    assert ix["transform"] == "norm_ranged_mips" and ix["file"] is None
    assert ix["ranges"]["bounds"] == [0, 5000, 10000, 20000, 40000]
    names = [*ix["ranges"]["files"], "norm_order.npy"]
    assert set(names) <= set(info.manifest["files"])
    assert info.index_bytes == sum(info.manifest["files"][n]["bytes"] for n in names)
    assert info.recall >= 0.95


def test_retriever_over_norm_ranges_matches_exact_search(ranged_bundle):
    ann = Retriever.load(ranged_bundle.path, backend="annoy")
    ex = Retriever.load(ranged_bundle.path, backend="exact")
    users = [f"u{u}" for u in range(100)]
    a, _ = ann.recommend(users, k=100)
    e, _ = ex.recommend(users, k=100)
    recall = np.mean([len(set(x) & set(y)) / 100 for x, y in zip(a, e)])
    assert recall >= 0.95, recall


def test_corrupted_or_missing_range_file_is_refused(ranged_bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(ranged_bundle.path, copy)
    f = copy / "index-02.ann"
    data = bytearray(f.read_bytes())
    data[len(data) // 3] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="index-02.ann fails its sha256 check"):
        Retriever.load(copy)
    (copy / "norm_order.npy").unlink()
    with pytest.raises(BundleError, match="norm_order.npy is missing"):
        Retriever.load(copy, verify=False)


def test_cosine_models_and_norm_ranges_1_keep_one_forest(skewed, tmp_path):
    items, users, _ = skewed
    args = _bundle_args(items[:12_000], users[:50])
    cos = export_bundle(tmp_path / "cos", **args, similarity="cosine",
                        config=IndexConfig(n_trees=5, n_jobs=1, norm_range_min=2500, n_queries=50, min_recall=0.5))
    one = export_bundle(tmp_path / "one", **args,
                        config=IndexConfig(n_trees=5, n_jobs=1, norm_ranges=1, n_queries=50, min_recall=0.5))
    for info in (cos, one):
        assert info.manifest["index"]["file"] == "index.ann" and "ranges" not in info.manifest["index"]


def test_export_flag_and_config_set_the_norm_ranges(tmp_path):
    import argparse

    from pipelines.export import add_arguments, index_config

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = tmp_path / "run.toml"
    cfg.write_text("[index]\nnorm_ranges = 4\n")
    base = ["--dataset", "d", "--vectors", "v.npz", "--out", "o", "--config", str(cfg)]
    assert index_config(p.parse_args(base)).norm_ranges == 4
    assert index_config(p.parse_args([*base, "--norm-ranges", "1"])).norm_ranges == 1
    from recsys.errors import ConfigError

    with pytest.raises(ConfigError, match="norm_ranges"):
        IndexConfig(norm_ranges=0)


def test_recall_counts_tied_items_as_hits_so_zero_user_vectors_do_not_fail_the_gate(ranged, skewed):
    """A user with no interactions in the window has a zero vector: every item ties, and
    the index's 100 are as right as the exact search's 100 (set overlap said 0.0)."""
    items, users, truth = skewed
    zero = np.zeros((3, items.shape[1]), np.float32)
    exact_ids = exact_topk(items, zero, 100, "dot")
    got = ranged.query(zero, 100)[0]
    assert len(set(got[0]) & set(exact_ids[0])) < 100  # different, equally good items
    assert recall_at_k(ranged, zero, exact_ids, 100) == 1.0
    ranged.search_k = 100  # a real miss still counts as one
    try:
        r = recall_at_k(ranged, users, truth, 100)
        plain = np.mean([len(set(g) & set(t)) / 100 for g, t in zip(ranged.query(users, 100)[0], truth)])
    finally:
        ranged.search_k = -1
    assert r == pytest.approx(plain) and r < 1.0


def test_narrow_norm_ranges_get_plain_angular_forests_and_wide_ones_keep_the_transform(tmp_path):
    items, users = _skewed(n=20_000, sigma=0.3, seed=5)
    ix = NormRangedAnnoyIndex(n_ranges=5, min_range=1250, exact_range_max=0, n_trees=10, n_jobs=1).build(items)
    norms = np.linalg.norm(items, axis=1)[ix.order_]
    ratios = [norms[a] / norms[b - 1] for a, b in zip(ix.bounds_[:-1], ix.bounds_[1:])]
    assert ix.transforms_ == ["angular" if r <= 1.3 else "mips" for r in ratios]
    assert set(ix.transforms_) == {"angular", "mips"}  # the long tail and the shortest vectors stay augmented
    # candidates are ranked by cos * |x| * |q| or the augmented angle; returned scores are exact
    ix.search_k = 800
    ids, scores = ix.query(users[:50], 100)
    np.testing.assert_allclose(scores, np.einsum("ukd,ud->uk", items[ids], users[:50]), rtol=1e-5, atol=1e-6)
    truth = exact_topk(items, users[:50], 100, "dot")
    assert recall_at_k(ix, users[:50], truth, 100) >= 0.9
    entry = ix.save(tmp_path)
    assert entry["ranges"]["transforms"] == ix.transforms_
    back = NormRangedAnnoyIndex.load(tmp_path, entry, items)
    np.testing.assert_array_equal(back.query(users[:50], 100)[0], ids)
    with pytest.raises(BundleError, match="transforms"):
        NormRangedAnnoyIndex.load(tmp_path, {**entry, "ranges": {**entry["ranges"], "transforms": ["angular"] * 2}},
                                  items)


def test_ranges_saved_without_transforms_load_as_augmented_forests(skewed, tmp_path):
    """Bundles written before plain angular ranges existed have no `transforms` entry."""
    items, users, _ = skewed
    old = NormRangedAnnoyIndex(n_ranges=4, min_range=2500, exact_range_max=0, n_trees=10, n_jobs=1,
                               angular_max_ratio=0.0, search_k=1000).build(items)
    assert set(old.transforms_) == {"mips"}
    entry = old.save(tmp_path)
    del entry["ranges"]["transforms"]
    back = NormRangedAnnoyIndex.load(tmp_path, entry, items)
    assert back.transforms_ == ["mips"] * 4
    for a, b in zip(old.query(users[:30], 100), back.query(users[:30], 100)):
        np.testing.assert_array_equal(a, b)

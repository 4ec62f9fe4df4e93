"""Per-range search_k of norm-ranged indexes: recall curves, allocation, gate, persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsys.errors import BundleError
from recsys.index.norm_ranged import NormRangedAnnoyIndex
from recsys.index.range_budgets import allocate_range_budgets, budget_ladder, range_hits, tune_range_search_k
from recsys.index.recall import exact_topk, recall_at_k, tune_search_k
from recsys.serving.bundle import IndexConfig, export_bundle
from recsys.serving.reader import load_index, read_bundle
from test_norm_ranged import _bundle_args, _skewed


@pytest.fixture(scope="module")
def skewed():
    items, users = _skewed(seed=3, sigma=0.4)  # mild skew: the top-k spreads over several ranges
    return items, users, exact_topk(items, users, 100, "dot")


@pytest.fixture()
def ranged(skewed):
    # ranges of 2500, 2500, 5000, 10000, 20000 items, every one searched in its forest
    return NormRangedAnnoyIndex(n_ranges=5, min_range=2500, exact_range_max=0, n_trees=10, n_jobs=1).build(skewed[0])


@pytest.mark.parametrize("exact_range_max", [0, 2500])
def test_range_hits_add_up_to_the_recall_measured_end_to_end(skewed, exact_range_max):
    """The tuner prices allocations from per-range counts; that is only valid if a true
    top-k item found by any range always makes the merged answer."""
    items, users, truth = skewed
    ranged = NormRangedAnnoyIndex(n_ranges=5, min_range=2500, exact_range_max=exact_range_max, n_trees=10,
                                  n_jobs=1).build(items)
    ladder = [100, 400, 1600]
    hits = range_hits(ranged, users, truth, ladder)
    assert hits.shape == (5, 3)
    assert (hits[:, -1] <= (truth >= 0).sum()).all() and hits[:, -1].sum() <= truth.size
    assert (np.diff(hits, axis=1) >= 0).all()  # a bigger budget never finds fewer
    assert (hits[:, 0] < hits[:, -1]).any()
    if exact_range_max:  # the scanned first range finds all its items at any budget
        assert hits[0, 0] == hits[0, -1] > 0
    for j, sk in enumerate(ladder):
        ranged.search_k = sk
        measured = recall_at_k(ranged, users, truth, 100)
        assert hits[:, j].sum() / truth.size == pytest.approx(measured, abs=1e-9)


def test_allocation_buys_the_best_recall_per_search_k_and_steps_back_its_overshoot():
    ladder = [100, 200, 400, 800]
    hits = np.array([
        [50, 50, 50, 50],   # scanned (frozen): always all of its 50
        [0, 0, 0, 0],       # holds none of the truth: stays at the floor
        [10, 30, 38, 40],   # cheap early gains
        [5, 6, 20, 40],     # flat first step, then a jump: must look past it
    ])
    step = allocate_range_budgets(hits, ladder, need=50 + 30 + 40, frozen=[True, False, False, False])
    assert step == [0, 0, 1, 3]  # 200 + 800 is the cheapest way to 120 hits
    assert allocate_range_budgets(hits, ladder, need=50 + 40 + 41, frozen=[True, False, False, False]) is None
    assert allocate_range_budgets(hits, ladder, need=60, frozen=[True, False, False, False]) == [0, 0, 0, 0]
    assert budget_ladder(100, 400) == [100, 141, 200, 283, 400]


def test_per_range_budgets_pass_the_gate_for_less_total_search_k_than_one_budget(ranged, skewed):
    _, users, truth = skewed
    uniform = tune_search_k(ranged, users, k=100, threshold=0.95, truth=truth)
    assert uniform.passed
    res = tune_range_search_k(ranged, users, truth, k=100, threshold=0.95)
    assert res.passed and res.recall >= 0.95
    assert ranged.range_search_k == res.range_search_k and len(res.range_search_k) == 5
    searched = [not s for s in ranged.scanned_ranges()]
    cost = sum(b for b, s in zip(res.range_search_k, searched) if s)
    print(f"one search_k {uniform.search_k} x {sum(searched)} forests vs per range {res.range_search_k}")
    assert cost < uniform.search_k * sum(searched)
    assert recall_at_k(ranged, users, truth, 100) == pytest.approx(res.recall)  # what the index now serves
    # a range holding none of the sample's true top-k is skipped (budget 0), the others searched
    holds = range_hits(ranged, users, truth, [100])[:, 0] > 0
    assert not holds.all() and [b > 0 for b in res.range_search_k] == holds.tolist()


def test_a_single_search_k_of_zero_does_not_skip_the_forests(ranged, skewed):
    _, users, truth = skewed
    ranged.search_k = 0  # read as Annoy's default, as for one forest, not as "skip every range"
    assert recall_at_k(ranged, users[:50], truth[:50], 100) > 0.9


def test_unreachable_threshold_leaves_the_budgets_unchanged(ranged, skewed):
    _, users, truth = skewed
    ranged.search_k = 100
    res = tune_range_search_k(ranged, users, truth, k=100, threshold=1.0, cap=200)
    assert not res.passed and ranged.range_search_k is None


class _SpyForest:
    def __init__(self, ann, calls):
        self.ann, self.calls = ann, calls

    def get_nns_by_vector(self, v, n, search_k, **kw):
        self.calls.append((n, search_k))
        return self.ann.get_nns_by_vector(v, n, search_k=search_k, **kw)


def test_only_blocked_items_that_could_reach_the_top_raise_the_fetch(skewed):
    """Seen items far down a user's ranking cannot displace a true result, so they must
    not multiply the Annoy work; a user whose seen items fill the top gets the full
    over-fetch (and still never sees them). The first range is scanned, so the forests
    are asked after a k-th best score is known."""
    items, users, truth = skewed
    ranged = NormRangedAnnoyIndex(n_ranges=5, min_range=2500, exact_range_max=2500, n_trees=10, search_k=500,
                                  n_jobs=1).build(items)
    calls: list[tuple[int, int]] = []
    ranged._segments = [(r, ids, _SpyForest(a, calls) if a is not None else None, *rest)
                        for r, ids, a, *rest in ranged._segments]
    scores = items @ users[0]
    low = np.argsort(scores)[:200]  # the user's 200 worst items
    got, _ = ranged.query(users[0], 100, exclude=[low])
    assert calls and all(c == (100, 500) for c in calls)
    assert not set(got) & set(low)
    calls.clear()
    top = truth[0][:50]  # the user's 50 best items
    got, _ = ranged.query(users[0], 100, exclude=[top])
    assert calls and all(n == 150 and sk == 750 for n, sk in calls)
    assert not set(got) & set(top)
    exact = np.argsort(-scores)
    want = [i for i in exact if i not in set(top)][:100]
    assert len(set(got) & set(want)) >= 90


def test_per_range_budgets_survive_save_and_load_and_a_bad_list_is_refused(ranged, skewed, tmp_path):
    items, users, _ = skewed
    ranged.range_search_k = [100, 900, 300, 100, 100]
    entry = ranged.save(tmp_path)
    assert entry["ranges"]["search_k"] == [100, 900, 300, 100, 100]
    back = NormRangedAnnoyIndex.load(tmp_path, entry, items)
    assert back.range_search_k == [100, 900, 300, 100, 100]
    for a, b in zip(ranged.query(users[:20], 100), back.query(users[:20], 100)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(BundleError, match="per-range search_k"):
        NormRangedAnnoyIndex.load(tmp_path, {**entry, "ranges": {**entry["ranges"], "search_k": [100, 300]}}, items)


def test_bundle_gate_records_and_serves_the_per_range_budgets(skewed, tmp_path):
    items, users, _ = skewed
    cfg = IndexConfig(n_trees=10, n_jobs=1, norm_ranges=5, norm_range_min=2500, norm_range_exact_max=0,
                      n_queries=300)
    info = export_bundle(tmp_path, **_bundle_args(items, users), config=cfg)
    gate = info.manifest["quality_gate"]
    budgets = info.manifest["index"]["ranges"]["search_k"]
    assert gate["range_search_k"] == budgets and len(budgets) == 5
    assert gate["passed"] and gate["recall"] >= 0.95 and info.recall == gate["recall"]
    assert json.loads((info.path / "manifest.json").read_text())["index"]["ranges"]["search_k"] == budgets
    assert load_index(read_bundle(info.path)).range_search_k == budgets

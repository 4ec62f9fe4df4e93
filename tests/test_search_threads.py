"""One query's forest searches on several threads: same answers, never queued behind others."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from recsys.index.lanes import Lanes, balance
from recsys.index.norm_ranged import NormRangedAnnoyIndex
from recsys.serving.bundle import IndexConfig, export_bundle
from recsys.serving.retriever import Retriever
from test_norm_ranged import _bundle_args, _skewed


@pytest.fixture(scope="module")
def data():
    return _skewed(n=30_000, sigma=0.4, seed=7)


def test_balance_puts_the_costliest_tasks_on_different_lanes():
    assert balance([800, 100, 700, 200], 2) == [[0, 1], [2, 3]]  # 900 each
    assert balance([5], 4) == [[0]]


def test_a_busy_helper_means_the_query_does_the_work_itself():
    lanes = Lanes(2)
    try:
        assert lanes._free.acquire(blocking=False)  # another query holds the only helper
        who = lanes.run(lambda t: threading.current_thread().name, ["a", "b", "c"], [3, 2, 1])
        assert set(who) == {threading.current_thread().name}
        lanes._free.release()
        who = lanes.run(lambda t: threading.current_thread().name, ["a", "b"], [1, 1])
        assert len(set(who)) == 2 and any(n.startswith("recsys-search") for n in who)
    finally:
        lanes.close()


def test_parallel_forest_search_finds_at_least_what_the_sequential_one_finds_with_filters(data):
    """In parallel the remaining forests are searched at once, with the cut-off and the
    blocked-item count known before them, so each is searched at least as deeply as in
    the sequential order (which may stop early or shrink the fetch): every answer
    scores at least as well."""
    items, users = data
    kw = dict(n_ranges=5, min_range=2000, exact_range_max=2000, n_trees=10, n_jobs=1, search_k=600)
    one = NormRangedAnnoyIndex(**kw).build(items)
    two = NormRangedAnnoyIndex(**kw, search_threads=2)
    two.vectors_ = one.vectors_  # same forests: only the way they are searched differs
    two._set_ranges(one.order_, one.bounds_, one.max_norms_, one._forests, one.transforms_)
    rng = np.random.default_rng(0)
    blocked = [np.concatenate([np.argsort(-(items @ u))[:20], rng.choice(len(items), 30)]) for u in users[:40]]
    allowed = np.arange(0, len(items), 3)
    for args in [dict(), dict(exclude=blocked), dict(allowed=allowed)]:
        (ia, sa), (ib, sb) = one.query(users[:40], 100, **args), two.query(users[:40], 100, **args)
        assert (sb[:, -1] >= sa[:, -1] - 1e-5).all() and (sb.sum(1) >= sa.sum(1) - 1e-3).all()
        np.testing.assert_allclose(sb, np.einsum("ukd,ud->uk", items[ib], users[:40]), rtol=1e-5, atol=1e-5)
        assert np.mean([len(set(a) & set(b)) for a, b in zip(ia, ib)]) >= 95
    assert all(not set(i) & set(b) for i, b in zip(two.query(users[:40], 100, exclude=blocked)[0], blocked))
    assert (two.query(users[:40], 100, allowed=allowed)[0] % 3 == 0).all()
    two._lanes.close()


def test_retriever_with_search_threads_gives_the_same_answers_under_concurrent_load(data, tmp_path):
    items, users = data
    cfg = IndexConfig(n_trees=10, n_jobs=1, norm_ranges=5, norm_range_min=2000, norm_range_exact_max=0,
                      n_queries=300, exact_max_items=0)
    info = export_bundle(tmp_path, **_bundle_args(items, users), config=cfg)
    one = Retriever.load(info.path, backend="annoy")
    two = Retriever.load(info.path, backend="annoy", search_threads=2)
    assert two._index.search_threads == 2 and one._index.search_threads == 1
    ids = [f"u{u}" for u in range(100)]
    base, want = one.recommend(ids, k=50), two.recommend(ids, k=50)
    assert (want[1][:, -1] >= base[1][:, -1] - 1e-5).all()  # searched at least as deeply
    with ThreadPoolExecutor(8) as pool:  # 8 callers share the one helper thread
        got = list(pool.map(lambda u: two.recommend(u, k=50)[0], ids))
    np.testing.assert_array_equal(np.stack(got), want[0])
    two._index.unload()

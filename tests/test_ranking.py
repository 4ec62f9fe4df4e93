"""recsys.ranking.topk_batch: exact, deterministic ties, exclusion in place, thread-invariant."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.errors import InputError
from recsys.models.base import topk
from recsys.ranking import exclude_items, rows_per_block, topk_batch


def _reference(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A stable sort of every row: the definition of the order (ties: lower index first)."""
    s = np.where(np.isnan(s), -np.inf, s).astype(np.float32)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(s, order, axis=1)
    ok = top > -np.inf
    ids, top = np.where(ok, order, -1), np.where(ok, top, -np.inf)
    pad = k - ids.shape[1]
    if pad > 0:
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        top = np.pad(top, ((0, 0), (0, pad)), constant_values=-np.inf)
    return ids.astype(np.int64), top.astype(np.float32)


def _scores(kind: str, rows: int, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "gaussian":
        return rng.standard_normal((rows, n), dtype=np.float32)
    if kind == "few_levels":  # massive ties at every threshold
        return rng.integers(0, 3, (rows, n)).astype(np.float32)
    if kind == "sparse":  # item-knn like: mostly exact zeros, a few positive scores
        s = np.zeros((rows, n), np.float32)
        hot = rng.random((rows, n)) < 0.002
        s[hot] = rng.random(int(hot.sum()), dtype=np.float32) + 0.5
        return s
    if kind == "mostly_excluded":  # fewer allowed items than k in many rows
        s = rng.standard_normal((rows, n), dtype=np.float32)
        s[rng.random((rows, n)) < 0.995] = -np.inf
        return s
    if kind == "nan_inf":
        s = rng.standard_normal((rows, n), dtype=np.float32)
        s[rng.random((rows, n)) < 0.05] = np.nan
        s[rng.random((rows, n)) < 0.001] = np.inf
        return s
    if kind == "increasing":  # scores correlated with the column index (biased strided sample)
        return np.sort(rng.standard_normal((rows, n), dtype=np.float32), axis=1)
    raise AssertionError(kind)


KINDS = ("gaussian", "few_levels", "sparse", "mostly_excluded", "nan_inf", "increasing")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("n", "k"), [(20000, 100), (3000, 10), (500, 50), (40, 100)])
def test_topk_batch_equals_a_stable_sort_of_every_row(kind, n, k):
    rng = np.random.default_rng(hash((kind, n, k)) % 2**32)
    s = _scores(kind, 37, n, rng)
    ids, top = topk_batch(s.copy(), k)
    want_ids, want_top = _reference(s, k)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(top, want_top)


def test_equal_scores_rank_the_lower_item_index_first():
    s = np.zeros((3, 5000), np.float32)
    s[1, [4000, 17, 2500]] = 1.0
    ids, _ = topk_batch(s, 5)
    np.testing.assert_array_equal(ids[0], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(ids[1], [17, 2500, 4000, 0, 1])


def test_rows_with_fewer_allowed_items_than_k_are_padded():
    s = np.full((2, 4000), -np.inf, np.float32)
    s[0, [10, 3000]] = [0.5, 2.0]
    ids, top = topk_batch(s, 4)
    np.testing.assert_array_equal(ids, [[3000, 10, -1, -1], [-1, -1, -1, -1]])
    assert np.isneginf(top[0, 2:]).all() and np.isneginf(top[1]).all()


def test_k_beyond_the_catalogue_pads_every_row():
    ids, top = topk_batch(np.array([[0.1, 0.3]], np.float32), 4)
    np.testing.assert_array_equal(ids, [[1, 0, -1, -1]])
    np.testing.assert_array_equal(top[0, :2], np.float32([0.3, 0.1]))


def test_exclude_sets_the_seen_cells_to_minus_inf_in_place():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((4, 3000), dtype=np.float32)
    r = np.array([0, 0, 1, 3, 3, 3])
    c = np.array([5, 7, 2999, 0, 1, 2])
    v = np.float32([0.0, 1.0, 2.0, 1.0, 1.0, 1.0])  # (0, 5) is an explicit zero: not an interaction
    seen = sp.csr_matrix((v, (r, c)), shape=(4, 3000))
    want = s.copy()
    want[r[1:], c[1:]] = -np.inf
    ids, _ = topk_batch(s, 50, exclude=seen)
    np.testing.assert_array_equal(s, want)  # modified in place, nothing else touched
    np.testing.assert_array_equal(ids, _reference(want, 50)[0])
    for row, col in zip(r[1:], c[1:]):
        assert col not in ids[row]


def test_exclude_items_refuses_misaligned_rows():
    with pytest.raises(InputError, match="seen\\[user_indices\\]"):
        exclude_items(np.zeros((2, 10), np.float32), sp.csr_matrix((3, 10)))
    with pytest.raises(InputError, match="scipy.sparse"):
        exclude_items(np.zeros((2, 10), np.float32), np.zeros((2, 10)))


def test_threads_do_not_change_the_result():
    rng = np.random.default_rng(5)
    s = _scores("few_levels", 700, 3000, rng)  # 2.1M cells: several slices, ranked in parallel
    a = topk_batch(s, 20, threads=1)
    b = topk_batch(s, 20, threads=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_scores_are_not_modified_without_exclude_and_float64_is_accepted():
    rng = np.random.default_rng(2)
    s = rng.standard_normal((5, 2000))
    before = s.copy()
    ids, top = topk_batch(s, 10)
    np.testing.assert_array_equal(s, before)
    assert top.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, _reference(s.astype(np.float32), 10)[0])


def test_base_topk_is_the_shared_core():
    rng = np.random.default_rng(3)
    s = rng.standard_normal((6, 2500), dtype=np.float32)
    np.testing.assert_array_equal(topk(s, 30)[0], topk_batch(s, 30)[0])


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_bad_k_raises(k):
    with pytest.raises(InputError, match="k must be a positive integer"):
        topk_batch(np.zeros((1, 5), np.float32), k)


def test_one_dimensional_scores_raise():
    with pytest.raises(InputError, match="2-D"):
        topk_batch(np.zeros(5, np.float32), 2)


def test_rows_per_block_fits_the_memory_budget():
    assert rows_per_block(100_000) == 671  # 256 MiB of float32 scores
    assert rows_per_block(100_000) * 100_000 * 4 <= 256 * 2**20
    assert rows_per_block(10**9) == 1
    assert rows_per_block(1000, budget_bytes=4000 * 7) == 7


def test_recommend_scores_blocks_into_one_buffer_without_changing_results_or_state():
    from recsys.models.fixed_vectors import FixedVectors

    rng = np.random.default_rng(4)
    u, v = rng.standard_normal((50, 8), dtype=np.float32), rng.standard_normal((3000, 8), dtype=np.float32)
    seen = sp.random(50, 3000, density=0.01, format="csr", random_state=4, dtype=np.float32)
    model = FixedVectors.from_vectors(u, v, seen)
    u0, v0 = model.user_factors_.copy(), model.item_factors_.copy()
    one = model.recommend(np.arange(50), k=20)
    blocks = model.recommend(np.arange(50), k=20, batch_size=7)  # the last block is shorter
    np.testing.assert_array_equal(one[0], blocks[0])
    np.testing.assert_allclose(one[1], blocks[1], rtol=1e-5)  # BLAS rounds by block shape
    want = u @ v.T
    r, c = seen.nonzero()
    want[r, c] = -np.inf
    np.testing.assert_array_equal(one[0], _reference(want, 20)[0])
    np.testing.assert_array_equal(model.user_factors_, u0)
    np.testing.assert_array_equal(model.item_factors_, v0)


def test_a_factor_model_with_its_own_score_is_not_scored_as_a_plain_product():
    from recsys.models.fixed_vectors import FixedVectors

    class Shifted(FixedVectors):
        def _score(self, user_indices):
            return -(self.user_factors_[user_indices] @ self.item_factors_.T)

    rng = np.random.default_rng(6)
    u, v = rng.standard_normal((5, 4), dtype=np.float32), rng.standard_normal((2000, 4), dtype=np.float32)
    model = Shifted().fit(sp.csr_matrix((5, 2000), dtype=np.float32), user_vectors=u, item_vectors=v)
    ids, _ = model.recommend(np.arange(5), k=10)
    np.testing.assert_array_equal(ids, _reference(-(u @ v.T), 10)[0])


def test_recommend_refuses_a_bad_batch_size():
    from recsys.models.fixed_vectors import FixedVectors

    model = FixedVectors.from_vectors(np.ones((2, 2), np.float32), np.ones((3, 2), np.float32), sp.csr_matrix((2, 3)))
    with pytest.raises(InputError, match="batch_size"):
        model.recommend([0, 1], k=2, batch_size=0)

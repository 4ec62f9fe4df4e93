"""ALS sweeps of `recsys update`: the local one moves only what the changed users touched, the full one is ALS warm-started."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.data.idmap import IdMap
from recsys.lifelong import incremental_update
from recsys.models.foldin_batch import _cg_items
from recsys.models import weighting as _weighting
from recsys.models.foldin import FoldIn, FoldInSpec


def _trained_toy(seed=0, n_users=40, n_items=30, d=4, iters=30):
    """A small model at an ALS fixed point (exact alternating solves), its history, and a step of new events."""
    rng = np.random.default_rng(seed)
    base = {(u, j): float(rng.integers(1, 6)) for u in range(n_users) for j in rng.choice(n_items, 6, replace=False)}
    spec0 = FoldInSpec("als", weighting="log", alpha=2.0, regularization=0.5)
    x, y = rng.normal(scale=0.1, size=(n_users, d)), rng.normal(scale=0.1, size=(n_items, d))
    for _ in range(iters):
        fy = FoldIn(spec0, y.astype(np.float32))
        x = np.stack([fy.user([j for (uu, j) in base if uu == u], [w for (uu, j), w in base.items() if uu == u])
                      for u in range(n_users)]).astype(np.float64)
        fy_items = FoldIn(spec0, y.astype(np.float32))
        y = np.stack([fy_items.item(x, [u for (u, jj) in base if jj == j], [w for (u, jj), w in base.items() if jj == j])
                      if any(jj == j for (_, jj) in base) else np.zeros(d, np.float32) for j in range(n_items)]).astype(np.float64)
    x, y = x.astype(np.float32), y.astype(np.float32)
    spec = FoldInSpec("als", weighting="log", alpha=2.0, regularization=0.5, gram=y.astype(np.float64).T @ y.astype(np.float64))
    new = {(u, int(j)): 5.0 for u in range(6) for j in rng.choice(n_items, 5, replace=False)}
    merged = {**base, **{k: base.get(k, 0.0) + v for k, v in new.items()}}
    hist = ([f"u{u}" for u, _ in merged], [f"i{j}" for _, j in merged], np.asarray(list(merged.values()), np.float32))
    users, items = IdMap([f"u{u}" for u in range(n_users)], "user"), IdMap([f"i{j}" for j in range(n_items)], "item")
    return x, y, spec, users, items, hist, [f"u{u}" for u in range(6)]


def _loss(res, spec):
    """The implicit-ALS training loss on the merged history, over every user-item pair."""
    m = res.seen.toarray().astype(np.float64)
    c = np.where(m > 0, spec.alpha * _weighting.transform(res.seen, spec.weighting, eps=spec.eps).toarray(), 1.0)
    p = (m > 0).astype(np.float64)
    u, y = res.user_vectors.astype(np.float64), res.item_vectors.astype(np.float64)
    return float((c * (p - u @ y.T) ** 2).sum() + spec.regularization * ((u ** 2).sum() + (y ** 2).sum()))


def test_local_sweeps_lower_the_training_loss_on_the_merged_history_below_fold_in_only():
    x, y, spec, users, items, hist, changed = _trained_toy()
    losses = [_loss(incremental_update(x, users, y, items, spec, hist, changed, sweeps=s, sweep_mode="local"), spec)
              for s in (0, 1, 2)]
    assert losses[1] < losses[0] and losses[2] <= losses[1] + 1e-9, losses


def test_a_sweep_leaves_unchanged_users_bit_for_bit_and_stores_what_the_published_fold_in_computes():
    x, y, spec, users, items, hist, changed = _trained_toy(seed=1)
    res = incremental_update(x, users, y, items, spec, hist, changed, sweeps=2, sweep_mode="local")
    np.testing.assert_array_equal(res.user_vectors[6:], x[6:])
    touched = np.unique(res.seen[:6].indices)
    untouched = np.setdiff1d(np.arange(len(y)), touched)
    np.testing.assert_array_equal(res.item_vectors[untouched], y[untouched])
    assert not np.allclose(res.item_vectors[touched], y[touched])
    # the published spec's YᵀY is the moved items' Gram, and each changed user is its exact fold-in
    yv = res.item_vectors.astype(np.float64)
    np.testing.assert_allclose(res.spec.gram, yv.T @ yv, rtol=1e-6, atol=1e-8)
    fold = FoldIn(res.spec, res.item_vectors)
    for u in range(6):
        row = res.seen[u]
        np.testing.assert_allclose(fold.user(row.indices, row.data), res.user_vectors[u], rtol=1e-4, atol=1e-5)
    assert res.stats["sweeps"] == 2 and res.stats["items_swept"] == len(touched)


def test_item_conjugate_gradient_converges_to_the_exact_item_solve():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 5))
    conf_dense = np.where(rng.random((50, 8)) < 0.3, rng.uniform(1, 4, (50, 8)), 0.0)
    conf_dense[0] = 2.0  # every item has a user
    import scipy.sparse as sp

    conf = sp.csc_matrix(conf_dense)
    lhs = x.T @ x + 0.7 * np.eye(5)
    got = _cg_items(x, lhs, conf, np.arange(8), np.zeros((8, 5)), steps=25, budget=40)  # tiny budget: many blocks
    spec = FoldInSpec("als", weighting="linear", alpha=1.0, regularization=0.7)
    fold = FoldIn(spec, np.zeros((8, 5), np.float32))
    for j in range(8):
        col = conf[:, j]
        np.testing.assert_allclose(got[j], fold.item(x, col.indices, col.data), rtol=1e-4, atol=1e-5)


def test_sweeps_need_an_als_spec_and_reject_negative_counts(caplog):
    x, y, spec, users, items, hist, changed = _trained_toy(iters=1)
    with pytest.raises(Exception, match="sweeps"):
        incremental_update(x, users, y, items, spec, hist, changed, sweeps=-1)
    mean = FoldInSpec("mean")
    with caplog.at_level("WARNING"):
        res = incremental_update(x, users, y, items, mean, hist, changed, sweeps=1)
    assert "sweeps" in caplog.text and "sweeps" not in res.stats


def test_item_conjugate_gradient_on_rare_items_takes_the_gather_path_and_converges_too():
    import scipy.sparse as sp

    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 6))
    dense = np.where(rng.random((500, 40)) < 0.01, rng.uniform(1, 4, (500, 40)), 0.0)
    dense[0] = 2.0
    conf = sp.csc_matrix(dense)
    assert 500 * 40 > 16 * conf.nnz  # rare items: scores gathered row by row, not from a dense block
    lhs = x.T @ x + 0.7 * np.eye(6)
    got = _cg_items(x, lhs, conf, np.arange(40), np.zeros((40, 6)), steps=30)
    for j in range(40):
        col = conf[:, j]
        xi = x[col.indices]
        want = np.linalg.solve(lhs + (xi.T * (col.data - 1.0)) @ xi, xi.T @ col.data)
        np.testing.assert_allclose(got[j], want, rtol=1e-5, atol=1e-6)


def test_sweep_items_restrict_the_re_solved_items_to_the_given_ones():
    x, y, spec, users, items, hist, changed = _trained_toy(seed=4, iters=5)
    only = ["i1", "i2", "nope"]
    res = incremental_update(x, users, y, items, spec, hist, changed, sweeps=1, sweep_items=only,
                             sweep_mode="local")
    moved = np.flatnonzero(np.any(res.item_vectors != y, axis=1))
    assert set(moved) <= {1, 2} and res.stats["items_swept"] == len(moved) > 0


def test_a_full_sweep_lowers_the_training_loss_and_publishes_the_gram_of_what_it_moved():
    x, y, spec, users, items, hist, changed = _trained_toy(seed=5)
    fold_only = incremental_update(x, users, y, items, spec, hist, changed, sweeps=0)
    full = incremental_update(x, users, y, items, spec, hist, changed, sweeps=1, sweep_mode="full")
    assert _loss(full, spec) < _loss(fold_only, spec)
    assert not np.array_equal(full.user_vectors[6:], x[6:])  # unchanged users move too: it is an ALS iteration
    yv = full.item_vectors.astype(np.float64)
    np.testing.assert_allclose(full.spec.gram, yv.T @ yv, rtol=1e-5, atol=1e-7)
    assert full.stats["sweeps"] == 1 and full.stats["users_changed"] == len(changed)


def test_full_sweeps_converge_to_the_exact_als_solution_and_leave_content_items_alone():
    x, y, spec, users, items, hist, changed = _trained_toy(seed=6, iters=2)
    source = np.array(["cf"] * len(y), dtype=object)
    source[3] = "content"
    res = incremental_update(x, users, y, items, spec, hist, changed, sweeps=500, sweep_mode="full", cg_steps=5,
                             item_source=source, min_count=100)
    np.testing.assert_array_equal(res.item_vectors[3], y[3])
    cf = np.flatnonzero(source == "cf")
    conf = res.seen.tocsc()
    sub = FoldIn(FoldInSpec("als", weighting="log", alpha=2.0, regularization=0.5), res.item_vectors[cf])
    for j in cf[:10]:  # at the fixed point each item is its exact solve against the users, and vice versa
        col = conf[:, j]
        np.testing.assert_allclose(res.item_vectors[j], sub.item(res.user_vectors, col.indices, col.data), atol=1e-3)
    seen_cf = res.seen[:, cf].tocsr()
    for u in range(5):
        row = seen_cf[u]
        np.testing.assert_allclose(res.user_vectors[u], sub.user(row.indices, row.data), atol=1e-3)

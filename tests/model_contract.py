"""The shared behaviour contract of every :class:`~recsys.models.base.Recommender`.

``check_recommender_contract(make_model, user_items)`` runs every check below on a
fresh model from ``make_model()`` and raises ``AssertionError`` (with the check's name)
on the first violation. Each model's test module calls it once, so a new model gets the
whole contract by adding one line to ``tests/test_model_contract.py``.

Checks:

* not fitted: ``recommend`` and ``save`` raise :class:`~recsys.errors.NotFittedError`;
* ``fit`` returns ``self``;
* shapes and dtypes: one user (int or numpy scalar) -> 1-D ``(k,)`` int64 ids and float32
  scores; a list of users (even of length 1) -> 2-D ``(n, k)``; scores sorted descending;
  no item repeated in a row; ``k <= 0`` refused;
* ``exclude_seen`` exact: no training item is returned, and the scores returned are the
  ``k`` best scores among the unseen items (compared with the full, unfiltered ranking);
  an explicit ``user_items`` matrix replaces the training matrix for exclusion;
* ``items=`` allow-list honoured, with ``-1``/``-inf`` padding when it is shorter than ``k``;
* ``k`` larger than the catalogue padded with ``-1``/``-inf``;
* an unknown user index (``n_users``, ``-1``) raises an :class:`~recsys.errors.InputError`
  that names the valid range;
* ``save``/``load`` through one ``.npz`` round-trips to identical recommendations, via
  both ``Recommender.load`` and the concrete class; the file loads with
  ``np.load(allow_pickle=False)`` and holds no object arrays.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.errors import InputError, NotFittedError
from recsys.models.base import Recommender


def _users(n_users: int, n: int = 8) -> np.ndarray:
    return np.unique(np.linspace(0, n_users - 1, num=min(n, n_users)).astype(np.int64))


def _check_not_fitted(model: Recommender, tmp: Path) -> None:
    with pytest.raises(NotFittedError):
        model.recommend(0, k=3)
    with pytest.raises(NotFittedError):
        model.save(tmp / "unfitted.npz")


def _check_shapes(model: Recommender, users: np.ndarray, k: int) -> None:
    ids, scores = model.recommend(int(users[0]), k=k)
    assert ids.shape == (k,) and scores.shape == (k,), "one user must give 1-D arrays"
    assert ids.dtype == np.int64 and scores.dtype == np.float32, f"dtypes {ids.dtype}, {scores.dtype}"
    ids_np, _ = model.recommend(np.int64(users[0]), k=k)
    np.testing.assert_array_equal(ids_np, ids, err_msg="numpy scalar user must behave like int")
    ids1, _ = model.recommend([int(users[0])], k=k)
    assert ids1.shape == (1, k), "a list of one user must give 2-D arrays"
    ids2, sc2 = model.recommend(users, k=k)
    assert ids2.shape == (len(users), k) and sc2.shape == (len(users), k), "many users must give 2-D arrays"
    np.testing.assert_array_equal(ids2[0], ids, err_msg="batch and single-user results differ")
    assert (sc2[:, 1:] <= sc2[:, :-1]).all(), "scores must be sorted descending (-inf last)"
    for row in ids2:
        valid = row[row >= 0]
        assert len(np.unique(valid)) == len(valid), "an item is repeated within a user's list"
    for bad_k in (0, -1):
        with pytest.raises(InputError):
            model.recommend(users, k=bad_k)


def _check_exclude_seen(model: Recommender, user_items: sp.csr_matrix, users: np.ndarray, k: int) -> None:
    n_items = user_items.shape[1]
    ids, scores = model.recommend(users, k=k, exclude_seen=True)
    full_ids, full_scores = model.recommend(users, k=n_items, exclude_seen=False)
    for r, u in enumerate(users):
        seen = set(user_items[u].indices.tolist())
        got = ids[r][ids[r] >= 0]
        assert not seen & set(got.tolist()), f"user {u}: seen items recommended {sorted(seen & set(got.tolist()))}"
        keep = ~np.isin(full_ids[r], list(seen)) & (full_ids[r] >= 0)
        want = full_scores[r][keep][:k]
        np.testing.assert_allclose(
            scores[r][: len(want)], want, rtol=1e-5, atol=1e-6, err_msg=f"user {u}: not the k best unseen scores"
        )
        n_valid = min(k, n_items - len(seen))
        assert (ids[r][:n_valid] >= 0).all() and (ids[r][n_valid:] == -1).all(), f"user {u}: wrong padding"
    # an explicit matrix replaces the training matrix for exclusion
    u = int(users[0])
    block = np.asarray(full_ids[0][:2])
    custom = sp.csr_matrix((np.ones(len(block), np.float32), (np.full(len(block), u), block)), shape=user_items.shape)
    ids_c, _ = model.recommend(u, k=k, exclude_seen=True, user_items=custom)
    assert not set(block.tolist()) & set(ids_c.tolist()), "user_items= exclusions ignored"
    seen_u = user_items[u].indices
    top_unseen = full_ids[0][~np.isin(full_ids[0], block)][:k]
    if np.isin(top_unseen, seen_u).any():
        assert np.isin(ids_c, seen_u).any(), "user_items= must replace, not add to, the training matrix"


def _check_allow_list(model: Recommender, users: np.ndarray, n_items: int) -> None:
    rng = np.random.default_rng(0)
    allowed = np.sort(rng.choice(n_items, size=min(5, n_items), replace=False))
    k = len(allowed) + 3
    ids, scores = model.recommend(users, k=k, exclude_seen=False, items=allowed)
    valid = ids >= 0
    assert np.isin(ids[valid], allowed).all(), "items outside the allow-list returned"
    assert valid.sum(axis=1).tolist() == [len(allowed)] * len(users), "allowed items missing"
    assert (ids[:, len(allowed) :] == -1).all() and np.isneginf(scores[:, len(allowed) :]).all(), "bad padding"
    with pytest.raises(InputError):
        model.recommend(users, k=3, items=np.array([n_items]))


def _check_k_beyond_catalogue(model: Recommender, users: np.ndarray, n_items: int) -> None:
    ids, scores = model.recommend(users, k=n_items + 4, exclude_seen=False)
    # k is capped at the catalogue (a huge k must not size the result: reliability issue, defect 5)
    assert ids.shape == (len(users), n_items), "k > catalogue must return one slot per item"
    assert (np.sort(ids, axis=1) == np.arange(n_items)).all(), "every item must be ranked once"


def _check_unknown_user(model: Recommender, n_users: int) -> None:
    for bad in (n_users, -1):
        with pytest.raises(InputError, match=str(n_users)):
            model.recommend(bad, k=3)
    with pytest.raises(InputError):
        model.recommend(np.array([0.5]), k=3)


def _check_round_trip(model: Recommender, users: np.ndarray, k: int, tmp: Path) -> None:
    path = tmp / "model.npz"
    model.save(path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {name: z[name] for name in z.files}  # would raise if anything needed pickle
    assert not any(a.dtype == object for a in arrays.values()), "object arrays in the saved file"
    want = model.recommend(users, k=k)
    for loader in (Recommender.load, type(model).load):
        loaded = loader(path)
        assert type(loaded) is type(model), f"{loader} returned {type(loaded).__name__}"
        assert loaded.get_params() == model.get_params(), "hyperparameters not restored"
        got = loaded.recommend(users, k=k)
        np.testing.assert_array_equal(got[0], want[0], err_msg="ids differ after load")
        np.testing.assert_array_equal(got[1], want[1], err_msg="scores differ after load")
        np.testing.assert_array_equal(
            loaded.recommend(users, k=k, exclude_seen=False)[0],
            model.recommend(users, k=k, exclude_seen=False)[0],
            err_msg="ids without exclusion differ after load",
        )


def check_recommender_contract(
    make_model: Callable[[], Recommender],
    user_items: sp.spmatrix,
    k: int = 10,
    fit_kwargs: dict[str, Any] | None = None,
) -> Recommender:
    """Run every contract check on ``make_model()`` fitted to ``user_items``.

    Returns the fitted model so that callers can add model-specific checks.
    """
    user_items = sp.csr_matrix(user_items)
    n_users, n_items = user_items.shape
    users = _users(n_users)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = make_model()
        _check_not_fitted(model, tmp)
        fitted = model.fit(user_items, **(fit_kwargs or {}))
        assert fitted is model, "fit must return self"
        _check_shapes(model, users, k)
        _check_exclude_seen(model, user_items, users, k)
        _check_allow_list(model, users, n_items)
        _check_k_beyond_catalogue(model, users, n_items)
        _check_unknown_user(model, n_users)
        _check_round_trip(model, users, k, tmp)
    return model

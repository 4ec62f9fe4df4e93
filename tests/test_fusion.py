"""Fusion of vector families (recsys.models.fusion): one index, the weighted sum of family scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.errors import InputError
from recsys.models.base import Recommender
from recsys.models.fixed_vectors import FixedVectors
from recsys.models.fusion import FusedVectors, fuse, score_scale, select_weights, weight_grid


def _random_model(n_users: int, n_items: int, dim: int, seed: int, seen: sp.csr_matrix) -> FixedVectors:
    rng = np.random.default_rng(seed)
    return FixedVectors.from_vectors(rng.normal(size=(n_users, dim)), rng.normal(size=(n_items, dim)) * (seed + 1), seen)


@pytest.fixture(scope="module")
def data() -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """Users who like one of 4 item blocks; train / valid / test drawn from their block."""
    rng = np.random.default_rng(0)
    n_users, n_items = 200, 80
    taste = rng.integers(0, 4, n_users)
    mats = []
    for n in (8, 2, 2):
        rows = np.repeat(np.arange(n_users), n)
        cols = (taste[rows] * 20 + rng.integers(0, 20, len(rows))) % n_items
        mats.append(sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items)))
    train, valid, test = mats
    valid = valid - valid.multiply(train > 0)
    test = test - test.multiply((train + valid) > 0)
    return train.tocsr(), sp.csr_matrix(valid), sp.csr_matrix(test)


def _block_model(train: sp.csr_matrix) -> FixedVectors:
    """A model that knows the item blocks: item one-hot block vectors, users their block histogram."""
    n_items = train.shape[1]
    v = np.zeros((n_items, 4), np.float32)
    v[np.arange(n_items), np.arange(n_items) // 20] = 1.0
    u = np.asarray(train @ v, np.float32)
    return FixedVectors.from_vectors(u, v, train)


def test_fused_scores_equal_the_weighted_sum_of_scaled_family_scores(data) -> None:
    train, _, _ = data
    a, b = _random_model(200, 80, 8, 1, train), _random_model(200, 80, 16, 2, train)
    fused = fuse([a, b], [0.3, 0.7], ["a", "b"])
    users = np.arange(50)
    expected = 0.3 * fused.scales[0] * a._score(users) + 0.7 * fused.scales[1] * b._score(users)
    np.testing.assert_allclose(fused._score(users), expected, rtol=1e-4, atol=1e-4)
    assert fused.dims == [8, 16] and fused.item_factors_.shape == (80, 24)
    # the scales put both families on one scale: the weights are shares of the ranking
    assert np.std(a._score(users)) * fused.scales[0] == pytest.approx(1.0, rel=0.2)


def test_weights_are_chosen_on_validation_and_never_lose_to_a_single_family(data, monkeypatch) -> None:
    train, valid, test = data
    good, noise = _block_model(train), _random_model(200, 80, 8, 3, train)
    import recsys.evaluation as ev

    seen: list[int] = []
    real = ev.evaluate
    monkeypatch.setattr(ev, "evaluate", lambda m, tr, te, **kw: (seen.append(te.nnz), real(m, tr, te, **kw))[1])
    fused, scores = select_weights([good, noise], train, valid, names=["good", "noise"], step=0.25)
    assert set(seen) == {valid.nnz}  # test was never looked at
    assert len(scores) == len(weight_grid(2, 0.25)) == 5
    best = max(scores.values())
    assert scores[tuple(fused.weights)] == best >= max(scores[(1.0, 0.0)], scores[(0.0, 1.0)])
    assert fused.weights[0] > fused.weights[1]  # the informative family carries the ranking


def test_fused_model_saves_and_loads_like_any_vector_model(data, tmp_path: Path) -> None:
    train, _, _ = data
    fused = fuse([_block_model(train), _random_model(200, 80, 8, 4, train)], [0.8, 0.2], ["block", "noise"])
    fused.save(tmp_path / "fused.npz")
    back = Recommender.load(tmp_path / "fused.npz")
    assert isinstance(back, FusedVectors) and back.families == ["block", "noise"] and back.weights == [0.8, 0.2]
    np.testing.assert_array_equal(back.recommend(np.arange(5), k=10)[0], fused.recommend(np.arange(5), k=10)[0])


def test_bad_fusions_are_refused(data) -> None:
    train, _, _ = data
    a = _random_model(200, 80, 8, 1, train)
    other = _random_model(200, 60, 8, 1, train[:, :60])
    with pytest.raises(InputError, match="one weight per model"):
        fuse([a, a], [1.0])
    with pytest.raises(InputError, match=">= 0"):
        fuse([a, a], [1.5, -0.5])
    with pytest.raises(InputError, match="share users and items"):
        fuse([a, other], [0.5, 0.5])
    assert score_scale(FixedVectors.from_vectors(np.zeros((200, 2)), np.zeros((80, 2)), train)) == 1.0


def test_publish_best_takes_the_best_validation_score_and_says_why() -> None:
    from recsys.models.fusion import choose_published

    name, reason = choose_published({"als": {"ndcg@10": 0.30}, "two-tower": {"ndcg@10": 0.32}, "bpr": {}})
    assert name == "two-tower" and "0.3200" in reason and "als 0.3000" in reason
    assert choose_published({"als": {"ndcg@10": 0.3}, "bpr": {"ndcg@10": 0.3}})[0] == "als"  # ties: train order
    with pytest.raises(InputError, match="publish to a family name"):
        choose_published({"als": {}}, "ndcg@10")


def test_publish_best_is_valid_config_only_with_a_trained_vector_family() -> None:
    from recsys.config import validate_config
    from recsys.errors import ConfigError

    cfg = validate_config({"models": {"train": ["als", "bpr"], "publish": "best"}})
    assert cfg.models.publish == "best"
    with pytest.raises(ConfigError, match="needs a trained vector model"):
        validate_config({"models": {"train": ["item-knn"], "publish": "best"}})

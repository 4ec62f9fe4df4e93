"""Every recommender honours the shared contract of tests/model_contract.py.

Models that live in optional or still-moving modules (MF needs ``implicit``; the
two-tower model needs ``torch``) are imported lazily and skipped with the reason when
they are not importable, so the contract never blocks on another area.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np
import pytest
import scipy.sparse as sp

from model_contract import check_recommender_contract
from recsys.models.base import Recommender
from recsys.models.baselines import ItemKNN, MostPopular


def _optional(module: str, name: str, **params) -> Callable[[], Recommender]:
    def make() -> Recommender:
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            pytest.skip(f"{module}.{name} not available: {e}")
        return cls(**params)

    return make


MODELS: dict[str, Callable[[], Recommender]] = {
    "MostPopular": lambda: MostPopular(),
    "MostPopular-weight": lambda: MostPopular(weighting="weight"),
    "ItemKNN": lambda: ItemKNN(n_neighbors=20),
    "ItemKNN-binary-shrink": lambda: ItemKNN(n_neighbors=5, shrinkage=2.0, binary=True, block_size=7),
    "ALS": _optional("recsys.models.als", "ALS", factors=8, iterations=3, num_threads=1, random_state=0),
    "BPR": _optional("recsys.models.bpr", "BPR", factors=8, iterations=5, num_threads=1, random_state=0),
    "TwoTower": _optional("recsys.models.two_tower", "TwoTower", dim=8, epochs=1, batch_size=64, seed=0, device="cpu"),
    "Item2Vec": _optional("recsys.models.item2vec", "Item2Vec", dim=8, epochs=2, window=2, seed=0),
}


def _synthetic() -> sp.csr_matrix:
    """60 users x 40 items with edge cases: an empty user and one who saw all but 3 items."""
    rng = np.random.default_rng(0)
    dense = (rng.random((60, 40)) < 0.15).astype(np.float32) * rng.integers(1, 6, (60, 40)).astype(np.float32)
    dense[5] = 0.0  # a user with no history
    dense[0] = 1.0
    dense[0, [3, 17, 29]] = 0.0  # only 3 unseen items: exclude_seen must pad with -1
    return sp.csr_matrix(dense)


@pytest.mark.parametrize("name", list(MODELS))
def test_contract_on_synthetic_edge_cases(name):
    check_recommender_contract(MODELS[name], _synthetic(), k=10)


@pytest.mark.parametrize("name", ["MostPopular", "ItemKNN", "ALS", "BPR", "Item2Vec"])
def test_contract_on_movielens_small(name, ml_small):
    check_recommender_contract(MODELS[name], ml_small.matrix("train"), k=20)


# --- the contract itself catches broken models ----------------------------------------------
class _LeaksSeen(MostPopular):
    """Ignores exclude_seen: must fail the exclusion check."""

    def recommend(self, user_indices, k=10, exclude_seen=True, user_items=None, items=None, batch_size=2048):
        return super().recommend(user_indices, k=k, exclude_seen=False, user_items=None, items=items)


class _ForgetsState(MostPopular):
    """Does not save its learned array: must fail the round-trip check."""

    _state_arrays = ()

    def _after_load(self) -> None:
        self.popularity_ = np.zeros(self.n_items_, np.float32)


@pytest.mark.parametrize(
    "make, msg",
    [(_LeaksSeen, "seen items recommended"), (_ForgetsState, "differ after load")],
)
def test_contract_rejects_broken_models(make, msg):
    with pytest.raises(AssertionError, match=msg):
        check_recommender_contract(make, _synthetic(), k=10)

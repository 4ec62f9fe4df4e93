"""Recommenders over vectors computed elsewhere, and the random floor to compare them with.

Why: many methods end in user and item vectors without being trained models here (content
profiles, content mapped into the CF space, a blended item table, another library's
factors). :class:`FixedVectors` wraps such vectors so they are evaluated, ranked and served
exactly like a trained :class:`~recsys.models.base.FactorModel`; :class:`RandomScores` is
the reproducible floor every such comparison reports.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.errors import InputError
from recsys.models.base import FactorModel, Recommender

__all__ = ["FixedVectors", "RandomScores"]


class FixedVectors(FactorModel):
    """A recommender over precomputed user and item vectors (scores are inner products).

    Lets any method that ends in vectors (content profiles, mapped content, a blended
    item table) be evaluated and served exactly like a trained factor model.
    """

    @classmethod
    def from_vectors(cls, user_vectors: np.ndarray, item_vectors: np.ndarray, user_items: sp.spmatrix) -> FixedVectors:
        """Wrap vectors; ``user_items`` gives what ``recommend(exclude_seen=True)`` removes."""
        u = np.asarray(user_vectors, np.float32)
        v = np.asarray(item_vectors, np.float32)
        if u.ndim != 2 or v.ndim != 2 or u.shape[1] != v.shape[1]:
            raise InputError(f"user and item vectors must be 2-D with equal width, got {u.shape} and {v.shape}")
        if user_items.shape != (len(u), len(v)):
            raise InputError(f"user_items has shape {user_items.shape}, expected {(len(u), len(v))}")
        model = cls()
        return model.fit(user_items, user_vectors=u, item_vectors=v)  # type: ignore[return-value]

    def _fit(self, user_items: sp.csr_matrix, **kwargs: Any) -> None:
        self.user_factors_ = kwargs["user_vectors"]
        self.item_factors_ = kwargs["item_vectors"]


class RandomScores(Recommender):
    """Uniform random scores, reproducible per (seed, batch of users); the floor to beat."""

    def __init__(self, random_state: int = 0) -> None:
        self.random_state = random_state

    def _fit(self, user_items: sp.csr_matrix, **kwargs: Any) -> None:
        pass

    def _score(self, user_indices: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([self.random_state, int(user_indices[0]) if len(user_indices) else 0, len(user_indices)])
        return rng.random((len(user_indices), self.n_items_), dtype=np.float32)

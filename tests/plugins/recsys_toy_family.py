"""A toy model family registered from outside ``recsys/``: what a plug-in author writes.

Used by tests/test_extending.py to show that a new family needs no edit inside the
library: this one module (the model and its ``register`` call) is enough for
``recsys train``, save/load in a fresh process, export and serving.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys.models.base import FactorModel
from recsys.models.registry import ModelFamily, register


class ToySVD(FactorModel):
    """Truncated SVD of the user x item matrix: ``user = U * s``, ``item = V``.

    Parameters
    ----------
    factors : int
        Rank of the decomposition.
    seed : int
        Seed of the randomized SVD.
    """

    def __init__(self, factors: int = 8, seed: int = 0) -> None:
        self.factors = factors
        self.seed = seed

    def _fit(self, user_items: sp.csr_matrix, **kwargs: object) -> None:
        from sklearn.utils.extmath import randomized_svd

        k = max(1, min(self.factors, min(user_items.shape) - 1))
        u, s, vt = randomized_svd(user_items.astype(np.float64), k, random_state=self.seed)
        self.user_factors_ = (u * s).astype(np.float32)
        self.item_factors_ = vt.T.astype(np.float32).copy()


register(ModelFamily("toy-svd", "recsys_toy_family:ToySVD", vectors=True, fold_in=True,
                     description="truncated SVD (a plug-in example)"), replace=True)

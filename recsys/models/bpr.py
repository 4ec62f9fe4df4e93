"""Bayesian Personalized Ranking (Rendle et al. 2009) wrapping ``implicit``, with fold-in.

implicit has no way to compute a vector for a user unseen at training time with BPR;
:meth:`BPR.recalculate_user` adds one (SGD on the BPR objective or a ridge fit, with
the item factors fixed).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from recsys.errors import ConfigError
from recsys.models.foldin import FoldInSpec
from recsys.models.mf import MFModel

log = logging.getLogger(__name__)


class BPR(MFModel):
    """Bayesian Personalized Ranking (Rendle et al. 2009) via ``implicit``.

    Only which items a user interacted with matters (values are ignored). implicit
    appends an item-bias column, so ``user_factors_``/``item_factors_`` have
    ``factors + 1`` columns (users hold a constant 1 there) and the inner product
    includes the bias.

    Parameters
    ----------
    factors : int
    learning_rate : float
    regularization : float
    iterations : int
        Epochs of SGD over the positive interactions.
    verify_negative_samples : bool
        Re-draw sampled negatives the user actually saw (slower, usually better).
    fold_in : {"sgd", "lstsq"}
        How :meth:`recalculate_user` fits a new user (see there).
    fold_in_steps : int
        SGD epochs over the user's history for ``fold_in="sgd"``.
    device, num_threads, random_state, show_progress
        As for :class:`ALS`.
    """

    def __init__(
        self,
        factors: int = 64,
        learning_rate: float = 0.01,
        regularization: float = 0.01,
        iterations: int = 100,
        verify_negative_samples: bool = True,
        fold_in: str = "sgd",
        fold_in_steps: int = 50,
        device: str = "auto",
        num_threads: int = 0,
        random_state: int = 42,
        show_progress: bool = False,
    ) -> None:
        self.factors = factors
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.iterations = iterations
        self.verify_negative_samples = verify_negative_samples
        self.fold_in = fold_in
        self.fold_in_steps = fold_in_steps
        self.device = device
        self.num_threads = num_threads
        self.random_state = random_state
        self.show_progress = show_progress

    def _make_implicit(self, use_gpu: bool) -> Any:
        from implicit.bpr import BayesianPersonalizedRanking

        if self.fold_in not in ("sgd", "lstsq"):
            raise ConfigError(f"fold_in must be 'sgd' or 'lstsq', got {self.fold_in!r}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        return BayesianPersonalizedRanking(**self._implicit_kwargs(use_gpu, "learning_rate", "verify_negative_samples"))

    def foldin_spec(self) -> FoldInSpec:
        """This model's fold-in (``fold_in`` solver, learning rate, regularization, seed)."""
        self._check_fitted()
        return FoldInSpec("bpr", solver=self.fold_in, learning_rate=float(self.learning_rate),
                          regularization=float(self.regularization), steps=int(self.fold_in_steps),
                          seed=int(self.random_state))

    def recalculate_user(self, item_indices: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Fold-in a user from their history with the item factors fixed.

        ``fold_in="sgd"`` (default) runs ``fold_in_steps`` epochs of the BPR objective on
        the single user: each positive against a uniformly drawn item the user did not
        see, learning rate and regularization as in training, seeded by
        ``random_state`` so the result is reproducible. ``fold_in="lstsq"`` instead
        solves a ridge regression of "seen = 1, unseen = 0" on the item factors (one
        linear solve, deterministic, slightly less faithful to the ranking objective).
        ``weights`` > 0 mark the items; their values are ignored, as in training.
        The solve lives in :mod:`recsys.models.foldin` (the Retriever runs the same code).

        Returns
        -------
        float32 array of length ``factors + 1`` (last entry the constant 1 that
        multiplies the item bias)
        """
        return self._foldin().user(item_indices, weights)

"""Bayesian Personalized Ranking (Rendle et al. 2009) wrapping ``implicit``, with fold-in.

implicit has no way to compute a vector for a user unseen at training time with BPR;
:meth:`BPR.recalculate_user` adds one (SGD on the BPR objective or a ridge fit, with
the item factors fixed).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy.special import expit

from recsys.errors import ConfigError
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

    def recalculate_user(self, item_indices: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Fold-in a user from their history with the item factors fixed.

        ``fold_in="sgd"`` (default) runs ``fold_in_steps`` epochs of the BPR objective on
        the single user: each positive against a uniformly drawn item the user did not
        see, learning rate and regularization as in training, seeded by
        ``random_state`` so the result is reproducible. ``fold_in="lstsq"`` instead
        solves a ridge regression of "seen = 1, unseen = 0" on the item factors (one
        linear solve, deterministic, slightly less faithful to the ranking objective).
        ``weights`` > 0 mark the items; their values are ignored, as in training.

        Returns
        -------
        float32 array of length ``factors + 1`` (last entry the constant 1 that
        multiplies the item bias)
        """
        items, _ = self._check_history(item_indices, weights)
        Y = self.item_factors_[:, :-1].astype(np.float64)
        bias = self.item_factors_[:, -1].astype(np.float64)
        d = Y.shape[1]
        if self.fold_in == "lstsq":
            # minimise sum_i (p_i - x.y_i - b_i)^2 + reg |x|^2 over all items
            target = -bias
            target[items] += 1.0
            A = Y.T @ Y + np.eye(d) * max(float(self.regularization), 1e-6)
            x = np.linalg.solve(A, Y.T @ target)
        else:
            rng = np.random.default_rng(self.random_state)
            seen = np.zeros(self.n_items_, bool)
            seen[items] = True
            n_unseen = self.n_items_ - len(items)
            x = (rng.random(d) - 0.5) / d
            lr, reg = float(self.learning_rate), float(self.regularization)
            for _ in range(int(self.fold_in_steps)):
                pos = rng.permutation(items)
                neg = rng.integers(0, self.n_items_, size=len(pos))
                if n_unseen > 0:
                    bad = seen[neg]
                    while bad.any():  # re-draw negatives the user saw
                        neg[bad] = rng.integers(0, self.n_items_, size=int(bad.sum()))
                        bad = seen[neg]
                for i, j in zip(pos, neg):
                    diff = Y[i] - Y[j]
                    z = x @ diff + bias[i] - bias[j]
                    g = expit(-z)  # d/dz log(sigmoid(z)) = sigmoid(-z)
                    x += lr * (g * diff - reg * x)
        return np.r_[x, 1.0].astype(np.float32)

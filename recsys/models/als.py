"""Implicit-feedback ALS (Hu, Koren & Volinsky 2008) wrapping ``implicit``, with fold-in.

Why here and not in :mod:`recsys.models.mf`: one model per module keeps each short; the
fit loop (device, validation every N iterations, best iteration) is shared via
:class:`~recsys.models.mf.MFModel`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.errors import ConfigError
from recsys.models import weighting
from recsys.models.foldin import FoldInSpec
from recsys.models.mf import MFModel

log = logging.getLogger(__name__)


class ALS(MFModel):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008) via ``implicit``.

    Parameters
    ----------
    factors : int
        Embedding dimension.
    regularization : float
        L2 penalty (unscaled, as in implicit). Strong values (10-100) with many factors
        are often best on MovieLens (Rendle et al. 2022).
    alpha : float
        Confidence scale: ``c = alpha * weighting(r)`` for observed entries, 1 elsewhere.
    iterations : int
    weighting : {"linear", "log", "binary", "bm25", "tfidf"}
        See :mod:`recsys.models.weighting`.
    eps, bm25_k1, bm25_b : float
        Parameters of the ``log`` and ``bm25`` schemes.
    use_cg : bool
        implicit's conjugate-gradient solver (faster, approximate).
    device : {"auto", "cpu", "cuda"}
    num_threads : int
        0 = all cores.
    random_state : int
        Seed of the factor initialisation.
    show_progress : bool
        tqdm bar over iterations.
    """

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.01,
        alpha: float = 1.0,
        iterations: int = 15,
        weighting: str = "linear",
        eps: float = 1.0,
        bm25_k1: float = 100.0,
        bm25_b: float = 0.8,
        use_cg: bool = True,
        device: str = "auto",
        num_threads: int = 0,
        random_state: int = 42,
        show_progress: bool = False,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.weighting = weighting
        self.eps = eps
        self.bm25_k1 = bm25_k1
        self.bm25_b = bm25_b
        self.use_cg = use_cg
        self.device = device
        self.num_threads = num_threads
        self.random_state = random_state
        self.show_progress = show_progress

    _state_arrays = ("user_factors_", "item_factors_", "length_norm_")

    def _prepare(self, user_items: sp.csr_matrix) -> sp.csr_matrix:
        weighting.check_scheme(self.weighting)
        if not self.alpha > 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha!r}")
        self.length_norm_ = (
            weighting.item_length_norm(user_items, self.bm25_b)
            if self.weighting == "bm25"
            else np.ones(user_items.shape[1], np.float32)
        )
        # linear: hand the matrix to implicit untouched (alpha is applied there, in its one copy)
        out = weighting.transform(
            user_items, self.weighting, eps=self.eps, K1=self.bm25_k1, B=self.bm25_b, length_norm=self.length_norm_
        )
        self._alpha_applied = out is not user_items and not np.shares_memory(out.data, user_items.data)
        if self._alpha_applied and self.alpha != 1.0:
            # the weighted matrix is already our own copy: scale it in place (the same float32
            # product implicit computes) instead of letting implicit make a second copy
            out.data *= np.float32(self.alpha)
        return out

    def _make_implicit(self, use_gpu: bool) -> Any:
        from implicit.als import AlternatingLeastSquares

        kw = self._implicit_kwargs(use_gpu, "alpha", "use_cg")
        if getattr(self, "_alpha_applied", False):
            kw["alpha"] = 1.0
        return AlternatingLeastSquares(**kw)

    def foldin_spec(self) -> FoldInSpec:
        """This model's fold-in: the exact normal equations with its weighting, ``alpha`` and ``λ``.

        Carries ``YᵀY`` of the trained item factors (and bm25's per-item length norm), so a
        bundle whose item vectors were blended with content still solves the trained objective.
        """
        self._check_fitted()
        y = np.asarray(self.item_factors_, np.float64)
        return FoldInSpec(
            "als", weighting=self.weighting, alpha=float(self.alpha), regularization=float(self.regularization),
            eps=float(self.eps), bm25_k1=float(self.bm25_k1), bm25_b=float(self.bm25_b), n_items=int(self.n_items_),
            gram=y.T @ y, length_norm=np.asarray(self.length_norm_, np.float32) if self.weighting == "bm25" else None,
        )

    def recalculate_user(self, item_indices: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Fold-in: the exact least-squares user vector for fixed item factors.

        Solves ``(YᵀY + Yᵀ(C_u - I)Y + λI) x = Yᵀ C_u p_u`` as implicit's
        ``recalculate_user`` does (Cholesky, not CG), with ``C_u = alpha * weighting(w)``
        computed exactly as for training users (:mod:`recsys.models.foldin`, the code the
        Retriever runs too). Cost ``O(n_u d² + d³)`` (``YᵀY`` is cached): milliseconds,
        so a new or changed user is served without retraining.

        Parameters
        ----------
        item_indices : int array
            Items of the user's history (duplicates are summed).
        weights : float array, optional
            Raw interaction values (ratings, counts) aligned with ``item_indices``;
            default 1 each.

        Returns
        -------
        float32 array of length ``factors``
        """
        return self._foldin().user(item_indices, weights)

    def _after_load(self) -> None:
        if not hasattr(self, "length_norm_"):
            self.length_norm_ = np.ones(self.n_items_, np.float32)

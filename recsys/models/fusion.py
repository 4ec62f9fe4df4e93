"""Fusion of vector families: one dot-product index serving a weighted sum of family scores.

Why: the families learn different things (ALS the co-occurrence structure, the two-tower
history and item features), and a weighted sum of their scores usually beats the best of
them. Serving a sum of scores would need one index per family and a merge; concatenating
the *weighted, scaled* user vectors with the item vectors instead gives

    [w_1 s_1 u_1, ..., w_F s_F u_F] . [v_1, ..., v_F] = sum_f w_f s_f (u_f . v_f)

so the fused model is an ordinary :class:`~recsys.models.base.FactorModel` (one index, the
same retriever, fold-in by pooling). ``s_f`` puts each family's scores on one scale (the
inverse standard deviation of its scores over a seeded sample of users and items), so the
weights ``w_f`` (summing to 1) mean "share of the ranking" whatever the families' norms.

The weights are chosen on the validation split only (:func:`select_weights`); the test split
is evaluated once afterwards by the caller, like any model.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.errors import InputError
from recsys.models.base import FactorModel

log = logging.getLogger(__name__)

__all__ = ["FusedVectors", "score_scale", "fuse", "select_weights", "choose_published"]


class FusedVectors(FactorModel):
    """Concatenated, weighted family vectors; scores are ``sum_f w_f s_f score_f``.

    Parameters
    ----------
    families : list of str
        Names of the fused families, in block order (recorded with the model).
    weights, scales : list of float
        ``w_f`` and ``s_f`` of each block.
    dims : list of int
        Width of each family's block (to split the vectors again).
    """

    def __init__(self, families: Sequence[str] = (), weights: Sequence[float] = (), scales: Sequence[float] = (),
                 dims: Sequence[int] = ()) -> None:
        self.families = list(families)
        self.weights = [float(w) for w in weights]
        self.scales = [float(s) for s in scales]
        self.dims = [int(d) for d in dims]

    def _fit(self, user_items: sp.csr_matrix, **kwargs: Any) -> None:
        self.user_factors_ = kwargs["user_vectors"]
        self.item_factors_ = kwargs["item_vectors"]


def _factors(model: Any) -> tuple[np.ndarray, np.ndarray]:
    if not hasattr(model, "user_factors_") or not hasattr(model, "item_factors_"):
        raise InputError(f"{type(model).__name__} has no user/item vectors; only vector families can be fused")
    return np.asarray(model.user_factors_, np.float32), np.asarray(model.item_factors_, np.float32)


def score_scale(model: Any, n_users: int = 256, n_items: int = 2048, seed: int = 0) -> float:
    """``1 / std`` of the model's scores over a seeded sample of users x items (1 if constant)."""
    u, v = _factors(model)
    rng = np.random.default_rng(seed)
    us = rng.choice(len(u), size=min(n_users, len(u)), replace=False)
    its = rng.choice(len(v), size=min(n_items, len(v)), replace=False)
    std = float(np.std(u[us] @ v[its].T))
    return 1.0 / std if std > 0 and np.isfinite(std) else 1.0


def fuse(models: Sequence[Any], weights: Sequence[float], names: Sequence[str] | None = None,
         scales: Sequence[float] | None = None, user_items: sp.spmatrix | None = None) -> FusedVectors:
    """The fused model of ``models`` with ``weights`` (and ``scales``, default :func:`score_scale`).

    Raises
    ------
    InputError
        Models over different users/items, a weight count that does not match, or negative weights.
    """
    if not models or len(weights) != len(models):
        raise InputError(f"fuse() needs one weight per model, got {len(weights)} weights for {len(models)} models")
    if any(w < 0 or not np.isfinite(w) for w in weights):
        raise InputError(f"fusion weights must be finite and >= 0, got {list(weights)}")
    facs = [_factors(m) for m in models]
    shapes = {(u.shape[0], v.shape[0]) for u, v in facs}
    if len(shapes) != 1:
        raise InputError(f"fused models must share users and items, got (n_users, n_items) {sorted(shapes)}")
    scales = [score_scale(m) for m in models] if scales is None else list(scales)
    u = np.concatenate([w * s * uf for (uf, _), w, s in zip(facs, weights, scales)], axis=1).astype(np.float32)
    v = np.concatenate([vf for _, vf in facs], axis=1).astype(np.float32)
    seen = user_items if user_items is not None else getattr(models[0], "user_items_", None)
    if seen is None:
        seen = sp.csr_matrix((u.shape[0], v.shape[0]), dtype=np.float32)
    names = list(names) if names is not None else [type(m).__name__.lower() for m in models]
    model = FusedVectors(names, weights, scales, [uf.shape[1] for uf, _ in facs])
    return model.fit(seen, user_vectors=u, item_vectors=v)  # type: ignore[return-value]


def weight_grid(n_families: int, step: float = 0.1) -> list[tuple[float, ...]]:
    """Every weight vector on a ``step`` grid of the simplex (weights >= 0 summing to 1)."""
    n = int(round(1 / step))
    return [tuple(c / n for c in combo) for combo in itertools.product(range(n + 1), repeat=n_families)
            if sum(combo) == n]


def select_weights(models: Sequence[Any], train: sp.csr_matrix, valid: sp.csr_matrix, *,
                   names: Sequence[str] | None = None, metric: str = "ndcg@10", step: float = 0.1,
                   users: np.ndarray | None = None) -> tuple[FusedVectors, dict[tuple[float, ...], float]]:
    """The fusion whose weights score best on ``valid`` (never pass the test split here).

    Every weight vector of :func:`weight_grid` is evaluated (a single family's weight 1 is
    on the grid, so the fusion is never worse on validation than the best family alone).

    Returns
    -------
    (fused model with the best weights, ``{weights: validation score}``)
    """
    from recsys.evaluation import evaluate

    scales = [score_scale(m) for m in models]
    k = int(metric.split("@", 1)[1]) if "@" in metric else 10
    scores: dict[tuple[float, ...], float] = {}
    for w in weight_grid(len(models), step):
        fused = fuse(models, w, names, scales, user_items=train)
        scores[w] = float(evaluate(fused, train, valid, ks=(k,), users=users)[metric])
    best = max(scores, key=lambda w: (scores[w], -max(w)))  # ties: the most even blend
    log.info("fusion weights %s chosen on validation: %s=%.4f (single families: %s)", dict(zip(names or [], best)),
             metric, scores[best], {w: round(s, 4) for w, s in scores.items() if max(w) == 1.0})
    return fuse(models, best, names, scales, user_items=train), scores


def choose_published(valid_metrics: Mapping[str, Mapping[str, float]], metric: str = "ndcg@10") -> tuple[str, str]:
    """``[models] publish = "best"``: the model with the best **validation** ``metric``, and why.

    ``valid_metrics`` maps each candidate (the trained vector families in the order of
    ``[models] train``, then ``"fusion"`` when it is fused) to its validation metrics; the
    test split is never consulted. Ties go to the first candidate, so a fusion that only
    equals a single family on validation does not replace it.

    Raises
    ------
    InputError
        No candidate has the validation metric (no valid split, or another metric name).
    """
    scored = {name: float(m[metric]) for name, m in valid_metrics.items() if m and metric in m}
    if not scored:
        raise InputError(f'[models] publish = "best" needs validation {metric} of the trained vector models; '
                         f"none has it (is the valid split empty?); set publish to a family name")
    best = max(scored, key=lambda n: (scored[n], -list(scored).index(n)))
    others = ", ".join(f"{n} {s:.4f}" for n, s in scored.items() if n != best) or "no other candidate"
    return best, f"best validation {metric}: {best} {scored[best]:.4f} (vs {others})"

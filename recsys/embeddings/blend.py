"""Blend content vectors into the collaborative (CF) item space.

Why: retrieval scores items by ``user_vector . item_vector`` in the CF space, and a cold
item has no CF vector. We learn a map from content embedding to CF vector on the warm
items (whose CF vectors are known), apply it to cold items, and, for items with only a
few interactions (whose CF vectors are noisy), blend the two::

    v_i = w_i * cf_i + (1 - w_i) * map(content_i),     w_i = n_i / (n_i + k)

``n_i`` is the item's interaction count and ``k`` is tuned on validation data (``k = 0``
means pure CF for every warm item, so tuning can never make warm items worse than the
CF baseline on the validation split).

The result is an :class:`ItemVectorTable`: one vector per item (warm and cold) plus a
provenance flag per item saying where the vector came from.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recsys.device import resolve_device
from recsys.errors import BundleError, InputError, NotFittedError
from recsys.io import load_npz, save_npz

log = logging.getLogger(__name__)

#: provenance flags of an item vector
PROVENANCE = (
    "cf",                 # the collaborative vector, untouched
    "blend",              # w * cf + (1 - w) * mapped content (few interactions)
    "content",            # mapped content only (cold item)
    "two_tower_content",  # two-tower item tower run with the id embedding dropped
    "missing",            # neither interactions nor content: zero vector, never retrieved
)


def check_pair(content: np.ndarray, cf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as float32 2-D arrays with one row per item, finite; else :class:`InputError`."""
    content = np.asarray(content, dtype=np.float32)
    cf = np.asarray(cf, dtype=np.float32)
    if content.ndim != 2 or cf.ndim != 2:
        raise InputError(f"content and CF vectors must be 2-D, got {content.shape} and {cf.shape}")
    if len(content) != len(cf):
        raise InputError(f"content has {len(content)} rows but the CF table {len(cf)}; both must be indexed by item_idx")
    if not (np.isfinite(content).all() and np.isfinite(cf).all()):
        raise InputError("content or CF vectors contain NaN/inf")
    return content, cf


class RidgeMap:
    """Closed-form ridge regression content -> CF vector, with an intercept.

    The regularisation strength is chosen from ``alphas`` by exact leave-one-out error
    (one SVD serves every alpha), so no hand tuning is needed.

    Parameters
    ----------
    alphas : sequence of float
        Candidate L2 penalties.
    """

    def __init__(self, alphas: Sequence[float] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)) -> None:
        self.alphas = tuple(float(a) for a in alphas)

    def fit(self, x: np.ndarray, y: np.ndarray) -> RidgeMap:
        """Fit on warm items: ``x`` content (n, d_c), ``y`` CF vectors (n, d_cf)."""
        x, y = check_pair(x, y)
        if len(x) < 2:
            raise InputError("the content->CF map needs at least 2 warm items with content")
        if not self.alphas or min(self.alphas) <= 0:
            raise InputError(f"alphas must be positive, got {self.alphas}")
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        self.x_mean_, self.y_mean_ = x64.mean(0), y64.mean(0)
        xc, yc = x64 - self.x_mean_, y64 - self.y_mean_
        u, s, vt = np.linalg.svd(xc, full_matrices=False)
        uty = u.T @ yc
        loo = []
        for a in self.alphas:
            f = s**2 / (s**2 + a)
            h = (u**2) @ f  # diagonal of the hat matrix
            resid = yc - u @ (f[:, None] * uty)
            loo.append(float(np.mean((resid / np.maximum(1 - h, 1e-6)[:, None]) ** 2)))
        best = int(np.argmin(loo))
        self.alpha_ = self.alphas[best]
        self.loo_mse_ = dict(zip(self.alphas, loo))
        self.coef_ = (vt.T @ ((s / (s**2 + self.alpha_))[:, None] * uty)).astype(np.float32)
        self.intercept_ = (self.y_mean_ - self.x_mean_ @ self.coef_).astype(np.float32)
        log.info("ridge content->CF: alpha=%g (LOO MSE %.4g), %d warm items", self.alpha_, loo[best], len(x))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Mapped CF vectors for content rows ``x``."""
        if not hasattr(self, "coef_"):
            raise NotFittedError("RidgeMap is not fitted; call fit() first")
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.coef_.shape[0]:
            raise InputError(f"content must be (n, {self.coef_.shape[0]}), got {x.shape}")
        return (x @ self.coef_ + self.intercept_).astype(np.float32)

    transform = predict  # the mapper interface of recsys.embeddings.mappers


class MLPMap:
    """A small MLP content -> CF vector (one hidden layer), the optional non-linear map.

    Trained with MSE and Adam on CPU/GPU, early-stopped on a held-out 10% of the warm
    items. Useful when the content space is richer than a linear map can exploit; on
    small catalogues ridge is usually as good and is the default.
    """

    def __init__(self, hidden: int = 256, epochs: int = 200, lr: float = 1e-3, weight_decay: float = 1e-4,
                 dropout: float = 0.1, patience: int = 10, random_state: int = 0, device: str = "cpu") -> None:
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.patience = patience
        self.random_state = random_state
        self.device = device

    def fit(self, x: np.ndarray, y: np.ndarray) -> MLPMap:
        import torch  # optional and heavy: the ridge map and importing this module need no torch

        x, y = check_pair(x, y)
        if len(x) < 10:
            raise InputError("the MLP content->CF map needs at least 10 warm items; use RidgeMap")
        dev = resolve_device(self.device)
        g = torch.Generator().manual_seed(self.random_state)
        torch.manual_seed(self.random_state)
        perm = torch.randperm(len(x), generator=g).numpy()
        n_val = max(1, len(x) // 10)
        val, tr = perm[:n_val], perm[n_val:]
        net = torch.nn.Sequential(
            torch.nn.Linear(x.shape[1], self.hidden), torch.nn.ReLU(), torch.nn.Dropout(self.dropout),
            torch.nn.Linear(self.hidden, y.shape[1]),
        ).to(dev)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
        best, best_state, bad = np.inf, None, 0
        for _ in range(self.epochs):
            net.train()
            for b in torch.randperm(len(tr), generator=g).split(256):
                idx = torch.as_tensor(tr[b.numpy()], device=dev)
                loss = torch.nn.functional.mse_loss(net(xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                v = float(torch.nn.functional.mse_loss(net(xt[val]), yt[val]))
            if v < best - 1e-7:
                best, bad = v, 0
                best_state = {k: t.detach().clone() for k, t in net.state_dict().items()}
            else:
                bad += 1
                if bad >= self.patience:
                    break
        net.load_state_dict(best_state)
        self.net_ = net.cpu().eval()
        self.val_mse_ = best
        log.info("MLP content->CF: validation MSE %.4g", best)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        import torch  # optional and heavy, as in fit

        if not hasattr(self, "net_"):
            raise NotFittedError("MLPMap is not fitted; call fit() first")
        with torch.no_grad():
            return self.net_(torch.from_numpy(np.asarray(x, np.float32))).numpy().astype(np.float32)

    transform = predict


@dataclass
class ItemVectorTable:
    """One vector per item (warm and cold) with where each came from.

    Attributes
    ----------
    vectors : float32 (n_items, d)
    provenance : str array (n_items,)
        One of :data:`PROVENANCE` per item.
    blend_weight : float32 (n_items,)
        Weight of the CF vector (1 = pure CF, 0 = pure content).
    meta : dict
        Free-form facts to persist (k, alpha, encoder model id ...).
    """

    vectors: np.ndarray
    provenance: np.ndarray
    blend_weight: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.vectors = np.asarray(self.vectors, np.float32)
        self.provenance = np.asarray(self.provenance, dtype="U32")
        self.blend_weight = np.asarray(self.blend_weight, np.float32)
        n = len(self.vectors)
        if self.vectors.ndim != 2 or self.provenance.shape != (n,) or self.blend_weight.shape != (n,):
            raise InputError("vectors, provenance and blend_weight must describe the same items")
        unknown = set(np.unique(self.provenance)) - set(PROVENANCE)
        if unknown:
            raise InputError(f"unknown provenance {sorted(unknown)}; allowed: {PROVENANCE}")

    @property
    def source(self) -> np.ndarray:
        """Alias of :attr:`provenance` (the per-item "where did this vector come from" flag)."""
        return self.provenance

    def counts(self) -> dict[str, int]:
        """How many items carry each provenance flag."""
        vals, cnt = np.unique(self.provenance, return_counts=True)
        return {str(v): int(c) for v, c in zip(vals, cnt)}

    def save(self, path: str | os.PathLike) -> None:
        """Write ``vectors``, ``provenance``, ``blend_weight`` (+ meta JSON) to one npz."""
        save_npz(path, vectors=self.vectors, provenance=self.provenance, blend_weight=self.blend_weight,
                 meta=np.array(json.dumps(self.meta, default=str)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ItemVectorTable:
        try:
            z = load_npz(path)
            return cls(z["vectors"], z["provenance"], z["blend_weight"], json.loads(str(z["meta"])))
        except (OSError, ValueError, KeyError) as e:
            raise BundleError(f"{path} is not an item vector table: {e}") from e


def blend_weights(counts: np.ndarray, k: float) -> np.ndarray:
    """``w = n / (n + k)``: the CF vector's share grows with the interaction count."""
    n = np.asarray(counts, dtype=np.float64)
    if k < 0:
        raise InputError(f"blend k must be >= 0, got {k}")
    if k == 0:
        return (n > 0).astype(np.float32)
    return (n / (n + k)).astype(np.float32)


class ContentBlender:
    """Fit the content->CF map on warm items and build the blended item-vector table.

    Parameters
    ----------
    k : float
        Blend constant of ``w = n / (n + k)``; tune it with :meth:`tune_k`.
    mapper : {"ridge", "knn", "blend", "mlp"} or an object with ``fit(x, y)`` / ``predict(x)``
        Names are built by :func:`recsys.embeddings.mappers.make_mapper`; ``"auto"`` is
        not a mapper: choose one with :func:`~recsys.embeddings.mappers.select_mapper`
        and pass ``selection.make()``.
    min_count : int
        Warm items with at least this many interactions train the map (CF vectors of
        items seen once or twice are mostly regularisation noise).
    mapper_params : dict, optional
        Passed to the named mapper (e.g. ``{"k": 20}`` for ``"knn"``).
    cold_scale : float
        Multiplier of the mapped vector of items without interactions. Ridge predictions
        are shrunk towards the mean item, so their length (which is what lets an item
        outscore others for every user) is a free exposure knob: a uniform factor leaves
        the ranking *among* cold items unchanged but decides how often they displace warm
        items. :meth:`tune` picks it on validation together with ``k``.
    """

    def __init__(self, k: float = 0.0, mapper: Any = "ridge", min_count: int = 1, mapper_params: dict[str, Any] | None = None,
                 cold_scale: float = 1.0) -> None:
        self.k = k
        self.mapper = mapper
        self.min_count = min_count
        self.mapper_params = mapper_params
        self.cold_scale = cold_scale

    def _make_mapper(self) -> Any:
        if isinstance(self.mapper, str):
            from recsys.embeddings.mappers import make_mapper  # mappers builds on this module's RidgeMap

            return make_mapper(self.mapper, **(self.mapper_params or {}))
        if hasattr(self.mapper, "fit") and hasattr(self.mapper, "predict"):
            return self.mapper
        raise InputError(f"mapper must be a mapper name or an object with fit/predict, got {self.mapper!r}")

    def fit(self, content: np.ndarray, cf: np.ndarray, counts: np.ndarray) -> ContentBlender:
        """Learn the map from the items with content and ``counts >= min_count``.

        Parameters
        ----------
        content : float32 (n_items, d_c)
            Row ``i`` is item ``i``'s content vector (zero row = no content).
        cf : float32 (n_items, d_cf)
            CF item vectors (rows of cold items are ignored).
        counts : int (n_items,)
            Training interactions per item.
        """
        content, cf = check_pair(content, cf)
        counts = np.asarray(counts)
        if counts.shape != (len(content),):
            raise InputError(f"counts must have one entry per item ({len(content)}), got shape {counts.shape}")
        has_content = np.linalg.norm(content, axis=1) > 0
        train = has_content & (counts >= max(self.min_count, 1))
        if train.sum() < 2:
            raise InputError(f"only {int(train.sum())} warm items have content and >= {self.min_count} interactions; cannot fit the map")
        self.mapper_ = self._make_mapper().fit(content[train], cf[train])
        self.n_train_items_ = int(train.sum())
        return self

    def map_content(self, content: np.ndarray) -> np.ndarray:
        """Content vectors mapped into the CF space (zero rows stay zero)."""
        if not hasattr(self, "mapper_"):
            raise NotFittedError("ContentBlender is not fitted; call fit() first")
        content = np.asarray(content, np.float32)
        out = self.mapper_.predict(content)
        out[np.linalg.norm(content, axis=1) == 0] = 0.0
        return out

    def transform(self, content: np.ndarray, cf: np.ndarray, counts: np.ndarray, k: float | None = None,
                  mapped: np.ndarray | None = None, cold_scale: float | None = None) -> ItemVectorTable:
        """The blended table for every item (``k`` overrides ``self.k``; ``mapped`` reuses a map)."""
        content, cf = check_pair(content, cf)
        k = self.k if k is None else k
        cold_scale = self.cold_scale if cold_scale is None else float(cold_scale)
        if not cold_scale > 0:
            raise InputError(f"cold_scale must be > 0, got {cold_scale}")
        counts = np.asarray(counts)
        mapped = self.map_content(content) if mapped is None else mapped
        has_content = np.linalg.norm(content, axis=1) > 0
        warm = counts > 0
        w = blend_weights(counts, k)
        w[warm & ~has_content] = 1.0  # nothing to blend with
        vectors = w[:, None] * cf + (1 - w)[:, None] * mapped
        vectors[~warm] *= cold_scale
        prov = np.full(len(cf), "missing", dtype="U32")
        prov[warm] = "cf"
        prov[warm & has_content & (w < 1)] = "blend"
        prov[~warm & has_content] = "content"
        vectors[prov == "missing"] = 0.0
        table = ItemVectorTable(vectors, prov, w, {"k": float(k), "cold_scale": cold_scale, "min_count": self.min_count,
                                                   "alpha": getattr(self.mapper_, "alpha_", None)})
        log.info("item vector table: %s", table.counts())
        return table

    def tune(self, content: np.ndarray, cf: np.ndarray, counts: np.ndarray, metric: Callable[[ItemVectorTable], float],
             k_grid: Sequence[float] = (0, 1, 2, 5, 10, 20, 50), scale_grid: Sequence[float] = (0.25, 0.5, 1.0),
             min_gain: float = 0.01) -> dict[tuple[float, float], float]:
        """Choose ``k`` and ``cold_scale`` maximising ``metric(table)`` (e.g. validation NDCG).

        Sets ``self.k`` and ``self.cold_scale``. Ties go to the smaller ``k`` (closer to
        pure CF) and the larger scale (more exposure for new items). When ``0`` is in
        ``k_grid``, a ``k > 0`` is kept only if it beats ``k = 0`` (same scale) by at least
        ``min_gain`` relative: validation differences below that are noise, and chasing
        them costs warm-item quality on the test split.

        Returns
        -------
        dict ``(k, cold_scale) -> score`` for every grid point
        """
        if min_gain < 0:
            raise InputError(f"min_gain must be >= 0, got {min_gain}")
        mapped = self.map_content(content)
        scores = {(float(k), float(s)): float(metric(self.transform(content, cf, counts, k=k, mapped=mapped, cold_scale=s)))
                  for k in sorted(k_grid) for s in sorted(scale_grid)}
        k, s = max(scores, key=lambda ks: (scores[ks], -ks[0], ks[1]))
        if k != 0.0 and (0.0, s) in scores and scores[(k, s)] < scores[(0.0, s)] * (1 + min_gain):
            log.info("blend k=%g gains < %.1f%% over pure CF on validation; keeping k=0", k, 100 * min_gain)
            k = 0.0
        self.k, self.cold_scale = k, s
        log.info("blend tuned: %s -> k=%g, cold_scale=%g", {f"{a:g},{b:g}": round(v, 5) for (a, b), v in scores.items()}, k, s)
        return scores

    def tune_k(self, content: np.ndarray, cf: np.ndarray, counts: np.ndarray,
               metric: Callable[[ItemVectorTable], float], grid: Sequence[float] = (0, 1, 2, 5, 10, 20, 50),
               min_gain: float = 0.01) -> dict[float, float]:
        """:meth:`tune` over ``k`` only (``cold_scale`` kept); returns ``k -> score``."""
        scores = self.tune(content, cf, counts, metric, k_grid=grid, scale_grid=(self.cold_scale,), min_gain=min_gain)
        return {k: v for (k, _), v in scores.items()}

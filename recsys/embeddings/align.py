"""Aligned retrains and version-to-version drift: orthogonal Procrustes, drift, churn, exposure.

Why: every retrain starts from random factors, so the item vectors of version N+1 are an
arbitrary rotation (plus noise) of version N's. Anything downstream that caches vectors
(similar-item caches, features of other models, drift dashboards) breaks at each publish.
A dot-product model is invariant under one orthogonal ``R`` applied to users *and* items
(``(uR)·(yR) = u·y``), so we can rotate the new vectors into the previous version's space
without changing a single score: ``R`` minimises ``‖Y_new[shared] R - Y_prev[shared]‖_F``
over the items both versions know (Schönemann 1966; ``scipy.linalg.orthogonal_procrustes``).
A rotation also keeps every norm, so a norm-ranged index sees the same ranges.

What is rotated: the embedding columns. Families whose vectors carry a bias column (BPR:
items ``[y | b]``, users ``[x | 1]``) keep that trailing column untouched
(``fixed_columns=1``), which again leaves every score unchanged. ALS's fold-in Gram
``YᵀY`` becomes ``RᵀYᵀYR`` (:func:`rotate_foldin`), so a folded-in user lands in the rotated
space too.

Metrics, each comparing the previous bundle with the new vectors by external id:

* **drift** (:func:`item_drift`): mean cosine of the shared items' vectors, before and after
  the rotation (after ~1 means downstream caches stay valid);
* **churn** (:func:`topk_churn`): mean top-10 overlap of exact dot-product rankings for a
  fixed, seeded sample of users present in both versions, every user's seen items of
  *both* versions excluded in both rankings (so behaviour changes do not count as churn);
* **new-item exposure**: share of the new version's top-10 slots (same users) that go to
  items the previous version did not have.

When alignment is impossible it is skipped with a logged reason, never forced: a
different dimension (the retrain changed ``factors``), a different similarity, or fewer
than ``min_shared`` shared items.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.linalg import orthogonal_procrustes

from recsys.data.idmap import IdMap
from recsys.errors import InputError
from recsys.models.foldin import FoldInSpec

log = logging.getLogger(__name__)

#: default smallest number of shared items a rotation is fitted on
MIN_SHARED = 50


@dataclass
class Alignment:
    """A fitted rotation (or the reason there is none) and the drift it measured.

    ``rotation`` is ``(d_rot, d_rot)`` over the leading ``d_rot = dim - fixed_columns``
    columns; ``None`` when skipped (``skipped`` says why).
    """

    rotation: np.ndarray | None
    fixed_columns: int = 0
    n_shared: int = 0
    cosine_before: float = float("nan")
    cosine_after: float = float("nan")
    skipped: str | None = None

    @property
    def applied(self) -> bool:
        return self.rotation is not None

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Rotate rows of ``vectors`` (users or items of the new version); float32 copy."""
        v = np.asarray(vectors, np.float32)
        if self.rotation is None:
            return v.copy()
        d = self.rotation.shape[0]
        if v.ndim != 2 or v.shape[1] != d + self.fixed_columns:
            raise InputError(f"vectors of shape {v.shape} do not match a rotation over {d} + {self.fixed_columns} columns")
        out = v.copy()
        out[:, :d] = (v[:, :d].astype(np.float64) @ self.rotation).astype(np.float32)
        return out

    def metrics(self) -> dict[str, float]:
        """Numbers for MLflow (``align_*``); NaN drift when there was nothing to compare."""
        return {"align_applied": float(self.applied), "align_shared_items": float(self.n_shared),
                "drift_cosine_unaligned": self.cosine_before, "drift_cosine_aligned": self.cosine_after}

    def as_dict(self) -> dict[str, Any]:
        """JSON-able record (the bundle manifest's ``extra.align``); the matrix stays out."""
        return {"applied": self.applied, "skipped": self.skipped, "n_shared": self.n_shared,
                "fixed_columns": self.fixed_columns, "cosine_before": _num(self.cosine_before),
                "cosine_after": _num(self.cosine_after)}


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 6)


def shared_indices(prev_ids: IdMap, new_ids: IdMap) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the same external ids in both maps: ``(prev_rows, new_rows)``, in new-map order."""
    prev_rows = prev_ids.to_index(new_ids.ids, missing="ignore")
    new_rows = np.flatnonzero(prev_rows >= 0)
    return prev_rows[new_rows].astype(np.int64), new_rows.astype(np.int64)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean row-wise cosine of two equally shaped arrays (zero rows count as 0)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    cos = np.divide((a64 * b64).sum(1), den, out=np.zeros(len(a64)), where=den > 0)
    return float(cos.mean()) if len(cos) else float("nan")


def fit_alignment(new_items: np.ndarray, new_ids: IdMap, prev_items: np.ndarray, prev_ids: IdMap, *,
                  fixed_columns: int = 0, min_shared: int = MIN_SHARED, fit_mask: np.ndarray | None = None) -> Alignment:
    """Fit the rotation taking the new item vectors onto the previous version's.

    Parameters
    ----------
    new_items, prev_items : arrays (n, d)
        Item vectors of the new version and of the previous bundle.
    new_ids, prev_ids : IdMap
        External ids of their rows (items are matched by id, never by row).
    fixed_columns : int
        Trailing columns left as they are (1 for BPR's bias column).
    min_shared : int
        Fewer shared items than this (among ``fit_mask``) skips the alignment: a rotation
        of ``d`` dims fitted on a handful of items is noise.
    fit_mask : bool array (n_new,), optional
        New items the rotation may be fitted on (say, collaborative vectors only: content-
        mapped cold items carry the map's error). Drift is reported on the same items.

    Returns
    -------
    Alignment
        With ``rotation=None`` and ``skipped`` set (logged) when it cannot be fitted.
    """
    new_items, prev_items = np.asarray(new_items), np.asarray(prev_items)
    if new_items.ndim != 2 or prev_items.ndim != 2:
        raise InputError(f"item vectors must be 2-D, got {new_items.shape} and {prev_items.shape}")
    if len(new_ids) != len(new_items) or len(prev_ids) != len(prev_items):
        raise InputError("item ids and item vectors must align row for row")
    if fixed_columns < 0 or fixed_columns >= new_items.shape[1]:
        raise InputError(f"fixed_columns must be in [0, {new_items.shape[1]}), got {fixed_columns}")

    def skip(reason: str, n: int = 0, before: float = float("nan")) -> Alignment:
        log.warning("alignment skipped: %s", reason)
        return Alignment(None, fixed_columns, n, before, float("nan"), reason)

    if new_items.shape[1] != prev_items.shape[1]:
        return skip(f"the new vectors have {new_items.shape[1]} dims, the previous bundle {prev_items.shape[1]} "
                    "(a retrain with other factors cannot be rotated onto the old space)")
    prev_rows, new_rows = shared_indices(prev_ids, new_ids)
    if fit_mask is not None:
        keep = np.asarray(fit_mask, bool)[new_rows]
        prev_rows, new_rows = prev_rows[keep], new_rows[keep]
    d = new_items.shape[1] - fixed_columns
    a = np.asarray(new_items[new_rows, :d], np.float64)
    b = np.asarray(prev_items[prev_rows, :d], np.float64)
    before = mean_cosine(a, b)
    need = max(int(min_shared), 2)
    if len(new_rows) < need:
        return skip(f"{len(new_rows)} shared items, fewer than min_shared = {need}", len(new_rows), before)
    rotation, _ = orthogonal_procrustes(a, b)
    after = mean_cosine(a @ rotation, b)
    log.info("aligned on %d shared items: mean cosine %.4f -> %.4f", len(new_rows), before, after)
    return Alignment(rotation, fixed_columns, len(new_rows), before, after)


def rotate_foldin(spec: FoldInSpec, alignment: Alignment) -> FoldInSpec:
    """The fold-in spec of rotated vectors: ALS's Gram ``YᵀY`` becomes ``RᵀYᵀYR``.

    A folded-in user then is the rotated vector of the user the unrotated spec gives
    (``x' = Rᵀx``), so histories score the same before and after alignment.
    """
    if alignment.rotation is None or spec.gram is None:
        return spec
    r = alignment.rotation
    if spec.gram.shape != (r.shape[0] + alignment.fixed_columns,) * 2:
        raise InputError(f"fold-in gram {spec.gram.shape} does not match the rotation {r.shape}")
    full = np.eye(spec.gram.shape[0])
    full[: r.shape[0], : r.shape[0]] = r
    return dataclasses.replace(spec, gram=full.T @ np.asarray(spec.gram, np.float64) @ full)


# -- churn and exposure ------------------------------------------------------------------------


@dataclass
class VersionView:
    """One version's vectors with external ids, as the churn metric reads them."""

    user_vectors: np.ndarray
    user_ids: IdMap
    item_vectors: np.ndarray
    item_ids: IdMap
    seen: sp.csr_matrix | None = None
    similarity: str = "dot"
    _ext: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.user_ids) != len(self.user_vectors) or len(self.item_ids) != len(self.item_vectors):
            raise InputError("ids and vectors must align row for row")
        self._ext = np.asarray(self.item_ids.ids, dtype=object)

    def seen_ids(self, u: int) -> np.ndarray:
        if self.seen is None or u >= self.seen.shape[0]:
            return np.empty(0, object)
        return self._ext[self.seen.indices[self.seen.indptr[u]: self.seen.indptr[u + 1]]]

    def top_ids(self, users: np.ndarray, exclude: list[np.ndarray], k: int) -> list[np.ndarray]:
        """Exact top-``k`` external item ids per user row, ``exclude[r]`` (external ids) dropped."""
        items = np.asarray(self.item_vectors, np.float32)
        if self.similarity == "cosine":
            n = np.linalg.norm(items, axis=1, keepdims=True)
            items = np.divide(items, n, out=np.zeros_like(items), where=n > 0)
        scores = np.asarray(self.user_vectors[users], np.float32) @ items.T
        out = []
        for r in range(len(users)):
            ex = self.item_ids.to_index(exclude[r], missing="ignore") if len(exclude[r]) else np.empty(0, np.int64)
            s = scores[r]
            s[ex[ex >= 0]] = -np.inf
            kk = min(k, len(s))
            top = np.argpartition(-s, kk - 1)[:kk]
            top = top[np.argsort(-s[top], kind="stable")]
            out.append(self._ext[top[np.isfinite(s[top])]])
        return out


def topk_churn(prev: VersionView, new: VersionView, *, k: int = 10, n_users: int = 1000, seed: int = 0) -> dict[str, float]:
    """Top-``k`` overlap between two versions for a seeded sample of shared users, and new-item exposure.

    Returns
    -------
    dict
        ``churn_topk_overlap`` (mean |A ∩ B| / k, 1 = identical lists), ``churn_users``
        (users compared), ``new_item_exposure`` (share of the new lists' slots taken by
        items the previous version did not have) and ``new_items`` (how many there are).
    """
    if k <= 0 or n_users <= 0:
        raise InputError(f"k and n_users must be positive, got {k} and {n_users}")
    prev_rows, new_rows = shared_indices(prev.user_ids, new.user_ids)
    prev_items = set(prev.item_ids.ids)
    n_new_items = sum(1 for i in new.item_ids.ids if i not in prev_items)
    if len(new_rows) == 0:
        log.warning("churn: no user is in both versions")
        return {"churn_topk_overlap": float("nan"), "churn_users": 0.0, "new_item_exposure": float("nan"),
                "new_items": float(n_new_items)}
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(new_rows), size=min(n_users, len(new_rows)), replace=False))
    pu, nu = prev_rows[pick], new_rows[pick]
    exclude = [np.union1d(prev.seen_ids(int(a)), new.seen_ids(int(b))) for a, b in zip(pu, nu)]
    overlaps, new_slots, slots = [], 0, 0
    chunk = 256
    for s in range(0, len(pu), chunk):
        ex = exclude[s: s + chunk]
        a_lists = prev.top_ids(pu[s: s + chunk], ex, k)
        b_lists = new.top_ids(nu[s: s + chunk], ex, k)
        for a, b in zip(a_lists, b_lists):
            overlaps.append(len(set(a) & set(b)) / k)
            new_slots += sum(1 for i in b if i not in prev_items)
            slots += len(b)
    return {"churn_topk_overlap": float(np.mean(overlaps)), "churn_users": float(len(pu)),
            "new_item_exposure": new_slots / slots if slots else float("nan"), "new_items": float(n_new_items)}


def compare_versions(prev: VersionView, new: VersionView, *, align: bool = True, fixed_columns: int = 0,
                     fit_mask: np.ndarray | None = None, min_shared: int = MIN_SHARED, churn_users: int = 1000,
                     churn_k: int = 10, seed: int = 0) -> tuple[Alignment, dict[str, float]]:
    """Everything measured at a publish: the rotation (unless ``align`` is off), drift, churn, exposure.

    Drift is measured either way (an opted-out alignment still reports the unaligned
    cosine). Churn is computed on the unrotated vectors: the rotation changes no score, so
    it could not change a ranking. Non-finite numbers are left out of the returned metrics.
    """
    if prev.similarity != new.similarity:
        al = Alignment(None, fixed_columns, skipped=f"similarity changed ({prev.similarity} -> {new.similarity})")
        log.warning("alignment skipped: %s", al.skipped)
    else:
        al = fit_alignment(new.item_vectors, new.item_ids, prev.item_vectors, prev.item_ids, fixed_columns=fixed_columns,
                           min_shared=min_shared, fit_mask=fit_mask)
        if not align and al.applied:
            al = dataclasses.replace(al, rotation=None, cosine_after=float("nan"), skipped="disabled by [align] enabled = false")
    metrics = {**al.metrics(), **topk_churn(prev, new, k=churn_k, n_users=churn_users, seed=seed)}
    return al, {k: float(v) for k, v in metrics.items() if np.isfinite(v)}


__all__ = ["Alignment", "VersionView", "compare_versions", "fit_alignment", "mean_cosine", "rotate_foldin", "shared_indices", "topk_churn",
           "MIN_SHARED"]

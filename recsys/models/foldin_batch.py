"""Batched ALS fold-in, the local and the full (warm-started) ALS sweep: the solves of :func:`recsys.lifelong.incremental_update`.

Why a module of its own: these are the numeric kernels (exact ALS user solves in blocks,
conjugate-gradient item steps on the items' nonzeros), tested against
:class:`recsys.models.foldin.FoldIn` in ``tests/test_update.py`` and
``tests/test_lifelong_sweep.py``; :mod:`recsys.lifelong` keeps the catalogue logic.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.linalg.lapack import dposv

from recsys.models import weighting as _weighting
from recsys.models.foldin import FoldIn, FoldInSpec

#: weightings applied element by element: a block of rows transforms like each row alone
_ELEMENTWISE = ("linear", "log", "binary")


def fold_rows(fold: FoldIn, m: sp.csr_matrix, rows: np.ndarray, show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Fold in the users ``rows`` of ``m`` (raw weights): their vectors, and which rows had a history.

    The same solve as :meth:`FoldIn.user` (``tests/test_update.py`` holds them equal), but
    for ALS with an element-wise weighting the confidences of all rows are computed in
    one pass and the per-row checks are skipped (``m`` is a summed CSR without zeros): the
    per-user cost is then the ``d x d`` solve, not the Python around it.
    """
    sub = m[np.asarray(rows, np.int64)].tocsr()
    sub.sort_indices()
    has = np.diff(sub.indptr) > 0
    out = np.zeros((len(rows), fold.dim), np.float32)
    s = fold.spec
    if s.method != "als" or s.weighting not in _ELEMENTWISE:
        for r in progress(np.flatnonzero(has), show_progress, "fold-in users"):
            a, b = sub.indptr[r], sub.indptr[r + 1]
            out[r] = fold.user(sub.indices[a:b], sub.data[a:b])
        return out, has
    conf = _weighting.transform(sub, s.weighting, eps=s.eps).data.astype(np.float64) * float(s.alpha)
    y_all = fold.item_vectors
    gram = np.asarray(s.gram, np.float64) if s.gram is not None else np.asarray(y_all, np.float64).T @ np.asarray(y_all, np.float64)
    lhs = gram + float(s.regularization) * np.eye(fold.dim)
    idx, y64 = np.flatnonzero(has), np.asarray(y_all, np.float64)
    for blk in progress(np.array_split(idx, max(1, len(idx) // 256)), show_progress, "fold-in users (blocks of 256)"):
        out[blk] = _solve_rows(y64, lhs, sub, conf, blk)
    return out, has


def local_sweep(uv: np.ndarray, iv: np.ndarray, cf: np.ndarray, hist: sp.csr_matrix, rows: np.ndarray, spec: FoldInSpec,
                *, sweeps: int = 1, cg_steps: int = 3, items: np.ndarray | None = None) -> tuple[FoldInSpec, int]:
    """Local ALS sweeps, in place: re-solve the items ``rows`` touched, then re-fold ``rows``.

    Why: the fold-in alone never re-learns a known item from new events, which is most of
    what a retrain gains (docs/lifelong.md). A sweep is ALS's two half-steps restricted to
    the changed users and the collaborative items they touched: each item's normal
    equations against *every* user vector (its exact ``XᵀX``), solved by ``cg_steps``
    conjugate-gradient steps warm-started from its vector (as implicit trains, so the cost
    is ``O(cg_steps (d² + n_i d))`` per item, not a ``d³`` solve); then each changed user
    exactly, with ``YᵀY`` of the moved items. Each half-step lowers the training loss on the
    merged history; every other user keeps its vector bit for bit.

    Parameters
    ----------
    uv, iv : float32 arrays, changed in place
    cf : bool array (n_items,)
        Collaborative items (content-mapped items neither move nor count in ``YᵀY``).
    hist : CSR (n_users, n_items) of raw weights; rows : the changed users.
    items : int array, optional
        Re-solve only these items (``-1`` ignored) among those the changed users touched.
    spec : the published fold-in. Its ``gram`` is replaced by ``YᵀY`` of the collaborative
        items as they are now (the trained Gram lacks items added by earlier updates).

    Returns
    -------
    the fold-in spec with the new ``YᵀY`` (to publish: the Retriever folds in against it),
    and how many items were re-solved in the last sweep.
    """
    rows = np.asarray(rows, np.int64)
    rows = rows[np.diff(hist.indptr)[rows] > 0]
    y = np.asarray(iv, np.float64)
    gram = y[cf].T @ y[cf]
    conf = (_weighting.transform(hist, spec.weighting, eps=spec.eps).astype(np.float64) * float(spec.alpha)).tocsc()
    touched = np.empty(0, np.int64)
    for _ in range(sweeps):
        touched = np.unique(hist[rows].indices)
        if items is not None:
            touched = np.intersect1d(touched, np.asarray(items)[np.asarray(items) >= 0])
        touched = touched[cf[touched]]
        x = np.asarray(uv, np.float64)
        old = np.asarray(iv[touched], np.float64)
        new = _cg_items(x, x.T @ x + float(spec.regularization) * np.eye(x.shape[1]), conf, touched, old, cg_steps)
        iv[touched] = new
        new = np.asarray(iv[touched], np.float64)  # as stored (float32)
        gram += new.T @ new - old.T @ old
        spec = dataclasses.replace(spec, gram=gram.copy())
        vecs, has = fold_rows(FoldIn(spec, iv), hist, rows)
        uv[rows[has]] = vecs[has]
    return spec, int(len(touched))


def full_sweep(uv: np.ndarray, iv: np.ndarray, cf: np.ndarray, hist: sp.csr_matrix, spec: FoldInSpec, *,
               sweeps: int = 1, cg_steps: int = 3, num_threads: int = 0) -> FoldInSpec:
    """Warm-started ALS iterations on the whole merged history, in place: every item, then every user.

    Why: the fold-in never re-learns a known item and a local sweep moves only the items
    the changed users touched, so both miss most of what a retrain gains on a log where
    new ratings reshape the items (latest-small, docs/lifelong.md). A retrain is ``k``
    such iterations from random factors; started from the published factors (new users
    and items already placed by the fold-in), one iteration costs ~``1/k`` of it and runs
    implicit's own solver (``implicit.cpu._als.least_squares_cg``: the C++ conjugate
    gradient a retrain runs, same ``cg_steps``), not a Python loop. Items go first so the
    users' half-step sees items that learned from the new events. Every user may move:
    the trade-off against "without forgetting" is measured by bench_lifelong.py.

    Parameters
    ----------
    uv, iv : float32 arrays, changed in place
    cf : bool array (n_items,)
        Collaborative items. Content-mapped items (no history to learn from) neither
        move nor count in the users' ``YᵀY``.
    hist : CSR (n_users, n_items) of raw weights; spec : the published ALS fold-in.
    num_threads : int
        implicit's threads (0: OpenMP's default, as :class:`recsys.models.als.ALS` trains).

    Returns
    -------
    the fold-in spec with ``YᵀY`` of the collaborative items as they are now.
    """
    from implicit.cpu import _als

    every = bool(np.all(cf))  # the usual case: no column slice, no gather
    cols = np.flatnonzero(cf)
    conf = _weighting.transform(hist if every else hist[:, cols].tocsr(), spec.weighting, eps=spec.eps)
    conf = conf.astype(np.float32)  # a copy: "linear" returns the history itself, which alpha must not scale
    conf.data *= np.float32(spec.alpha)
    conf_t = conf.T.tocsr()
    x = np.ascontiguousarray(uv, dtype=np.float32)
    y = np.ascontiguousarray(iv if every else iv[cols], dtype=np.float32)
    reg = float(spec.regularization)
    for _ in range(sweeps):
        _als.least_squares_cg(conf_t, y, x, reg, num_threads=num_threads, cg_steps=cg_steps)
        _als.least_squares_cg(conf, x, y, reg, num_threads=num_threads, cg_steps=cg_steps)
    uv[:] = x
    iv[cols] = y
    y64 = y.astype(np.float64)
    return dataclasses.replace(spec, gram=y64.T @ y64)


def _cg_items(x: np.ndarray, lhs: np.ndarray, conf: sp.csc_matrix, cols: np.ndarray, y0: np.ndarray, steps: int,
              budget: int = 4_000_000) -> np.ndarray:
    """``steps`` CG steps on each item's ``(lhs + Xᵢᵀ(Cᵢ - I)Xᵢ) y = Xᵢᵀ Cᵢ 1``, all items of a block at once.

    ``conf`` holds the confidences (users x items); every column of ``cols`` has a user.
    ``Xᵢᵀ(Cᵢ - I)Xᵢ p`` is two sparse products: the scores ``x_u · p`` on the items'
    nonzeros (from one dense ``X Pᵀ`` block when the items are popular enough that BLAS
    beats a gather, else row by row), then ``Sᵀ X``. Blocks hold at most ``budget``
    numbers, so memory stays bounded whatever the catalogue.
    """
    y = y0.copy()
    n_users, d = x.shape
    nnz = np.diff(conf.indptr)[cols]
    a = 0
    while a < len(cols):
        # block: n_users x k dense scores (or nnz x d gathered rows) within the budget
        cost = np.cumsum(np.minimum(n_users, nnz[a:] * d))
        b = a + max(1, int(np.searchsorted(cost, budget, side="right")))
        sub = conf[:, cols[a:b]]
        seg = np.repeat(np.arange(b - a), np.diff(sub.indptr))
        dense = n_users * (b - a) <= 16 * sub.nnz
        xu = None if dense else x[sub.indices]
        c1 = sub.data - 1.0

        def apply(p: np.ndarray) -> np.ndarray:
            vals = (x @ p.T)[sub.indices, seg] if dense else np.einsum("kd,kd->k", xu, p[seg])
            s_mat = sp.csc_matrix((c1 * vals, sub.indices, sub.indptr), shape=sub.shape)
            return p @ lhs + s_mat.T @ x

        yb = y[a:b]
        r = np.asarray(sub.T @ x) - apply(yb)
        p = r.copy()
        rs = np.einsum("kd,kd->k", r, r)
        for _ in range(steps):
            ap = apply(p)
            den = np.einsum("kd,kd->k", p, ap)
            step = np.divide(rs, den, out=np.zeros_like(rs), where=den > 0)
            yb += step[:, None] * p
            r -= step[:, None] * ap
            rs_new = np.einsum("kd,kd->k", r, r)
            p = r + np.divide(rs_new, rs, out=np.zeros_like(rs), where=rs > 0)[:, None] * p
            rs = rs_new
        a = b
    return y


def _solve_rows(y_all: np.ndarray, lhs: np.ndarray, sub: sp.csr_matrix, conf: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Exact ALS solves ``(lhs + Yᵣᵀ(Cᵣ - I)Yᵣ) x = Yᵣᵀ Cᵣ 1`` of the non-empty CSR rows ``rows``.

    Why LAPACK ``dposv`` (Cholesky) and not ``np.linalg.solve`` (LU): the system is
    symmetric positive definite (every confidence is > 0 and ``λ > 0``), Cholesky needs
    half the flops and the direct call skips numpy's per-call checks: 0.64x the time of
    the ``np.linalg.solve`` loop at d = 64, 0.90x at d = 400 (one BLAS thread,
    docs/lifelong.md). A batched ``np.linalg.solve`` was measured too: 1.14x / 0.88x.
    A system LAPACK finds not positive definite (round-off) falls back to LU.
    """
    d = lhs.shape[0]
    out = np.zeros((len(rows), d), np.float64)
    for k, i in enumerate(rows):
        s, e = sub.indptr[i], sub.indptr[i + 1]
        z, c = y_all[sub.indices[s:e]], conf[s:e]
        a = (z.T * (c - 1.0)) @ z
        a += lhs
        rhs = c @ z
        _, x, info = dposv(a, rhs, lower=1, overwrite_a=1, overwrite_b=0)
        out[k] = x if info == 0 else np.linalg.solve(lhs + (z.T * (c - 1.0)) @ z, rhs)
    return out


def progress(it: Any, show: bool, desc: str) -> Any:
    if not show:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc)


__all__ = ["fold_rows", "full_sweep", "local_sweep", "progress"]

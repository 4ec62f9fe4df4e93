"""Recall of an approximate index against exact search, and search-effort tuning.

The export quality gate: on a sample of real query vectors (user vectors), compare the
top-K of the approximate index with the exact top-K and report the mean overlap
``|ann ∩ exact| / K``. If it is below the threshold, the backend's search effort (its
:attr:`~recsys.index.base.VectorIndex.effort_name`: Annoy ``search_k``, HNSW
``ef_search``) is doubled and the measurement repeated, up to a cap; the gate fails only
when even the cap is not enough. A backend without such a knob (exact search) is
measured once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from recsys.errors import InputError
from recsys.index.base import VectorIndex, check_k
from recsys.index.exact import ExactIndex

log = logging.getLogger(__name__)


def sample_queries(vectors: np.ndarray, n: int = 1000, seed: int = 0) -> np.ndarray:
    """A seeded random sample of ``n`` rows (all rows when there are fewer)."""
    if len(vectors) <= n:
        return np.asarray(vectors)
    rows = np.sort(np.random.default_rng(seed).choice(len(vectors), n, replace=False))
    return np.asarray(vectors[rows])


def exact_topk(item_vectors: np.ndarray, queries: np.ndarray, k: int, similarity: str) -> np.ndarray:
    """Exact top-k item indices (2-D) for the ground truth of :func:`recall_at_k`."""
    return ExactIndex(similarity).build(item_vectors).query(queries, k)[0]


def recall_at_k(index: VectorIndex, queries: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean share of the exact top-k that the index returns, ties counted as hits.

    A returned item counts when its exact score reaches the k-th best exact score of
    its query, so among tied items any choice is right: a user whose vector is zero (no
    interactions left in the training window) ties every item, and set overlap with one
    arbitrary exact order would call a correct answer wrong. Without ties this is the
    plain ``|index top-k ∩ truth top-k| / k'``, ``k' = min(k, n_items)``.
    """
    k = check_k(k)
    if len(queries) == 0:
        raise InputError("recall needs at least one query vector")
    got, got_scores = index.query(queries, k)  # scores are exact model similarities
    kk = min(k, index.n_items)
    q, _ = index._prepare_queries(queries)
    hits = []
    for g, scores, t, qv in zip(got, got_scores, truth, q):
        t = t[t >= 0][:kk]
        kth = float(np.min(index.vectors_[t] @ qv)) if len(t) else np.inf
        hits.append(min(kk, int(np.sum(scores[g >= 0] >= kth - 1e-6 * max(abs(kth), 1e-12)))))
    return float(np.mean(hits) / kk)


def median_query_ms(index: VectorIndex, queries: np.ndarray, k: int) -> float:
    """Median wall time in ms of single-vector ``index.query(q, k)`` calls over ``queries``.

    What a service pays per request; used at export to compare the tuned Annoy index with
    an exact scan of the same catalogue (the faster one serves, see ``Retriever``).
    """
    times = []
    for q in queries:
        t0 = time.perf_counter()
        index.query(q, k)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


@dataclass
class TuneResult:
    """Outcome of :func:`tune_search_k`: the chosen ``search_k``, its recall, every try."""

    search_k: int
    recall: float
    passed: bool
    history: list[tuple[int, float]] = field(default_factory=list)
    #: per-range budgets (:func:`recsys.index.range_budgets.tune_range_search_k`), else None
    range_search_k: list[int] | None = None


def tune_search_k(
    index: VectorIndex,
    queries: np.ndarray,
    k: int = 100,
    threshold: float = 0.95,
    start: int | None = None,
    cap: int | None = None,
    truth: np.ndarray | None = None,
) -> TuneResult:
    """The smallest search effort (within two bisection steps) whose recall@k reaches ``threshold``.

    The effort is the index's :attr:`~recsys.index.base.VectorIndex.effort_name`
    attribute (``search_k`` for Annoy, ``ef_search`` for HNSW). From ``start`` it is
    doubled until recall@k reaches ``threshold`` or ``cap``; if ``start`` already passes
    it is halved instead (down to ``k``) until it fails. Doubling and halving overshoot
    by up to 2x (and latency grows with the effort), so two bisection steps between the
    last failing and the best passing value follow. An index without an effort knob is
    measured once (``search_k`` of the result is then 0).

    Parameters
    ----------
    index : VectorIndex
        Built index; its effort attribute is set to the chosen value on return.
    queries : array (n, dim)
        Real query vectors (a sample of user vectors), not item vectors: items are
        trivially their own nearest neighbours and would overstate recall.
    start : int, optional
        First value tried; default the index's current effort if positive, else the
        low end of :meth:`~recsys.index.base.VectorIndex.effort_bounds` (for Annoy
        ``n_trees * k``, its own default for k results).
    cap : int, optional
        Largest value tried; default ``max(start, high end of effort_bounds)`` (for
        Annoy ``n_trees * n_items``, at which it inspects every leaf of every tree).
    truth : array, optional
        Precomputed exact top-k ids for ``queries``.
    """
    k = check_k(k)
    if not 0 < threshold <= 1:
        raise InputError(f"recall threshold must be in (0, 1], got {threshold}")
    if truth is None:
        truth = ExactIndex("dot").build(index.vectors_).query(
            queries if index.similarity == "dot" else queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12), k
        )[0]
    name = index.effort_name
    if name is None:
        rec = recall_at_k(index, queries, truth, k)
        log.info("recall@%d = %.4f (%s: nothing to tune)", k, rec, index.kind)
        return TuneResult(search_k=0, recall=rec, passed=rec >= threshold, history=[(0, rec)])
    lo_default, hi_default = index.effort_bounds(k)
    current = int(getattr(index, name))
    sk = start if start is not None else (current if current > 0 else lo_default)
    cap = cap if cap is not None else max(sk, hi_default)
    history: list[tuple[int, float]] = []

    def measure(value: int, note: str = "") -> float:
        setattr(index, name, value)
        rec = recall_at_k(index, queries, truth, k)
        history.append((value, rec))
        log.info("recall@%d = %.4f at %s = %d%s", k, rec, name, value, note)
        return rec

    rec = measure(sk)
    while rec < threshold and sk < cap:
        sk = min(cap, sk * 2)
        rec = measure(sk)
    best, best_rec = sk, rec
    lo = history[-2][0] if rec >= threshold and len(history) > 1 else None
    if rec >= threshold and lo is None:  # the start passed: look for a cheaper value below it
        while best > k:
            half = max(k, best // 2)
            r = measure(half, " (halving)")
            if r < threshold:
                lo = half
                break
            best, best_rec = half, r
    if lo is not None:  # between the last failing and the first passing value: bisect twice
        for _ in range(2):
            mid = (lo + best) // 2
            if mid <= lo:
                break
            r = measure(mid, " (bisect)")
            if r >= threshold:
                best, best_rec = mid, r
            else:
                lo = mid
    setattr(index, name, best)
    return TuneResult(search_k=best, recall=best_rec, passed=best_rec >= threshold, history=history)

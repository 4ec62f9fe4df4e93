"""Per-range ``search_k`` for norm-ranged indexes: measured recall curves, cheapest allocation.

Why: with one ``search_k`` for every norm range, a range holding none of the typical
top-k (the half of the catalogue with the shortest vectors) costs as much as one holding
a third of it. Measured on the 1M clustered catalogue (docs/retrieval.md), the ranges
held 21, 5, 5, 8, 16, 29, 16 and 0% of the exact top-100, longest vectors first.

The recall gate (:mod:`recsys.serving.bundle`) first finds one passing ``search_k``
(:func:`~recsys.index.recall.tune_search_k`), then :func:`tune_range_search_k` prices
per-range budgets from :func:`range_hits` and keeps them when they pass for less.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from recsys.index.base import check_k
from recsys.index.recall import TuneResult, recall_at_k

if TYPE_CHECKING:  # norm_ranged imports this module (its refine() step)
    from recsys.index.norm_ranged import NormRangedAnnoyIndex

log = logging.getLogger(__name__)


def range_hits(index: NormRangedAnnoyIndex, queries: np.ndarray, truth: np.ndarray, budgets: Sequence[int]) -> np.ndarray:
    """How many of the exact top-k items each range's forest finds, per ``search_k``.

    ``hits[r, j]`` counts, over all ``queries``, the items of ``truth`` (exact top-k ids
    per query) that lie in range ``r`` and that its forest returns at
    ``search_k = budgets[j]`` when asked for ``k`` items. A true top-k item that any
    range returns is always in the merged top-k (fewer than k items score above it), so
    the recall of any per-range allocation is the sum of these counts over the total:
    the tuner can price every allocation from one pass per range and budget. Scanned
    ranges count all their truth items at every budget, as does a budget that reaches
    the range's size (the search scans it then).
    """
    q, _ = index._prepare_queries(queries)
    truth = np.asarray(truth, dtype=np.int64)
    k = truth.shape[1]
    range_of = index.range_of()
    valid = truth >= 0
    in_range = np.where(valid, range_of[np.where(valid, truth, 0)], -1)
    scanned = index.scanned_ranges()
    sizes = np.diff(index.bounds_)
    hits = np.zeros((index.n_ranges_, len(budgets)), np.int64)
    for r in range(index.n_ranges_):
        mask = in_range == r
        n_truth = int(mask.sum())
        if scanned[r] or n_truth == 0:
            hits[r] = n_truth
            continue
        rows = np.flatnonzero(mask.any(axis=1))
        for j, sk in enumerate(budgets):
            if sk >= sizes[r]:
                hits[r, j:] = n_truth
                break
            found = sum(int(np.isin(truth[i][mask[i]], index.range_candidates(r, q[i], k, sk)).sum()) for i in rows)
            hits[r, j] = found
            if found == n_truth:
                hits[r, j:] = n_truth
                break
    return hits


def budget_ladder(k: int, cap: int) -> list[int]:
    """``search_k`` values ``k * 2**(j/2)`` up to ``cap``: steps of about 41%."""
    values, j = [], 0
    while (v := int(round(k * 2 ** (j / 2)))) <= max(cap, k):
        if not values or v > values[-1]:
            values.append(v)
        j += 1
    return values


def allocate_range_budgets(hits: np.ndarray, budgets: list[int], need: float, frozen: list[bool]) -> list[int] | None:
    """Ladder step per range reaching ``need`` total hits at the least total ``search_k``.

    Greedy on the best gain per extra ``search_k`` (looking past flat steps), then each
    range is stepped back down while the total still reaches ``need`` (largest saving
    first), which removes the overshoot of the last step. ``frozen`` ranges (scanned)
    stay at step 0. Returns the step index per range, or None when even the top of
    every ladder falls short.
    """
    n_ranges, n_steps = hits.shape
    step = [0] * n_ranges

    def total() -> int:
        return int(sum(hits[r, step[r]] for r in range(n_ranges)))

    while total() < need:
        best: tuple[float, int, int] | None = None
        for r in range(n_ranges):
            if frozen[r]:
                continue
            for j in range(step[r] + 1, n_steps):
                gain = hits[r, j] - hits[r, step[r]]
                if gain > 0 and (best is None or gain / (budgets[j] - budgets[step[r]]) > best[0]):
                    best = (gain / (budgets[j] - budgets[step[r]]), r, j)
        if best is None:
            return None
        step[best[1]] = best[2]
    while True:  # step back down where the total allows it
        options = [(budgets[step[r]] - budgets[step[r] - 1], r) for r in range(n_ranges)
                   if step[r] > 0 and total() - hits[r, step[r]] + hits[r, step[r] - 1] >= need]
        if not options:
            return step
        step[max(options)[1]] -= 1


def tune_range_search_k(
    index: NormRangedAnnoyIndex,
    queries: np.ndarray,
    truth: np.ndarray,
    k: int = 100,
    threshold: float = 0.95,
    cap: int | None = None,
) -> TuneResult:
    """One ``search_k`` per norm range, the cheapest set whose recall@k reaches ``threshold``.

    Why: with one budget for all ranges, a range holding none of the typical top-k
    (the half of the catalogue with the shortest vectors) costs as much as the range
    holding a third of it. :func:`range_hits` measures, per range
    and per ``search_k`` on a ladder of ~41% steps, how many true top-k items the
    range's forest finds; since those counts add up to the recall of any allocation,
    :func:`allocate_range_budgets` can pick the allocation with the least total
    ``search_k`` that reaches the threshold. The pick is then measured end to end
    with :func:`recall_at_k` (the figure the gate reports); if it misses (it should
    not: the prediction is exact up to ties), every budget is raised one step, up to
    three times. On return ``index.range_search_k`` holds the budgets if the result
    passed; it is unchanged (and ``passed`` is False) when no allocation reaches the
    threshold or none costs less in total than ``index.search_k`` in every searched
    range (the passing uniform value from :func:`tune_search_k`).

    Parameters
    ----------
    truth : array (n, k)
        Exact top-k ids of ``queries``.
    cap : int, optional
        Top of the ladder; default ``4 * index.search_k`` (the passing uniform value
        from :func:`tune_search_k`), else ``n_trees * k``.
    """
    k = check_k(k)
    cap = cap if cap is not None else 4 * (index.search_k if index.search_k > 0 else index.n_trees * k)
    ladder = budget_ladder(k, cap)
    t0 = time.perf_counter()
    hits = range_hits(index, queries, truth, ladder)
    kk = min(k, index.n_items)
    need = threshold * len(queries) * kk
    frozen = index.scanned_ranges()
    step = allocate_range_budgets(hits, ladder, need, frozen)
    log.info("per-range recall curves in %.1fs: truth share %s", time.perf_counter() - t0,
             np.round(hits[:, -1] / max(len(queries) * kk, 1), 3).tolist())
    previous = index.range_search_k
    forested = [not f for f in frozen]
    uniform_cost = index.search_k * sum(forested) if index.search_k > 0 else None
    if step is None or (uniform_cost is not None and sum(ladder[j] for j, f in zip(step, forested) if f) >= uniform_cost):
        log.info("per-range search_k: no allocation cheaper than search_k %d everywhere", index.search_k)
        return TuneResult(search_k=index.search_k, recall=0.0, passed=False)
    history: list[tuple[int, float]] = []
    # a searched range that holds none of the sample's true top-k is skipped (budget 0):
    # with n * k truth items and none there, its share is below 3 / (n * k) at 95%
    empty = [not f and hits[r, -1] == 0 for r, f in enumerate(frozen)]
    for _ in range(4):
        index.range_search_k = [0 if e else ladder[j] for j, e in zip(step, empty)]
        rec = recall_at_k(index, queries, truth, k)
        history.append((sum(index.range_search_k), rec))
        log.info("recall@%d = %.4f at per-range search_k %s (predicted %.4f)", k, rec, index.range_search_k,
                 sum(hits[r, j] for r, j in enumerate(step)) / (len(queries) * kk))
        if rec >= threshold:
            return TuneResult(search_k=max(index.range_search_k), recall=rec, passed=True, history=history,
                              range_search_k=list(index.range_search_k))
        step = [j if frozen[r] else min(j + 1, len(ladder) - 1) for r, j in enumerate(step)]
    index.range_search_k = previous
    return TuneResult(search_k=index.search_k, recall=rec, passed=False, history=history)

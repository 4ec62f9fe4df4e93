"""The export's quality gate: tune the index against exact search, refuse it below the bar.

Why a module of its own: the gate is what makes a bundle trustworthy (recall@K measured on
real user queries, ``search_k`` tuned to the cheapest passing value, per-range budgets for
norm-ranged indexes, and the Annoy-vs-exact latency check that the ``Retriever``'s ``auto``
backend reads), and :func:`recsys.serving.bundle.export_bundle` only has to record what it
returns.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from recsys.errors import QualityGateError
from recsys.index.base import VectorIndex, check_vectors
from recsys.index.exact import ExactIndex
from recsys.index.recall import exact_topk, median_query_ms, sample_queries, tune_search_k

if TYPE_CHECKING:
    from recsys.serving.bundle import IndexConfig

log = logging.getLogger(__name__)


def gate_queries(queries: Any, users: np.ndarray | None, items: np.ndarray, cfg: IndexConfig) -> tuple[np.ndarray, str]:
    """The gate's query sample and where it came from (``given``, ``user_vectors``, ``item_vectors``).

    Item vectors are the last resort: items are their own nearest neighbours, so recall
    measured with them is optimistic, and the gate says so in the log and the manifest.
    """
    if queries is not None:
        q, source = check_vectors(queries, "gate queries", items.shape[1]), "given"
    elif users is not None and len(users):
        q, source = users, "user_vectors"
    else:
        log.warning("no user vectors for the recall gate: using item vectors as queries (optimistic)")
        q, source = items, "item_vectors"
    return sample_queries(q, cfg.n_queries, seed=cfg.seed), source


def run_gate(index: VectorIndex, items: np.ndarray, queries: np.ndarray, source: str,
             cfg: IndexConfig, similarity: str) -> dict[str, Any]:
    """Tune ``index`` in place and return the manifest's ``quality_gate`` entry.

    Raises
    ------
    QualityGateError
        Recall@K stays below ``cfg.min_recall`` even at the largest ``search_k``.
    """
    truth = exact_topk(items, queries, cfg.recall_k, similarity)
    tune = tune_search_k(index, queries, k=cfg.recall_k, threshold=cfg.min_recall, truth=truth,
                         start=cfg.search_k if cfg.search_k > 0 else None, cap=cfg.max_search_k)
    gate: dict[str, Any] = {"recall_k": cfg.recall_k, "recall": tune.recall, "min_recall": cfg.min_recall,
                            "passed": tune.passed, "n_queries": len(queries), "queries": source,
                            "search_k_tried": [list(h) for h in tune.history]}
    if not tune.passed:
        raise QualityGateError(
            f"index recall@{cfg.recall_k} = {tune.recall:.4f} < {cfg.min_recall} even at {index.backend} "
            f"{index.effort_name or 'search effort'} = {tune.search_k}; not published (raise index.max_search_k, or "
            "the index size: index.n_trees for annoy, index.hnsw_m for faiss; or check the vectors)"
        )
    per_range = index.refine(queries, truth, cfg.recall_k, cfg.min_recall) if cfg.per_range_search_k else None
    if per_range is not None:  # a second pass: Annoy's budget per norm range
        if per_range.passed:
            gate.update(recall=per_range.recall, range_search_k=per_range.range_search_k,
                        range_search_k_tried=[list(h) for h in per_range.history])
    if index.n_items > cfg.exact_max_items and index.backend != "exact":  # served by the index unless exact is faster
        lat_q, exact = queries[:100], ExactIndex.from_prepared(index.vectors_, similarity)
        gate["p50_ms"] = {index.backend: median_query_ms(index, lat_q, cfg.recall_k),
                          "exact": median_query_ms(exact, lat_q, cfg.recall_k), "queries": len(lat_q)}
    return gate

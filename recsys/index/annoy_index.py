"""Approximate top-k search with Annoy, done right for inner-product models.

Maximum inner product search (MIPS) is reduced to angular search with the extra-dimension
transform of Bachrach et al. (2014), the same as ``implicit.utils.augment_inner_product_matrix``:
every item vector ``x`` gets one more coordinate ``sqrt(M^2 - |x|^2)`` (``M`` the largest
norm) so all items have norm ``M``, and queries get ``0`` there. The angle between a query
and an augmented item is then monotone in their inner product. Annoy 1.17.3's own ``dot``
metric is not used by default: it loses most of the recall (spotify/annoy issue 619; see
``benchmarks/bench_retrieval.py --compare-dot`` and docs/retrieval.md for our numbers).
Cosine models use ``angular`` directly on the vectors.

Annoy returns candidates; their scores are recomputed exactly from the item vectors, so the
scores are the model's similarity and the order among returned items is exact. Filters
(excluded items, allow-lists) are applied by over-fetching candidates; an allow-list small
enough to scan is searched exactly instead.

The ``.ann`` file records neither metric nor dimension: the caller (the bundle manifest)
must keep ``metric``, ``dim`` and ``transform`` and pass them to :meth:`AnnoyIndex.load`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import annoy
import numpy as np
from tqdm.auto import tqdm

from recsys.errors import BundleError, InputError
from recsys.index.base import VectorIndex, check_k, check_similarity, check_vectors, normalize_rows

log = logging.getLogger(__name__)

METRICS = ("angular", "dot")


def augment_inner_product(vectors: np.ndarray) -> tuple[float, np.ndarray]:
    """MIPS -> angular transform: append ``sqrt(M^2 - |x|^2)`` to every row.

    Returns ``(M, augmented)``. Rounding can make ``M^2 - |x|^2`` slightly negative for
    the longest rows, which would give NaN; it is clipped at zero.
    """
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    max_norm = float(norms.max()) if len(norms) else 0.0
    extra = np.sqrt(np.clip(max_norm**2 - norms**2, 0.0, None)).astype(np.float32)
    return max_norm, np.hstack([vectors, extra[:, None]]).astype(np.float32)


def build_forest(data: np.ndarray, metric: str, n_trees: int, seed: int, n_jobs: int = -1) -> annoy.AnnoyIndex:
    """An in-memory Annoy forest over the rows of ``data`` (row ``i`` is item ``i``).

    ``set_seed`` is called before any item is added: Annoy draws its split points when
    the trees are built, from the seed it holds then.
    """
    ann = annoy.AnnoyIndex(data.shape[1], metric)
    ann.set_seed(seed)
    for i in tqdm(range(len(data)), desc="annoy add", disable=True if len(data) < 200_000 else None, mininterval=5):
        ann.add_item(i, data[i])
    ann.build(n_trees, n_jobs=n_jobs)
    return ann


def scaled_search_k(search_k: int, n: int, search_k_ref: int) -> int:
    """``search_k`` for ``n`` results when it was tuned for ``search_k_ref`` results.

    Queries that over-fetch (to make room for excluded items) scale the budget with the
    result count, so filtering does not lower their recall.
    """
    if search_k > 0 and n > search_k_ref:
        return int(math.ceil(search_k * n / search_k_ref))
    return search_k


class AnnoyIndex(VectorIndex):
    """Annoy forest over item vectors, with exact re-scoring of the candidates.

    Parameters
    ----------
    similarity : {"dot", "cosine"}
    n_trees : int
        More trees: better recall at the same ``search_k``, bigger file, longer build.
    search_k : int
        Nodes inspected per query for ``search_k_ref`` results; ``-1`` is Annoy's default
        (``n_trees * n``). Queries asking for ``n > search_k_ref`` candidates (because of
        exclusions) scale it by ``n / search_k_ref`` so their recall does not drop.
    seed : int
        Passed to ``set_seed`` before any item is added (tree splits are random).
    metric : {"angular", "dot"}
        ``"angular"`` (default; with the MIPS transform for dot models) or Annoy's own
        ``"dot"``, kept only so the benchmark can measure it.
    search_k_ref : int
        The result count ``search_k`` was tuned for (the recall gate's K).
    exact_subset_max : int
        Allow-lists up to this size are scanned exactly instead of over-fetching.
    n_jobs : int
        Threads for ``build`` (-1: all cores).
    """

    kind = "annoy"

    def __init__(
        self,
        similarity: str = "dot",
        n_trees: int = 50,
        search_k: int = -1,
        seed: int = 42,
        metric: str = "angular",
        search_k_ref: int = 100,
        exact_subset_max: int = 20_000,
        n_jobs: int = -1,
    ) -> None:
        super().__init__(similarity)
        if metric not in METRICS:
            raise InputError(f"metric must be one of {METRICS}, got {metric!r}")
        if int(n_trees) <= 0:
            raise InputError(f"n_trees must be positive, got {n_trees}")
        self.n_trees = int(n_trees)
        self.search_k = int(search_k)
        self.seed = int(seed)
        self.metric = metric
        self.search_k_ref = check_k(search_k_ref)
        self.exact_subset_max = int(exact_subset_max)
        self.n_jobs = int(n_jobs)

    @property
    def transform(self) -> str:
        """``"mips_augment"`` when the extra dimension is added, else ``"none"``."""
        return "mips_augment" if (self.similarity == "dot" and self.metric == "angular") else "none"

    @property
    def annoy_dim(self) -> int:
        return self.dim + (1 if self.transform == "mips_augment" else 0)

    # -- build / persist ---------------------------------------------------------------
    def build(self, vectors: Any) -> AnnoyIndex:
        """Build the forest in memory (``set_seed`` first, then add items, then trees)."""
        self.vectors_ = self._prepare_items(vectors)
        data = self.vectors_
        self.max_norm_ = 0.0
        if self.transform == "mips_augment":
            self.max_norm_, data = augment_inner_product(self.vectors_)
        self._ann = build_forest(data, self.metric, self.n_trees, self.seed, self.n_jobs)
        log.info("annoy: %d items, dim %d (+%d), %d trees, metric %s", len(data), self.dim,
                 data.shape[1] - self.dim, self.n_trees, self.metric)
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Write the ``.ann`` file. Never call this on a path a live process has mapped.

        Overwriting a memory-mapped ``.ann`` in place kills its readers with SIGBUS
        (spotify/annoy issue 335); :mod:`recsys.serving.bundle` writes every index into
        a fresh directory.
        """
        self._check_built()
        if not self._ann.save(os.fspath(path)):
            raise OSError(f"annoy could not save the index to {path}")

    def unload(self) -> None:
        """Release the forest's memory (or its file mapping); the index is unusable after."""
        self._ann.unload()

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        vectors: np.ndarray,
        similarity: str,
        metric: str = "angular",
        n_trees: int = 50,
        search_k: int = -1,
        seed: int = 42,
        search_k_ref: int = 100,
        prefault: bool = False,
    ) -> AnnoyIndex:
        """Memory-map a saved ``.ann``; ``vectors`` are the original item vectors.

        Metric and dimension are not stored in the file, so they come from the caller;
        the item count and dimension are cross-checked against ``vectors``.
        """
        idx = cls(check_similarity(similarity), n_trees=n_trees, search_k=search_k, seed=seed,
                  metric=metric, search_k_ref=search_k_ref)
        v = check_vectors(vectors, "item vectors")
        idx.vectors_ = normalize_rows(v) if similarity == "cosine" else v
        ann = annoy.AnnoyIndex(idx.annoy_dim, metric)
        try:
            ann.load(os.fspath(path), prefault=prefault)
        except OSError as e:
            raise BundleError(f"cannot load Annoy index {path}: {e}") from e
        if ann.get_n_items() != len(v):
            raise BundleError(
                f"{path} holds {ann.get_n_items()} items but there are {len(v)} item vectors; "
                "the index and the vectors come from different exports"
            )
        idx._ann = ann
        idx.max_norm_ = 0.0
        return idx

    # -- search ------------------------------------------------------------------------
    def _annoy_query(self, q: np.ndarray) -> list[float]:
        if self.transform == "mips_augment":
            return [*q.tolist(), 0.0]
        return q.tolist()

    def candidates(self, q: np.ndarray, n: int) -> np.ndarray:
        """Raw Annoy candidates (item indices) for one prepared query vector."""
        n = min(n, self.n_items)
        sk = scaled_search_k(self.search_k, n, self.search_k_ref)
        return np.asarray(self._ann.get_nns_by_vector(self._annoy_query(q), n, search_k=sk), dtype=np.int64)

    def _search(
        self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        n_items = self.n_items
        ids = np.full((len(queries), k), -1, np.int64)
        out = np.full((len(queries), k), -np.inf, np.float32)
        allowed_mask = None
        if allowed is not None:
            if len(allowed) <= self.exact_subset_max:
                return self._exact(queries, k, exclude, allowed)
            allowed_mask = np.zeros(n_items, bool)
            allowed_mask[allowed] = True
        n_allowed = n_items if allowed is None else len(allowed)
        for r, q in enumerate(queries):
            blocked = exclude[r] if exclude is not None else np.empty(0, np.int64)
            n_fetch = k + len(blocked)
            if allowed_mask is not None:  # expect len(allowed)/n_items of candidates to pass
                n_fetch = int(math.ceil(n_fetch * n_items / max(n_allowed, 1)))
            n_fetch = min(n_items, n_fetch)
            if self.search_k > 0 and self.search_k * n_fetch >= n_items * self.search_k_ref:
                # Annoy would inspect about every item anyway (long block-list, sparse
                # allow-list): a BLAS scan is exact and faster
                ids[r], out[r] = self._exact(q[None], k, [blocked], allowed)
                continue
            while True:
                cand = self.candidates(q, n_fetch)
                keep = np.ones(len(cand), bool)
                if blocked.size:
                    keep &= ~np.isin(cand, blocked)
                if allowed_mask is not None:
                    keep &= allowed_mask[cand]
                cand = cand[keep]
                if len(cand) >= k or n_fetch >= n_items:
                    break
                n_fetch = min(n_items, n_fetch * 2)
            if len(cand) < k:
                # fewer allowed items than k, or Annoy returned too few: a scan is exact
                ids[r], out[r] = self._exact(q[None], k, [blocked], allowed)
                continue
            s = self.vectors_[cand] @ q
            order = np.argsort(-s, kind="stable")[:k]
            ids[r, : len(order)], out[r, : len(order)] = cand[order], s[order]
        return ids, out

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

The ``.ann`` file records neither metric nor dimension: the manifest entry that
:meth:`AnnoyIndex.save` returns keeps ``metric``, ``annoy_dim`` and ``transform``, and
:meth:`AnnoyIndex.load` checks them. ``AnnoyIndex`` is the registered ``"annoy"`` backend
(:mod:`recsys.index.registry`) for both layouts: :meth:`AnnoyIndex.create` picks norm ranges
(:mod:`recsys.index.norm_ranged`) for dot models with a catalogue big enough to cut, and
:meth:`AnnoyIndex.load` reads either from its manifest entry.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import annoy
import numpy as np

from recsys.errors import BundleError, InputError
from recsys.index.annoy_forest import augment_inner_product, build_forest, scaled_search_k
from recsys.index.base import VectorIndex, check_k, check_similarity, check_vectors, normalize_rows
from recsys.index.norm_ranged import NormRangedAnnoyIndex, range_bounds

log = logging.getLogger(__name__)

METRICS = ("angular", "dot")
INDEX_FILE = "index.ann"


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
    backend = "annoy"
    effort_name = "search_k"

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

    @classmethod
    def create(cls, similarity: str, n_items: int, settings: Mapping[str, Any]) -> AnnoyIndex | NormRangedAnnoyIndex:
        """Norm ranges for dot models whose catalogue is big enough to cut, else one forest.

        Reads the ``[index]`` keys ``n_trees``, ``search_k``, ``seed``, ``recall_k``,
        ``metric``, ``n_jobs``, ``norm_ranges``, ``norm_range_min`` and
        ``norm_range_exact_max`` (defaults as in the constructors).
        """
        s = dict(settings)
        common = {"n_trees": s.get("n_trees", 50), "search_k": s.get("search_k", -1), "seed": s.get("seed", 42),
                  "search_k_ref": s.get("recall_k", 100), "n_jobs": s.get("n_jobs", -1)}
        metric, n_ranges, min_range = s.get("metric", "angular"), s.get("norm_ranges", 8), s.get("norm_range_min", 1_000)
        if (similarity == "dot" and metric == "angular" and n_ranges > 1
                and len(range_bounds(n_items, n_ranges, min_range)) > 2):
            return NormRangedAnnoyIndex(n_ranges=n_ranges, min_range=min_range,
                                        exact_range_max=s.get("norm_range_exact_max", 8_192), **common)
        return cls(similarity, metric=metric, **common)

    def save_file(self, path: str | os.PathLike) -> None:
        """Write the ``.ann`` file. Never call this on a path a live process has mapped.

        Overwriting a memory-mapped ``.ann`` in place kills its readers with SIGBUS
        (spotify/annoy issue 335); :mod:`recsys.serving.bundle` writes every index into
        a fresh directory.
        """
        self._check_built()
        if not self._ann.save(os.fspath(path)):
            raise OSError(f"annoy could not save the index to {path}")

    def save(self, directory: str | os.PathLike) -> dict[str, Any]:
        """Write :data:`INDEX_FILE` into ``directory``; return the manifest entry."""
        self.save_file(Path(directory) / INDEX_FILE)
        return {"backend": self.backend, "file": INDEX_FILE, "files": [INDEX_FILE], "metric": self.metric,
                "transform": self.transform, "annoy_dim": self.annoy_dim, "n_trees": self.n_trees,
                "search_k": self.search_k, "search_k_ref": self.search_k_ref, "seed": self.seed}

    def unload(self) -> None:
        """Release the forest's memory (or its file mapping); the index is unusable after."""
        self._ann.unload()

    @classmethod
    def load(cls, directory: str | os.PathLike, entry: Mapping[str, Any], vectors: np.ndarray, similarity: str, *,
             prefault: bool = False, search_threads: int = 1) -> AnnoyIndex | NormRangedAnnoyIndex:
        """Memory-map the forest(s) a manifest entry names, with its metric and dimension.

        ``search_threads`` > 1 lets one query search a norm-ranged index's forests in
        parallel (:mod:`recsys.index.lanes`); a single forest has nothing to split.
        """
        if entry.get("ranges"):
            return NormRangedAnnoyIndex.load(directory, entry, vectors, similarity, prefault=prefault,
                                             search_threads=search_threads)
        index = cls.load_file(Path(directory) / (entry.get("file") or INDEX_FILE), vectors, similarity,
                              metric=entry["metric"], n_trees=entry["n_trees"], search_k=entry["search_k"],
                              seed=entry["seed"], search_k_ref=entry["search_k_ref"], prefault=prefault)
        if index.transform != entry["transform"] or index.annoy_dim != entry["annoy_dim"]:
            raise BundleError(f"{directory}: manifest transform {entry['transform']!r}/dim {entry['annoy_dim']} does "
                              f"not match {index.transform!r}/{index.annoy_dim}; the bundle was written by another "
                              "recsys version")
        return index

    @classmethod
    def entry_files(cls, entry: Mapping[str, Any]) -> list[str]:
        """``index.ann``, or one file per norm range plus the norm order (older entries have no ``files``)."""
        if entry.get("ranges"):
            return [*entry["ranges"]["files"], entry["ranges"]["order_file"]]
        return [entry.get("file") or INDEX_FILE]

    @classmethod
    def load_file(
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
        """Memory-map one saved ``.ann``; ``vectors`` are the original item vectors.

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

    def effort_bounds(self, k: int) -> tuple[int, int]:
        """``n_trees * k`` (Annoy's own default for k results) up to ``n_trees * n_items``.

        At the cap Annoy inspects every leaf of every tree. Twice the item count is not
        enough: candidates are counted with their duplicates across trees, and real MF
        vectors (very skewed norms) needed about 5x on MovieLens.
        """
        return self.n_trees * k, self.n_trees * self.n_items

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

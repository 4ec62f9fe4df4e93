"""Norm-ranged Annoy: inner-product search when item norms span a wide range.

Why not one forest: the MIPS -> angular transform (:func:`augment_inner_product`) gives
every item the extra coordinate ``sqrt(M^2 - |x|^2)`` with one ``M``, the largest norm.
When norms are skewed, as in matrix factorisation where popular items get long vectors
(MovieLens ALS: median norm 0.08, max 0.6), most items get an extra
coordinate close to ``M`` and crowd the pole of the sphere; random-hyperplane splits
barely separate them and recall collapses. Measured on 100k MF-like vectors (covariance
and norms taken from real ALS factors), 50 trees, recall@100 0.12 at ``search_k``
10,000 (docs/retrieval.md).

Norm ranging (Yan et al., "Norm-Ranging LSH for Maximum Inner Product Search", NeurIPS
2018) sorts the items by norm into ranges, each with its own forest and its own ``M``.
Ranges grow geometrically from the longest vectors down (at 1M items and 8 ranges:
7.8k, 7.8k, 15.6k, ... 500k items), because the top of an inner-product ranking comes
mostly from the long vectors. A query visits the ranges in that order and stops as soon
as Cauchy-Schwarz proves that no item of the remaining ranges can enter its top k
(``max_norm * |q| < k-th best score``), so the many short vectors are often not searched
at all. A range whose (over-fetch scaled) ``search_k`` reaches its size is scanned
exactly, and so is every range of at most ``exact_range_max`` items (a BLAS scan of the
few thousand longest vectors is cheaper than a forest search and misses nothing).
Candidates are re-scored exactly, as in :class:`AnnoyIndex`.

Files: one ``.ann`` per range plus the norm order (``norm_order.npy``, item indices by
descending norm); :meth:`NormRangedAnnoyIndex.save` writes them and returns the manifest
entry that :meth:`NormRangedAnnoyIndex.load` needs.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import annoy
import numpy as np

from recsys.errors import BundleError, InputError
from recsys.index.annoy_index import augment_inner_product, build_forest, scaled_search_k
from recsys.index.base import VectorIndex, check_k, check_vectors

log = logging.getLogger(__name__)

ORDER_FILE = "norm_order.npy"
#: relative slack on the Cauchy-Schwarz bound: scores are float32 dot products
_BOUND_SLACK = 1e-5


def range_bounds(n_items: int, n_ranges: int, min_range: int) -> list[int]:
    """Start offsets (plus ``n_items``) of geometric ranges over items sorted by norm.

    The first range holds ``n_items / 2**(R-1)`` items, each next one twice as many,
    the last about half the catalogue. ``R`` is lowered until the first range has at
    least ``min_range`` items, so small catalogues get a single range.
    """
    if n_items <= 0 or n_ranges <= 0 or min_range <= 0:
        raise InputError("range_bounds needs positive n_items, n_ranges and min_range")
    r = max(1, min(n_ranges, 1 + int(math.floor(math.log2(max(n_items / min_range, 1.0))))))
    bounds = sorted({0, n_items, *(int(round(n_items / 2 ** (r - j))) for j in range(1, r))})
    return bounds


class NormRangedAnnoyIndex(VectorIndex):
    """Inner-product search over norm ranges, one Annoy forest per range.

    Parameters
    ----------
    n_ranges : int
        Most ranges; fewer when the catalogue is small (see ``min_range``).
    min_range : int
        Smallest size of the first (longest-vector) range.
    exact_range_max : int
        Ranges up to this size are scanned exactly (BLAS over a contiguous copy)
        instead of searched in their forest: the long vectors that fill the top of most
        rankings sit there, and a BLAS scan of 8k x 64 floats (about 0.1 ms) costs
        less than a forest search of the same range and misses nothing. Measured at
        1M items (docs/retrieval.md), 8192 (two scanned ranges) beat 16384 (three).
    n_trees, search_k, seed, search_k_ref, exact_subset_max, n_jobs :
        As for :class:`~recsys.index.annoy_index.AnnoyIndex`; ``search_k`` applies to
        each range, range ``r`` is seeded with ``seed + r``.
    """

    kind = "annoy-norm-ranged"
    transform = "norm_ranged_mips"
    metric = "angular"

    def __init__(
        self,
        n_ranges: int = 8,
        min_range: int = 1_000,
        exact_range_max: int = 8_192,
        n_trees: int = 50,
        search_k: int = -1,
        seed: int = 42,
        search_k_ref: int = 100,
        exact_subset_max: int = 20_000,
        n_jobs: int = -1,
    ) -> None:
        super().__init__("dot")
        if int(n_ranges) <= 0 or int(min_range) <= 0 or int(n_trees) <= 0:
            raise InputError(f"n_ranges, min_range and n_trees must be positive, got {n_ranges}, {min_range}, {n_trees}")
        self.n_ranges = int(n_ranges)
        self.min_range = int(min_range)
        self.exact_range_max = int(exact_range_max)
        self.n_trees = int(n_trees)
        self.search_k = int(search_k)
        self.seed = int(seed)
        self.search_k_ref = check_k(search_k_ref)
        self.exact_subset_max = int(exact_subset_max)
        self.n_jobs = int(n_jobs)

    @property
    def annoy_dim(self) -> int:
        return self.dim + 1

    # -- build / persist ---------------------------------------------------------------
    def build(self, vectors: Any) -> NormRangedAnnoyIndex:
        """Sort items by norm, cut the ranges and build one augmented forest per range."""
        self.vectors_ = self._prepare_items(vectors)
        norms = np.linalg.norm(self.vectors_.astype(np.float64), axis=1)
        order = np.argsort(-norms, kind="stable")
        bounds = range_bounds(len(order), self.n_ranges, self.min_range)
        forests = []
        for r, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            _, data = augment_inner_product(self.vectors_[order[a:b]])
            forests.append(build_forest(data, "angular", self.n_trees, self.seed + r, self.n_jobs))
            log.info("norm range %d: items %d..%d, max norm %.4g", r, a, b, norms[order[a]])
        self._set_ranges(order, bounds, [float(norms[order[a]]) for a in bounds[:-1]], forests)
        return self

    def _set_ranges(self, order: np.ndarray, bounds: list[int], max_norms: list[float],
                    forests: list[annoy.AnnoyIndex]) -> None:
        self.order_ = np.asarray(order, dtype=np.int64)
        self.bounds_ = [int(b) for b in bounds]
        self.max_norms_ = [float(m) for m in max_norms]
        self._forests = forests
        self._range_ids = [self.order_[a:b] for a, b in zip(self.bounds_[:-1], self.bounds_[1:])]
        # contiguous copies of the ranges scanned exactly (None: searched in the forest)
        self._range_vecs = [np.ascontiguousarray(self.vectors_[ids]) if len(ids) <= self.exact_range_max else None
                            for ids in self._range_ids]

    def save(self, directory: str | os.PathLike, prefix: str = "index") -> dict[str, Any]:
        """Write ``<prefix>-NN.ann`` per range and :data:`ORDER_FILE`; return the manifest entry."""
        self._check_built()
        directory = Path(directory)
        files = []
        for r, ann in enumerate(self._forests):
            name = f"{prefix}-{r:02d}.ann"
            if not ann.save(os.fspath(directory / name)):
                raise OSError(f"annoy could not save range {r} to {directory / name}")
            files.append(name)
        np.save(directory / ORDER_FILE, self.order_, allow_pickle=False)
        return {"order_file": ORDER_FILE, "bounds": self.bounds_, "max_norms": self.max_norms_, "files": files,
                "exact_range_max": self.exact_range_max}

    def unload(self) -> None:
        """Release every range's forest."""
        for ann in self._forests:
            ann.unload()

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        spec: dict[str, Any],
        vectors: np.ndarray,
        n_trees: int = 50,
        search_k: int = -1,
        seed: int = 42,
        search_k_ref: int = 100,
        prefault: bool = False,
    ) -> NormRangedAnnoyIndex:
        """Memory-map the ranges described by ``spec`` (the manifest entry from :meth:`save`)."""
        directory = Path(directory)
        v = check_vectors(vectors, "item vectors")
        bounds, files = list(spec["bounds"]), list(spec["files"])
        if len(files) != len(bounds) - 1 or bounds[0] != 0 or bounds[-1] != len(v) or len(spec["max_norms"]) != len(files):
            raise BundleError(f"{directory}: norm ranges {bounds} do not fit {len(v)} item vectors and {len(files)} files")
        idx = cls(n_ranges=len(files), n_trees=n_trees, search_k=search_k, seed=seed, search_k_ref=search_k_ref,
                  exact_range_max=int(spec.get("exact_range_max", 0)))
        idx.vectors_ = v
        try:
            order = np.load(directory / spec["order_file"], allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BundleError(f"cannot read {directory / spec['order_file']}: {e}") from e
        if order.shape != (len(v),) or not np.array_equal(np.bincount(order, minlength=len(v)), np.ones(len(v), np.int64)):
            raise BundleError(f"{directory / spec['order_file']} is not a permutation of the {len(v)} items")
        forests = []
        for r, name in enumerate(files):
            ann = annoy.AnnoyIndex(v.shape[1] + 1, "angular")
            try:
                ann.load(os.fspath(directory / name), prefault=prefault)
            except OSError as e:
                raise BundleError(f"cannot load Annoy index {directory / name}: {e}") from e
            if ann.get_n_items() != bounds[r + 1] - bounds[r]:
                raise BundleError(f"{directory / name} holds {ann.get_n_items()} items, range {r} has "
                                  f"{bounds[r + 1] - bounds[r]}; the files come from different exports")
            forests.append(ann)
        idx._set_ranges(order, bounds, spec["max_norms"], forests)
        return idx

    # -- search ------------------------------------------------------------------------
    def _search(
        self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(queries), k), -1, np.int64)
        out = np.full((len(queries), k), -np.inf, np.float32)
        if allowed is not None and len(allowed) <= self.exact_subset_max:
            return self._exact(queries, k, exclude, allowed)
        allowed_mask, scale = None, 1.0
        if allowed is not None:  # expect len(allowed)/n_items of the candidates to pass
            allowed_mask = np.zeros(self.n_items, bool)
            allowed_mask[allowed] = True
            scale = self.n_items / max(len(allowed), 1)
        for r, q in enumerate(queries):
            blocked = exclude[r] if exclude is not None else np.empty(0, np.int64)
            n_fetch = min(self.n_items, int(math.ceil((k + len(blocked)) * scale)))
            while (got := self._search_one(q, k, blocked, allowed_mask, n_fetch)) is None and n_fetch < self.n_items:
                n_fetch = min(self.n_items, n_fetch * 2)  # too few survived the filters: fetch (and search) more
            if got is None:  # still fewer than k: a scan is exact
                ids[r], out[r] = self._exact(q[None], k, [blocked], allowed)
            else:
                ids[r], out[r] = got
        return ids, out

    def _search_one(self, q: np.ndarray, k: int, blocked: np.ndarray, allowed_mask: np.ndarray | None,
                    n_fetch: int) -> tuple[np.ndarray, np.ndarray] | None:
        q_norm = float(np.linalg.norm(q))
        aq = [*q.tolist(), 0.0]
        sk = scaled_search_k(self.search_k, n_fetch, self.search_k_ref)
        # Blocked items are removed once at the end, not per range (np.isin over a scanned
        # range cost more than the search). Until then every range keeps its best
        # m = k + len(blocked), and the cut-off compares with the m-th best score so far:
        # at most len(blocked) of those can be blocked, so it never exceeds the k-th
        # best valid score and stays a sound bound.
        m = k + len(blocked)
        cand: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        n_kept, bound = 0, -np.inf
        for rng_ids, ann, vecs, max_norm in zip(self._range_ids, self._forests, self._range_vecs, self.max_norms_):
            if n_kept >= m and max_norm * q_norm * (1 + _BOUND_SLACK) < bound:
                break  # no item of this or any later (shorter) range can reach the top k
            if vecs is not None or (0 < sk and sk >= len(rng_ids)):  # scan: small range, or Annoy would see it all
                g, s = rng_ids, (vecs if vecs is not None else self.vectors_[rng_ids]) @ q
            else:
                g = rng_ids[np.asarray(ann.get_nns_by_vector(aq, min(n_fetch, len(rng_ids)), search_k=sk), np.int64)]
                s = self.vectors_[g] @ q
            if allowed_mask is not None:
                keep = allowed_mask[g]
                g, s = g[keep], s[keep]
            if len(s) > m:  # only a range's own best m can matter
                top = np.argpartition(s, len(s) - m)[len(s) - m:]
                g, s = g[top], s[top]
            cand.append(g)
            scores.append(s)
            n_kept += len(g)
            if n_kept >= m:
                bound = float(np.partition(np.concatenate(scores), -m)[-m]) if len(cand) > 1 else float(s.min())
        g, s = np.concatenate(cand), np.concatenate(scores)
        if blocked.size:
            keep = ~np.isin(g, blocked)
            g, s = g[keep], s[keep]
        if len(g) < k:
            return None
        order = np.argsort(-s, kind="stable")[:k]
        return g[order], s[order].astype(np.float32)

    def _exact(self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None,
               allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        from recsys.index.exact import ExactIndex

        return ExactIndex.from_prepared(self.vectors_, "dot")._search(queries, k, exclude, allowed)

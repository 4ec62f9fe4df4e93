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
Forest candidates are ranked by the score their Annoy angle implies; the final top k
are re-scored exactly. Budgets are per range (``range_search_k``, set by the gate).

Files: one ``.ann`` per range plus the norm order (``norm_order.npy``, item indices by
descending norm), written and checked by :mod:`recsys.index.norm_ranged_io`;
:meth:`NormRangedAnnoyIndex.save` returns the manifest entry that
:meth:`NormRangedAnnoyIndex.load` needs. The index is served as the ``"annoy"`` backend
(:meth:`recsys.index.annoy_index.AnnoyIndex.create` picks it).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import annoy
import numpy as np

from recsys.errors import BundleError, InputError
from recsys.index.annoy_forest import augment_inner_product, build_forest, scaled_search_k
from recsys.index.base import VectorIndex, check_k, check_vectors
from recsys.index.lanes import Lanes
from recsys.index.norm_ranged_io import ORDER_FILE, read_ranges, write_ranges  # noqa: F401 (ORDER_FILE: public name)
from recsys.index.range_budgets import tune_range_search_k
from recsys.index.recall import TuneResult

log = logging.getLogger(__name__)

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
    range_search_k : sequence of int, optional
        One ``search_k`` per range, overriding ``search_k``. The ranges hold very
        different shares of a typical top-k (measured at 1M clustered items: 29% in the
        125k range, none in the 500k range of the shortest vectors), so one budget for
        all wastes most of it; the recall gate
        (:func:`~recsys.index.range_budgets.tune_range_search_k`) sets it from each range's
        measured recall curve. 0 skips a searched range: the gate sets it only where its
        sample held none of the true top-k (1M clustered items: the 500k shortest
        vectors, which the Cauchy-Schwarz cut-off cannot rule out).
    angular_max_ratio : float
        A range whose longest vector is at most this many times its shortest gets a
        plain angular forest over the raw vectors instead of the MIPS-augmented one; its
        candidates are ranked by ``cos * |x| * |q|``. Within such a narrow band the
        angle decides nearly all of the ranking, and the extra coordinate (up to
        ``M * sqrt(1 - 1/ratio^2)``, e.g. 0.55 M at ratio 1.2) only spends the trees'
        splits on a direction the query does not have. Measured on the 1M clustered
        catalogue (ratios 1.13-1.24), 50 trees, recall of a range's own top-100 items
        at search_k 800: 0.957 vs 0.949, 0.960 vs 0.936, 0.945 vs 0.916; on MF-like
        vectors at ratio 1.28 both were equal. Wider ranges keep the transform, which
        stays exact for any spread of norms. 1.0 (or less): always the transform.
    search_threads : int
        Threads one query may use for its forest searches (:mod:`recsys.index.lanes`):
        for services with cores to spare at low concurrency. 1 (default): none borrowed.
    """

    kind = "annoy-norm-ranged"
    backend = "annoy"
    effort_name = "search_k"
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
        range_search_k: Sequence[int] | None = None,
        angular_max_ratio: float = 1.3,
        search_threads: int = 1,
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
        self.range_search_k = None if range_search_k is None else [int(v) for v in range_search_k]
        self.angular_max_ratio = float(angular_max_ratio)
        self.search_threads = max(1, int(search_threads))
        self._lanes = Lanes(self.search_threads) if self.search_threads > 1 else None

    @property
    def annoy_dim(self) -> int:
        return self.dim + 1

    # -- build / persist ---------------------------------------------------------------
    def build(self, vectors: Any) -> NormRangedAnnoyIndex:
        """Sort items by norm, cut the ranges and build one forest per range."""
        self.vectors_ = self._prepare_items(vectors)
        norms = np.linalg.norm(self.vectors_.astype(np.float64), axis=1)
        order = np.argsort(-norms, kind="stable")
        bounds = range_bounds(len(order), self.n_ranges, self.min_range)
        forests, transforms = [], []
        for r, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            ratio = norms[order[a]] / max(norms[order[b - 1]], 1e-30)
            transforms.append("angular" if ratio <= self.angular_max_ratio else "mips")
            data = self.vectors_[order[a:b]] if transforms[-1] == "angular" else augment_inner_product(
                self.vectors_[order[a:b]])[1]
            forests.append(build_forest(data, "angular", self.n_trees, self.seed + r, self.n_jobs))
            log.info("norm range %d: items %d..%d, norms %.4g..%.4g, %s forest", r, a, b, norms[order[a]],
                     norms[order[b - 1]], transforms[-1])
        self._set_ranges(order, bounds, [float(norms[order[a]]) for a in bounds[:-1]], forests, transforms)
        return self

    def _set_ranges(self, order: np.ndarray, bounds: list[int], max_norms: list[float],
                    forests: list[annoy.AnnoyIndex], transforms: list[str]) -> None:
        self.order_ = np.asarray(order, dtype=np.int64)
        self.transforms_ = list(transforms)
        self.norms_ = np.linalg.norm(self.vectors_, axis=1)  # scores of the plain angular ranges
        self.bounds_ = [int(b) for b in bounds]
        self.max_norms_ = [float(m) for m in max_norms]
        self._forests = forests
        self._range_ids = [self.order_[a:b] for a, b in zip(self.bounds_[:-1], self.bounds_[1:])]
        self._pos = np.empty(len(self.order_), np.int64)  # item -> its place in the norm order
        self._pos[self.order_] = np.arange(len(self.order_))
        # What a query visits, longest vectors first: (range, item ids, forest, contiguous
        # copy to scan or None, max norm, plain angular forest?). Adjacent scanned ranges
        # are merged into one segment: one BLAS call and one partition instead of one per range.
        segments: list[tuple[int, np.ndarray, annoy.AnnoyIndex | None, np.ndarray | None, float, bool]] = []
        for scan, group in itertools.groupby(range(len(self._range_ids)), key=self.scanned_ranges().__getitem__):
            rs = list(group)
            if scan:
                ids = np.concatenate([self._range_ids[r] for r in rs])
                segments.append((rs[0], ids, None, np.ascontiguousarray(self.vectors_[ids]), self.max_norms_[rs[0]], False))
            else:
                segments += [(r, self._range_ids[r], forests[r], None, self.max_norms_[r], self.transforms_[r] == "angular")
                             for r in rs]
        self._segments = segments

    @property
    def n_ranges_(self) -> int:
        """Number of norm ranges actually built (fewer than ``n_ranges`` for small catalogues)."""
        return len(self._range_ids)

    def scanned_ranges(self) -> list[bool]:
        """Which ranges are scanned exactly at query time (their forests are not searched)."""
        return [len(ids) <= self.exact_range_max for ids in self._range_ids]

    def _budgets(self) -> list[int]:
        if self.range_search_k is None:  # one value for all; 0 must not read as "skip"
            return [self.search_k if self.search_k != 0 else -1] * self.n_ranges_
        if len(self.range_search_k) != self.n_ranges_:
            raise InputError(f"range_search_k has {len(self.range_search_k)} values for {self.n_ranges_} ranges")
        return self.range_search_k

    def save(self, directory: str | os.PathLike, prefix: str = "index") -> dict[str, Any]:
        """Write ``<prefix>-NN.ann`` per range and :data:`ORDER_FILE`; return the manifest entry.

        The ranges themselves are described under ``entry["ranges"]``.
        """
        self._check_built()
        files = write_ranges(directory, self._forests, self.order_, prefix)
        spec: dict[str, Any] = {"order_file": ORDER_FILE, "bounds": self.bounds_, "max_norms": self.max_norms_,
                                "files": files, "exact_range_max": self.exact_range_max,
                                "transforms": self.transforms_}
        if self.range_search_k is not None:
            spec["search_k"] = list(self._budgets())
        return {"backend": self.backend, "file": None, "files": [*files, ORDER_FILE], "ranges": spec,
                "metric": self.metric, "transform": self.transform, "annoy_dim": self.annoy_dim,
                "n_trees": self.n_trees, "search_k": self.search_k, "search_k_ref": self.search_k_ref,
                "seed": self.seed}

    def unload(self) -> None:
        """Release every range's forest (and the search threads)."""
        for ann in self._forests:
            ann.unload()
        if self._lanes is not None:
            self._lanes.close()

    @classmethod
    def load(cls, directory: str | os.PathLike, entry: Mapping[str, Any], vectors: np.ndarray,
             similarity: str = "dot", *, prefault: bool = False, search_threads: int = 1) -> NormRangedAnnoyIndex:
        """Memory-map the ranges of a manifest entry from :meth:`save` (files checked by
        :func:`~recsys.index.norm_ranged_io.read_ranges`)."""
        if similarity != "dot" or entry.get("transform", cls.transform) != cls.transform:
            raise BundleError(f"{directory}: norm ranges need a dot model and transform {cls.transform!r}; "
                              "the bundle was written by another recsys version")
        v = check_vectors(vectors, "item vectors")
        f = read_ranges(directory, entry["ranges"], len(v), v.shape[1], prefault=prefault)
        idx = cls(n_ranges=len(f.forests), n_trees=entry.get("n_trees", 50), search_k=entry.get("search_k", -1),
                  seed=entry.get("seed", 42), search_k_ref=entry.get("search_k_ref", 100),
                  exact_range_max=f.exact_range_max, range_search_k=f.budgets, search_threads=search_threads)
        idx.vectors_ = v
        idx._set_ranges(f.order, f.bounds, f.max_norms, f.forests, f.transforms)
        return idx

    def effort_bounds(self, k: int) -> tuple[int, int]:
        """As for one forest: ``n_trees * k`` up to ``n_trees * n_items`` (every leaf of every tree)."""
        return self.n_trees * k, self.n_trees * self.n_items

    def refine(self, queries: np.ndarray, truth: np.ndarray, k: int, threshold: float) -> TuneResult:
        """Per-range budgets priced from each range's recall curve (:mod:`recsys.index.range_budgets`)."""
        return tune_range_search_k(self, queries, truth, k=k, threshold=threshold)

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
        q_raw = q.tolist()
        aq = [*q_raw, 0.0]
        budgets = self._budgets()
        # Blocked items are dropped from each segment as it is searched. Only those that
        # score at least the k-th best valid score found so far can push a true item out
        # of a range's answer, so each forest is asked for k + (that many) candidates,
        # over-fetched by the caller's factor, with search_k scaled to match: seen items
        # far down the ranking (most of a long history) cost nothing, while a user whose
        # seen items fill the top still gets the full over-fetch.
        over = max(1.0, n_fetch / (k + len(blocked)))
        n_hot = len(blocked)
        if n_hot:
            b_sorted = np.sort(blocked)
            b_scores = self.vectors_[b_sorted] @ q
            b_pos = self._pos[b_sorted]

        def fetch(seg: tuple) -> tuple | None:
            """The GIL-free part: a forest's raw answer (None: scan the range instead)."""
            r, rng_ids, ann, vecs, _, plain = seg
            n_r = min(len(rng_ids), int(math.ceil((k + n_hot) * over)))
            sk = scaled_search_k(budgets[r], n_r, self.search_k_ref)
            if vecs is not None or (0 < sk and sk >= len(rng_ids)):  # small range, or Annoy would see it all
                return None
            return ann.get_nns_by_vector(q_raw if plain else aq, n_r, search_k=sk, include_distances=True)

        def scores(seg: tuple, raw: tuple | None) -> tuple[np.ndarray, np.ndarray]:
            """One segment's candidates and scores, blocked items removed."""
            _, rng_ids, _, vecs, max_norm, plain = seg
            if raw is None:
                g, s = rng_ids, (vecs if vecs is not None else self.vectors_[rng_ids]) @ q
                if len(blocked):
                    start = int(self._pos[rng_ids[0]])
                    inside = (b_pos >= start) & (b_pos < start + len(rng_ids))
                    s[b_pos[inside] - start] = -np.inf
            else:  # score from Annoy's angle and the norms: |x_aug| = max_norm in an augmented range
                g = rng_ids[np.asarray(raw[0], np.int64)]
                d = np.asarray(raw[1], np.float64)
                s = (1.0 - 0.5 * d * d) * ((self.norms_[g] if plain else max_norm) * q_norm)
                if len(blocked):  # sorted lookup: np.isin costs more on these short arrays
                    keep = b_sorted[np.minimum(np.searchsorted(b_sorted, g), len(b_sorted) - 1)] != g
                    g, s = g[keep], s[keep]
            if allowed_mask is not None:
                keep = allowed_mask[g]
                g, s = g[keep], s[keep]
            return g, s

        # skip the ranges the gate found empty (budget 0, see range_budgets)
        todo = [seg for seg in self._segments if seg[3] is not None or budgets[seg[0]] != 0]
        # the best k candidates so far and the k-th best score (-inf until there are k)
        pool_g, pool_s, kth = np.empty(0, np.int64), np.empty(0, np.float64), -np.inf
        while todo:
            if todo[0][4] * q_norm * (1 + _BOUND_SLACK) < kth:
                break  # Cauchy-Schwarz: no item of this or any later (shorter) range reaches the top k
            if self._lanes is not None and todo[0][3] is None and len(todo) > 1:
                # the remaining forests at once, their Annoy searches on free helper threads
                # (lanes.py); the numpy work stays here, off the threads' GIL hand-offs
                batch = [seg for seg in todo if seg[4] * q_norm * (1 + _BOUND_SLACK) >= kth]
                raws = self._lanes.run(fetch, batch, [budgets[seg[0]] + 300 for seg in batch])
                found, todo = [scores(seg, raw) for seg, raw in zip(batch, raws)], []
            else:
                found, todo = [scores(todo[0], fetch(todo[0]))], todo[1:]
            if len(pool_s):
                found = [(pool_g, pool_s), *found]
            g = found[0][0] if len(found) == 1 else np.concatenate([f[0] for f in found])
            s = found[0][1] if len(found) == 1 else np.concatenate([f[1] for f in found])
            if len(s) > k:
                top = np.argpartition(s, len(s) - k)[len(s) - k:]
                g, s = g[top], s[top]
            pool_g, pool_s = g, s
            if len(pool_s) == k:
                kth = float(pool_s.min())  # -inf while blocked scan items still fill the pool
                if n_hot and kth > -np.inf:
                    n_hot = int(np.count_nonzero(b_scores >= kth))
        g = pool_g[pool_s > -np.inf]
        if len(g) < k:
            return None
        s = self.vectors_[g] @ q  # exact scores (forest candidates were ranked by Annoy's float32 angles)
        order = np.argsort(-s, kind="stable")
        return g[order], s[order].astype(np.float32)

    def range_of(self) -> np.ndarray:
        """The norm range of every item (int array over item indices)."""
        self._check_built()
        return np.searchsorted(self.bounds_, self._pos, side="right") - 1

    def range_candidates(self, r: int, q: np.ndarray, n: int, search_k: int) -> np.ndarray:
        """Item indices that range ``r``'s forest returns for one prepared query vector."""
        ids = self._range_ids[r]
        v = q.tolist() if self.transforms_[r] == "angular" else [*q.tolist(), 0.0]
        return ids[np.asarray(self._forests[r].get_nns_by_vector(v, min(n, len(ids)), search_k=int(search_k)), np.int64)]

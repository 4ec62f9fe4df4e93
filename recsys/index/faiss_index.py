"""The ``faiss`` backend: an HNSW graph (faiss ``IndexHNSWFlat``), an optional extra.

Why a second backend: Annoy's trees need a large ``search_k`` on hard catalogues (many
small clusters, or a skewed norm distribution), and a graph index usually reaches the
same recall@100 with fewer distance computations. ``benchmarks/bench_retrieval.py``
compares both side by side (docs/retrieval.md).

* cosine models: HNSW with inner product over the unit-length item vectors (so inner
  product is cosine);
* dot models: HNSW with inner product over the raw vectors, a non-metric similarity
  graph (ip-NSW: Morozov and Babenko, "Non-metric Similarity Graphs for Maximum Inner
  Product Search", NeurIPS 2018). Not the MIPS -> L2 transform (extra coordinate
  ``sqrt(M^2 - |x|^2)``, as Annoy uses): with skewed norms most augmented items crowd
  near one pole and the graph loses its way. Measured at 10k items, M 32,
  efConstruction 200, recall@100 at ef_search 100 / 400 / 1600: MF-like vectors 0.968 /
  0.997 / 0.999 with inner product against 0.147 / 0.321 / 0.610 augmented; clusters
  0.980 / 0.999 / 1.000 against 0.506 / 0.765 / 0.964 (docs/retrieval.md). A flat
  (exhaustive) inner-product index would be exact, but that is
  :class:`~recsys.index.exact.ExactIndex`.

Like Annoy, HNSW returns candidates: their scores are recomputed exactly from the item
vectors. Filters use faiss ID selectors (``SearchParametersHNSW.sel``): a query's
block-list and the shared allow-list are applied inside the graph search, so blocked
items never take a result slot; a row that still comes back short of ``k`` (an
allow-list far from the query) is scanned exactly, and allow-lists up to
``exact_subset_max`` items are always scanned.

faiss is imported when an index is built or loaded, so ``import recsys`` works without
it; a missing faiss raises :class:`~recsys.errors.ConfigError` naming
``pip install recsys[faiss]``. Files: ``index.faiss`` written by ``faiss.write_index``
(no pickle). The graph's level assignment uses faiss's fixed internal seed, and a
multi-threaded build (OpenMP) may link the graph in a different order, so builds are
reproducible only with one OpenMP thread; the recall gate holds every build to the
same threshold.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from recsys.errors import BundleError, ConfigError, InputError
from recsys.index.annoy_forest import scaled_search_k
from recsys.index.base import VectorIndex, check_k, check_similarity, check_vectors, normalize_rows

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
#: what the graph is built on (recorded in the manifest and checked on load)
TRANSFORMS = {"dot": "none", "cosine": "unit_vectors"}


def import_faiss() -> ModuleType:
    """The faiss module, or a :class:`ConfigError` that says how to install it."""
    try:
        import faiss  # optional dependency: recsys[faiss]
    except ImportError as e:
        raise ConfigError("index backend 'faiss' needs the faiss package: pip install 'recsys[faiss]' "
                          "(or pip install faiss-cpu), or set [index] backend = \"annoy\"") from e
    return faiss


class FaissHNSWIndex(VectorIndex):
    """HNSW graph over item vectors (faiss), with exact re-scoring of the candidates.

    Parameters
    ----------
    similarity : {"dot", "cosine"}
    m : int
        Graph degree (``M``): more links, better recall per ``ef_search``, more memory
        (about ``2 * m`` int32 per item on the base level).
    ef_construction : int
        Beam width while building: a better graph for a longer build.
    ef_search : int
        Beam width per query for ``search_k_ref`` results (the recall gate tunes it);
        ``-1``: ``search_k_ref``. Queries that must skip excluded items scale it by
        ``(k + n_excluded) / search_k_ref``, like Annoy's ``search_k``.
    search_k_ref : int
        The result count ``ef_search`` was tuned for (the recall gate's K).
    exact_subset_max : int
        Allow-lists up to this size are scanned exactly.
    """

    kind = "faiss-hnsw"
    backend = "faiss"
    effort_name = "ef_search"

    def __init__(self, similarity: str = "dot", m: int = 32, ef_construction: int = 200, ef_search: int = -1,
                 search_k_ref: int = 100, exact_subset_max: int = 20_000) -> None:
        super().__init__(similarity)
        if int(m) < 2 or int(ef_construction) <= 0:
            raise InputError(f"hnsw m must be >= 2 and ef_construction positive, got {m}, {ef_construction}")
        self.m = int(m)
        self.ef_construction = int(ef_construction)
        self.ef_search = int(ef_search)
        self.search_k_ref = check_k(search_k_ref)
        self.exact_subset_max = int(exact_subset_max)

    @property
    def transform(self) -> str:
        """``"none"`` (raw vectors) for dot models, ``"unit_vectors"`` for cosine; inner product for both."""
        return TRANSFORMS[self.similarity]

    @classmethod
    def create(cls, similarity: str, n_items: int, settings: Mapping[str, Any]) -> FaissHNSWIndex:
        """From the ``[index]`` keys ``hnsw_m``, ``hnsw_ef_construction``, ``search_k`` (the first
        ``ef_search`` the gate tries) and ``recall_k``."""
        return cls(similarity, m=settings.get("hnsw_m", 32), ef_construction=settings.get("hnsw_ef_construction", 200),
                   ef_search=settings.get("search_k", -1), search_k_ref=settings.get("recall_k", 100))

    # -- build / persist ---------------------------------------------------------------
    def build(self, vectors: Any) -> FaissHNSWIndex:
        """Add every item to a new graph (faiss's own OpenMP threads)."""
        faiss = import_faiss()
        self.vectors_ = self._prepare_items(vectors)  # cosine: unit length, so inner product is cosine
        index = faiss.IndexHNSWFlat(self.dim, self.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.add(np.ascontiguousarray(self.vectors_))
        self._index = index
        log.info("faiss hnsw: %d items, dim %d, M %d, efConstruction %d, %s", self.n_items, self.dim, self.m,
                 self.ef_construction, self.similarity)
        return self

    def save(self, directory: str | os.PathLike) -> dict[str, Any]:
        """Write :data:`INDEX_FILE` (``faiss.write_index``) and return the manifest entry."""
        self._check_built()
        faiss = import_faiss()
        faiss.write_index(self._index, os.fspath(Path(directory) / INDEX_FILE))
        return {"backend": self.backend, "files": [INDEX_FILE], "transform": self.transform,
                "faiss_dim": int(self._index.d), "hnsw_m": self.m, "hnsw_ef_construction": self.ef_construction,
                "search_k": self.ef_search, "search_k_ref": self.search_k_ref, "faiss_version": faiss.__version__}

    @classmethod
    def load(cls, directory: str | os.PathLike, entry: Mapping[str, Any], vectors: np.ndarray, similarity: str, *,
             prefault: bool = False, search_threads: int = 1) -> FaissHNSWIndex:
        """Read ``index.faiss`` and check it against the entry and the item vectors.

        The graph is read into memory (faiss cannot memory-map an HNSW index);
        ``prefault`` and ``search_threads`` do not apply.
        """
        faiss = import_faiss()
        idx = cls(check_similarity(similarity), m=entry.get("hnsw_m", 32),
                  ef_construction=entry.get("hnsw_ef_construction", 200), ef_search=entry.get("search_k", -1),
                  search_k_ref=entry.get("search_k_ref", 100))
        if entry.get("transform") != idx.transform:
            raise BundleError(f"{directory}: faiss transform {entry.get('transform')!r} does not fit a {similarity} "
                              f"model ({idx.transform!r}); the bundle was written by another recsys version")
        v = check_vectors(vectors, "item vectors")
        path = Path(directory) / (cls.entry_files(entry) or [INDEX_FILE])[0]
        try:
            index = faiss.read_index(os.fspath(path))
        except RuntimeError as e:  # faiss reports unreadable files as RuntimeError
            raise BundleError(f"cannot load faiss index {path}: {str(e).splitlines()[0]}") from e
        want_dim = v.shape[1]
        if index.ntotal != len(v) or index.d != want_dim:
            raise BundleError(f"{path} holds {index.ntotal} items of dimension {index.d}, expected {len(v)} x "
                              f"{want_dim}; the index and the vectors come from different exports")
        idx.vectors_ = normalize_rows(v) if similarity == "cosine" else v
        idx._index = index
        return idx

    def unload(self) -> None:
        """Drop the graph (faiss frees it when the last reference goes)."""
        self._index = None

    def effort_bounds(self, k: int) -> tuple[int, int]:
        """``ef_search`` from ``k`` (faiss never searches with less) up to ``32 * k`` (capped at n_items)."""
        return k, max(k, min(self.n_items, 32 * k))

    # -- search ------------------------------------------------------------------------
    def _params(self, faiss: ModuleType, n: int, sel: Any = None) -> Any:
        ef = self.ef_search if self.ef_search > 0 else self.search_k_ref
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(n, scaled_search_k(ef, n, self.search_k_ref))
        if sel is not None:
            params.sel = sel
        return params

    def _rescore(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        cand = cand[cand >= 0]
        s = self.vectors_[cand] @ q
        order = np.argsort(-s, kind="stable")[:k]
        return cand[order], s[order].astype(np.float32)

    def _search(
        self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if allowed is not None and len(allowed) <= self.exact_subset_max:
            return self._exact(queries, k, exclude, allowed)
        faiss = import_faiss()
        n_items = self.n_items
        kk = min(k, n_items)
        ids = np.full((len(queries), k), -1, np.int64)
        out = np.full((len(queries), k), -np.inf, np.float32)
        gq = np.ascontiguousarray(queries)
        allow_sel = None if allowed is None else faiss.IDSelectorBatch(allowed)
        scale = 1.0 if allowed is None else n_items / max(len(allowed), 1)
        filtered = allowed is not None or (exclude is not None and any(len(e) for e in exclude))
        if not filtered:  # one batched call (faiss spreads the queries over its threads)
            _, cand = self._index.search(gq, kk, params=self._params(faiss, kk))
            rows = [(r, cand[r]) for r in range(len(queries))]
        else:  # a selector per query: its block-list, and the allow-list
            rows = []
            for r in range(len(queries)):
                blocked = exclude[r] if exclude is not None else np.empty(0, np.int64)
                sel = allow_sel  # faiss's wrappers keep the selectors they combine alive
                if len(blocked):
                    block = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.ascontiguousarray(blocked, np.int64)))
                    sel = block if allow_sel is None else faiss.IDSelectorAnd(allow_sel, block)
                n_eff = min(n_items, int(math.ceil((k + len(blocked)) * scale)))
                _, cand = self._index.search(gq[r : r + 1], kk, params=self._params(faiss, n_eff, sel))
                rows.append((r, cand[0]))
        for r, cand in rows:
            if np.count_nonzero(cand >= 0) < kk:  # the graph found too few allowed items: a scan is exact
                ids[r], out[r] = self._exact(queries[r : r + 1], k, None if exclude is None else [exclude[r]], allowed)
                continue
            got, s = self._rescore(queries[r], cand, k)
            ids[r, : len(got)], out[r, : len(got)] = got, s
        return ids, out

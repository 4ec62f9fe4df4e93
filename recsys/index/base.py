"""The index contract: what every search backend (exact, Annoy, faiss ...) provides.

An index answers "which items have the highest score for this query vector?" on
contiguous int item indices. Scores are always the *model's* similarity (inner product
for ``"dot"`` models, cosine for ``"cosine"`` models), never an index-internal distance,
so an exact and an approximate index can be swapped without the caller noticing
anything but speed and recall.

Like the models, :meth:`VectorIndex.query` returns ``(ids, scores)`` as int64 and
float32 arrays, 1-D for one query vector and 2-D for many; slots that cannot be filled
(fewer allowed items than ``k``) hold ``-1`` / ``-inf``.

The contract (:class:`VectorIndex`), so that a backend is one module plus one line in
:mod:`recsys.index.registry` and nothing above the index layer names it:

* :meth:`~VectorIndex.create` a new index from the ``[index]`` settings, then
  :meth:`~VectorIndex.build` it over item vectors;
* :meth:`~VectorIndex.query` with filters: per-query block-lists and a shared allow-list
  are honoured exactly, whatever the backend;
* :meth:`~VectorIndex.save` writes the backend's files into a fresh directory and returns
  its manifest entry (JSON, with ``backend`` and ``files``); :meth:`~VectorIndex.load`
  reads them back from that entry plus the item vectors (which every bundle stores once,
  for exact re-scoring). Checksums of the files are the bundle's job
  (:mod:`recsys.serving.reader` verifies them before :meth:`~VectorIndex.load` runs);
* a measured recall gate: :attr:`~VectorIndex.effort_name` names the one search-effort
  knob (Annoy ``search_k``, HNSW ``ef_search``) that
  :func:`recsys.index.recall.tune_search_k` lowers to the cheapest value whose recall@K
  against exact search passes, and :meth:`~VectorIndex.refine` may spend a second pass
  (Annoy's per-norm-range budgets).

The tests of ``tests/test_index_contract.py`` run against every registered backend.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recsys.errors import InputError, NotFittedError

SIMILARITIES = ("dot", "cosine")


def check_vectors(vectors: Any, name: str = "vectors", dim: int | None = None) -> np.ndarray:
    """Validate a 2-D float matrix and return it as C-contiguous float32.

    NaN and infinite values are refused here because Annoy accepts them silently and
    then returns the broken items as neighbours of every query (with ``dot`` or
    ``euclidean``) or corrupts the tree splits.
    """
    try:
        arr = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must be a numeric array: {e}") from e
    if arr.ndim != 2:
        raise InputError(f"{name} must be 2-D (n, dim), got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise InputError(f"{name} have dimension {arr.shape[1]}, the index was built with {dim}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise InputError(
            f"{name} contain NaN or infinite values in {int(bad.sum())} row(s), e.g. rows {rows}; "
            "fix or drop those vectors before building or querying an index"
        )
    return np.ascontiguousarray(arr)


def check_k(k: Any) -> int:
    """``k`` must be a positive int (bools and floats are refused)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise InputError(f"k must be a positive integer, got {k!r}")
    return int(k)


def check_similarity(similarity: str) -> str:
    if similarity not in SIMILARITIES:
        raise InputError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    return similarity


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


class VectorIndex(abc.ABC):
    """Top-k search over item vectors by ``"dot"`` or ``"cosine"`` similarity.

    Parameters
    ----------
    similarity : {"dot", "cosine"}
        The model's similarity; ``"cosine"`` vectors are normalised at build time.
    """

    #: short name of this index class in logs and benchmark tables
    kind: str = "base"
    #: registry name (:mod:`recsys.index.registry`) recorded in the manifest entry
    backend: str = "base"
    #: attribute the recall gate tunes (cost against recall); None: nothing to tune
    effort_name: str | None = None

    def __init__(self, similarity: str = "dot") -> None:
        self.similarity = check_similarity(similarity)

    # -- state -------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        self._check_built()
        return int(self.vectors_.shape[0])

    @property
    def dim(self) -> int:
        self._check_built()
        return int(self.vectors_.shape[1])

    def _check_built(self) -> None:
        if not hasattr(self, "vectors_"):
            raise NotFittedError(f"{type(self).__name__} is not built; call build() or load() first")

    def _prepare_items(self, vectors: Any) -> np.ndarray:
        v = check_vectors(vectors, "item vectors")
        if v.shape[0] == 0:
            raise InputError("cannot build an index over zero items")
        return normalize_rows(v) if self.similarity == "cosine" else v

    def _prepare_queries(self, vectors: Any) -> tuple[np.ndarray, bool]:
        arr = np.asarray(vectors)
        single = arr.ndim == 1
        q = check_vectors(arr[None, :] if single else arr, "query vectors", self.dim)
        return (normalize_rows(q) if self.similarity == "cosine" else q), single

    def _exact(self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None,
               allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact scan over the prepared item vectors (dot product: cosine vectors are
        already unit length): the fallback of the approximate indexes for small
        allow-lists and for rows that the filters left short of ``k``."""
        from recsys.index.exact import ExactIndex

        return ExactIndex.from_prepared(self.vectors_, "dot")._search(queries, k, exclude, allowed)

    # -- interface ---------------------------------------------------------------------
    @classmethod
    def create(cls, similarity: str, n_items: int, settings: Mapping[str, Any]) -> VectorIndex:
        """A new, unbuilt index for ``n_items`` vectors from the ``[index]`` settings.

        ``settings`` is the whole section as a mapping (``IndexConfig`` fields); each
        backend reads the keys it knows. The catalogue size is given because a backend
        may pick its layout from it (Annoy: norm ranges only when there is enough to cut).
        """
        return cls(similarity)

    @abc.abstractmethod
    def build(self, vectors: Any) -> VectorIndex:
        """Index ``vectors`` (n_items, dim); row ``i`` gets item index ``i``. Returns self."""

    @abc.abstractmethod
    def save(self, directory: str | os.PathLike) -> dict[str, Any]:
        """Write the index files into ``directory`` and return the manifest entry.

        The entry is JSON: ``backend`` (the registry name), ``files`` (every file
        written, for the bundle's checksums) and whatever :meth:`load` needs. Never
        save into a directory a live process has memory-mapped: the bundle writes each
        export into a new one.
        """

    @classmethod
    @abc.abstractmethod
    def load(cls, directory: str | os.PathLike, entry: Mapping[str, Any], vectors: np.ndarray, similarity: str, *,
             prefault: bool = False, search_threads: int = 1) -> VectorIndex:
        """Read what :meth:`save` wrote; ``vectors`` are the original item vectors.

        Raises :class:`~recsys.errors.BundleError` when the files do not fit the entry
        or the vectors.
        """

    @classmethod
    def entry_files(cls, entry: Mapping[str, Any]) -> list[str]:
        """The files a manifest entry names (the bundle checks they are there)."""
        return [str(f) for f in entry.get("files", [])]

    def effort_bounds(self, k: int) -> tuple[int, int]:
        """Default first and largest value of :attr:`effort_name` for results of ``k`` items."""
        raise NotImplementedError(f"{type(self).__name__} has no search effort to tune")

    def refine(self, queries: np.ndarray, truth: np.ndarray, k: int, threshold: float) -> Any:
        """A second tuning pass after the gate's one passing effort; None: nothing to refine.

        Returns a :class:`~recsys.index.recall.TuneResult` (applied to the index only if
        it passed).
        """
        return None

    def unload(self) -> None:
        """Release memory and file mappings; the index is unusable after. Default: nothing held."""

    @abc.abstractmethod
    def _search(
        self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """2-D search on prepared (validated, normalised) queries."""

    def query(
        self,
        vectors: Any,
        k: int,
        exclude: Sequence[np.ndarray] | None = None,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for one query vector (1-D in/out) or many (2-D).

        Parameters
        ----------
        vectors : array (dim,) or (n, dim)
        k : int
        exclude : sequence of int arrays, optional
            One block-list of item indices per query (e.g. the user's seen items).
            Excluded items never appear, whatever the backend.
        allowed : int array, optional
            Allow-list shared by all queries: only these item indices may be returned.

        Returns
        -------
        ids : int64 array, scores : float32 array
            Sorted by descending model similarity; unfillable slots are ``-1``/``-inf``.
        """
        self._check_built()
        k = check_k(k)
        q, single = self._prepare_queries(vectors)
        if exclude is not None:
            if len(exclude) != len(q):
                raise InputError(f"exclude has {len(exclude)} lists for {len(q)} queries; give one per query")
            exclude = [np.asarray(e, dtype=np.int64).ravel() for e in exclude]
            for e in exclude:
                if e.size and (e.min() < 0 or e.max() >= self.n_items):
                    raise InputError(f"excluded item index out of range [0, {self.n_items})")
        if allowed is not None:
            allowed = np.unique(np.asarray(allowed, dtype=np.int64))
            if allowed.size and (allowed[0] < 0 or allowed[-1] >= self.n_items):
                raise InputError(f"allowed item index out of range [0, {self.n_items})")
        ids, scores = self._search(q, k, exclude, allowed)
        return (ids[0], scores[0]) if single else (ids, scores)

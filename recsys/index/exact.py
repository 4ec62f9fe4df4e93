"""Exact top-k search with BLAS: the ground truth and the small-catalogue backend.

Scores are computed as a matrix product in batches of queries, so memory stays bounded
at about ``max_batch_floats`` floats whatever the catalogue size, and throughput stays
close to BLAS speed for batches. It is also what the recall gate compares Annoy against.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recsys.errors import BundleError
from recsys.index.base import VectorIndex, check_similarity, check_vectors, normalize_rows
from recsys.models.base import topk

log = logging.getLogger(__name__)


class ExactIndex(VectorIndex):
    """Brute-force top-k by inner product (or cosine) over all item vectors.

    Parameters
    ----------
    similarity : {"dot", "cosine"}
    max_batch_floats : int
        Upper bound on the size of one score block (queries x items); 2**25 floats is
        128 MB. Bigger blocks do not make BLAS faster but do cost memory.
    """

    kind = "exact"
    backend = "exact"

    def __init__(self, similarity: str = "dot", max_batch_floats: int = 1 << 25) -> None:
        super().__init__(similarity)
        self.max_batch_floats = int(max_batch_floats)

    def build(self, vectors: Any) -> ExactIndex:
        """Keep the (validated, for cosine normalised) vectors; nothing else to build."""
        self.vectors_ = self._prepare_items(vectors)
        return self

    def save(self, directory: str | os.PathLike) -> dict[str, Any]:
        """Nothing to write: the bundle stores the item vectors, which are the whole index."""
        self._check_built()
        return {"backend": self.backend, "files": [], "similarity": self.similarity}

    @classmethod
    def load(cls, directory: str | os.PathLike, entry: Mapping[str, Any], vectors: np.ndarray, similarity: str, *,
             prefault: bool = False, search_threads: int = 1) -> ExactIndex:
        """The index over ``vectors`` (``prefault``/``search_threads`` do not apply to a scan)."""
        if entry.get("similarity", similarity) != similarity:
            raise BundleError(f"exact index entry says similarity {entry.get('similarity')!r}, the bundle {similarity!r}")
        v = check_vectors(vectors, "item vectors")
        check_similarity(similarity)
        return cls.from_prepared(normalize_rows(v) if similarity == "cosine" else v, similarity)

    @classmethod
    def from_prepared(cls, vectors: np.ndarray, similarity: str) -> ExactIndex:
        """Wrap already validated vectors without copying (e.g. a memory-mapped file)."""
        idx = cls(similarity)
        idx.vectors_ = vectors if similarity == "dot" else np.ascontiguousarray(vectors)
        return idx

    def scores(self, queries: np.ndarray, items: np.ndarray | None = None) -> np.ndarray:
        """Exact similarity of prepared queries to all items (or to ``items``)."""
        v = self.vectors_ if items is None else self.vectors_[items]
        return np.asarray(queries @ v.T, dtype=np.float32)

    def _search(
        self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        v = self.vectors_ if allowed is None else self.vectors_[allowed]
        n_cols = v.shape[0]
        batch = max(1, self.max_batch_floats // max(n_cols, 1))
        ids = np.full((len(queries), k), -1, np.int64)
        out = np.full((len(queries), k), -np.inf, np.float32)
        if n_cols == 0:
            return ids, out
        for start in range(0, len(queries), batch):
            s = np.asarray(queries[start : start + batch] @ v.T, dtype=np.float32)
            if exclude is not None:
                for r in range(s.shape[0]):
                    blocked = np.asarray(exclude[start + r], dtype=np.int64)
                    if blocked.size == 0:
                        continue
                    if allowed is not None:  # map item indices to columns of the subset
                        blocked = _cols(allowed, blocked)
                    s[r, blocked] = -np.inf
            b_ids, b_scores = topk(s, k)
            if allowed is not None:
                b_ids = np.where(b_ids >= 0, allowed[np.maximum(b_ids, 0)], -1)
            w = b_ids.shape[1]  # topk gives min(k, columns) slots; the rest stay -1 / -inf
            ids[start : start + len(s), :w], out[start : start + len(s), :w] = b_ids, b_scores
        return ids, out


def _cols(allowed: np.ndarray, blocked: np.ndarray) -> np.ndarray:
    """Columns (positions in sorted ``allowed``) of the blocked items that are allowed."""
    pos = np.searchsorted(allowed, blocked)
    ok = pos < len(allowed)
    pos, blocked = pos[ok], blocked[ok]
    return pos[allowed[pos] == blocked]

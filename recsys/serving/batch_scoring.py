"""The compute half of batch top-K: blocks of users scored against a bundle, ranked exactly.

Kept apart from :mod:`recsys.serving.batch` (ids, parquet, manifest) so the scoring can be
measured alone (``benchmarks/bench_batch_topk.py``). :class:`BatchScorer` applies the
Retriever's filters (seen items, allow-list, block-list, cold-user fallback) a block of
users at a time with bounded memory; the ranking is :func:`recsys.ranking.topk_batch`, the
project's one exact top-k (multi-threaded, ties by lower item index). Why the block
sizes: see :mod:`recsys.serving.batch`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from recsys.index.base import check_k, normalize_rows
from recsys.ranking import topk_batch
from recsys.serving.reader import BundleData

log = logging.getLogger(__name__)

#: score block size: 256 MiB of float32 is past the point where BLAS gets faster and
#: keeps a 100k-item catalogue at ~650 users per block
DEFAULT_CHUNK_BYTES = 256 << 20
#: fewest users per block before the catalogue is cut into item blocks instead: a GEMM
#: of fewer rows re-reads the item matrix for too little work
MIN_BLOCK_USERS = 256


# -- scoring blocks of users -------------------------------------------------------------------


class BatchScorer:
    """Exact filtered top-k for blocks of user rows of one bundle (no I/O).

    Parameters
    ----------
    data : BundleData
        The bundle (:func:`recsys.serving.reader.read_bundle`); its user vectors may be
        memory-mapped.
    k : int
        Capped at the catalogue size, as the Retriever does.
    exclude_seen : bool
        Drop each known user's seen items (the bundle's ``seen.npz``).
    allowed, blocked : int arrays of item indices, optional
        Allow-list (only these) and block-list (never these), shared by all users.
    max_chunk_bytes : int
        Bound on one score block (float32 users x items).
    """

    def __init__(self, data: BundleData, k: int, exclude_seen: bool = True, allowed: np.ndarray | None = None,
                 blocked: np.ndarray | None = None, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        n_items = int(data.manifest["n_items"])
        self.k = min(check_k(k), n_items)
        self.similarity = str(data.manifest["similarity"])
        keep = np.ones(n_items, bool) if allowed is None else np.isin(np.arange(n_items), allowed)
        if blocked is not None and len(blocked):
            keep[np.asarray(blocked, np.int64)] = False
        self.cand = np.flatnonzero(keep).astype(np.int64)   # candidate item indices, sorted
        self.n_cand = len(self.cand)
        self.kk = min(self.k, self.n_cand)                   # slots that can be filled
        self.colmap = np.full(n_items, -1, np.int64)
        self.colmap[self.cand] = np.arange(self.n_cand)
        self.seen = data.seen if exclude_seen else None
        self.users = data.user_vectors
        # popularity fallback of unknown users (Retriever._popular): the same list for all
        order = np.argsort(-data.item_popularity, kind="stable")
        self.popular = order[keep[order]][: self.k].astype(np.int64)
        self.popular_scores = data.item_popularity[self.popular].astype(np.float32)
        self.timings = {"gemm": 0.0, "topk": 0.0}
        if self.kk == 0:
            self.block_rows, self.item_block, self.vectors = MIN_BLOCK_USERS, 0, None
            return
        items = np.asarray(data.item_vectors, dtype=np.float32)
        items = items if self.n_cand == n_items else items[self.cand]
        self.vectors = np.ascontiguousarray(normalize_rows(items) if self.similarity == "cosine" else items)
        per_row = self.n_cand * 4
        if per_row * MIN_BLOCK_USERS <= max_chunk_bytes:
            self.item_block, self.block_rows = self.n_cand, max(1, max_chunk_bytes // per_row)
        else:  # a very wide catalogue: item blocks (each >= kk items) whose top-k are merged
            self.block_rows = MIN_BLOCK_USERS
            self.item_block = int(min(self.n_cand, max(self.kk, max_chunk_bytes // (4 * MIN_BLOCK_USERS))))
        self._buf = np.empty(self.block_rows * self.item_block, np.float32)
        log.debug("batch scorer: %d candidate items, k %d, %d users x %d items per block",
                  self.n_cand, self.kk, self.block_rows, self.item_block)

    def topk(self, user_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices and scores (``-1``/``-inf`` unfilled) of known users ``user_idx``.

        At most :attr:`block_rows` users per call (callers split; :func:`iter_topk` does).
        """
        b = len(user_idx)
        ids = np.full((b, self.k), -1, np.int64)
        vals = np.full((b, self.k), -np.inf, np.float32)
        if b == 0 or self.kk == 0:
            return ids, vals
        q = _rows(self.users, user_idx)
        if self.similarity == "cosine":
            q = normalize_rows(q)
        seen_r, seen_c = self._seen_cols(user_idx)
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        for a in range(0, self.n_cand, self.item_block):
            e = min(a + self.item_block, self.n_cand)
            s = self._buf[: b * (e - a)].reshape(b, e - a)
            t1 = time.perf_counter()
            np.matmul(q, self.vectors[a:e].T, out=s)
            t2 = time.perf_counter()
            self.timings["gemm"] += t2 - t1
            if seen_c.size:
                m = (seen_c >= a) & (seen_c < e)
                s[seen_r[m], seen_c[m] - a] = -np.inf
            c, v = topk_batch(s, min(self.kk, e - a))
            parts.append((np.where(c >= 0, c + a, -1), v))
            self.timings["topk"] += time.perf_counter() - t2
        if len(parts) == 1:
            c, v = parts[0]
        else:  # merge the item blocks' candidates (ties: the lower item index, as in one block)
            cc, vv = np.concatenate([p[0] for p in parts], 1), np.concatenate([p[1] for p in parts], 1)
            pos, v = topk_batch(vv, self.kk)
            c = np.where(pos >= 0, np.take_along_axis(cc, np.maximum(pos, 0), 1), -1)
        ids[:, : self.kk] = np.where(c >= 0, self.cand[np.maximum(c, 0)], -1)
        vals[:, : self.kk] = v
        return ids, vals

    def _seen_cols(self, user_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in block, candidate column) of every seen item of the block's users."""
        if self.seen is None:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        ip = self.seen.indptr
        valid = user_idx < self.seen.shape[0]
        u = user_idx[valid]
        counts = ip[u + 1] - ip[u]
        rows = np.repeat(np.flatnonzero(valid), counts)
        if _is_range(u) and len(u):
            items = self.seen.indices[ip[u[0]] : ip[u[-1] + 1]]
        else:
            items = self.seen[u].indices if len(u) else np.empty(0, np.int64)
        cols = self.colmap[items]
        ok = cols >= 0
        return rows[ok], cols[ok]


def _is_range(idx: np.ndarray) -> bool:
    return len(idx) > 0 and int(idx[-1]) - int(idx[0]) == len(idx) - 1 and bool((np.diff(idx) == 1).all())


def _rows(matrix: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows of a (maybe memory-mapped) matrix; a contiguous range is read as one slice."""
    if _is_range(idx):
        return np.ascontiguousarray(matrix[int(idx[0]) : int(idx[-1]) + 1], dtype=np.float32)
    return np.ascontiguousarray(matrix[idx], dtype=np.float32)


@dataclass
class BlockResult:
    """Top-k of one block of users: ``positions`` into the user list, item indices, scores."""

    positions: np.ndarray
    ids: np.ndarray
    scores: np.ndarray


def iter_topk(scorer: BatchScorer, user_idx: np.ndarray) -> Iterator[BlockResult]:
    """Blocks of (at most ``scorer.block_rows``) users in order; ``-1`` users get the popular list."""
    for start in range(0, len(user_idx), scorer.block_rows):
        u = user_idx[start : start + scorer.block_rows]
        known = u >= 0
        ids = np.full((len(u), scorer.k), -1, np.int64)
        scores = np.full((len(u), scorer.k), -np.inf, np.float32)
        if known.all():
            ids, scores = scorer.topk(u)
        else:
            if known.any():
                ids[known], scores[known] = scorer.topk(u[known])
            p = len(scorer.popular)
            ids[~known, :p], scores[~known, :p] = scorer.popular, scorer.popular_scores
        yield BlockResult(np.arange(start, start + len(u)), ids, scores)

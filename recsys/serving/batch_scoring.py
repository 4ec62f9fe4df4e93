"""The compute half of batch top-K: an exact top-k kernel and blocks of users scored against a bundle.

Kept apart from :mod:`recsys.serving.batch` (ids, parquet, manifest) so the kernel can be
measured alone (``benchmarks/bench_batch_topk.py``) and reused: :func:`block_topk` is an
exact top-k of any dense score block, :class:`BatchScorer` the Retriever's filters
(seen items, allow-list, block-list, cold-user fallback) applied a block of users at a
time with bounded memory. Why the grouped top-k and the block sizes: see
:mod:`recsys.serving.batch`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from recsys.errors import InputError
from recsys.index.base import check_k, normalize_rows
from recsys.serving.reader import BundleData

log = logging.getLogger(__name__)

#: score block size: 256 MiB of float32 is past the point where BLAS gets faster and
#: keeps a 100k-item catalogue at ~650 users per block
DEFAULT_CHUNK_BYTES = 256 << 20
#: fewest users per block before the catalogue is cut into item blocks instead: a GEMM
#: of fewer rows re-reads the item matrix for too little work
MIN_BLOCK_USERS = 256


# -- exact top-k of a dense score block ------------------------------------------------------


def group_size(n_cols: int, k: int) -> int:
    """Items per group for :func:`block_topk`: about ``sqrt(n_cols / k)``, a power of 2.

    Balances the two selections (over ``n_cols / g`` group maxima and over ``g * k``
    candidates); 1 (a plain top-k) when the row is too short for groups to pay.
    """
    if n_cols < 8 * k:
        return 1
    g = 1 << int(round(np.log2(np.sqrt(n_cols / k))))
    return int(min(max(g, 2), 64))


def block_topk(scores: np.ndarray, k: int, g: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` columns of each row of ``scores``, sorted by descending score.

    Parameters
    ----------
    scores : float32 array (rows, n_cols)
        ``-inf`` marks excluded entries; ``n_cols`` must be a multiple of ``g``.
    k : int
        ``<= n_cols / g`` (and ``<= n_cols``).
    g : int, optional
        Group size (default :func:`group_size`). Column ``c`` is in group ``c % (n_cols/g)``,
        so a group's maximum is an element-wise max of ``g`` contiguous slices.

    Returns
    -------
    cols : int64 array (rows, k), vals : float32 array (rows, k)
        ``-1`` / ``-inf`` where a row has fewer than ``k`` finite scores.

    Why exact: if a top-k item sat in a group outside the ``k`` groups with the highest
    maximum, those ``k`` maxima and the item would be ``k + 1`` scores at least as high as
    the ``k``-th best, which is impossible (ties aside, where either choice is a top-k).
    """
    import torch

    rows, n = scores.shape
    g = group_size(n, k) if g is None else g
    s = torch.from_numpy(scores)
    if g <= 1 or n // g < k:
        vals, cols = torch.topk(s, k, dim=1)
    else:
        if n % g:
            raise InputError(f"block_topk: {n} columns are not a multiple of the group size {g}")
        ng = n // g
        view = s.view(rows, g, ng)
        top_groups = torch.topk(view.amax(dim=1), k, dim=1, sorted=False).indices     # (rows, k)
        members = torch.gather(view, 2, top_groups[:, None, :].expand(rows, g, k))  # (rows, g, k) scores
        vals, pos = torch.topk(members.reshape(rows, g * k), k, dim=1)
        # pos = i * k + j: member i of the j-th selected group, i.e. column top_groups[j] + i * ng
        cols = torch.gather(top_groups, 1, pos % k) + (pos // k) * ng
    cols_np, vals_np = cols.numpy().astype(np.int64, copy=False), vals.numpy()
    cols_np[~np.isfinite(vals_np)] = -1
    return cols_np, vals_np


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
            self.g, self.block_rows, self.item_block, self.vectors = 1, MIN_BLOCK_USERS, 0, None
            return
        items = np.asarray(data.item_vectors, dtype=np.float32)
        items = items if self.n_cand == n_items else items[self.cand]
        if self.similarity == "cosine":
            items = normalize_rows(items)
        self.g = group_size(self.n_cand, self.kk)
        n_pad = -(-self.n_cand // self.g) * self.g
        # rows of zeros pad the catalogue to whole groups; their scores are set to -inf
        self.vectors = np.zeros((n_pad, items.shape[1]), np.float32)
        self.vectors[: self.n_cand] = items
        per_row = n_pad * 4
        if per_row * MIN_BLOCK_USERS <= max_chunk_bytes:
            self.item_block, self.block_rows = n_pad, max(1, max_chunk_bytes // per_row)
        else:  # a very wide catalogue: item blocks of whole groups, each with >= kk groups
            self.block_rows = MIN_BLOCK_USERS
            width = max(self.g * self.kk, max_chunk_bytes // (4 * MIN_BLOCK_USERS)) // self.g * self.g
            self.item_block = int(min(n_pad, max(width, self.g)))
        self._buf = np.empty(self.block_rows * self.item_block, np.float32)
        log.debug("batch scorer: %d candidate items, k %d, groups of %d, %d users x %d items per block",
                  self.n_cand, self.kk, self.g, self.block_rows, self.item_block)

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
        n_pad = len(self.vectors)
        for a in range(0, n_pad, self.item_block):
            e = min(a + self.item_block, n_pad)
            s = self._buf[: b * (e - a)].reshape(b, e - a)
            t1 = time.perf_counter()
            np.matmul(q, self.vectors[a:e].T, out=s)
            t2 = time.perf_counter()
            self.timings["gemm"] += t2 - t1
            if e > self.n_cand:
                s[:, max(self.n_cand - a, 0):] = -np.inf
            if seen_c.size:
                m = (seen_c >= a) & (seen_c < e)
                s[seen_r[m], seen_c[m] - a] = -np.inf
            kk = min(self.kk, (e - a))
            c, v = block_topk(s, kk, self.g if (e - a) % self.g == 0 else 1)
            parts.append((np.where(c >= 0, c + a, -1), v))
            self.timings["topk"] += time.perf_counter() - t2
        if len(parts) == 1:
            c, v = parts[0]
        else:  # merge the item blocks' candidates
            cc, vv = np.concatenate([p[0] for p in parts], 1), np.concatenate([p[1] for p in parts], 1)
            pos, v = block_topk(np.ascontiguousarray(vv), self.kk, 1)
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

"""Baselines every other model must beat: MostPopular and item-item cosine kNN.

They are deliberately simple but not strawmen: ItemKNN with a few hundred neighbours is
a strong baseline on MovieLens-sized data, and MostPopular is what a new service ships
before it has a model. Both implement :class:`~recsys.models.base.Recommender`, so
:func:`recsys.evaluation.evaluate`, persistence and the pipelines treat them like any
other model.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.errors import InputError
from recsys.models.base import Recommender
from recsys.progress import Progress

log = logging.getLogger(__name__)


class MostPopular(Recommender):
    """Recommend the most popular items to everybody (minus what they have seen).

    Parameters
    ----------
    weighting : {"count", "weight"}
        ``"count"``: popularity is the number of users who interacted with the item
        (robust to a few heavy users). ``"weight"``: the sum of the confidence weights
        (ratings, event weights), which favours items that are liked, not just seen.
    """

    _state_arrays = ("popularity_",)

    def __init__(self, weighting: str = "count") -> None:
        self.weighting = weighting

    def _fit(self, user_items: sp.csr_matrix, **kwargs: Any) -> None:
        if self.weighting == "count":
            pop = np.bincount(user_items.indices[user_items.data != 0], minlength=user_items.shape[1])
        elif self.weighting == "weight":
            pop = np.asarray(user_items.sum(axis=0)).ravel()
        else:
            raise InputError(f"weighting must be 'count' or 'weight', got {self.weighting!r}")
        self.popularity_ = pop.astype(np.float32)
        self._order = None  # the ranking order of _rank_block, derived from popularity_ on first use

    def _score(self, user_indices: np.ndarray) -> np.ndarray:
        return np.repeat(self.popularity_[None, :], len(user_indices), axis=0)

    def _rank_block(self, users: np.ndarray, k: int, seen: sp.csr_matrix | None) -> tuple[np.ndarray, np.ndarray]:
        """Each user's first ``k`` unseen items of the one popularity order.

        Why: everybody's scores are the same vector, so ranking the full catalogue per user
        (what the generic path does) repeats one sort 400k times: 40 s at 400k users x 100k
        items. Only the first ``k + (most items one user of the block has seen)`` items of
        the order can be in anybody's top ``k``. Equal to the generic ranking: descending
        popularity, ties by ascending item index, ``-1`` / ``-inf`` past the unseen items.
        """
        order = getattr(self, "_order", None)  # None after fit; absent after load
        if order is None:  # descending popularity, ties by ascending index (topk_batch's order)
            order = self._order = np.lexsort((np.arange(self.n_items_), -self.popularity_))
            self._rank_of = np.empty_like(order)
            self._rank_of[order] = np.arange(len(order))
        n_users = len(users)
        if seen is None or seen.nnz == 0:
            top = order[:k]
            return np.tile(top, (n_users, 1)), np.tile(self.popularity_[top], (n_users, 1))
        seen = sp.csr_matrix(seen)
        has = seen.data != 0  # explicit zeros are not "seen" (as recsys.ranking.exclude_items)
        rows = np.repeat(np.arange(n_users), np.diff(seen.indptr))[has]
        ranks = self._rank_of[seen.indices[has]]
        m = min(len(order), k + int(np.bincount(rows, minlength=n_users).max(initial=0)))
        mask = np.zeros((n_users, m), bool)
        near = ranks < m
        mask[rows[near], ranks[near]] = True
        pos = np.argsort(mask, axis=1, kind="stable")[:, :k]  # unseen (False) first, in popularity order
        ok = ~np.take_along_axis(mask, pos, axis=1)
        cand = order[pos]
        return np.where(ok, cand, -1), np.where(ok, self.popularity_[cand], -np.inf).astype(np.float32)


#: largest number of similarity entries one block of ItemKNN's similarity may hold (~200 MB)
_BLOCK_ENTRIES = 16_000_000


def _top_per_row(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, k: int, start: int, stop: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the ``k`` largest ``vals`` of each row of a row-sorted COO block (rows ``start..stop-1``).

    Only rows with more than ``k`` entries are partitioned, one ``argpartition`` each, so the
    work is linear in the block's entries and nothing dense is built.
    """
    lengths = np.bincount(rows - start, minlength=stop - start)
    long_rows = np.flatnonzero(lengths > k)
    if long_rows.size == 0:
        return rows, cols, vals
    ptr = np.concatenate([[0], np.cumsum(lengths)])
    keep = np.ones(len(vals), bool)
    for r in long_rows:
        lo, hi = ptr[r], ptr[r + 1]
        seg = keep[lo:hi]
        seg[:] = False
        seg[np.argpartition(-vals[lo:hi], k - 1)[:k]] = True
    return rows[keep], cols[keep], vals[keep]


class ItemKNN(Recommender):
    """Item-based k-nearest-neighbour recommender with cosine similarity.

    ``sim(i, j) = <x_i, x_j> / (||x_i|| ||x_j|| + shrinkage)`` where ``x_i`` is item
    ``i``'s column of the user x item matrix. For every item ``j`` only its
    ``n_neighbors`` most similar items are kept (the matrix stays sparse: at most
    ``n_items * n_neighbors`` entries), and a user's score for ``j`` is
    ``sum_i r_ui * sim(i, j)`` over the kept neighbours ``i`` of ``j`` - i.e.
    ``user_row @ similarity_``.

    Parameters
    ----------
    n_neighbors : int
        Neighbours kept per item. More neighbours smooth the scores; fewer make the
        model faster and more "local".
    shrinkage : float
        Added to the norm product; shrinks similarities supported by few co-occurrences
        towards 0 (0 = plain cosine).
    binary : bool
        Use 0/1 interactions instead of the weights, both for the similarity and for the
        user rows. With ratings as weights, ``True`` treats a 1-star view like a 5-star one.
    block_size : int
        At most this many items processed at once when computing the similarity (blocks
        are also capped at ~16M similarity entries). Not a model hyperparameter (results do
        not depend on it).

    Notes
    -----
    The similarity is computed exactly, block by block, with sparse products that never
    build a dense items x items block: only co-occurring item pairs are scored, and each
    row keeps its top ``n_neighbors`` by ``argpartition`` over its non-zeros. The cost is
    the number of co-occurring pairs (at most ``n_items ** 2``); memory is one block plus
    the kept ``n_items * n_neighbors`` entries. Scoring a batch of users is one sparse
    product ``user_rows @ similarity_``.
    """

    _state_arrays = ("sim_indptr_", "sim_indices_", "sim_data_")

    def __init__(self, n_neighbors: int = 100, shrinkage: float = 0.0, binary: bool = False, block_size: int = 1024) -> None:
        self.n_neighbors = n_neighbors
        self.shrinkage = shrinkage
        self.binary = binary
        self.block_size = block_size

    def _check_params(self) -> None:
        if isinstance(self.n_neighbors, bool) or not isinstance(self.n_neighbors, (int, np.integer)) or self.n_neighbors <= 0:
            raise InputError(f"n_neighbors must be a positive integer, got {self.n_neighbors!r}")
        if not np.isfinite(self.shrinkage) or self.shrinkage < 0:
            raise InputError(f"shrinkage must be a finite number >= 0, got {self.shrinkage!r}")
        if not isinstance(self.block_size, (int, np.integer)) or self.block_size <= 0:
            raise InputError(f"block_size must be a positive integer, got {self.block_size!r}")

    def _rows(self, m: sp.csr_matrix) -> sp.csr_matrix:
        if not self.binary:
            return m
        # 0/1 values on the same index arrays: no copy of the interactions' structure
        return sp.csr_matrix(((m.data != 0).astype(np.float32), m.indices, m.indptr), shape=m.shape)

    def _fit(self, user_items: sp.csr_matrix, **kwargs: Any) -> None:
        self._check_params()
        x = self._rows(user_items).astype(np.float32, copy=False)  # users x items, CSR: no copy
        xt = x.T.tocsr()  # items x users: the one transposed copy the products need
        n_items = x.shape[1]
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel()).astype(np.float32)
        kk = min(int(self.n_neighbors), max(n_items - 1, 1))
        counts = np.zeros(n_items + 1, np.int64)
        idx_parts, val_parts = [], []
        blocks = self._blocks(x, xt)
        with Progress("ItemKNN similarity", n_items, "items", logger=log) as bar:
            for start, stop in blocks:
                # rows: similarity of items start..stop-1 with every item they co-occur with
                # (symmetric, so a row is that item's neighbour list); sparse throughout
                blk = (xt[start:stop] @ x).tocsr()
                rows = np.repeat(np.arange(start, stop), np.diff(blk.indptr))
                vals = blk.data / (norms[rows] * norms[blk.indices] + (self.shrinkage + 1e-12))
                keep = (vals > 0) & (blk.indices != rows)  # no self-similarity, no zero entries
                rows, cols, vals = rows[keep], blk.indices[keep], vals[keep]
                del blk, keep
                rows, cols, vals = _top_per_row(rows, cols, vals, kk, start, stop)
                counts[start + 1 : stop + 1] = np.bincount(rows - start, minlength=stop - start)
                idx_parts.append(cols)
                val_parts.append(vals)
                bar.update(stop - start)
        neigh = sp.csr_matrix(
            (np.concatenate(val_parts).astype(np.float32), np.concatenate(idx_parts).astype(np.int32), np.cumsum(counts)),
            shape=(n_items, n_items),
        )
        # row j of `neigh` lists j's neighbours i; scoring needs sim[i, j] so transpose
        sim = neigh.T.tocsr()
        sim.sort_indices()
        self.sim_indptr_, self.sim_indices_, self.sim_data_ = sim.indptr, sim.indices, sim.data
        self.similarity_ = sim
        log.info("ItemKNN: %d items, %d similarity entries (%.1f per item)", n_items, sim.nnz, sim.nnz / max(n_items, 1))

    def _blocks(self, x: sp.csr_matrix, xt: sp.csr_matrix) -> list[tuple[int, int]]:
        """Item ranges whose co-occurrence rows hold at most ``_BLOCK_ENTRIES`` entries (and ``block_size`` rows).

        A row's entries are bounded by its co-occurrence count (the users' history lengths
        summed) and by ``n_items``; grouping rows by that bound keeps memory flat whether the
        catalogue is sparse (100k items, many rows per block) or dense (popular items).
        """
        n_items = x.shape[1]
        per_user = np.diff(x.indptr).astype(np.float64)
        pattern = sp.csr_matrix((np.ones(xt.nnz), xt.indices, xt.indptr), shape=xt.shape)  # shares the indices
        bound = np.minimum(pattern @ per_user, n_items)
        out, start, acc = [], 0, 0.0
        for i, b in enumerate(bound):
            if i > start and (acc + b > _BLOCK_ENTRIES or i - start >= int(self.block_size)):
                out.append((start, i))
                start, acc = i, 0.0
            acc += b
        if start < n_items:
            out.append((start, n_items))
        return out

    def _after_load(self) -> None:
        self.similarity_ = sp.csr_matrix(
            (self.sim_data_, self.sim_indices_, self.sim_indptr_), shape=(self.n_items_, self.n_items_)
        )

    def _score(self, user_indices: np.ndarray) -> np.ndarray:
        rows = self._rows(self.user_items_[user_indices])
        return (rows @ self.similarity_).toarray().astype(np.float32, copy=False)

    def similar_items(self, item: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items most similar to ``item`` (ids int64, cosine float32), best first.

        Items with fewer than ``k`` kept neighbours are padded with ``-1`` / ``-inf``.
        """
        self._check_fitted()
        if not isinstance(item, (int, np.integer)) or not 0 <= int(item) < self.n_items_:
            raise InputError(f"item must be an index in [0, {self.n_items_}), got {item!r}")
        if k <= 0:
            raise InputError(f"k must be a positive integer, got {k!r}")
        col = self.similarity_[:, int(item)].tocoo()
        order = np.argsort(-col.data, kind="stable")[:k]
        ids = np.full(k, -1, np.int64)
        sc = np.full(k, -np.inf, np.float32)
        ids[: len(order)] = col.row[order]
        sc[: len(order)] = col.data[order]
        return ids, sc

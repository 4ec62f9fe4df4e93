"""item2vec: skip-gram with negative sampling over each user's time-ordered items.

Why: word2vec's objective on interaction sequences (Barkan & Koenigstein 2016) is a cheap,
strong item-similarity model: items consumed close together in time get close vectors.
It is the toolkit's only family that uses the *order* of a user's events.

The model (:class:`Item2Vec`):

* **Training**: gensim's word2vec skip-gram (``sg=1``) with negative sampling, one
  "sentence" per user: the user's items sorted by time, consecutive repeats collapsed.
  Every item is a centre and the items up to ``window`` positions before and after it
  are its contexts (each centre draws its reach uniformly in ``1..window``); occurrences
  of popular items are dropped with word2vec's subsampling (threshold ``subsample``);
  ``negatives`` negatives per pair are drawn from the counts raised to ``ns_exponent``
  (0.75). ``docs/item2vec.md`` says why gensim rather than PyTorch (measured here: 3-5x
  faster on 2 CPU cores at the same epochs, dims and window, same accuracy).
* **Vectors**: item vectors are the input embeddings (unit-normalised with
  ``normalize``, the default chosen on validation); items in no training pair get the
  zero vector. ``popularity_bias`` ``b`` > 0 appends one column ``b * log(1 + count)``
  to every item vector. A user vector is the mean of the vectors of the user's training
  items (``pooling="weight"``: weighted by the matrix values), that column included, so
  a score is ``mean_h(e_h)·e_j + b² * mean_h(log(1 + c_h)) * log(1 + c_j)``: similarity
  to the history plus a popularity prior scaled by how mainstream the history is. Plain
  item2vec (``b = 0``) ranks niche look-alikes first and scores far below most-popular
  on NDCG (``docs/item2vec.md``). Scores are dot products, so the bundle's index serves
  the family like any vector model, and a new user's fold-in is the same pooling,
  exactly (:class:`~recsys.models.foldin.FoldInSpec` ``"mean"``).
  :meth:`Item2Vec.similar_items` is the cosine of the embeddings without the column.

Time order: :meth:`Item2Vec.fit` takes ``sequences=`` (an :class:`ItemSequences`, built
from a split table with :meth:`ItemSequences.from_frame`, which sorts each user's events
by ``timestamp``). Without it, or for a table without timestamps, each user's items are
taken in item-index order (the CSR row order): the model still trains, but the window
then means nothing temporal. The training protocol passes the sequences through this
family's own selection step, :func:`recsys.training_item2vec.select_on_validation`
(declared as the ``protocol`` of the ``item2vec`` family in :mod:`recsys.models.registry`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys.errors import ConfigError, InputError
from recsys.models.base import FactorModel, topk
from recsys.models.foldin import FoldIn, FoldInSpec

# gensim is imported inside Item2Vec._train: the registry imports this module to read
# Item2VecParams, and `import recsys` must stay light.

log = logging.getLogger(__name__)

__all__ = ["SCORING", "Item2Vec", "Item2VecParams", "ItemSequences"]

POOLINGS = ("mean", "weight")
#: parameters that only change how trained vectors are scored (:meth:`Item2Vec.with_scoring`)
SCORING = ("normalize", "popularity_bias", "pooling")


@dataclass
class Item2VecParams:
    """Every hyperparameter of :class:`Item2Vec` (the ``[models.item2vec]`` keys).

    ``dim`` vector size; ``window`` maximum distance between a centre and a context item
    (word2vec's dynamic window: each centre draws its reach in ``1..window``; 20 and
    ``popularity_bias`` 0.15 are what validation chose on latest-small and ML-100K,
    ``benchmarks/bench_item2vec.py``);
    ``negatives`` sampled negatives per pair; ``ns_exponent`` exponent of the negative
    sampling distribution (counts ** 0.75, as word2vec; negative values favour rare
    items); ``subsample`` word2vec's threshold ``t`` for dropping occurrences of popular
    items (0 = keep all); ``epochs``; ``lr`` starting SGD step (decays linearly to
    ``min_lr``); ``normalize`` unit-length item vectors (cosine neighbours; user vectors
    pool the normalised vectors); ``popularity_bias`` ``b`` appends ``b * log(1 + count)``
    to each item vector (0 = no extra column), see :class:`Item2Vec`; ``pooling`` "mean"
    (every history item alike) or "weight" (weighted by the interaction weight); ``seed``;
    ``workers`` gensim training threads (1 = bit-reproducible; more threads are faster
    and not reproducible).
    """

    dim: int = 64
    window: int = 20
    negatives: int = 5
    ns_exponent: float = 0.75
    subsample: float = 1e-3
    epochs: int = 10
    lr: float = 0.025
    min_lr: float = 1e-4
    normalize: bool = True
    popularity_bias: float = 0.15
    pooling: str = "mean"
    seed: int = 42
    workers: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid value (the registry calls it on config)."""
        for name in ("dim", "window", "negatives", "epochs", "workers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"item2vec {name} must be an integer >= 1, got {v!r}")
        for name in ("ns_exponent", "subsample", "lr", "min_lr", "popularity_bias"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not np.isfinite(v):
                raise ConfigError(f"item2vec {name} must be a finite number, got {v!r}")
        for name in ("subsample", "min_lr", "popularity_bias"):
            if getattr(self, name) < 0:
                raise ConfigError(f"item2vec {name} must be >= 0, got {getattr(self, name)!r}")
        if not self.lr > 0 or self.min_lr > self.lr:
            raise ConfigError(f"item2vec lr must be > 0 and >= min_lr, got lr={self.lr!r}, min_lr={self.min_lr!r}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"item2vec pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ConfigError(f"item2vec seed must be an integer, got {self.seed!r}")


@dataclass(frozen=True, eq=False)
class ItemSequences:
    """Each user's items in time order, as one flat array: user ``u``'s sequence is
    ``items[indptr[u]:indptr[u + 1]]`` (the CSR layout, without values)."""

    indptr: np.ndarray
    items: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    def user(self, u: int) -> np.ndarray:
        """User ``u``'s items, oldest first."""
        return self.items[self.indptr[u] : self.indptr[u + 1]]

    @classmethod
    def from_lists(cls, sequences: Sequence[Any]) -> ItemSequences:
        """One array-like of item indices per user (oldest first)."""
        arrs = [np.asarray(s, dtype=np.int64).ravel() for s in sequences]
        indptr = np.zeros(len(arrs) + 1, np.int64)
        indptr[1:] = np.cumsum([len(a) for a in arrs])
        return cls(indptr, np.concatenate(arrs) if arrs else np.zeros(0, np.int64))

    @classmethod
    def from_matrix(cls, user_items: sp.spmatrix) -> ItemSequences:
        """The fallback without timestamps: each user's items in item-index order."""
        m = sp.csr_matrix(user_items)
        m.sort_indices()
        return cls(m.indptr.astype(np.int64), m.indices.astype(np.int64))

    @classmethod
    def from_frame(cls, df: pl.DataFrame, n_users: int, time_col: str = "timestamp") -> ItemSequences:
        """Sequences from a split table (``user_idx``, ``item_idx`` [, ``time_col``]).

        Events are sorted by user, then time, then item index (a deterministic order for
        events of the same second, which MovieLens has many of); without ``time_col`` by
        user and item index only (logged). Repeats of one item in a row are collapsed: a
        pair of an item with itself teaches nothing.
        """
        missing = {"user_idx", "item_idx"} - set(df.columns)
        if missing:
            raise InputError(f"sequences need columns user_idx and item_idx; the table lacks {sorted(missing)}")
        keys = ["user_idx", time_col, "item_idx"] if time_col in df.columns else ["user_idx", "item_idx"]
        if time_col not in df.columns:
            log.info("item2vec: no %r column, each user's items are taken in item-index order", time_col)
        s = df.select(keys).sort(keys)
        users = s["user_idx"].to_numpy().astype(np.int64)
        items = s["item_idx"].to_numpy().astype(np.int64)
        if len(users) and (users.min() < 0 or users.max() >= n_users):
            raise InputError(f"user_idx out of range [0, {n_users}) in the sequence table")
        keep = np.ones(len(items), bool)
        keep[1:] = (items[1:] != items[:-1]) | (users[1:] != users[:-1])
        users, items = users[keep], items[keep]
        indptr = np.zeros(n_users + 1, np.int64)
        indptr[1:] = np.cumsum(np.bincount(users, minlength=n_users))
        return cls(indptr, items)

    def check(self, n_users: int, n_items: int) -> None:
        """Refuse sequences that do not fit the matrix (a clear error instead of an index crash)."""
        if self.n_users != n_users:
            raise InputError(f"sequences cover {self.n_users} users, user_items has {n_users} rows; "
                             "build them with ItemSequences.from_frame(df, n_users=user_items.shape[0])")
        if self.items.size and (self.items.min() < 0 or self.items.max() >= n_items):
            raise InputError(f"sequence item index out of range [0, {n_items})")


class Item2Vec(FactorModel):
    """item2vec (skip-gram, negative sampling) with history-pooled user vectors.

    Hyperparameters are the fields of :class:`Item2VecParams`;
    ``Item2Vec(window=3).fit(train_csr, sequences=ItemSequences.from_frame(train_df, n))``.
    Learned state: ``item_factors_`` (n_items, dim [+ 1 popularity column]),
    ``user_factors_`` (n_users, same width) and ``item_counts_`` (occurrences per item
    in the training sequences).
    """

    _state_arrays = ("user_factors_", "item_factors_", "item_counts_")

    def __init__(self, **params: Any) -> None:
        names = [f.name for f in dataclasses.fields(Item2VecParams)]
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise ConfigError(f"unknown Item2Vec parameters {unknown}; valid ones: {sorted(names)}")
        for k, v in dataclasses.asdict(Item2VecParams(**params)).items():
            setattr(self, k, v)

    def get_params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Item2VecParams)}

    # -- fitting ---------------------------------------------------------------------------
    def _fit(self, user_items: sp.csr_matrix, sequences: ItemSequences | Sequence[Any] | None = None) -> None:
        n_users, n_items = user_items.shape
        if sequences is None:
            log.info("item2vec: no sequences given, each user's items are taken in item-index order")
            seq = ItemSequences.from_matrix(user_items)
        else:
            seq = sequences if isinstance(sequences, ItemSequences) else ItemSequences.from_lists(sequences)
        seq.check(n_users, n_items)
        lengths = np.diff(seq.indptr)
        counts = np.bincount(seq.items, minlength=n_items).astype(np.int64)
        paired = np.bincount(seq.items[np.repeat(lengths, lengths) >= 2], minlength=n_items) > 0
        if not paired.any():
            raise InputError("item2vec found no training pairs: no user has two items in sequence; "
                             "it needs sequences of at least two items")
        t0 = time.perf_counter()
        vectors = self._train(seq, n_items)
        vectors[~paired] = 0.0  # never in a pair: its random initial vector means nothing
        self.embeddings_ = vectors  # raw input vectors: kept in memory for with_scoring, not saved
        self.item_counts_ = counts
        self._finalize(user_items)
        log.info("item2vec: %d items (%d trained) x %d dims, %d epochs in %.1fs", n_items, int(paired.sum()),
                 self.dim, self.epochs, time.perf_counter() - t0)

    def _finalize(self, user_items: sp.csr_matrix) -> None:
        """Item and user vectors from the trained embeddings and the scoring parameters."""
        vectors = self.embeddings_
        if self.normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
        if self.popularity_bias > 0:
            vectors = np.c_[vectors, float(self.popularity_bias) * np.log1p(self.item_counts_)]
        self.item_factors_ = np.ascontiguousarray(vectors, dtype=np.float32)
        self.user_factors_ = self._pool(user_items)

    def with_scoring(self, **scoring: Any) -> Item2Vec:
        """A copy with other :data:`SCORING` parameters on the same trained embeddings (no retraining).

        Why: ``normalize``, ``popularity_bias`` and ``pooling`` only change how the trained
        vectors are scored, so a validation grid over them costs one training per
        combination of the other parameters
        (:func:`recsys.training_item2vec.select_on_validation` uses this).
        Only on a model fitted in this process (the raw embeddings are not saved).
        """
        self._check_fitted()
        bad = sorted(set(scoring) - set(SCORING))
        if bad:
            raise ConfigError(f"with_scoring takes only {SCORING}, got {bad}; other parameters need a new fit")
        if not hasattr(self, "embeddings_"):
            raise InputError("with_scoring needs the trained embeddings, which a loaded model does not keep; fit it")
        new = Item2Vec(**{**self.get_params(), **scoring})
        new.n_users_, new.n_items_ = self.n_users_, self.n_items_
        new.embeddings_, new.item_counts_, new.user_items_ = self.embeddings_, self.item_counts_, self.user_items_
        new._finalize(self.user_items_)
        return new

    def _pool(self, user_items: sp.csr_matrix) -> np.ndarray:
        """User vectors: the (weighted) mean of their items' vectors; zero for an empty history."""
        m = sp.csr_matrix(user_items, dtype=np.float32, copy=True)
        if self.pooling == "mean":
            m.data = np.ones_like(m.data)
        totals = np.asarray(m.sum(axis=1)).ravel()
        inv = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)
        return np.asarray(sp.diags(inv) @ m @ self.item_factors_, np.float32)

    def _train(self, seq: ItemSequences, n_items: int) -> np.ndarray:
        """gensim's skip-gram on the sequences; returns the input vectors, one row per item index.

        gensim silently truncates a sentence beyond 10,000 tokens, so longer histories are
        cut into chunks of that size overlapping by ``window`` items (no pair is lost; the
        pairs inside an overlap are seen twice).
        """
        try:
            from gensim.models import Word2Vec  # noqa: PLC0415 - only when training
            from gensim.models.word2vec_inner import MAX_WORDS_IN_BATCH  # noqa: PLC0415
        except ImportError as e:
            raise ConfigError(f"item2vec trains with gensim, which is not importable ({e}); pip install 'gensim>=4.4'") from e

        step = MAX_WORDS_IN_BATCH - int(self.window)
        sentences: list[list[int]] = []
        for u in range(seq.n_users):
            items = seq.user(u)
            if len(items) < 2:
                continue
            for start in range(0, max(len(items) - int(self.window), 1), step):
                sentences.append(items[start : start + MAX_WORDS_IN_BATCH].tolist())
        w2v = Word2Vec(sentences, vector_size=int(self.dim), window=int(self.window), sg=1, hs=0,
                       negative=int(self.negatives), ns_exponent=float(self.ns_exponent), sample=float(self.subsample),
                       alpha=float(self.lr), min_alpha=float(self.min_lr), min_count=1, epochs=int(self.epochs),
                       workers=int(self.workers), seed=int(self.seed))
        out = np.zeros((n_items, int(self.dim)), np.float32)
        out[np.asarray(w2v.wv.index_to_key, dtype=np.int64)] = w2v.wv.vectors
        return out

    # -- querying --------------------------------------------------------------------------
    def foldin_spec(self) -> FoldInSpec:
        """Fold-in is the pooling itself: the weighted mean of the item vectors."""
        self._check_fitted()
        return FoldInSpec("mean")

    def recalculate_user(self, item_indices: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """A new user's vector: the same pooling as a trained user's (``weights`` ignored for ``"mean"``)."""
        self._check_fitted()
        w = None if self.pooling == "mean" or weights is None else weights
        if w is None:
            item_indices = np.unique(np.atleast_1d(np.asarray(item_indices)))
        return FoldIn(FoldInSpec("mean"), self.item_factors_).user(item_indices, w)

    def similar_items(self, item: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items closest to ``item`` by cosine of the embeddings, itself excluded.

        The popularity column is left out (a bundle's ``Retriever.similar_items`` scores
        the whole vector, so its neighbours lean towards popular items by
        ``b² log(1 + c_i) log(1 + c_j)``). An item never trained gets no neighbours (all
        ``-1``); items never seen in training (zero vectors) are never returned; a row has
        ``-1`` / ``-inf`` slots when fewer than ``k`` items qualify.
        """
        self._check_fitted()
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)) or not 0 <= int(item) < self.n_items_:
            raise InputError(f"item must be an index in [0, {self.n_items_}), got {item!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise InputError(f"k must be a positive integer, got {k!r}")
        v = self.item_factors_[:, : int(self.dim)]
        norms = np.linalg.norm(v, axis=1)
        sims = (v @ v[int(item)]) / np.maximum(norms * max(float(norms[int(item)]), 1e-12), 1e-12)
        sims = sims.astype(np.float32)
        sims[norms == 0] = -np.inf
        sims[int(item)] = -np.inf
        if norms[int(item)] == 0:  # an item never trained has no neighbours, not arbitrary ones
            sims[:] = -np.inf
        ids, scores = topk(sims[None, :], int(k))  # pads with -1 / -inf beyond the catalogue
        return ids[0], scores[0]

"""The common recommender interface every model implements.

Shaped after ``implicit`` and scikit-learn: ``__init__`` stores keyword hyperparameters,
``fit(user_items)`` validates, learns state ending in ``_`` and returns ``self``, and
``recommend`` returns ``(ids, scores)`` arrays (int64 item indices, float32 scores),
1-D for one user and 2-D for many. Persistence is a single ``.npz`` file (no pickle)
holding the learned arrays plus the hyperparameters as JSON.

Subclasses implement ``_fit`` and ``_score``; vector models derive from
:class:`FactorModel` and get scoring, fold-in hooks and export for free.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from recsys.errors import BundleError, InputError, NotFittedError
from recsys.io import load_npz, save_npz
from recsys.models import registry
from recsys.models.foldin import FoldIn, FoldInSpec
from recsys.ranking import rows_per_block, topk_batch

log = logging.getLogger(__name__)


def check_user_items(user_items: Any, n_items: int | None = None) -> sp.csr_matrix:
    """Validate a user x item matrix and return it as float32 CSR.

    Raises :class:`~recsys.errors.InputError` for non-sparse input, NaN/inf or negative
    values, or a column count that does not match the model.
    """
    if not sp.issparse(user_items):
        raise InputError(
            f"user_items must be a scipy.sparse user x item matrix, got {type(user_items).__name__}; "
            "build one with recsys.data.to_csr or Dataset.matrix('train')"
        )
    m = sp.csr_matrix(user_items, dtype=np.float32)
    if m.nnz and not np.isfinite(m.data).all():
        raise InputError("user_items contains NaN or infinite values; clean the weights first")
    if m.nnz and (m.data < 0).any():
        raise InputError("user_items contains negative confidences; weights must be >= 0")
    if n_items is not None and m.shape[1] != n_items:
        raise InputError(f"user_items has {m.shape[1]} item columns, the model was fitted on {n_items}")
    return m


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` columns of each row of ``scores`` sorted by descending score.

    Entries scored ``-inf`` (excluded items) or NaN are returned as id ``-1``, score
    ``-inf``, so a row always has ``k`` slots even when fewer items are allowed (an
    allow-list scores a subset of the columns). Equal scores rank the lower item index
    first. ``scores`` is not modified. The ranking itself is
    :func:`recsys.ranking.topk_batch`, shared by evaluation, the indexes and batch top-K.
    """
    return topk_batch(scores, k)


class Recommender:
    """Base class: hyperparameters in ``__init__``, state learned by ``fit``.

    Subclasses must implement ``_fit(user_items)`` and ``_score(user_indices)``
    (dense float32 scores, one row per user, one column per item).
    """

    #: names of learned array attributes saved by :meth:`save`
    _state_arrays: ClassVar[tuple[str, ...]] = ()

    # -- hyperparameters ---------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Hyperparameters as passed to ``__init__`` (JSON-serialisable)."""
        sig = inspect.signature(type(self).__init__)
        return {p: getattr(self, p) for p in sig.parameters if p != "self" and hasattr(self, p)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- fitting -----------------------------------------------------------------------
    def fit(self, user_items: sp.spmatrix, **kwargs: Any) -> Recommender:
        """Fit on a user x item confidence matrix and return ``self``.

        The matrix is also kept (by reference) as ``user_items_`` so that
        ``recommend(..., exclude_seen=True)`` can remove what each user already saw.
        """
        m = check_user_items(user_items)
        self.n_users_, self.n_items_ = m.shape
        self._fit(m, **kwargs)
        self.user_items_ = m
        return self

    def _fit(self, user_items: sp.csr_matrix, **kwargs: Any) -> None:
        raise NotImplementedError

    def _score(self, user_indices: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_items_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() or load() first")

    # -- querying ----------------------------------------------------------------------
    def _check_users(self, user_indices: Any) -> tuple[np.ndarray, bool]:
        single = np.isscalar(user_indices) or np.ndim(user_indices) == 0
        users = np.atleast_1d(np.asarray(user_indices))
        if users.dtype.kind not in "iu":
            raise InputError(f"user indices must be integers, got dtype {users.dtype}")
        users = users.astype(np.int64)
        if users.size and (users.min() < 0 or users.max() >= self.n_users_):
            raise InputError(f"user index out of range [0, {self.n_users_}); use fold-in for new users")
        return users, single

    def score(self, user_indices: Any) -> np.ndarray:
        """Dense float32 scores of every item for the given users (``(n, n_items)``)."""
        self._check_fitted()
        users, _ = self._check_users(user_indices)
        return np.asarray(self._score(users), dtype=np.float32)

    def recommend(
        self,
        user_indices: Any,
        k: int = 10,
        exclude_seen: bool = True,
        user_items: sp.spmatrix | None = None,
        items: np.ndarray | None = None,
        batch_size: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for one user (1-D arrays) or many (2-D arrays).

        Parameters
        ----------
        user_indices : int or array of int
        k : int
            Number of items per user; must be positive.
        exclude_seen : bool
            Remove items the user interacted with (from ``user_items`` or, by default,
            the matrix given to ``fit``).
        user_items : sparse matrix, optional
            Rows aligned with user indices giving the items to exclude.
        items : int array, optional
            Candidate allow-list: only these item indices may be returned (business
            rules, cold-item evaluation).
        batch_size : int, optional
            Users scored at once (memory ``batch_size * n_items`` floats); default: as many
            as fit :data:`recsys.ranking.SCORE_BLOCK_BYTES` (256 MiB).

        Returns
        -------
        ids : int64 array, scores : float32 array
            ``min(k, n_items)`` columns sorted by descending score, equal scores by
            ascending item index (:func:`recsys.ranking.topk_batch`); slots beyond the
            allowed items hold ``-1``/``-inf``.
        """
        self._check_fitted()
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
            raise InputError(f"k must be a positive integer, got {k!r}")
        k = min(int(k), self.n_items_)  # never more slots than items (k = 10**9 must not allocate)
        users, single = self._check_users(user_indices)
        seen = None
        if exclude_seen:
            seen = self.user_items_ if user_items is None else check_user_items(user_items, self.n_items_)
            if len(users) and users.max() >= seen.shape[0]:
                raise InputError(f"user_items has {seen.shape[0]} rows but user {int(users.max())} was asked for; "
                                 "pass one row per user index")
        blocked = None
        if items is not None:
            raw = np.asarray(items)
            if raw.size and raw.dtype.kind not in "iu":
                raise InputError(f"candidate items must be integer indices, got dtype {raw.dtype}")
            allowed = raw.astype(np.int64)
            if allowed.size and (allowed.min() < 0 or allowed.max() >= self.n_items_):
                raise InputError(f"candidate item index out of range [0, {self.n_items_})")
            blocked = np.ones(self.n_items_, bool)
            blocked[allowed] = False
        if batch_size is None:
            batch_size = rows_per_block(self.n_items_)
        elif isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise InputError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        ids = np.empty((len(users), k), np.int64)
        out = np.empty((len(users), k), np.float32)
        buf: np.ndarray | None = None
        for start in range(0, len(users), batch_size):
            b = users[start : start + batch_size]
            fast = None if blocked is not None else self._rank_block(b, k, None if seen is None else seen[b])
            if fast is not None:
                ids[start : start + len(b)], out[start : start + len(b)] = fast
                continue
            s, buf = self._block_scores(b, buf)
            if blocked is not None:
                s[:, blocked] = -np.inf
            ids[start : start + len(b)], out[start : start + len(b)] = topk_batch(
                s, k, exclude=None if seen is None else seen[b])
        return (ids[0], out[0]) if single else (ids, out)

    def _rank_block(self, users: np.ndarray, k: int, seen: sp.csr_matrix | None) -> tuple[np.ndarray, np.ndarray] | None:
        """The top-``k`` of a block without scoring every item, or ``None`` to score and rank it.

        A model whose ranking does not depend on the user (:class:`~recsys.models.baselines.MostPopular`)
        can answer from a short prefix of one global order; the result must equal what
        :func:`recsys.ranking.topk_batch` gives on the full scores. Not called with a
        candidate allow-list.
        """
        return None

    def _block_scores(self, users: np.ndarray, buf: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """``(scores, buffer)``: ``_score(users)`` as float32 that ranking may overwrite (excluded -> -inf).

        A fresh result (a GEMM's output) is used as it is: copying a 256 MiB block cost about
        as much as ranking it. Anything that may be model state (a view, read-only, an
        attribute of the model) is copied first. ``buf`` is the previous block's buffer, for
        subclasses that score into it (:class:`FactorModel`).
        """
        s = self._score(users)
        if (isinstance(s, np.ndarray) and s.dtype == np.float32 and s.ndim == 2 and s.flags.writeable
                and s.flags.owndata and not any(s is v for v in vars(self).values())):
            return s, buf
        return np.array(s, dtype=np.float32, copy=True), buf

    # -- persistence -------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Save hyperparameters and learned arrays to one ``.npz`` file (atomically)."""
        self._check_fitted()
        arrays = {name: np.asarray(getattr(self, name)) for name in self._state_arrays}
        family = registry.family_of(self)
        meta = {"class": type(self).__name__, "family": family.name if family else None,
                "target": f"{type(self).__module__}:{type(self).__qualname__}",
                "format": registry.MODEL_FORMAT_VERSION, "params": self.get_params(),
                "n_users": self.n_users_, "n_items": self.n_items_}
        m = getattr(self, "user_items_", None)
        if m is not None:
            arrays.update(seen_indptr=m.indptr, seen_indices=m.indices, seen_data=m.data)
        save_npz(path, __meta__=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Recommender:
        """Load a model saved by :meth:`save`; the class is resolved from the file's family.

        Works in a fresh process for every registered family (the family's module is
        imported on demand by :mod:`recsys.models.registry`), whatever was imported before.
        """
        try:
            z = load_npz(path)
            meta = json.loads(str(z.pop("__meta__")))
        except (OSError, ValueError, KeyError) as e:
            raise BundleError(f"{path} is not a recsys model file: {e}") from e
        klass = registry.resolve_saved(meta, path)
        if not issubclass(klass, cls):
            raise BundleError(f"{path} holds a {klass.__name__}, not a {cls.__name__}")
        model = klass(**meta["params"])
        model.n_users_, model.n_items_ = meta["n_users"], meta["n_items"]
        if "seen_indptr" in z:
            model.user_items_ = sp.csr_matrix(
                (z.pop("seen_data"), z.pop("seen_indices"), z.pop("seen_indptr")), shape=(model.n_users_, model.n_items_)
            )
        for name, arr in z.items():
            setattr(model, name, arr)
        model._after_load()
        return model

    def _after_load(self) -> None:
        """Hook for subclasses to rebuild derived state after :meth:`load`."""


class FactorModel(Recommender):
    """A model that scores by the inner product of user and item vectors.

    Learned state: ``user_factors_`` (n_users, d) and ``item_factors_`` (n_items, d),
    both float32. Every vector model (ALS, BPR, two-tower) exports this layout so the
    content blend, the index and the retriever treat them alike.
    """

    _state_arrays = ("user_factors_", "item_factors_")
    #: "dot" for inner-product models, "cosine" for models whose vectors are normalised
    similarity: ClassVar[str] = "dot"

    def _score(self, user_indices: np.ndarray) -> np.ndarray:
        return self.user_factors_[user_indices] @ self.item_factors_.T

    def _block_scores(self, users: np.ndarray, buf: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """The inner products written into one reused buffer (when ``_score`` is the plain product).

        A fresh 256 MiB array per block costs its page faults again every block (measured
        +18% on the GEMM at 100k items); the buffer is allocated once per ``recommend`` call.
        """
        u, v = self.user_factors_, self.item_factors_
        if type(self)._score is not FactorModel._score or u.dtype != np.float32 or v.dtype != np.float32:
            return super()._block_scores(users, buf)
        if buf is None or buf.shape[0] < len(users):
            buf = np.empty((len(users), v.shape[0]), np.float32)
        s = buf[: len(users)]
        np.matmul(u[users], v.T, out=s)
        return s, buf

    def recalculate_user(self, item_indices: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Fold-in: a vector for a user from their items alone (no retraining).

        Subclasses override with their model's own solve; the default is the weighted
        mean of the item vectors (:mod:`recsys.models.foldin`, ``"mean"``), which is
        what a history-pooling model does.
        """
        self._check_fitted()
        return FoldIn(FoldInSpec("mean"), self.item_factors_).user(item_indices, weights)

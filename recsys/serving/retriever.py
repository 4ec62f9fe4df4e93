"""The retrieval API a service calls: ``Retriever.load(...).recommend(user_ids, k)``.

A :class:`Retriever` is built from one verified bundle (:mod:`recsys.serving.bundle`) and
is read-only afterwards, so one instance can be shared by many threads: Annoy queries on a
memory-mapped forest and numpy products on read-only arrays need no lock.

Backends: catalogues up to ``exact_max_items`` (manifest value, measured by
``benchmarks/bench_retrieval.py``; overridable at load) are scanned exactly with BLAS,
which is then faster than Annoy at the recall we demand; larger ones use the Annoy forest
with exact re-scoring of its candidates. Either way excluded items never appear and
allow-lists are honoured exactly. A bundle ``recsys update`` exported with a delta index
(:mod:`recsys.index.delta`) is served the same way: its base index answers for the items
it was built over, an exact scan for the items added since, the two merged by score with
the filters applied to both.

Fallbacks (documented contract, never a crash):

* known user -> their vector, their seen items excluded (``exclude_seen``);
* unknown user with a ``history`` -> a vector folded in from the history items
  (``foldin.json``, :mod:`recsys.models.foldin`: ALS's exact solve with the trained
  weighting, BPR's own fold-in, the mean item vector otherwise), the history items excluded;
* unknown user without history (or with an empty one) -> the most popular items
  (scores are then the popularity values, not similarities).

Results are external ids (object array of ``str``; ``None`` in slots that cannot be
filled) and float32 scores (``-inf`` there), 1-D for one user, 2-D for many. ``k`` is
capped at the catalogue size: a result never has more slots than there are items.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import ClosedError, InputError, UnknownIdError
from recsys.index.base import VectorIndex, check_k, check_vectors, normalize_rows
from recsys.index.exact import ExactIndex
from recsys.models.foldin import FoldIn
from recsys.serving.download import download_bundle, find_bundle
from recsys.serving.reader import BundleData, load_index, read_bundle
from recsys.serving.versions import resolve_bundle

log = logging.getLogger(__name__)

#: "index": the bundle's own index backend (also accepted by its name, e.g. "annoy", "faiss")
BACKENDS = ("auto", "exact", "index")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")
_EMPTY = np.empty(0, np.int64)


def _id_list(ids: Any, what: str) -> tuple[list[str], bool]:
    """External ids as strings, plus whether a single id was given."""
    if isinstance(ids, (str, int, np.integer)) and not isinstance(ids, (bool, np.bool_)):
        return [str(ids)], True
    if isinstance(ids, (list, tuple, np.ndarray)) or hasattr(ids, "to_list"):
        vals = list(ids.to_list() if hasattr(ids, "to_list") else ids)
        for v in vals:
            if not isinstance(v, (str, int, np.integer)) or isinstance(v, (bool, np.bool_)):
                raise InputError(f"{what} must be str or int ids, got {type(v).__name__} {v!r}; "
                                 "convert float columns to int or str first")
        return [str(v) for v in vals], False
    raise InputError(f"{what} must be an id or a list of ids, got {type(ids).__name__}")


class Retriever:
    """Top-k retrieval over one bundle, with external ids in and out.

    Create with :meth:`load`. Attributes: ``path``, ``manifest``, ``version``,
    ``backend`` (``"exact"`` or the bundle's index backend, e.g. ``"annoy"``), ``n_items``, ``n_users``.

    A service that swaps bundles (say, after each nightly export) should :meth:`close`
    the old retriever, or use it as a context manager, once its last query has
    returned: that unmaps the index and deletes the temporary copy of a bundle
    downloaded from MLflow, which at 1M items is about a gigabyte.
    """

    _closed = False
    _cleanup: weakref.finalize | None = None

    def __init__(self, data: BundleData, backend: str = "auto", exact_max_items: int | None = None,
                 prefault: bool = False, search_threads: int = 1) -> None:
        m = data.manifest
        index_backend = m["index"].get("backend", "annoy")
        if backend not in BACKENDS and backend != index_backend:
            raise InputError(f"backend must be one of {(*BACKENDS, index_backend)} for this bundle, got {backend!r}")
        self.path, self.manifest, self.version = data.path, m, m["version"]
        self.similarity: str = m["similarity"]
        self.n_items, self.dim = int(m["n_items"]), int(m["dim"])
        limit = int(m.get("exact_max_items", 0) if exact_max_items is None else exact_max_items)
        # auto: exact for small catalogues, and for any catalogue whose export measured the
        # exact scan faster than the tuned Annoy index (a hard catalogue can need a
        # search_k so high that Annoy loses: docs/retrieval.md, cosine benchmark)
        p50 = m.get("quality_gate", {}).get("p50_ms", {})
        exact_faster = index_backend in p50 and p50["exact"] < p50[index_backend]
        auto = "exact" if self.n_items <= limit or exact_faster else index_backend
        self.backend = {"auto": auto, "index": index_backend}.get(backend, backend)
        if backend == "auto" and exact_faster and self.n_items > limit:
            log.info("exact backend: at export an exact query took %.2f ms, %s %.2f ms", p50["exact"], index_backend,
                     p50[index_backend])
        items = np.asarray(data.item_vectors)
        self._items = normalize_rows(items) if self.similarity == "cosine" else items
        self._exact = ExactIndex.from_prepared(self._items, self.similarity)
        self._index: VectorIndex = (load_index(data, prefault=prefault, search_threads=search_threads)
                                    if self.backend != "exact" else self._exact)
        self.item_map, self.user_map = data.item_map, data.user_map
        # index -> external id lookups on every answer: one object array, built once
        self._item_ids = np.asarray(self.item_map.ids, dtype=object)
        self._users = data.user_vectors
        self.n_users = 0 if data.user_map is None else len(data.user_map)
        self._seen = data.seen
        self.item_popularity = data.item_popularity
        self.item_source = data.item_source
        self._pop_order = np.argsort(-self.item_popularity, kind="stable")
        self.foldin = data.foldin  # the model's FoldInSpec; the solve is recsys.models.foldin's, not ours
        self._foldin = FoldIn(self.foldin, self._items)  # Y'Y + lambda I once; each fold-in adds a rank-n_u term

    def __repr__(self) -> str:
        return (f"Retriever(version={self.version!r}, backend={self.backend!r}, n_items={self.n_items}, "
                f"n_users={self.n_users}, similarity={self.similarity!r})")

    # -- loading -----------------------------------------------------------------------
    @classmethod
    def load(cls, path_or_uri: str | os.PathLike, *, verify: bool = True, backend: str = "auto",
             exact_max_items: int | None = None, tracking_uri: str | None = None, prefault: bool = False,
             dst_path: str | os.PathLike | None = None, search_threads: int = 1) -> Retriever:
        """Load a bundle directory, a root with a ``latest`` pointer, or an MLflow model URI.

        Parameters
        ----------
        path_or_uri : path or str
            ``ROOT``, ``ROOT/bundles/<version>``, ``models:/name@alias``,
            ``models:/name/3``, ``runs:/<run_id>/retriever`` ...
        verify : bool
            Check the size and sha256 of every file against the manifest (a second or
            so per GB); a corrupted or incomplete bundle raises
            :class:`~recsys.errors.BundleError`.
        backend : {"auto", "exact", "index"} or the bundle's index backend name (``"annoy"``, ``"faiss"``)
        exact_max_items : int, optional
            Override the manifest's exact-search threshold (for ``backend="auto"``).
        tracking_uri : str, optional
            MLflow tracking/registry URI for model URIs (default: MLflow's own resolution).
        dst_path : path, optional
            Where a model URI is downloaded. Default: a new temporary directory that the
            retriever owns and deletes when it is closed, garbage-collected or the
            interpreter exits (not before: the index is memory-mapped from it). A
            ``dst_path`` you give is never deleted.
        search_threads : int
            Threads one query may use to search a norm-ranged bundle's forests at once
            (1: none). Helps at low concurrency with idle cores: at 1M clustered items on
            2 cores, p50 / p99 1.92 / 2.81 -> 1.75 / 2.20 ms (docs/retrieval.md). A
            query only borrows a helper that is free, so under load it just runs alone.
        """
        s = os.fspath(path_or_uri)
        owned: Path | None = None  # a temporary download this retriever will own
        try:
            if _URI.match(s) and not s.startswith("file:"):
                if dst_path is None:
                    dst_path = owned = Path(tempfile.mkdtemp(prefix="recsys-bundle-"))
                path = download_bundle(s, tracking_uri=tracking_uri, dst_path=dst_path)
            else:
                path = resolve_bundle(s[len("file://"):] if s.startswith("file://") else s)
            r = cls(read_bundle(path, verify=verify), backend=backend, exact_max_items=exact_max_items,
                    prefault=prefault, search_threads=search_threads)
        except BaseException:  # a failed download or load leaves nothing behind
            if owned is not None:
                shutil.rmtree(owned, ignore_errors=True)
            raise
        if owned is not None:  # runs once: on close(), when r is collected, or at exit
            r._cleanup = weakref.finalize(r, shutil.rmtree, owned, ignore_errors=True)
        return r

    # -- lifetime ----------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called; a closed retriever refuses queries."""
        return self._closed

    def close(self) -> None:
        """Unmap the index, stop its search threads, delete an owned temporary download.

        Call it after the last query has returned (it does not wait for queries in
        other threads). Closing twice is harmless; queries afterwards raise
        :class:`~recsys.errors.ClosedError`.
        """
        if self._closed:
            return
        self._closed = True
        if self._index is not self._exact:
            self._index.unload()
        if self._cleanup is not None:
            self._cleanup()
            log.info("deleted the downloaded bundle %s", self.path)

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- id helpers --------------------------------------------------------------------
    def _item_indices(self, ids: Any, what: str, ignore_unknown: bool = False) -> np.ndarray:
        vals, _ = _id_list(ids, what)
        idx = self.item_map.to_index(vals, missing="ignore")
        if (idx < 0).any():
            unknown = [vals[i] for i in np.flatnonzero(idx < 0)[:5]]
            if not ignore_unknown:
                raise UnknownIdError(f"unknown item id(s) in {what}: {unknown}")
            log.debug("ignoring unknown item ids in %s: %s", what, unknown)
            idx = idx[idx >= 0]
        return idx.astype(np.int64)

    def _external(self, ids: np.ndarray) -> np.ndarray:
        out = np.full(ids.shape, None, dtype=object)
        ok = ids >= 0
        out[ok] = self._item_ids[ids[ok]]
        return out

    def _seen_items(self, u: int) -> np.ndarray:
        if self._seen is None or u < 0 or u >= self._seen.shape[0]:
            return _EMPTY
        s = self._seen
        return s.indices[s.indptr[u] : s.indptr[u + 1]].astype(np.int64)

    # -- core --------------------------------------------------------------------------
    def _popular(self, k: int, blocked: np.ndarray, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        order = self._pop_order
        if allowed is not None:
            order = order[np.isin(order, allowed)]
        ids = np.full(k, -1, np.int64)
        top = order[: k + blocked.size]
        if blocked.size:
            top = top[~np.isin(top, blocked)]
        top = top[:k]
        scores = np.full(k, -np.inf, np.float32)
        ids[: len(top)], scores[: len(top)] = top, self.item_popularity[top]
        return ids, scores

    def _run(self, vectors: list[np.ndarray | None], blocked: list[np.ndarray], k: int,
             allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """One batched index query for the rows with a vector, popularity for the rest."""
        if self._closed:
            raise ClosedError(f"this Retriever ({self.version}) was closed; load the bundle again")
        ids = np.full((len(vectors), k), -1, np.int64)
        scores = np.full((len(vectors), k), -np.inf, np.float32)
        rows = [r for r, v in enumerate(vectors) if v is not None]
        if rows:
            q = np.stack([vectors[r] for r in rows])
            i, s = self._index.query(q, k, exclude=[blocked[r] for r in rows], allowed=allowed)
            ids[rows], scores[rows] = i, s
        for r, v in enumerate(vectors):
            if v is None:
                ids[r], scores[r] = self._popular(k, blocked[r], allowed)
        return ids, scores

    def _finish(self, ids: np.ndarray, scores: np.ndarray, single: bool) -> tuple[np.ndarray, np.ndarray]:
        ext = self._external(ids)
        return (ext[0], scores[0]) if single else (ext, scores)

    def _common(self, k: Any, candidates: Any, exclude: Any) -> tuple[int, np.ndarray | None, np.ndarray]:
        # results are sized by k: capped at the catalogue, k = 10**9 must not allocate 10**9 slots
        k = min(check_k(k), self.n_items)
        allowed = None if candidates is None else self._item_indices(candidates, "candidates")
        blocked = _EMPTY if exclude is None else self._item_indices(exclude, "exclude")
        return k, allowed, blocked

    # -- public API --------------------------------------------------------------------
    def recommend(self, user_ids: Any, k: int = 10, exclude_seen: bool = True, candidates: Any = None,
                  exclude: Any = None, history: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for one user (1-D results) or a list of users (2-D).

        Parameters
        ----------
        user_ids : id or list of ids
        k : int
        exclude_seen : bool
            Drop each known user's seen items (exactly, whatever the backend) and the
            items of a given history.
        candidates : list of item ids, optional
            Allow-list: only these items may be returned.
        exclude : list of item ids, optional
            Block-list applied to every user.
        history : list of item ids, or (for many users) a dict ``{user_id: items}`` or a
            list aligned with ``user_ids``; used only for users the bundle does not know.

        Raises
        ------
        InputError (ValueError)
            ``k <= 0``, ids of a wrong type.
        UnknownIdError (KeyError)
            Unknown item ids in ``candidates`` or ``exclude``. Unknown *users* are not
            an error: they get the fallback described in the module docstring.
        """
        k, allowed, common = self._common(k, candidates, exclude)
        users, single = _id_list(user_ids, "user_ids")
        hist = self._histories(history, users, single)
        uidx = (self.user_map.to_index(users, missing="ignore") if self.user_map is not None
                else np.full(len(users), -1, np.int64))
        vectors: list[np.ndarray | None] = []
        blocked: list[np.ndarray] = []
        for r, u in enumerate(uidx):
            b = [common]
            if u >= 0:
                vectors.append(np.asarray(self._users[u]))  # type: ignore[index]
                if exclude_seen:
                    b.append(self._seen_items(int(u)))
            elif hist[r] is not None and hist[r].size:
                vectors.append(self._fold_in(hist[r], None))
                if exclude_seen:
                    b.append(hist[r])
            else:
                vectors.append(None)
            parts = [x for x in b if x.size]  # one list (the usual: seen items only) needs no merge
            blocked.append(parts[0] if len(parts) == 1 else np.unique(np.concatenate(parts)) if parts else common)
        n_unknown = int((uidx < 0).sum())
        if n_unknown:
            log.debug("%d of %d users unknown to bundle %s: fallback used", n_unknown, len(users), self.version)
        return self._finish(*self._run(vectors, blocked, k, allowed), single)

    def _histories(self, history: Any, users: list[str], single: bool) -> list[np.ndarray | None]:
        if history is None:
            return [None] * len(users)
        if single:
            return [self._item_indices(history, "history", ignore_unknown=True)]
        if isinstance(history, Mapping):
            h = {str(key): v for key, v in history.items()}
            return [None if h.get(u) is None else self._item_indices(h[u], "history", True) for u in users]
        if len(history) != len(users):
            raise InputError(f"history has {len(history)} entries for {len(users)} users; give one per user or a dict")
        return [None if h is None else self._item_indices(h, "history", True) for h in history]

    def _fold_in(self, items: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
        """A query vector for a history of item indices and raw weights (``foldin.json``).

        :class:`recsys.models.foldin.FoldIn` solves it exactly as the model's own
        ``recalculate_user`` does (ALS: the trained weighting, ``alpha`` and ``λ``).
        """
        return self._foldin.user(items, weights)

    def recommend_from_history(self, item_ids: Any, k: int = 10, weights: Any = None, exclude_seen: bool = True,
                               candidates: Any = None, exclude: Any = None,
                               ignore_unknown: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` for an anonymous or brand-new user from the items they interacted with.

        The user vector is folded in from the history (no retraining); an empty history
        falls back to popular items. ``weights`` (one per item, >= 0) are the raw
        interaction values, as in the training data (ratings, counts; default 1): the
        model's own weighting is applied to them here. Unknown history ids raise
        :class:`~recsys.errors.UnknownIdError` unless ``ignore_unknown``.
        """
        k, allowed, common = self._common(k, candidates, exclude)
        vals, _ = _id_list(item_ids, "item_ids")
        idx = self.item_map.to_index(vals, missing="ignore")
        w = None
        if weights is not None:
            w = np.asarray(weights, np.float64).ravel()
            if w.shape != idx.shape or not np.isfinite(w).all() or (w < 0).any():
                raise InputError(f"weights must be {len(idx)} finite values >= 0, one per item")
        if (idx < 0).any() and not ignore_unknown:
            raise UnknownIdError(f"unknown item id(s) in history: {[vals[i] for i in np.flatnonzero(idx < 0)[:5]]}")
        keep = idx >= 0
        idx, w = idx[keep], (None if w is None else w[keep])
        vec = self._fold_in(idx, w) if idx.size and (w is None or w.sum() > 0) else None
        blocked = np.unique(np.concatenate([common, idx])) if exclude_seen else common
        return self._finish(*self._run([vec], [blocked], k, allowed), True)

    def similar_items(self, item_ids: Any, k: int = 10, candidates: Any = None,
                      exclude: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Items closest to each given item by the model's similarity (itself excluded)."""
        k, allowed, common = self._common(k, candidates, exclude)
        vals, single = _id_list(item_ids, "item_ids")
        idx = self._item_indices(vals, "item_ids")
        vectors = [np.asarray(self._items[i]) for i in idx]
        blocked = [np.union1d(common, [i]) for i in idx]
        return self._finish(*self._run(vectors, blocked, k, allowed), single)  # type: ignore[arg-type]

    def search(self, vectors: Any, k: int = 10, candidates: Any = None,
               exclude: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for raw query vectors (1-D or 2-D); NaN/inf vectors are refused."""
        k, allowed, common = self._common(k, candidates, exclude)
        arr = np.asarray(vectors)
        single = arr.ndim == 1
        q = check_vectors(arr[None] if single else arr, "query vectors", self.dim)
        return self._finish(*self._run(list(q), [common] * len(q), k, allowed), single)

    def popular(self, k: int = 10, candidates: Any = None, exclude: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """The fallback ranking itself: most popular items (scores are popularity)."""
        k, allowed, common = self._common(k, candidates, exclude)
        return self._finish(*self._run([None], [common], k, allowed), True)


__all__: Sequence[str] = ["Retriever", "download_bundle", "find_bundle"]

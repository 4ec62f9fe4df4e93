"""Fold-in: one place that turns a history into a user vector (and a new item into an item vector).

Why one module: a folded-in user must get the vector a trained user with the same history
got, so the fold-in has to apply exactly the training objective: the same confidence
weighting, the same ``alpha``, the same regularization. When the models and the
:class:`~recsys.serving.retriever.Retriever` each wrote their own solve they drifted (the
Retriever solved ALS with ``alpha * raw_weight`` for a model trained with ``log``
weighting: top-10 overlap 0.35 with the trained users' lists, issue 17). Now a fitted
model describes its fold-in once, as a small serialisable :class:`FoldInSpec`
(``model.foldin_spec()``, written to a bundle's ``foldin.json`` + ``foldin.npz``), and
:class:`FoldIn` (a spec bound to item vectors) is the only code that solves it, for
``ALS.recalculate_user`` and for the Retriever alike.

What each family can honestly do:

==============  ==========================================================================
ALS             ``"als"``: the exact implicit-ALS normal equations
                ``(YᵀY + Yᵤᵀ(Cᵤ - I)Yᵤ + λI) x = Yᵤᵀ Cᵤ pᵤ`` with ``Cᵤ = alpha * weighting(r)``
                (every scheme of :mod:`recsys.models.weighting`, with the training
                statistics bm25 needs) and ``λ`` unscaled, as implicit (0.7) trains: its CPU
                and GPU solvers add ``regularization * I`` and multiply by nothing (not by
                the user's item count). ``YᵀY`` is the Gram of the *trained* item factors,
                stored in the spec, so cold items blended into a bundle do not change it.
                A training user's own history reproduces its trained vector (cosine >= 0.99,
                ``tests/test_foldin.py``; the residual is implicit's conjugate-gradient
                steps against the previous iteration's item factors).
BPR             ``"bpr"``: the model's own fold-in with the item factors fixed (``solver``
                ``"sgd"``: BPR SGD on the one user, seeded; ``"lstsq"``: ridge fit of
                seen=1 / unseen=0). Weights only mark items, as in training. Not the
                trained vector (SGD from a new start), so measured by top-10 overlap.
two-tower       the user tower on the history (``TwoTower.recalculate_user``; exact for
                an id-free tower). A bundle has no tower, so its spec is ``"mean"``: the
                weighted mean of the (normalised) item vectors, an approximation.
item-knn        nothing to fold in: a user *is* their history (``history @ similarity``),
                so :func:`score_history` is exact by construction.
most-popular    the same ranking for everybody: :func:`score_history` is exact.
==============  ==========================================================================

:meth:`FoldIn.item` is the ALS item fold-in (least squares of a new item's interactions
against fixed user vectors), for incremental updates between retrains.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

from recsys.errors import InputError
from recsys.models import weighting as _weighting

log = logging.getLogger(__name__)

METHODS = ("mean", "als", "bpr", "tower")
BPR_SOLVERS = ("sgd", "lstsq")
#: ``format`` written into ``foldin.json``; version 1 (no ``format`` key) had only method, alpha, regularization
FORMAT = 2
_ARRAYS = ("gram", "length_norm")


@dataclass(frozen=True, eq=False)
class FoldInSpec:
    """How a fitted model folds in a history: everything the solve needs, nothing else.

    Parameters
    ----------
    method : {"mean", "als", "bpr", "tower"}
        ``"tower"``: a two-tower model's id-free, mean-pooling user tower, run in numpy
        (:mod:`recsys.models.tower_foldin`), so a bundle folds in exactly as the model
        does without torch.
    weighting : str
        ALS: the training confidence scheme (:data:`recsys.models.weighting.SCHEMES`).
    alpha, regularization : float
        ALS: confidence scale and the (unscaled) L2 penalty; BPR: ``regularization`` of SGD.
    eps, bm25_k1, bm25_b : float
        Parameters of the ``log`` / ``bm25`` schemes.
    n_items : int, optional
        Items of the training matrix (the idf's N of ``tfidf`` / ``bm25``).
    gram : array (d, d), optional
        ALS: ``YᵀY`` of the trained item factors (float64); computed from the bound item
        vectors when absent (bundles written before format 2).
    length_norm : array (n_items,), optional
        ALS with ``bm25``: per-item length normalisation of the training matrix.
    solver, learning_rate, steps, seed
        BPR: ``"sgd"`` or ``"lstsq"``, SGD step size, epochs over the history, and seed.
    history_len : int
        Tower: only the last ``history_len`` items of a history count (as in training).
    tower : mapping of str to array, optional
        Tower: ``m{k}.emb`` (history embeddings, row 0 = padding), ``m{k}.w{l}`` /
        ``m{k}.b{l}`` (the MLP's linear layers) of each ensemble member ``k``.
    """

    method: str = "mean"
    weighting: str = "linear"
    alpha: float = 1.0
    regularization: float = 0.0
    eps: float = 1.0
    bm25_k1: float = 100.0
    bm25_b: float = 0.8
    n_items: int | None = None
    solver: str = "sgd"
    learning_rate: float = 0.01
    steps: int = 50
    seed: int = 42
    history_len: int = 0
    gram: np.ndarray | None = None
    length_norm: np.ndarray | None = None
    tower: Mapping[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"fold-in method must be one of {METHODS}, got {self.method!r}")
        _weighting.check_scheme(self.weighting)
        for key in ("alpha", "regularization", "eps", "learning_rate"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not np.isfinite(v) or v < 0:
                raise InputError(f"fold-in {key} must be a finite number >= 0, got {v!r}")
        if self.method == "als" and not self.alpha > 0:
            raise InputError(f"als fold-in needs alpha > 0, got {self.alpha!r}")
        if self.method == "bpr" and self.solver not in BPR_SOLVERS:
            raise InputError(f"bpr fold-in solver must be one of {BPR_SOLVERS}, got {self.solver!r}")
        if self.method == "tower" and not (self.tower and "m0.emb" in self.tower and self.history_len > 0):
            raise InputError("tower fold-in needs the tower arrays (m0.emb, m0.w0, ...) and history_len > 0; "
                             "build the spec with model.foldin_spec()")
        if self.weighting == "bm25" and self.method == "als" and self.length_norm is None:
            raise InputError("als fold-in with bm25 weighting needs the training length_norm; "
                             "build the spec with model.foldin_spec()")

    def to_json(self) -> dict[str, Any]:
        """The scalar fields (``foldin.json``); arrays go to :meth:`arrays` (``foldin.npz``)."""
        out: dict[str, Any] = {"format": FORMAT}
        for f in dataclasses.fields(self):
            if f.name not in _ARRAYS and f.name != "tower":
                v = getattr(self, f.name)
                out[f.name] = v.item() if isinstance(v, np.generic) else v
        out["arrays"] = sorted(self.arrays())
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """The array fields that are set, by name."""
        out = {n: np.asarray(getattr(self, n)) for n in _ARRAYS if getattr(self, n) is not None}
        out.update({f"tower.{k}": np.asarray(v) for k, v in (self.tower or {}).items()})
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> FoldInSpec:
        """Read :meth:`to_json` output (and its arrays), or a format-1 ``foldin.json``.

        Format 1 (``{"method": "als", "regularization", "alpha"}`` or ``{"method":
        "mean"}``) recorded no weighting; its solve was ``alpha * raw weight``, i.e.
        ``linear``, so that is how it is read (old bundles answer as they always did).
        """
        if not isinstance(data, Mapping):
            raise InputError(f"a fold-in spec must be an object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - set(_ARRAYS) - {"tower"}
        unknown = set(data) - names - {"format", "arrays"}
        if unknown:
            raise InputError(f"unknown fold-in spec keys {sorted(unknown)}; written by a newer recsys?")
        kw: dict[str, Any] = {k: v for k, v in data.items() if k in names}
        missing = set(data.get("arrays", ())) - set(arrays or {})
        if missing:
            raise InputError(f"fold-in spec lists arrays {sorted(missing)} that were not given (foldin.npz missing?)")
        for name, arr in (arrays or {}).items():
            if name in _ARRAYS:
                kw[name] = np.asarray(arr)
            elif name.startswith("tower."):
                kw.setdefault("tower", {})[name[len("tower."):]] = np.asarray(arr)
        return cls(**kw)


def check_history(items: Any, weights: Any, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate a history; return sorted unique item indices and their summed weights (> 0).

    Duplicates are summed and zero weights dropped, as building the training matrix does,
    so the model and the Retriever see the same history.
    """
    idx = np.atleast_1d(np.asarray(items))
    if idx.size == 0:
        raise InputError("cannot fold in a user with an empty history; use a popularity fallback")
    if idx.dtype.kind not in "iu":
        raise InputError(f"item indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64).ravel()
    if idx.min() < 0 or idx.max() >= n_items:
        raise InputError(f"item index out of range [0, {n_items})")
    w = np.ones(len(idx), np.float32) if weights is None else np.asarray(weights, np.float32).ravel()
    if w.shape != idx.shape:
        raise InputError(f"weights has {w.size} values for {idx.size} items")
    if not np.isfinite(w).all() or (w < 0).any():
        raise InputError("fold-in weights must be finite and >= 0")
    row = sp.csr_matrix((w, (np.zeros(len(idx), np.int64), idx)), shape=(1, n_items), dtype=np.float32)
    row.sum_duplicates()
    row.eliminate_zeros()
    if row.nnz == 0:
        raise InputError("cannot fold in a user whose weights are all zero")
    return row.indices.astype(np.int64), row.data


class FoldIn:
    """A :class:`FoldInSpec` bound to item vectors: folds in users (and ALS items).

    Read-only after construction (``YᵀY`` is computed once here), so one instance can
    serve many threads. Cost per ALS user ``O(n_u d² + d³)``: milliseconds.

    Parameters
    ----------
    spec : FoldInSpec
    item_vectors : array (n_items, d)
        The vectors users are scored against (a model's ``item_factors_``, a bundle's
        item vectors; normalised ones for a cosine ``"mean"`` fold-in).
    """

    def __init__(self, spec: FoldInSpec, item_vectors: np.ndarray) -> None:
        self.spec = spec
        self.item_vectors = item_vectors
        self.n_items, self.dim = item_vectors.shape
        self._lhs: np.ndarray | None = None
        if spec.method == "als":
            gram = spec.gram
            if gram is None:
                y = np.asarray(item_vectors, np.float64)
                gram = y.T @ y
            elif gram.shape != (self.dim, self.dim):
                raise InputError(f"fold-in gram has shape {gram.shape}, the item vectors have {self.dim} dims")
            self._lhs = np.asarray(gram, np.float64) + float(spec.regularization) * np.eye(self.dim)

    def confidence(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """ALS confidences ``alpha * weighting(w)`` of a checked history, as in training."""
        s = self.spec
        if s.weighting == "bm25" and s.length_norm is not None and len(s.length_norm) < self.n_items:
            raise InputError(f"bm25 length_norm covers {len(s.length_norm)} items, the item vectors {self.n_items}")
        row = sp.csr_matrix((weights, items, [0, len(items)]), shape=(1, self.n_items))
        w = _weighting.transform(row, s.weighting, eps=s.eps, K1=s.bm25_k1, B=s.bm25_b,
                                 length_norm=s.length_norm, n_items=s.n_items or self.n_items).data
        return w.astype(np.float64) * float(s.alpha)

    def user(self, items: Any, weights: Any = None) -> np.ndarray:
        """The user vector for a history of item indices and raw weights (default 1 each).

        Returns
        -------
        float32 array (d,)
        """
        idx, w = check_history(items, weights, self.n_items)
        s = self.spec
        if s.method == "als":
            y = np.asarray(self.item_vectors[idx], np.float64)
            c = self.confidence(idx, w)
            a = self._lhs + (y.T * (c - 1.0)) @ y  # type: ignore[operator]
            return np.linalg.solve(a, y.T @ c).astype(np.float32)
        if s.method == "bpr":
            return _bpr_user(s, self.item_vectors, idx)
        if s.method == "tower":
            return tower_user(s.tower, _ordered(items, self.n_items)[-s.history_len:])  # type: ignore[arg-type]
        v = (w[:, None].astype(np.float64) * self.item_vectors[idx]).sum(0) / max(float(w.sum()), 1e-12)
        return np.asarray(v, np.float32)

    def item(self, user_vectors: np.ndarray, users: Any, weights: Any = None,
             user_gram: np.ndarray | None = None) -> np.ndarray:
        """ALS item fold-in: the least-squares vector of a new item against fixed user vectors.

        The mirror of :meth:`user` (implicit's item step): ``(XᵀX + Xᵢᵀ(Cᵢ - I)Xᵢ + λI) y =
        Xᵢᵀ Cᵢ pᵢ`` over the users who interacted with the item. Only the element-wise
        schemes (``linear``, ``log``, ``binary``) are defined per item; ``bm25`` /
        ``tfidf`` weigh by statistics of each user's whole row, which a new column cannot
        supply.

        Parameters
        ----------
        user_vectors : array (n_users, d)
        users : int array
            Users who interacted with the item; ``weights`` their raw values.
        user_gram : array (d, d), optional
            ``XᵀX`` when folding in many items (otherwise computed here).
        """
        s = self.spec
        if s.method != "als":
            raise InputError(f"item fold-in is defined for ALS only, not for a {s.method!r} spec")
        if s.weighting not in ("linear", "log", "binary"):
            raise InputError(f"item fold-in needs an element-wise weighting (linear, log, binary), not {s.weighting!r}")
        x_all = np.asarray(user_vectors, np.float64)
        idx, w = check_history(users, weights, len(x_all))
        gram = x_all.T @ x_all if user_gram is None else np.asarray(user_gram, np.float64)
        col = sp.csr_matrix((w, idx, [0, len(idx)]), shape=(1, len(x_all)))
        c = _weighting.transform(col, s.weighting, eps=s.eps).data.astype(np.float64) * float(s.alpha)
        x = x_all[idx]
        a = gram + float(s.regularization) * np.eye(x_all.shape[1]) + (x.T * (c - 1.0)) @ x
        return np.linalg.solve(a, x.T @ c).astype(np.float32)


def tower_user(tower: Mapping[str, np.ndarray], items: np.ndarray) -> np.ndarray:
    """The user vector of an id-free, mean-pooling two-tower user tower, in numpy.

    Mirrors :class:`recsys.models.towers.UserTower` (mean of the history embeddings ->
    ``Linear -> ReLU`` ... ``-> Linear`` -> L2 normalisation) and
    :class:`~recsys.models.towers.ConcatTower` for ensembles (members concatenated and
    scaled by ``1/sqrt(K)``), so a bundle folds in without torch.
    """
    members = sorted({k.split(".")[0] for k in tower})
    out = []
    for m in members:
        x = np.asarray(tower[f"{m}.emb"][items + 1], np.float64).mean(0)  # row 0 is the padding row
        n_layers = sum(1 for k in tower if k.startswith(f"{m}.w"))
        for layer in range(n_layers):
            x = np.asarray(tower[f"{m}.w{layer}"], np.float64) @ x + tower[f"{m}.b{layer}"]
            if layer < n_layers - 1:
                x = np.maximum(x, 0.0)
        out.append(x / max(float(np.linalg.norm(x)), 1e-12))
    return (np.concatenate(out) / np.sqrt(len(out))).astype(np.float32)


def _ordered(items: Any, n_items: int) -> np.ndarray:
    """A history's item indices in the caller's order (oldest first), validated, duplicates kept."""
    idx = np.atleast_1d(np.asarray(items)).astype(np.int64).ravel()
    check_history(idx, None, n_items)
    return idx


def _bpr_user(s: FoldInSpec, vectors: np.ndarray, items: np.ndarray) -> np.ndarray:
    """BPR fold-in on fixed item factors ``[Y | bias]``; returns ``[x, 1]`` (the bias multiplier).

    Rows are promoted to float64 one at a time (no float64 copy of a million-item catalogue).
    """
    y, bias = vectors[:, :-1], vectors[:, -1]
    n_items, d = y.shape
    if s.solver == "lstsq":
        # minimise sum_i (p_i - x.y_i - b_i)^2 + reg |x|^2 over all items
        y = np.asarray(y, np.float64)
        target = -np.asarray(bias, np.float64)
        target[items] += 1.0
        x = np.linalg.solve(y.T @ y + np.eye(d) * max(float(s.regularization), 1e-6), y.T @ target)
        return np.r_[x, 1.0].astype(np.float32)
    rng = np.random.default_rng(s.seed)
    seen = np.zeros(n_items, bool)
    seen[items] = True
    n_unseen = n_items - len(items)
    x = (rng.random(d) - 0.5) / d
    lr, reg = float(s.learning_rate), float(s.regularization)
    for _ in range(int(s.steps)):
        pos = rng.permutation(items)
        neg = rng.integers(0, n_items, size=len(pos))
        if n_unseen > 0:
            bad = seen[neg]
            while bad.any():  # re-draw negatives the user saw
                neg[bad] = rng.integers(0, n_items, size=int(bad.sum()))
                bad = seen[neg]
        for i, j in zip(pos, neg):
            diff = y[i].astype(np.float64) - y[j]
            g = expit(-(x @ diff + (float(bias[i]) - float(bias[j]))))  # d/dz log(sigmoid(z)) = sigmoid(-z)
            x += lr * (g * diff - reg * x)
    return np.r_[x, 1.0].astype(np.float32)


def spec_for(model: Any) -> FoldInSpec:
    """The fold-in spec of a fitted model (``model.foldin_spec()``; ``"mean"`` without one)."""
    make = getattr(model, "foldin_spec", None)
    return make() if callable(make) else FoldInSpec("mean")


def score_history(model: Any, items: Any, weights: Any = None) -> np.ndarray:
    """Scores of every item for a new user of a family without user vectors (float32).

    ``ItemKNN``: ``history @ similarity`` (its trained users are scored the same way, so
    this is exact); ``MostPopular``: the popularity (the same for everybody). Factor
    models fold in with ``model.recalculate_user`` instead.
    """
    if hasattr(model, "similarity_"):
        idx, w = check_history(items, weights, model.n_items_)
        row = sp.csr_matrix((w, idx, [0, len(idx)]), shape=(1, model.n_items_))
        if getattr(model, "binary", False):
            row.data = np.ones_like(row.data)
        return np.asarray((row @ model.similarity_).toarray()[0], np.float32)
    if hasattr(model, "popularity_"):
        check_history(items, weights, model.n_items_)
        return np.asarray(model.popularity_, np.float32).copy()
    raise InputError(f"{type(model).__name__} has user vectors: fold in with model.recalculate_user(items, weights)")

"""Content -> CF mappers for cold items, and choosing one on validation data.

Why: a cold item's vector in the CF space has to come from its content, and which way of
getting it works best depends on the data. A ridge map (:class:`~recsys.embeddings.blend.RidgeMap`)
learns one linear function of the whole content space and wins when content and CF
geometry are linearly related (MovieLens titles + genres with MiniLM). Content nearest
neighbours (:class:`KnnMap`) copy the CF vectors of the most similar warm items and win
when the relation is local or non-linear (a music log with artist names only: a new track
is like the artist's other tracks, not like a linear function of the name). Their blend
(:class:`BlendMap`) sits in between. Nothing about a new dataset tells which one is right,
so :func:`select_mapper` measures it.

Selection protocol (validation only; never ``test`` or ``test_cold``):

1. *Eligible* items: content and ``>= min_count`` interactions in ``train``.
2. ``n_folds`` (5) disjoint, seeded folds of ``holdout_frac`` (10%) of the eligible items
   (at most ``max_items`` each) are held out as *pseudo-cold*: their CF vectors are
   hidden from the mapper fit (which uses the other eligible items only).
3. Each candidate maps the pseudo-cold items' content into the CF space.
4. Score: Recall@``k`` (default 20) per user, ranking only the pseudo-cold items of the
   fold, for every user with a ``valid`` interaction on one of them; relevant = those
   ``valid`` interactions; the user's ``train`` items are excluded; user vectors are the
   CF user vectors of the model fitted on ``train``. Folds are pooled (user-folds).
5. The incumbent is plain content nearest neighbours (``knn``, k=20). A candidate
   qualifies only if its per-user recall beats the incumbent's, paired, by ``z`` (2)
   standard errors and its mean gain is positive in every fold; the best qualified one
   wins (ties to the earlier in the grid order ridge, kNN, blend), and a blend must beat
   the best qualified plain ridge / kNN by ``min_gain`` (1% relative) or the plain one is
   kept. So on data where content says nothing the choice is content kNN, never a lucky
   grid point.

The CF user vectors saw the pseudo-cold items' train interactions (no refit per fold), so
validation recall runs higher than recall on truly cold items; only the candidates'
order is used.

Every mapper has ``fit(content_warm, cf_warm)`` and ``transform(content_cold)``
(``predict`` is the same, the name :class:`~recsys.embeddings.blend.ContentBlender` calls).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from recsys.embeddings.blend import MLPMap, RidgeMap, check_pair
from recsys.errors import ConfigError, InputError, NotFittedError

if TYPE_CHECKING:
    from recsys.data.dataset import Dataset

log = logging.getLogger(__name__)

#: mapper names accepted by :func:`make_mapper` (``auto`` = :func:`select_mapper`)
MAPPER_NAMES = ("auto", "ridge", "knn", "blend", "mlp")


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(n > 0, n, 1.0)).astype(np.float32)


def knn_neighbours(query: np.ndarray, base: np.ndarray, k: int, max_floats: int = 1 << 25) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most cosine-similar ``base`` rows of each ``query`` row, most similar first.

    Chunked over queries so at most ``max_floats`` similarities (128 MB) exist at once,
    whatever the catalogue size.

    Returns
    -------
    idx : int64 (n_query, k'), sims : float32 (n_query, k') with ``k' = min(k, len(base))``
    """
    q, b = _unit(np.asarray(query, np.float32)), _unit(np.asarray(base, np.float32))
    k = min(int(k), len(b))
    idx = np.empty((len(q), k), np.int64)
    sims = np.empty((len(q), k), np.float32)
    chunk = max(1, min(len(q), max_floats // max(len(b), 1)))
    for s in range(0, len(q), chunk):
        sim = q[s:s + chunk] @ b.T
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < len(b) else np.tile(np.arange(len(b)), (len(sim), 1))
        ps = np.take_along_axis(sim, part, axis=1)
        order = np.argsort(-ps, axis=1, kind="stable")
        idx[s:s + chunk] = np.take_along_axis(part, order, axis=1)
        sims[s:s + chunk] = np.take_along_axis(ps, order, axis=1)
    return idx, sims


def knn_average(cf: np.ndarray, idx: np.ndarray, sims: np.ndarray, k: int) -> np.ndarray:
    """Mean of the CF vectors of the first ``k`` neighbours, weighted by ``max(cos, 0)``.

    A row whose neighbours are all dissimilar (every weight 0) gets their plain mean.
    """
    i, w = idx[:, :k], np.clip(sims[:, :k], 0.0, None).astype(np.float64)
    zero = w.sum(1) == 0
    w[zero] = 1.0
    w /= w.sum(1, keepdims=True)
    return np.einsum("nk,nkd->nd", w, cf[i]).astype(np.float32)


class KnnMap:
    """Cold vector = similarity-weighted mean of the CF vectors of the ``k`` nearest warm items.

    Neighbours by content cosine, weights ``max(cos, 0)``. Nothing is learned beyond
    remembering the warm items, so it cannot underfit a non-linear content -> CF relation
    the way a linear map does; it is worse when content is only weakly informative and
    averaging over the whole space (ridge) denoises better.

    Parameters
    ----------
    k : int
        Neighbours averaged.
    """

    def __init__(self, k: int = 20) -> None:
        if int(k) < 1:
            raise InputError(f"kNN mapper k must be >= 1, got {k}")
        self.k = int(k)

    def fit(self, x: np.ndarray, y: np.ndarray) -> KnnMap:
        """Remember warm items: ``x`` content (n, d_c), ``y`` CF vectors (n, d_cf)."""
        x, y = check_pair(x, y)
        if len(x) < 1:
            raise InputError("the kNN content->CF mapper needs at least one warm item with content")
        self.content_, self.cf_ = _unit(x), y
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Mapped CF vectors for content rows ``x``."""
        if not hasattr(self, "cf_"):
            raise NotFittedError("KnnMap is not fitted; call fit() first")
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.content_.shape[1]:
            raise InputError(f"content must be (n, {self.content_.shape[1]}), got {x.shape}")
        idx, sims = knn_neighbours(x, self.content_, self.k)
        return knn_average(self.cf_, idx, sims, self.k)

    predict = transform


class BlendMap:
    """``alpha * ridge(content) + (1 - alpha) * knn(content)``.

    Parameters
    ----------
    alpha : float in [0, 1]
        Weight of the ridge map (1 = ridge only, 0 = kNN only).
    k : int
        Neighbours of the kNN part.
    """

    def __init__(self, alpha: float = 0.5, k: int = 20) -> None:
        if not 0.0 <= float(alpha) <= 1.0:
            raise InputError(f"blend mapper alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.k = int(k)

    def fit(self, x: np.ndarray, y: np.ndarray) -> BlendMap:
        self.ridge_ = RidgeMap().fit(x, y)
        self.knn_ = KnnMap(self.k).fit(x, y)
        self.alpha_ = self.ridge_.alpha_  # ContentBlender records the ridge penalty under this name
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        if not hasattr(self, "knn_"):
            raise NotFittedError("BlendMap is not fitted; call fit() first")
        return (self.alpha * self.ridge_.predict(x) + (1 - self.alpha) * self.knn_.transform(x)).astype(np.float32)

    predict = transform


def make_mapper(name: str, **params: Any) -> Any:
    """A fresh mapper by name: ``ridge``, ``knn`` (``k``), ``blend`` (``alpha``, ``k``) or ``mlp``.

    Raises
    ------
    ConfigError
        For an unknown name (naming the valid ones) or ``auto`` (use :func:`select_mapper`).
    """
    kinds: dict[str, Any] = {"ridge": RidgeMap, "knn": KnnMap, "blend": BlendMap, "mlp": MLPMap}
    if name not in kinds:
        hint = "; 'auto' is chosen on validation by select_mapper()" if name == "auto" else ""
        raise ConfigError(f"unknown cold-start mapper {name!r}; valid names: {', '.join(MAPPER_NAMES)}{hint}")
    return kinds[name](**params)


# -- selection on validation -------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One point of the selection grid: a mapper name and its parameters."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name + ("(" + ",".join(f"{k}={v:g}" for k, v in sorted(self.params.items())) + ")" if self.params else "")


#: the incumbent of the selection: plain content nearest neighbours
DEFAULT_MAPPER = Candidate("knn", {"k": 20})


def default_candidates(knn_ks: Sequence[int] = (5, 10, 20, 50), alphas: Sequence[float] = (0.25, 0.5, 0.75)) -> list[Candidate]:
    """ridge, kNN for each ``k``, blend for each ``alpha`` x ``k`` (in tie-break order)."""
    return ([Candidate("ridge")] + [Candidate("knn", {"k": int(k)}) for k in knn_ks]
            + [Candidate("blend", {"alpha": float(a), "k": int(k)}) for a in alphas for k in knn_ks])


@dataclass
class MapperSelection:
    """The chosen mapper and the validation scores of every candidate.

    ``scores[label]`` holds ``recall@k`` pooled over the folds, ``gain`` (mean per-user
    difference to the incumbent) and ``gain_se`` (its standard error); ``reason`` says why
    the choice was made (the evidence, or the default and why).
    """

    mapper: str
    params: dict[str, Any]
    scores: dict[str, dict[str, float]]
    metric: str
    reason: str
    n_pseudo_cold: int = 0
    n_users: int = 0
    seed: int = 0
    holdout_frac: float = 0.0
    n_folds: int = 0

    @property
    def label(self) -> str:
        """The chosen candidate as in :attr:`scores` (``knn(k=20)``)."""
        return Candidate(self.mapper, self.params).label

    def make(self) -> Any:
        """A fresh, unfitted instance of the chosen mapper."""
        return make_mapper(self.mapper, **self.params)

    def as_dict(self) -> dict[str, Any]:
        return {"mapper": self.mapper, "params": dict(self.params), "selected_on": "valid", "metric": self.metric,
                "reason": self.reason, "scores": self.scores, "n_pseudo_cold": self.n_pseudo_cold,
                "n_users": self.n_users, "seed": self.seed, "holdout_frac": self.holdout_frac, "n_folds": self.n_folds}

    def mlflow_params(self) -> dict[str, Any]:
        """Nested params for :func:`recsys.tracking.log_config` (``mapper.chosen``, ``mapper.params.k`` ...)."""
        d = self.as_dict()
        return {"mapper": {"setting": "auto", "chosen": self.mapper, "params": self.params,
                           **{k: d[k] for k in ("metric", "reason", "n_pseudo_cold", "n_users", "seed", "holdout_frac", "n_folds")}}}

    def mlflow_metrics(self) -> dict[str, float]:
        """Validation scores per candidate, ``valid.<candidate>.recall@20`` (``blend_alpha0.5_k20``)."""
        def slug(label: str) -> str:
            return label.replace("(", "_").replace(")", "").replace("=", "").replace(",", "_")

        return {f"valid.{slug(label)}.{m}": v for label, s in self.scores.items() for m, v in s.items()}


def _per_user_recall(u: np.ndarray, preds: dict[str, np.ndarray], train: sp.csr_matrix, valid: sp.csr_matrix,
                     cold: np.ndarray, k: int, chunk: int = 1024) -> dict[str, np.ndarray]:
    """Recall@k per user of each candidate's vectors for ``cold`` items, ranked among ``cold`` only.

    Users = those with a ``valid`` interaction on a ``cold`` item; their ``train`` items are
    excluded; recall = hits / relevant (:mod:`recsys.metrics`' definition). Per user, so
    candidates can be compared paired.
    """
    tr, va = sp.csr_matrix(train[:, cold]), sp.csr_matrix(valid[:, cold])
    n_rel = np.diff(va.indptr)
    users = np.flatnonzero(n_rel > 0)
    kk = min(k, len(cold))
    out = {label: np.empty(len(users)) for label in preds}
    for s in range(0, len(users), chunk):
        b = users[s:s + chunk]
        seen = tr[b].toarray() > 0
        rel = (va[b].toarray() > 0) & ~seen
        for label, v in preds.items():
            sc = u[b] @ v.T
            sc[seen] = -np.inf
            top = np.argpartition(-sc, kk - 1, axis=1)[:, :kk] if kk < sc.shape[1] else np.argsort(-sc, axis=1)
            out[label][s:s + len(b)] = np.take_along_axis(rel, top, axis=1).sum(1) / n_rel[b]
    return out


def select_mapper(
    content: np.ndarray,
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    train: sp.spmatrix,
    valid: sp.spmatrix,
    candidates: Sequence[Candidate] | None = None,
    default: Candidate = DEFAULT_MAPPER,
    holdout_frac: float = 0.1,
    n_folds: int = 5,
    max_items: int = 5000,
    min_count: int = 5,
    k: int = 20,
    z: float = 2.0,
    min_gain: float = 0.01,
    min_users: int = 20,
    seed: int = 0,
) -> MapperSelection:
    """Choose the content -> CF mapper on pseudo-cold warm items (protocol in the module docstring).

    Parameters
    ----------
    content : float32 (n_items, d_c)
        Content vectors by ``item_idx`` (zero row = no content).
    user_vectors, item_vectors : float32 (n_users, d), (n_items, d)
        CF vectors of a model fitted on ``train`` only (not refitted on valid/test).
    train, valid : sparse user x item
        The ``train`` split (fit, exclusion, eligibility) and the ``valid`` split
        (relevance). No other split is used.
    candidates : sequence of Candidate, optional
        Default :func:`default_candidates`.
    default : Candidate
        The incumbent (content kNN, k=20): kept unless a candidate beats it paired over
        users by ``z`` standard errors, and chosen when there is too little evidence
        (fewer than ``min_users`` validation users on pseudo-cold items).
    z : float
        Standard errors of the per-user recall difference a challenger needs over
        ``default``; it must also win in every fold. The per-user error ignores which items
        happened to be held out, so the fold check guards against a lucky item sample;
        with ~17 candidates a plain "best mean" picks noise on content without signal.
    min_gain : float
        A blend must beat the best plain ridge / kNN candidate that qualified by this
        much (relative), or the plain one is kept.
    """
    content, item_vectors = check_pair(content, item_vectors)
    u = np.asarray(user_vectors, np.float32)
    train, valid = sp.csr_matrix(train), sp.csr_matrix(valid)
    if train.shape != (len(u), len(content)) or valid.shape != train.shape:
        raise InputError(f"train {train.shape} and valid {valid.shape} must be (n_users={len(u)}, n_items={len(content)})")
    if not 0 < holdout_frac < 1 or n_folds < 1 or n_folds * holdout_frac > 1:
        raise InputError(f"need 0 < holdout_frac < 1 and n_folds * holdout_frac <= 1, got {holdout_frac} x {n_folds}")
    cands = list(candidates or default_candidates())
    if default not in cands:
        cands.insert(0, default)
    metric = f"recall@{k}"
    counts = np.asarray((train > 0).sum(axis=0)).ravel()
    eligible = np.flatnonzero((np.linalg.norm(content, axis=1) > 0) & (counts >= max(min_count, 1)))
    perm = np.random.default_rng(seed).permutation(eligible)
    size = min(int(round(holdout_frac * len(eligible))), max_items)
    base = {"seed": seed, "holdout_frac": holdout_frac, "n_folds": n_folds, "metric": metric}
    if size < 1 or len(eligible) - size < 2:
        return MapperSelection(default.name, dict(default.params), {}, reason=f"only {len(eligible)} eligible warm items; "
                               f"{default.label} by default", **base)

    per_user: dict[str, list[np.ndarray]] = {c.label: [] for c in cands}
    n_cold = 0
    kmax = max([int(c.params.get("k", 1)) for c in cands] + [1])
    for f in range(n_folds):
        cold = np.sort(perm[f * size:(f + 1) * size])
        fit = np.setdiff1d(eligible, cold)
        ridge = RidgeMap().fit(content[fit], item_vectors[fit]).predict(content[cold])
        idx, sims = knn_neighbours(content[cold], content[fit], kmax)
        preds: dict[str, np.ndarray] = {}
        for c in cands:
            if c.name == "ridge":
                preds[c.label] = ridge
            elif c.name in ("knn", "blend"):
                knn = knn_average(item_vectors[fit], idx, sims, int(c.params.get("k", 20)))
                a = float(c.params.get("alpha", 0.0))
                preds[c.label] = (a * ridge + (1 - a) * knn).astype(np.float32)
            else:  # e.g. mlp: fitted the slow, general way
                preds[c.label] = make_mapper(c.name, **c.params).fit(content[fit], item_vectors[fit]).predict(content[cold])
        fold = _per_user_recall(u, preds, train, valid, cold, k)
        for label, r in fold.items():
            per_user[label].append(r)
        n_cold += len(cold)
        log.info("mapper selection fold %d/%d: %d pseudo-cold items, %d users; %s", f + 1, n_folds, len(cold),
                 len(fold[default.label]), {lb: round(float(r.mean()), 4) for lb, r in fold.items() if len(r)})
    rec = {lb: np.concatenate(r) for lb, r in per_user.items()}
    n_users = len(rec[default.label])
    base.update(n_pseudo_cold=n_cold, n_users=n_users)
    if n_users < max(min_users, 2):
        return MapperSelection(default.name, dict(default.params), {}, reason=f"only {n_users} validation users on "
                               f"pseudo-cold items (< {min_users}); {default.label} by default", **base)
    ref = rec[default.label]
    scores = {}
    for lb, r in rec.items():
        d = r - ref
        worst = min(float((a - b).mean()) if len(a) else 0.0 for a, b in zip(per_user[lb], per_user[default.label]))
        scores[lb] = {metric: float(r.mean()), "gain": float(d.mean()), "gain_se": float(d.std(ddof=1) / np.sqrt(len(d))),
                      "worst_fold_gain": worst}

    def rank(c: Candidate) -> tuple[float, int]:
        return scores[c.label][metric], -cands.index(c)

    def qualifies(c: Candidate) -> bool:
        sc = scores[c.label]
        return c == default or (sc["gain"] > z * sc["gain_se"] and sc["worst_fold_gain"] > 0)

    qualified = [c for c in cands if qualifies(c)]
    best = max(qualified, key=rank)
    plain = [c for c in qualified if c.name in ("ridge", "knn")]
    if best.name == "blend" and plain and scores[best.label][metric] < scores[max(plain, key=rank).label][metric] * (1 + min_gain):
        best = max(plain, key=rank)
    if best == default:
        reason = (f"no candidate beats {default.label} (validation {metric} {scores[default.label][metric]:.4f}) by "
                  f"{z:g} standard errors and in every fold")
    else:
        sc = scores[best.label]
        reason = (f"validation {metric} {sc[metric]:.4f} vs {default.label} {scores[default.label][metric]:.4f} "
                  f"(gain {sc['gain']:+.4f} +- {sc['gain_se']:.4f})")
    reason += f"; {len(cands)} candidates, {n_cold} pseudo-cold items, {n_users} user-folds, {n_folds} folds"
    log.info("cold-start mapper: %s (%s)", best.label, reason)
    return MapperSelection(best.name, dict(best.params), scores, reason=reason, **base)


def select_mapper_on_dataset(ds: Dataset, content: np.ndarray, user_vectors: np.ndarray, item_vectors: np.ndarray,
                             **kwargs: Any) -> MapperSelection:
    """:func:`select_mapper` on ``ds``'s ``train`` and ``valid`` splits; ``test`` and ``test_cold`` are never read.

    ``user_vectors`` / ``item_vectors`` must come from a model fitted on ``train`` only.
    """
    if ds.split("valid").height == 0:
        d = kwargs.get("default", DEFAULT_MAPPER)
        return MapperSelection(d.name, dict(d.params), {}, metric=f"recall@{kwargs.get('k', 20)}", seed=int(kwargs.get("seed", 0)),
                               reason=f"the dataset has no validation split; {d.label} by default")
    return select_mapper(content, user_vectors, item_vectors, ds.matrix("train"), ds.matrix("valid"), **kwargs)

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
2. ``n_folds`` disjoint, seeded folds of ``holdout_frac`` of the eligible items (at most
   ``max_items`` each) are held out as *pseudo-cold*: their CF vectors are hidden from
   the mapper fit (which uses the other eligible items only).
3. Each candidate maps the pseudo-cold items' content into the CF space.
4. Score: Recall@``k`` (default 20) ranking only the pseudo-cold items of the fold, for
   every user with a ``valid`` interaction on one of them; relevant = those ``valid``
   interactions; the user's ``train`` items are excluded; user vectors are the CF user
   vectors of the model fitted on ``train``. Folds are pooled (weighted by users).
5. The best candidate wins; ties go to the earlier (simpler) one in the grid order
   ridge, kNN (small ``k`` first), blend, and a blend must beat the best plain ridge or
   kNN by ``min_gain`` (1% relative) or the plain one is kept.

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


def knn_neighbours(query: np.ndarray, base: np.ndarray, k: int, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most cosine-similar ``base`` rows of each ``query`` row, most similar first.

    Chunked over queries so memory stays at ``chunk * len(base)`` similarities.

    Returns
    -------
    idx : int64 (n_query, k'), sims : float32 (n_query, k') with ``k' = min(k, len(base))``
    """
    q, b = _unit(np.asarray(query, np.float32)), _unit(np.asarray(base, np.float32))
    k = min(int(k), len(b))
    idx = np.empty((len(q), k), np.int64)
    sims = np.empty((len(q), k), np.float32)
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


def default_candidates(knn_ks: Sequence[int] = (5, 10, 20, 50), alphas: Sequence[float] = (0.25, 0.5, 0.75)) -> list[Candidate]:
    """ridge, kNN for each ``k``, blend for each ``alpha`` x ``k`` (in tie-break order)."""
    return ([Candidate("ridge")] + [Candidate("knn", {"k": int(k)}) for k in knn_ks]
            + [Candidate("blend", {"alpha": float(a), "k": int(k)}) for a in alphas for k in knn_ks])


@dataclass
class MapperSelection:
    """The chosen mapper and the validation scores of every candidate.

    ``scores[label]`` holds ``recall@k`` / ``ndcg@k`` pooled over the folds; ``reason`` says
    why the choice was made (best on validation, or the fallback and why).
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


def _fold_scores(u: np.ndarray, preds: dict[str, np.ndarray], train: sp.csr_matrix, valid: sp.csr_matrix,
                 cold: np.ndarray, k: int) -> tuple[dict[str, dict[str, float]], int]:
    """Recall/NDCG@k of each candidate's vectors for ``cold`` items, ranked among ``cold`` only."""
    from recsys.evaluation import evaluate  # evaluation imports the models package; keep this module light
    from recsys.models.fixed_vectors import FixedVectors

    tr, va = sp.csr_matrix(train[:, cold]), sp.csr_matrix(valid[:, cold])
    users = np.flatnonzero(np.diff(va.indptr) > 0)
    out = {}
    for label, v in preds.items():
        r = evaluate(FixedVectors.from_vectors(u, v, tr), tr, va, ks=(k,), users=users, show_progress=False)
        out[label] = {f"recall@{k}": r[f"recall@{k}"], f"ndcg@{k}": r[f"ndcg@{k}"]}
    return out, int(len(users))


def select_mapper(
    content: np.ndarray,
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    train: sp.spmatrix,
    valid: sp.spmatrix,
    candidates: Sequence[Candidate] | None = None,
    holdout_frac: float = 0.1,
    n_folds: int = 3,
    max_items: int = 5000,
    min_count: int = 5,
    k: int = 20,
    min_users: int = 20,
    fallback: str = "ridge",
    min_gain: float = 0.01,
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
    min_gain : float
        A blend must beat the best plain ridge / kNN candidate by this much (relative) to
        be chosen: smaller validation differences are noise (winner's curse over a grid).
    min_users : int
        Fewer validation users on pseudo-cold items than this over all folds means the
        comparison is noise: ``fallback`` is chosen and the reason recorded.
    """
    content, item_vectors = check_pair(content, item_vectors)
    u = np.asarray(user_vectors, np.float32)
    train, valid = sp.csr_matrix(train), sp.csr_matrix(valid)
    if train.shape != (len(u), len(content)) or valid.shape != train.shape:
        raise InputError(f"train {train.shape} and valid {valid.shape} must be (n_users={len(u)}, n_items={len(content)})")
    if not 0 < holdout_frac < 1 or n_folds < 1 or n_folds * holdout_frac > 1:
        raise InputError(f"need 0 < holdout_frac < 1 and n_folds * holdout_frac <= 1, got {holdout_frac} x {n_folds}")
    cands = list(candidates or default_candidates())
    metric = f"recall@{k}"
    counts = np.asarray((train > 0).sum(axis=0)).ravel()
    eligible = np.flatnonzero((np.linalg.norm(content, axis=1) > 0) & (counts >= max(min_count, 1)))
    rng = np.random.default_rng(seed)
    perm = rng.permutation(eligible)
    size = min(int(round(holdout_frac * len(eligible))), max_items)
    base = {"seed": seed, "holdout_frac": holdout_frac, "n_folds": n_folds, "metric": metric}
    if size < 1 or len(eligible) - size < 2:
        return MapperSelection(fallback, {}, {}, reason=f"only {len(eligible)} eligible warm items; {fallback} by default", **base)

    sums: dict[str, np.ndarray] = {c.label: np.zeros(2) for c in cands}
    n_users = n_cold = 0
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
        scores, nu = _fold_scores(u, preds, train, valid, cold, k)
        for label, s in scores.items():
            sums[label] += nu * np.array([s[metric], s[f"ndcg@{k}"]])
        n_users += nu
        n_cold += len(cold)
        log.info("mapper selection fold %d/%d: %d pseudo-cold items, %d users; %s", f + 1, n_folds, len(cold), nu,
                 {lb: round(s[metric], 4) for lb, s in scores.items()})
    base.update(n_pseudo_cold=n_cold, n_users=n_users)
    if n_users < min_users:
        return MapperSelection(fallback, {}, {}, reason=f"only {n_users} validation users on pseudo-cold items "
                               f"(< {min_users}); {fallback} by default", **base)
    pooled = {lb: {metric: float(s[0] / n_users), f"ndcg@{k}": float(s[1] / n_users)} for lb, s in sums.items()}
    def rank(c: Candidate) -> tuple[float, int]:
        return pooled[c.label][metric], -cands.index(c)

    best = max(cands, key=rank)
    reason = (f"best validation {metric} {pooled[best.label][metric]:.4f} of {len(cands)} candidates on {n_cold} "
              f"pseudo-cold items ({n_users} users, {n_folds} folds)")
    simple = [c for c in cands if c.name in ("ridge", "knn")]
    if best.name == "blend" and simple:
        plain = max(simple, key=rank)
        if pooled[best.label][metric] < pooled[plain.label][metric] * (1 + min_gain):
            reason = (f"{best.label} gains < {min_gain:.0%} over {plain.label} on validation {metric} "
                      f"({pooled[best.label][metric]:.4f} vs {pooled[plain.label][metric]:.4f}); the simpler mapper is kept")
            best = plain
    log.info("cold-start mapper: %s (%s)", best.label, reason)
    return MapperSelection(best.name, dict(best.params), pooled, reason=reason, **base)


def select_mapper_on_dataset(ds: Dataset, content: np.ndarray, user_vectors: np.ndarray, item_vectors: np.ndarray,
                             **kwargs: Any) -> MapperSelection:
    """:func:`select_mapper` on ``ds``'s ``train`` and ``valid`` splits; ``test`` and ``test_cold`` are never read.

    ``user_vectors`` / ``item_vectors`` must come from a model fitted on ``train`` only.
    """
    if ds.split("valid").height == 0:
        fallback = kwargs.get("fallback", "ridge")
        return MapperSelection(fallback, {}, {}, metric=f"recall@{kwargs.get('k', 20)}", seed=int(kwargs.get("seed", 0)),
                               reason=f"the dataset has no validation split; {fallback} by default")
    return select_mapper(content, user_vectors, item_vectors, ds.matrix("train"), ds.matrix("valid"), **kwargs)

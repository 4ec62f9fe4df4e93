"""Cold-start evaluation: are items nobody has interacted with yet retrieved at all?

Why: collaborative filtering gives an item without interactions no usable vector, so it
is never recommended. Content embeddings are supposed to fix that; this module measures
whether they do, on a split where some items are held out *entirely* (all their
interactions in ``test_cold``, none in train/valid/test).

Methods compared (every one is expressed as user vectors x item vectors, so they share
one ranking and metric code path, :func:`recsys.evaluation.evaluate`):

``random``
    Uniform random scores; the floor.
``content_knn``
    User profile = mean content embedding of the user's training items; item score =
    cosine between profile and item content. Needs no CF model.
``content_map``
    CF user vectors; warm items keep their CF vectors, cold items get the ridge map of
    their content into the CF space (:class:`~recsys.embeddings.blend.ContentBlender`
    with ``k = 0``).
``blended``
    As ``content_map`` but warm items with few interactions move towards their mapped
    content vector, ``w = n / (n + k)`` with ``k`` tuned on the validation split. For
    cold items (``n = 0``) it equals ``content_map``; it differs on warm items.
``two_tower`` (optional)
    Vectors from a two-tower model whose item tower ran with the id embedding dropped
    for cold items; passed in by the caller (``extra``), so this module does not
    depend on the two-tower trainer.

Each method is scored three ways: ``cold_only`` (the candidates are the cold items, the
relevant items are each user's cold interactions), ``mixed`` (every item competes,
relevant items are still the cold ones) and ``warm`` (the ordinary warm test split,
blending on vs off: turning blending on must not hurt it).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.data.dataset import Dataset
from recsys.data.in_memory import build_cold_start_dataset
from recsys.embeddings.blend import ContentBlender, ItemVectorTable
from recsys.embeddings.encoders import l2_normalise
from recsys.errors import InputError
from recsys.evaluation import evaluate
from recsys.models.als import ALS
from recsys.models.base import Recommender
from recsys.models.fixed_vectors import FixedVectors, RandomScores
from recsys.models.two_tower import TwoTower  # imports no torch until it trains

log = logging.getLogger(__name__)

# FixedVectors, RandomScores and build_cold_start_dataset have their own modules; they are
# re-exported because the evaluation is where callers meet them.
__all__ = [
    "DEFAULT_KS",
    "ColdStartReport",
    "FixedVectors",
    "RandomScores",
    "als_vectors",
    "build_cold_start_dataset",
    "evaluate_cold_start",
    "evaluate_mappers_cold",
    "two_tower_vectors",
    "user_content_profiles",
]

DEFAULT_KS: tuple[int, ...] = (10, 20, 50)


def user_content_profiles(user_items: sp.spmatrix, content: np.ndarray) -> np.ndarray:
    """Unit-norm mean content vector of each user's items (binary: ratings are ignored).

    Users without history, or whose items all lack content, get zero rows.
    """
    m = sp.csr_matrix(user_items)
    content = np.asarray(content, np.float32)
    if m.shape[1] != len(content):
        raise InputError(f"user_items has {m.shape[1]} item columns but content has {len(content)} rows")
    b = m.copy()
    b.data = np.ones_like(b.data, dtype=np.float32)
    return l2_normalise(np.asarray(b @ content, np.float32))


@dataclass
class ColdStartReport:
    """Metrics per scenario and method, plus the facts needed to read them.

    ``results[scenario][method]`` is an :func:`~recsys.evaluation.evaluate` dict; the
    scenarios are ``cold_only``, ``mixed`` and ``warm``.
    """

    results: dict[str, dict[str, dict[str, float]]]
    k: float
    cold_scale: float
    k_scores: dict[tuple[float, float], float]
    n_cold_items: int
    table_counts: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {"results": self.results, "k": self.k, "cold_scale": self.cold_scale,
                "k_scores": {f"k={k:g},scale={s:g}": v for (k, s), v in self.k_scores.items()},
                "n_cold_items": self.n_cold_items, "table_counts": self.table_counts}


def _cold_items(ds: Dataset) -> np.ndarray:
    cold = np.unique(ds.split("test_cold")["item_idx"].to_numpy()).astype(np.int64)
    if cold.size == 0:
        raise InputError("the dataset has no test_cold interactions; build it with a cold-item fraction > 0")
    seen = ds.interaction_counts("train", "valid", "test")
    if (seen[cold] > 0).any():
        raise InputError("some test_cold items also occur in train/valid/test; they are not cold")
    return cold


def evaluate_cold_start(
    ds: Dataset,
    content: np.ndarray,
    cf_user_vectors: np.ndarray,
    cf_item_vectors: np.ndarray,
    blender: ContentBlender | None = None,
    k_grid: Sequence[float] = (0, 1, 2, 5, 10, 20, 50),
    scale_grid: Sequence[float] = (0.25, 0.5, 1.0),
    extra: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    tune_metric: str = "ndcg@20",
    seed: int = 0,
) -> ColdStartReport:
    """Compare the cold-start methods of the module docstring on ``ds``.

    Parameters
    ----------
    ds : Dataset
        With non-empty ``train``, ``valid``, ``test`` and ``test_cold`` splits.
    content : float32 (n_items, d)
        Content embeddings by ``item_idx`` (zero rows = no content).
    cf_user_vectors, cf_item_vectors : float32 arrays
        A CF model fitted on ``ds.matrix("train")`` (e.g. ALS ``user_factors_`` and
        ``item_factors_``).
    blender : ContentBlender, optional
        Unfitted; default ridge map. ``k`` and ``cold_scale`` are tuned on ``valid`` over
        ``k_grid`` x ``scale_grid`` (``content_map`` stays at k=0, scale 1: the raw map).
    extra : mapping name -> (user_vectors, item_vectors), optional
        More methods, e.g. ``{"two_tower": (U, V)}`` with ``V`` from the item tower run
        with the id dropped for cold items.
    tune_metric : str
        Validation metric maximised when choosing ``k``.
    """
    cold = _cold_items(ds)
    n_items = ds.n_items
    content = np.asarray(content, np.float32)
    if content.shape[0] != n_items or cf_item_vectors.shape[0] != n_items or cf_user_vectors.shape[0] != ds.n_users:
        raise InputError("content, CF item and CF user vectors must have n_items / n_items / n_users rows")
    train = ds.matrix("train")
    valid = ds.matrix("valid")
    seen_test = ds.matrix("train", "valid")
    test_cold = ds.matrix("test_cold")
    test_warm = ds.matrix("test")
    counts = ds.interaction_counts("train")
    warm_items = np.flatnonzero(~np.isin(np.arange(n_items), cold))

    blender = blender or ContentBlender()
    blender.fit(content, cf_item_vectors, counts)
    mapped = blender.map_content(content)

    def table_metric(table: ItemVectorTable) -> float:
        model = FixedVectors.from_vectors(cf_user_vectors, table.vectors, train)
        return evaluate(model, train, valid, ks=ks)[tune_metric]

    k_scores = blender.tune(content, cf_item_vectors, counts, table_metric, k_grid=k_grid, scale_grid=scale_grid)
    k_best = float(blender.k)
    plain = blender.transform(content, cf_item_vectors, counts, k=0.0, mapped=mapped, cold_scale=1.0)
    blended = blender.transform(content, cf_item_vectors, counts, mapped=mapped)

    profiles = user_content_profiles(train, content)
    methods: dict[str, Recommender] = {
        "random": RandomScores(seed).fit(train),
        "content_knn": FixedVectors.from_vectors(profiles, content, train),
        "content_map": FixedVectors.from_vectors(cf_user_vectors, plain.vectors, train),
        "blended": FixedVectors.from_vectors(cf_user_vectors, blended.vectors, train),
    }
    for name, (u, v) in (extra or {}).items():
        methods[name] = FixedVectors.from_vectors(u, v, train)

    cold_users = np.flatnonzero(np.diff(test_cold.indptr) > 0)
    results: dict[str, dict[str, dict[str, float]]] = {"cold_only": {}, "mixed": {}, "warm": {}}
    for name, model in methods.items():
        results["cold_only"][name] = evaluate(model, seen_test, test_cold, ks=ks, users=cold_users, candidates=cold)
        results["mixed"][name] = evaluate(model, seen_test, test_cold, ks=ks, users=cold_users)
    cf_only = FixedVectors.from_vectors(cf_user_vectors, cf_item_vectors, train)
    results["warm"]["blend_off"] = evaluate(cf_only, seen_test, test_warm, ks=ks, candidates=warm_items)
    results["warm"]["blend_on"] = evaluate(methods["blended"], seen_test, test_warm, ks=ks)
    results["warm"]["blend_on_warm_candidates"] = evaluate(methods["blended"], seen_test, test_warm, ks=ks, candidates=warm_items)
    log.info("cold-start: %d cold items, %d cold users, k=%g, cold_scale=%g", len(cold), len(cold_users), k_best, blender.cold_scale)
    return ColdStartReport(results, k_best, float(blender.cold_scale), k_scores, int(len(cold)), blended.counts())


def evaluate_mappers_cold(
    ds: Dataset,
    content: np.ndarray,
    cf_user_vectors: np.ndarray,
    cf_item_vectors: np.ndarray,
    mappers: Mapping[str, Any],
    min_count: int = 5,
    ks: Sequence[int] = (20,),
) -> dict[str, dict[str, float]]:
    """Cold-only metrics on ``test_cold`` of each content -> CF mapper, plus ``content_knn`` (profile) and ``random``.

    For the final report only (it reads ``test_cold``): choose the mapper with
    :func:`recsys.embeddings.mappers.select_mapper`, which reads ``valid`` only. Each mapper
    is fitted on the warm items with content and ``>= min_count`` train interactions and
    gives the cold items' vectors; users are ranked over the cold items only, with their
    train and valid items excluded (the protocol of :func:`evaluate_cold_start`).

    Parameters
    ----------
    mappers : mapping name -> mapper name or unfitted mapper object
        e.g. ``{"ridge": "ridge", "knn": KnnMap(20), "chosen": selection.make()}``.
    """
    cold = _cold_items(ds)
    train, seen = ds.matrix("train"), ds.matrix("train", "valid")
    test_cold = ds.matrix("test_cold")
    counts = ds.interaction_counts("train")
    users = np.flatnonzero(np.diff(test_cold.indptr) > 0)
    out: dict[str, dict[str, float]] = {}
    for name, mapper in mappers.items():
        blender = ContentBlender(k=0.0, mapper=mapper, min_count=min_count).fit(content, cf_item_vectors, counts)
        table = blender.transform(content, cf_item_vectors, counts)
        model = FixedVectors.from_vectors(cf_user_vectors, table.vectors, train)
        out[name] = evaluate(model, seen, test_cold, ks=ks, users=users, candidates=cold, show_progress=False)
    profiles = FixedVectors.from_vectors(user_content_profiles(train, content), content, train)
    out["content_knn"] = evaluate(profiles, seen, test_cold, ks=ks, users=users, candidates=cold, show_progress=False)
    out["random"] = evaluate(RandomScores(0).fit(train), seen, test_cold, ks=ks, users=users, candidates=cold, show_progress=False)
    return out


def als_vectors(train: sp.spmatrix, factors: int = 64, regularization: float = 10.0, iterations: int = 15,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """User and item vectors of implicit ALS fitted on ``train`` (the CF space to blend into)."""
    model = ALS(factors=factors, regularization=regularization, iterations=iterations, random_state=seed, device="cpu")
    model.fit(train)
    return model.user_factors_, model.item_factors_


def two_tower_vectors(ds: Dataset, content: np.ndarray, **params: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Two-tower vectors with id dropout; items without training interactions get the
    item tower's content-only vector (id embedding dropped). ``None`` if the model is
    unavailable, so the cold-start table is still produced without it.
    """
    if importlib.util.find_spec("torch") is None:  # torch is what TwoTower trains with
        log.warning("two-tower skipped: torch is not installed")
        return None
    params = {"item_id_dropout": 0.5, "epochs": 10, "device": "cpu", **params}
    model = TwoTower(**params).fit(ds.matrix("train"), pairs=ds.split("train"), item_features=np.asarray(content, np.float32))
    items = np.array(model.item_factors_, np.float32, copy=True)
    cold = ds.interaction_counts("train") == 0
    items[cold] = model.item_vectors(drop_ids=True)[cold]
    return np.asarray(model.user_factors_, np.float32), items

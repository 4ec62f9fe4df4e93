"""item2vec's selection step of the training protocol (:mod:`recsys.training`).

Declared as the ``item2vec`` family's ``protocol`` in :mod:`recsys.models.registry`, as
the two-tower declares :mod:`recsys.training_two_tower`. Why a step of its own: item2vec
trains on each user's items in time order, and :meth:`Recommender.fit` gets a matrix,
which has none; this step builds the sequences from the dataset's split tables
(:meth:`recsys.models.item2vec.ItemSequences.from_frame`) and passes them to every fit.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from recsys.callbacks import Callbacks
from recsys.data.dataset import Dataset
from recsys.errors import ConfigError
from recsys.evaluation import evaluate
from recsys.models.item2vec import SCORING, Item2Vec, Item2VecParams, ItemSequences
from recsys.models.registry import ModelFamily
from recsys.training import ProtocolResult
from recsys.tuning import Trial, sample_grid

log = logging.getLogger(__name__)

__all__ = ["select_on_validation"]


def _selection_k(metric: str) -> tuple[int, ...]:
    try:
        k = int(metric.split("@", 1)[1]) if "@" in metric else 10
    except ValueError as e:
        raise ConfigError(f"metric {metric!r} must look like 'ndcg@10'") from e
    return tuple(sorted({k, 10}))


def select_on_validation(dataset: Dataset, family: ModelFamily, params: Mapping[str, Any], *,
                         space: Mapping[str, Any], tuning: Mapping[str, Any], callbacks: Callbacks,
                         show_progress: bool, ks: tuple[int, ...], valid_users: np.ndarray | None = None,
                         test_users: np.ndarray | None = None) -> ProtocolResult:
    """The protocol of :mod:`recsys.training` for item2vec, with time-ordered sequences.

    Every trial of the grid ``space`` (a seeded subset of ``max_trials``) fits on
    ``train`` with the train split's sequences and is scored on ``valid``; the best is
    refitted on ``train + valid`` (sequences of both splits, merged in time order) and
    evaluated once on ``test``. Trials that differ only in :data:`SCORING` parameters
    share one training (:meth:`Item2Vec.with_scoring`). Without a valid split the fixed parameters are fitted on
    train and tested, with a warning. ``valid_users`` / ``test_users``: the protocol's
    user samples (``None``: every user). The space is a grid (lists are choices); ranges
    (``{low, high}``) are refused with the fix. The family does not refit on every interaction
    (``refit_on_all=False``): the published model is this one.
    """
    settings = dict(tuning)
    metric = str(settings.get("metric", "ndcg@10"))
    n = dataset.n_users
    train = dataset.matrix("train")
    test = dataset.matrix("test")
    has_valid = "valid" in dataset.splits and dataset.splits["valid"].height > 0
    if not has_valid:
        if space:
            raise ConfigError("tuning needs a non-empty valid split; rebuild the dataset with valid_frac > 0")
        log.warning("no valid split: fitting item2vec with fixed params, no model selection")
        model = family.make(params).fit(train, sequences=ItemSequences.from_frame(dataset.split("train"), n))
        m_test = evaluate(model, train, test, ks=ks, users=test_users, show_progress=show_progress)
        callbacks.tested(m_test)
        return ProtocolResult(model, dict(params), {}, m_test, seen=train)
    ranges = sorted(k for k, v in space.items() if isinstance(v, Mapping))
    if ranges:
        raise ConfigError(f"[models.item2vec.tune]: {ranges} are ranges; item2vec searches a grid, "
                          "give each a list of values (e.g. window = [3, 5, 10])")
    valid = dataset.matrix("valid")
    seq_train = ItemSequences.from_frame(dataset.split("train"), n)
    configs = sample_grid(space, settings.get("max_trials"), int(settings.get("seed") or 0))
    for cfg in configs:  # bad values (window = 0) fail before the first fit
        Item2VecParams(**{**params, **cfg})
    sel_ks = _selection_k(metric)
    trials: list[Any] = []
    trained: dict[str, Item2Vec] = {}  # one training per combination of the non-scoring parameters
    for i, cfg in enumerate(configs):
        p = {**params, **cfg}
        callbacks.trial_started(i, p)
        t0 = time.perf_counter()
        key = json.dumps({k: v for k, v in Item2VecParams(**p).__dict__.items() if k not in SCORING}, sort_keys=True)
        if key in trained:
            model = trained[key].with_scoring(**{k: v for k, v in Item2VecParams(**p).__dict__.items() if k in SCORING})
        else:
            model = trained[key] = family.make(p).fit(train, sequences=seq_train)
        metrics = evaluate(model, train, valid, ks=sel_ks, users=valid_users, show_progress=False)
        if metric not in metrics:
            raise ConfigError(f"metric {metric!r} is not computed; choose one of {sorted(metrics)}")
        callbacks.evaluated(0, metrics)
        trial = Trial(i, p, float(metrics[metric]), None, metrics, [], time.perf_counter() - t0)
        callbacks.trial_finished(trial)
        trials.append(trial)
        log.info("item2vec trial %d/%d %s: %s=%.4f (%.1fs)", i + 1, len(configs), cfg, metric, trial.score, trial.fit_seconds)
    best = max(trials, key=lambda t: (t.score, -t.number))
    callbacks.selected(trials, best, metric)
    refit = bool(settings.get("refit_on_valid", True))
    if refit:
        both = pl.concat([dataset.split("train"), dataset.split("valid")], how="diagonal_relaxed")
        seen = dataset.matrix("train", "valid")
        model = family.make(best.params).fit(seen, sequences=ItemSequences.from_frame(both, n))
    else:
        seen = train
        model = family.make(best.params).fit(train, sequences=seq_train)
    m_test = evaluate(model, seen, test, ks=ks, users=test_users, show_progress=show_progress)
    callbacks.tested(m_test)
    return ProtocolResult(model, dict(best.params), dict(best.metrics), m_test, trials, [], seen)

"""The one training protocol: fit -> select on validation -> test -> optional refit on all.

Why one: the protocol was written twice (MF/baselines and the two-tower) and the refit on
all interactions three times, so a fix in one place missed the others. Every caller
(``recsys train``, ``recsys run``, the benchmarks) now goes through
:func:`train_and_evaluate` and :func:`refit_on_all`; what differs between families is
declared in :mod:`recsys.models.registry` (a family may bring its own selection step, as
the two-tower does for its epochs), and everything that is not training (MLflow, progress,
budgets) plugs in through :class:`Callbacks`.

The protocol, for every family:

1. fit on ``train`` and score on ``valid`` only (the best iteration or epoch is kept; with
   a search space, every trial is scored the same way);
2. refit the selected configuration on ``train + valid`` (for iterative models for the
   selected number of iterations) and evaluate it **once** on ``test``;
3. optionally (``recsys run``), refit the same configuration on every interaction
   (train, valid, test and cold items) for the published model.

Without a validation split the fixed parameters are fitted on ``train`` and evaluated on
``test`` with a warning (no selection is possible).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import scipy.sparse as sp

from recsys.data.dataset import Dataset
from recsys.errors import ConfigError, InputError
from recsys import autotune, tuning as tuning_mod
from recsys.callbacks import Callbacks
from recsys.evaluation import evaluate
from recsys.models import registry
from recsys.models.base import Recommender

log = logging.getLogger(__name__)

#: cut-offs of the final test metrics
KS = (10, 20, 50, 100)
#: the splits that make up "every interaction" for the published refit
ALL_SPLITS = ("train", "valid", "test", "test_cold")


@dataclass
class ProtocolResult:
    """What :func:`train_and_evaluate` returns.

    ``model`` is the selected configuration refitted on ``train + valid`` (or ``train``),
    ``params`` its exact parameters (protocol parameters included, so that
    :func:`refit_on_all` reproduces it), ``seen`` the matrix it was fitted on (test
    evaluation excludes those items).
    """

    model: Recommender
    params: dict[str, Any]
    metrics_valid: dict[str, float]
    metrics_test: dict[str, float]
    trials: list[Any] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    seen: sp.csr_matrix | None = None
    summary: dict[str, float] = field(default_factory=dict)  # family-specific figures to track (refit_epochs)


def _nonempty(dataset: Dataset, split: str) -> bool:
    return split in dataset.splits and dataset.splits[split].height > 0


def train_and_evaluate(
    dataset: Dataset,
    family: str,
    params: Mapping[str, Any] | None = None,
    *,
    space: Mapping[str, Any] | None = None,
    tuning: Mapping[str, Any] | None = None,
    callbacks: Callbacks | None = None,
    show_progress: bool = True,
    ks: Sequence[int] = KS,
) -> ProtocolResult:
    """Select ``family`` on validation, refit it, evaluate it once on test.

    Parameters
    ----------
    dataset : Dataset
        With ``train``, ``valid`` (may be empty) and ``test`` splits.
    family : str
        A registered model family (:func:`recsys.models.registry.family_names`).
    params : mapping, optional
        Fixed parameters (validated against the family's schema first).
    space : mapping, optional
        A search space (lists are choices); ``None`` or ``{}`` fits ``params`` alone.
    tuning : mapping, optional
        Selection settings: ``metric``, ``eval_every``, ``max_trials``, ``seed``,
        ``patience``, ``refit_on_valid`` (see :func:`recsys.tuning.select_and_fit`).
    callbacks : Callbacks, optional
        Tracking, progress, budgets.

    Raises
    ------
    ConfigError
        Unknown family or parameters, or a search space without a validation split.
    InputError
        An empty test split.
    """
    fam = registry.get_family(family)
    params = fam.validate_params(dict(params or {}))
    cb = callbacks or Callbacks()
    if not _nonempty(dataset, "test"):
        raise InputError("the dataset has an empty test split; nothing to evaluate the model on")
    searching = bool(space) or (tuning or {}).get("budget_minutes") is not None
    if searching and not _nonempty(dataset, "valid"):
        raise ConfigError("tuning needs a non-empty valid split; rebuild the dataset with valid_frac > 0")
    for cfg in autotune.space_examples(space or {}, fam, f"[models.{family}.tune]"):  # a typo fails before any fit
        fam.validate_params({**params, **cfg}, f"[models.{family}.tune]")
    if fam.protocol is not None:
        hook = registry.import_target(fam.protocol)
        return hook(dataset, fam, params, space=dict(space or {}), tuning=dict(tuning or {}), callbacks=cb,
                    show_progress=show_progress, ks=tuple(ks))
    train, test = dataset.matrix("train"), dataset.matrix("test")
    if not _nonempty(dataset, "valid"):
        log.warning("no valid split: fitting %s with fixed params, no model selection", family)
        model = fam.make(params).fit(train)
        m_test = evaluate(model, train, test, ks=ks)
        cb.tested(m_test)
        return ProtocolResult(model, dict(params), {}, m_test, seen=train)
    settings = dict(tuning or {})
    res = tuning_mod.select_and_fit(family, train, dataset.matrix("valid"), test, dict(space or {}), base_params=params,
                                    ks=ks, callbacks=cb, show_progress=show_progress, **settings)
    seen = dataset.matrix("train", "valid") if settings.get("refit_on_valid", True) else train
    cb.tested(res.metrics_test)
    return ProtocolResult(res.model, res.params, res.metrics_valid, res.metrics_test, res.trials,
                          list(res.best.history), seen)


def all_interactions(dataset: Dataset) -> sp.csr_matrix:
    """Every interaction of the dataset (train, valid, test and cold items) as one CSR.

    The published model is refitted on this: tonight's index should know yesterday's
    events, including those held out for evaluation.
    """
    return dataset.matrix(*[s for s in ALL_SPLITS if _nonempty(dataset, s)])


def refit_on_all(dataset: Dataset, family: str, params: Mapping[str, Any]) -> Recommender | None:
    """The selected configuration refitted on every interaction; ``None`` if the family does not refit.

    ``params`` are :attr:`ProtocolResult.params` (for iterative models ``iterations`` is
    already the selected iteration). Families declared with ``refit_on_all=False`` (the
    two-tower, whose epochs are tied to the data it was selected on) return ``None``: the
    caller publishes the model as trained.
    """
    fam = registry.get_family(family)
    if not fam.refit_on_all:
        return None
    matrix = all_interactions(dataset)
    log.info("refitting %s on all %d interactions with the selected hyperparameters", family, matrix.nnz)
    return fam.make(params).fit(matrix)

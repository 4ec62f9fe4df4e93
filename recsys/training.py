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

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.data.dataset import Dataset
from recsys.errors import ConfigError, InputError
from recsys import autotune, tuning as tuning_mod
from recsys.callbacks import Callbacks
from recsys.evaluation import evaluate, sample_users
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
    model_on_train: Recommender | None = None  # the selected model fitted on train only (fusion weights), if kept


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
    valid_users: int | np.ndarray = 0,
    test_users: int | np.ndarray = 0,
    sample_seed: int = 0,
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
    valid_users, test_users : int or int array
        Users the validation metrics (every trial, iteration and epoch: selection and
        curves) and the test metrics are computed on: a sample size (``0`` = every user),
        drawn once by :func:`recsys.evaluation.sample_users` with ``sample_seed`` so that
        every trial and model sees the same users, or explicit user indices. The metrics
        carry their standard errors (``"ndcg@10_se"``) and ``n_users``.
    sample_seed : int
        Seed of the user samples (recorded in :attr:`ProtocolResult.summary`).

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
    has_valid = _nonempty(dataset, "valid")
    valid = dataset.matrix("valid") if has_valid else None
    test = dataset.matrix("test")
    v_users = evaluation_users(valid, valid_users, sample_seed, "valid") if valid is not None else None
    t_users = evaluation_users(test, test_users, sample_seed, "test")
    sampled = {f"{name}_users_sampled": float(len(u)) for name, u in (("valid", v_users), ("test", t_users)) if u is not None}
    if sampled:
        sampled["eval_sample_seed"] = float(sample_seed)
    if fam.protocol is not None:
        hook = registry.import_target(fam.protocol)
        out = hook(dataset, fam, params, space=dict(space or {}), tuning=dict(tuning or {}), callbacks=cb,
                   show_progress=show_progress, ks=tuple(ks), **_hook_users(hook, valid_users=v_users, test_users=t_users))
        out.summary.update(sampled)
        return out
    train = dataset.matrix("train")
    if valid is None:
        log.warning("no valid split: fitting %s with fixed params, no model selection", family)
        model = fam.make(params).fit(train)
        m_test = evaluate(model, train, test, ks=ks, users=t_users)
        cb.tested(m_test)
        return ProtocolResult(model, dict(params), {}, m_test, seen=train, summary=sampled)
    settings = dict(tuning or {})
    res = tuning_mod.select_and_fit(family, train, valid, test, dict(space or {}), base_params=params,
                                    ks=ks, callbacks=cb, show_progress=show_progress, valid_users=v_users,
                                    test_users=t_users, **settings)
    seen = dataset.matrix("train", "valid") if settings.get("refit_on_valid", True) else train
    cb.tested(res.metrics_test)
    return ProtocolResult(res.model, res.params, res.metrics_valid, res.metrics_test, res.trials,
                          list(res.best.history), seen, summary=sampled, model_on_train=res.model_on_train)


def evaluation_users(matrix: sp.csr_matrix, users: int | np.ndarray | None, seed: int,
                     split: str = "valid") -> np.ndarray | None:
    """The users a split's metrics are computed on; ``None`` means every user.

    ``users`` is a sample size (``0``, or at least the number of users with an interaction
    in the split, means every user: the full evaluation, not a reordered copy of it) or an
    explicit array of user indices, used as given.
    """
    if users is None:
        return None
    if isinstance(users, (int, np.integer)) and not isinstance(users, bool):
        sample = sample_users(matrix, int(users), seed)  # refuses a negative size
        n_eligible = int((np.diff(matrix.indptr) > 0).sum())
        if len(sample) == n_eligible:  # 0, or a size beyond the split: every user
            return None
        log.info("%s metrics on a fixed sample of %d of %d users (seed %d)", split, len(sample), n_eligible, seed)
        return sample
    arr = np.asarray(users)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise InputError(f"{split}_users must be a sample size (int >= 0) or a 1-D array of user indices, got {users!r}")
    return arr.astype(np.int64)


def _hook_users(hook: Callable[..., Any], **users: np.ndarray | None) -> dict[str, np.ndarray]:
    """The user samples a family's own protocol hook accepts (a hook written before them still runs)."""
    params = inspect.signature(hook).parameters
    open_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    out = {}
    for name, arr in users.items():
        if arr is None:
            continue
        if open_kw or name in params:
            out[name] = arr
        else:
            log.warning("the protocol hook %s takes no %s; its metrics are computed on every user",
                        getattr(hook, "__qualname__", hook), name)
    return out


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

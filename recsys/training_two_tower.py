"""The two-tower's selection step of the training protocol (:mod:`recsys.training`).

Declared as the ``two-tower`` family's ``protocol`` in :mod:`recsys.models.registry`.
Same protocol as every family, with the two-tower's specifics:

* the best epoch is chosen by early stopping on validation ``metric`` (with one member
  when ``ensemble`` > 1 and a refit follows: the others would be thrown away);
* with ``refit_on_valid`` (default) the model (all ``ensemble`` members) is refitted on
  train + valid for as many optimizer steps as the chosen epoch took
  (:func:`recsys.models.two_tower_config.refit_epochs`) and evaluated once on test;
* ``max_minutes`` budgets the whole step: the selection gets ``1 / (1 + ensemble)`` of it,
  the refit what is left; the stop reason is tracked as ``stop_budget``, ``stop_patience``
  or ``stop_epochs`` = 1 (with ``train_minutes``);
* protocol parameters (not the model's): ``item_features`` = "auto" (multi-hot of the
  items table's ``genres`` column when present), "none", "genres", or a path to a
  ``.npy``/``.npz`` float array of shape (n_items, F); ``refit_on_valid`` (bool).

Under ``torchrun`` every rank runs this in lock-step; only rank 0 evaluates on test.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.callbacks import Callbacks
from recsys.data.dataset import Dataset
from recsys.errors import ConfigError, InputError
from recsys.evaluation import evaluate
from recsys.models.registry import ModelFamily
from recsys.models.two_tower import TwoTower
from recsys.models.two_tower_config import pairs_per_epoch, refit_epochs
from recsys.training import ProtocolResult

log = logging.getLogger(__name__)


def multi_hot(labels: list[str | None], sep: str = "|", ignore: tuple[str, ...] = ("(no genres listed)",)) -> np.ndarray:
    """``sep``-separated labels per item (e.g. MovieLens genres) -> float32 multi-hot matrix.

    Columns are the sorted distinct labels; missing or ignored labels give an all-zero row.
    """
    split = [[t for t in (s or "").split(sep) if t and t not in ignore] for s in labels]
    vocab = sorted({t for row in split for t in row})
    col = {t: j for j, t in enumerate(vocab)}
    out = np.zeros((len(labels), max(len(vocab), 1)), np.float32)
    for i, row in enumerate(split):
        out[i, [col[t] for t in row]] = 1.0
    return out


def item_features_for(dataset: Dataset, spec: str | None) -> np.ndarray | None:
    """Item feature matrix (n_items, F) for ``spec`` ("auto", "none", "genres", or a file path)."""
    if spec in (None, "none", ""):
        return None
    if spec in ("auto", "genres"):
        items = dataset.items
        if items.height == 0 or "genres" not in items.columns:
            if spec == "genres":
                raise ConfigError("item_features='genres' but the dataset's items table has no genres column")
            return None
        by_idx = dict(zip(items["item_idx"].to_list(), items["genres"].to_list(), strict=True))
        return multi_hot([by_idx.get(i) for i in range(dataset.n_items)])
    p = Path(str(spec))
    if not p.exists():
        raise ConfigError(f"item_features file {p} does not exist")
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            key = next((k for k in ("item_vectors", "embeddings", "vectors") if k in z.files), z.files[0])
            arr = z[key]
    else:
        arr = np.load(p, allow_pickle=False)
    if arr.ndim != 2 or arr.shape[0] != dataset.n_items:
        raise InputError(f"{p}: expected an (n_items={dataset.n_items}, F) array, got {arr.shape}")
    return np.asarray(arr, np.float32)


def _validation(train: Any, valid: Any, k: int, users: np.ndarray | None = None) -> Callable[[TwoTower], Mapping[str, float]]:
    return lambda model: evaluate(model, train, valid, ks=(k,), users=users)


def _is_main() -> bool:
    from recsys.models.distributed import DistInfo  # noqa: PLC0415 - torch.distributed only when training

    return DistInfo.current().is_main


def select_on_validation(dataset: Dataset, family: ModelFamily, params: Mapping[str, Any], *, space: Mapping[str, Any],
                         tuning: Mapping[str, Any], callbacks: Callbacks, show_progress: bool,
                         ks: tuple[int, ...], valid_users: np.ndarray | None = None,
                         test_users: np.ndarray | None = None) -> ProtocolResult:
    """Early-stop on valid, refit on train + valid, evaluate once on test (see the module docstring).

    ``valid_users`` / ``test_users``: the users the epoch curves and the test metrics are
    computed on (default every user; :func:`recsys.training.train_and_evaluate` passes its samples).
    """
    if space:
        raise ConfigError("the two-tower has no search-space tuning; remove its [tune] table and set its "
                          "parameters directly (epochs are selected on validation)")
    model_params, proto = family.split_params(params)
    feats = item_features_for(dataset, proto["item_features"])
    refit = bool(proto["refit_on_valid"])
    has_valid = "valid" in dataset.splits and dataset.splits["valid"].height > 0
    train, test = dataset.matrix("train"), dataset.matrix("test")
    selection = {**model_params, "ensemble": 1} if has_valid and refit else dict(model_params)
    budget = _RunBudget(model_params, has_valid and refit)
    selection["max_minutes"] = budget.selection_minutes()
    model = TwoTower(**selection)
    m_valid: dict[str, float] = {}
    if has_valid:
        val = _validation(train, dataset.matrix("valid"), int(model.metric.split("@")[-1] or 10), valid_users)
        model.fit(train, pairs=dataset.split("train"), item_features=feats, validation=val, on_epoch=callbacks.evaluated)
        m_valid = {k[len("valid_"):]: v for k, v in model.history_[model.best_epoch_ - 1].items() if k.startswith("valid_")}
        m_valid["best_epoch"] = float(model.best_epoch_)
    else:
        log.warning("no valid split: training two-tower for %d epochs without early stopping", model.epochs)
        model.fit(train, pairs=dataset.split("train"), item_features=feats, on_epoch=callbacks.evaluated)
    history = list(getattr(model, "history_", []))
    seen, summary = train, {}
    reasons = [model.stop_reason_]
    on_train = model if has_valid else None  # selected on valid, fitted on train only (fusion weights)
    if has_valid and refit:
        seen = dataset.matrix("train", "valid")
        model = _refit(model, dataset, feats, int(model_params.get("ensemble", 1)), budget.refit_minutes())
        model.max_minutes = model_params.get("max_minutes")  # the run's budget, not the refit's remainder
        summary["refit_epochs"] = float(model.epochs)
        reasons.append("budget" if model.stop_reason_ == "budget" else reasons[0])
    # why training ended, as metrics MLflow shows: stop_budget / stop_patience / stop_epochs = 1
    summary[f"stop_{'budget' if 'budget' in reasons else reasons[0]}"] = 1.0
    summary["train_minutes"] = budget.elapsed_minutes()
    final = {**model.get_params(), **proto, "max_minutes": model_params.get("max_minutes")}
    if not _is_main():  # a non-main rank of a distributed job: trained in lock-step, not evaluated
        return ProtocolResult(model, final, m_valid, {}, history=history, seen=seen, summary=summary,
                              model_on_train=on_train)
    m_test = evaluate(model, seen, test, ks=ks, users=test_users)
    callbacks.tested(m_test)
    return ProtocolResult(model, final, m_valid, m_test, history=history, seen=seen, summary=summary,
                          model_on_train=on_train)


def _refit(model: TwoTower, dataset: Dataset, feats: np.ndarray | None, ensemble: int,
           max_minutes: float | None) -> TwoTower:
    """Retrain on train + valid (``ensemble`` members) for as many optimizer steps as validation chose."""
    train = dataset.split("train")
    pairs = pl.concat([train, dataset.split("valid")], how="diagonal_relaxed")
    spe = model.samples_per_epoch
    epochs = refit_epochs(model.best_epoch_, pairs_per_epoch(train.height, spe), pairs_per_epoch(pairs.height, spe))
    log.info("refit on train + valid: %d epochs (%d selected on %d pairs, now %d pairs)",
             epochs, model.best_epoch_, train.height, pairs.height)  # fmt: skip
    params = {**model.get_params(), "ensemble": ensemble, "epochs": epochs, "patience": None, "max_minutes": max_minutes}
    return TwoTower(**params).fit(dataset.matrix("train", "valid"), pairs=pairs, item_features=feats)


class _RunBudget:
    """``max_minutes`` covers the whole protocol: selection (one member) and the refit (all members).

    The refit trains ``ensemble`` members for about as many steps as the selected one, so the
    selection gets ``1 / (1 + ensemble)`` of the budget and the refit whatever is left.
    """

    def __init__(self, params: Mapping[str, Any], refit: bool) -> None:
        self.minutes = params.get("max_minutes") or None
        self.parts = 1 + int(params.get("ensemble", 1)) if refit else 1
        self.start = time.monotonic()

    def elapsed_minutes(self) -> float:
        return (time.monotonic() - self.start) / 60.0

    def selection_minutes(self) -> float | None:
        return None if self.minutes is None else self.minutes / self.parts

    def refit_minutes(self) -> float | None:
        return None if self.minutes is None else max(self.minutes - self.elapsed_minutes(), 1e-6)

"""Budgeted hyperparameter search: Optuna TPE with median pruning on the iteration curve.

Why not the grid of :mod:`recsys.tuning` alone: the packaged parameters were tuned on
MovieLens and do not transfer (on a music log ALS with them reached ~0.8x of a searched
ALS). A grid over five parameters is either too coarse or too slow; TPE (Bergstra et al.
2011) proposes each trial from the ones before, and median pruning stops a trial whose
validation curve is already below the median of earlier trials at the same iteration, so
a fixed wall-clock budget buys far more useful trials.

This module holds what the search needs and nothing else (no fitting, no I/O):

* the ``[models.<family>.tune]`` table: :data:`SETTINGS` (``budget_minutes``,
  ``max_trials``, ``seed``, ``method``, ``enabled``, ``pruning``, ``min_train_interactions``)
  and a search space whose
  entries are a fixed scalar, a list of choices or a range ``{low, high, log, step}``
  (:func:`split_tune_table`, :func:`parse_space`, :func:`validate_tune_table`);
* :func:`run_study`: the Optuna study; the caller passes ``run_trial`` (the protocol's
  fit-on-validation of one configuration, :func:`recsys.tuning._run_trial`) and a trial
  reports each validation point through ``report``, which raises :class:`StopTrial` when
  the pruner or the budget says stop;
* :func:`study_figures`: the optimisation history and parameter-importance plots, rebuilt
  from the trials (so the tracking layer needs no live study).

Optuna is imported only inside these functions: importing :mod:`recsys` or validating a
config does not import it.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from recsys.errors import ConfigError

log = logging.getLogger(__name__)

#: keys of a ``tune`` table that configure the search rather than name a parameter
SETTINGS = ("budget_minutes", "max_trials", "seed", "method", "enabled", "pruning", "min_train_interactions")
#: search methods: ``grid`` (every combination, :func:`recsys.tuning.sample_grid`) or ``tpe``
METHODS = ("auto", "grid", "tpe")
#: defaults of a TPE search when the table names neither a budget nor a trial cap
DEFAULT_BUDGET_MINUTES = 10.0
DEFAULT_MAX_TRIALS = 50
_RANGE_KEYS = {"low", "high", "log", "step"}


class StopTrial(Exception):
    """Raised from a trial's ``report`` to end it early; ``state`` is ``pruned`` or ``stopped``.

    ``pruned``: the median pruner judged the curve hopeless. ``stopped``: the budget ran
    out mid-trial; its best point so far is still a valid, evaluated configuration.
    """

    def __init__(self, state: str) -> None:
        super().__init__(state)
        self.state = state


@dataclass(frozen=True)
class Range:
    """A numeric range; ``integer`` ranges suggest ints (``factors``), others floats."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    integer: bool = False

    def distribution(self) -> Any:
        import optuna

        if self.integer:
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log,
                                                        step=int(self.step or 1))
        return optuna.distributions.FloatDistribution(float(self.low), float(self.high), log=self.log,
                                                      step=None if self.step is None else float(self.step))

    def contains(self, v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and self.low <= v <= self.high


@dataclass(frozen=True)
class Choice:
    """A categorical parameter (a list in the tune table)."""

    values: tuple[Any, ...]

    def distribution(self) -> Any:
        import optuna

        return optuna.distributions.CategoricalDistribution(self.values)

    def contains(self, v: Any) -> bool:
        return v in self.values


#: a parsed search space: searched parameters, and parameters fixed for every trial
Space = dict[str, Range | Choice]


def split_tune_table(table: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(settings, space)`` of a ``[models.<family>.tune]`` table.

    >>> split_tune_table({"budget_minutes": 5, "factors": [64, 128]})
    ({'budget_minutes': 5}, {'factors': [64, 128]})
    """
    table = dict(table or {})
    return {k: v for k, v in table.items() if k in SETTINGS}, {k: v for k, v in table.items() if k not in SETTINGS}


def _param_types(family: Any) -> dict[str, Any]:
    if family is None:
        return {}
    return {k: f.annotation for k, f in family.param_schema().model_fields.items()}


def _is_int_type(t: Any) -> bool:
    return t is int or (getattr(t, "__args__", None) is not None and int in t.__args__ and float not in t.__args__)


def parse_space(space: Mapping[str, Any], family: Any = None, where: str = "[tune]") -> tuple[Space, dict[str, Any]]:
    """``(searched, fixed)`` from a space table: lists are choices, ``{low, high}`` tables ranges.

    Parameters
    ----------
    space : mapping
        E.g. ``{"factors": {"low": 32, "high": 512, "log": true}, "weighting": ["log",
        "bm25"], "iterations": 20}``; scalars are fixed for every trial.
    family : ModelFamily, optional
        Its parameter types decide int vs float ranges (``regularization = {low = 1, high
        = 100}`` is still a float range).
    where : str
        Named in errors (``[models.als.tune]``).

    Raises
    ------
    ConfigError
        An empty list, a range without ``low``/``high``, ``low >= high``, a log range
        that is not positive, or an unknown key inside a range table.
    """
    types = _param_types(family)
    searched: Space = {}
    fixed: dict[str, Any] = {}
    for name, v in space.items():
        if isinstance(v, (list, tuple)):
            if not v:
                raise ConfigError(f"{where} {name} = []: a list of choices needs at least one value")
            if len(v) == 1:
                fixed[name] = v[0]
            else:
                searched[name] = Choice(tuple(v))
        elif isinstance(v, Mapping):
            searched[name] = _parse_range(name, v, types.get(name), where)
        else:
            fixed[name] = v
    return searched, fixed


def _parse_range(name: str, v: Mapping[str, Any], annotation: Any, where: str) -> Range:
    unknown = set(v) - _RANGE_KEYS
    if unknown or "low" not in v or "high" not in v:
        raise ConfigError(f"{where} {name} = {dict(v)!r}: a range is {{low = ..., high = ..., log = true|false, "
                          f"step = ...}}" + (f"; unknown keys {sorted(unknown)}" if unknown else ""))
    low, high = v["low"], v["high"]
    for key, x in (("low", low), ("high", high)):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise ConfigError(f"{where} {name}.{key} = {x!r}: must be a finite number")
    if not low < high:
        raise ConfigError(f"{where} {name}: low ({low}) must be below high ({high})")
    log_ = v.get("log", False)
    if not isinstance(log_, bool):
        raise ConfigError(f"{where} {name}.log = {log_!r}: must be true or false")
    if log_ and low <= 0:
        raise ConfigError(f"{where} {name}: a log range needs low > 0, got {low}")
    step = v.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise ConfigError(f"{where} {name}.step = {step!r}: must be a positive number")
    if step is not None and log_:
        raise ConfigError(f"{where} {name}: step and log = true cannot be combined (Optuna refuses it)")
    integer = _is_int_type(annotation) if annotation is not None else (isinstance(low, int) and isinstance(high, int))
    return Range(float(low), float(high), log_, None if step is None else float(step), integer)


def space_examples(space: Mapping[str, Any], family: Any = None, where: str = "[tune]") -> list[dict[str, Any]]:
    """Two configurations spanning a space (lows / first choices, highs / last choices).

    Used to validate a space against the family's parameter schema before any trial: a
    typo or a wrong type fails at once, without expanding a huge grid.
    """
    searched, fixed = parse_space(space, family, where)
    lo, hi = dict(fixed), dict(fixed)
    for name, p in searched.items():
        if isinstance(p, Choice):
            lo[name], hi[name] = p.values[0], p.values[-1]
        else:
            cast = int if p.integer else float
            lo[name], hi[name] = cast(p.low), cast(p.high)
    return [lo] if lo == hi else [lo, hi]


def check_settings(settings: Mapping[str, Any], where: str = "[tune]") -> dict[str, Any]:
    """Validate the search settings of a tune table; return them.

    Raises
    ------
    ConfigError
        ``budget_minutes`` not a positive number, ``max_trials`` not a positive integer,
        an unknown ``method``, a non-integer ``seed``, a negative ``min_train_interactions``
        or a non-boolean ``enabled``/``pruning``.
    """
    out = dict(settings)
    b = out.get("budget_minutes")
    if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b <= 0):
        raise ConfigError(f"{where} budget_minutes = {b!r}: must be a positive number of minutes "
                          "(e.g. budget_minutes = 5); set enabled = false to skip tuning")
    n = out.get("max_trials")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
        raise ConfigError(f"{where} max_trials = {n!r}: must be a positive integer")
    for key in ("seed", "min_train_interactions"):
        v = out.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or (key != "seed" and v < 0)):
            raise ConfigError(f"{where} {key} = {v!r}: must be an integer" + (" >= 0" if key != "seed" else ""))
    m = out.get("method", "auto")
    if m not in METHODS:
        raise ConfigError(f"{where} method = {m!r}: must be one of {list(METHODS)}")
    for key in ("enabled", "pruning"):
        if key in out and not isinstance(out[key], bool):
            raise ConfigError(f"{where} {key} = {out[key]!r}: must be true or false")
    return out


def validate_tune_table(family: Any, table: Mapping[str, Any], base: Mapping[str, Any] | None = None,
                        where: str | None = None) -> None:
    """Check a whole ``[models.<family>.tune]`` table: settings, ranges, parameter names and types."""
    where = where or f"[models.{family.name}.tune]"
    settings, space = split_tune_table(table)
    check_settings(settings, where)
    for cfg in space_examples(space or default_space(family), family, where):
        family.validate_params({**dict(base or {}), **cfg}, where)


def default_space(family: Any) -> dict[str, Any]:
    """The family's declared search space (``ModelFamily.search_space``; ``{}`` if none)."""
    return dict(getattr(family, "search_space", None) or {})


def resolve_method(method: str, space: Mapping[str, Any], budget_minutes: float | None) -> str:
    """``auto`` -> ``tpe`` when the space has a range or a budget is set, else ``grid``.

    A space of lists alone with no budget keeps the exhaustive grid of older configs.
    """
    if method not in METHODS:
        raise ConfigError(f"tuning method must be one of {list(METHODS)}, got {method!r}")
    if method != "auto":
        return method
    has_range = any(isinstance(v, Mapping) for v in space.values())
    return "tpe" if has_range or budget_minutes is not None else "grid"


# -- the study ---------------------------------------------------------------------------------
#: ``run_trial(number, config, report) -> Trial``; ``report(step, value)`` may raise StopTrial
RunTrial = Callable[[int, dict[str, Any], Callable[[int, float], None]], Any]


def run_study(
    searched: Space,
    run_trial: RunTrial,
    *,
    start: Mapping[str, Any] | None = None,
    budget_minutes: float | None = None,
    max_trials: int | None = None,
    seed: int = 0,
    pruning: bool = True,
    show_progress: bool = False,
) -> list[Any]:
    """A seeded TPE study over ``searched`` within a wall-clock budget and a trial cap.

    Parameters
    ----------
    searched : Space
        From :func:`parse_space` (fixed parameters are the caller's business).
    run_trial : callable
        Fits one configuration on train and scores it on valid; returns a
        :class:`recsys.tuning.Trial` (``score``, ``state``). It must call ``report(step,
        value)`` after each validation point so that pruning and the budget act inside it.
    start : mapping, optional
        A configuration tried first (the family's configured parameters): the search then
        never returns worse on validation than the configuration it replaces. Values outside
        the space are left to the sampler.
    budget_minutes, max_trials : optional
        The study stops at whichever comes first (defaults
        :data:`DEFAULT_BUDGET_MINUTES` / :data:`DEFAULT_MAX_TRIALS` when both are ``None``);
        a trial running when the budget ends is stopped at its next validation point.
    seed : int
        Seed of the TPE sampler (same seed + same data = same trials with ``max_trials``).
    pruning : bool
        Median pruning (Optuna's ``MedianPruner``) on the validation curve.

    Returns
    -------
    list of Trial
        Every trial that ran, in order; duplicates proposed by the sampler are not re-fitted.
    """
    import optuna

    if budget_minutes is None and max_trials is None:
        budget_minutes, max_trials = DEFAULT_BUDGET_MINUTES, DEFAULT_MAX_TRIALS
    budget_s = None if budget_minutes is None else float(budget_minutes) * 60.0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n_startup = max(3, min(10, (max_trials or DEFAULT_MAX_TRIALS) // 4))
    with warnings.catch_warnings():  # multivariate TPE is marked experimental; it models parameter interactions
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, multivariate=True)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=max(3, n_startup // 2), n_warmup_steps=1) if pruning \
        else optuna.pruners.NopPruner()
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    if start:
        first = {k: v for k, v in start.items() if k in searched and searched[k].contains(v)}
        if first:
            study.enqueue_trial(first, skip_if_exists=True)
    dists = {k: p.distribution() for k, p in searched.items()}
    t0 = time.monotonic()
    deadline = None if budget_s is None else t0 + budget_s
    trials: list[Any] = []
    seen: dict[str, float] = {}

    def objective(ot: Any) -> float:
        cfg = {k: _suggest(ot, k, p) for k, p in searched.items()}
        inter: dict[int, float] = {}
        key = json.dumps(cfg, sort_keys=True, default=str)
        if key in seen:  # TPE may propose a configuration again: its score is known
            return seen[key]

        def report(step: int, value: float) -> None:
            if step <= 0:
                return
            ot.report(float(value), step)
            inter[int(step)] = float(value)
            if deadline is not None and time.monotonic() > deadline and any(t.state != "pruned" for t in trials):
                raise StopTrial("stopped")
            if ot.should_prune():
                raise StopTrial("pruned")

        trial = run_trial(len(trials), cfg, report)
        trial.distributions = dict(dists)
        trial.intermediate = inter
        trials.append(trial)
        left = "" if deadline is None else f", {max(0.0, deadline - time.monotonic()) / 60:.1f} min left"
        log.info("trial %d (%s): score %.4f at iteration %s%s", trial.number, trial.state, trial.score,
                 trial.best_iteration, left)
        if trial.state == "pruned":
            raise optuna.TrialPruned()
        seen[key] = float(trial.score)
        return float(trial.score)

    log.info("TPE search over %s: budget %s min, at most %s trials, seed %d, pruning %s", sorted(searched),
             budget_minutes, max_trials, seed, pruning)
    study.optimize(objective, n_trials=max_trials, timeout=budget_s, show_progress_bar=bool(show_progress))
    log.info("search done: %d trials (%d pruned) in %.1f min", len(trials),
             sum(t.state == "pruned" for t in trials), (time.monotonic() - t0) / 60)
    return trials


def _suggest(ot: Any, name: str, p: Range | Choice) -> Any:
    if isinstance(p, Choice):
        return ot.suggest_categorical(name, list(p.values))
    if p.integer:
        return ot.suggest_int(name, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    return ot.suggest_float(name, p.low, p.high, log=p.log, step=p.step)


# -- plots -------------------------------------------------------------------------------------
def study_from_trials(trials: Sequence[Any]) -> Any:
    """An in-memory Optuna study holding ``trials`` (those with ``distributions``), for plots and importance."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for t in trials:
        dists = getattr(t, "distributions", None)
        if not dists:
            continue
        state = optuna.trial.TrialState.PRUNED if t.state == "pruned" else optuna.trial.TrialState.COMPLETE
        study.add_trial(optuna.trial.create_trial(
            params={k: t.params[k] for k in dists}, distributions=dists, state=state,
            value=None if state == optuna.trial.TrialState.PRUNED else float(t.score),
            intermediate_values=dict(getattr(t, "intermediate", None) or {})))
    return study


def param_importances(trials: Sequence[Any], seed: int = 0) -> dict[str, float]:
    """fANOVA importance of each searched parameter (``{}`` with fewer than 3 complete trials)."""
    import optuna

    study = study_from_trials(trials)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 3 or not study.trials[0].distributions:
        return {}
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=32, seed=seed)  # half the default forest: seconds
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()}
    except (RuntimeError, ValueError) as e:  # e.g. every trial has the same value
        log.warning("parameter importance not computed: %s", e)
        return {}


def study_figures(trials: Sequence[Any], importances: Mapping[str, float] | None = None) -> dict[str, Any]:
    """``{"optimization_history": fig, "param_importances": fig}`` (each only when it can be drawn).

    ``importances`` from :func:`param_importances` (computed once: fANOVA is the slow part).
    """
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    study = study_from_trials(trials)
    figs: dict[str, Any] = {}
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        return figs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        figs["optimization_history"] = ovm.plot_optimization_history(study).figure
    if importances:
        names = sorted(importances, key=importances.get)
        fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(names)))
        ax.barh(names, [importances[n] for n in names])
        ax.set_xlabel("fANOVA importance (share of the validation score's variance)")
        ax.set_title(f"Parameter importance over {len(study.trials)} trials")
        figs["param_importances"] = fig
    return figs

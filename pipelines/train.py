"""Train one model on a dataset directory, select it on the validation split, log it to MLflow.

    recsys train --dataset DIR --model als|bpr|two-tower|most-popular|item-knn \\
                 [--config FILE] [--tune] [--out DIR] [--param factors=128 ...]

Protocol (same for every model): hyperparameters and the best iteration are chosen on
the ``valid`` split (with ``--tune``: over the search space of the config), the chosen
config is refitted on ``train + valid`` and evaluated once on ``test`` at K in
{10, 20, 50, 100}. Everything goes into one MLflow run in the experiment
``recsys-<dataset name>`` (tuning trials as nested runs): the full config as params,
validation curves, test metrics, dataset manifest hash and row counts, tags (dataset,
model, git commit) and artifacts (model, factors, id maps, config, metric-vs-K plot).

Config (TOML, every section optional)::

    [train]
    model = "als"
    tune = false
    [models.als]             # fixed hyperparameters (or a top-level [als] table)
    factors = 128
    [tuning]                 # selection settings ...
    metric = "ndcg@10"
    eval_every = 5
    max_trials = 30
    [tuning.als]             # ... and the search space (lists are choices)
    factors = [64, 128, 256]

Tracking URI: ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else
``sqlite:///mlruns.db`` in the working directory (artifacts in ``mlartifacts/``).
"""

from __future__ import annotations

import argparse
import logging
import tomllib
from pathlib import Path
from typing import Any

from pipelines.config import parse_value
from pipelines.tracking_uri import experiment_name, resolve_tracking_uri
from pipelines.train_logging import KS, REPO_ROOT, TrainResult, log_training_run
from recsys.data import Dataset
from recsys.errors import ConfigError
from recsys.models.registry import family_names, get_family, import_target

log = logging.getLogger(__name__)

HELP = "train a model (als, bpr, two-tower, baselines) with validation-based selection, tracked in MLflow"
__all__ = ["KS", "REPO_ROOT", "TrainResult", "train_model", "main"]


def load_config(path: str | Path | None) -> dict[str, Any]:
    """Read a TOML config (``{}`` for ``None``); a syntax error is a :class:`ConfigError`."""
    if path is None:
        return {}
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from e


def model_params(config: dict[str, Any], model_name: str) -> dict[str, Any]:
    """Fixed hyperparameters of ``model_name``: ``[models.<name>]`` or a top-level ``[<name>]``."""
    params = config.get("models", {}).get(model_name)
    if params is None:
        params = config.get(model_name, {})
    if not isinstance(params, dict):
        raise ConfigError(f"config section for {model_name!r} must be a table, got {params!r}")
    return dict(params)


def tuning_settings(config: dict[str, Any], model_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(settings, space)`` from ``[tuning]`` (scalars) and ``[tuning.<model>]`` (the space)."""
    section = config.get("tuning", {})
    settings = {k: v for k, v in section.items() if not isinstance(v, dict)}
    allowed = {"metric", "eval_every", "max_trials", "seed", "patience", "refit_on_valid", "budget_minutes", "method",
               "pruning"}
    unknown = set(settings) - allowed
    if unknown:
        raise ConfigError(f"unknown [tuning] keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    return settings, dict(section.get(model_name, {}))


def _dataset_name(dataset: Any) -> str:
    name = dataset.manifest.get("name") if dataset.manifest else None
    if not name and dataset.path is not None:
        name = Path(dataset.path).resolve().name
    return str(name or "dataset")


def train_model(
    dataset: Any,
    model_name: str,
    params: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    out_dir: str | Path | None = None,
    tune: bool = False,
    space: dict[str, Any] | None = None,
    tuning: dict[str, Any] | None = None,
    dataset_name: str | None = None,
    show_progress: bool = True,
    tags: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
) -> TrainResult:
    """Select, refit, evaluate and log one model; the function ``recsys train`` and ``recsys run`` call.

    Parameters
    ----------
    dataset : Dataset or path
        A dataset directory (or loaded :class:`~recsys.data.Dataset`) with train/valid/test.
    model_name : str
        A registered model family (:func:`recsys.models.registry.family_names`).
    params : dict, optional
        Fixed hyperparameters (for MF, ``iterations`` is the upper bound of the
        best-iteration search).
    tracking_uri : str, optional
        Resolved with :func:`pipelines.tracking_uri.resolve_tracking_uri` when omitted.
    experiment : str, optional
        Default ``recsys-<dataset name>`` (one experiment per dataset).
    out_dir : path, optional
        Where ``model.npz``, ``factors.npz``, id maps, ``config.json``, ``metrics.json``
        and the plot are written (also logged as MLflow artifacts either way).
    tune : bool
        Search over ``space`` (each trial a nested run) instead of one config.
    space, tuning : dict, optional
        Search space and settings (``metric``, ``eval_every``, ``max_trials``, ``seed``,
        ``patience``, ``refit_on_valid``, ``budget_minutes``, ``method``, ``pruning``) as in
        :func:`recsys.tuning.select_and_fit`.
    tags : dict, optional
        Extra MLflow tags of the run (``recsys run`` tags ``tuning`` = search / hit / off).
    evaluation : dict, optional
        User samples of the metrics: ``valid_users``, ``test_users`` (0 = every user) and
        ``sample_seed``, as in :func:`recsys.training.train_and_evaluate` (``[evaluation]``).

    The protocol itself is :func:`recsys.training.train_and_evaluate`; this adds MLflow.

    Returns
    -------
    TrainResult
    """
    fam = get_family(model_name)  # unknown names fail here, with the closest registered one
    if not isinstance(dataset, Dataset):
        dataset = Dataset.load(dataset)
    name = dataset_name or _dataset_name(dataset)
    uri = tracking_uri or resolve_tracking_uri()
    experiment = experiment or experiment_name(name)
    params = fam.validate_params(dict(params or {}))
    if fam.protocol is not None:  # a family's own selection step must import before a run is opened
        import_target(fam.protocol)
    space = dict(space or {}) if tune else {}
    if tune and not space and (tuning or {}).get("method") == "tpe":
        space = dict(fam.search_space)  # TPE over the family's default space
    if tune and not space:
        raise ConfigError(f"tuning {model_name} needs a search space ([tuning.{model_name}] or [models.{model_name}.tune])")
    out = Path(out_dir) if out_dir is not None else None
    return log_training_run(dataset, name, model_name, params, uri, experiment, out, space, dict(tuning or {}),
                            show_progress, tags=tags, evaluation=evaluation)


# -- CLI ---------------------------------------------------------------------------------------
def _parse_assignment(text: str) -> tuple[str, Any]:
    """``factors=128`` -> ``("factors", 128)``; values parse as TOML (strings may be bare)."""
    if "=" not in text:
        raise ConfigError(f"--param needs KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip(), parse_value(raw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset directory written by `recsys build-dataset`")
    parser.add_argument("--model", choices=family_names(), help="model to train (default: [train] model of the config, else als)")
    parser.add_argument("--config", help="TOML config with [models.<name>] params and [tuning] search spaces")
    parser.add_argument("--out", help="output directory for the model and its artifacts (default runs/train/<model>)")
    parser.add_argument("--tune", action="store_true", default=None, help="grid search over [tuning.<model>] on the valid split")
    parser.add_argument("--max-trials", type=int, help="cap the number of tuning trials (seeded random subset)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="override a hyperparameter (repeatable)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="MF device (implicit's GPU when CUDA is present)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)")
    parser.add_argument("--experiment", help="MLflow experiment (default recsys-<dataset name>)")
    parser.add_argument("--dataset-name", help="name used in tags and the experiment (default: the directory name)")
    parser.add_argument("--no-progress", action="store_true", help="disable progress bars")
    parser.add_argument("--valid-users", type=int, default=0, metavar="N",
                        help="validate (trials, curves) on a fixed seeded sample of N users (default 0: every user)")
    parser.add_argument("--test-users", type=int, default=0, metavar="N", help="test on N sampled users (0: every user)")
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the user samples (default 0)")


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    train_cfg = config.get("train", {})
    model_name = args.model or train_cfg.get("model", "als")
    params = model_params(config, model_name)
    for item in args.param:
        k, v = _parse_assignment(item)
        params[k] = v
    if args.device and "device" in get_family(model_name).defaults():
        params["device"] = args.device
    settings, space = tuning_settings(config, model_name)
    if args.max_trials is not None:
        settings["max_trials"] = args.max_trials
    tune = bool(train_cfg.get("tune", False) if args.tune is None else args.tune)
    if tune and not space:
        raise ConfigError(f"--tune needs a search space: add a [tuning.{model_name}] table to the config")
    if min(args.valid_users, args.test_users) < 0:
        raise ConfigError("--valid-users and --test-users must be >= 0 (0 = every user)")
    out = Path(args.out) if args.out else Path("runs") / "train" / model_name
    res = train_model(
        args.dataset,
        model_name,
        params,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment or train_cfg.get("experiment"),
        out_dir=out,
        tune=tune,
        space=space,
        tuning=settings,
        dataset_name=args.dataset_name,
        show_progress=not args.no_progress,
        evaluation={"valid_users": args.valid_users, "test_users": args.test_users, "sample_seed": args.sample_seed},
    )
    shown = {k: round(v, 4) for k, v in res.metrics_test.items() if k in ("ndcg@10", "precision@10", "recall@10", "map@10")}
    log.info("%s: run %s, params %s, test %s, artifacts in %s", model_name, res.run_id, res.params, shown, res.out_dir)
    return 0

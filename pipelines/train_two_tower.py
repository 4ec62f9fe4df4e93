"""Train the two-tower model on a dataset directory and log it to MLflow.

``recsys train --model two-tower`` (``pipelines/train.py``) calls :func:`fit_and_log`.
The module also runs on its own, which is how multi-process training is launched::

    python -m pipelines.train_two_tower --dataset DIR --config configs/two_tower_small.toml --out runs/tt
    torchrun --nproc_per_node 2 -m pipelines.train_two_tower --dataset DIR --out runs/tt

Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank trains its slice of each global batch
(gloo on CPU, NCCL on GPU; see :mod:`recsys.models.distributed`); only rank 0 opens the
MLflow run, evaluates on test and writes artifacts.

Protocol (as for MF): the best epoch is chosen by early stopping on validation
``ndcg@10`` (with one member when ``ensemble`` > 1 and a refit follows); with
``refit_on_valid`` (default) the model (all ``ensemble`` members) is refitted on train + valid
for as many optimizer steps as the chosen epoch took (:func:`recsys.models.two_tower_config.refit_epochs`,
logged as ``refit_epochs``) and evaluated once on test at K in {10, 20, 50, 100}.

Pipeline-level params (popped before the model sees them): ``item_features`` = "auto"
(multi-hot of the items table's ``genres`` column when present), "none", or a path to a
``.npy``/``.npz`` float array of shape (n_items, F) (e.g. content embeddings);
``refit_on_valid`` (bool).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.errors import ConfigError, InputError

log = logging.getLogger(__name__)

HELP = "train the two-tower model (also under torchrun for multi-process training)"
KS = (10, 20, 50, 100)
REPO_ROOT = Path(__file__).resolve().parents[1]


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


def item_features_for(dataset: Any, spec: str | None) -> np.ndarray | None:
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
    p = Path(spec)
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


def _validation(train: Any, valid: Any, k: int) -> Any:
    from recsys.evaluation import evaluate

    return lambda model: evaluate(model, train, valid, ks=(k,))


def fit_and_log(
    dataset: Any, params: dict[str, Any], tracking_uri: str, experiment: str, out_dir: Path | None
) -> tuple[Any, str | None, dict[str, float]]:
    """Select the epoch on valid, refit, evaluate on test, log everything; ``(model, run_id, test metrics)``.

    On a non-main rank of a distributed job the model is trained but nothing is logged
    (``run_id`` is ``None`` and the metrics are empty).
    """
    from recsys.data import Dataset
    from recsys.evaluation import evaluate
    from recsys.models.distributed import DistInfo
    from recsys.models.two_tower import TwoTower

    if not isinstance(dataset, Dataset):
        dataset = Dataset.load(dataset)
    params = dict(params)
    feats = item_features_for(dataset, params.pop("item_features", "auto"))
    refit = bool(params.pop("refit_on_valid", True))
    TwoTower(**params)  # unknown names fail before a run is opened
    main = DistInfo.current().is_main
    has_valid = "valid" in dataset.splits and dataset.splits["valid"].height > 0
    if "test" not in dataset.splits or dataset.splits["test"].height == 0:
        raise InputError("the dataset has an empty test split; nothing to evaluate the model on")
    train, test = dataset.matrix("train"), dataset.matrix("test")
    if not main:
        return _fit_worker(dataset, params, feats, has_valid, refit), None, {}

    from recsys import tracking
    from pipelines.train_logging import _write_artifacts

    name = dataset.manifest.get("name") if dataset.manifest else None
    name = name or (Path(dataset.path).resolve().name if dataset.path else "dataset")
    config = {"model": "two-tower", "params": params, "refit_on_valid": refit, "item_feature_dim": 0 if feats is None else feats.shape[1]}
    tags = {"dataset": name, "model": "two-tower", "world_size": DistInfo.current().world_size}
    with tracking.start_run(tracking_uri, experiment, run_name="two-tower", tags=tags) as run:
        tracking.log_git_commit(REPO_ROOT)
        tracking.log_config(config)
        manifest = dataset.path / "manifest.json" if dataset.path is not None else dataset.manifest
        tracking.log_dataset_lineage(manifest, {s: df.height for s, df in dataset.splits.items()}, name=name, path=dataset.path)
        model = TwoTower(**_selection_params(params, has_valid and refit))
        m_valid: dict[str, float] = {}
        if has_valid:
            model.fit(
                train, pairs=dataset.split("train"), item_features=feats,
                validation=_validation(train, dataset.matrix("valid"), int(model.metric.split("@")[-1] or 10)),
                on_epoch=lambda e, row: tracking.log_metrics(row, step=e, prefix="epoch_"),
            )  # fmt: skip
            m_valid = {k[len("valid_"):]: v for k, v in model.history_[model.best_epoch_ - 1].items() if k.startswith("valid_")}
            tracking.log_metrics({"best_epoch": model.best_epoch_, **m_valid}, prefix="valid_")
        else:
            log.warning("no valid split: training two-tower for %d epochs without early stopping", model.epochs)
            model.fit(train, pairs=dataset.split("train"), item_features=feats,
                      on_epoch=lambda e, row: tracking.log_metrics(row, step=e, prefix="epoch_"))  # fmt: skip
        seen = train
        final = model.get_params()
        if has_valid and refit:
            seen = dataset.matrix("train", "valid")
            model = _refit(model, dataset, feats, params.get("ensemble", 1))
            final = model.get_params()
            tracking.log_metrics({"refit_epochs": model.epochs})
        m_test = evaluate(model, seen, test, ks=KS)
        tracking.log_metrics(m_test, prefix="test_")
        out = _write_artifacts(dataset, model, "two-tower", config, final, m_valid, m_test, out_dir, name)
        if out is not None:
            model.save_checkpoint(out / "checkpoint")
            tracking.log_file(out / "checkpoint" / "config.json", "checkpoint")
        return model, run.info.run_id, m_test


def _fit_worker(dataset: Any, params: dict[str, Any], feats: Any, has_valid: bool, refit: bool) -> Any:
    """A non-main rank: the same fits as rank 0, in lock-step, without logging."""
    from recsys.models.two_tower import TwoTower

    train = dataset.matrix("train")
    model = TwoTower(**_selection_params(params, has_valid and refit))
    val = _validation(train, dataset.matrix("valid"), int(model.metric.split("@")[-1] or 10)) if has_valid else None
    model.fit(train, pairs=dataset.split("train"), item_features=feats, validation=val)
    return _refit(model, dataset, feats, params.get("ensemble", 1)) if has_valid and refit else model


def _selection_params(params: dict[str, Any], will_refit: bool) -> dict[str, Any]:
    """With a refit to come, select the epoch with one member: the others would be thrown away."""
    return {**params, "ensemble": 1} if will_refit else params


def _refit(model: Any, dataset: Any, feats: Any, ensemble: int) -> Any:
    """Retrain on train + valid (``ensemble`` members) for as many optimizer steps as validation chose."""
    from recsys.models.two_tower import TwoTower
    from recsys.models.two_tower_config import refit_epochs

    train = dataset.split("train")
    pairs = pl.concat([train, dataset.split("valid")], how="diagonal_relaxed")
    epochs = refit_epochs(model.best_epoch_, train.height, pairs.height)
    log.info("refit on train + valid: %d epochs (%d selected on %d pairs, now %d pairs)",
             epochs, model.best_epoch_, train.height, pairs.height)  # fmt: skip
    return TwoTower(**{**model.get_params(), "ensemble": ensemble, "epochs": epochs, "patience": None}).fit(
        dataset.matrix("train", "valid"), pairs=pairs, item_features=feats
    )


# -- CLI (python -m pipelines.train_two_tower / torchrun) ----------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset directory written by `recsys build-dataset`")
    parser.add_argument("--config", help="TOML with a [models.two-tower] (or [two-tower]) table")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="override a hyperparameter")
    parser.add_argument("--out", default="runs/two-tower", help="output directory (rank 0)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="training device")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)")
    parser.add_argument("--experiment", help="MLflow experiment (default recsys-<dataset name>)")


def main(args: argparse.Namespace) -> int:
    from pipelines.tracking_uri import experiment_name, resolve_tracking_uri
    from pipelines.train import _parse_assignment, load_config, model_params
    from recsys.data import Dataset
    from recsys.models.distributed import cleanup, init_distributed

    params = model_params(load_config(args.config), "two-tower")
    for item in args.param:
        k, v = _parse_assignment(item)
        params[k] = v
    if args.device:
        params["device"] = args.device
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        info = init_distributed("auto")
        if info.local_rank and params.get("device", "auto") != "cpu":
            params["device"] = f"cuda:{info.local_rank}" if _has_cuda() else "cpu"
    try:
        dataset = Dataset.load(args.dataset)
        uri = resolve_tracking_uri(args.tracking_uri)
        name = dataset.manifest.get("name") or Path(args.dataset).resolve().name
        _, run_id, metrics = fit_and_log(dataset, params, uri, args.experiment or experiment_name(name), Path(args.out))
        if run_id is not None:
            log.info("two-tower: run %s, test ndcg@10=%.4f recall@20=%.4f", run_id, metrics["ndcg@10"], metrics["recall@20"])
    finally:
        if distributed:
            cleanup()
    return 0


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _run_module(argv: list[str] | None = None) -> int:
    """Entry of ``python -m pipelines.train_two_tower`` with the ``recsys`` exit codes."""
    from pipelines.cli import exit_code_for, setup_logging
    from recsys.errors import RecsysError

    parser = argparse.ArgumentParser(prog="python -m pipelines.train_two_tower", description=HELP)
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging()
    try:
        return main(args)
    except RecsysError as e:
        log.error("%s", e)
        return exit_code_for(e)


if __name__ == "__main__":
    raise SystemExit(_run_module())

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

from pipelines.cli import exit_code_for, setup_logging
from pipelines.tracking_uri import experiment_name, resolve_tracking_uri
from pipelines.train import _parse_assignment, load_config, model_params
from pipelines.train_logging import KS, REPO_ROOT, log_training_run
from recsys.data import Dataset
from recsys.errors import RecsysError
from recsys.models.registry import get_family
from recsys.models.distributed import DistInfo, cleanup, init_distributed
from recsys.training import train_and_evaluate
from recsys.training_two_tower import item_features_for, multi_hot

__all__ = ["KS", "REPO_ROOT", "fit_and_log", "item_features_for", "multi_hot", "main"]

log = logging.getLogger(__name__)

HELP = "train the two-tower model (also under torchrun for multi-process training)"
KS = (10, 20, 50, 100)
REPO_ROOT = Path(__file__).resolve().parents[1]


def fit_and_log(
    dataset: Any, params: dict[str, Any], tracking_uri: str, experiment: str, out_dir: Path | None
) -> tuple[Any, str | None, dict[str, float]]:
    """The training protocol for the two-tower, logged; ``(model, run_id, test metrics)``.

    On a non-main rank of a distributed job the model is trained in lock-step but nothing
    is logged (``run_id`` is ``None`` and the metrics are empty).
    """
    get_family("two-tower").validate_params(params)  # unknown names fail before a run is opened
    if not isinstance(dataset, Dataset):
        dataset = Dataset.load(dataset)
    if not DistInfo.current().is_main:
        res = train_and_evaluate(dataset, "two-tower", params, show_progress=False)
        return res.model, None, {}
    name = dataset.manifest.get("name") if dataset.manifest else None
    name = name or (Path(dataset.path).resolve().name if dataset.path else "dataset")
    res = log_training_run(dataset, name, "two-tower", dict(params), tracking_uri, experiment, out_dir, {}, {}, True,
                           tags={"world_size": DistInfo.current().world_size})
    return res.model, res.run_id, res.metrics_test


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

"""Run the whole batch chain: dataset -> models -> content blend -> index -> promotion.

Examples::

    recsys run --config configs/default.toml --out runs/default
    recsys run --config configs/default.toml --out runs/nightly --as-of 2026-11-25 --window-days 90
    recsys run --config configs/default.toml --out runs/x --set models.als.factors=64 --set content.enabled=false

Each step records the hashes of its inputs and config in ``OUT/state/``; a rerun with
nothing changed does no work and says so, and a change re-runs only the steps downstream
of it. A lock on ``OUT`` keeps two runs apart (the second exits with code 4). The
``champion`` alias (and ``OUT/latest``, which ``Retriever.load(OUT)`` follows) moves only
when the quality gates pass; otherwise the run exits with code 3 and the old champion
keeps serving. ``OUT/state/run_record.json`` says what the last run did.

Config: the packaged defaults (``pipelines/defaults.toml``), then ``--config FILE``, then the
input flags, then ``--set``; validated once before any work (a typo exits 2 naming the key).
Sections: the dataset ones of ``recsys build-dataset`` ([events], [items], [weights],
[filter], [split], ``seed``) plus [models], [content], [refit], [index], [promotion],
[tracking]. ``recsys config show [same flags]`` prints the effective config.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

from pipelines import build_dataset as bd
from pipelines.config import effective_config, to_toml
from pipelines.tracking_uri import resolve_tracking_uri
from pipelines.runner import Runner
from recsys.config import RunConfig
from recsys.data.readers import resolve_files
from recsys.lock import DirectoryLock

HELP = "the whole chain: build dataset, train, embed and blend, export, promote"
log = logging.getLogger("recsys.run")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config over the packaged defaults (see `recsys config show`)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (dataset, models, bundles, state)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="override a config value, e.g. --set models.als.factors=64 (repeatable)")
    parser.add_argument("--models", help="comma-separated models to train (overrides [models] train)")
    parser.add_argument("--publish-model", help="model whose vectors are published (overrides [models] publish)")
    parser.add_argument("--no-refit", action="store_true", help="publish the model trained on the train split only")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)")
    parser.add_argument("--force", action="store_true", help="re-run every step even when up to date")
    parser.add_argument("--retune", action="store_true",
                        help="search hyperparameters again even when OUT/state/tuning_cache.json holds this data lineage")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (they are off anyway without a TTY)")
    bd.add_input_arguments(parser)


def load_config(args: argparse.Namespace) -> tuple[RunConfig, Any]:
    """The validated run config (defaults + file + flags + ``--set``) and the dataset BuildConfig.

    Everything is checked here, before the lock is taken or any file is written, so a typo
    or a wrong type exits 2 at once.
    """
    cfg = effective_config(args)
    build_config = bd.build_config_from(args, cfg.dataset_dict())
    return cfg, build_config


def _input_files(build_config: Any) -> list[str]:
    files, _ = resolve_files(build_config.events.path, build_config.as_of, build_config.window_days)
    if build_config.items is not None:
        files += resolve_files(build_config.items.path)[0]
    return [str(f) for f in files]


def _config_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def main(args: argparse.Namespace) -> int:
    run_cfg, build_config = load_config(args)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    tracking_uri = resolve_tracking_uri(args.tracking_uri, os.environ)
    show_progress = not args.no_progress
    with DirectoryLock(out):
        t0 = time.perf_counter()
        runner = Runner(out, run_cfg, build_config, tracking_uri, effective_toml=to_toml(run_cfg), force=args.force,
                        show_progress=show_progress, input_files=_input_files(build_config),
                        build_config_dict=_config_dict(build_config), retune=args.retune)
        code = runner.run()
        log.info("run finished in %.1f s with exit code %d", time.perf_counter() - t0, code)
        return code

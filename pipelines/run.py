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

Config sections: the dataset ones of ``recsys build-dataset`` ([events], [items],
[weights], [filter], [split], ``seed``) plus [models], [content], [refit], [index],
[promotion], [tracking]; see configs/default.toml.
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
from pipelines.config import apply_overrides, section
from pipelines.tracking_uri import resolve_tracking_uri

HELP = "the whole chain: build dataset, train, embed and blend, export, promote"
log = logging.getLogger("recsys.run")

DATASET_SECTIONS = ("events", "items", "weights", "filter", "split")
DATASET_TOP_KEYS = ("seed", "max_reject_share", "hash_inputs")
RUN_SECTIONS = ("models", "content", "refit", "index", "promotion", "tracking")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=Path("configs/default.toml"), help="TOML config (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (dataset, models, bundles, state)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="override a config value, e.g. --set models.als.factors=64 (repeatable)")
    parser.add_argument("--models", help="comma-separated models to train (overrides [models] train)")
    parser.add_argument("--publish-model", help="model whose vectors are published (overrides [models] publish)")
    parser.add_argument("--no-refit", action="store_true", help="publish the model trained on the train split only")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)")
    parser.add_argument("--force", action="store_true", help="re-run every step even when up to date")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (they are off anyway without a TTY)")
    bd.add_input_arguments(parser)


def load_config(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """The run config (TOML + ``--set``) and the dataset BuildConfig (TOML + input flags)."""
    raw = bd.load_toml(args.config) if args.config else {}
    raw = apply_overrides(raw, args.overrides)
    known = set(DATASET_SECTIONS) | set(RUN_SECTIONS)
    unknown = sorted(k for k, v in raw.items() if isinstance(v, dict) and k not in known)
    if unknown:
        from recsys.errors import ConfigError

        raise ConfigError(f"unknown config section(s) {unknown}; known: {sorted(known)}")
    dataset_part = {k: v for k, v in raw.items() if k in DATASET_SECTIONS or k in DATASET_TOP_KEYS}
    build_config = bd.build_config_from(args, dataset_part)
    run_cfg = {s: section(raw, s) for s in RUN_SECTIONS}
    if args.models:
        run_cfg["models"]["train"] = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.publish_model:
        run_cfg["models"]["publish"] = args.publish_model
    if args.no_refit:
        run_cfg["refit"]["enabled"] = False
    run_cfg["seed"] = build_config.seed
    return run_cfg, build_config


def _input_files(build_config: Any) -> list[str]:
    from recsys.data.readers import resolve_files

    files, _ = resolve_files(build_config.events.path, build_config.as_of, build_config.window_days)
    if build_config.items is not None:
        files += resolve_files(build_config.items.path)[0]
    return [str(f) for f in files]


def _config_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def main(args: argparse.Namespace) -> int:
    from pipelines.runner import Runner
    from recsys.lock import DirectoryLock

    run_cfg, build_config = load_config(args)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    tracking_uri = resolve_tracking_uri(args.tracking_uri, os.environ)
    show_progress = not args.no_progress
    with DirectoryLock(out):
        t0 = time.perf_counter()
        runner = Runner(out, run_cfg, build_config, tracking_uri, force=args.force, show_progress=show_progress,
                        input_files=_input_files(build_config), build_config_dict=_config_dict(build_config))
        code = runner.run()
        log.info("run finished in %.1f s with exit code %d", time.perf_counter() - t0, code)
        return code

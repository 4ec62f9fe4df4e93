"""Show the effective configuration of ``recsys run``.

    recsys config show [--config FILE] [--set KEY=VALUE ...] [input flags of recsys run]

Prints the packaged defaults merged with the file, the flags and the overrides, validated,
as TOML: exactly what ``recsys run`` with the same arguments would use (and what it logs
to MLflow as ``config/effective.toml``). A typo or a wrong type exits 2 naming the key.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines import build_dataset as bd
from pipelines.config import effective_config, to_toml

HELP = "print the effective run config (packaged defaults + file + flags + --set) as TOML"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["show"], help="show: print the effective config")
    parser.add_argument("--config", type=Path, help="TOML config over the packaged defaults")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", help="override a value (repeatable)")
    parser.add_argument("--models", help="comma-separated models to train (overrides [models] train)")
    parser.add_argument("--publish-model", help="model whose vectors are published (overrides [models] publish)")
    parser.add_argument("--no-refit", action="store_true", help="publish the model trained on the train split only")
    bd.add_input_arguments(parser)


def main(args: argparse.Namespace) -> int:
    sys.stdout.write(to_toml(effective_config(args)))
    return 0

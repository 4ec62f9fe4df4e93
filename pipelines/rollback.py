"""Move the ``champion`` alias back, and serve the bundle of that version again.

Examples::

    recsys rollback --out runs/default                    # back to the previous champion
    recsys rollback --out runs/default --to-version 3     # to a given registered version

The registered model name and alias come from the flags, else ``[promotion]`` of
``--config``, else of the effective config the last ``recsys run`` wrote into
``OUT/state/effective_config.toml`` (so ``--out`` alone is enough, from any directory), else
the packaged defaults; every config read is validated like ``recsys run``'s. Rollback bypasses the quality gates on purpose: a
person decided. It takes the same lock as ``recsys run``, so it never races a nightly run.

Nothing moves until the target is known good: the version exists, carries the tags a
complete ``recsys run`` writes, and its bundle is under ``OUT/bundles`` and passes
verification. Then ``OUT/latest`` and the alias move together: if the alias cannot be
set, ``latest`` is switched back (:func:`recsys.promotion.move_together`). A refused
target exits 2 with both untouched.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from pipelines.config import effective_config
from pipelines.tracking_uri import resolve_tracking_uri

HELP = "move the champion alias (and OUT/latest) back to the previous or a given version"
log = logging.getLogger("recsys.rollback")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output directory of `recsys run` (holds bundles/ and latest)")
    parser.add_argument("--config", type=Path,
                        help="run config for [promotion] (default: OUT/state/effective_config.toml, else the packaged defaults)")
    parser.add_argument("--registered-model", help="registered model name (default: [promotion] registered_model)")
    parser.add_argument("--alias", help="alias to move (default: [promotion] alias, else champion)")
    parser.add_argument("--to-version", help="registered model version to roll back to (default: the previous champion)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)")


def promotion_section(args: argparse.Namespace) -> Any:
    """``[promotion]`` of ``--config``, else of the run's effective config, else the packaged defaults."""
    config = args.config
    if config is None:
        written = args.out / "state" / "effective_config.toml"
        config = written if written.is_file() else None
    return effective_config(argparse.Namespace(config=config)).promotion


def main(args: argparse.Namespace) -> int:
    from recsys import promotion
    from recsys.errors import BundleError, ConfigError
    from recsys.lock import DirectoryLock
    from recsys.serving.reader import verify_bundle
    from recsys.serving.versions import LATEST, current, publish
    from recsys.tracking import validate_name

    promo = promotion_section(args)
    name = validate_name(args.registered_model or promo.registered_model, "registered model name")
    alias = validate_name(args.alias or promo.alias, "alias")
    client = promotion.registry_client(resolve_tracking_uri(args.tracking_uri, os.environ))
    with DirectoryLock(args.out):
        target, history = promotion.rollback_target(client, name, alias, to_version=args.to_version)
        bundle = target.tags[promotion.BUNDLE_TAG]
        try:
            verify_bundle(args.out / "bundles" / bundle)
        except BundleError as e:
            raise ConfigError(f"cannot roll back {name} to v{target.version}: its bundle {bundle} is not usable "
                              f"under {args.out} ({e}); pick another version") from None
        before = current(args.out)

        def undo() -> None:
            if before is not None:
                publish(args.out, before, action="rollback-undone")
            else:
                (args.out / LATEST).unlink(missing_ok=True)

        promotion.move_together(client, name, alias, target.version, history,
                                switch=lambda: publish(args.out, bundle, action="rollback"), undo=undo)
    print(f"{name}@{alias} -> v{target.version}; {args.out}/latest -> bundles/{bundle}")
    return 0

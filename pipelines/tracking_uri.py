"""Where MLflow runs go: ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else a local SQLite store.

This is the one place that reads the environment for tracking (the library takes the
URI as an argument). The local default is ``sqlite:///<cwd>/mlruns.db`` with artifacts in
``<cwd>/mlartifacts``, so ``mlflow ui --backend-store-uri sqlite:///mlruns.db`` started
in the same directory shows every run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from recsys.tracking import local_sqlite_uri, validate_name

log = logging.getLogger(__name__)

ENV_VAR = "MLFLOW_TRACKING_URI"


def resolve_tracking_uri(
    explicit: str | None = None, environ: Mapping[str, str] | None = None, workdir: str | os.PathLike = "."
) -> str:
    """Resolve the tracking URI: explicit value > ``$MLFLOW_TRACKING_URI`` > local SQLite in ``workdir``."""
    env = os.environ if environ is None else environ
    if explicit:
        uri, source = explicit, "--tracking-uri"
    elif env.get(ENV_VAR):
        uri, source = env[ENV_VAR], ENV_VAR
    else:
        uri, source = local_sqlite_uri(Path(workdir)), "default local store"
    log.info("MLflow tracking URI %s (%s)", uri, source)
    return uri


def experiment_name(dataset_name: str) -> str:
    """One experiment per dataset: ``recsys-<dataset name>``, validated.

    The dataset name comes from a directory name or a config, so it is checked like any
    experiment name (:func:`recsys.tracking.validate_name`): ``recsys-..`` is fine, but a
    name with ``/`` or control characters is refused with a ConfigError (exit code 2).
    """
    return validate_name(f"recsys-{dataset_name}", "experiment name (from the dataset name)")

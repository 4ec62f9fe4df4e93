"""Test helpers for the MF / tracking tests: fresh MLflow SQLite stores without re-migrating.

Creating an MLflow SQLite store runs ~60 alembic migrations (20+ s on a busy 2-core box);
a migrated template is made once per test session and copied for every store a test needs.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from recsys.tracking import LOCAL_DB, local_sqlite_uri

_TEMPLATE: Path | None = None


def fresh_store(directory: str | Path) -> str:
    """Put an empty, migrated ``mlruns.db`` in ``directory`` and return its URI."""
    global _TEMPLATE
    if _TEMPLATE is None:
        import mlflow

        d = Path(tempfile.mkdtemp(prefix="recsys-mlflow-template-"))
        atexit.register(shutil.rmtree, d, True)
        mlflow.MlflowClient(local_sqlite_uri(d)).search_experiments()  # creates + migrates the schema
        _TEMPLATE = d / LOCAL_DB
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_TEMPLATE, directory / LOCAL_DB)
    return local_sqlite_uri(directory)

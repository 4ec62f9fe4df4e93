"""MLflow experiment tracking helpers shared by every training job.

Why a wrapper at all: MLflow's client retries an unreachable server with exponential
backoff for minutes, silently writes ``./mlruns`` when no URI is set, and stores
artifacts of a SQLite store wherever the current directory happens to be. A batch job
needs the opposite: fail fast with a message naming the fix, put the artifacts beside
the database so ``mlflow ui --backend-store-uri sqlite:///mlruns.db`` finds them, and log
config, lineage and code version the same way for every model.

The library never reads environment variables: callers pass the tracking URI in
(the pipelines resolve ``MLFLOW_TRACKING_URI`` and fall back to :func:`local_sqlite_uri`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys import autotune
from recsys.callbacks import Callbacks
from recsys.errors import ConfigError, InputError, TrackingError
from recsys.io import save_npz, sha256_file, sha256_json

log = logging.getLogger(__name__)

#: file name of the default local store, created in the working directory
LOCAL_DB = "mlruns.db"
#: artifact folder created beside a SQLite store
LOCAL_ARTIFACTS = "mlartifacts"
#: MLflow rejects longer parameter values (MLflow >= 2.x limit is 6000 characters)
MAX_PARAM_CHARS = 6000


#: longest experiment / registered model name accepted
MAX_NAME_CHARS = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# -- names ---------------------------------------------------------------------------------
def validate_name(name: Any, what: str = "experiment name") -> str:
    """Refuse an experiment or registered model name that is unsafe as a path or URI part.

    An experiment's artifacts go to ``mlartifacts/<name>`` and a model is addressed as
    ``models:/<name>/<version>``, so ``..`` would put artifacts outside ``mlartifacts/``
    and ``/`` would make the URI ambiguous. Refused: non-strings, empty or blank names,
    leading or trailing spaces, ``/``, ``\\`` or quotes (unsafe in MLflow filter
    strings), ``.``/``..`` or names starting with a dot, control characters, more than
    :data:`MAX_NAME_CHARS` characters.

    Raises
    ------
    ConfigError
        Naming the value and the fix (exit code 2 in the pipelines).
    """
    if not isinstance(name, str):
        raise ConfigError(f"{what} must be a string, got {type(name).__name__} {name!r:.60}")
    problem = None
    if not name.strip():
        problem = "is empty"
    elif name != name.strip():
        problem = "has leading or trailing spaces"
    elif any(c in name for c in "/\\'\"`"):
        problem = "contains '/', '\\' or a quote"
    elif name.startswith("."):
        problem = "starts with '.' (a hidden or parent directory)"
    elif _CONTROL.search(name):
        problem = "contains control characters"
    elif len(name) > MAX_NAME_CHARS:
        problem = f"is {len(name)} characters long (limit {MAX_NAME_CHARS})"
    if problem:
        raise ConfigError(f"{what} {name!r:.60} {problem}; use letters, digits, '-', '_' and '.' "
                          "(e.g. recsys-movielens)")
    return name


# -- URIs ----------------------------------------------------------------------------------
def local_sqlite_uri(directory: str | os.PathLike = ".") -> str:
    """The default store: ``sqlite:///<abs dir>/mlruns.db``.

    An absolute path keeps runs in one place even when a later job runs from another
    directory; ``mlflow ui --backend-store-uri sqlite:///mlruns.db`` started in that
    directory opens the same file.
    """
    return f"sqlite:///{(Path(directory).resolve() / LOCAL_DB).as_posix()}"


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    p = uri[len("sqlite:///") :]
    if p in ("", ":memory:"):
        return None
    return Path(p).resolve()


def artifact_root_for(uri: str) -> str | None:
    """Where artifacts of a new experiment go for a local store; ``None`` = server decides.

    For ``sqlite:///DIR/x.db`` this is ``DIR/mlartifacts`` (beside the database), so
    copying or opening the directory keeps runs and artifacts together.
    """
    db = _sqlite_path(uri)
    if db is not None:
        return (db.parent / LOCAL_ARTIFACTS).as_uri()
    if uri.startswith("file:") or "://" not in uri:
        return None  # a file store keeps artifacts inside itself
    return None


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast when ``uri`` cannot be used, instead of hanging in MLflow's retries.

    * ``http(s)://``: open a TCP connection and ``GET /health`` with ``timeout_s``;
      any HTTP answer below 500 counts as reachable (an auth proxy may answer 401).
    * ``sqlite:///``: the database's directory must exist (or be creatable) and be writable.
    * other schemes (``databricks``, ``file:``) are accepted as is.

    Raises
    ------
    TrackingError
        Naming the URI, the reason and how to fix it (start the server, or unset
        ``MLFLOW_TRACKING_URI`` to use the local store).
    """
    if not isinstance(uri, str) or not uri:
        raise InputError("tracking URI must be a non-empty string such as sqlite:///mlruns.db or http://host:5000")
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("http", "https"):
        host = parsed.hostname
        if not host:
            raise TrackingError(f"tracking URI {uri!r} has no host")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        hint = (
            f"start it (e.g. `mlflow server --port {port}`) or unset MLFLOW_TRACKING_URI to use "
            f"the local store {LOCAL_DB}"
        )
        t0 = time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                pass
        except OSError as e:
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({e}); {hint}") from e
        left = max(0.5, timeout_s - (time.monotonic() - t0))
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=left) as resp:  # noqa: S310 - http(s) only
                status = resp.status
        except urllib.error.HTTPError as e:
            status = e.code
        except (urllib.error.URLError, OSError) as e:
            raise TrackingError(f"MLflow tracking server {uri} did not answer within {timeout_s:g}s ({e}); {hint}") from e
        if status >= 500:
            raise TrackingError(f"MLflow tracking server {uri} answered HTTP {status} on /health; check its logs")
        return
    db = _sqlite_path(uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(f"cannot create the directory of the tracking database {db}: {e}") from e
        if not os.access(db.parent, os.W_OK):
            raise TrackingError(f"tracking database directory {db.parent} is not writable; pass another URI")


# -- runs ----------------------------------------------------------------------------------
def _experiment_id(client: Any, uri: str, experiment: str) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    root = artifact_root_for(uri)
    location = None
    if root is not None:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment).strip("_.") or "experiment"
        location = f"{root}/{safe}"
    try:
        return client.create_experiment(experiment, artifact_location=location)
    except MlflowException:  # created concurrently by another job
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise
        return exp.experiment_id


@contextlib.contextmanager
def start_run(
    uri: str,
    experiment: str,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    nested: bool = False,
    check: bool = True,
    timeout_s: float = 5.0,
) -> Iterator[Any]:
    """Open an MLflow run (``with start_run(...) as run:``) after checking the store.

    Parameters
    ----------
    uri : str
        Tracking URI; checked with :func:`check_tracking_uri` first so a dead server fails
        in ``timeout_s`` seconds rather than after MLflow's retries.
    experiment : str
        Experiment name, created on first use (for SQLite with artifacts beside the db).
    run_name, tags : optional
    nested : bool
        Open a child of the currently active run (e.g. one tuning trial). The child lives
        in its parent's experiment; ``uri``/``experiment`` must match the parent's.
    check : bool
        Skip the reachability probe (for nested runs of an already checked parent).

    Yields
    ------
    mlflow.ActiveRun
        Marked FAILED by MLflow if the block raises.
    """
    validate_name(experiment, "experiment name")
    if check and not nested:  # before importing mlflow: a dead server fails in timeout_s
        check_tracking_uri(uri, timeout_s)
    import mlflow
    from mlflow.exceptions import MlflowException

    active = mlflow.active_run()
    if nested and active is None:
        raise InputError("nested=True needs an active parent run; open one with start_run() first")
    str_tags = {str(k): str(v) for k, v in (tags or {}).items() if v is not None}
    try:
        if nested and active is not None:
            exp_id = active.info.experiment_id
        else:
            mlflow.set_tracking_uri(uri)
            exp_id = _experiment_id(mlflow.MlflowClient(uri), uri, experiment)
        run_ctx = mlflow.start_run(experiment_id=exp_id, run_name=run_name, nested=nested, tags=str_tags)
    except MlflowException as e:
        raise TrackingError(f"MLflow at {uri} refused to start a run in experiment {experiment!r}: {e}") from e
    with run_ctx as run:
        where = f"the parent's experiment (id {exp_id})" if nested else f"experiment {experiment!r}"
        log.info("MLflow run %s (%s) in %s at %s", run.info.run_id, run_name or "-", where, uri)
        yield run


# -- params, lineage, tags -------------------------------------------------------------------
def flatten(config: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Flatten nested mappings into ``{"a.b.c": value}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key, sep))
        else:
            out[key] = v
    return out


def log_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Log a (nested) config as MLflow params, ``section.key=value``; returns what was logged.

    Values are stringified (``None`` -> ``"None"``) and cut at MLflow's length limit with a
    warning; the full config belongs in a ``config.json`` artifact as well.
    """
    import mlflow

    params: dict[str, str] = {}
    for k, v in flatten(config, prefix).items():
        s = str(v)
        if len(s) > MAX_PARAM_CHARS:
            log.warning("param %s is %d characters long; truncated in MLflow (see config.json)", k, len(s))
            s = s[: MAX_PARAM_CHARS - 3] + "..."
        params[k] = s
    keys = list(params)
    for i in range(0, len(keys), 100):  # MLflow's batch limit is 100 params per call
        mlflow.log_params({k: params[k] for k in keys[i : i + 100]})
    return params


def manifest_sha256(manifest: Mapping[str, Any] | str | os.PathLike) -> str:
    """Hash of a dataset manifest: of the file if a path is given, else canonical JSON."""
    if isinstance(manifest, (str, os.PathLike)):
        return sha256_file(manifest)
    return sha256_json(dict(manifest))


def log_dataset_lineage(
    manifest: Mapping[str, Any] | str | os.PathLike,
    row_counts: Mapping[str, int] | None = None,
    name: str | None = None,
    path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Record which data a run trained on: manifest sha256, row counts, name and path.

    Logged as params ``dataset.manifest_sha256``, ``dataset.rows.<split>`` and tags
    ``dataset``/``dataset.manifest_sha256`` (searchable in the UI), plus the manifest
    itself as ``dataset/manifest.json`` when it is a mapping or file.
    Returns the logged values.
    """
    import mlflow

    digest = manifest_sha256(manifest)
    params: dict[str, Any] = {"dataset.manifest_sha256": digest}
    if name is not None:
        params["dataset.name"] = name
    if path is not None:
        params["dataset.path"] = str(path)
    for split, n in (row_counts or {}).items():
        params[f"dataset.rows.{split}"] = int(n)
    mlflow.log_params({k: str(v) for k, v in params.items()})
    tags = {"dataset.manifest_sha256": digest}
    if name is not None:
        tags["dataset"] = name
    mlflow.set_tags(tags)
    if isinstance(manifest, (str, os.PathLike)):
        mlflow.log_artifact(str(manifest), artifact_path="dataset")
    elif manifest:
        log_json(dict(manifest), "dataset/manifest.json")
    return params


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The ``HEAD`` commit of the git work tree at ``path`` (``+dirty`` when modified).

    Returns ``None`` outside a git repository or without git, never raises: a tag is
    useful, not essential.
    """
    cwd = Path(path) if path is not None else Path.cwd()
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha or None


def log_git_commit(path: str | os.PathLike | None = None) -> str | None:
    """Tag the active run with ``git_commit`` (see :func:`git_commit`); returns it."""
    import mlflow

    sha = git_commit(path)
    if sha is not None:
        mlflow.set_tag("git_commit", sha)
    return sha


# -- metrics and artifacts -------------------------------------------------------------------
def _metric_key(name: str) -> str:
    """MLflow metric names allow ``[A-Za-z0-9_./ -]``; ``ndcg@10`` becomes ``ndcg_at_10``."""
    return re.sub(r"[^A-Za-z0-9_./ -]", "_", name.replace("@", "_at_"))


def log_metrics(metrics: Mapping[str, float], step: int | None = None, prefix: str = "") -> dict[str, float]:
    """Log numeric metrics (``ndcg@10`` -> ``ndcg_at_10``), skipping non-finite/non-numeric ones."""
    import mlflow

    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            continue
        if not np.isfinite(v):
            continue
        out[_metric_key(prefix + k)] = float(v)
    if out:
        mlflow.log_metrics(out, step=step)
    return out


def _log_file(write: Any, artifact_file: str) -> None:
    import mlflow

    rel = Path(artifact_file)
    with tempfile.TemporaryDirectory(prefix="recsys-artifact-") as d:
        local = Path(d) / rel.name
        write(local)
        mlflow.log_artifact(str(local), artifact_path=str(rel.parent) if str(rel.parent) != "." else None)


def log_json(obj: Any, artifact_file: str) -> None:
    """Log a JSON-serialisable object as an artifact file (e.g. ``config.json``), via ``mlflow.log_dict``."""
    import mlflow

    mlflow.log_dict(json.loads(json.dumps(obj, default=str)), artifact_file)


def log_npz(artifact_file: str, **arrays: np.ndarray) -> None:
    """Log arrays as one ``.npz`` artifact (no pickle), e.g. ``factors.npz``."""
    _log_file(lambda p: save_npz(p, **arrays), artifact_file)


def log_figure(fig: Any, artifact_file: str, dpi: int = 120) -> None:
    """Log a matplotlib figure as a PNG artifact (``mlflow.log_figure``) and close it (frees the memory)."""
    import matplotlib.pyplot as plt
    import mlflow

    try:
        mlflow.log_figure(fig, artifact_file, save_kwargs={"dpi": dpi, "bbox_inches": "tight"})
    finally:
        plt.close(fig)


def log_file(local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
    """Log an existing file (e.g. an id map parquet) under ``artifact_path``."""
    import mlflow

    mlflow.log_artifact(str(local_path), artifact_path=artifact_path)


# -- the training protocol's tracking ----------------------------------------------------------
class TrackingCallbacks(Callbacks):
    """Log the training protocol to the active MLflow run (the protocol itself does no I/O).

    Each tuning trial becomes a nested run with its params and validation curve
    (``valid_*`` per iteration); the parent gets the trials table (``tuning/trials.json``),
    the best trial's curve and ``best_valid_<metric>``; epochs of a single fit (the
    two-tower) are logged on the parent as ``epoch_*``; the test metrics as ``test_*``.
    """

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self._trial: contextlib.ExitStack | None = None
        self._run_id: str | None = None

    def trial_started(self, number: int, params: Mapping[str, Any]) -> None:
        import mlflow

        stack = contextlib.ExitStack()
        run = stack.enter_context(start_run(mlflow.get_tracking_uri(), "nested", run_name=f"trial-{number}",
                                            nested=True, tags={"model": self.model_name}))
        self._trial, self._run_id = stack, run.info.run_id
        log_config(params)

    def evaluated(self, step: int, metrics: Mapping[str, float]) -> None:
        log_metrics(metrics, step=step, prefix="valid_" if self._trial is not None else "epoch_")

    def trial_finished(self, trial: Any) -> None:
        if self._trial is None:
            return
        log_metrics({"best_valid_score": trial.score, "best_iteration": trial.best_iteration or 0})
        import mlflow

        mlflow.set_tag("trial_state", getattr(trial, "state", "complete"))  # pruned / stopped by the budget
        trial.run_id = self._run_id
        self._trial.close()
        self._trial = self._run_id = None

    def selected(self, trials: Sequence[Any], best: Any, metric: str) -> None:
        table = [{"trial": t.number, **t.params, "score": t.score, "best_iteration": t.best_iteration,
                  "fit_seconds": t.fit_seconds, "run_id": t.run_id} for t in trials]
        log_json({"metric": metric, "trials": table}, "tuning/trials.json")
        for h in best.history:
            log_metrics({k: v for k, v in h.items() if k != "iteration"}, step=int(h["iteration"]), prefix="valid_")
        log_metrics({"best_valid_" + metric: best.score, "n_trials": len(trials)})
        if any(getattr(t, "distributions", None) for t in trials):  # a TPE search: its plots and importance
            self._log_study(trials)

    def _log_study(self, trials: Sequence[Any]) -> None:
        """``tuning/param_importance.json`` and the optimisation-history / importance plots."""
        log_metrics({"n_trials_pruned": sum(getattr(t, "state", "") == "pruned" for t in trials)})
        importances = autotune.param_importances(trials)
        log_json(importances, "tuning/param_importance.json")
        for name, fig in autotune.study_figures(trials, importances).items():
            log_figure(fig, f"tuning/{name}.png")

    def tested(self, metrics: Mapping[str, float]) -> None:
        log_metrics(metrics, prefix="test_")

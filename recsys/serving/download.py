"""Fetching a bundle that was logged to MLflow as a retriever model.

:func:`download_bundle` copies the model's artifacts to a local folder and
:func:`find_bundle` finds the bundle directory inside them; :meth:`Retriever.load
<recsys.serving.retriever.Retriever.load>` uses both for ``models:/`` and ``runs:/`` URIs
and owns (and later deletes) the temporary folder when the caller gives none.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from recsys.errors import BundleError


def download_bundle(uri: str, tracking_uri: str | None = None, dst_path: str | os.PathLike | None = None) -> Path:
    """Download an MLflow model logged by :func:`recsys.serving.mlflow_model.log_retriever_model`
    and return the bundle directory inside it.

    Without ``dst_path`` the files go to a new temporary folder that the caller owns
    (delete it once nothing maps the index any more).
    """
    import mlflow

    dst = Path(dst_path) if dst_path is not None else Path(tempfile.mkdtemp(prefix="recsys-bundle-"))
    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri))
    except Exception as e:  # noqa: BLE001 - MLflow raises many types; one clear error for the caller
        raise BundleError(f"cannot download {uri}: {e}") from e
    return find_bundle(local)


def find_bundle(model_dir: str | os.PathLike) -> Path:
    """The bundle directory inside a downloaded MLflow model (``artifacts/<name>/``)."""
    model_dir = Path(model_dir)
    for candidate in [model_dir, *sorted(model_dir.glob("artifacts/*")), *sorted(model_dir.rglob("manifest.json"))]:
        d = candidate.parent if candidate.name == "manifest.json" else candidate
        if (d / "manifest.json").is_file() and any(d.glob("*.ann")):
            return d
    raise BundleError(f"{model_dir} holds no recsys bundle (no manifest.json with .ann files); "
                      "was the model logged with log_retriever_model?")

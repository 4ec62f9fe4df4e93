"""The retriever as an MLflow pyfunc model ("models from code", bundle files as artifacts).

Current MLflow refuses to load pickled Python models by default, so the model is logged
from code (:mod:`recsys.serving.pyfunc_entry`) and its whole state is the bundle
directory, logged as the artifact ``bundle``. ``load_context`` verifies the checksums
like :meth:`Retriever.load` does. The serving environment must have ``recsys``
installed (e.g. ``mlflow models serve --env-manager local`` from the project venv).

Signature
---------
Input: a table, one request per row; which columns are set picks the query:

==========  =================  ==============================================================
column      type               meaning
==========  =================  ==============================================================
user_id     string (optional)  recommend for this user (unknown users: fallback, see below)
history     string (optional)  comma-separated item ids the user interacted with ("1,50,260");
                               folds in a vector for an unknown user, or alone (no user_id)
                               for an anonymous one
item_id     string (optional)  similar items to this item (when neither of the above)
==========  =================  ==============================================================

Params: ``k`` (int, default 10), ``exclude_seen`` (bool, default true).

Output: long format, one row per recommended item: ``row`` (int, the input row),
``rank`` (int, 1-based), ``item_id`` (string), ``score`` (double). Unfillable slots are
omitted. Example HTTP request to ``mlflow models serve``::

    curl -X POST localhost:5001/invocations -H 'Content-Type: application/json' \\
      -d '{"dataframe_records": [{"user_id": "1"}], "params": {"k": 5}}'
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from recsys.errors import InputError
from recsys.serving.reader import verify_bundle

log = logging.getLogger(__name__)

ENTRY = Path(__file__).with_name("pyfunc_entry.py")
_PINNED = ("numpy", "scipy", "pandas", "polars", "pyarrow", "annoy", "mlflow")


def signature() -> ModelSignature:
    """Input/output schema and params of the retriever model (see the module docstring)."""
    inputs = Schema([
        ColSpec("string", "user_id", required=False),
        ColSpec("string", "history", required=False),
        ColSpec("string", "item_id", required=False),
    ])
    outputs = Schema([ColSpec("long", "row"), ColSpec("long", "rank"), ColSpec("string", "item_id"),
                      ColSpec("double", "score")])
    params = ParamSchema([ParamSpec("k", "long", 10), ParamSpec("exclude_seen", "boolean", True)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def _present(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, float) and np.isnan(v):
        return False
    return True


def _split_history(v: Any) -> list[str] | None:
    """``"1, 50,260"`` -> ``["1", "50", "260"]``; a list passes through (Python callers)."""
    if not _present(v):
        return None
    parts = v.split(",") if isinstance(v, str) else [str(x) for x in v]
    return [p.strip() for p in parts if p.strip()] or None


class RetrieverPyfunc(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper: ``load_context`` loads the bundle, ``predict`` answers a table."""

    def load_context(self, context: Any) -> None:
        from recsys.serving.retriever import Retriever

        self.retriever = Retriever.load(context.artifacts["bundle"])

    # no type hints on predict: MLflow would try to derive a (wrong) signature from them
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  # noqa: ANN001
        """One output row per recommended item; see the module docstring for the schema."""
        params = params or {}
        k = int(params.get("k", 10))
        exclude_seen = bool(params.get("exclude_seen", True))
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if not {"user_id", "history", "item_id"} & set(df.columns):
            raise InputError("the input needs a user_id, history or item_id column")
        out = []
        for row, rec in enumerate(df.to_dict("records")):
            user, hist, item = rec.get("user_id"), rec.get("history"), rec.get("item_id")
            hist = _split_history(hist)
            r = self.retriever
            if _present(user):
                ids, scores = r.recommend(str(user), k=k, exclude_seen=exclude_seen, history=hist)
            elif hist:
                ids, scores = r.recommend_from_history(hist, k=k, exclude_seen=exclude_seen, ignore_unknown=True)
            elif _present(item):
                ids, scores = r.similar_items(str(item), k=k)
            else:
                raise InputError(f"row {row} has no user_id, history or item_id")
            for rank, (i, s) in enumerate(zip(ids, scores), start=1):
                if i is not None:
                    out.append((row, rank, i, float(s)))
        return pd.DataFrame(out, columns=["row", "rank", "item_id", "score"]).astype(
            {"row": "int64", "rank": "int64", "item_id": "str", "score": "float64"})


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for name in _PINNED:
        try:
            reqs.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            reqs.append(name)
    return reqs


def log_retriever_model(bundle_dir: str | os.PathLike, registered_model_name: str | None = None,
                        artifact_path: str = "retriever", alias: str | None = None) -> Any:
    """Log a verified bundle as a pyfunc model in the active MLflow run (and register it).

    Parameters
    ----------
    bundle_dir : path
        A bundle directory (or a root with ``latest``); verified before logging.
    registered_model_name : str, optional
        Register a new version of this model in the Model Registry.
    artifact_path : str
        Name of the model inside the run (``runs:/<run_id>/<artifact_path>``).
    alias : str, optional
        Registry alias to point at the new version (e.g. ``"champion"``); needs
        ``registered_model_name``. Whether a model becomes champion is the caller's
        decision (champion comparison), so nothing is aliased by default.

    Returns
    -------
    mlflow.models.model.ModelInfo
        ``.model_uri`` and, when registered, ``.registered_model_version``.
    """
    from recsys.serving.versions import resolve_bundle

    bundle = resolve_bundle(bundle_dir)
    manifest = verify_bundle(bundle)
    if alias is not None and registered_model_name is None:
        raise InputError("an alias needs registered_model_name")
    info = mlflow.pyfunc.log_model(
        name=artifact_path,
        python_model=str(ENTRY),
        artifacts={"bundle": str(bundle)},
        signature=signature(),
        pip_requirements=_pip_requirements(),
        registered_model_name=registered_model_name,
        metadata={"bundle_version": manifest["version"], "similarity": manifest["similarity"],
                  "n_items": manifest["n_items"], "recall": manifest["quality_gate"]["recall"]},
    )
    if alias is not None:
        mlflow.MlflowClient().set_registered_model_alias(registered_model_name, alias, info.registered_model_version)
    log.info("logged retriever model %s (bundle %s)", info.model_uri, manifest["version"])
    return info

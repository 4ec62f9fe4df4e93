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

Params: ``k`` (int, default 10; capped at the catalogue size), ``exclude_seen`` (bool,
default true).

Output: long format, one row per recommended item: ``row`` (int, the input row),
``rank`` (int, 1-based), ``item_id`` (string), ``score`` (double), ``error`` (string,
empty). Unfillable slots are omitted. A row that cannot be answered (unknown item for
``item_id``, a malformed id, a history over the limit) does not fail the request: it gets
one output row with ``rank`` 0, empty ``item_id``, ``score`` 0 and the reason in
``error`` (no nulls, so the JSON stays strict). Example HTTP request to
``mlflow models serve``::

    curl -X POST localhost:5001/invocations -H 'Content-Type: application/json' \\
      -d '{"dataframe_records": [{"user_id": "1"}], "params": {"k": 5}}'

Limits (:data:`DEFAULT_LIMITS`, per model through ``log_retriever_model(limits=...)``):
rows per request, ``k``, items per history, characters per id field, and request body
bytes. A request over a limit, or with bad params, is refused as a whole with HTTP 400
(413 for the body) and a message naming the limit. Responses never carry a stack trace or
a server path: MLflow's scoring server attaches ``traceback.format_exc()`` to any
non-MLflow exception (and to CSV/Parquet parse errors), so :func:`harden_scoring_server`
(called from the model's entry file, in the serving process only) strips it and caps
echoed messages; the trace goes to the server log instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.protos.databricks_pb2 import BAD_REQUEST
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from recsys.errors import InputError, RecsysError
from recsys.serving.reader import verify_bundle

log = logging.getLogger(__name__)

ENTRY = Path(__file__).with_name("pyfunc_entry.py")
_PINNED = ("numpy", "scipy", "pandas", "polars", "pyarrow", "annoy", "mlflow")
_COLUMNS = ["row", "rank", "item_id", "score", "error"]
_DTYPES = {"row": "int64", "rank": "int64", "item_id": "str", "score": "float64", "error": "str"}
_PATHLIKE = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\\/\s'\"]+){2,}")
_MAX_MESSAGE = 500

#: request limits of the served model: rows per request, k, items in one history,
#: characters in one id field, bytes of a request body. Big enough for any real caller
#: (k is capped at the catalogue anyway), small enough that one request cannot exhaust
#: the server.
DEFAULT_LIMITS: dict[str, int] = {"max_rows": 1000, "max_k": 1000, "max_history": 1000, "max_id_chars": 256,
                                  "max_payload_bytes": 4 << 20}
_SERVER_LIMITS = dict(DEFAULT_LIMITS)  # what the hardened scoring server enforces on bodies


def signature() -> ModelSignature:
    """Input/output schema and params of the retriever model (see the module docstring)."""
    inputs = Schema([
        ColSpec("string", "user_id", required=False),
        ColSpec("string", "history", required=False),
        ColSpec("string", "item_id", required=False),
    ])
    outputs = Schema([ColSpec("long", "row"), ColSpec("long", "rank"), ColSpec("string", "item_id"),
                      ColSpec("double", "score"), ColSpec("string", "error")])
    params = ParamSchema([ParamSpec("k", "long", 10), ParamSpec("exclude_seen", "boolean", True)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def check_limits(limits: Mapping[str, Any] | None) -> dict[str, int]:
    """:data:`DEFAULT_LIMITS` updated with ``limits``; unknown keys or non-positive values refused."""
    out = dict(DEFAULT_LIMITS)
    for key, value in dict(limits or {}).items():
        if key not in DEFAULT_LIMITS:
            raise InputError(f"unknown serving limit {key!r}; known: {sorted(DEFAULT_LIMITS)}")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InputError(f"serving limit {key} must be a positive int, got {value!r}")
        out[key] = value
    return out


def public_message(text: str) -> str:
    """A message safe to send to a client: server paths masked, length capped."""
    text = _PATHLIKE.sub("<path>", str(text))
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _refuse(message: str) -> MlflowException:
    """A whole-request refusal: MLflow's server answers an MlflowException with HTTP 400
    and its message only (any other exception gets a traceback attached)."""
    return MlflowException(public_message(message), error_code=BAD_REQUEST)


def _present(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, float) and np.isnan(v):
        return False
    return True


def _id(v: Any, what: str, max_chars: int) -> str:
    """One external id from a request cell: a str (or an int from Python callers)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (str, int, np.integer)):
        raise InputError(f"{what} must be a string id, got {type(v).__name__}")
    s = str(v).strip()
    if not s:
        raise InputError(f"{what} is empty")
    if len(s) > max_chars:
        raise InputError(f"{what} has {len(s)} characters; the limit is {max_chars}")
    return s


def _split_history(v: Any, limits: Mapping[str, int]) -> list[str] | None:
    """``"1, 50,260"`` -> ``["1", "50", "260"]``; a list passes through (Python callers)."""
    if not _present(v):
        return None
    if isinstance(v, str):
        parts = v.split(",", limits["max_history"])  # at most max_history + 1 parts: never a huge list
    elif isinstance(v, (list, tuple, np.ndarray)):
        parts = list(v)
    else:
        raise InputError(f"history must be a comma-separated string of item ids, got {type(v).__name__}")
    if len(parts) > limits["max_history"]:
        raise InputError(f"history has more than {limits['max_history']} items; send the most recent ones")
    ids = [_id(p, "a history item", limits["max_id_chars"]) for p in parts if not (isinstance(p, str) and not p.strip())]
    return ids or None


class RetrieverPyfunc(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper: ``load_context`` loads the bundle, ``predict`` answers a table."""

    limits: dict[str, int] = DEFAULT_LIMITS

    def load_context(self, context: Any) -> None:
        from recsys.serving.retriever import Retriever

        self.limits = check_limits(getattr(context, "model_config", None))
        _SERVER_LIMITS.update(self.limits)
        self.retriever = Retriever.load(context.artifacts["bundle"])

    def _params(self, params: Mapping[str, Any] | None) -> tuple[int, bool]:
        params = dict(params or {})
        k, exclude_seen = params.get("k", 10), params.get("exclude_seen", True)
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise _refuse(f"params.k must be a positive integer, got {k!r:.40}")
        if k > self.limits["max_k"]:
            raise _refuse(f"params.k = {k} is over the limit of {self.limits['max_k']}; ask for fewer items")
        if not isinstance(exclude_seen, (bool, np.bool_)):
            raise _refuse(f"params.exclude_seen must be true or false, got {exclude_seen!r:.40}")
        return int(k), bool(exclude_seen)

    def _answer(self, rec: Mapping[str, Any], k: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
        """One request row -> (ids, scores); raises RecsysError for a bad row."""
        lim, r = self.limits, self.retriever
        user, item = rec.get("user_id"), rec.get("item_id")
        hist = _split_history(rec.get("history"), lim)
        if _present(user):
            return r.recommend(_id(user, "user_id", lim["max_id_chars"]), k=k, exclude_seen=exclude_seen, history=hist)
        if hist:
            return r.recommend_from_history(hist, k=k, exclude_seen=exclude_seen, ignore_unknown=True)
        if _present(item):
            return r.similar_items(_id(item, "item_id", lim["max_id_chars"]), k=k)
        raise InputError("the row has no user_id, history or item_id")

    # no type hints on predict: MLflow would try to derive a (wrong) signature from them
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  # noqa: ANN001
        """One output row per recommended item, one error row per failed input row."""
        k, exclude_seen = self._params(params)
        try:
            df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        except (TypeError, ValueError) as e:
            raise _refuse(f"the input is not a table of user_id / history / item_id: {e}") from e
        if len(df) > self.limits["max_rows"]:
            raise _refuse(f"the request has {len(df)} rows; the limit is {self.limits['max_rows']}: split it")
        if not {"user_id", "history", "item_id"} & set(map(str, df.columns)):
            raise _refuse("the input needs a user_id, history or item_id column")
        out: list[tuple[int, int, str, float, str]] = []
        for row, rec in enumerate(df.to_dict("records")):
            try:
                ids, scores = self._answer(rec, k, exclude_seen)
            except RecsysError as e:
                out.append((row, 0, "", 0.0, public_message(f"row {row}: {e}")))
                continue
            except Exception:  # noqa: BLE001 - one bad row must not fail the batch; the trace stays in the log
                log.exception("row %d of a request failed", row)
                out.append((row, 0, "", 0.0, f"row {row}: internal error answering this row (see the server log)"))
                continue
            out.extend((row, rank, i, float(s), "") for rank, (i, s) in enumerate(zip(ids, scores), start=1)
                       if i is not None)
        return pd.DataFrame(out, columns=_COLUMNS).astype(_DTYPES)


def harden_scoring_server() -> bool:
    """Make MLflow's scoring server (if this process runs one) answer without tracebacks.

    Wraps its ``invocations`` function: bodies over ``max_payload_bytes`` get HTTP 413
    before they are parsed; an ``MlflowException`` loses its ``stack_trace`` and has
    paths masked and its echo of the request capped; any other exception becomes a
    400 naming only its type. Idempotent; a no-op (False) outside ``mlflow models serve``.
    Checked against MLflow 3.x by ``tests/adversarial/test_serving_pyfunc.py``.
    """
    srv = sys.modules.get("mlflow.pyfunc.scoring_server")
    if srv is None or getattr(srv.invocations, "_recsys_hardened", False):
        return srv is not None
    original = srv.invocations

    def invocations(data, content_type, model, input_schema):  # type: ignore[no-untyped-def]  # noqa: ANN001
        limit = _SERVER_LIMITS["max_payload_bytes"]
        if data is not None and len(data) > limit:
            body = {"error_code": "INVALID_PARAMETER_VALUE",
                    "message": f"the request body has {len(data)} bytes; the limit is {limit}: split the request"}
            return srv.InvocationsResponse(response=json.dumps(body), status=413, mimetype="application/json")
        try:
            return original(data, content_type, model, input_schema)
        except MlflowException as e:
            e.json_kwargs.pop("stack_trace", None)
            e.message = public_message(e.message)
            raise
        except Exception as e:  # noqa: BLE001 - never let a traceback reach the client
            log.warning("request refused: %s", e, exc_info=True)
            raise MlflowException(f"malformed request ({type(e).__name__}); see the model's input signature",
                                  error_code=BAD_REQUEST) from None

    invocations._recsys_hardened = True  # type: ignore[attr-defined]
    srv.invocations = invocations
    return True


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
                        artifact_path: str = "retriever", alias: str | None = None,
                        limits: Mapping[str, int] | None = None) -> Any:
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
    from recsys.tracking import validate_name

    bundle = resolve_bundle(bundle_dir)
    manifest = verify_bundle(bundle)
    if alias is not None and registered_model_name is None:
        raise InputError("an alias needs registered_model_name")
    if registered_model_name is not None:
        validate_name(registered_model_name, "registered model name")
    model_config = check_limits(limits)
    info = mlflow.pyfunc.log_model(
        name=artifact_path,
        python_model=str(ENTRY),
        artifacts={"bundle": str(bundle)},
        signature=signature(),
        pip_requirements=_pip_requirements(),
        registered_model_name=registered_model_name,
        model_config=model_config,
        metadata={"bundle_version": manifest["version"], "similarity": manifest["similarity"],
                  "n_items": manifest["n_items"], "recall": manifest["quality_gate"]["recall"]},
    )
    if alias is not None:
        mlflow.MlflowClient().set_registered_model_alias(registered_model_name, alias, info.registered_model_version)
    log.info("logged retriever model %s (bundle %s)", info.model_uri, manifest["version"])
    return info

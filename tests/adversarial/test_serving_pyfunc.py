"""Defects 5 and 9 of issue 22: the served pyfunc has request limits, answers per row, and
never sends a stack trace or a server path.

Before: any model-side error became a generic 400 whose ``stack_trace`` exposed server
paths, one bad row failed the whole batch, and one request with ``k = 10**9`` could
exhaust the server's memory.
"""

from __future__ import annotations

import json
import random
import re
import urllib.error
import urllib.request

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from recsys.errors import InputError
from recsys.serving.mlflow_model import DEFAULT_LIMITS, check_limits, log_retriever_model, public_message
from recsys.serving.retriever import Retriever
from serving_cases import N_ITEMS, small_bundle
from serving_fixtures import mlflow_serve

LIMITS = {"max_rows": 50, "max_k": 2000, "max_history": 20, "max_id_chars": 32, "max_payload_bytes": 64_000}
_LEAK = re.compile(r"Traceback|File \"|stack_trace|/work/|/tmp/|site-packages|\.py\b")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A small bundle logged (with tight limits) and registered as ``adv@champion``."""
    tmp = tmp_path_factory.mktemp("pyfunc")
    info = small_bundle(tmp / "root", norm_ranged=False)
    uri = f"sqlite:///{tmp}/mlruns.db"
    old = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("adversarial-serving")
    try:
        with mlflow.start_run():
            log_retriever_model(info.path, registered_model_name="adv", alias="champion", limits=LIMITS)
        model = mlflow.pyfunc.load_model("models:/adv@champion")
    finally:
        mlflow.set_tracking_uri(old)
    return dict(uri=uri, info=info, model=model, tmp=tmp)


def _expected(served, user, k):
    return list(Retriever.load(served["info"].path).recommend(user, k=k)[0])


def test_one_bad_row_does_not_fail_the_batch(served):
    df = pd.DataFrame([{"user_id": "u3"}, {"item_id": "no-such-item"}, {"history": "i1,i2"},
                       {"user_id": None, "history": None, "item_id": None}, {"item_id": "x" * 100}])
    out = served["model"].predict(df, params={"k": 4})
    assert list(out.columns) == ["row", "rank", "item_id", "score", "error"]
    assert out[out.row == 0].item_id.tolist() == _expected(served, "u3", 4)
    assert (out[out.row.isin([0, 2])].error == "").all() and len(out[out.row == 2]) == 4
    bad = out[out.row.isin([1, 3, 4])].set_index("row")
    assert bad["rank"].tolist() == [0, 0, 0] and (bad.item_id == "").all() and (bad.score == 0).all()
    assert "unknown item id" in bad.error[1] and "no user_id, history or item_id" in bad.error[3]
    assert "limit is 32" in bad.error[4]


def test_k_beyond_the_catalogue_is_capped_and_k_over_the_limit_is_refused(served):
    out = served["model"].predict(pd.DataFrame([{"user_id": "nobody"}]), params={"k": 1500})
    assert len(out) == N_ITEMS  # 1500 asked, 1200 items exist
    with pytest.raises(MlflowException, match="params.k = 2001 is over the limit of 2000"):
        served["model"].predict(pd.DataFrame([{"user_id": "u1"}]), params={"k": 2001})
    with pytest.raises(MlflowException, match="positive integer"):
        served["model"].predict(pd.DataFrame([{"user_id": "u1"}]), params={"k": 0})


def test_too_many_rows_or_a_too_long_history_are_refused_with_the_limit(served):
    with pytest.raises(MlflowException, match="51 rows; the limit is 50"):
        served["model"].predict(pd.DataFrame([{"user_id": "u1"}] * 51))
    hist = ",".join(f"i{i}" for i in range(25))
    out = served["model"].predict(pd.DataFrame([{"history": hist}, {"user_id": "u1"}]), params={"k": 2})
    assert "more than 20 items" in out.error[0] and len(out[out.row == 1]) == 2


def test_limits_are_validated_when_the_model_is_logged():
    assert check_limits(None) == DEFAULT_LIMITS
    with pytest.raises(InputError, match="unknown serving limit"):
        check_limits({"max_rowz": 5})
    with pytest.raises(InputError, match="positive int"):
        check_limits({"max_k": 0})


def test_messages_sent_to_clients_mask_server_paths():
    msg = public_message("cannot read /srv/recsys/runs/default/bundles/x/items.parquet: boom")
    assert "/srv" not in msg and "<path>" in msg and "boom" in msg
    assert len(public_message("x" * 10_000)) <= 500


# -- over HTTP ---------------------------------------------------------------------------
def _post(port: int, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def _malformed(rng: random.Random) -> tuple[bytes, str]:
    """One hostile request: bad JSON, wrong shapes and types, huge k, limits, other formats."""
    cases = [
        lambda: (b"{not json", "application/json"),
        lambda: (b"\xff\xfe\x00garbage", "application/json"),
        lambda: (b"[1, 2, 3]", "application/json"),
        lambda: (json.dumps({"dataframe_records": [{"user_id": "u1"}], "params": {"k": 10**9}}).encode(), "application/json"),
        lambda: (json.dumps({"dataframe_records": [{"user_id": "u1"}], "params": {"k": -rng.randint(0, 9)}}).encode(), "application/json"),
        lambda: (json.dumps({"dataframe_records": [{"user_id": "u1"}], "params": {"k": "many"}}).encode(), "application/json"),
        lambda: (json.dumps({"dataframe_records": [{"user_id": "u1"}], "params": {"k": 10**30}}).encode(), "application/json"),
        lambda: (json.dumps({"dataframe_records": [{"user_id": "u1"}] * 51}).encode(), "application/json"),
        lambda: (json.dumps({"dataframe_records": [{"nothing": 1}]}).encode(), "application/json"),
        lambda: (json.dumps({"dataframe_records": [{"user_id": {"a": [1]}}]}).encode(), "application/json"),
        lambda: (json.dumps({"dataframe_records": [{"item_id": "zz" * rng.randint(1, 40)}]}).encode(), "application/json"),
        lambda: (json.dumps({"dataframe_records": [{"history": ",".join(["i1"] * 500)}]}).encode(), "application/json"),
        lambda: (json.dumps({"dataframe_split": {"columns": ["user_id"], "data": "oops"}}).encode(), "application/json"),
        lambda: (json.dumps({"inputs": {"user_id": [[1, 2], None]}}).encode(), "application/json"),
        lambda: (json.dumps({"instances": 7}).encode(), "application/json"),
        lambda: (b"user_id,history\n\"u1,\"\"\n", "text/csv"),
        lambda: (b"\x00\x01 not parquet", "application/x-parquet"),
        lambda: (b"A" * (LIMITS["max_payload_bytes"] + 1), "application/json"),
        lambda: (bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))), "application/json"),
        lambda: (b"{}", "text/plain"),
    ]
    return rng.choice(cases)()


def test_a_served_model_survives_1000_malformed_requests_without_leaking_paths_or_traces(served):
    with mlflow_serve(served["uri"], "models:/adv@champion", served["tmp"]) as port:
        rng = random.Random(0)
        statuses: dict[int, int] = {}
        for i in range(1000):
            status, text = _post(port, *_malformed(rng))
            statuses[status] = statuses.get(status, 0) + 1
            assert status < 500, (i, status, text[:500])
            assert not _LEAK.search(text), (i, status, text[:500])
        assert statuses.get(413) and statuses.get(400)  # size limit and refusals both exercised
        body = json.dumps({"dataframe_records": [{"user_id": "u3"}, {"item_id": "nope"}], "params": {"k": 5}}).encode()
        status, text = _post(port, body)
    rows = json.loads(text)["predictions"]
    assert status == 200
    assert [r["item_id"] for r in rows if r["row"] == 0] == _expected(served, "u3", 5)
    assert [r["rank"] for r in rows if r["row"] == 1] == [0] and "unknown item id" in rows[-1]["error"]

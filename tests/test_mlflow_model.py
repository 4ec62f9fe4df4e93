"""The retriever as an MLflow pyfunc model: log, register, load, and serve over HTTP."""

from __future__ import annotations

import gc
import json
import tempfile
import urllib.request

import mlflow
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsys import Retriever
from recsys.errors import ClosedError
from recsys.serving.bundle import IndexConfig, export_bundle
from recsys.serving.mlflow_model import log_retriever_model, signature
from serving_fixtures import mlflow_serve

N_ITEMS, N_USERS, DIM = 500, 40, 8


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A small bundle logged and registered as ``recsys@champion`` in a sqlite store."""
    tmp = tmp_path_factory.mktemp("mlflow")
    rng = np.random.default_rng(0)
    seen = sp.random(N_USERS, N_ITEMS, density=0.02, format="csr", random_state=0)
    info = export_bundle(tmp / "root", item_vectors=rng.normal(size=(N_ITEMS, DIM)).astype(np.float32),
                         item_ids=[f"m{i}" for i in range(N_ITEMS)], seen=seen,
                         user_vectors=rng.normal(size=(N_USERS, DIM)).astype(np.float32),
                         user_ids=[str(u) for u in range(N_USERS)], config=IndexConfig(n_trees=5, n_jobs=1))
    uri = f"sqlite:///{tmp}/mlruns.db"
    old = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("retriever-test")
    try:
        with mlflow.start_run() as run:
            model_info = log_retriever_model(info.path, registered_model_name="recsys", alias="champion")
    finally:
        mlflow.set_tracking_uri(old)
    return dict(uri=uri, run_id=run.info.run_id, info=info, model_info=model_info, tmp=tmp)


def _expected(info, user: str, k: int) -> list[str]:
    return list(Retriever.load(info.path).recommend(user, k=k)[0])


def test_pyfunc_load_and_predict_matches_the_retriever(registered):
    mlflow.set_tracking_uri(registered["uri"])
    model = mlflow.pyfunc.load_model("models:/recsys@champion")
    df = pd.DataFrame([{"user_id": "3"}, {"user_id": "stranger"}, {"history": "m1, m2"}, {"item_id": "m7"}])
    out = model.predict(df, params={"k": 4})
    assert list(out.columns) == ["row", "rank", "item_id", "score", "error"]
    assert out.groupby("row").size().tolist() == [4, 4, 4, 4] and (out.error == "").all()
    assert out[out.row == 0].item_id.tolist() == _expected(registered["info"], "3", 4)
    assert out[out["row"] == 0]["rank"].tolist() == [1, 2, 3, 4]
    r = Retriever.load(registered["info"].path)
    assert out[out.row == 2].item_id.tolist() == list(r.recommend_from_history(["m1", "m2"], k=4)[0])
    assert out[out.row == 3].item_id.tolist() == list(r.similar_items("m7", k=4)[0])


def test_signature_documents_inputs_outputs_and_params(registered):
    sig = signature()
    assert sig.inputs.input_names() == ["user_id", "history", "item_id"]
    assert sig.outputs.input_names() == ["row", "rank", "item_id", "score", "error"]
    assert {p.name: p.default for p in sig.params.params} == {"k": 10, "exclude_seen": True}
    meta = mlflow.models.Model.load(_local_model(registered))
    assert meta.signature == sig and meta.metadata["bundle_version"] == registered["info"].version


def _local_model(registered) -> str:
    mlflow.set_tracking_uri(registered["uri"])
    return mlflow.artifacts.download_artifacts(f"runs:/{registered['run_id']}/retriever",
                                               dst_path=str(registered["tmp"] / "dl"))


def test_retriever_loads_from_registry_alias_and_run_uris(registered):
    r = Retriever.load("models:/recsys@champion", tracking_uri=registered["uri"])
    assert r.version == registered["info"].version
    r2 = Retriever.load(f"runs:/{registered['run_id']}/retriever", tracking_uri=registered["uri"])
    assert list(r2.recommend("5", k=3)[0]) == _expected(registered["info"], "5", 3)


def test_a_downloaded_bundle_is_deleted_on_close_and_queries_are_then_refused(registered, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    r = Retriever.load("models:/recsys@champion", tracking_uri=registered["uri"])
    download = tmp_path / r.path.relative_to(tmp_path).parts[0]
    assert download.name.startswith("recsys-bundle-") and (r.path / "manifest.json").is_file()
    assert len(r.recommend("5", k=3)[0]) == 3
    with r:
        pass
    assert r.closed and not download.exists()
    with pytest.raises(ClosedError, match="closed; load the bundle again"):
        r.recommend("5", k=3)
    r.close()  # twice is harmless


def test_a_downloaded_bundle_is_deleted_when_the_retriever_is_garbage_collected(registered, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    r = Retriever.load("models:/recsys@champion", tracking_uri=registered["uri"])
    download = tmp_path / r.path.relative_to(tmp_path).parts[0]
    assert download.is_dir()
    del r
    gc.collect()
    assert not download.exists()


def test_closing_never_deletes_a_bundle_the_retriever_does_not_own(registered, tmp_path):
    given = tmp_path / "given"
    with Retriever.load("models:/recsys@champion", tracking_uri=registered["uri"], dst_path=given) as r:
        kept = r.path
    with Retriever.load(registered["info"].path) as local:
        pass
    assert (kept / "manifest.json").is_file() and (registered["info"].path / "manifest.json").is_file()
    assert local.closed and Retriever.load(kept).version == registered["info"].version


def test_a_failed_download_leaves_no_temporary_directory(registered, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(Exception, match="cannot download"):
        Retriever.load("models:/no-such-model@champion", tracking_uri=registered["uri"])
    assert list(tmp_path.iterdir()) == []


def test_mlflow_models_serve_answers_http(registered):
    with mlflow_serve(registered["uri"], "models:/recsys@champion", registered["tmp"]) as port:
        body = json.dumps({"dataframe_records": [{"user_id": "3"}, {"user_id": "nobody"}], "params": {"k": 5}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.loads(resp.read())
    rows = answer["predictions"]
    assert [r["item_id"] for r in rows if r["row"] == 0] == _expected(registered["info"], "3", 5)
    assert len([r for r in rows if r["row"] == 1]) == 5 and rows[0]["rank"] == 1

"""Shared helpers for the index / bundle / retriever / MLflow-model tests.

Real vectors: a quick implicit ALS trained on the embedded MovieLens latest-small
training split (a few seconds on one core), so the recall gate and the exclusion tests
run on the geometry of real embeddings, not on Gaussian noise.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.data import Dataset

ALS_PARAMS = dict(factors=32, regularization=0.05, alpha=1.0, iterations=8, random_state=0)


@dataclass
class RealVectors:
    dataset: Dataset
    train: sp.csr_matrix
    user_vectors: np.ndarray
    item_vectors: np.ndarray
    model: object  # implicit.cpu.als.AlternatingLeastSquares


def train_quick_als(dataset: Dataset) -> RealVectors:
    """implicit ALS on ``dataset``'s train split; returns float32 factors."""
    from threadpoolctl import threadpool_limits
    from implicit.cpu.als import AlternatingLeastSquares

    train = dataset.matrix("train").tocsr().astype(np.float32)
    model = AlternatingLeastSquares(**ALS_PARAMS, use_cg=False, num_threads=1)
    with threadpool_limits(1, "blas"):
        model.fit(train, show_progress=False)
    return RealVectors(dataset, train, np.asarray(model.user_factors, np.float32),
                       np.asarray(model.item_factors, np.float32), model)


@pytest.fixture(scope="module")
def real(ml_small) -> RealVectors:
    """Quick ALS vectors of ml_small (import this fixture into a test module)."""
    return train_quick_als(ml_small)


def export_real(root, real: RealVectors, **kw):
    """Export a bundle of the real ALS vectors with the ALS fold-in spec."""
    from recsys.serving.bundle import IndexConfig, export_bundle

    # norm_range_exact_max=0: every norm range is searched in its forest, so the recall
    # gate measures Annoy on real vectors (by default ranges this small are scanned)
    kw.setdefault("config", IndexConfig(n_trees=20, n_jobs=1, norm_range_exact_max=0))
    return export_bundle(
        root,
        item_vectors=real.item_vectors,
        item_ids=real.dataset.item_map,
        user_vectors=real.user_vectors,
        user_ids=real.dataset.user_map,
        seen=real.train,
        similarity="dot",
        foldin={"method": "als", "regularization": ALS_PARAMS["regularization"], "alpha": ALS_PARAMS["alpha"]},
        run_id="test-run",
        **kw,
    )


@contextlib.contextmanager
def mlflow_serve(tracking_uri: str, model_uri: str, cwd) -> Iterator[int]:
    """Run ``mlflow models serve`` for ``model_uri`` on a free localhost port; yield the port.

    Waits for ``/ping`` (a loaded 2-core CI box needs ~45 s) and stops the server after.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    # the server execs `uvicorn` from PATH: the venv's bin must come first
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": f"{mlflow_bin.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    # the log goes to a file: a pipe nobody drains blocks a chatty server once it is full
    log_file = open(Path(cwd) / f"serve-{port}.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen([str(mlflow_bin), "models", "serve", "-m", model_uri, "-h", "127.0.0.1", "-p", str(port),
                             "--env-manager", "local", "-w", "1"],
                            env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        deadline = time.time() + 150
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                out = (Path(cwd) / f"serve-{port}.log").read_text(errors="replace")
                pytest.fail(f"mlflow models serve did not come up: {out[-3000:]}")
            time.sleep(0.5)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()

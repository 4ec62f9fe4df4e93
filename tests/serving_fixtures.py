"""Shared helpers for the index / bundle / retriever / MLflow-model tests.

Real vectors: a quick implicit ALS trained on the embedded MovieLens latest-small
training split (a few seconds on one core), so the recall gate and the exclusion tests
run on the geometry of real embeddings, not on Gaussian noise.
"""

from __future__ import annotations

from dataclasses import dataclass

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

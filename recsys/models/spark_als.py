"""Implicit-feedback ALS on Spark (``pyspark.ml.recommendation.ALS``): the ``spark-als`` family.

Why a second ALS: ``implicit`` solves on one node, and a log whose user x item matrix
does not fit one node needs the blocked, distributed solve Spark ships. The family has
the layout of every vector model (``user_factors_``, ``item_factors_`` float32 by index),
so training protocol, tracking, export, index and serving treat it like ``als``.

Differences from ``als`` that matter when comparing them (docs/spark.md):

- Spark scales the L2 penalty by each user's (item's) number of interactions (ALS-WR,
  Zhou et al. 2008); implicit's ``regularization`` is unscaled. The same number is
  therefore a different penalty; tune it per family.
- Confidence is ``1 + alpha * r`` in both (the ``linear`` scheme); other weighting
  schemes are not offered here.
- Spark trains all iterations in one job: validation picks no best iteration
  (``iterative=False`` in the registry) and a new user is folded in by the mean of its
  items' vectors (the default of :class:`~recsys.models.base.FactorModel`), not by the
  exact ALS solve.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.errors import ConfigError
from recsys.models.base import FactorModel

log = logging.getLogger(__name__)


class SparkALS(FactorModel):
    """Implicit ALS trained by Spark MLlib.

    Parameters
    ----------
    factors : int
        Embedding dimension (Spark's ``rank``).
    regularization : float
        Spark's ``regParam`` (scaled per user/item by its interaction count).
    alpha : float
        Confidence scale: ``c = 1 + alpha * r``.
    iterations : int
        Spark's ``maxIter``.
    blocks : int
        User and item blocks of the distributed solve (0 = Spark's default, 10).
    master : str
        Spark master when no SparkSession is active (``local[*]``, ``spark://...``, ``yarn``).
    random_state : int
        Seed of the factor initialisation.
    """

    def __init__(self, factors: int = 64, regularization: float = 0.01, alpha: float = 1.0, iterations: int = 15,
                 blocks: int = 0, master: str = "local[*]", random_state: int = 42) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.blocks = blocks
        self.master = master
        self.random_state = random_state

    def _fit(self, user_items: sp.csr_matrix, **kwargs: Any) -> None:
        import pyarrow as pa
        from pyspark.ml.recommendation import ALS as _SparkALS

        from recsys.spark import spark_session

        for name in ("factors", "iterations"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if not self.regularization >= 0 or not self.alpha > 0:
            raise ConfigError(f"regularization must be >= 0 and alpha > 0, got {self.regularization!r}, {self.alpha!r}")
        if kwargs.get("validation") is not None:
            log.info("spark-als trains all %d iterations in one Spark job (no best-iteration selection)", self.iterations)
        t0 = time.perf_counter()
        spark = spark_session(self.master)
        coo = user_items.tocoo()
        table = pa.table({"u": pa.array(coo.row, pa.int32()), "i": pa.array(coo.col, pa.int32()),
                          "r": pa.array(coo.data, pa.float32())})
        df = spark.createDataFrame(table)
        extra = {"numUserBlocks": self.blocks, "numItemBlocks": self.blocks} if self.blocks else {}
        als = _SparkALS(rank=int(self.factors), maxIter=int(self.iterations), regParam=float(self.regularization),
                        alpha=float(self.alpha), implicitPrefs=True, seed=int(self.random_state), userCol="u", itemCol="i",
                        ratingCol="r", coldStartStrategy="drop", **extra)
        model = als.fit(df)
        self.user_factors_ = _dense(model.userFactors, user_items.shape[0], self.factors)
        self.item_factors_ = _dense(model.itemFactors, user_items.shape[1], self.factors)
        log.info("spark-als: %d users x %d items, %d interactions, %d factors, %d iterations in %.1fs on %s",
                 *user_items.shape, user_items.nnz, self.factors, self.iterations, time.perf_counter() - t0,
                 spark.sparkContext.master)


def _dense(factors: Any, n: int, d: int) -> np.ndarray:
    """Spark's (id, features) rows as an ``(n, d)`` float32 array (rows without data stay zero)."""
    t = factors.toArrow()
    out = np.zeros((n, d), np.float32)
    ids = t.column("id").to_numpy()
    if len(ids):
        out[ids] = np.asarray(t.column("features").to_pylist(), np.float32)
    return out

"""The Spark engine of the batch steps (``--engine spark``, ``[engine] name = "spark"``; docs/spark.md)."""

from __future__ import annotations

import os
from typing import Any

from recsys.config import EngineSection
from recsys.data.build import BuildConfig
from recsys.data.dataset import Dataset


def session_for(engine: EngineSection | None) -> Any:
    """The SparkSession of ``[engine]`` (an active one, e.g. spark-submit's, is reused)."""
    from recsys.spark import spark_session

    engine = engine or EngineSection(name="spark")
    return spark_session(engine.master, engine.conf)


def build_with_engine(config: BuildConfig, out: str | os.PathLike, engine: EngineSection | None,
                      previous: str | os.PathLike | None = None, reuse_ids: bool = True) -> Dataset:
    """The dataset directory of ``config`` built by the engine ``[engine]`` names.

    One place for ``recsys build-dataset`` and the dataset step of ``recsys run``, so both
    honour ``[engine]`` alike: polars on this node, or Spark (a bad Spark set-up raises
    :class:`~recsys.errors.ConfigError` naming the fix: exit code 2). The Spark build's
    result holds the manifest and id maps but no split tables: the driver never holds
    the whole pair table, and both callers only report or read the directory afterwards.
    """
    if engine is not None and engine.name == "spark":
        from recsys.data.spark_build import build_dataset_spark

        return build_dataset_spark(config, out, previous=previous, reuse_ids=reuse_ids, spark=session_for(engine), load=False)
    from recsys.data.build import build_dataset

    return build_dataset(config, out, previous=previous, reuse_ids=reuse_ids)


def batch_on_spark(master: str, data: Any, out: Any, **kwargs: Any) -> Any:
    """``recommend-batch --engine spark``: the one-node lists, scored by Spark tasks."""
    from recsys.serving.spark_batch import write_batch_topk_spark

    return write_batch_topk_spark(session_for(EngineSection(name="spark", master=master)), data, out, **kwargs)

"""The Spark engine of the batch steps (``--engine spark``, ``[engine] name = "spark"``; docs/spark.md)."""

from __future__ import annotations

import argparse
from typing import Any

from recsys.config import EngineSection
from recsys.data.build import BuildConfig
from recsys.data.dataset import Dataset


def session_for(engine: EngineSection | None) -> Any:
    """The SparkSession of ``[engine]`` (an active one, e.g. spark-submit's, is reused)."""
    from recsys.spark import spark_session

    engine = engine or EngineSection(name="spark")
    return spark_session(engine.master, engine.conf)


def build_on_spark(config: BuildConfig, args: argparse.Namespace, engine: EngineSection | None) -> Dataset:
    """``build-dataset`` on Spark: the dataset directory the polars engine writes."""
    from recsys.data.spark_build import build_dataset_spark

    spark = session_for(engine)
    return build_dataset_spark(config, args.out, previous=args.previous, reuse_ids=not args.fresh_ids, spark=spark)


def batch_on_spark(master: str, data: Any, out: Any, **kwargs: Any) -> Any:
    """``recommend-batch --engine spark``: the one-node lists, scored by Spark tasks."""
    from recsys.serving.spark_batch import write_batch_topk_spark

    return write_batch_topk_spark(session_for(EngineSection(name="spark", master=master)), data, out, **kwargs)

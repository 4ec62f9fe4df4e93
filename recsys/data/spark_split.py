"""The split of the Spark engine: :func:`recsys.data.splits.split`, run in Spark executors.

The split tables equal the one-node engine's row for row because the labels come from
the same functions of :mod:`recsys.data.splits`, fed the same inputs:

- cold items: per-item counts are one Spark aggregate (one row per item) brought to the
  driver, where :func:`~recsys.data.splits.choose_cold` draws the items from the same
  seeded generator; the chosen set is broadcast back;
- the warm pairs are cut into *blocks* of consecutive ``user_idx`` values (each user
  whole in one block), so a block's rows in (user, item) order are a contiguous slice
  ``[start, end)`` of the one-node engine's warm table; ``start`` comes from the block
  counts (a second small aggregate). The blocks are range-partitioned, sorted within
  partitions, and labelled inside ``mapInArrow``: ``random`` draws its slice of the
  PCG64 sequence with :func:`~recsys.data.splits.random_keys` (the generator advanced by
  ``start``), ``leave_last_n`` needs no offset, ``temporal`` compares with two global
  cut-offs computed exactly in Spark (:func:`exact_lower_quantile`);
- each partition sends its labelled rows as Arrow IPC payloads; the driver takes them one
  partition at a time (``toLocalIterator``) and appends them to one Parquet file per split
  in the dataset's temporary directory, so it never holds more than one partition.

Blocks are defined by ``user_idx`` values, not by Spark's partitioning, so a task that is
retried or a partition that is recomputed labels the same rows the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.splits import (SplitConfig, choose_cold, cutoff_seconds, last_n_parts, lower_quantile_rank, random_keys,
                                random_parts, require_time, temporal_part)
from recsys.errors import InputError

log = logging.getLogger(__name__)
SPLIT_NAMES = ("train", "valid", "test", "test_cold")  # part label 0..3, in the order the dataset lists them
_CHUNK_ROWS = 1 << 20  # rows per Arrow payload sent to the driver (~20 MB)


def _cold_set(spark: Any, pairs: Any, config: SplitConfig) -> tuple[Any, int]:
    """The cold items as a small Spark table (``item_idx``, ``__cold``; None when there are none) and their number."""
    from pyspark.sql import functions as F

    if config.cold_item_frac <= 0:
        return None, 0
    per_item = pl.from_arrow(pairs.groupBy("item_idx").count().toArrow())
    counts = np.zeros(int(per_item["item_idx"].max()) + 1, dtype=np.int64)
    counts[per_item["item_idx"].to_numpy()] = per_item["count"].to_numpy()
    cold = choose_cold(counts, config.cold_item_frac, config.cold_min_interactions, config.seed)
    if not len(cold):
        return None, 0
    return spark.createDataFrame(pa.table({"item_idx": pa.array(cold, pa.int32())})).withColumn("__cold", F.lit(True)), len(cold)


def exact_lower_quantile(df: Any, col: str, q: float, n: int, rel_err: float = 1e-3) -> int:
    """polars' ``quantile(q, "lower")`` of the ``n`` non-null values of ``col``, exactly.

    Why not Spark's ``percentile``: it interpolates and gathers every distinct value in one
    task. Here ``approxQuantile`` brackets the wanted rank, one aggregate counts the rows
    below and inside the bracket, and only the bracket (about ``4 * rel_err * n`` values)
    comes to the driver, where it is sorted and indexed. A bracket that misses the rank
    (outside ``approxQuantile``'s guarantee) is widened until it holds it.
    """
    from pyspark.sql import functions as F

    k = lower_quantile_rank(n, q)
    err = rel_err
    while True:
        lo_q, hi_q = max(0.0, q - 2 * err), min(1.0, q + 2 * err)
        lo, hi = df.approxQuantile(col, [lo_q, hi_q], err)
        c = F.col(col)
        row = df.agg(F.sum((c < lo).cast("long")).alias("below"), F.sum(c.between(lo, hi).cast("long")).alias("inside")).first()
        below, inside = int(row["below"] or 0), int(row["inside"] or 0)
        if below <= k < below + inside:
            vals = np.sort(pl.from_arrow(df.where(c.between(lo, hi)).select(col).toArrow())[col].to_numpy())
            return int(vals[k - below])
        if lo_q == 0.0 and hi_q == 1.0:  # cannot happen: the whole range holds every rank
            raise InputError(f"the {q} quantile of {col} could not be found among {n} values")
        err *= 8


def _temporal_cuts(pairs: Any, config: SplitConfig) -> tuple[int, int]:
    """The test and valid cut-offs of ``temporal``, as :func:`~recsys.data.splits.assign_parts` takes them."""
    from pyspark.sql import functions as F

    ts = pairs.where(F.col("timestamp").isNotNull())
    n = ts.count()
    if n == 0:  # every pair is cold: nothing to label, as assign_parts on an empty table
        return 0, 0
    if config.cutoff is not None:
        cut = cutoff_seconds(config.cutoff)
    elif config.test_frac > 0:
        cut = exact_lower_quantile(ts, "timestamp", 1 - config.test_frac, n)
    else:
        cut = int(ts.agg(F.max("timestamp")).first()[0]) + 1
    train = ts.where(F.col("timestamp") < cut)
    n_train = train.count()
    if n_train == 0:  # no (non-null) time before the cut-off, as polars' ``is_test.all()``
        raise InputError(f"the temporal cutoff {cut} puts every interaction in test; choose a later cutoff")
    vcut = exact_lower_quantile(train, "timestamp", 1 - config.valid_frac, n_train) if config.valid_frac > 0 else cut
    log.info("temporal split: test from %s, valid from %s (unix s)", cut, vcut)
    return cut, vcut


def _labeller(config: SplitConfig, cuts: tuple[int, int] | None) -> Callable[[pl.DataFrame, int], np.ndarray]:
    """The part labels of one block of warm rows in (user, item) order starting at global row ``start``."""
    if config.strategy == "temporal":
        cut, vcut = cuts or (0, 0)  # the caller computes them for this strategy
        return lambda block, start: block.select(temporal_part(pl.col("timestamp"), cut, vcut)).to_series().to_numpy()
    if config.strategy == "leave_last_n":
        return lambda block, start: last_n_parts(block["user_idx"].to_numpy().astype(np.int64), block["item_idx"].to_numpy(),
                                                 block["timestamp"].to_numpy(), config.n_last)
    return lambda block, start: random_parts(block["user_idx"].to_numpy().astype(np.int64),
                                             random_keys(config.seed, start, block.height), config.test_frac, config.valid_frac)


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _label_fn(label: Callable[[pl.DataFrame, int], np.ndarray], starts: dict[int, int], keep: list[str]) -> Any:
    """The ``mapInArrow`` function: label each block of the partition, send each part's rows as Arrow IPC."""

    def run(batches: Any) -> Any:
        tables = list(batches)
        if not tables:
            return
        frame = pl.from_arrow(pa.Table.from_batches(tables))
        blk, cold = frame["__blk"].to_numpy(), frame["__cold"].to_numpy()
        part = np.full(frame.height, 3, dtype=np.int8)  # cold rows: test_cold
        bounds = [0, *(np.flatnonzero(np.diff(blk)) + 1).tolist(), frame.height]  # sorted by block: contiguous
        for s, e in zip(bounds[:-1], bounds[1:]):
            warm = np.flatnonzero(~cold[s:e]) + s
            if len(warm):
                part[warm] = label(frame[warm], starts[int(blk[s])])
        rows = frame.select(keep)
        for p in range(len(SPLIT_NAMES)):
            sub = rows.filter(pl.Series(part == p))
            for chunk in sub.iter_slices(_CHUNK_ROWS):
                yield pa.record_batch([pa.array([p], pa.int32()), pa.array([_ipc(chunk.to_arrow())], pa.binary())],
                                      names=["__part", "__payload"])

    return run


def split_to_parquet(spark: Any, pairs: Any, config: SplitConfig, tmp: Path, n_blocks: int) -> tuple[dict[str, int], int]:
    """Split the Spark pair table ``pairs`` and write ``train.parquet`` ... ``test_cold.parquet`` into ``tmp``.

    ``pairs`` holds ``user_idx``, ``item_idx`` and the value columns of the one-node
    engine's table (the same dtypes); ``n_blocks`` is the number of user blocks (and Spark
    partitions) the split runs on. Returns each split's row count and the number of cold
    items, for the manifest.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    require_time(pairs.columns, config)
    keep = list(pairs.columns)
    schema = pl.from_arrow(pairs.limit(0).toArrow()).to_arrow().schema
    cold, n_cold = _cold_set(spark, pairs, config)
    flagged = pairs.join(F.broadcast(cold), "item_idx", "left") if cold is not None else pairs.withColumn("__cold", F.lit(False))
    max_user = int(pairs.agg(F.max("user_idx")).first()[0] or 0)
    width = max_user // n_blocks + 1
    flagged = flagged.select(*keep, F.coalesce(F.col("__cold"), F.lit(False)).alias("__cold"),
                             F.expr(f"CAST(user_idx DIV {width} AS INT)").alias("__blk")).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = _label_and_write(flagged, keep, config, tmp, n_blocks, schema)
    finally:
        flagged.unpersist()
    log.info("split %s on %d blocks: %s", config.strategy, n_blocks, counts)
    return counts, n_cold


def _label_and_write(flagged: Any, keep: list[str], config: SplitConfig, tmp: Path, n_blocks: int, schema: pa.Schema) -> dict[str, int]:
    """Label the flagged pairs block by block in the executors; append each part to its file, partition by partition."""
    from pyspark.sql import functions as F

    warm = flagged.where(~F.col("__cold"))
    per_block = dict(warm.groupBy("__blk").count().collect())
    starts, acc = {}, 0
    for b in range(n_blocks):
        starts[b], acc = acc, acc + int(per_block.get(b, 0))
    cuts = _temporal_cuts(warm.select(*keep), config) if config.strategy == "temporal" else None
    labelled = flagged.repartitionByRange(n_blocks, "__blk").sortWithinPartitions("__blk", "user_idx", "item_idx").mapInArrow(
        _label_fn(_labeller(config, cuts), starts, keep), "__part int, __payload binary")
    counts = dict.fromkeys(SPLIT_NAMES, 0)
    writers = {name: pq.ParquetWriter(tmp / f"{name}.parquet", schema, compression="lz4") for name in SPLIT_NAMES}
    try:
        for row in labelled.toLocalIterator(prefetchPartitions=False):  # partitions in block order: (user, item) order
            table = pa.ipc.open_stream(pa.py_buffer(row["__payload"])).read_all().cast(schema)
            name = SPLIT_NAMES[row["__part"]]
            writers[name].write_table(table)
            counts[name] += table.num_rows
    finally:
        for w in writers.values():
            w.close()
    return counts

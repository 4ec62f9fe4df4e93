"""The ``build-dataset`` pipeline on Spark: the same dataset as :mod:`recsys.data.build`.

Equal by construction rather than by re-implementation: the row rules, the weights and
the merging of repeated pairs are the polars code of the one-node engine, run on every
Spark partition through ``mapInArrow``; Spark only moves the rows. The steps:

1. Spark reads the events (CSV as strings, as polars does, or Parquet) and tags every
   row with its place in the input (file, block, position) so that "file order" means
   the same as in the one-node engine;
2. the whole-column decisions of :mod:`recsys.data.profile` (id kinds, time unit) are
   taken once on the driver, from the head of the first file, and shipped to the
   partitions, where :func:`~recsys.data.validate.annotate` marks each row good or
   rejected with its reason;
3. the reference time of the time decay (newest accepted row) is one Spark aggregate;
4. good rows are hash-partitioned on (user, item) and sorted in input order, so that
   every pair lies whole in one partition, where
   :func:`~recsys.data.transforms.apply_weights` and
   :func:`~recsys.data.transforms.aggregate_pairs` run as in the one-node engine;
5. the k-core filter iterates Spark aggregations with the semantics of
   :func:`~recsys.data.transforms.kcore_mask`;
6. distinct ids (small next to the events) go to the driver, where the append-only id
   maps are extended by :func:`recsys.data.build.map_codes`, then broadcast-joined back;
7. the final (user_idx, item_idx, weight, ...) table is split in the executors by
   :mod:`recsys.data.spark_split` (the labelling functions of :mod:`recsys.data.splits`)
   and streamed to the driver one partition at a time into the split files, which
   :func:`recsys.data.build.write_dataset` puts with the manifest into one atomically
   renamed directory, exactly as the one-node engine does.

What is not distributed: the id maps, the per-item counts of the cold-item draw and the
writing of the files (see ``docs/spark.md``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from recsys.data.build import _check_weight_overflow, _load_maps, _reference_time, map_codes, write_dataset
from recsys.data.config import BuildConfig
from recsys.data.dataset import Dataset
from recsys.data.profile import FLOAT, FLOAT_TEXT, SAMPLE, id_kind, profile_input, time_horizon
from recsys.data.readers import _format_of, resolve_files
from recsys.data.spark_split import split_to_parquet
from recsys.data.transforms import aggregate_pairs, apply_weights
from recsys.data.validate import P_REASON, REASON_COL, annotate, canonical_frame, check_reject_share, empty_rejects, reason_counts
from recsys.errors import ConfigError, InputError, RecsysError, SchemaError

log = logging.getLogger(__name__)
_ORDER = ("__f", "__b", "__m")  # file index, block start, position: the input order
_IN = "__in_"  # prefix of the input values (as strings) carried for rejected rows
_ERR = re.compile(r"recsys\.errors\.(\w+): (.*)")


def _rethrow(exc: Exception) -> None:
    """Re-raise a recsys error thrown inside a Spark task as itself (not a Java stack trace)."""
    import recsys.errors as errors

    m = _ERR.search(str(exc))
    if m and isinstance(getattr(errors, m.group(1), None), type):
        raise getattr(errors, m.group(1))(m.group(2).strip()) from None
    raise exc


def _read(spark: Any, config: BuildConfig) -> tuple[Any, list[Path]]:
    """The events as a Spark DataFrame of the mapped columns plus the input-order columns."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    spec = config.events
    remote = "://" in spec.path and not spec.path.startswith("file://")
    if remote:  # s3a://, hdfs://: Spark lists the files itself (no date-partition window)
        if config.window_days is not None:
            raise ConfigError("--window-days selects local date partitions; with a remote path, point --events at the partitions to read")
        files, paths, fmt = [], [spec.path], (spec.format if spec.format != "auto" else ("parquet" if spec.path.endswith((".parquet", ".pq")) else "csv"))
    else:
        files, _ = resolve_files(spec.path, config.as_of, config.window_days)
        paths, fmt = [str(f.resolve()) for f in files], _format_of(files, spec.format)
    if fmt == "parquet":
        df = spark.read.parquet(*paths)
    else:
        if spec.encoding.lower().replace("_", "-") not in ("utf8", "utf-8", "utf8-lossy"):
            df = spark.read.option("encoding", spec.encoding)
        else:
            df = spark.read.option("encoding", "UTF-8")
        df = df.csv(
            paths, sep=spec.sep, header=spec.has_header, inferSchema=False, quote=spec.quote_char or "",
            escape=spec.quote_char or "\\", mode="PERMISSIVE", multiLine=False,
            # polars reads an unquoted empty field as null and a quoted "" as "": Spark does
            # so only when its null marker is something else than the empty string
            nullValue="\u0000", emptyValue="",
        )
    if spec.columns:
        if len(df.columns) != len(spec.columns):
            raise ConfigError(f"{spec.path}: `columns` names {len(spec.columns)} fields but the files have {len(df.columns)}")
        df = df.toDF(*spec.columns)
    missing = [c for c in dict.fromkeys(config.mapping.input_columns()) if c not in df.columns]
    if missing:
        raise SchemaError(f"the events {spec.path} have no column {missing} (columns: {df.columns}); fix the column mapping (--user-col, ...)")
    # file order: rank of the file in the sorted list; Spark reorders blocks by size
    rank = F.create_map(*[x for i, p in enumerate(paths) for x in (F.lit(Path(p).resolve().as_uri() if not remote else p), F.lit(i))]) if not remote else None
    fpath = F.col("_metadata.file_path")
    findex = F.coalesce(rank[fpath], F.lit(0)) if rank is not None else F.dense_rank().over(Window.orderBy(fpath)) - 1
    df = df.select(
        *[F.col(c) for c in dict.fromkeys(config.mapping.input_columns())],
        findex.cast("int").alias("__f"), F.col("_metadata.file_block_start").alias("__b"), F.monotonically_increasing_id().alias("__m"),
    )
    return df, files


def _canon_schema(config: BuildConfig) -> str:
    m = config.mapping
    cols = ["user_id string", "item_id string"]
    cols += ["timestamp long"] if m.time else []
    cols += ["value double"] if m.weight else []
    cols += ["event_type string"] if m.event_type else []
    cols += [f"{P_REASON} string"] + [f"`{_IN}{c}` string" for c in dict.fromkeys(m.input_columns())]
    return ", ".join(cols + ["__f int", "__b long", "__m long"])


def _validate_fn(config: BuildConfig, profile: Any, known: list[str] | None, lossy: bool) -> Any:
    m = config.mapping
    inputs = list(dict.fromkeys(m.input_columns()))

    def run(batches: Any) -> Any:
        tables = list(batches)
        if not tables:
            return
        frame = pl.from_arrow(pa.Table.from_batches(tables))
        lf = frame.lazy().select(inputs)
        for role, col, kind in (("user", m.user, profile.user_kind), ("item", m.item, profile.item_kind)):
            if kind in (FLOAT, FLOAT_TEXT):  # the whole-column fractional-id check, per partition
                id_kind(lf, col, frame.schema[col], role)
        ann = annotate(lf, m, time_format=config.time_format, known_event_types=known, reasons=True, profile=profile, lossy_utf8=lossy)
        ann = ann.collect().lazy()
        # integer ids become text here, as encode_expr does in the polars engine
        canon = canonical_frame(ann, m, keep_reason=True).with_columns(pl.col("user_id", "item_id").cast(pl.String))
        if m.event_type:
            canon = canon.with_columns(pl.col("event_type").cast(pl.String))
        bad = pl.col(P_REASON).is_not_null()
        raw = [pl.when(bad).then(pl.col(c).cast(pl.String)).alias(f"{_IN}{c}") for c in inputs]
        out = pl.concat([canon.collect(), ann.select(raw).collect(), frame.select(_ORDER)], how="horizontal")
        yield from out.to_arrow().to_batches()

    return run


def _pairs_schema(config: BuildConfig) -> str:
    m = config.mapping
    cols = ["user_id string", "item_id string", "weight float"]
    cols += ["timestamp long"] if m.time else []
    cols += ["rating float"] if m.weight else []
    cols += ["event_type string"] if m.event_type else []
    return ", ".join(cols + ["__n long"])


def _merge_fn(config: BuildConfig, known: list[str] | None, by_type: bool, reference: int | None) -> Any:
    m, w = config.mapping, config.weights

    def run(batches: Any) -> Any:
        tables = list(batches)
        if not tables:
            return
        lf = pl.from_arrow(pa.Table.from_batches(tables)).lazy().drop(_ORDER)
        if known is not None:
            lf = lf.with_columns(pl.col("event_type").cast(pl.Enum(list(dict.fromkeys(known)))))
        weighted = apply_weights(
            lf, has_value=m.weight is not None, has_time=m.time is not None, has_event=m.event_type is not None,
            weighting=w.weighting, positive_threshold=w.positive_threshold, event_weights=w.event_weights,
            unknown_event_weight=w.unknown_event_weight, half_life_days=w.half_life_days, reference_time=reference,
            drop_below_threshold=False,
        ).collect()
        n_below = 0
        if "below_threshold" in weighted.columns:
            n_below = int(weighted["below_threshold"].sum())
            weighted = weighted.filter(~pl.col("below_threshold")).drop("below_threshold")
        pairs = aggregate_pairs(weighted.lazy(), w.aggregate, keys=("user_id", "item_id"), count="__n", event_order_is_weight=by_type).collect()
        cols = [c for c in ("user_id", "item_id", "weight", "timestamp", "rating", "event_type", "__n") if c in pairs.columns]
        pairs = pairs.select(cols).with_columns(pl.col("__n").cast(pl.Int64), *([pl.col("event_type").cast(pl.String)] if m.event_type else []))
        if n_below:  # the rows under the rating threshold travel as one null-keyed count
            pairs = pl.concat([pairs, pl.DataFrame({"__n": [n_below]}, schema={"__n": pl.Int64})], how="diagonal_relaxed").select(cols)
        yield from pairs.to_arrow().to_batches()

    return run


def _kcore(pairs: Any, min_user: int, min_item: int, max_iter: int = 100) -> tuple[Any, int]:
    """:func:`~recsys.data.transforms.kcore_mask` as Spark aggregations: same passes, same count."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if min_user < 1 or min_item < 1:
        raise ConfigError(f"k-core minimums must be >= 1, got users={min_user} items={min_item}")
    if min_user == 1 and min_item == 1:
        return pairs, 0
    cur = pairs
    for it in range(1, max_iter + 1):
        marked = cur.withColumn("__uc", F.count("*").over(Window.partitionBy("user_id"))).withColumn(
            "__ic", F.count("*").over(Window.partitionBy("item_id"))
        ).withColumn("__bad", (F.col("__uc") < min_user) | (F.col("__ic") < min_item)).localCheckpoint()
        n_bad = marked.where("__bad").count()
        log.info("k-core pass %d: removed %d pairs", it, n_bad)
        cur = marked.where(~F.col("__bad")).drop("__uc", "__ic", "__bad")
        if n_bad == 0:
            return cur, it
    log.warning("k-core did not converge in %d passes; the result may still hold sparse users/items", max_iter)
    return cur, max_iter


def _index(spark: Any, kept: Any, col: str, idmap: Any) -> tuple[Any, int]:
    """Extend ``idmap`` with the distinct ids of ``col`` (on the driver); their (id, idx) table."""
    ids = pl.from_arrow(kept.select(col).distinct().toArrow())[col]
    uniq = pl.DataFrame({col: ids, "__code": np.arange(ids.len(), dtype=np.uint32)})
    lookup, added = map_codes(uniq, col, "__code", np.arange(ids.len()), idmap)
    table = pa.table({col: ids.to_arrow(), col.replace("_id", "_idx"): pa.array(lookup, pa.int32())})
    return spark.createDataFrame(table), added


def build_dataset_spark(
    config: BuildConfig,
    out: str | os.PathLike,
    previous: str | os.PathLike | None = None,
    reuse_ids: bool = True,
    spark: Any = None,
    load: bool = True,
) -> Dataset:
    """Build the dataset directory of :func:`recsys.data.build.build_dataset` on Spark.

    Parameters and result as :func:`recsys.data.build.build_dataset`; ``spark`` is the
    SparkSession to run on (see :func:`recsys.spark.spark_session`). The build never holds
    the whole pair table on the driver; ``load=False`` keeps it so after the build too
    (the result then carries the manifest and id maps, no split tables), for callers that
    only report (the CLI) or read the directory later (``recsys run``).
    """
    try:
        ds = _build(config, out, previous, reuse_ids, spark)
        return Dataset.load(out) if load else ds
    except RecsysError:
        raise
    except Exception as e:  # a recsys error raised inside a task arrives wrapped
        if type(e).__module__.startswith(("pyspark", "py4j")):
            _rethrow(e)
        raise


def _build(config: BuildConfig, out: str | os.PathLike, previous: Any, reuse_ids: bool, spark: Any) -> Dataset:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    out = Path(out)
    if previous is None and reuse_ids and (out / "manifest.json").exists():
        previous = out
    prev = Path(previous) if previous is not None else None
    m, w = config.mapping, config.weights
    df, event_files = _read(spark, config)
    # whole-column decisions, once, from the head of the first file (as the one-node engine reads it)
    head = df.where((F.col("__f") == 0) & (F.col("__b") == 0)).select(*dict.fromkeys(m.input_columns())).limit(SAMPLE * 4)
    profile = profile_input(pl.from_arrow(head.toArrow()).lazy(), m, time_unit=config.time_unit, time_format=config.time_format, max_time=time_horizon(config.as_of))
    lossy = config.events.encoding.lower().replace("_", "-") == "utf8-lossy"
    known = sorted(w.event_weights, key=lambda e: (w.event_weights[e], e)) if (w.event_weights and w.unknown_event_weight is None) else None
    by_type = known is not None and (m.weight is None or w.weighting == "threshold") and w.half_life_days is None
    canon = df.mapInArrow(_validate_fn(config, profile, known, lossy), _canon_schema(config)).persist(StorageLevel.MEMORY_AND_DISK)
    n_in = canon.count()
    if n_in == 0:
        raise InputError(f"the events {config.events.path} hold no rows (a header only?); check the input and the upstream job")
    bad = F.col(P_REASON).isNotNull()
    rejects = pl.from_arrow(
        canon.where(bad).orderBy(*_ORDER).select(*[F.col(f"`{_IN}{c}`").alias(c) for c in dict.fromkeys(m.input_columns())], F.col(P_REASON).alias(REASON_COL)).toArrow()
    )
    rejects = rejects if rejects.height else empty_rejects(m)
    counts = reason_counts(rejects)
    check_reject_share(n_in, counts, config.max_reject_share, rejects)
    reference = _reference_time(config)
    if w.half_life_days is not None and reference is None and m.time is not None:
        reference = canon.where(~bad).agg(F.max("timestamp")).first()[0]
    good = canon.where(~bad).drop(P_REASON, *[f"{_IN}{c}" for c in dict.fromkeys(m.input_columns())])
    grouped = good.repartition(spark.sparkContext.defaultParallelism * 2, "user_id", "item_id").sortWithinPartitions(*_ORDER)
    merged = grouped.mapInArrow(_merge_fn(config, known, by_type, reference), _pairs_schema(config)).persist(StorageLevel.MEMORY_AND_DISK)
    below = F.col("user_id").isNull()
    totals = merged.agg(F.sum(F.when(below, F.col("__n"))).alias("below"), F.sum(F.when(~below, F.col("__n"))).alias("weighted"), F.sum(F.when(~below, 1)).alias("pairs")).first()
    n_below, n_weighted, n_pairs = int(totals["below"] or 0), int(totals["weighted"] or 0), int(totals["pairs"] or 0)
    pairs = merged.where(~below)
    overflow = pairs.where(F.isnan("weight") | (F.abs("weight") == float("inf")))
    if overflow.limit(1).count():
        _check_weight_overflow(pl.from_arrow(overflow.toArrow()).rename({"user_id": "__u", "item_id": "__i"}), config)
    log.info("read %d rows: %d rejected, %d clean, %d pairs after merging (%.1fs)", n_in, rejects.height, n_in - rejects.height, n_pairs, time.perf_counter() - t0)
    kept, k_iter = _kcore(pairs, config.min_user_interactions, config.min_item_interactions)
    n_out = kept.count()
    if n_out == 0:
        raise InputError(
            f"no interaction is left after the k-core filter (min {config.min_user_interactions} per user, "
            f"{config.min_item_interactions} per item; {n_pairs} pairs before); lower the minimums"
        )
    user_map, item_map = _load_maps(prev)
    n_users_before, n_items_before = len(user_map), len(item_map)
    umap, users_added = _index(spark, kept, "user_id", user_map)
    imap, items_added = _index(spark, kept, "item_id", item_map)
    extra = [c for c in ("weight", "rating", "timestamp", "event_type") if c in kept.columns]
    indexed = kept.join(F.broadcast(umap), "user_id").join(F.broadcast(imap), "item_id").select("user_idx", "item_idx", *extra)
    indexed = indexed.persist(StorageLevel.MEMORY_AND_DISK)
    split_cfg = dataclasses.replace(config.split, seed=config.seed)
    n_blocks = _n_blocks(spark)
    rows = {"in": n_in, "rejected": rejects.height, "rejected_by_reason": counts, "below_threshold": n_below,
            "duplicates_merged": n_weighted - n_pairs, "kcore_removed": n_pairs - n_out}
    id_maps = {"n_users_before": n_users_before, "n_items_before": n_items_before, "users_added": users_added,
               "items_added": items_added}
    engine = {"name": "spark", "master": spark.sparkContext.master, "spark_version": spark.version}
    try:
        return write_dataset(out, config, pl.from_arrow(indexed.limit(0).toArrow()), rejects, user_map=user_map, item_map=item_map,
                             rows=rows, id_maps=id_maps, k_iter=k_iter, prev=prev, profile=profile.to_dict(), event_files=event_files,
                             t0=t0, engine=engine, n_out=n_out,
                             splits_writer=lambda tmp: split_to_parquet(spark, indexed, split_cfg, tmp, n_blocks))
    finally:
        for frame in (indexed, merged, canon):
            frame.unpersist()


def _n_blocks(spark: Any) -> int:
    """How many user blocks the split runs on: the shuffle partitions (or twice the cores, for "auto")."""
    try:
        return max(1, int(spark.conf.get("spark.sql.shuffle.partitions")))
    except ValueError:
        return max(1, spark.sparkContext.defaultParallelism * 2)

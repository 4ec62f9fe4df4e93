"""Batch top-K on Spark: the lists of :func:`recsys.serving.batch.write_batch_topk`, scored by the executors.

Exact by construction: each Spark task takes a contiguous range of the users, opens the
bundle (memory-mapped; its path must be readable by every executor: a shared file system
or mount), and runs the one-node scorer (:class:`~recsys.serving.batch_scoring.BatchScorer`,
:func:`~recsys.serving.batch_scoring.iter_topk`) on its range, writing parquet parts with
the one-node part writer. The driver then renames the parts into one sequence (users in
the order given) and writes the manifest. Rows, columns, order and scores equal the
one-node output; only where parts end differs (each task cuts its own parts at
``rows_per_file``), and the manifest records ``"engine": "spark"``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys.io import atomic_dir, write_json
from recsys.serving.batch import (BATCH_KIND, BATCH_SCHEMA_VERSION, COLUMNS, DEFAULT_CHUNK_BYTES, MANIFEST, BatchResult,
                                  BatchScorer, _block_table, _PartWriter, check_request, iter_topk)
from recsys.serving.reader import BundleData, read_bundle

log = logging.getLogger(__name__)
_BUNDLES: dict[str, BundleData] = {}  # per Python worker: a bundle is opened once, not per task


def _task(bundle: str, tmp: str, k: int, exclude_seen: bool, allowed: Any, blocked: Any, rows_per_file: int,
          max_chunk_bytes: int, version: str) -> Any:
    import pyarrow as pa

    def run(parts: Any) -> Any:
        for p, user_ids, uidx in parts:
            data = _BUNDLES.get(bundle) or _BUNDLES.setdefault(bundle, read_bundle(bundle, verify=False))
            scorer = BatchScorer(data, k, exclude_seen=exclude_seen, allowed=allowed, blocked=blocked, max_chunk_bytes=max_chunk_bytes)
            where = Path(tmp) / f"task-{p:05d}"
            where.mkdir()
            writer = _PartWriter(where, rows_per_file, None)
            users_pa, items_pa = pa.array(user_ids, pa.string()), pa.array(data.item_map.ids, pa.string())
            for res in iter_topk(scorer, np.asarray(uidx, dtype=np.int64)):
                writer.add(*_block_table(res, users_pa, items_pa, version))
            writer.flush()
            yield p, writer.files, scorer.n_cand, scorer.similarity, scorer.k

    return run


def write_batch_topk_spark(spark: Any, data: BundleData, out: str | os.PathLike, *, k: int = 100,
                           users: Sequence[str] | None = None, exclude_seen: bool = True,
                           allow_items: Sequence[str] | None = None, block_items: Sequence[str] | None = None,
                           rows_per_file: int = 1_000_000, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                           overwrite: bool = False, unknown_items: str = "raise", n_tasks: int | None = None) -> BatchResult:
    """:func:`~recsys.serving.batch.write_batch_topk` with the scoring spread over Spark tasks.

    Parameters as there; ``spark`` is the SparkSession, ``n_tasks`` the number of user
    ranges (default: twice the session's parallelism).
    """
    t0 = time.perf_counter()
    out, k, allowed, blocked, user_ids, uidx, version = check_request(data, out, k, users, rows_per_file, overwrite,
                                                                      allow_items, block_items, unknown_items)
    sc = spark.sparkContext
    n = max(1, min(len(uidx), n_tasks or 2 * sc.defaultParallelism))
    bounds = np.linspace(0, len(uidx), n + 1).astype(int)
    ranges = [(p, list(user_ids[a:b]), uidx[a:b].tolist()) for p, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])) if b > a]
    with atomic_dir(out, overwrite=overwrite) as tmp:
        fn = _task(str(Path(data.path).resolve()), str(tmp), k, exclude_seen, allowed, blocked, int(rows_per_file), int(max_chunk_bytes), version)
        results = sorted(sc.parallelize(ranges, len(ranges)).mapPartitions(fn).collect())
        files: dict[str, dict[str, Any]] = {}
        for p, parts, *_ in results:  # one sequence of parts, in the users' order
            for name in sorted(parts):
                new = f"part-{len(files):05d}.parquet"
                os.replace(tmp / f"task-{p:05d}" / name, tmp / new)
                files[new] = parts[name]
            os.rmdir(tmp / f"task-{p:05d}")
        n_cand, similarity, k_eff = results[0][2:] if results else (0, None, k)
        seconds = time.perf_counter() - t0
        manifest = {
            "kind": BATCH_KIND, "schema_version": BATCH_SCHEMA_VERSION, "bundle_version": version,
            "bundle_path": str(data.path), "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "k": k_eff, "n_users": len(uidx), "n_cold_users": int((uidx < 0).sum()),
            "rows": sum(f["rows"] for f in files.values()), "exclude_seen": bool(exclude_seen),
            "allow_items": None if allowed is None else len(allowed), "block_items": 0 if blocked is None else len(blocked),
            "candidate_items": n_cand, "similarity": similarity, "rows_per_file": int(rows_per_file),
            "columns": list(COLUMNS), "rank_base": 1, "exact": True, "seconds": round(seconds, 3),
            "engine": {"name": "spark", "master": sc.master, "tasks": len(ranges)},
            "files": files,
        }
        write_json(tmp / MANIFEST, manifest)
    log.info("batch top-%d on Spark: %d users in %d tasks, %d rows in %d files in %.1f s -> %s", k_eff, len(uidx), len(ranges),
             manifest["rows"], len(files), seconds, out)
    return BatchResult(path=out, manifest=manifest)

"""Top-K for every user of a bundle, as partitioned parquet (the batch output of a run).

Examples::

    recsys recommend-batch --bundle runs/default --out /data/recs/2026-11-25 --k 100
    recsys recommend-batch --bundle runs/default/bundles/<version> --users users.txt --block blocked.txt
    recsys recommend-batch --bundle runs/default            # -> runs/default/batch/<version>/

``--bundle`` is a bundle directory or a run's output directory (its ``latest`` bundle).
The lists are exactly ``Retriever.recommend(user, k)`` with exact search: seen items
excluded (``--no-exclude-seen`` keeps them), only ``--allow`` items, never ``--block``
items (text files, one item id per line; an unknown id exits 2); users the bundle does not
know (``--users`` with new ids) get the most popular items. Output: ``part-00000.parquet``
... (user_id, rank, item_id, score, bundle_version) and ``manifest.json``, written under a
temporary name and renamed, so a reader never sees half of it (docs/batch.md).

``recsys run`` runs the same thing as its ``batch`` step after a promotion (``[batch]``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

HELP = "top-K of every user of a bundle as partitioned parquet (exact, seen items excluded)"
log = logging.getLogger("recsys.recommend_batch")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True,
                        help="bundle directory, or a run's --out (its latest bundle)")
    parser.add_argument("--out", type=Path,
                        help="directory to create (default: ROOT/batch/<bundle version> next to ROOT/bundles/)")
    parser.add_argument("--k", type=int, default=100, help="items per user (default 100; capped at the catalogue)")
    parser.add_argument("--users", type=Path, help="text file of user ids, one per line (default: every user of the bundle)")
    parser.add_argument("--no-exclude-seen", action="store_true", help="keep the items each user has already seen")
    parser.add_argument("--allow", type=Path, help="text file of item ids: only these are recommended")
    parser.add_argument("--block", type=Path, help="text file of item ids never recommended")
    parser.add_argument("--rows-per-file", type=int, default=1_000_000, help="rows per parquet part (default 1000000)")
    parser.add_argument("--max-chunk-mb", type=int, default=256, help="memory bound of one score block (default 256)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists (atomically)")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the bundle files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    parser.add_argument("--engine", choices=["local", "spark"], default="local", help="score here (default) or on Spark tasks (docs/spark.md)")
    parser.add_argument("--spark-master", default="local[*]", help="with --engine spark: the Spark master (default local[*])")


def run_batch(bundle: str | Path, out: str | Path | None, *, k: int, users_file: str | Path | None = None,
              exclude_seen: bool = True, allow_file: str | Path | None = None, block_file: str | Path | None = None,
              rows_per_file: int = 1_000_000, max_chunk_bytes: int | None = None, overwrite: bool = False,
              verify: bool = True, show_progress: bool = False, spark_master: str | None = None) -> Any:
    """Resolve and read the bundle, read the id files, write the batch (shared by the CLI and the run step).

    A missing or broken bundle and every bad value raise :class:`~recsys.errors.InputError`
    (exit 2), naming the fix.
    """
    from recsys.errors import BundleError, InputError
    from recsys.serving.batch import DEFAULT_CHUNK_BYTES, default_out, read_id_list, write_batch_topk
    from recsys.serving.reader import read_bundle
    from recsys.serving.versions import resolve_bundle

    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise InputError(f"--k must be a positive integer, got {k!r}")
    if rows_per_file <= 0:
        raise InputError(f"--rows-per-file must be a positive integer, got {rows_per_file!r}")
    if max_chunk_bytes is not None and max_chunk_bytes <= 0:
        raise InputError("--max-chunk-mb must be positive")
    try:
        data = read_bundle(resolve_bundle(bundle), verify=verify)
    except BundleError as e:
        raise InputError(f"--bundle {bundle}: {e}") from e
    users = read_id_list(users_file, "--users") if users_file else None
    allow = read_id_list(allow_file, "--allow") if allow_file else None
    block = read_id_list(block_file, "--block") if block_file else None
    target = Path(out) if out is not None else default_out(data.path, data.manifest["version"])
    if spark_master is not None:  # --engine spark: the same lists, scored by Spark tasks
        from pipelines.spark_engine import batch_on_spark

        return batch_on_spark(spark_master, data, target, k=k, users=users, exclude_seen=exclude_seen, allow_items=allow,
                              block_items=block, rows_per_file=rows_per_file,
                              max_chunk_bytes=max_chunk_bytes or DEFAULT_CHUNK_BYTES, overwrite=overwrite)
    return write_batch_topk(data, target, k=k, users=users, exclude_seen=exclude_seen, allow_items=allow,
                            block_items=block, rows_per_file=rows_per_file,
                            max_chunk_bytes=max_chunk_bytes or DEFAULT_CHUNK_BYTES, overwrite=overwrite,
                            show_progress=show_progress)


def main(args: argparse.Namespace) -> int:
    from recsys.errors import InputError, UnknownIdError

    try:
        res = run_batch(args.bundle, args.out, k=args.k, users_file=args.users, exclude_seen=not args.no_exclude_seen,
                        allow_file=args.allow, block_file=args.block, rows_per_file=args.rows_per_file,
                        max_chunk_bytes=args.max_chunk_mb << 20, overwrite=args.overwrite, verify=not args.no_verify,
                        show_progress=not args.no_progress,
                        spark_master=args.spark_master if getattr(args, "engine", "local") == "spark" else None)
    except UnknownIdError as e:  # a KeyError to Python users; bad input to a scheduler
        raise InputError(str(e)) from e
    m = res.manifest
    print(f"{m['rows']} rows for {m['n_users']} users (top-{m['k']}, bundle {m['bundle_version']}) "
          f"in {len(m['files'])} files, {m['seconds']:.1f} s -> {res.path}", flush=True)
    return 0


# -- the `batch` step of `recsys run` -----------------------------------------------------------------


def step_inputs(cfg: dict[str, Any]) -> dict[str, Any]:
    """What the step's fingerprint adds to the promotion's: its section and the id lists' contents."""
    from recsys.workflow import fingerprint_files

    files = [cfg[key] for key in ("allow_items", "block_items") if cfg.get(key)]
    return {"config": cfg, "lists": fingerprint_files(files)}


def check_lists(cfg: dict[str, Any]) -> None:
    """Read the ``[batch]`` allow/block files once, so a missing or empty one exits 2 before any work."""
    from recsys.serving.batch import read_id_list

    for key in ("allow_items", "block_items"):
        if cfg.get(key):
            read_id_list(cfg[key], f"[batch] {key}")


def batch_step(ctx: Any, bundle: dict[str, Any], promo: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """Top-K of every user of the bundle just published, into ``OUT/batch/<version>/``, tracked in MLflow.

    Runs only after a promotion (the runner's decision): the lists delivered are the ones
    the champion serves. Item ids of ``allow_items`` / ``block_items`` that left the
    catalogue are ignored with a warning (a nightly job must not fail on a stale list);
    a list of which no id is known, like a missing file, exits 2.
    """
    from recsys import tracking
    from recsys.errors import InputError, UnknownIdError
    from recsys.serving.batch import read_id_list, write_batch_topk
    from recsys.serving.reader import read_bundle

    data = read_bundle(bundle["bundle_path"], verify=False)  # verified by the promotion's publish
    out = ctx.out / "batch" / bundle["version"]
    try:
        res = write_batch_topk(
            data, out, k=int(cfg["k"]), exclude_seen=bool(cfg["exclude_seen"]),
            allow_items=read_id_list(cfg["allow_items"], "[batch] allow_items") if cfg.get("allow_items") else None,
            block_items=read_id_list(cfg["block_items"], "[batch] block_items") if cfg.get("block_items") else None,
            rows_per_file=int(cfg["rows_per_file"]), overwrite=True, show_progress=ctx.show_progress,
            unknown_items="ignore")
    except UnknownIdError as e:
        raise InputError(f"[batch]: {e}") from e
    with tracking.start_run(ctx.tracking_uri, ctx.experiment, run_name=f"batch-{bundle['version']}",
                            tags={"recsys.step": "batch", "recsys.bundle_version": bundle["version"],
                                  "recsys.publish_run_id": promo.get("run_id")}) as run:
        tracking.log_config({"k": res.manifest["k"], "exclude_seen": res.manifest["exclude_seen"],
                             "rows_per_file": res.manifest["rows_per_file"], "allow_items": res.manifest["allow_items"],
                             "block_items": res.manifest["block_items"]}, prefix="batch")
        tracking.log_metrics(res.metrics())
        tracking.log_json(res.manifest, "batch/manifest.json")
    return {"batch_path": str(res.path), "rows": res.rows, "n_users": res.manifest["n_users"],
            "seconds": res.manifest["seconds"], "run_id": run.info.run_id, "bundle_version": bundle["version"]}

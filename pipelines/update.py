"""Incremental update between retrains: fold new events into the live bundle and publish it.

Examples::

    recsys update --out runs/nightly --events new_events.csv
    recsys update --out runs/nightly --events 'events/' --as-of 2026-12-05 --window-days 1

What it does (docs/lifelong.md), under the same lock as ``recsys run`` (a second job on
``--out`` exits 4):

1. reads the new events with the run's own reader, validation and weighting (the
   dataset config recorded in ``OUT/state/effective_config.toml``; rejected rows are kept
   in ``OUT/updates/<version>/events/rejects.parquet`` and counted against
   ``max_reject_share``);
2. merges them into the history of the live bundle (the run's dataset plus every earlier
   update's events since, aggregated as the dataset aggregates: ``sum``/``max``/``last``);
3. folds new and changed users in with the bundle's exact fold-in, gives new items with
   ``--min-count`` users a least-squares vector (:func:`recsys.lifelong.incremental_update`);
4. items with metadata only (``--items``) get a vector from their content through the
   run's cold-start mapper (:func:`content_items`);
5. exports a new bundle (the index rebuilt, or the live one kept with the new items in an
   exact delta beside it: ``--index``, :func:`recsys.index.delta.plan_index`) and
   registers it through the same gate as ``recsys run`` (index recall; the accuracy gate
   compares the published model's held-out metrics, which an update does not change),
   publishing atomically; a crash or a refusal leaves the previous bundle serving and
   ``recsys rollback`` undoes a published update.

Events already applied (same file sha256) are skipped: a rerun is a no-op.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

HELP = "fold new events into the live bundle (new users, new items) and publish it"
log = logging.getLogger("recsys.update")

UPDATES = "updates"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output directory of `recsys run` (its latest bundle is updated)")
    parser.add_argument("--events", required=True, help="new events: file, glob or dt=YYYY-MM-DD/ partitions, "
                                                        "same columns as the run's events")
    parser.add_argument("--as-of", help="last day of the window (YYYY-MM-DD) for partitioned events")
    parser.add_argument("--window-days", type=int, help="read only this many days of partitions ending on --as-of")
    parser.add_argument("--min-count", type=int, default=None,
                        help="users a new item needs before it gets a vector (default: recsys.lifelong.DEFAULT_MIN_COUNT)")
    parser.add_argument("--sweeps", type=int, default=None,
                        help="ALS sweeps after the fold-in (default: recsys.lifelong.DEFAULT_SWEEPS; 0: known users and "
                             "items keep their vectors)")
    parser.add_argument("--sweep-mode", choices=["full", "local"], default=None,
                        help="full: each sweep is a warm-started ALS iteration over the whole history (every item, then "
                             "every user); local: the items of the new events, then the changed users "
                             "(default: recsys.lifelong.DEFAULT_SWEEP_MODE)")
    parser.add_argument("--index", choices=["auto", "rebuild", "delta"], default="auto",
                        help="rebuild the index, or keep the live one and scan the new items exactly beside it (delta; "
                             "only when known items did not move); auto: recsys.index.delta.plan_index")
    parser.add_argument("--items", help="item metadata (the run's [items] columns): items without events get a vector "
                                        "from their content through the run's cold-start mapper")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    from pipelines.tracking_uri import resolve_tracking_uri
    from recsys.lock import DirectoryLock

    out = args.out.resolve()
    if not (out / "latest").exists():
        from recsys.errors import InputError

        raise InputError(f"{out} has no published bundle to update; run `recsys run --out {args.out}` first")
    tracking_uri = resolve_tracking_uri(args.tracking_uri, os.environ)
    with DirectoryLock(out):
        return run_update(out, args.events, tracking_uri, as_of=args.as_of, window_days=args.window_days,
                          min_count=args.min_count, sweeps=args.sweeps, sweep_mode=args.sweep_mode, index=args.index,
                          items=args.items, show_progress=not args.no_progress)


def _run_config(out: Path) -> Any:
    from pipelines.config import read_toml
    from recsys.config import validate_config
    from recsys.errors import InputError

    f = out / "state" / "effective_config.toml"
    if not f.is_file():
        raise InputError(f"{f} is missing: `recsys update` reads the run's config from it; run `recsys run` first")
    return validate_config(read_toml(f))


def _events_config(cfg: Any, events: str, as_of: str | None, window_days: int | None) -> Any:
    """The run's dataset config for the new events: no items, no k-core, everything in one split."""
    from pipelines.build_dataset import build_config_from

    d = cfg.dataset_dict()
    ev = {k: v for k, v in d["events"].items() if k not in ("as_of", "window_days")}
    ev.update(path=events, **({"as_of": as_of} if as_of else {}), **({"window_days": window_days} if window_days else {}))
    return build_config_from(None, {**d, "events": ev, "items": {}, "filter": {},
                                    "split": {"strategy": "random", "test_frac": 0.0, "valid_frac": 0.0,
                                              "cold_item_frac": 0.0}})


def _frame(ds: Any, splits: tuple[str, ...]) -> pl.DataFrame:
    """(user, item, weight) with external ids of the named, non-empty splits of a dataset."""
    parts = [ds.split(s).select("user_idx", "item_idx", "weight") for s in splits if ds.split(s).height]
    if not parts:
        return pl.DataFrame(schema={"user": pl.String, "item": pl.String, "weight": pl.Float32})
    t = pl.concat(parts)
    return pl.DataFrame({"user": ds.user_map.to_external(t["user_idx"].to_numpy()).astype(str),
                         "item": ds.item_map.to_external(t["item_idx"].to_numpy()).astype(str),
                         "weight": t["weight"].cast(pl.Float32)})


def merge_events(frames: list[pl.DataFrame], aggregate: str) -> pl.DataFrame:
    """Rows of later frames after earlier ones, one row per (user, item) as the dataset aggregates."""
    cols = [f.select("user", "item", pl.col("weight").cast(pl.Float32)) for f in frames if f.height]
    if not cols:
        return pl.DataFrame(schema={"user": pl.String, "item": pl.String, "weight": pl.Float32})
    agg = {"sum": pl.col("weight").sum(), "max": pl.col("weight").max(), "last": pl.col("weight").last()}[aggregate]
    return pl.concat(cols).group_by("user", "item", maintain_order=True).agg(agg)


def _previous_delta(out: Path, version: str) -> tuple[pl.DataFrame, list[str]]:
    from recsys.io import read_json

    d = out / UPDATES / version
    if not (d / "delta.parquet").is_file():
        return pl.DataFrame(schema={"user": pl.String, "item": pl.String, "weight": pl.Float32}), []
    return pl.read_parquet(d / "delta.parquet"), list(read_json(d / "applied.json"))


def content_items(out: Path, cfg: Any, ds: Any, prev: Any, res: Any, items: str, show_progress: bool) -> Any:
    """Add the items of ``items`` (metadata, the run's ``[items]`` columns) that the catalogue lacks, mapped from content.

    The run's own pieces: its items reader and text columns, its ``[content]`` encoder (and
    embedding cache), the cold-start mapper its blend step chose (``extra.cold_start_mapper``
    of the bundle), ``cold_scale`` and ``min_count``; the map is refitted on the catalogue
    now (:func:`recsys.lifelong.add_content_items`). A run without content maps nothing (logged).
    """
    from pipelines import steps
    from pipelines.build_dataset import build_config_from
    from recsys.data.readers import read_items
    from recsys.embeddings.cache import EmbeddingCache
    from recsys.embeddings.content import embed_items
    from recsys.embeddings.mappers import make_mapper
    from recsys.io import load_npz
    from recsys.lifelong import add_content_items

    info = prev.manifest.get("extra", {}).get("cold_start_mapper")
    content_npz = out / "content" / "item_content.npz"
    if not info or not content_npz.is_file():
        log.warning("update: --items given but the run mapped no content (no cold-start mapper or %s): items without "
                    "events wait for a run with [content] enabled", content_npz)
        return res
    d = cfg.dataset_dict()
    bc = build_config_from(None, {**d, "items": {**d.get("items", {}), "path": items}})
    meta, _, _ = read_items(bc.items, bc.item_id_col or bc.mapping.item, bc.item_text_cols)
    meta = meta.filter(~pl.col("external_id").is_in(pl.Series(res.item_ids.ids, dtype=pl.String).implode()))
    if not meta.height:
        return res
    ccfg = cfg.section("content")
    text_cols = list(ccfg.get("text_cols") or [c for c in ds.items.columns if c not in ("item_idx", "external_id")])
    cache_dir = Path(ccfg.get("cache_dir") or out / "cache" / "embeddings")
    encoder = steps.make_encoder(ccfg, ds, text_cols, cache_dir, show_progress)
    frame = meta.with_columns(pl.int_range(meta.height).alias("item_idx"),
                              *[pl.col(c).fill_null("") for c in text_cols])
    vectors, _ = embed_items(frame, text_cols, encoder, cache=EmbeddingCache(cache_dir), n_items=meta.height,
                             show_progress=show_progress)
    mapper = make_mapper(info["mapper"], **(info.get("params") or {}))
    return add_content_items(res, meta["external_id"].to_list(), vectors, ds.item_map.ids, load_npz(content_npz)["vectors"],
                             mapper, cold_scale=float(ccfg.get("cold_scale", 1.0)), min_count=int(ccfg.get("min_count", 5)))


def run_update(out: Path, events: str, tracking_uri: str, *, as_of: str | None = None, window_days: int | None = None,
               min_count: int | None = None, sweeps: int | None = None, sweep_mode: str | None = None, index: str = "auto",
               items: str | None = None, show_progress: bool = True) -> int:
    """The update job on ``out`` (the caller holds its lock); returns the exit code (raises on refusal)."""
    from pipelines import steps
    from recsys.data.build import build_dataset
    from recsys.data.dataset import Dataset
    from recsys.data.idmap import IdMap
    from recsys.data.readers import resolve_files
    from recsys.errors import QualityGateError
    from recsys.io import sha256_file, write_json
    from recsys.index.delta import plan_index
    from recsys.lifelong import (DEFAULT_MIN_COUNT, DEFAULT_SWEEP_MODE, DEFAULT_SWEEPS, align_metrics_of_update,
                                 incremental_update)
    from recsys.promotion import GateConfig
    from recsys.serving.bundle import IndexConfig, export_bundle
    from recsys.serving.reader import read_bundle
    from recsys.serving.versions import current

    t0 = time.perf_counter()
    cfg = _run_config(out)
    version = current(out)
    prev = read_bundle(out / "bundles" / str(version), mmap=False)
    bc = _events_config(cfg, events, as_of, window_days)
    files, _ = resolve_files(bc.events.path, bc.as_of, bc.window_days)
    hashes = sorted(sha256_file(f) for f in files)
    delta_prev, applied = _previous_delta(out, str(version))
    if hashes and set(hashes) <= set(applied):
        log.info("update: the events %s are already in bundle %s; nothing to do", events, version)
        return 0
    work = out / UPDATES / f".work-{os.getpid()}"
    try:
        new_ds = build_dataset(bc, work / "events", reuse_ids=False)  # read, validate (rejects kept), weight, merge
        new = _frame(new_ds, ("train", "valid", "test", "test_cold"))
        rows = new_ds.manifest["rows"]
        ds = Dataset.load(out / "dataset")
        lineage = prev.manifest.get("extra", {}).get("dataset_manifest_sha256")
        if lineage and lineage == sha256_file(out / "dataset" / "manifest.json"):
            base = _frame(ds, ("train", "valid", "test", "test_cold"))
        else:  # the dataset moved on (a refused run): rebuild the history from the bundle's seen items, weight 1
            log.warning("update: %s is not the dataset of bundle %s; its seen items (weight 1) are the base history",
                        out / "dataset", version)
            seen = prev.seen.tocoo()
            base = pl.DataFrame({"user": np.asarray(prev.user_map.ids, object)[seen.row].astype(str),
                                 "item": np.asarray(prev.item_map.ids, object)[seen.col].astype(str),
                                 "weight": np.ones(seen.nnz, np.float32)})
        how = bc.weights.aggregate
        delta = merge_events([delta_prev, new], how)
        history = merge_events([base, delta], how)
        res = incremental_update(
            prev.user_vectors if prev.user_vectors is not None else np.zeros((0, prev.item_vectors.shape[1]), np.float32),
            prev.user_map or IdMap([], "user"),
            prev.item_vectors, prev.item_map, prev.foldin,
            (history["user"], history["item"], history["weight"].to_numpy()),
            new["user"].unique(maintain_order=True).to_list(), min_count=DEFAULT_MIN_COUNT if min_count is None else min_count,
            item_source=prev.item_source, sweeps=DEFAULT_SWEEPS if sweeps is None else sweeps,
            sweep_items=new["item"].unique().to_list(), sweep_mode=sweep_mode or DEFAULT_SWEEP_MODE,
            show_progress=show_progress)
        if items:
            res = content_items(out, cfg, ds, prev, res, items, show_progress)
        n_prev = len(prev.item_map)
        moved = not np.array_equal(np.asarray(res.item_vectors[:n_prev]), np.asarray(prev.item_vectors))
        ix = prev.manifest["index"]
        plan = plan_index(index, len(res.item_ids), int(ix["n_base"]) if ix.get("backend") == "delta" else n_prev, moved)
        res.stats["index_delta"] = int(plan == "delta")
        record, metrics = align_metrics_of_update(prev, res, cfg.section("align"), seed=int(cfg.seed))
        update_info = {"base_version": version, "events": [str(f) for f in files], "events_sha256": hashes,
                       "rows": {k: rows.get(k) for k in ("in", "rejected", "rejected_by_reason", "out")}, **res.stats}
        extra = {**prev.manifest.get("extra", {}), "update": update_info, "align": record}
        seen = res.seen
        info = export_bundle(out, item_vectors=res.item_vectors, item_ids=res.item_ids, user_vectors=res.user_vectors,
                             user_ids=res.user_ids, seen=seen, similarity=prev.manifest["similarity"],
                             item_popularity=np.asarray(seen.getnnz(axis=0), np.float32), item_source=res.item_source,
                             config=IndexConfig(**prev.manifest["config"]), run_id=prev.manifest.get("run_id"),
                             extra_manifest=extra, foldin=res.spec or prev.foldin,
                             delta_of=prev.path if plan == "delta" else None)
        # the new version's history since the dataset, before it can go live
        d = out / UPDATES / info.version
        d.mkdir(parents=True, exist_ok=True)
        delta.write_parquet(d / "delta.parquet")
        write_json(d / "applied.json", sorted(set(applied) | set(hashes)))
        shutil.copy(work / "events" / "rejects.parquet", d / "rejects.parquet")
        write_json(d / "record.json", update_info)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    publish = str(prev.manifest.get("extra", {}).get("model") or cfg.models.publish)
    result = out / "models" / publish / "result.json"
    from recsys.io import read_json

    metrics_test = read_json(result)["metrics_test"] if result.is_file() else {}
    ctx = steps.RunContext(out=out, tracking_uri=tracking_uri, experiment=cfg.tracking.experiment, seed=int(cfg.seed),
                           show_progress=show_progress)
    gate = GateConfig(metric=cfg.promotion.metric, tolerance=float(cfg.promotion.tolerance),
                      min_recall=float(cfg.index.min_recall))
    bundle = {"bundle_path": str(info.path), "version": info.version, "recall": info.recall,
              "metrics": {**info.metrics(), **metrics, **{f"update_{k}": float(v) for k, v in res.stats.items()}}}
    promo = steps.promote_step(ctx, ds, bundle, metrics_test, cfg.section("promotion"), gate)
    log.info("update %s -> %s in %.1f s: %s", version, info.version, time.perf_counter() - t0, res.stats)
    if not promo["promoted"]:
        raise QualityGateError("the updated bundle did not pass the gates; the previous bundle keeps serving: "
                               + "; ".join(r for r in promo["reasons"] if r.startswith("FAIL")))
    return 0

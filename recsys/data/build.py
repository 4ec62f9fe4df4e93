"""Build a dataset directory from an interaction log: the ``build-dataset`` pipeline.

The steps, each accounted for in ``manifest.json`` so that no input row disappears
without a count:

1. scan the events (CSV/Parquet file, glob or ``dt=YYYY-MM-DD`` partitions, optionally a
   trailing window) lazily; validate every row (:mod:`recsys.data.validate`), splitting
   it into rejects (with a reason) and clean rows;
2. turn values into weights (:func:`recsys.data.transforms.apply_weights`) and merge
   repeated (user, item) pairs -- steps 1-2 are one lazy polars plan, collected once;
3. iterative k-core filter on integer codes (numpy);
4. map external ids to indices with append-only id maps, reusing those of a previous
   dataset so that an item keeps its index across runs;
5. split (:mod:`recsys.data.splits`) and write everything into a temporary directory
   that is renamed over the output only when complete.

:func:`build_dataset` is a pure library function: it takes a :class:`BuildConfig`
(dataclasses, no file reading) and returns the loaded :class:`~recsys.data.dataset.Dataset`.
The CLI (``pipelines/build_dataset.py``) turns flags and TOML into the config.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.data.config import BuildConfig, WeightConfig
from recsys.data.dataset import SCHEMA_VERSION, Dataset
from recsys.data.idmap import IdMap
from recsys.data.profile import canonical_id_text, profile_input, time_horizon
from recsys.data.readers import read_items, reading, require_columns, scan_table, window_bounds
from recsys.data.splits import split
from recsys.data.transforms import aggregate_pairs, apply_weights, categories_frame, encode_expr, kcore_mask, new_categories
from recsys.data.validate import F32_MAX, P_OK, annotate, canonical_frame, check_reject_share, empty_rejects, reason_counts, rejects_frame
from recsys.errors import DataQualityError, InputError, SchemaError
from recsys.io import atomic_dir, read_json, sha256_file, write_json

__all__ = ["BuildConfig", "WeightConfig", "build_dataset"]
log = logging.getLogger(__name__)
_SHIFT = 1 << 32  # (user_code, item_code) -> one uint64 key
_BELOW_KEY = (1 << 64) - 1  # merge key of rows under the positive threshold (codes are < 2**32)


def _file_entries(files: list[Path], hash_inputs: bool) -> list[dict[str, Any]]:
    return [{"path": str(f), "bytes": f.stat().st_size, **({"sha256": sha256_file(f)} if hash_inputs else {})} for f in files]


def _reference_time(config: BuildConfig) -> int | None:
    if config.as_of is None:
        return None
    _, last = window_bounds(config.as_of, None)
    return int(dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc).timestamp())


def _load_maps(previous: Path | None) -> tuple[IdMap, IdMap]:
    if previous is None:
        return IdMap(name="user"), IdMap(name="item")
    for name in ("user_map.parquet", "item_map.parquet"):
        if not (previous / name).exists():
            raise InputError(f"{previous} has no {name}; --previous must be a dataset directory written by build-dataset")
    log.info("reusing id maps of %s (existing indices stay, new ids are appended)", previous)
    return IdMap.load(previous / "user_map.parquet", "user"), IdMap.load(previous / "item_map.parquet", "item")


def map_codes(uniq: pl.DataFrame, id_col: str, code_col: str, used_codes: np.ndarray, idmap: IdMap) -> tuple[np.ndarray, int]:
    """Index of every code, extending ``idmap`` with the unseen ids among ``used_codes``.

    New ids are appended in sorted (string) order, so two builds of the same input
    agree whatever the codes were. Only the table of uniques (one row per distinct id)
    meets the map, never the events themselves.

    Returns
    -------
    lookup : int32 array, ``lookup[code]`` is the index (``-1`` for unused codes)
    added : number of new ids
    """
    size = int(uniq[code_col].max() or 0) + 1
    used = np.zeros(size, dtype=bool)
    used[used_codes] = True
    known = idmap.to_frame().rename({"external_id": id_col})
    j = uniq.with_columns(pl.col(id_col).cast(pl.String)).join(known, on=id_col, how="left")
    j = j.filter(pl.Series(used[j[code_col].to_numpy()]))
    _check_id_forks(j[id_col], known[id_col], idmap.name)
    new = j.filter(pl.col("idx").is_null()).sort(id_col)
    start = len(idmap)
    idmap.append_new(new[id_col].to_list())
    lookup = np.full(size, -1, dtype=np.int32)
    old = j.filter(pl.col("idx").is_not_null())
    lookup[old[code_col].to_numpy()] = old["idx"].to_numpy()
    lookup[new[code_col].to_numpy()] = np.arange(start, start + new.height, dtype=np.int32)
    return lookup, new.height


def _check_id_forks(ids: pl.Series, known: pl.Series, name: str) -> None:
    """Refuse ids that differ only by float formatting (``"12"`` and ``"12.0"``).

    Float id columns are normalised when they are read, but a log whose files disagree
    (integers in one, floats as text in another), or a previous id map written from
    floats, would still fork every such id into two users or items, silently. Checked on
    the distinct ids only, so it costs nothing per row.

    Raises
    ------
    SchemaError
        Naming one such pair and the fix.
    """
    every = pl.concat([ids, known.rename(ids.name)])
    dotted = every.filter(every.str.contains(".", literal=True))  # a cheap scan; usually empty
    if dotted.len() == 0:
        return
    canon = canonical_id_text(dotted)
    clash = dotted.filter((canon != dotted) & canon.is_in(every.implode())).unique(maintain_order=True)
    if clash.len() == 0:
        return
    where = "this input and the previous id map" if known.len() else "this input"
    raise SchemaError(
        f"{name} ids {clash[0]!r} and {canonical_id_text(clash.head(1))[0]!r} both occur in {where} ({clash.len()} such ids): "
        f"the same id written once as an integer and once as a float would become two {name}s. Write the ids as "
        "integers in every file; if the previous dataset was built from float ids, rebuild it with --fresh-ids (indices change)"
    )


def _check_weight_overflow(agg: pl.DataFrame, config: BuildConfig) -> None:
    """Merged weights must be finite float32: an inf weight aborts training much later.

    Each row's value is checked against the float32 range in validation
    (``weight_too_large``); event-weight multipliers and ``aggregate="sum"`` can still
    overflow, which only the merged table shows.

    Raises
    ------
    DataQualityError
        Naming the input, a few (user, item) pairs with their row counts, and the fix.
    """
    bad = agg.filter(~pl.col("weight").is_finite())
    if bad.height == 0:
        return
    examples = bad.head(3).select(user=pl.col("__u").cast(pl.String), item=pl.col("__i").cast(pl.String), rows=pl.col("__n")).to_dicts()
    raise DataQualityError(
        f"the events {config.events.path}: the weights of {bad.height} (user, item) pairs exceed the float32 maximum "
        f"({F32_MAX:.4g}) once event weights and repeated rows are combined (aggregate={config.weights.aggregate!r}; "
        f"e.g. {examples}). Rescale the weight column upstream, or merge repeated pairs with --aggregate max or last"
    )


def _items_table(config: BuildConfig, item_map: IdMap) -> tuple[pl.DataFrame, dict[str, Any], list[Path]]:
    base = item_map.to_frame().rename({"idx": "item_idx"})
    if config.items is None:
        return base, {"rows": 0}, []
    id_col = config.item_id_col or config.mapping.item
    meta, files, stats = read_items(config.items, id_col, config.item_text_cols)
    # Catalogue items without any interaction yet are the true cold-start items: they get an
    # index (appended, so existing indices never move) and later a content-only vector.
    new = meta.filter(~pl.col("external_id").is_in(base["external_id"].implode()))["external_id"].to_list()
    if new:
        item_map.append_new(new)
        base = item_map.to_frame().rename({"idx": "item_idx"})
        log.info("%d catalogue items have no interactions yet: indexed as cold items (content only)", len(new))
    out = base.join(meta, on="external_id", how="left").sort("item_idx")
    missing = out.filter(pl.col("__has_meta").is_null()).height
    out = out.drop("__has_meta").with_columns([pl.col(c).fill_null("") for c in config.item_text_cols])
    stats |= {"items_without_metadata": missing, "items_without_interactions": len(new)}
    if missing:
        log.warning("%d of %d items have no metadata row (text columns left empty)", missing, out.height)
    return out, stats, files


def build_dataset(
    config: BuildConfig,
    out: str | os.PathLike,
    previous: str | os.PathLike | None = None,
    reuse_ids: bool = True,
) -> Dataset:
    """Run the pipeline and write a dataset directory (layout in :mod:`recsys.data.dataset`).

    Parameters
    ----------
    config : BuildConfig
    out : path
        Output directory, replaced atomically (readers see the old or the new dataset,
        never a mix).
    previous : path or None
        A dataset whose id maps are extended (indices stable across runs). ``None`` with
        ``reuse_ids=True`` reuses the maps of an existing dataset at ``out``.
    reuse_ids : bool
        ``False`` starts fresh id maps even when ``out`` holds a dataset.

    Returns
    -------
    Dataset
        The dataset written to ``out`` (equal to ``Dataset.load(out)``, without the
        re-read); ``dataset.manifest`` holds the row accounting.

    Raises
    ------
    SchemaError
        A mapped column is missing from the input.
    DataQualityError
        The rejected share exceeds ``config.max_reject_share``.
    ConfigError
        Contradictory settings (e.g. a temporal split without a time column).
    """
    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    last = [t0, time.process_time()]

    def lap(step: str) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        timing[step] = round(now - last[0], 3)
        log.debug("step %s: %.2fs wall, %.2fs cpu", step, timing[step], cpu - last[1])
        last[:] = [now, cpu]

    out = Path(out)
    if previous is None and reuse_ids and (out / "manifest.json").exists():
        previous = out
    prev = Path(previous) if previous is not None else None
    m, w = config.mapping, config.weights

    scan, event_files = scan_table(config.events, config.as_of, config.window_days)
    require_columns(scan, m.input_columns(), "events", config.events, event_files)
    with reading(config.events, event_files, "events"):
        profile = profile_input(scan, m, time_unit=config.time_unit, time_format=config.time_format, max_time=time_horizon(config.as_of))
    lossy = config.events.encoding.lower().replace("_", "-") == "utf8-lossy"
    known = sorted(w.event_weights, key=lambda e: (w.event_weights[e], e)) if (w.event_weights and w.unknown_event_weight is None) else None
    # weight a function of the event type alone -> the strongest event is the Enum max
    by_type = known is not None and (m.weight is None or w.weighting == "threshold") and w.half_life_days is None
    ann = annotate(scan, m, time_format=config.time_format, known_event_types=known, reasons=False, profile=profile, lossy_utf8=lossy)
    weighted = apply_weights(
        canonical_frame(ann, m, keep_reason=True),
        has_value=m.weight is not None,
        has_time=m.time is not None,
        has_event=m.event_type is not None,
        weighting=w.weighting,
        positive_threshold=w.positive_threshold,
        event_weights=w.event_weights,
        unknown_event_weight=w.unknown_event_weight,
        half_life_days=w.half_life_days,
        reference_time=_reference_time(config),
        drop_below_threshold=False,
        valid=pl.col(P_OK),
    )
    # One streaming pass. Good rows get dense codes for their ids (inside the scan) and
    # are merged on one uint64 (user, item) key; rejected rows share the null key and
    # rows below the rating threshold a sentinel key, so their groups are just counts.
    # The log is read once and never held in memory as 10M rows of strings.
    ok = pl.col(P_OK)
    if w.weighting == "threshold":
        ok = ok & ~pl.col("below_threshold")
    ucats, icats = new_categories(), new_categories()
    key = pl.col("__u").to_physical().cast(pl.UInt64) * _SHIFT + pl.col("__i").to_physical().cast(pl.UInt64)
    if w.weighting == "threshold":
        key = pl.coalesce(key, pl.when(pl.col(P_OK)).then(pl.lit(_BELOW_KEY, pl.UInt64)))
    plan = aggregate_pairs(
        weighted.with_columns(encode_expr("user_id", ok, ucats).alias("__u"), encode_expr("item_id", ok, icats).alias("__i"))
        .with_columns(key.alias("__key"))
        .drop("user_id", "item_id", P_OK, "below_threshold", strict=False),
        w.aggregate, keys=("__key",), count="__n", event_order_is_weight=by_type, carry=("__u", "__i"),
    )
    with reading(config.events, event_files, "events"):
        # one chunk: the streaming engine returns many, and gathers across chunks are slow
        grouped = plan.collect(engine="streaming").rechunk()
    special = grouped["__key"].is_null() | (grouped["__key"] == _BELOW_KEY)
    n_rejected = int(grouped.filter(grouped["__key"].is_null())["__n"].sum())
    n_below = int(grouped.filter(grouped["__key"] == _BELOW_KEY)["__n"].sum())
    agg = grouped.filter(~special) if special.any() else grouped
    del grouped
    _check_weight_overflow(agg, config)
    n_weighted = int(agg["__n"].sum())
    n_clean = n_weighted + n_below
    n_in = n_clean + n_rejected
    if n_in == 0:
        raise InputError(f"the events {config.events.path} hold no rows (a header only?); check the input and the upstream job")
    if n_rejected:  # second, filtered pass for the rejected rows and their reasons
        full = annotate(scan, m, time_format=config.time_format, known_event_types=known, profile=profile, lossy_utf8=lossy)
        with reading(config.events, event_files, "events"):
            rejects = rejects_frame(full, m).collect()
        if rejects.height != n_rejected:  # both passes apply the same rules to the same files
            raise InputError(
                f"the events changed while being read ({n_rejected} rows failed validation in the first pass, "
                f"{rejects.height} in the second); rerun when the input is complete"
            )
    else:
        rejects = empty_rejects(m)
    counts = reason_counts(rejects)
    lap("read_validate_merge")
    log.info("read %d rows: %d rejected, %d clean, %d pairs after merging (%.1fs)", n_in, n_rejected, n_clean, agg.height, time.perf_counter() - t0)
    check_reject_share(n_in, counts, config.max_reject_share, rejects)

    # k-core on the codes, then external ids -> stable indices
    pair_key = agg["__key"].to_numpy()
    ucode, icode = (pair_key // _SHIFT).astype(np.int64), (pair_key % _SHIFT).astype(np.int64)
    keep, k_iter = kcore_mask(ucode, icode, config.min_user_interactions, config.min_item_interactions)
    if not keep.any():
        raise InputError(
            f"no interaction is left after the k-core filter (min {config.min_user_interactions} per user, "
            f"{config.min_item_interactions} per item; {agg.height} pairs before); lower the minimums"
        )
    user_map, item_map = _load_maps(prev)
    n_users_before, n_items_before = len(user_map), len(item_map)
    u_lookup, users_added = map_codes(categories_frame(agg["__u"], "user_id", "user_code"), "user_id", "user_code", ucode[keep], user_map)
    i_lookup, items_added = map_codes(categories_frame(agg["__i"], "item_id", "item_code"), "item_id", "item_code", icode[keep], item_map)
    lap("kcore_idmaps")
    uidx, iidx = u_lookup[ucode[keep]], i_lookup[icode[keep]]
    order = np.argsort(uidx.astype(np.int64) * _SHIFT + iidx)  # keys are unique: no need for a stable sort
    extra = [c for c in ("weight", "rating", "timestamp", "event_type") if c in agg.columns]
    n_pairs = agg.height
    table = agg.select(extra)[np.flatnonzero(keep)[order]].with_columns(
        pl.Series("user_idx", uidx[order], dtype=pl.Int32),
        pl.Series("item_idx", iidx[order], dtype=pl.Int32),
        *([pl.col("event_type").cast(pl.String)] if "event_type" in extra else []),
    ).select("user_idx", "item_idx", *extra)
    del agg
    lap("index_sort")
    rows = {"in": n_in, "rejected": rejects.height, "rejected_by_reason": counts, "below_threshold": n_clean - n_weighted,
            "duplicates_merged": n_weighted - n_pairs, "kcore_removed": int((~keep).sum())}
    id_maps = {"n_users_before": n_users_before, "n_items_before": n_items_before, "users_added": users_added,
               "items_added": items_added}
    return write_dataset(out, config, table, rejects, user_map=user_map, item_map=item_map, rows=rows, id_maps=id_maps,
                         k_iter=k_iter, prev=prev, profile=profile.to_dict(), event_files=event_files, t0=t0,
                         timing=timing, lap=lap)


def write_dataset(out: Path, config: BuildConfig, table: pl.DataFrame, rejects: pl.DataFrame, *, user_map: IdMap,
                  item_map: IdMap, rows: dict[str, Any], id_maps: dict[str, int], k_iter: int, prev: Path | None,
                  profile: dict[str, Any], event_files: list[Path], t0: float, timing: dict[str, float] | None = None,
                  lap: Any = None, engine: dict[str, Any] | None = None, splits_writer: Any = None,
                  n_out: int | None = None) -> Dataset:
    """Split, join the items, write the dataset directory atomically: the common tail of every engine.

    ``table`` holds the kept pairs by index, sorted by (user, item); ``rows`` the row counts
    up to the k-core, ``id_maps`` the map sizes before and the ids added. The polars engine
    and the Spark engine (:mod:`recsys.data.spark_build`) both end here, so their splits,
    items table and manifest cannot drift apart. ``splits_writer`` (the Spark engine) writes
    the split files itself into the temporary directory and returns their row counts and the
    number of cold items; ``table`` is then unused (no rows), ``n_out`` the pair count, and
    the returned dataset has no split tables loaded (they were never on this node whole).
    """
    lap = lap or (lambda step: None)
    timing = timing if timing is not None else {}
    w = config.weights
    split_cfg = dataclasses.replace(config.split, seed=config.seed)
    parts = split(table, split_cfg) if splits_writer is None else {}
    lap("split")
    items_df, items_stats, item_files = _items_table(config, item_map)
    lap("items")

    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": config.seed,
        **({"engine": engine} if engine else {}),
        "config": config.to_dict(),
        "weighting": {
            "mode": w.weighting,
            "positive_threshold": w.positive_threshold if w.weighting == "threshold" else None,
            "description": w.describe(config.mapping.weight is not None),
        },
        "inputs_hashed": config.hash_inputs,
        "inputs": {"events": _file_entries(event_files, config.hash_inputs), "items": _file_entries(item_files, config.hash_inputs)},
        "rows": {**rows, "out": table.height if n_out is None else n_out, "splits": {k: v.height for k, v in parts.items()}},
        "input_profile": profile,
        "kcore": {"min_user": config.min_user_interactions, "min_item": config.min_item_interactions, "iterations": k_iter},
        "id_maps": {
            "previous": str(prev) if prev else None,
            "n_users": len(user_map),
            "n_items": len(item_map),
            "users_added": id_maps["users_added"],
            "items_added": id_maps["items_added"],
            "users_before": id_maps["n_users_before"],
            "items_before": id_maps["n_items_before"],
        },
        "split": {**dataclasses.asdict(split_cfg), "cold_items": int(parts["test_cold"]["item_idx"].n_unique()) if parts else 0},
        "items": items_stats,
    }
    lap("hash_inputs")
    with atomic_dir(out, overwrite=True) as tmp:
        for name, df in parts.items():
            df.write_parquet(tmp / f"{name}.parquet", compression="lz4")
        if splits_writer is not None:
            manifest["rows"]["splits"], manifest["split"]["cold_items"] = splits_writer(tmp)
        user_map.save(tmp / "user_map.parquet")
        item_map.save(tmp / "item_map.parquet")
        items_df.write_parquet(tmp / "items.parquet")
        rejects.write_parquet(tmp / "rejects.parquet")
        lap("write")
        manifest["timing_s"] = {**timing, "total": round(time.perf_counter() - t0, 3)}
        write_json(tmp / "manifest.json", manifest)
    log.info(
        "dataset %s%s: %d users, %d items, splits %s (%s) in %.1fs", out, f" ({engine['name']})" if engine else "",
        len(user_map), len(item_map), manifest["rows"]["splits"], manifest["weighting"]["description"], time.perf_counter() - t0,
    )
    # the tables just written, without reading them back (same dtypes as Dataset.load)
    return Dataset(splits=parts, user_map=user_map, item_map=item_map, items=items_df, manifest=read_json(out / "manifest.json"), path=out)


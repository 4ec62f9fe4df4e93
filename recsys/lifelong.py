"""Lifelong embeddings: incremental updates between retrains, aligned to the live bundle.

Why: between two nightly retrains new users sign up and new items launch; a full retrain
to serve them costs the whole training time, and every retrain starts from random
factors. This module holds the two library pieces of issue 20:

:func:`incremental_update`
    By default (``DEFAULT_SWEEPS``/``DEFAULT_SWEEP_MODE``) one warm-started ALS iteration
    over the merged history, started from the published factors (new users placed by the
    family's *exact* fold-in, :class:`recsys.models.foldin.FoldIn`, new items at zero):
    every item, then every user, with implicit's own solver
    (:func:`recsys.models.foldin_batch.full_sweep`), ~1/iterations of a retrain. With
    ``sweeps=0`` the fold-in alone: changed users exactly, new items by ALS's item step,
    everything else bit for bit ("without forgetting" by construction, but known items
    never learn from new events); ``sweep_mode="local"`` moves only what the changed
    users touched. The returned spec carries the moved items' ``YᵀY``.
:func:`add_content_items`
    Items with metadata only, mapped from their content by the run's cold-start mapper.
:func:`align_to_live`
    The ``align`` step of ``recsys run``: rotates a retrain's vectors onto the bundle
    ``ROOT/latest`` points to and measures drift, churn and new-item exposure
    (:mod:`recsys.embeddings.align`).

Everything is numpy on int indices plus :class:`~recsys.data.idmap.IdMap` for the
external ids; reading events, locks and publishing live in ``pipelines/update.py``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recsys.data.idmap import IdMap
from recsys.embeddings.align import Alignment, VersionView, compare_versions
from recsys.errors import InputError
from recsys.io import save_npz
from recsys.models import weighting as _weighting
from recsys.models.foldin_batch import fold_rows, full_sweep, local_sweep
from recsys.models.foldin_batch import progress as _progress
from recsys.models.foldin import FoldIn, FoldInSpec

log = logging.getLogger(__name__)

#: new items need this many distinct users before they get a collaborative vector: 1, as a
#: retrain admits every item (with the full sweep, chosen on bench_lifelong.py's validation
#: steps over 5: latest-small 75% vs 67%, synthetic 98% vs 100%; docs/lifelong.md)
DEFAULT_MIN_COUNT = 1
#: ALS sweeps after the fold-in, and what a sweep moves: "local" (the items the changed users
#: touched, then those users) or "full" (a warm-started ALS iteration: every item, then every
#: user; implicit's solver). One full sweep was chosen on the validation steps (1-3) of
#: bench_lifelong.py on both logs under the <= 10% time target (docs/lifelong.md)
DEFAULT_SWEEPS = 1
DEFAULT_SWEEP_MODE = "full"
SWEEP_MODES = ("local", "full")


@dataclass
class UpdateResult:
    """The catalogue after an update: vectors and ids of every user and item, and what changed."""

    user_vectors: np.ndarray
    user_ids: IdMap
    item_vectors: np.ndarray
    item_ids: IdMap
    seen: sp.csr_matrix  # (n_users, n_items) raw weights of the merged history
    item_source: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)
    spec: FoldInSpec | None = None  # the fold-in to publish (a local sweep moves items, so its YᵀY changes)


def history_matrix(users: Any, items: Any, weights: Any, user_ids: IdMap, item_ids: IdMap) -> sp.csr_matrix:
    """CSR of (external user, external item, weight) rows over the two maps; unknown ids are dropped.

    Duplicate pairs are summed (aggregate the history first for ``max``/``last``).
    """
    u, i = _lookup(users, user_ids), _lookup(items, item_ids)
    w = np.asarray(weights, np.float32).ravel()
    if not (len(u) == len(i) == len(w)):
        raise InputError(f"history columns differ in length: {len(u)} users, {len(i)} items, {len(w)} weights")
    ok = (u >= 0) & (i >= 0)
    m = sp.csr_matrix((w[ok], (u[ok], i[ok])), shape=(len(user_ids), len(item_ids)), dtype=np.float32)
    m.sum_duplicates()
    m.eliminate_zeros()
    return m


def _ids(ids: Any) -> pl.Series:
    """External ids as one polars string column (a polars Series passes through without a copy)."""
    if isinstance(ids, pl.Series):
        return ids.cast(pl.String).rename("id")
    return pl.Series("id", ids if isinstance(ids, np.ndarray) else list(ids)).cast(pl.String)


def _lookup(ids: Any, idmap: IdMap) -> np.ndarray:
    """Indices of many external ids (-1 when unknown), as one hash join instead of a Python loop."""
    col = _ids(ids)
    if col.len() == 0:
        return np.empty(0, np.int64)
    m = pl.DataFrame({"id": idmap.ids, "idx": np.arange(len(idmap), dtype=np.int64)}, schema={"id": pl.String, "idx": pl.Int64})
    out = col.to_frame().join(m, on="id", how="left", maintain_order="left")["idx"]
    return out.fill_null(-1).to_numpy()


def incremental_update(user_vectors: np.ndarray, user_ids: IdMap, item_vectors: np.ndarray, item_ids: IdMap,
                       spec: FoldInSpec, history: tuple[Any, Any, Any], changed_users: Any, *,
                       min_count: int = DEFAULT_MIN_COUNT, item_source: np.ndarray | None = None,
                       sweeps: int = DEFAULT_SWEEPS, cg_steps: int = 3, sweep_items: Any = None,
                       sweep_mode: str = DEFAULT_SWEEP_MODE, show_progress: bool = False) -> UpdateResult:
    """Fold new/changed users and new items into a published catalogue.

    Parameters
    ----------
    user_vectors, user_ids, item_vectors, item_ids
        The published version (``user_vectors`` may have zero rows).
    spec : FoldInSpec
        The bundle's fold-in (``foldin.json``). Item fold-in needs ``"als"`` with an
        element-wise weighting; other specs add no new collaborative items (logged).
    history : (users, items, weights)
        The whole merged history up to now as external ids and raw weights (one row per
        pair, already aggregated as the dataset aggregates). Its items not yet in
        ``item_ids`` are the new-item candidates.
    changed_users : sequence of external ids
        Users with new events: they are (re-)folded in.
    min_count : int
        Distinct users a new item needs; rarer new items wait (their counts accumulate).
    sweeps : int
        ALS sweeps after the fold-in; 0 keeps every other vector bit for bit.
    cg_steps : int
        Conjugate-gradient steps per vector and sweep (warm-started, as implicit trains).
    sweep_items : sequence of external ids, optional
        ``"local"`` only: re-solve these items instead of every item the changed users touched.
    sweep_mode : {"full", "local"}
        ``"full"``: a warm-started ALS iteration over the whole history, every item then
        every user (:func:`~recsys.models.foldin_batch.full_sweep`, ~1/iterations of a
        retrain); ``"local"``: the touched items, then the changed users
        (:func:`~recsys.models.foldin_batch.local_sweep`; unchanged users keep their vectors).

    Returns
    -------
    UpdateResult
    """
    t0 = time.perf_counter()
    uv = np.asarray(user_vectors, np.float32)
    iv = np.asarray(item_vectors, np.float32)
    if iv.ndim != 2 or uv.ndim != 2 or (len(uv) and uv.shape[1] != iv.shape[1]):
        raise InputError(f"user vectors {uv.shape} and item vectors {iv.shape} must be 2-D with one dimension")
    if min_count < 1:
        raise InputError(f"min_count must be >= 1, got {min_count}")
    if sweeps < 0 or cg_steps < 1:
        raise InputError(f"sweeps must be >= 0 and cg_steps >= 1, got {sweeps} and {cg_steps}")
    if sweep_mode not in SWEEP_MODES:
        raise InputError(f"sweep_mode must be one of {SWEEP_MODES}, got {sweep_mode!r}")
    h_users, h_items = _ids(history[0]), _ids(history[1])
    h_w = np.asarray(history[2], np.float32)
    changed = list(dict.fromkeys(str(u) for u in changed_users))
    # 1) extend the maps: every changed user, and new items with enough distinct users
    users = IdMap(user_ids.ids, "user")
    users.extend(changed)
    new_cand = _lookup(h_items, item_ids) < 0
    # distinct users per item: history rows are unique pairs, so row counts are user counts
    cand = h_items.filter(pl.Series(new_cand)).value_counts(sort=True, name="n")
    cand_ids = cand["id"].to_numpy()
    qualifying = cand.filter(pl.col("n") >= min_count)["id"].sort().to_list()
    can_item = spec.method == "als" and spec.weighting in ("linear", "log", "binary")
    if qualifying and not can_item:
        log.warning("%d new items have >= %d users but a %r fold-in spec (weighting %s) has no item solve; "
                    "they wait for the next retrain", len(qualifying), min_count, spec.method, spec.weighting)
        qualifying = []
    n_old_items = len(item_ids)
    items = IdMap(item_ids.ids, "item")
    items.extend(qualifying)
    hist = history_matrix(h_users, h_items, h_w, users, items)
    # thousands of d x d solves: one BLAS thread each (with 2 threads a 500-item ALS fold-in took
    # 96 ms instead of 1.7 ms on a loaded 2-core machine: small products only pay the thread hand-off)
    # a full sweep re-solves every user: the exact fold-in then only places the users without a vector
    full = bool(sweeps) and sweep_mode == "full" and can_item
    fold = [u for u, i in zip(changed, user_ids.to_index(changed, missing="ignore")) if i < 0] if full else changed
    with threadpool_limits(limits=1, user_api="blas"):
        res = _solve(uv, iv, spec, users, user_ids, items, item_ids, hist, fold, qualifying, can_item, item_source,
                     min_count, cand_ids, show_progress, t0, exact_items=not full)
        res.stats["users_changed"] = len(changed)
        res.spec = spec
        if sweeps and not can_item:
            log.warning("local sweeps need an ALS spec with an element-wise weighting, not %r/%s; skipped",
                        spec.method, spec.weighting)
        elif full:
            t1 = time.perf_counter()
            res.spec = full_sweep(res.user_vectors, res.item_vectors, res.item_source == "cf", hist, spec,
                                  sweeps=sweeps, cg_steps=cg_steps)
            res.stats.update(sweeps=sweeps, sweep_full=1, sweep_seconds=round(time.perf_counter() - t1, 3),
                             seconds=round(time.perf_counter() - t0, 3))
        elif sweeps:
            t1 = time.perf_counter()
            rows = users.to_index(changed).astype(np.int64)
            res.spec, res.stats["items_swept"] = local_sweep(res.user_vectors, res.item_vectors, res.item_source == "cf",
                                                             hist, rows, spec, sweeps=sweeps, cg_steps=cg_steps,
                                                             items=None if sweep_items is None else
                                                             items.to_index(list(sweep_items), missing="ignore"))
            res.stats["sweeps"] = sweeps
            res.stats["sweep_seconds"] = round(time.perf_counter() - t1, 3)
            res.stats["seconds"] = round(time.perf_counter() - t0, 3)
        return res


def _solve(uv: np.ndarray, iv: np.ndarray, spec: FoldInSpec, users: IdMap, user_ids: IdMap, items: IdMap,
           item_ids: IdMap, hist: sp.csr_matrix, changed: list[str], qualifying: list[str], can_item: bool,
           item_source: np.ndarray | None, min_count: int, cand_ids: np.ndarray, show_progress: bool,
           t0: float, exact_items: bool = True) -> UpdateResult:
    """Steps 2-4 of :func:`incremental_update` (users, items, users touching solved items).

    ``exact_items=False`` (a full sweep follows): new items start at zero and content items
    turning collaborative at their content vector; the sweep's item half-step solves them
    (an exact ``d x d`` solve per new item cost 3-5% of a retrain at d = 400, docs/lifelong.md).
    """
    n_old_items = len(item_ids)
    # 2) users on the known items (the spec's trained Gram: the Retriever's fold-in gives the same vector)
    out_u = np.zeros((len(users), iv.shape[1]), np.float32)
    out_u[: len(uv)] = uv
    cidx = users.to_index(changed).astype(np.int64)
    known = FoldIn(spec, iv)
    vecs, has = fold_rows(known, hist[:, :n_old_items].tocsr(), cidx, show_progress)
    out_u[cidx[has]] = vecs[has]
    pending = set(cidx[~has].tolist())  # only new items in the history: after the item solve
    # 3) new items (and known items that had only a content vector) against every user vector
    src_old = np.asarray(list(item_source) if item_source is not None else ["cf"] * n_old_items, dtype=object)
    out_i = np.vstack([iv, np.zeros((len(qualifying), iv.shape[1]), np.float32)])
    counts = np.diff(hist.tocsc().indptr)
    refresh = np.flatnonzero((src_old != "cf") & (counts[:n_old_items] >= min_count)) if can_item else np.empty(0, np.int64)
    solve = np.concatenate([refresh, np.arange(n_old_items, len(items))]).astype(np.int64)
    refolded = 0
    if solve.size and exact_items:
        cols = hist[:, solve].tocsc()
        gram = out_u.astype(np.float64).T @ out_u.astype(np.float64)
        for j in _progress(range(len(solve)), show_progress, "fold-in items"):
            col = cols[:, j]
            out_i[solve[j]] = known.item(out_u, col.indices, col.data, user_gram=gram)
        # 4) users who touched a solved item, once more with those vectors
        touched = set(cols.indices.tolist())
        again = np.asarray([u for u in cidx if u in touched or u in pending], np.int64)
        vecs, has = fold_rows(FoldIn(spec, out_i), hist, again, show_progress)
        out_u[again[has]] = vecs[has]
        refolded = len(again)
    unresolved = [int(u) for u in pending if not hist[u].nnz]
    if unresolved:
        log.info("%d changed users have only items outside the catalogue (below min_count): zero vectors, "
                 "popular items until their items qualify", len(unresolved))
    source = np.concatenate([src_old, np.asarray(["cf"] * len(qualifying), dtype=object)])
    source[refresh] = "cf"
    stats = {"users_changed": len(cidx), "users_refolded": refolded,
             "users_new": len(users) - len(user_ids), "items_new": len(qualifying),
             "items_content_to_cf": int(len(refresh)),
             "items_waiting": int(len(cand_ids) - len(qualifying)), "users_without_vector": len(unresolved),
             "seconds": round(time.perf_counter() - t0, 3)}
    log.info("update: %s", stats)
    return UpdateResult(out_u, users, out_i, items, hist, source, stats)


def add_content_items(res: UpdateResult, ids: Any, content: np.ndarray, warm_ids: Any, warm_content: np.ndarray,
                      mapper: Any, *, cold_scale: float = 1.0, min_count: int = 5) -> UpdateResult:
    """Append items with metadata only (no events) with vectors mapped from their content.

    Why: after a full run such an item is a cold item of the content blend (the run's
    cold-start mapper applied to its content, times ``cold_scale``); an update does the
    same, or the item stays invisible until the next run. The mapper is refitted as the
    blend step fits it: on the collaborative items with content and ``>= min_count``
    users, against their vectors *now* (a sweep may have moved them).

    Parameters
    ----------
    res : the update so far. ids, content : the new items and their content vectors (a
        zero row: no text, skipped; ids already in the catalogue are skipped too).
    warm_ids, warm_content : the catalogue items with a content vector (e.g. the run's
        ``content/item_content.npz`` rows by their dataset ids).
    mapper : a mapper name (``"ridge"``, ``"knn"``, ...) or an unfitted mapper object:
        the run's choice (``extra.cold_start_mapper`` of the bundle).
    """
    from recsys.embeddings.blend import ContentBlender

    ids = [str(i) for i in ids]
    content = np.asarray(content, np.float32)
    if content.shape[0] != len(ids):
        raise InputError(f"{len(ids)} item ids for {content.shape[0]} content rows")
    known = res.item_ids.to_index(ids, missing="ignore") if ids else np.zeros(0, np.int64)
    keep = (np.asarray(known) < 0) & (np.linalg.norm(content, axis=1) > 0)
    if not keep.any():
        return res
    rows = res.item_ids.to_index([str(i) for i in warm_ids], missing="ignore")
    ok = rows >= 0
    cf, wc, rows = res.item_vectors[rows[ok]], np.asarray(warm_content, np.float32)[ok], rows[ok]
    counts = np.diff(res.seen.tocsc().indptr)[rows] * (res.item_source[rows] == "cf")
    blender = ContentBlender(mapper=mapper, min_count=min_count).fit(wc, cf, counts)
    new_ids = [i for i, k in zip(ids, keep) if k]
    vecs = blender.map_content(content[keep]) * np.float32(cold_scale)
    items = IdMap(res.item_ids.ids, "item")
    items.extend(new_ids)
    seen = sp.hstack([res.seen, sp.csr_matrix((res.seen.shape[0], len(new_ids)), dtype=res.seen.dtype)], format="csr")
    stats = {**res.stats, "items_content_new": len(new_ids)}
    log.info("update: %d items with metadata only mapped from content (%s, fitted on %d items)", len(new_ids),
             getattr(mapper, "__name__", mapper), blender.n_train_items_)
    return UpdateResult(res.user_vectors, res.user_ids, np.vstack([res.item_vectors, vecs.astype(np.float32)]), items,
                        seen, np.concatenate([res.item_source, np.asarray(["content"] * len(new_ids), dtype=object)]),
                        stats, res.spec)


# -- the align step of `recsys run` -----------------------------------------------------------


def align_to_live(root: str | os.PathLike, item_vectors: np.ndarray, provenance: np.ndarray, user_vectors: np.ndarray,
                  user_ids: IdMap, item_ids: IdMap, seen: sp.spmatrix | None, *, similarity: str = "dot",
                  fixed_columns: int = 0, out_path: str | os.PathLike, seed: int = 0, enabled: bool = True,
                  min_shared: int = 50, churn_users: int = 1000, churn_k: int = 10) -> dict[str, Any]:
    """Rotate new vectors onto the live bundle of ``root`` and measure drift and churn.

    Returns a JSON-able dict: ``aligned_path`` (an npz with ``items``, ``users``,
    ``rotation``, ``fixed_columns``; only when a rotation was applied), ``record`` (for the
    manifest) and ``metrics`` (for MLflow). Before the first publish there is nothing to
    align to: no rotation, no metrics.
    """
    from recsys.serving.reader import read_bundle
    from recsys.serving.versions import current

    cur = current(root)
    if cur is None:
        log.info("align: no published bundle under %s yet; nothing to align to", root)
        return {"record": {"applied": False, "skipped": "no published bundle", "previous_version": None}, "metrics": {}}
    prev = read_bundle(Path(root) / "bundles" / cur)
    prev_view = view_of(prev.user_vectors, prev.user_map, prev.item_vectors, prev.item_map, prev.seen, prev.manifest["similarity"])
    new_view = view_of(user_vectors, user_ids, item_vectors, item_ids, seen, similarity)
    prev_cf = np.asarray(prev.item_source == "cf")
    mask = np.asarray(provenance) == "cf"
    prev_rows = prev.item_map.to_index(item_ids.ids, missing="ignore")
    mask &= (prev_rows >= 0) & prev_cf[np.maximum(prev_rows, 0)]
    al, metrics = compare_versions(prev_view, new_view, align=enabled, fixed_columns=fixed_columns, fit_mask=mask,
                                   min_shared=min_shared, churn_users=churn_users, churn_k=churn_k, seed=seed)
    out: dict[str, Any] = {"record": {**al.as_dict(), "previous_version": cur,
                                      **{k: round(v, 6) for k, v in metrics.items() if k.startswith(("churn", "new_"))}},
                           "metrics": metrics}
    if al.applied:
        save_npz(out_path, items=al.apply(item_vectors), users=al.apply(user_vectors), rotation=al.rotation,
                 fixed_columns=np.asarray(al.fixed_columns))
        out["aligned_path"] = str(out_path)
    return out


def align_metrics_of_update(prev: Any, res: UpdateResult, cfg: dict[str, Any], seed: int = 0) -> tuple[dict[str, Any], dict[str, float]]:
    """Drift, churn and new-item exposure of an update against the bundle it started from.

    ``prev`` is the live :class:`~recsys.serving.reader.BundleData`; ``cfg`` the ``[align]``
    section. An update never rotates: it starts from the live vectors (drift 1 without a
    sweep; a full sweep moves them a little, and the drift says how much).
    """
    prev_view = view_of(prev.user_vectors, prev.user_map, prev.item_vectors, prev.item_map, prev.seen,
                        prev.manifest["similarity"])
    new_view = view_of(res.user_vectors, res.user_ids, res.item_vectors, res.item_ids, res.seen, prev.manifest["similarity"])
    al, metrics = compare_versions(prev_view, new_view, align=False, min_shared=int(cfg.get("min_shared", 50)),
                                   churn_users=int(cfg.get("churn_users", 1000)), churn_k=int(cfg.get("churn_k", 10)),
                                   seed=seed)
    record = {**al.as_dict(), "skipped": "an update starts from the live vectors", "previous_version": prev.manifest["version"],
              **{k: round(v, 6) for k, v in metrics.items() if k.startswith(("churn", "new_"))}}
    return record, metrics


def batch_exposure(batch_path: str | os.PathLike, previous_items: IdMap, k: int = 10) -> dict[str, float]:
    """Share of a batch top-K's slots that go to items the previous version did not have.

    Reads the parts of a ``recsys recommend-batch`` / batch-step output
    (:func:`recsys.serving.batch.read_batch`, sizes checked): ``new_item_exposure_batch``
    over every slot, ``new_item_exposure_batch_top{k}`` over ranks ``<= k``.
    """
    from recsys.serving.batch import read_batch

    _, parts = read_batch(batch_path, verify=False)
    if not parts:
        return {}
    prev = pl.Series("item_id", previous_items.ids, dtype=pl.String)
    res = (pl.scan_parquet(parts).select(pl.col("rank"), (~pl.col("item_id").cast(pl.String).is_in(prev.implode())).alias("new"))
           .select(pl.col("new").mean().alias("all"), pl.col("new").filter(pl.col("rank") <= k).mean().alias("top"))
           .collect())
    return {"new_item_exposure_batch": float(res["all"][0] or 0.0), f"new_item_exposure_batch_top{k}": float(res["top"][0] or 0.0)}


def load_alignment(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, Alignment]:
    """What :func:`align_to_live` saved: rotated items, rotated users, the alignment."""
    from recsys.io import load_npz

    z = load_npz(path)
    return z["items"], z["users"], Alignment(z["rotation"], int(z["fixed_columns"]))


def view_of(user_vectors: np.ndarray | None, user_ids: IdMap | None, item_vectors: np.ndarray, item_ids: IdMap,
            seen: sp.spmatrix | None, similarity: str) -> VersionView:
    """A :class:`VersionView`; a version without users gets an empty user table."""
    if user_vectors is None or user_ids is None:
        user_vectors, user_ids = np.zeros((0, item_vectors.shape[1]), np.float32), IdMap([], "user")
    return VersionView(user_vectors, user_ids, item_vectors, item_ids, None if seen is None else sp.csr_matrix(seen), similarity)


__all__ = ["UpdateResult", "add_content_items", "align_metrics_of_update", "align_to_live", "batch_exposure", "fold_rows", "history_matrix", "incremental_update", "load_alignment", "local_sweep", "view_of",
           "DEFAULT_MIN_COUNT", "DEFAULT_SWEEPS", "DEFAULT_SWEEP_MODE", "SWEEP_MODES"]

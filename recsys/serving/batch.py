"""Batch top-K: the top ``k`` items of every user of a bundle, as partitioned parquet.

Why a batch path next to the :class:`~recsys.serving.retriever.Retriever`: many systems
(e-mail, push, caches, warehouse joins) want tonight's lists for *every* user as files,
not a query per user. The lists are exactly what ``Retriever.recommend(user, k,
exclude_seen=..., candidates=allow, exclude=block)`` with exact search returns (same
filters, same cold-user fallback), computed a block of users at a time:

* scores are one GEMM per block of users (``users x items`` float32, the block sized by
  ``max_chunk_bytes``; catalogues too wide for a useful block are also cut into item
  blocks, whose top-k are merged), so memory is bounded whatever the user count: never a
  dense ``users x items`` matrix;
* the allow-list and block-list shrink the item matrix once (fewer columns to score);
  seen items are set to ``-inf`` in the block, exactly;
* the ranking is :func:`recsys.ranking.topk_batch`, the project's one exact top-k
  (a sampled threshold, then only the candidates above it are sorted, on every core; ties
  go to the lower item index); a full-row selection per user would cost more than the
  GEMM itself on 2 cores (docs/batch.md, benchmarks/bench_batch_topk.py);
* users the bundle does not know (a ``users`` list with new ids) get the Retriever's
  fallback: the most popular items, scored by popularity.

Output (:func:`write_batch_topk`): ``part-00000.parquet`` ... with columns ``user_id``
(str), ``rank`` (int32, 1 = best), ``item_id`` (str), ``score`` (float32) and
``bundle_version`` (str), users in the order given (default: the bundle's user order),
each user's rows in one file (a file holds at most ``rows_per_file`` rows unless one user
alone has more), plus ``manifest.json`` (counts, settings, seconds, sha256 of every part).
A user with fewer eligible items than ``k`` gets fewer rows. The directory is built under
a temporary name and renamed into place (:func:`recsys.io.atomic_dir`): a reader sees no
directory or a complete one.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from recsys.errors import InputError, UnknownIdError
from recsys.index.base import check_k
from recsys.io import atomic_dir, sha256_file, write_json
from recsys.progress import Progress
from recsys.serving.batch_scoring import (  # noqa: F401 - the batch API in one place
    DEFAULT_CHUNK_BYTES, BatchScorer, BlockResult, iter_topk)
from recsys.serving.reader import BundleData

log = logging.getLogger(__name__)

BATCH_KIND = "recsys-batch-topk"
BATCH_SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
COLUMNS = ("user_id", "rank", "item_id", "score", "bundle_version")


# -- ids in, parquet out ---------------------------------------------------------------------------


def read_id_list(path: str | os.PathLike, what: str) -> list[str]:
    """External ids from a text file, one per line (blank lines and ``#`` comments skipped).

    Raises :class:`~recsys.errors.InputError` naming the file when it is missing or empty.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} file {p} does not exist; give a text file with one id per line")
    ids = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    ids = [i for i in ids if i and not i.startswith("#")]
    if not ids:
        raise InputError(f"{what} file {p} holds no ids; give one id per line")
    return ids


def item_indices(data: BundleData, ids: Sequence[str] | None, what: str, unknown: str = "raise") -> np.ndarray | None:
    """Item indices of external ids.

    ``unknown="raise"`` (the Retriever's behaviour, and the CLI's) refuses ids the bundle
    does not know: a typo must not silently widen a list. ``"ignore"`` drops them with a
    warning (the nightly step: an item that left the catalogue cannot be recommended
    anyway), but still refuses a list of which no id is known.
    """
    if ids is None:
        return None
    ids = list(ids)
    idx = data.item_map.to_index(ids, missing="ignore")
    if (idx < 0).any():
        bad = [ids[i] for i in np.flatnonzero(idx < 0)[:5]]
        msg = (f"{int((idx < 0).sum())} unknown item id(s) in {what}, e.g. {bad}; "
               f"they are not in bundle {data.manifest['version']}")
        if unknown != "ignore" or (idx < 0).all():
            raise UnknownIdError(msg)
        log.warning("%s: ignored", msg)
    return np.unique(idx[idx >= 0].astype(np.int64))


def user_indices(data: BundleData, users: Sequence[str] | None) -> tuple[list[str], np.ndarray]:
    """External user ids and their row in the bundle (``-1``: unknown, popular fallback)."""
    if users is None:
        if data.user_map is None or len(data.user_map) == 0:
            raise InputError(f"bundle {data.manifest['version']} has no user vectors; give the users to score")
        return data.user_map.ids, np.arange(len(data.user_map), dtype=np.int64)
    ids = list(dict.fromkeys(str(u) for u in users))  # one list per user, first-seen order
    if len(ids) < len(users):
        log.warning("%d duplicate user ids dropped", len(users) - len(ids))
    idx = (data.user_map.to_index(ids, missing="ignore") if data.user_map is not None
           else np.full(len(ids), -1, np.int64))
    n_unknown = int((idx < 0).sum())
    if n_unknown == len(ids):
        raise InputError(f"none of the {len(ids)} users is known to bundle {data.manifest['version']} "
                         f"(e.g. {ids[:3]}); is it the right file or bundle?")
    if n_unknown:
        log.warning("%d of %d users are unknown to the bundle: they get the most popular items (as the Retriever does)",
                    n_unknown, len(ids))
    return ids, idx.astype(np.int64)


@dataclass
class BatchResult:
    """What :func:`write_batch_topk` wrote."""

    path: Path
    manifest: dict[str, Any] = field(repr=False)

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    def metrics(self) -> dict[str, float]:
        """Numbers for ``log_metrics``."""
        m = self.manifest
        return {"batch_rows": float(m["rows"]), "batch_users": float(m["n_users"]),
                "batch_cold_users": float(m["n_cold_users"]), "batch_seconds": float(m["seconds"]),
                "batch_users_per_s": float(m["n_users"]) / max(float(m["seconds"]), 1e-9)}


class _PartWriter:
    """Parquet parts of at most ``rows_per_file`` rows, never splitting a user."""

    def __init__(self, directory: Path, rows_per_file: int, on_part: Callable[[Path], None] | None) -> None:
        self.dir, self.rows_per_file, self.on_part = directory, rows_per_file, on_part
        self.buf: list[Any] = []
        self.buffered = 0
        self.files: dict[str, dict[str, Any]] = {}

    def add(self, table: Any, user_ends: np.ndarray) -> None:
        """Append a block's rows; ``user_ends`` are the cumulative row counts at each user's end."""
        start, n = 0, table.num_rows
        while start < n:
            j = int(np.searchsorted(user_ends, start + self.rows_per_file - self.buffered, side="right")) - 1
            end = int(user_ends[j]) if j >= 0 else start
            if end <= start:  # the next user does not fit: close the file, or give it one alone
                if self.buffered:
                    self.flush()
                    continue
                end = int(user_ends[np.searchsorted(user_ends, start, side="right")])
            self.buf.append(table.slice(start, end - start))
            self.buffered += end - start
            start = end
            if self.buffered >= self.rows_per_file:
                self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.buffered:
            return
        name = f"part-{len(self.files):05d}.parquet"
        pq.write_table(pa.concat_tables(self.buf), self.dir / name)
        p = self.dir / name
        self.files[name] = {"rows": self.buffered, "bytes": p.stat().st_size, "sha256": sha256_file(p)}
        self.buf, self.buffered = [], 0
        if self.on_part is not None:
            self.on_part(p)


def _block_table(res: BlockResult, user_ids: Any, item_ids: Any, version: str) -> tuple[Any, np.ndarray]:
    """The block's filled slots as an Arrow table, and cumulative rows at each user's end."""
    import pyarrow as pa

    ok = res.ids >= 0
    counts = ok.sum(axis=1)
    rows = np.repeat(res.positions, counts)
    rank = (np.cumsum(ok, axis=1, dtype=np.int32))[ok]
    n = len(rows)
    table = pa.table({
        "user_id": user_ids.take(pa.array(rows)),
        "rank": pa.array(rank, pa.int32()),
        "item_id": item_ids.take(pa.array(res.ids[ok])),
        "score": pa.array(res.scores[ok], pa.float32()),
        "bundle_version": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([version])),
    })
    return table, np.cumsum(counts)


def check_request(data: BundleData, out: str | os.PathLike, k: int, users: Sequence[str] | None, rows_per_file: Any,
                  overwrite: bool, allow_items: Sequence[str] | None, block_items: Sequence[str] | None,
                  unknown_items: str) -> tuple[Path, int, np.ndarray | None, np.ndarray | None, list[str], np.ndarray, str]:
    """Validate a batch request before any scoring (one-node and Spark alike).

    Returns ``(out, k, allowed, blocked, user_ids, user_indices, bundle_version)``.
    """
    if isinstance(rows_per_file, bool) or not isinstance(rows_per_file, (int, np.integer)) or rows_per_file <= 0:
        raise InputError(f"rows_per_file must be a positive integer, got {rows_per_file!r}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; choose a new output directory or pass overwrite (--overwrite)")
    allowed = item_indices(data, allow_items, "the allow-list", unknown_items)
    blocked = item_indices(data, block_items, "the block-list", unknown_items)
    user_ids, uidx = user_indices(data, users)
    return out, check_k(k), allowed, blocked, user_ids, uidx, str(data.manifest["version"])


def write_batch_topk(data: BundleData, out: str | os.PathLike, *, k: int = 100, users: Sequence[str] | None = None,
                     exclude_seen: bool = True, allow_items: Sequence[str] | None = None,
                     block_items: Sequence[str] | None = None, rows_per_file: int = 1_000_000,
                     max_chunk_bytes: int = DEFAULT_CHUNK_BYTES, overwrite: bool = False, show_progress: bool = False,
                     unknown_items: str = "raise", on_part: Callable[[Path], None] | None = None) -> BatchResult:
    """Top-``k`` of every user (or of ``users``) of a bundle, written atomically to ``out``.

    Parameters
    ----------
    data : BundleData
        A verified bundle (:func:`recsys.serving.reader.read_bundle`).
    out : path
        The directory to create (parts + ``manifest.json``); it must not exist unless
        ``overwrite`` (then it is replaced atomically).
    k : int
        List length, capped at the catalogue.
    users : sequence of external ids, optional
        Default: every user of the bundle, in its order. Unknown ids get the popular list.
    exclude_seen : bool
        Drop each user's seen items (the bundle's interactions).
    allow_items, block_items : sequences of external item ids, optional
        Only / never these items, for every user; unknown ids raise
        :class:`~recsys.errors.UnknownIdError` (a typo must not silently widen a list),
        or with ``unknown_items="ignore"`` are dropped with a warning (:func:`item_indices`).
    rows_per_file : int
        Rows per parquet part (a user's rows never straddle two parts).
    max_chunk_bytes : int
        Bound on the score block held at once.
    on_part : callable, optional
        Called with each part's path once written (a hook for progress or tests).
    """
    t0 = time.perf_counter()
    out, k, allowed, blocked, user_ids, uidx, version = check_request(data, out, k, users, rows_per_file, overwrite,
                                                                      allow_items, block_items, unknown_items)
    scorer = BatchScorer(data, k, exclude_seen=exclude_seen, allowed=allowed, blocked=blocked,
                         max_chunk_bytes=max_chunk_bytes)
    users_pa, items_pa = pa.array(user_ids, pa.string()), pa.array(data.item_map.ids, pa.string())
    t_write = 0.0
    with atomic_dir(out, overwrite=overwrite) as tmp:
        writer = _PartWriter(tmp, int(rows_per_file), on_part)
        with Progress("batch top-K", total=len(uidx), unit="users", show_progress=show_progress, logger=log) as prog:
            for res in iter_topk(scorer, uidx):
                t1 = time.perf_counter()
                writer.add(*_block_table(res, users_pa, items_pa, version))
                t_write += time.perf_counter() - t1
                prog.update(len(res.positions))
            writer.flush()
        seconds = time.perf_counter() - t0
        manifest = {
            "kind": BATCH_KIND, "schema_version": BATCH_SCHEMA_VERSION, "bundle_version": version,
            "bundle_path": str(data.path), "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "k": scorer.k, "n_users": len(uidx), "n_cold_users": int((uidx < 0).sum()),
            "rows": sum(f["rows"] for f in writer.files.values()), "exclude_seen": bool(exclude_seen),
            "allow_items": None if allowed is None else len(allowed), "block_items": 0 if blocked is None else len(blocked),
            "candidate_items": scorer.n_cand, "similarity": scorer.similarity, "rows_per_file": int(rows_per_file),
            "columns": list(COLUMNS), "rank_base": 1, "exact": True,
            "seconds": round(seconds, 3),
            "seconds_by_stage": {"gemm": round(scorer.timings["gemm"], 3), "topk": round(scorer.timings["topk"], 3),
                                 "write": round(t_write, 3)},
            "files": writer.files,
        }
        write_json(tmp / MANIFEST, manifest)
    log.info("batch top-%d: %d users (%d unknown), %d rows in %d files in %.1f s -> %s", scorer.k, len(uidx),
             manifest["n_cold_users"], manifest["rows"], len(writer.files), seconds, out)
    return BatchResult(path=out, manifest=manifest)


def default_out(bundle_path: str | os.PathLike, version: str) -> Path:
    """``ROOT/batch/<version>`` for a bundle at ``ROOT/bundles/<version>``, else ``<bundle>/../batch/<version>``."""
    b = Path(bundle_path).resolve()
    root = b.parent.parent if b.parent.name == "bundles" else b.parent
    return root / "batch" / version


def read_batch(path: str | os.PathLike, verify: bool = True) -> tuple[dict[str, Any], list[Path]]:
    """The manifest and part files of a batch directory, checked against the manifest.

    For consumers (a warehouse load, exposure metrics): every part the manifest lists must
    exist with its size and, with ``verify``, its sha256, so a copied or truncated batch is
    refused with a :class:`~recsys.errors.BundleError` naming the file. Read the parts with
    any parquet reader, e.g. ``polars.scan_parquet(parts)``.
    """
    from recsys.errors import BundleError
    from recsys.io import read_json

    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise BundleError(f"{path} is not a batch top-K directory: no {MANIFEST}")
    manifest = read_json(path / MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("kind") != BATCH_KIND:
        raise BundleError(f"{path / MANIFEST} is not a batch top-K manifest")
    parts = []
    for name, meta in sorted(manifest.get("files", {}).items()):
        p = path / name
        if not p.is_file() or p.stat().st_size != meta["bytes"]:
            raise BundleError(f"{p} is missing or truncated: the manifest lists {meta['bytes']} bytes")
        if verify and sha256_file(p) != meta["sha256"]:
            raise BundleError(f"{p} fails its sha256 check: the batch was modified after it was written")
        parts.append(p)
    return manifest, parts

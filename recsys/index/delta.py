"""A published index plus a small exact delta: new items served without rebuilding the index.

Why: ``recsys update`` adds a handful of items to a catalogue whose index took minutes to
build and tune (Annoy's norm-ranged forests at 1M items). Items ``[0, n_base)`` keep
the index of the bundle they came from (its files are linked into the new bundle, bytes
unchanged, so the norm-range bounds of ``manifest.json`` still end at ``n_base``, the
items they were built over); items ``[n_base, n_items)`` are scanned exactly at query
time. A query asks both and merges by score, with the same block- and allow-lists
applied to each side, so filters are exact whatever the side an item lives on. Both
sides return exact model similarities (the approximate backends re-score their
candidates), so merging by score is merging one ranking.

The base index must still describe its items: the known items' vectors must be the ones
it was built over. ``recsys update`` only chooses a delta when they are bit for bit
unchanged (:func:`recsys.lifelong.index_plan`); otherwise it rebuilds.

Manifest entry (``index``)::

    {"backend": "delta", "n_base": 1000000, "base": {<the base backend's own entry>},
     "files": [<the base entry's files>]}
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import BundleError, InputError
from recsys.index.base import VectorIndex, normalize_rows
from recsys.index.exact import ExactIndex

log = logging.getLogger(__name__)

BACKEND = "delta"


class DeltaIndex(VectorIndex):
    """The base index over items ``[0, n_base)`` merged with an exact scan of the rest.

    Parameters
    ----------
    base : VectorIndex
        Loaded index over the first ``n_base`` items (any backend).
    vectors : array (n_items, d)
        Every item vector, prepared as the base prepares them (cosine: unit rows).
    similarity : {"dot", "cosine"}
    """

    kind = "delta"
    backend = BACKEND  # effort_name stays None: the base keeps the budget its own gate tuned

    def __init__(self, base: VectorIndex, vectors: np.ndarray, similarity: str = "dot") -> None:
        super().__init__(similarity)
        n_base = base.n_items
        if vectors.ndim != 2 or vectors.shape[0] < n_base or vectors.shape[1] != base.dim:
            raise InputError(f"delta index: {vectors.shape} item vectors for a base index of {n_base} x {base.dim}")
        self.base, self.n_base, self.vectors_ = base, n_base, vectors
        self.delta = ExactIndex.from_prepared(vectors[n_base:], "dot")  # prepared already: cosine rows are unit

    def build(self, vectors: Any) -> DeltaIndex:
        raise InputError("a delta index is not built: export_bundle(delta_of=...) reuses a bundle's index")

    def save(self, directory: str | os.PathLike) -> dict[str, Any]:
        raise InputError("a delta index is not saved: link_base_files() puts the base's files into the new bundle")

    @classmethod
    def load(cls, directory: str | os.PathLike, entry: Mapping[str, Any], vectors: np.ndarray, similarity: str, *,
             prefault: bool = False, search_threads: int = 1) -> DeltaIndex:
        """The base backend's index over ``vectors[:n_base]``, merged with an exact scan of the rest."""
        from recsys.index import registry  # the registry names this class: import it here, not at the top

        n_base, base_entry = entry.get("n_base"), entry.get("base")
        if not isinstance(n_base, int) or not 0 < n_base <= len(vectors) or not isinstance(base_entry, Mapping):
            raise BundleError(f"delta index entry needs n_base in (0, {len(vectors)}] and a base entry, got "
                              f"n_base={n_base!r}")
        base = registry.load_index(directory, base_entry, vectors[:n_base], similarity, prefault=prefault,
                                   search_threads=search_threads)
        prepared = normalize_rows(np.asarray(vectors)) if similarity == "cosine" else np.asarray(vectors)
        return cls(base, prepared, similarity)

    @classmethod
    def entry_files(cls, entry: Mapping[str, Any]) -> list[str]:
        from recsys.index import registry

        return registry.index_files(entry.get("base", {}))

    def unload(self) -> None:
        self.base.unload()

    def _search(self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None,
                allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        n = self.n_base
        # each side gets the filters in its own numbering: base ids as they are, delta ids - n_base
        ex_b = None if exclude is None else [e[e < n] for e in exclude]
        ex_d = None if exclude is None else [e[e >= n] - n for e in exclude]
        al_b = None if allowed is None else allowed[allowed < n]
        al_d = None if allowed is None else allowed[allowed >= n] - n
        shape = (len(queries), k)
        ids_b, sc_b = np.full(shape, -1, np.int64), np.full(shape, -np.inf, np.float32)
        if al_b is None or al_b.size:
            ids_b, sc_b = self.base._search(queries, k, ex_b, al_b)
        ids_d, sc_d = np.full(shape, -1, np.int64), np.full(shape, -np.inf, np.float32)
        if self.delta.n_items and (al_d is None or al_d.size):
            ids_d, sc_d = self.delta._search(queries, k, ex_d, al_d)
            ids_d = np.where(ids_d >= 0, ids_d + n, -1)
        return merge_topk(ids_b, sc_b, ids_d, sc_d, k)


def merge_topk(ids_a: np.ndarray, sc_a: np.ndarray, ids_b: np.ndarray, sc_b: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of two sorted result sets per row (ties: the first set first); empty slots last."""
    ids, sc = np.concatenate([ids_a, ids_b], axis=1), np.concatenate([sc_a, sc_b], axis=1)
    sc = np.where(ids >= 0, sc, -np.inf).astype(np.float32)
    order = np.argsort(-sc, axis=1, kind="stable")[:, :k]
    out_ids, out_sc = np.take_along_axis(ids, order, 1), np.take_along_axis(sc, order, 1)
    out_ids[~np.isfinite(out_sc)] = -1
    if out_ids.shape[1] < k:  # fewer than k slots in both sets together
        pad = k - out_ids.shape[1]
        out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=-1)
        out_sc = np.pad(out_sc, ((0, 0), (0, pad)), constant_values=-np.inf)
    return out_ids, out_sc


#: ``recsys update --index auto`` rebuilds catalogues up to this size: they are served by an exact
#: scan anyway (``DEFAULT_EXACT_MAX_ITEMS``) and their index builds in seconds
REBUILD_MAX_ITEMS = 50_000
#: ... and rebuilds once the exact delta would exceed this share of the indexed items (a delta
#: scan costs ~n_delta * d per query: at 5% of 1M items about an exact 50k-item scan, ~1 ms)
DELTA_MAX_SHARE = 0.05
INDEX_MODES = ("auto", "rebuild", "delta")


def plan_index(mode: str, n_items: int, n_indexed: int, known_moved: bool, *, rebuild_max_items: int = REBUILD_MAX_ITEMS,
               delta_max_share: float = DELTA_MAX_SHARE) -> str:
    """``"rebuild"`` or ``"delta"``: how ``recsys update`` serves a catalogue of ``n_items``.

    Parameters
    ----------
    mode : {"auto", "rebuild", "delta"}
        ``rebuild``/``delta`` force the choice (``delta`` is refused when known items
        moved: the base index would describe vectors that no longer exist).
    n_items : items of the updated catalogue.
    n_indexed : items the live bundle's index covers (its ``n_base`` when it is already a delta).
    known_moved : whether any vector of the live bundle's items changed (a sweep, a content
        item turned collaborative).

    ``auto``: rebuild when known items moved, when the catalogue is small enough that a
    rebuild is cheap (``<= rebuild_max_items``), or when the delta would exceed
    ``delta_max_share`` of the indexed items; else delta.
    """
    if mode not in INDEX_MODES:
        raise InputError(f"index mode must be one of {INDEX_MODES}, got {mode!r}")
    if mode == "rebuild":
        return "rebuild"
    if known_moved:
        if mode == "delta":
            raise InputError("--index delta: known item vectors moved in this update (a sweep, or a content item "
                             "that got a collaborative vector), so the published index no longer describes them; "
                             "use --index rebuild (or auto)")
        return "rebuild"
    if mode == "delta":
        return "delta"
    if n_items <= rebuild_max_items or n_items - n_indexed > delta_max_share * n_indexed:
        return "rebuild"
    return "delta"


def delta_entry(base_entry: Mapping[str, Any], n_base: int) -> dict[str, Any]:
    """The manifest entry of a delta over ``base_entry`` (itself a delta: its base, whose ``n_base`` holds)."""
    if base_entry.get("backend") == BACKEND:
        return {"backend": BACKEND, "n_base": int(base_entry["n_base"]), "base": dict(base_entry["base"]),
                "files": list(base_entry.get("files", []))}
    from recsys.index import registry

    return {"backend": BACKEND, "n_base": int(n_base), "base": dict(base_entry),
            "files": registry.index_files(base_entry)}


def reuse_index(prev_dir: str | os.PathLike, prev_manifest: Mapping[str, Any], prev_items: np.ndarray, dst: str | os.PathLike,
                items: np.ndarray, queries: np.ndarray, similarity: str, recall_k: int,
                min_recall: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Link a bundle's index into ``dst`` as the base of a delta over ``items``; its entry and gate record.

    The gate is the export's, without tuning: recall@``recall_k`` of the merged search
    against an exact search over every item, on the export's query sample; below
    ``min_recall`` nothing is published (the caller rebuilds instead).

    Raises
    ------
    InputError
        The first ``n_base`` item vectors differ from the bundle's (its index no longer
        describes them: rebuild), or the similarity changed.
    QualityGateError
        The merged recall is below ``min_recall``.
    """
    from recsys.errors import QualityGateError
    from recsys.index.recall import exact_topk, recall_at_k

    n_base = int(prev_manifest["n_items"])
    if prev_manifest["similarity"] != similarity or len(items) < n_base:
        raise InputError(f"a delta needs the base bundle's similarity and items: {prev_manifest['similarity']} / "
                         f"{n_base} items vs {similarity} / {len(items)}")
    if not np.array_equal(np.asarray(prev_items), items[:n_base]):
        raise InputError("the known items' vectors moved since the base bundle: its index no longer describes them; "
                         "rebuild the index")
    entry = delta_entry(prev_manifest["index"], n_base)
    link_base_files(prev_dir, dst, entry["files"])
    index = DeltaIndex.load(dst, entry, items, similarity)
    try:
        truth = exact_topk(items, queries, recall_k, similarity)
        recall = recall_at_k(index, queries, truth, recall_k)
    finally:
        index.unload()
    gate = {"recall_k": recall_k, "recall": recall, "min_recall": min_recall, "passed": recall >= min_recall,
            "n_queries": len(queries), "delta_items": len(items) - entry["n_base"]}
    if recall < min_recall:
        raise QualityGateError(f"delta index recall@{recall_k} = {recall:.4f} < {min_recall}; rebuild the index")
    log.info("delta index: %d items on the base index of %d, %d exact; recall@%d %.4f", len(items), entry["n_base"],
             len(items) - entry["n_base"], recall_k, recall)
    return entry, gate


def link_base_files(src: str | os.PathLike, dst: str | os.PathLike, files: Sequence[str]) -> None:
    """Put the base index's files into a new bundle directory: hard links (same bytes), else copies.

    A published bundle is never modified (a process may have its ``.ann`` mapped), and a
    hard link shares bytes that neither directory will ever change, so linking is safe and
    costs no disk; across file systems it falls back to a copy.
    """
    for name in files:
        s, d = Path(src) / name, Path(dst) / name
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)


__all__ = ["BACKEND", "DELTA_MAX_SHARE", "INDEX_MODES", "REBUILD_MAX_ITEMS", "DeltaIndex", "delta_entry",
           "link_base_files", "merge_topk", "plan_index", "reuse_index"]

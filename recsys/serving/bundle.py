"""Versioned retrieval bundles: export with a recall gate, read with checksum verification.

A bundle is one directory that holds everything a :class:`~recsys.serving.retriever.Retriever`
needs, and nothing it has to guess::

    ROOT/bundles/<version>/
      manifest.json       written last: similarity, transform, dims, counts, index
                          parameters, measured recall, sha256 + size of every file
      index.*             the index backend's files ([index] backend; the manifest's
                          ``index`` entry names them): Annoy's index.ann, or for
                          norm-ranged dot models index-NN.ann (one forest per norm
                          range) + norm_order.npy; faiss's index.faiss; none for exact
      item_vectors.npy    float32 item vectors as the model produced them (exact
                          re-scoring, exact search, similar items, fold-in)
      items.parquet       idx, external_id, popularity, source  (the int -> id map)
      user_vectors.npy    float32, optional
      users.parquet       idx, external_id, optional
      seen.npz            CSR indptr/indices of each user's seen items, optional
      foldin.json         how to fold in a new user from a history (recsys.models.foldin)
      foldin.npz          its arrays (ALS: YᵀY of the trained factors), optional

Why this shape: Annoy keeps only integer ids, so the id map travels with the index; the
``.ann`` file does not record metric or dimension and loading it with the wrong ones
fails silently, so the manifest does; and a bundle is built under a temporary name and
renamed into place, so a reader never sees a half-written one. A published bundle is
never modified: processes that memory-map a ``.ann`` die with SIGBUS when it is
overwritten in place (spotify/annoy issue 335), so every export gets a new directory
and :mod:`recsys.serving.versions` switches a ``latest`` pointer.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys.data.idmap import IdMap
from recsys.errors import ConfigError, InputError
from recsys.index.annoy_index import METRICS
from recsys.index.base import check_similarity, check_vectors
from recsys.index.delta import reuse_index
from recsys.index.registry import BACKENDS, DEFAULT_BACKEND, create_index
from recsys.io import sha256_file, write_json
from recsys.models.foldin import FoldInSpec, spec_for
from recsys.serving.gate import gate_queries, run_gate
from recsys.serving.manifest import ITEM_SOURCES, write_digest
# the bundle API in one place: reading lives in reader, publish/rollback in versions
from recsys.serving.reader import (  # noqa: F401
    BUNDLE_KIND, MANIFEST, SCHEMA_VERSION, BundleData, index_files, load_index, read_bundle, verify_bundle)
from recsys.serving.versions import list_bundles, previous, prune, publish, resolve_bundle, rollback  # noqa: F401

log = logging.getLogger(__name__)

#: catalogue size up to which the Retriever scans exactly instead of asking Annoy;
#: measured by benchmarks/bench_retrieval.py with norm-ranged forests (docs/retrieval.md):
#: single queries at k=100, recall >= 0.95, 64 dims, one BLAS thread, CPU p50 exact vs
#: Annoy: 25k items 0.54 vs 0.66 ms (clusters) and 0.65 vs 0.66 (MF-like); 50k 1.29 vs
#: 1.36 and 1.09 vs 0.89; 100k 2.46 vs 1.29 and 1.71 vs 0.80. Up to 50k exact costs
#: about the same, batches faster, and misses nothing.
DEFAULT_EXACT_MAX_ITEMS = 50_000
FOLDIN_METHODS = ("mean", "als")


@dataclass
class IndexConfig:
    """Index build and quality-gate settings (the ``[index]`` config section).

    Parameters
    ----------
    backend : {"annoy", "exact", "faiss"}
        Index backend (:mod:`recsys.index.registry`): Annoy (default), exact search, or
        a faiss HNSW graph (``pip install 'recsys[faiss]'``).
    n_trees : int
        Annoy trees: more trees give better recall per ``search_k`` but a bigger file.
    search_k : int
        First search effort the gate tries (Annoy ``search_k``, faiss ``ef_search``);
        ``-1`` starts at the backend's default (Annoy: ``n_trees * recall_k``).
    seed : int
        ``set_seed`` of the forest.
    recall_k : int
        K of the gate's recall@K (and the result count ``search_k`` is tuned for).
    min_recall : float
        The gate refuses to publish below this recall@K against exact search.
    n_queries : int
        Real user vectors sampled for the gate.
    exact_max_items : int
        Catalogues up to this size are served by exact search (recorded in the manifest;
        the retriever may override it).
    max_search_k : int, optional
        Cap of the ``search_k`` doubling (default: twice the item count).
    metric : {"angular", "dot"}
        ``"dot"`` (Annoy's own MIPS metric) only for measurement: it loses recall.
    norm_ranges : int
        Dot models only: split the catalogue by vector norm into up to this many ranges,
        one forest each (:mod:`recsys.index.norm_ranged`); 1 builds a single forest.
        Measured at 1M items (docs/retrieval.md) it cuts the latency at recall 0.95
        several-fold, and it is what keeps recall at all when norms are very skewed.
    norm_range_min : int
        Smallest first (longest-vector) range; catalogues under twice this size get a
        single forest.
    norm_range_exact_max : int
        Norm ranges up to this size are scanned exactly at query time (their forests are
        still written).
    per_range_search_k : bool
        After the gate's one ``search_k`` passes, give each norm range its own, priced
        from its measured recall curve (:func:`~recsys.index.range_budgets.tune_range_search_k`);
        kept only when it also passes and costs less in total. False: one value for all.
    n_jobs : int
        Build threads (-1: all cores). Only ``n_jobs=1`` gives byte-identical files for
        the same seed: with more threads Annoy's trees depend on thread scheduling
        (measured; the recall gate still holds every build to the same threshold).
    hnsw_m, hnsw_ef_construction : int
        faiss backend: graph degree and build beam width.
    """

    n_trees: int = 50
    search_k: int = -1
    seed: int = 42
    recall_k: int = 100
    min_recall: float = 0.95
    n_queries: int = 1000
    exact_max_items: int = DEFAULT_EXACT_MAX_ITEMS
    max_search_k: int | None = None
    metric: str = "angular"
    norm_ranges: int = 8
    norm_range_min: int = 1_000
    norm_range_exact_max: int = 8_192
    per_range_search_k: bool = True
    n_jobs: int = -1
    backend: str = DEFAULT_BACKEND
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"index.backend must be one of {sorted(BACKENDS)}, got {self.backend!r}")
        if self.hnsw_m < 2 or self.hnsw_ef_construction <= 0:
            raise ConfigError("index.hnsw_m must be >= 2 and index.hnsw_ef_construction positive")
        if self.n_trees <= 0 or self.recall_k <= 0 or self.n_queries <= 0:
            raise ConfigError("index.n_trees, index.recall_k and index.n_queries must be positive")
        if not 0 < self.min_recall <= 1:
            raise ConfigError(f"index.min_recall must be in (0, 1], got {self.min_recall}")
        if self.metric not in METRICS:
            raise ConfigError(f"index.metric must be one of {METRICS}, got {self.metric!r}")
        if self.exact_max_items < 0:
            raise ConfigError("index.exact_max_items must be >= 0")
        if self.norm_range_exact_max < 0:
            raise ConfigError("index.norm_range_exact_max must be >= 0 (0: search every range in its forest)")
        if self.norm_ranges <= 0 or self.norm_range_min <= 0:
            raise ConfigError("index.norm_ranges and index.norm_range_min must be positive (norm_ranges = 1: one forest)")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> IndexConfig:
        """Build from a config section, refusing unknown keys (typos)."""
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown [index] settings {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)


@dataclass
class BundleInfo:
    """What :func:`export_bundle` produced (and what to log to MLflow)."""

    path: Path
    version: str
    recall: float
    search_k: int
    recall_k: int
    n_items: int
    n_users: int
    build_seconds: float
    index_bytes: int
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Numbers for ``log_metrics`` (the gate's recall under its K)."""
        n_forests = len(self.manifest.get("index", {}).get("ranges", {}).get("files", [None]))
        return {f"index_recall@{self.recall_k}": self.recall, "index_search_k": float(self.search_k),
                "index_forests": float(n_forests),
                "index_build_seconds": self.build_seconds, "index_bytes": float(self.index_bytes)}


def _as_idmap(ids: IdMap | Sequence[Any] | np.ndarray, name: str, n: int) -> IdMap:
    m = ids if isinstance(ids, IdMap) else IdMap(list(ids), name)
    if len(m) != n:
        raise InputError(f"{len(m)} {name} ids for {n} {name} vectors; they must align row for row")
    return m


def _check_seen(seen: Any, n_users: int, n_items: int) -> sp.csr_matrix:
    if not sp.issparse(seen):
        raise InputError(f"seen must be a scipy.sparse user x item matrix, got {type(seen).__name__}")
    m = sp.csr_matrix(seen)
    if m.shape != (n_users, n_items):
        raise InputError(f"seen has shape {m.shape}, expected (n_users, n_items) = {(n_users, n_items)}")
    m.sort_indices()
    return m


def foldin_for(model: Any) -> FoldInSpec:
    """The fold-in spec a model's bundle carries (:func:`recsys.models.foldin.spec_for`).

    ALS: its exact normal equations with the trained weighting, ``alpha``, ``λ`` and
    ``YᵀY``; BPR: its own solver; others: the mean of the item vectors.
    """
    return spec_for(model)


def _foldin_spec(foldin: FoldInSpec | Mapping[str, Any] | None, similarity: str) -> FoldInSpec:
    try:
        spec = foldin if isinstance(foldin, FoldInSpec) else FoldInSpec.from_json(foldin or {"method": "mean"})
    except InputError as e:
        raise InputError(f"bad foldin spec: {e}") from e
    # ALS / BPR solve for a vector scored by dot products; the tower's output is a trained
    # user's vector in the model's own space (unit length under cosine): any similarity
    if spec.method in ("als", "bpr") and similarity != "dot":
        raise InputError(f"{spec.method} fold-in is for dot-product models")
    return spec


def new_version(checksums: Mapping[str, str], now: _dt.datetime | None = None) -> str:
    """``YYYYmmddTHHMMSS.ffffffZ-<8 hex>``: sortable by time, unique by content."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    digest = hashlib.sha256("".join(f"{k}:{v}" for k, v in sorted(checksums.items())).encode()).hexdigest()[:8]
    return f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{digest}"


def export_bundle(
    root: str | os.PathLike,
    *,
    item_vectors: np.ndarray,
    item_ids: IdMap | Sequence[Any],
    user_vectors: np.ndarray | None = None,
    user_ids: IdMap | Sequence[Any] | None = None,
    seen: sp.spmatrix | None = None,
    similarity: str = "dot",
    item_popularity: np.ndarray | None = None,
    item_source: np.ndarray | Sequence[str] | None = None,
    config: IndexConfig | None = None,
    run_id: str | None = None,
    extra_manifest: Mapping[str, Any] | None = None,
    queries: np.ndarray | None = None,
    foldin: FoldInSpec | Mapping[str, Any] | None = None,
    delta_of: str | os.PathLike | None = None,
) -> BundleInfo:
    """Build, measure and write a new bundle under ``root/bundles/<version>``.

    The bundle is *not* published: call :func:`recsys.serving.versions.publish` to
    point ``root/latest`` at it (a champion comparison may come first).

    Parameters
    ----------
    item_vectors : array (n_items, d)
        Every item of the catalogue (warm and cold); NaN/inf rows are refused.
    item_ids : IdMap or sequence
        External id of each row.
    user_vectors, user_ids : optional
        Known users (for ``Retriever.recommend``); both or neither.
    seen : sparse (n_users, n_items), optional
        Items each user interacted with, excluded from their recommendations.
    similarity : {"dot", "cosine"}
        The model's similarity; ``"dot"`` gets the MIPS augmentation.
    item_popularity : array (n_items,), optional
        Fallback ranking for unknown users; default: column counts of ``seen``.
    item_source : array of str (n_items,), optional
        Where each item vector came from: ``"cf"``, ``"blend"`` or ``"content"``.
    config : IndexConfig
    run_id : str, optional
        MLflow run that produced the vectors (lineage).
    extra_manifest : dict, optional
        Stored under ``manifest["extra"]`` (dataset hash, model class ...).
    queries : array, optional
        Real query vectors for the gate; default a sample of ``user_vectors``.
    foldin : FoldInSpec or dict, optional
        How :meth:`Retriever.recommend_from_history` folds in a history: a
        :class:`~recsys.models.foldin.FoldInSpec` (``foldin_for(model)``) or its JSON
        form; default ``{"method": "mean"}``.
    delta_of : path, optional
        A bundle whose items are the first rows of ``item_vectors``, bit for bit: its
        index is linked in and the items after it are scanned exactly at query time
        (:mod:`recsys.index.delta`; ``recsys update`` between two rebuilds).

    Raises
    ------
    InputError
        Bad vectors (NaN/inf, misaligned ids, wrong shapes).
    QualityGateError
        Recall@K stays below ``config.min_recall`` even at the largest ``search_k``;
        the temporary directory is removed and nothing is published.
    """
    cfg = config or IndexConfig()
    similarity = check_similarity(similarity)
    items = check_vectors(item_vectors, "item vectors")
    n_items, dim = items.shape
    if n_items == 0:
        raise InputError("cannot export a bundle with zero items")
    item_map = _as_idmap(item_ids, "item", n_items)
    users = None
    user_map = None
    if (user_vectors is None) != (user_ids is None):
        raise InputError("give user_vectors and user_ids together (or neither)")
    if user_vectors is not None:
        users = check_vectors(user_vectors, "user vectors", dim)
        user_map = _as_idmap(user_ids, "user", len(users))  # type: ignore[arg-type]
    seen_m = None if seen is None else _check_seen(seen, len(users) if users is not None else 0, n_items)
    if item_popularity is None:
        pop = (np.bincount(seen_m.indices, minlength=n_items) if seen_m is not None else np.zeros(n_items)).astype(np.float32)
    else:
        pop = np.asarray(item_popularity, dtype=np.float32).ravel()
        if pop.shape != (n_items,) or not np.isfinite(pop).all():
            raise InputError(f"item_popularity must be {n_items} finite values")
    source = np.asarray(["cf"] * n_items if item_source is None else [str(s) for s in item_source], dtype=object)
    if source.shape != (n_items,) or not set(source) <= set(ITEM_SOURCES):
        raise InputError(f"item_source must be {n_items} values from {ITEM_SOURCES}")
    foldin_spec = _foldin_spec(foldin, similarity)

    gate_q, gate_from = gate_queries(queries, users, items, cfg)

    bundles = Path(root) / "bundles"
    bundles.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=bundles))
    try:
        t0 = time.perf_counter()
        if delta_of is not None:
            base = read_bundle(delta_of, verify=False)
            index_entry, gate = reuse_index(base.path, base.manifest, base.item_vectors, tmp, items, gate_q, similarity,
                                            cfg.recall_k, cfg.min_recall)
            build_s = time.perf_counter() - t0
        else:
            index = create_index(cfg.backend, similarity, n_items, asdict(cfg)).build(items)
            build_s = time.perf_counter() - t0
            gate = run_gate(index, items, gate_q, gate_from, cfg, similarity)  # tunes index in place
            index_entry = index.save(tmp)  # the backend's files and its manifest entry
            index.unload()
        np.save(tmp / "item_vectors.npy", items, allow_pickle=False)
        _write_ids(tmp / "items.parquet", item_map, popularity=pop, source=source)
        if users is not None and user_map is not None:
            np.save(tmp / "user_vectors.npy", users, allow_pickle=False)
            _write_ids(tmp / "users.parquet", user_map)
        if seen_m is not None:
            np.savez(tmp / "seen.npz", indptr=seen_m.indptr.astype(np.int64), indices=seen_m.indices.astype(np.int32),
                     shape=np.asarray(seen_m.shape, np.int64))
        write_json(tmp / "foldin.json", foldin_spec.to_json())
        if foldin_spec.arrays():  # YᵀY (+ bm25 norms): exact fold-in even when vectors were blended
            np.savez(tmp / "foldin.npz", **foldin_spec.arrays())
        files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir())}
        version = new_version({k: v["sha256"] for k, v in files.items()})
        manifest = {
            "kind": BUNDLE_KIND, "schema_version": SCHEMA_VERSION, "version": version,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "run_id": run_id, "similarity": similarity, "dim": dim, "n_items": n_items,
            "n_users": 0 if users is None else len(users), "n_seen": 0 if seen_m is None else int(seen_m.nnz),
            "item_sources": {s: int((source == s).sum()) for s in ITEM_SOURCES},
            "index": {**index_entry, "build_seconds": round(build_s, 3)},
            "exact_max_items": cfg.exact_max_items, "quality_gate": gate, "config": asdict(cfg),
            "foldin": foldin_spec.to_json(), "files": files, "extra": dict(extra_manifest or {}),
        }
        write_json(tmp / MANIFEST, manifest)
        write_digest(tmp / MANIFEST)  # the manifest's own checksum, outside it (serving/manifest.py)
        # mkdtemp/mkstemp create 0700/0600: a serving process running as another user
        # must be able to read (and mmap) the bundle; nothing in it is secret
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        os.chmod(tmp, 0o755)
        final = bundles / version
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("bundle %s: %d items, recall@%d %.4f", version, n_items, cfg.recall_k, gate["recall"])
    return BundleInfo(path=final, version=version, recall=gate["recall"], search_k=manifest["index"].get("search_k", 0), recall_k=cfg.recall_k,
                      n_items=n_items, n_users=manifest["n_users"], build_seconds=build_s,
                      index_bytes=sum(files[f]["bytes"] for f in index_files(manifest)), manifest=manifest)


def _write_ids(path: Path, ids: IdMap, **cols: np.ndarray) -> None:
    df = ids.to_frame()
    if cols:
        df = df.with_columns(**{k: pl.Series(k, list(v) if v.dtype == object else v) for k, v in cols.items()})
    df.write_parquet(path)


__all__ = ["IndexConfig", "BundleInfo", "BundleData", "export_bundle", "verify_bundle", "read_bundle", "load_index",
           "publish", "previous", "list_bundles", "rollback", "resolve_bundle", "prune", "new_version"]

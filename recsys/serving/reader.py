"""Reading a bundle: verify sizes and checksums against the manifest, then load it.

A bundle that is incomplete (no manifest: an interrupted export), has a missing or
truncated file, or a file whose sha256 differs from the manifest is refused with a
:class:`~recsys.errors.BundleError` naming the file, before anything is memory-mapped:
Annoy itself would happily map a truncated or foreign ``.ann`` and answer garbage.
The layout is described in :mod:`recsys.serving.bundle`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys.data.idmap import IdMap
from recsys.errors import BundleError, InputError
from recsys.index import registry
from recsys.index.base import VectorIndex
from recsys.io import read_json, sha256_file
from recsys.models.foldin import FoldInSpec
from recsys.serving.manifest import check_digest, validate_manifest

SCHEMA_VERSION = 1
BUNDLE_KIND = "recsys-retrieval-bundle"
MANIFEST = "manifest.json"


@dataclass
class BundleData:
    """The verified contents of a bundle (arrays may be memory-mapped)."""

    path: Path
    manifest: dict[str, Any]
    item_vectors: np.ndarray
    item_map: IdMap
    item_popularity: np.ndarray
    item_source: np.ndarray
    user_vectors: np.ndarray | None
    user_map: IdMap | None
    seen: sp.csr_matrix | None
    foldin: FoldInSpec


def verify_bundle(path: str | os.PathLike, checksums: bool = True) -> dict[str, Any]:
    """Check that ``path`` is a complete, unmodified bundle and return its manifest.

    Every file listed in the manifest must exist with the recorded size and (with
    ``checksums=True``) sha256. Raises :class:`~recsys.errors.BundleError` naming the
    first problem: a missing manifest means an incomplete export.
    """
    path = Path(path)
    mf = path / MANIFEST
    if not mf.is_file():
        raise BundleError(f"{path} is not a complete bundle: no {MANIFEST} (an export was interrupted, or wrong path)")
    check_digest(mf)  # the manifest itself: always, it is small (old bundles without a digest: a warning)
    try:
        manifest = read_json(mf)
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{mf} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("kind") != BUNDLE_KIND:
        raise BundleError(f"{mf} is not a recsys retrieval bundle manifest")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(f"{path}: bundle schema version {manifest.get('schema_version')}, this recsys reads "
                          f"{SCHEMA_VERSION}; re-export it with `recsys export`")
    validate_manifest(manifest, path)
    for name, meta in manifest.get("files", {}).items():
        f = path / name
        if not f.is_file():
            raise BundleError(f"{path} is incomplete: {name} is missing")
        size = f.stat().st_size
        if size != meta["bytes"]:
            raise BundleError(f"{f} has {size} bytes, the manifest says {meta['bytes']} (truncated or replaced)")
        if checksums and sha256_file(f) != meta["sha256"]:
            raise BundleError(f"{f} fails its sha256 check: the file is corrupted or was modified after export")
    for required in ("item_vectors.npy", "items.parquet", *index_files(manifest)):
        if required not in manifest.get("files", {}):
            raise BundleError(f"{path}: manifest lists no {required}")
    return manifest


def index_files(manifest: dict[str, Any]) -> list[str]:
    """The index files a manifest names, as its backend lists them (:mod:`recsys.index.registry`)."""
    return registry.index_files(manifest.get("index", {}))


def read_bundle(path: str | os.PathLike, verify: bool = True, mmap: bool = True) -> BundleData:
    """Verify and read a bundle directory (vectors memory-mapped when ``mmap``)."""
    path = Path(path)
    manifest = verify_bundle(path, checksums=verify)
    mode = "r" if mmap else None
    try:
        items = np.load(path / "item_vectors.npy", mmap_mode=mode, allow_pickle=False)
        idf = pl.read_parquet(path / "items.parquet")
        item_map = IdMap.load(path / "items.parquet", name="item")
        users = user_map = seen = None
        if (path / "user_vectors.npy").exists():
            users = np.load(path / "user_vectors.npy", mmap_mode=mode, allow_pickle=False)
            user_map = IdMap.load(path / "users.parquet", name="user")
        if (path / "seen.npz").exists():
            with np.load(path / "seen.npz", allow_pickle=False) as z:
                shape = tuple(int(s) for s in z["shape"])
                seen = sp.csr_matrix((np.ones(len(z["indices"]), np.float32), z["indices"], z["indptr"]), shape=shape)
        foldin = _read_foldin(path)
    except (OSError, ValueError, KeyError) as e:
        raise BundleError(f"{path}: cannot read bundle files: {e}") from e
    if items.shape != (manifest["n_items"], manifest["dim"]) or len(item_map) != manifest["n_items"]:
        raise BundleError(f"{path}: item vectors {items.shape} / id map {len(item_map)} disagree with the manifest")
    if users is not None and (user_map is None or users.shape != (len(user_map), manifest["dim"])):
        raise BundleError(f"{path}: user vectors and user id map disagree")
    return BundleData(path=path, manifest=manifest, item_vectors=items, item_map=item_map,
                      item_popularity=idf["popularity"].to_numpy().astype(np.float32),
                      item_source=np.asarray(idf["source"].to_list(), dtype=object),
                      user_vectors=users, user_map=user_map, seen=seen, foldin=foldin)


def _read_foldin(path: Path) -> FoldInSpec:
    """``foldin.json`` (+ ``foldin.npz``) as a spec; none at all means the mean (old bundles)."""
    if not (path / "foldin.json").exists():
        return FoldInSpec("mean")
    arrays = {}
    if (path / "foldin.npz").exists():
        with np.load(path / "foldin.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    try:
        return FoldInSpec.from_json(read_json(path / "foldin.json"), arrays)
    except InputError as e:
        raise BundleError(f"{path}: foldin.json: {e}; re-export the bundle") from e


def load_index(data: BundleData, prefault: bool = False, search_threads: int = 1) -> VectorIndex:
    """Load the bundle's index through its backend (:mod:`recsys.index.registry`), from the manifest entry.

    ``search_threads`` > 1 lets one query search a norm-ranged Annoy bundle's forests in
    parallel (:mod:`recsys.index.lanes`); other layouts have nothing to split.
    """
    return registry.load_index(data.path, data.manifest["index"], data.item_vectors, data.manifest["similarity"],
                               prefault=prefault, search_threads=search_threads)

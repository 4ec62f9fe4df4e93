"""Index backends by name: what ``[index] backend`` selects and a bundle manifest records.

Why: the bundle export, the bundle reader and the quality gate work through the
:class:`~recsys.index.base.VectorIndex` contract only; this table is the one place that
maps a name to the class implementing it. A new backend is its module in
``recsys/index/`` plus one line here (docs/extending.md). Optional backends (faiss)
import their library lazily, so listing them here costs nothing when it is absent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from recsys.errors import BundleError, ConfigError
from recsys.index.annoy_index import AnnoyIndex
from recsys.index.base import VectorIndex
from recsys.index.exact import ExactIndex
from recsys.index.faiss_index import FaissHNSWIndex

#: name -> backend class; "annoy" is the default, "exact" the reference every backend is measured against
BACKENDS: dict[str, type[VectorIndex]] = {
    "annoy": AnnoyIndex,
    "exact": ExactIndex,
    "faiss": FaissHNSWIndex,
}
DEFAULT_BACKEND = "annoy"


def backend_class(name: str) -> type[VectorIndex]:
    """The class registered as ``name``; a :class:`ConfigError` lists the known names."""
    try:
        return BACKENDS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown index backend {name!r}; choose one of {sorted(BACKENDS)} "
                          "([index] backend)") from None


def create_index(name: str, similarity: str, n_items: int, settings: Mapping[str, Any]) -> VectorIndex:
    """A new, unbuilt index of backend ``name`` for ``n_items`` vectors from the ``[index]`` settings."""
    return backend_class(name).create(similarity, n_items, settings)


def _entry_backend(entry: Mapping[str, Any]) -> type[VectorIndex]:
    name = entry.get("backend", DEFAULT_BACKEND)  # bundles from before the registry are Annoy
    if name == "delta":  # written by `recsys update` only (not an [index] backend one can build)
        from recsys.index.delta import DeltaIndex

        return DeltaIndex
    if name not in BACKENDS:
        raise BundleError(f"the bundle's index backend {name!r} is unknown to this recsys (known: {sorted(BACKENDS)}); "
                          "upgrade recsys or re-export the bundle")
    return BACKENDS[name]


def load_index(directory: str | os.PathLike, entry: Mapping[str, Any], vectors: np.ndarray, similarity: str, *,
               prefault: bool = False, search_threads: int = 1) -> VectorIndex:
    """Load the index a manifest entry describes, through its backend's :meth:`~VectorIndex.load`."""
    return _entry_backend(entry).load(directory, entry, vectors, similarity, prefault=prefault,
                                      search_threads=search_threads)


def index_files(entry: Mapping[str, Any]) -> list[str]:
    """The files a manifest entry's backend wrote (for the bundle's size and checksum checks)."""
    return _entry_backend(entry).entry_files(entry)

"""Annoy forests and the MIPS -> angular transform, shared by both Annoy index layouts.

Why a module of its own: :mod:`recsys.index.annoy_index` (one forest) chooses between its
own layout and :mod:`recsys.index.norm_ranged` (one forest per norm range), and both build
forests the same way; keeping the shared pieces here lets each import them without a cycle.

Maximum inner product search (MIPS) is reduced to angular search with the extra-dimension
transform of Bachrach et al. (2014), the same as ``implicit.utils.augment_inner_product``:
every item vector ``x`` gets one more coordinate ``sqrt(M^2 - |x|^2)`` (``M`` the largest
norm) so all items have norm ``M``, and queries get ``0`` there. The angle between a query
and an augmented item is then monotone in their inner product.
"""

from __future__ import annotations

import math

import annoy
import numpy as np
from tqdm.auto import tqdm


def augment_inner_product(vectors: np.ndarray) -> tuple[float, np.ndarray]:
    """MIPS -> angular transform: append ``sqrt(M^2 - |x|^2)`` to every row.

    Returns ``(M, augmented)``. Rounding can make ``M^2 - |x|^2`` slightly negative for
    the longest rows, which would give NaN; it is clipped at zero.
    """
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    max_norm = float(norms.max()) if len(norms) else 0.0
    extra = np.sqrt(np.clip(max_norm**2 - norms**2, 0.0, None)).astype(np.float32)
    return max_norm, np.hstack([vectors, extra[:, None]]).astype(np.float32)


def build_forest(data: np.ndarray, metric: str, n_trees: int, seed: int, n_jobs: int = -1) -> annoy.AnnoyIndex:
    """An in-memory Annoy forest over the rows of ``data`` (row ``i`` is item ``i``).

    ``set_seed`` is called before any item is added: Annoy draws its split points when
    the trees are built, from the seed it holds then.
    """
    ann = annoy.AnnoyIndex(data.shape[1], metric)
    ann.set_seed(seed)
    for i in tqdm(range(len(data)), desc="annoy add", disable=True if len(data) < 200_000 else None, mininterval=5):
        ann.add_item(i, data[i])
    ann.build(n_trees, n_jobs=n_jobs)
    return ann


def scaled_search_k(search_k: int, n: int, search_k_ref: int) -> int:
    """``search_k`` for ``n`` results when it was tuned for ``search_k_ref`` results.

    Queries that over-fetch (to make room for excluded items) scale the budget with the
    result count, so filtering does not lower their recall.
    """
    if search_k > 0 and n > search_k_ref:
        return int(math.ceil(search_k * n / search_k_ref))
    return search_k

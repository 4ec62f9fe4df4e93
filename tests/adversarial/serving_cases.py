"""Small bundles and helpers shared by the serving side of the adversarial suite."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recsys.serving.bundle import BundleInfo, IndexConfig, export_bundle

N_ITEMS, N_USERS, DIM = 1200, 60, 8


def small_bundle(root: Path, seed: int = 0, norm_ranged: bool = True, **kw) -> BundleInfo:
    """A synthetic dot-product bundle; ``norm_ranged`` gives it several forests (and
    ``index.ranges`` in its manifest, where ``exact_range_max`` lives)."""
    rng = np.random.default_rng(seed)
    items = (rng.normal(size=(N_ITEMS, DIM)) * rng.lognormal(0, 0.5, size=(N_ITEMS, 1))).astype(np.float32)
    cfg = IndexConfig(n_trees=5, n_jobs=1, n_queries=50, norm_range_min=200 if norm_ranged else 1_000_000)
    args = dict(item_vectors=items, item_ids=[f"i{i}" for i in range(N_ITEMS)],
                user_vectors=rng.normal(size=(N_USERS, DIM)).astype(np.float32),
                user_ids=[f"u{u}" for u in range(N_USERS)],
                seen=sp.random(N_USERS, N_ITEMS, density=0.01, format="csr", random_state=seed), config=cfg)
    args.update(kw)
    return export_bundle(root, **args)


def reseal(bundle: Path) -> None:
    """Recompute ``manifest.sha256`` after an edit: what a writer bug (or a hand edit that
    also fixed the digest) would leave, so that only the schema stands in the way."""
    digest = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    (bundle / "manifest.sha256").write_text(f"{digest}  manifest.json\n")

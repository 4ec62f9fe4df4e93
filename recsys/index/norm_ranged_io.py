"""Files of a norm-ranged Annoy index: one ``.ann`` per range plus the norm order.

Why a module of its own: what is on disk (and every check that a set of files belongs
together) is a different concern from how a query visits the ranges
(:mod:`recsys.index.norm_ranged`). Annoy maps any file it is given, whatever its item
count or dimension, and answers garbage, so every count and shape the manifest records
is cross-checked here before a forest is used.

Layout in a bundle directory::

    index-00.ann ... index-NN.ann   one forest per range, longest vectors first
    norm_order.npy                  item indices by descending norm (int64)

and the manifest's ``index["ranges"]`` entry (``bounds``, ``max_norms``, ``files``,
``order_file``, ``exact_range_max``, ``transforms``, optional per-range ``search_k``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annoy
import numpy as np

from recsys.errors import BundleError

ORDER_FILE = "norm_order.npy"
RANGE_TRANSFORMS = ("mips", "angular")


@dataclass
class RangeFiles:
    """What :func:`read_ranges` found: everything a norm-ranged index needs besides its vectors."""

    order: np.ndarray
    bounds: list[int]
    max_norms: list[float]
    forests: list[annoy.AnnoyIndex]
    transforms: list[str]
    budgets: list[int] | None
    exact_range_max: int


def write_ranges(directory: str | os.PathLike, forests: Sequence[annoy.AnnoyIndex], order: np.ndarray,
                 prefix: str = "index") -> list[str]:
    """Write ``<prefix>-NN.ann`` per forest and :data:`ORDER_FILE`; return the forest file names."""
    directory = Path(directory)
    files = []
    for r, ann in enumerate(forests):
        name = f"{prefix}-{r:02d}.ann"
        if not ann.save(os.fspath(directory / name)):
            raise OSError(f"annoy could not save range {r} to {directory / name}")
        files.append(name)
    np.save(directory / ORDER_FILE, np.asarray(order, np.int64), allow_pickle=False)
    return files


def read_ranges(directory: str | os.PathLike, spec: dict[str, Any], n_items: int, dim: int,
                prefault: bool = False) -> RangeFiles:
    """Check ``spec`` (the manifest's ``ranges`` entry) against ``n_items`` x ``dim`` vectors and map the forests.

    Raises
    ------
    BundleError
        The ranges, budgets, transforms or files do not fit the vectors or each other
        (files from different exports, or a bundle of another recsys version).
    """
    directory = Path(directory)
    bounds, files = list(spec["bounds"]), list(spec["files"])
    if len(files) != len(bounds) - 1 or bounds[0] != 0 or bounds[-1] != n_items or len(spec["max_norms"]) != len(files):
        raise BundleError(f"{directory}: norm ranges {bounds} do not fit {n_items} item vectors and {len(files)} files")
    budgets = spec.get("search_k")
    if budgets is not None and (len(budgets) != len(files) or any(int(b) < 0 for b in budgets)):
        raise BundleError(f"{directory}: per-range search_k {budgets} does not fit {len(files)} ranges")
    try:
        order = np.load(directory / spec["order_file"], allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BundleError(f"cannot read {directory / spec['order_file']}: {e}") from e
    if order.shape != (n_items,) or not np.array_equal(np.bincount(order, minlength=n_items), np.ones(n_items, np.int64)):
        raise BundleError(f"{directory / spec['order_file']} is not a permutation of the {n_items} items")
    transforms = list(spec.get("transforms", ["mips"] * len(files)))  # older bundles: all augmented
    if len(transforms) != len(files) or not set(transforms) <= set(RANGE_TRANSFORMS):
        raise BundleError(f"{directory}: range transforms {transforms} do not fit {len(files)} ranges")
    forests = []
    for r, name in enumerate(files):
        ann = annoy.AnnoyIndex(dim + (transforms[r] == "mips"), "angular")
        try:
            ann.load(os.fspath(directory / name), prefault=prefault)
        except OSError as e:
            raise BundleError(f"cannot load Annoy index {directory / name}: {e}") from e
        if ann.get_n_items() != bounds[r + 1] - bounds[r]:
            raise BundleError(f"{directory / name} holds {ann.get_n_items()} items, range {r} has "
                              f"{bounds[r + 1] - bounds[r]}; the files come from different exports")
        forests.append(ann)
    return RangeFiles(order=order, bounds=bounds, max_norms=[float(m) for m in spec["max_norms"]], forests=forests,
                      transforms=transforms, budgets=None if budgets is None else [int(b) for b in budgets],
                      exact_range_max=int(spec.get("exact_range_max", 0)))

"""Integrity and schema of a bundle's ``manifest.json``.

The manifest says how to read every other file of a bundle (metric, dimension, norm
ranges, search budgets) and carries their checksums, but nothing checked the manifest
itself: one flipped bit in a key such as ``exact_range_max`` loaded silently and cut
recall@100 from 1.00 to 0.31, and ``"similarity": "cosine"`` in place of ``"dot"``
changed every answer. So:

* the export writes ``manifest.sha256`` beside it (``sha256sum`` format, inside the
  temporary directory that is renamed into place, so it is as atomic as the bundle) and
  every load compares it with the manifest's bytes, even with ``verify=False`` (the
  manifest is small);
* every load validates the manifest's values against :func:`validate_manifest`: types,
  allowed values, required keys, and no unknown keys where a flipped bit in an optional
  key would otherwise fall back to a default.

A bundle written before the digest existed has no ``manifest.sha256``: it still loads,
after its schema check, with a warning naming the fix (re-export it). A present but
unreadable or mismatching digest is refused.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from recsys.errors import BundleError
from recsys.index.annoy_index import METRICS
from recsys.index.base import SIMILARITIES
from recsys.io import atomic_path, sha256_file
from recsys.models.foldin import METHODS as FOLDIN_METHODS

log = logging.getLogger(__name__)

DIGEST = "manifest.sha256"
ITEM_SOURCES = ("cf", "blend", "content")
RANGE_TRANSFORMS = ("mips", "angular")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DIGEST_LINE = re.compile(r"^([0-9a-f]{64})  (\S+)\n?$")

#: keys of Annoy's norm-range entry (closed: two are optional, a flipped bit must not drop one)
RANGE_KEYS = {"order_file", "bounds", "max_norms", "files", "exact_range_max", "transforms", "search_k"}


# -- digest ------------------------------------------------------------------------------
def write_digest(manifest_path: Path) -> str:
    """Write ``manifest.sha256`` beside ``manifest_path`` (atomically); return the hex digest."""
    digest = sha256_file(manifest_path)
    with atomic_path(manifest_path.with_name(DIGEST)) as tmp:
        tmp.write_text(f"{digest}  {manifest_path.name}\n")
    return digest


def check_digest(manifest_path: Path) -> bool:
    """Compare ``manifest.json`` with its recorded sha256; False when the bundle predates it.

    Raises
    ------
    BundleError
        The digest file is unreadable or malformed, or the manifest's bytes differ.
    """
    f = manifest_path.with_name(DIGEST)
    if not f.exists():
        log.warning("%s has no %s (written before recsys checksummed manifests): its values are schema-checked "
                    "but not integrity-checked; re-export it to add one", manifest_path.parent, DIGEST)
        return False
    try:
        m = _DIGEST_LINE.match(f.read_text(encoding="ascii"))
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{f} is unreadable ({e}); the bundle is corrupted: re-export it or roll back") from e
    if m is None or m.group(2) != manifest_path.name:
        raise BundleError(f"{f} is not a '<sha256>  {manifest_path.name}' line; the bundle is corrupted: re-export it "
                          "or roll back")
    if sha256_file(manifest_path) != m.group(1):
        raise BundleError(f"{manifest_path} fails its sha256 check ({DIGEST}): the manifest is corrupted or was edited "
                          "after export; re-export the bundle or roll back to another version")
    return True


# -- schema ------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool))


def _plain_name(v: Any) -> bool:
    """A file name inside the bundle: no directories, no ``..`` (the manifest names what is read)."""
    return isinstance(v, str) and v not in ("", ".", "..") and "/" not in v and "\\" not in v and "\x00" not in v


class _Check:
    """Collects the first violations with the key path that failed."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def need(self, obj: Mapping[str, Any], key: str, ok: Callable[[Any], bool], want: str, path: str = "") -> Any:
        name = f"{path}{key}"
        if key not in obj:
            self.errors.append(f"{name} is missing")
            return None
        if not ok(obj[key]):
            self.errors.append(f"{name} must be {want}, got {obj[key]!r:.80}")
            return None
        return obj[key]

    def known(self, obj: Mapping[str, Any], keys: set[str], path: str) -> None:
        unknown = sorted(set(obj) - keys)
        if unknown:
            self.errors.append(f"unknown key(s) {[path + k for k in unknown]}")


def validate_manifest(manifest: Any, where: Path) -> dict[str, Any]:
    """Check types and allowed values of a bundle manifest; return it unchanged.

    Raises
    ------
    BundleError
        Listing every violation (``index.ranges.exact_range_max is missing`` ...), with
        the fix: re-export the bundle or roll back.
    """
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: the manifest is not a JSON object")
    c = _Check()
    pos, nonneg = (lambda v: _is_int(v) and v > 0), (lambda v: _is_int(v) and v >= 0)
    c.need(manifest, "version", lambda v: _plain_name(v), "a plain directory name")
    c.need(manifest, "similarity", lambda v: v in SIMILARITIES, f"one of {SIMILARITIES}")
    c.need(manifest, "dim", pos, "an int > 0")
    n_items = c.need(manifest, "n_items", pos, "an int > 0")
    for key in ("n_users", "n_seen", "exact_max_items"):
        c.need(manifest, key, nonneg, "an int >= 0")
    if "run_id" in manifest and not (manifest["run_id"] is None or isinstance(manifest["run_id"], str)):
        c.errors.append("run_id must be a string or null")
    c.need(manifest, "item_sources", lambda v: isinstance(v, dict) and set(v) <= set(ITEM_SOURCES)
           and all(nonneg(x) for x in v.values()), f"counts of {ITEM_SOURCES}")
    gate = c.need(manifest, "quality_gate", lambda v: isinstance(v, dict), "an object")
    if gate is not None:
        c.need(gate, "recall", lambda v: _is_num(v) and 0 <= v <= 1, "a number in [0, 1]", "quality_gate.")
    for key in ("config", "extra"):
        c.need(manifest, key, lambda v: isinstance(v, dict), "an object")
    foldin = c.need(manifest, "foldin", lambda v: isinstance(v, dict), "an object")
    if foldin is not None:
        c.need(foldin, "method", lambda v: v in FOLDIN_METHODS, f"one of {FOLDIN_METHODS}", "foldin.")
    files = c.need(manifest, "files", lambda v: isinstance(v, dict) and bool(v), "a non-empty object")
    for name, meta in (files or {}).items():
        if not _plain_name(name):
            c.errors.append(f"files: {name!r} is not a plain file name inside the bundle")
        elif not (isinstance(meta, dict) and isinstance(meta.get("sha256"), str) and _HEX64.match(meta["sha256"])
                  and nonneg(meta.get("bytes"))):
            c.errors.append(f"files.{name} must be {{sha256: 64 hex digits, bytes: int >= 0}}")
    index = c.need(manifest, "index", lambda v: isinstance(v, dict), "an object")
    if index is not None:
        _validate_index(c, index, n_items)
    if c.errors:
        shown = "; ".join(c.errors[:8]) + (f"; and {len(c.errors) - 8} more" if len(c.errors) > 8 else "")
        raise BundleError(f"{where}: invalid bundle manifest: {shown}. The manifest is corrupted or was written by "
                          "another recsys version: re-export the bundle or roll back to another version")
    return manifest


def _validate_index(c: _Check, ix: dict[str, Any], n_items: int | None) -> None:
    """The index entry: common fields typed; Annoy's norm ranges in full.

    Unknown keys are allowed here (each backend writes its own entry, see
    :meth:`recsys.index.base.VectorIndex.save`); the ranges' own keys are closed, because
    two of them are optional and a flipped bit would silently drop one.
    """
    p = "index."
    c.need(ix, "backend", lambda v: isinstance(v, str) and bool(v), "a backend name", p)
    if ix.get("backend") == "delta":  # recsys.index.delta: the base's own entry, over its first n_base items
        n_base = c.need(ix, "n_base", lambda v: _is_int(v) and 0 < v <= (n_items or v), "an int in (0, n_items]", p)
        base = c.need(ix, "base", lambda v: isinstance(v, dict) and v.get("backend") != "delta", "a non-delta entry", p)
        if base is not None:
            _validate_index(c, base, n_base)
        return
    if "annoy" in str(ix.get("backend")):
        c.need(ix, "metric", lambda v: v in METRICS, f"one of {METRICS}", p)
        c.need(ix, "transform", lambda v: isinstance(v, str) and bool(v), "a transform name", p)
    for key in ("annoy_dim", "n_trees", "search_k_ref"):
        if key in ix:
            c.need(ix, key, lambda v: _is_int(v) and v > 0, "an int > 0", p)
    if "search_k" in ix:
        c.need(ix, "search_k", lambda v: _is_int(v) and v >= -1, "an int >= -1", p)
    if "seed" in ix:
        c.need(ix, "seed", _is_int, "an int", p)
    if "files" in ix:
        c.need(ix, "files", lambda v: isinstance(v, list) and all(map(_plain_name, v)), "a list of file names", p)
    ranges = ix.get("ranges")
    if ranges is None:
        if ix.get("backend") == "annoy" or "file" in ix:
            c.need(ix, "file", _plain_name, "the .ann file name (or null with ranges)", p)
        return
    if ix.get("file") is not None:
        c.errors.append("index.file must be null when index.ranges is set")
    if not isinstance(ranges, dict):
        c.errors.append("index.ranges must be an object")
        return
    p = "index.ranges."
    c.known(ranges, RANGE_KEYS, p)
    files = c.need(ranges, "files", lambda v: isinstance(v, list) and bool(v) and all(map(_plain_name, v)),
                   "a list of file names", p) or []
    c.need(ranges, "order_file", _plain_name, "a file name", p)
    c.need(ranges, "bounds", lambda v: isinstance(v, list) and len(v) == len(files) + 1 and all(map(_is_int, v))
           and v[0] == 0 and all(a < b for a, b in zip(v, v[1:])) and (n_items is None or v[-1] == n_items),
           f"{len(files) + 1} increasing ints from 0 to n_items", p)
    c.need(ranges, "max_norms", lambda v: isinstance(v, list) and len(v) == len(files) and all(map(_is_num, v)),
           f"{len(files)} numbers", p)
    c.need(ranges, "exact_range_max", lambda v: _is_int(v) and v >= 0, "an int >= 0", p)
    if "transforms" in ranges and not (isinstance(ranges["transforms"], list) and len(ranges["transforms"]) == len(files)
                                       and set(ranges["transforms"]) <= set(RANGE_TRANSFORMS)):
        c.errors.append(f"index.ranges.transforms must be {len(files)} values from {RANGE_TRANSFORMS}")
    if "search_k" in ranges and not (isinstance(ranges["search_k"], list) and len(ranges["search_k"]) == len(files)
                                     and all(_is_int(b) and b >= 0 for b in ranges["search_k"])):
        c.errors.append(f"index.ranges.search_k must be {len(files)} ints >= 0")

"""Which bundle is live: the ``latest`` pointer, its history, rollback and pruning.

``ROOT/latest`` is a relative symlink to ``bundles/<version>``. It is switched by
creating the new link under a temporary name and ``os.replace``-ing it over the old one,
which is atomic on POSIX: a reader resolves either the old or the new bundle, never a
missing or half-written one. Bundles themselves are immutable, so a process that has a
``.ann`` memory-mapped keeps a valid file when ``latest`` moves on (overwriting the file
in place would kill it with SIGBUS, spotify/annoy issue 335).

``ROOT/history.json`` records every switch (version, time, action) so that
:func:`previous` knows what to roll back to.

A killed export leaves ``bundles/.tmp-*`` (its bundle under construction), a killed
publish a ``.latest.<hex>`` link, a killed history write a ``.history.json.*.tmp`` file:
:func:`clean_leftovers` removes them at the next run (the caller holds the run lock).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from recsys.errors import BundleError
from recsys.io import read_json, write_json
from recsys.serving.reader import MANIFEST, verify_bundle

log = logging.getLogger(__name__)

LATEST = "latest"
HISTORY = "history.json"


def list_bundles(root: str | os.PathLike) -> list[str]:
    """Complete bundle versions under ``root/bundles``, oldest first (names sort by time)."""
    d = Path(root) / "bundles"
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file())


def current(root: str | os.PathLike) -> str | None:
    """The version ``root/latest`` points to, or ``None`` before the first publish."""
    link = Path(root) / LATEST
    if not link.is_symlink():
        return None
    return Path(os.readlink(link)).name


def _history(root: Path) -> list[dict]:
    f = root / HISTORY
    return list(read_json(f)) if f.is_file() else []


def publish(root: str | os.PathLike, version: str, action: str = "publish") -> Path:
    """Point ``root/latest`` at ``bundles/<version>`` atomically, after verifying it.

    Returns the bundle path. Raises :class:`~recsys.errors.BundleError` if the version
    does not exist or fails verification (nothing is switched then).
    """
    root = Path(root)
    if not isinstance(version, str) or not version or "/" in version or "\\" in version or version.startswith("."):
        raise BundleError(f"{version!r} is not a bundle version name (a directory under {root / 'bundles'})")
    target = root / "bundles" / version
    if not target.is_dir():
        raise BundleError(f"no bundle {version!r} under {root / 'bundles'}; known: {list_bundles(root)[-5:]}")
    verify_bundle(target)
    before = current(root)
    tmp = root / f".{LATEST}.{uuid.uuid4().hex}"
    os.symlink(Path("bundles") / version, tmp)
    try:
        os.replace(tmp, root / LATEST)
    finally:
        if tmp.is_symlink():
            tmp.unlink()
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    write_json(root / HISTORY, [*_history(root), {"version": version, "at": now, "action": action, "from": before}])
    log.info("%s: latest -> %s (was %s)", action, version, before)
    return target


def previous(root: str | os.PathLike) -> str | None:
    """The version to roll back to: the last one live before the current one.

    Versions that were themselves rolled back from are skipped, so repeated rollbacks
    walk further into the past instead of flip-flopping. Falls back to the newest
    bundle older than the current one when there is no history.
    """
    root = Path(root)
    cur = current(root)
    hist = _history(root)
    bad = {h.get("from") for h in hist if h.get("action") == "rollback"} | {cur}
    existing = set(list_bundles(root))
    for h in reversed(hist):
        if h["version"] not in bad and h["version"] in existing:
            return h["version"]
    older = [v for v in list_bundles(root) if cur is None or v < cur]
    return older[-1] if older else None


def rollback(root: str | os.PathLike, version: str | None = None) -> str:
    """Switch ``latest`` back to ``version`` (default :func:`previous`); return it."""
    target = version or previous(root)
    if target is None:
        raise BundleError(f"nothing to roll back to under {root}: no earlier complete bundle")
    publish(root, target, action="rollback")
    return target


def resolve_bundle(path: str | os.PathLike) -> Path:
    """A bundle directory, or the bundle ``path/latest`` points to (resolved now)."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    if (path / LATEST).exists():
        return (path / LATEST).resolve()
    if (path / "bundles").is_dir():
        raise BundleError(f"{path} holds bundles but none is published (no {LATEST}); run publish or `recsys export`")
    if path.is_dir():
        raise BundleError(f"{path} is not a complete bundle: no {MANIFEST} (an export was interrupted, or wrong path)")
    raise BundleError(f"{path} does not exist")


def clean_leftovers(root: str | os.PathLike, min_age_s: float = 0.0) -> list[str]:
    """Delete what killed exports and publishes left under ``root``; return the names, logged.

    Removed: ``bundles/.tmp-*`` directories (a bundle under construction: never
    published, never read), ``.latest.*`` links (a ``latest`` switch that did not
    happen) and ``.history.json.*.tmp`` files (an unfinished history write). Published
    bundles and ``latest`` are never touched.

    Call it only while holding the lock of ``root`` (:class:`recsys.lock.DirectoryLock`,
    as ``recsys run`` does): without the lock a concurrent export's temporary directory
    could be deleted under it. ``min_age_s`` spares entries younger than that.
    """
    root = Path(root)
    now = time.time()
    found = [*(root / "bundles").glob(".tmp-*"), *root.glob(f".{LATEST}.*"), *root.glob(f".{HISTORY}.*.tmp")]
    removed = []
    for p in sorted(found):
        try:
            if now - p.lstat().st_mtime < min_age_s:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except FileNotFoundError:
            continue
        removed.append(str(p.relative_to(root)))
    if removed:
        log.warning("removed %d leftover(s) of an interrupted export or publish under %s: %s", len(removed), root, removed)
    return removed


def prune(root: str | os.PathLike, keep: int = 5) -> list[str]:
    """Delete all but the ``keep`` newest bundles, never the live or previous one.

    Deleting a bundle a running process still maps is safe on POSIX (the inode lives
    until it is unmapped), unlike overwriting it.
    """
    root = Path(root)
    protect = {current(root), previous(root)}
    versions = list_bundles(root)
    doomed = [v for v in versions[: max(0, len(versions) - keep)] if v not in protect]
    for v in doomed:
        shutil.rmtree(root / "bundles" / v)
    return doomed

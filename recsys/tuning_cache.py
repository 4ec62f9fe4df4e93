"""The tuning cache: best parameters per dataset lineage, so a nightly job tunes once, not nightly.

Why: a budgeted search costs minutes, and tomorrow's log is today's plus one day: the same
shape, the same columns, the same weighting. Re-tuning on it would spend the budget to
find the same parameters. The cache keys the best parameters of a family by the data's
*lineage*, not its contents:

* the schema: which columns are user / item / weight / time / event, the weighting and
  aggregation, the k-core filter and the split configuration (a change in any of them
  changes what the model sees, so the parameters are searched again);
* a size bucket: ``round(log2(n))`` of the training interactions, users and items (a log
  that grew 1.5x stays in the bucket; one that doubled is re-tuned);
* the family, its fixed parameters and its ``tune`` table (a new search space or budget
  is a new search).

Entries live in one JSON file (written atomically through :func:`recsys.io.write_json`,
so a killed run never leaves half a file); ``recsys run`` keeps it at
``OUT/state/tuning_cache.json`` beside the step fingerprints, so the cache belongs to one
output directory and ``rm -r OUT`` forgets it. ``recsys run --retune`` ignores a hit and
overwrites the entry.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys import autotune
from recsys.errors import InputError
from recsys.io import read_json, sha256_json, write_json

log = logging.getLogger(__name__)

#: version of the cache file layout; an unknown version is ignored (re-tuned), never misread
CACHE_FORMAT = 1
#: parts of a dataset manifest's ``config`` that define its schema
SCHEMA_KEYS = ("mapping", "weights", "split", "min_user_interactions", "min_item_interactions", "time_unit")


def size_bucket(n_interactions: int, n_users: int, n_items: int) -> dict[str, int]:
    """``round(log2(n))`` of each size: equal buckets mean "the same shape of data"."""
    return {name: int(round(math.log2(max(int(n), 1)))) for name, n in
            (("interactions", n_interactions), ("users", n_users), ("items", n_items))}


def dataset_schema(manifest: Mapping[str, Any] | None) -> dict[str, Any]:
    """The schema part of a dataset manifest (columns, weighting, filters, split); ``{}`` without one.

    Paths, input hashes, timings and the split seed are left out: they change every night
    without changing what the parameters should be.
    """
    config = dict((manifest or {}).get("config") or {})
    schema = {k: config.get(k) for k in SCHEMA_KEYS if k in config}
    split = dict(schema.get("split") or {})
    split.pop("seed", None)
    if split:
        schema["split"] = split
    return schema


def lineage(family: str, schema: Mapping[str, Any], bucket: Mapping[str, int], base_params: Mapping[str, Any],
            tune: Mapping[str, Any]) -> dict[str, Any]:
    """The readable lineage record (what the key hashes); stored beside each entry."""
    settings = {k: v for k, v in tune.items() if k != "enabled"}
    return {"family": family, "schema": dict(schema), "size_bucket": dict(bucket),
            "base_params": dict(base_params), "tune": settings}


def lineage_key(record: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a :func:`lineage` record."""
    return sha256_json(dict(record))


class TuningCache:
    """Best parameters per lineage key in one JSON file.

    Parameters
    ----------
    path : path
        The JSON file (created on the first :meth:`put`).

    A file that cannot be read (damaged, or another format) is treated as empty with a
    warning: the cost of a miss is one search, the cost of a misread is a wrong model.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def _entries(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        try:
            data = read_json(self.path)
        except (OSError, ValueError) as e:
            log.warning("tuning cache %s is unreadable (%s); treating it as empty", self.path, e)
            return {}
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("entries"), dict):
            log.warning("tuning cache %s has an unknown layout; treating it as empty", self.path)
            return {}
        return dict(data["entries"])

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry for ``key`` (``params``, ``score``, ``metric``, ``n_trials``, ``seed`` ...) or ``None``."""
        entry = self._entries().get(key)
        return dict(entry) if isinstance(entry, dict) and isinstance(entry.get("params"), dict) else None

    def put(self, key: str, params: Mapping[str, Any], record: Mapping[str, Any], **info: Any) -> dict[str, Any]:
        """Store the best ``params`` of a search under ``key`` (atomically); returns the entry."""
        if not isinstance(params, Mapping):
            raise InputError(f"tuning cache entries hold a parameter mapping, got {type(params).__name__}")
        entries = self._entries()
        entry = {"params": dict(params), "lineage": dict(record),
                 "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}
        entries[key] = entry
        write_json(self.path, {"format": CACHE_FORMAT, "entries": entries})
        return entry

    def __len__(self) -> int:
        return len(self._entries())


@dataclass
class TunePlan:
    """What to train: search (``space`` set) or reuse the cached best (``hit`` set) or neither.

    ``params`` are the fixed parameters, with the cached best merged in on a hit;
    ``settings`` the search settings for :func:`recsys.tuning.select_and_fit` (``seed``
    always set; empty unless searching); ``key``/``record`` the lineage the result is
    stored under.
    """

    params: dict[str, Any]
    space: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    record: dict[str, Any] = field(default_factory=dict)
    hit: dict[str, Any] | None = None
    reason: str | None = None  # why there is no search although a tune table is given

    @property
    def status(self) -> str:
        """``off`` (no tuning), ``hit`` (cached parameters reused) or ``search``."""
        return "hit" if self.hit is not None else ("search" if self.space is not None else "off")


def plan_tuning(dataset: Any, family: Any, params: Mapping[str, Any], tune: Mapping[str, Any] | None,
                cache: TuningCache | None, *, retune: bool = False, seed: int = 0) -> TunePlan:
    """Decide between a search and the cached best parameters for one family on one dataset.

    Parameters
    ----------
    dataset : Dataset
        Its manifest gives the schema, its train split the size bucket.
    family : ModelFamily
        Its default search space fills a ``tune`` table that names only settings.
    params : mapping
        The family's fixed parameters (part of the lineage: changing them re-tunes).
    tune : mapping or None
        The ``[models.<family>.tune]`` table; ``None`` or ``enabled = false``: no tuning;
        ``min_train_interactions``: no search on a smaller training split (its validation
        split is too small for a search to beat the configured parameters reliably).
    cache : TuningCache or None
        ``None`` always searches (and stores nothing).
    retune : bool
        Search even when the cache holds this lineage (``recsys run --retune``).
    seed : int
        The sampler's seed when the table does not set one (the run's seed).
    """
    if not tune or tune.get("enabled", True) is False:
        return TunePlan(dict(params))
    settings, space = autotune.split_tune_table(tune)
    settings.pop("enabled", None)
    settings.setdefault("seed", int(seed))
    n_train = dataset.matrix("train").nnz
    floor = int(settings.pop("min_train_interactions", 0) or 0)
    if n_train < floor:
        log.info("%s: %d training interactions < min_train_interactions = %d: no search, the configured "
                 "parameters are used", family.name, n_train, floor)
        return TunePlan(dict(params), reason=f"{n_train} training interactions < min_train_interactions {floor}")
    if not space:  # settings only: the family's default space, searched by TPE
        space = autotune.default_space(family)
        settings.setdefault("method", "tpe")
    n_users, n_items = dataset.n_users, dataset.n_items
    bucket = size_bucket(n_train, n_users, n_items)
    record = lineage(family.name, dataset_schema(getattr(dataset, "manifest", None)), bucket, params,
                     {**tune, "seed": settings["seed"]})
    key = lineage_key(record)
    hit = None if (cache is None or retune) else cache.get(key)
    if hit is not None:
        log.info("%s: reusing the tuned parameters cached for this data lineage (%s, %s trials, valid %s=%.4f); "
                 "recsys run --retune searches again", family.name, hit.get("created_at"), hit.get("n_trials"),
                 hit.get("metric"), float(hit.get("score", float("nan"))))
        return TunePlan({**params, **hit["params"]}, None, {}, key, record, hit)
    if cache is not None:
        log.info("%s: %s; searching (settings %s)", family.name,
                 "--retune given" if retune else "no tuned parameters cached for this data lineage", settings)
    return TunePlan(dict(params), dict(space), settings, key, record)

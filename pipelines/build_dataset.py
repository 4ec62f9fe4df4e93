"""Build a dataset directory from an interaction log (and item metadata).

Examples::

    recsys build-dataset --events data/movielens-latest-small/ratings.csv \\
        --items data/movielens-latest-small/movies.csv --user-col userId --item-col movieId \\
        --weight-col rating --time-col timestamp --item-id-col movieId \\
        --item-text-cols title,genres --out runs/ml-small/dataset

    recsys build-dataset --config configs/movielens_small.toml --out runs/ml-small/dataset

    recsys build-dataset --events logs/ --event-col event --as-of 2026-11-25 --window-days 30 \\
        --user-col uid --item-col sku --event-weights view=1,cart=3,purchase=10 --out ds/

A TOML config holds the same settings (sections [events], [items], [weights], [filter],
[split]; see data/README.md); flags override it. Relative paths in the file are relative
to the file. An existing dataset at --out (or --previous DIR) lends its id maps, so
indices stay stable across runs (new ids are appended).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recsys.data.build import BuildConfig, WeightConfig
from recsys.data.readers import InputSpec
from recsys.data.splits import STRATEGIES, SplitConfig
from recsys.data.validate import ColumnMapping
from pipelines.config import CLEARABLE, effective_config
from pipelines.config import KEYS as _KEYS
from pipelines.config import read_toml as load_toml
from recsys.errors import ConfigError

HELP = "validate, clean and split an interaction log into a dataset directory"
log = logging.getLogger("recsys.build_dataset")

_SPEC_KEYS = ("path", "format", "sep", "has_header", "columns", "encoding", "quote_char")


def _csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _event_weights(value: str) -> dict[str, float]:
    out = {}
    for part in _csv_list(value):
        name, sep, weight = part.partition("=")
        try:
            out[name.strip()] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"event weights look like view=1,cart=3; got {part!r}") from None
        if not sep:
            raise argparse.ArgumentTypeError(f"event weights look like view=1,cart=3; got {part!r}")
    return out


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the input-mapping, weighting, filter and split flags (shared with ``recsys run``).

    Every flag defaults to ``None`` so that :func:`build_config_from` can tell a flag
    that was given (overrides the TOML) from one that was not.
    """
    g = parser.add_argument_group("input (flags override the config file)")
    g.add_argument("--events", help="events: CSV/Parquet file, glob, or directory (of dt=YYYY-MM-DD partitions)")
    g.add_argument("--events-format", choices=["auto", "csv", "parquet"])
    g.add_argument("--events-sep", help="CSV separator of the events (default ',')")
    g.add_argument("--events-encoding", help="text encoding of CSV events: utf8 (default), utf8-lossy (bad bytes replaced), latin-1, ...")
    g.add_argument("--user-col", help="user id column (required)")
    g.add_argument("--item-col", help="item id column (required)")
    g.add_argument("--weight-col", help="weight or rating column (optional; '' = none, overriding the config)")
    g.add_argument("--time-col", help="timestamp column: unix time or date-time string (optional; '' = none)")
    g.add_argument("--event-col", help="event type column (optional, see --event-weights; '' = none)")
    g.add_argument("--time-unit", choices=["auto", "s", "ms", "us", "ns"], help="unit of numeric timestamps (default auto: inferred from their size)")
    g.add_argument("--time-format", help="strftime format of date-time strings (default: inferred)")
    g.add_argument("--as-of", help="last day (YYYY-MM-DD) of a trailing window over date partitions")
    g.add_argument("--window-days", type=int, help="length of the trailing window in days (needs --as-of)")
    g.add_argument("--items", help="item metadata: CSV/Parquet file, glob or directory (optional)")
    g.add_argument("--items-sep", help="CSV separator of the item table")
    g.add_argument("--item-id-col", help="id column of the item table (default: --item-col)")
    g.add_argument("--item-text-cols", type=_csv_list, help="comma-separated text columns, e.g. title,genres")
    w = parser.add_argument_group("weights and filters")
    w.add_argument("--weighting", choices=["confidence", "threshold"], help="rating -> confidence (default) or -> positives by threshold")
    w.add_argument("--positive-threshold", type=float, help="with --weighting threshold: value >= this is a positive (default 4)")
    w.add_argument("--event-weights", type=_event_weights, help="weight per event type, e.g. view=1,cart=3,purchase=10")
    w.add_argument("--unknown-event-weight", type=float, help="weight of event types not listed (default: reject those rows)")
    w.add_argument("--half-life-days", type=float, help="exponential time decay of weights (optional)")
    w.add_argument("--aggregate", choices=["sum", "max", "last"], help="merge repeated (user, item) pairs (default sum)")
    w.add_argument("--min-user-interactions", type=int, help="k-core: minimum interactions per user (default 1)")
    w.add_argument("--min-item-interactions", type=int, help="k-core: minimum interactions per item (default 1)")
    w.add_argument("--max-reject-share", type=float, help="fail when more rows than this share are rejected (default 0.01)")
    s = parser.add_argument_group("split")
    s.add_argument("--split", choices=list(STRATEGIES), help="split strategy (default random)")
    s.add_argument("--test-frac", type=float, help="test share per user / of the time range (default 0.2)")
    s.add_argument("--valid-frac", type=float, help="validation share carved from the training part (default 0.1)")
    s.add_argument("--n-last", type=int, help="leave_last_n: test (and valid) interactions per user (default 1)")
    s.add_argument("--cutoff", help="temporal: test starts at this unix time or ISO date (default: quantile)")
    s.add_argument("--cold-item-frac", type=float, help="share of eligible items held out into test_cold (default 0)")
    s.add_argument("--cold-min-interactions", type=int, help="items need this many interactions to be cold candidates (default 5)")
    s.add_argument("--seed", type=int, help="seed of the split (default 0)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config file (flags override it)")
    parser.add_argument("--out", type=Path, required=True, help="output dataset directory (replaced atomically)")
    parser.add_argument("--previous", type=Path, help="dataset whose id maps to extend (default: the one at --out, if any)")
    parser.add_argument("--fresh-ids", action="store_true", help="do not reuse the id maps of an existing dataset at --out")
    parser.add_argument("--no-hash", action="store_true", help="skip sha256 of input files in the manifest")
    parser.add_argument("--engine", choices=["polars", "spark"], help="polars on this node (default) or Spark ([engine] master, conf; docs/spark.md)")
    add_input_arguments(parser)


def _merged(args: argparse.Namespace, toml: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    known = {"", "events", "items", "weights", "filter", "split", "engine"}  # [engine] is read by main()
    unknown = set(k for k, v in toml.items() if isinstance(v, dict)) - known
    if unknown:
        raise ConfigError(f"unknown config section(s) {sorted(unknown)}; known: {sorted(known - {''})}")
    merged: dict[str, dict[str, Any]] = {s: dict(toml.get(s, {})) for s in known - {""}}
    merged[""] = {k: v for k, v in toml.items() if not isinstance(v, dict)}
    for dest, (section, key) in _KEYS.items():
        value = getattr(args, dest, None)
        if value is not None and not (dest in CLEARABLE and value == ""):
            merged[section][key] = value
    return merged


def _pop(d: dict[str, Any], key: str, default: Any = None) -> Any:
    return d.pop(key, default)


def _spec(section: dict[str, Any], what: str) -> InputSpec:
    kw = {k: section.pop(k) for k in _SPEC_KEYS if k in section}
    if "columns" in kw:
        kw["columns"] = tuple(kw["columns"])
    if kw.get("quote_char") == "":  # TOML has no null: "" disables quoting
        kw["quote_char"] = None
    return InputSpec(**kw)


def _no_leftovers(section: str, d: dict[str, Any]) -> None:
    if d:
        raise ConfigError(f"unknown key(s) {sorted(d)} in [{section}] of the config")


def build_config_from(args: argparse.Namespace | None, toml: Mapping[str, Any] | None = None) -> BuildConfig:
    """Merge a TOML config (as a dict, see :func:`load_toml`) and parsed flags into a :class:`BuildConfig`.

    Flags that were given (not ``None``) override the file. ``recsys run`` calls this
    with its own parsed arguments and the dataset part of its config.

    Raises
    ------
    ConfigError
        Missing events path or id columns, unknown keys, invalid values.
    """
    c = _merged(args or argparse.Namespace(), toml or {})
    ev, it, wt, fl, sp, top = c["events"], c["items"], c["weights"], c["filter"], c["split"], c[""]
    if not ev.get("path"):
        raise ConfigError("no events given: pass --events FILE (or [events] path in the config)")
    for key, flag in (("user_col", "--user-col"), ("item_col", "--item-col")):
        if not ev.get(key):
            raise ConfigError(f"the {key.replace('_', ' ')}umn is required: pass {flag} (or [events] {key})")
    mapping = ColumnMapping(
        user=_pop(ev, "user_col"), item=_pop(ev, "item_col"), weight=_pop(ev, "weight_col"),
        time=_pop(ev, "time_col"), event_type=_pop(ev, "event_col"),
    )
    time_unit, time_format = _pop(ev, "time_unit", "auto"), _pop(ev, "time_format")
    as_of, window_days = _pop(ev, "as_of"), _pop(ev, "window_days")
    events = _spec(ev, "events")
    _no_leftovers("events", ev)
    items = None
    item_id_col, text_cols = _pop(it, "id_col"), _pop(it, "text_cols", ())
    if isinstance(text_cols, str):
        text_cols = _csv_list(text_cols)
    if it.get("path"):
        items = _spec(it, "items")
    _no_leftovers("items", it)
    if "seed" in sp:
        raise ConfigError("put `seed` at the top level of the config, not in [split]: one seed drives the whole build")
    try:
        weights = WeightConfig(**wt)
        split = SplitConfig(**sp)
    except TypeError as e:
        raise ConfigError(f"unknown key in [weights] or [split] of the config: {e}") from None
    top_known = {"seed", "max_reject_share", "hash_inputs"}
    _no_leftovers("top level", {k: v for k, v in top.items() if k not in top_known})
    _no_leftovers("filter", {k: v for k, v in fl.items() if k not in ("min_user_interactions", "min_item_interactions")})
    return BuildConfig(
        events=events,
        mapping=mapping,
        items=items,
        item_id_col=item_id_col,
        item_text_cols=tuple(text_cols),
        time_unit=time_unit,
        time_format=time_format,
        as_of=None if as_of is None else str(as_of),
        window_days=window_days,
        weights=weights,
        min_user_interactions=int(fl.get("min_user_interactions", 1)),
        min_item_interactions=int(fl.get("min_item_interactions", 1)),
        split=split,
        seed=int(top.get("seed", 0)),
        max_reject_share=float(top.get("max_reject_share", 0.01)),
        hash_inputs=bool(top.get("hash_inputs", True)) and not getattr(args, "no_hash", False),
    )


def main(args: argparse.Namespace) -> int:
    from pipelines.spark_engine import build_with_engine
    from recsys.config import EngineSection

    # a config file is validated whole (it may be the run config: its other sections are
    # checked too, but only the dataset sections are read); no file: the library's defaults
    run_config = effective_config(args, packaged=False) if args.config else None
    toml = run_config.dataset_dict() if run_config else {}
    config = build_config_from(args, toml)
    engine = run_config.engine if run_config else EngineSection(name=getattr(args, "engine", None) or "polars")
    ds = build_with_engine(config, args.out, engine, previous=args.previous, reuse_ids=not args.fresh_ids)
    rows = ds.manifest["rows"]
    print(f"dataset written to {args.out}")
    print(f"  weighting: {ds.manifest['weighting']['description']}")
    print(f"  rows in {rows['in']}, rejected {rows['rejected']} {rows['rejected_by_reason'] or ''}, out {rows['out']}")
    print(f"  users {ds.n_users}, items {ds.n_items}; splits {rows['splits']}")
    return 0

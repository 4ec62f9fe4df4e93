"""Job configuration at the edge: packaged defaults + TOML file + flags + ``--set``, validated once.

Config files are read here, in the job layer, never inside ``recsys/``: the library takes
validated objects and plain values, so it can be driven from a notebook or another
scheduler without a file. The effective config of ``recsys run`` is built in this order,
each layer overriding the one before:

1. the packaged defaults (``pipelines/defaults.toml``, package data: found from any directory);
2. the ``--config`` file (relative input paths are relative to the file);
3. the input flags (``--events``, ``--user-col``, ``--item-text-cols`` ...), each written to
   every section that uses it (``--item-text-cols`` sets ``[items]`` and ``[content]``);
4. ``--set section.key=value`` overrides, parsed as TOML literals (``--set models.als.factors=2``
   is an int, ``--set content.enabled=false`` a bool, anything else a string);

and then validated by :func:`recsys.config.validate_config` (extra keys forbidden, types
checked), so a typo or a wrong type exits 2 naming the key before any work starts.
"""

from __future__ import annotations

import argparse
import copy
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import tomli_w

from recsys.config import RunConfig, validate_config
from recsys.errors import ConfigError

#: the packaged defaults of ``recsys run``
PACKAGED_DEFAULTS = Path(__file__).with_name("defaults.toml")

# flag dest -> (TOML section, key); "" is the top level
KEYS: dict[str, tuple[str, str]] = {
    "events": ("events", "path"),
    "events_format": ("events", "format"),
    "events_sep": ("events", "sep"),
    "events_encoding": ("events", "encoding"),
    "user_col": ("events", "user_col"),
    "item_col": ("events", "item_col"),
    "weight_col": ("events", "weight_col"),
    "time_col": ("events", "time_col"),
    "event_col": ("events", "event_col"),
    "time_unit": ("events", "time_unit"),
    "time_format": ("events", "time_format"),
    "as_of": ("events", "as_of"),
    "window_days": ("events", "window_days"),
    "items": ("items", "path"),
    "items_sep": ("items", "sep"),
    "item_id_col": ("items", "id_col"),
    "item_text_cols": ("items", "text_cols"),
    "weighting": ("weights", "weighting"),
    "positive_threshold": ("weights", "positive_threshold"),
    "event_weights": ("weights", "event_weights"),
    "unknown_event_weight": ("weights", "unknown_event_weight"),
    "half_life_days": ("weights", "half_life_days"),
    "aggregate": ("weights", "aggregate"),
    "min_user_interactions": ("filter", "min_user_interactions"),
    "min_item_interactions": ("filter", "min_item_interactions"),
    "split": ("split", "strategy"),
    "test_frac": ("split", "test_frac"),
    "valid_frac": ("split", "valid_frac"),
    "n_last": ("split", "n_last"),
    "cutoff": ("split", "cutoff"),
    "cold_item_frac": ("split", "cold_item_frac"),
    "cold_min_interactions": ("split", "cold_min_interactions"),
    "seed": ("", "seed"),
    "max_reject_share": ("", "max_reject_share"),
    "engine": ("engine", "name"),  # build-dataset --engine polars|spark
}
#: optional columns that an empty flag value (``--time-col ''``) removes from the file's config
CLEARABLE = ("weight_col", "time_col", "event_col")


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config, making relative input paths relative to the file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    for section in ("events", "items"):
        sec = data.get(section)
        if isinstance(sec, dict) and isinstance(sec.get("path"), str) and not Path(sec["path"]).is_absolute():
            sec["path"] = str((path.parent / sec["path"]).resolve()) if "*" not in sec["path"] else str(path.parent / sec["path"])
    return data


def parse_value(text: str) -> Any:
    """Parse one override value as a TOML literal, falling back to a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: tables merge key by key, everything else is replaced."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else copy.deepcopy(v)
    return out


def apply_overrides(config: Mapping[str, Any], overrides: Iterable[str] | None) -> dict[str, Any]:
    """Return a copy of ``config`` with ``section.key=value`` overrides applied."""
    out = copy.deepcopy(dict(config))
    for item in overrides or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. --set models.als.factors=64)")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = parse_value(value.strip())
    return out


def flag_layer(args: argparse.Namespace, config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with the input flags that were given written into every section using them."""
    out = copy.deepcopy(dict(config))
    for dest, (section, key) in KEYS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        node = out if not section else out.setdefault(section, {})
        if dest in CLEARABLE and value == "":
            node.pop(key, None)  # `--time-col ''`: this log has no such column
            continue
        node[key] = value
        if dest == "item_text_cols":
            out.setdefault("content", {})["text_cols"] = value
    models = out.setdefault("models", {})
    if getattr(args, "models", None):
        models["train"] = [m.strip() for m in args.models.split(",") if m.strip()]
    if getattr(args, "publish_model", None):
        models["publish"] = args.publish_model
    if getattr(args, "no_refit", False):
        out.setdefault("refit", {})["enabled"] = False
    return out


def effective_config(args: argparse.Namespace, packaged: bool = True) -> RunConfig:
    """Defaults + ``args.config`` + flags + ``args.overrides``, validated.

    ``[content] text_cols`` left empty takes the items' ``text_cols``, so naming the text
    columns once (in ``[items]`` or with ``--item-text-cols``) is enough.

    Raises
    ------
    ConfigError
        An unreadable file, an unknown key (with the closest valid one) or a wrong type.
    """
    raw = read_toml(PACKAGED_DEFAULTS) if packaged else {}
    if getattr(args, "config", None):
        raw = deep_merge(raw, read_toml(args.config))
    raw = apply_overrides(flag_layer(args, raw), getattr(args, "overrides", None))
    content, items = raw.get("content"), raw.get("items")
    if isinstance(content, dict) and isinstance(items, dict) and not content.get("text_cols") and items.get("text_cols"):
        content["text_cols"] = items["text_cols"]
    return validate_config(raw)


def to_toml(config: RunConfig) -> str:
    """The effective config as TOML (what ``recsys config show`` prints and MLflow stores)."""
    return tomli_w.dumps(config.to_dict())


def section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A sub-table of a raw config (empty when absent), type-checked."""
    value = config.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"config [{name}] must be a table, got {type(value).__name__}")
    return dict(value)

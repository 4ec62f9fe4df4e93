"""Job configuration: command-line overrides of a TOML config (read by ``build_dataset.load_toml``).

Config files are read here, in the job layer, never inside ``recsys/``: the library takes
dataclasses and plain values, so it can be driven from a notebook or another scheduler
without a file. ``--set section.key=value`` overrides any key of the file (values are
parsed as TOML literals, so ``--set models.als.factors=2`` is an int and
``--set content.enabled=false`` a bool; anything that is not a TOML literal is a string).
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any

from recsys.errors import ConfigError


def parse_value(text: str) -> Any:
    """Parse one override value as a TOML literal, falling back to a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


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


def section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A sub-table of the config (empty when absent), type-checked."""
    value = config.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"config [{name}] must be a table, got {type(value).__name__}")
    return dict(value)

"""Configuration of the ``build-dataset`` pipeline, as plain frozen dataclasses.

The library never reads config files: ``pipelines/build_dataset.py`` (and ``recsys run``)
turn flags and TOML into these objects, and :func:`recsys.data.build.build_dataset`
takes them. :meth:`BuildConfig.to_dict` is what the manifest and MLflow record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from recsys.data.profile import TIME_UNITS
from recsys.data.readers import InputSpec, window_bounds
from recsys.data.splits import SplitConfig
from recsys.data.transforms import AGGREGATES, WEIGHTINGS
from recsys.data.validate import ColumnMapping
from recsys.errors import ConfigError

__all__ = ["BuildConfig", "WeightConfig"]


@dataclass(frozen=True)
class WeightConfig:
    """How raw values become interaction weights (see :func:`~recsys.data.transforms.apply_weights`).

    Parameters
    ----------
    weighting : {"confidence", "threshold"}
        ``"confidence"``: weight = rating/value (implicit-feedback confidence).
        ``"threshold"``: rows with value >= ``positive_threshold`` are positives (weight 1),
        the others are removed and counted as ``below_threshold``.
    positive_threshold : float
    event_weights : mapping of str -> float or None
        Multiplier per event type (``{"view": 1, "cart": 3, "purchase": 10}``).
    unknown_event_weight : float or None
        Weight of event types missing from ``event_weights``; ``None`` rejects those rows
        (reason ``event_type_unknown``).
    half_life_days : float or None
        Optional exponential time decay; the reference time is the end of ``as_of`` when
        given, else the newest timestamp.
    aggregate : {"sum", "max", "last"}
        How repeated (user, item) interactions are merged.
    """

    weighting: str = "confidence"
    positive_threshold: float = 4.0
    event_weights: Mapping[str, float] | None = None
    unknown_event_weight: float | None = None
    half_life_days: float | None = None
    aggregate: str = "sum"

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.aggregate not in AGGREGATES:
            raise ConfigError(f"aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")

    def describe(self, has_value: bool) -> str:
        """One sentence on how weights were made; goes into the manifest and every report."""
        if self.weighting == "threshold":
            s = f"threshold positives: rows with value >= {self.positive_threshold} have weight 1, the rest are dropped (counted)"
        elif has_value:
            s = "confidence: weight = rating/value"
        else:
            s = "confidence: weight = 1 per interaction (no value column)"
        if self.event_weights:
            s += f" x event weight {dict(self.event_weights)}"
        if self.half_life_days:
            s += f" x time decay (half-life {self.half_life_days} days)"
        return s + f"; repeated (user, item) pairs merged by {self.aggregate}"


@dataclass(frozen=True)
class BuildConfig:
    """Everything ``build_dataset`` needs besides the output path.

    Parameters
    ----------
    events : InputSpec
        The interaction log.
    mapping : ColumnMapping
        Input column names of user id, item id and the optional weight/time/event columns.
    items : InputSpec or None
        Item metadata table.
    item_id_col : str or None
        Id column of the item table (defaults to ``mapping.item``).
    item_text_cols : tuple of str
        Text columns kept for content embeddings.
    time_unit, time_format
        How to parse the time column: the unit of unix times (``"auto"`` infers it from
        their magnitude, else ``"s"``/``"ms"``/``"us"``/``"ns"``); strftime format for strings.
    as_of, window_days
        Trailing window over date partitions (``window_days`` days ending on ``as_of``).
        ``as_of`` also bounds plausible times: rows later than one day after its end
        (one day after now without it) are rejected as ``timestamp_in_future``.
    weights : WeightConfig
    min_user_interactions, min_item_interactions : int
        Iterative k-core thresholds (1 = no filter).
    split : SplitConfig
    seed : int
        Seeds the split and cold-item choice; recorded in the manifest.
    max_reject_share : float
        Fail (DataQualityError) when more than this share of rows is rejected.
    hash_inputs : bool
        Record sha256 of every input file in the manifest.
    """

    events: InputSpec
    mapping: ColumnMapping
    items: InputSpec | None = None
    item_id_col: str | None = None
    item_text_cols: tuple[str, ...] = ()
    time_unit: str = "auto"
    time_format: str | None = None
    as_of: str | None = None
    window_days: int | None = None
    weights: WeightConfig = field(default_factory=WeightConfig)
    min_user_interactions: int = 1
    min_item_interactions: int = 1
    split: SplitConfig = field(default_factory=SplitConfig)
    seed: int = 0
    max_reject_share: float = 0.01
    hash_inputs: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.item_text_cols, tuple):
            object.__setattr__(self, "item_text_cols", tuple(self.item_text_cols))
        if self.split.needs_time and self.mapping.time is None:
            raise ConfigError(
                f"the {self.split.strategy!r} split needs timestamps but no time column is mapped; "
                "pass --time-col (or time_col in the config) or use split strategy 'random'"
            )
        if self.items is None and self.item_text_cols:
            raise ConfigError("item text columns are set but no item table (--items) is given")
        if not 0 <= self.max_reject_share <= 1:
            raise ConfigError(f"max_reject_share must be in [0, 1], got {self.max_reject_share}")
        if self.time_unit != "auto" and self.time_unit not in TIME_UNITS:
            raise ConfigError(f"time_unit must be 'auto' or one of {sorted(TIME_UNITS)}, got {self.time_unit!r}")
        window_bounds(self.as_of, self.window_days)  # validates early

    def to_dict(self) -> dict[str, Any]:
        """JSON-able view of the config (for the manifest and MLflow)."""
        return _jsonable(dataclasses.asdict(self))


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x

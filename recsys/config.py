"""The typed configuration of the batch jobs: one pydantic schema, validated once at the edge.

Why: configs were untyped dicts read in five places, so a typo in ``[content]`` or a string
where a number belongs was silently ignored or crashed the job after an hour of work. Here
every section of ``recsys run`` and ``recsys build-dataset`` is a pydantic model with extra
keys forbidden; :func:`validate_config` turns the merged dict (packaged defaults + file +
flags + ``--set``) into a :class:`RunConfig` or raises one :class:`~recsys.errors.ConfigError`
naming each bad key, the closest valid key and the expected type, before any work starts.

The fields of the dataset, index and gate sections are derived from the library's own
dataclasses (:class:`~recsys.data.config.WeightConfig`, :class:`~recsys.data.splits.SplitConfig`,
:class:`~recsys.data.readers.InputSpec`, :class:`~recsys.serving.bundle.IndexConfig`), and the
``[models.<family>]`` tables from :mod:`recsys.models.registry`, so the schema cannot drift
from the code that reads it. Reading files stays in ``pipelines/``: this module only
validates mappings.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from recsys.data.config import WeightConfig
from recsys.data.readers import InputSpec
from recsys.data.splits import SplitConfig
from recsys.errors import ConfigError
from recsys import autotune
from recsys.models import registry
from recsys.serving.bundle import IndexConfig
from recsys.tracking import validate_name

__all__ = ["RunConfig", "EmbedContentConfig", "validate_config", "DATASET_SECTIONS", "RUN_SECTIONS"]

#: sections read by ``recsys build-dataset`` (plus the top-level keys of :class:`RunConfig`)
DATASET_SECTIONS = ("events", "items", "weights", "filter", "split")
#: sections read only by ``recsys run``
RUN_SECTIONS = ("models", "evaluation", "content", "refit", "align", "index", "batch", "promotion", "tracking", "engine")

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _fields_of(dc: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """pydantic field definitions from a dataclass: the library's types and defaults."""
    hints = typing.get_type_hints(dc)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(dc):
        if f.name in skip:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        hint = hints.get(f.name, Any)
        out[f.name] = (hint | None if default is None else hint, default)
    return out


def _section_model(name: str, dc: type | None = None, skip: tuple[str, ...] = (), **extra: Any) -> type[_Section]:
    fields = _fields_of(dc, skip) if dc is not None else {}
    fields.update(extra)
    return pydantic.create_model(name, __base__=_Section, **fields)


_Opt = (str | None, None)
EventsSection = _section_model(
    "EventsSection", InputSpec, user_col=_Opt, item_col=_Opt, weight_col=_Opt, time_col=_Opt, event_col=_Opt,
    time_unit=(str | None, None), time_format=_Opt, as_of=(str | None, None), window_days=(int | None, None),
)
ItemsSection = _section_model("ItemsSection", InputSpec, id_col=_Opt, text_cols=(list[str] | None, None))
WeightsSection = _section_model("WeightsSection", WeightConfig)
SplitSection = _section_model("SplitSection", SplitConfig, skip=("seed",))
IndexSection = _section_model("IndexSection", IndexConfig)


class FilterSection(_Section):
    min_user_interactions: int = Field(1, ge=1)
    min_item_interactions: int = Field(1, ge=1)


class ContentSection(_Section):
    """``[content]``: content embeddings of items and the cold-start blend."""

    enabled: bool = True
    encoder: Literal["minilm", "tfidf"] = "minilm"
    text_cols: list[str] | None = None
    blend_k: float = Field(0.0, ge=0)
    cold_scale: float = Field(1.0, gt=0)
    # content -> CF map of cold items; "auto" chooses on validation (recsys.embeddings.mappers)
    mapper: Literal["auto", "ridge", "knn", "blend", "mlp"] = "auto"
    knn_k: int = Field(20, ge=1)                        # neighbours of an explicit "knn" / "blend"
    mapper_alpha: float = Field(0.5, ge=0, le=1)        # ridge weight of an explicit "blend"
    mapper_holdout: float = Field(0.1, gt=0, le=0.2)    # warm items held out per selection fold (5 folds, "auto")
    min_count: int = Field(5, ge=0)
    cache_dir: str | None = None
    model_path: str | None = None
    device: str = "auto"
    batch_size: int = Field(64, ge=1)
    dim: int = Field(64, ge=1)


class RefitSection(_Section):
    enabled: bool = True


class EvaluationSection(_Section):
    """``[evaluation]``: which users the validation and test metrics are computed on.

    Validation (tuning trials, training curves, selection) runs on a fixed, seeded sample
    of users so that its cost does not grow with the user base; the final test runs on all
    users unless ``test_users`` caps it. Users are sampled, never items: sampled-item
    metrics are known to reorder models.
    """

    valid_users: int = Field(20000, ge=0)   # 0 = every user
    test_users: int = Field(0, ge=0)        # 0 = every user
    sample_seed: int | None = None          # None = the run's seed


class AlignSection(_Section):
    """``[align]``: rotate a retrain's vectors into the previous bundle's space (Procrustes).

    Drift, churn and new-item exposure are measured at every publish either way
    (:mod:`recsys.embeddings.align`); ``enabled = false`` only skips the rotation.
    """

    enabled: bool = True
    min_shared: int = Field(50, ge=2)      # fewer shared items: no rotation (logged)
    churn_users: int = Field(1000, ge=1)   # seeded sample of users in both versions
    churn_k: int = Field(10, ge=1)         # top-k compared for churn and exposure


class BatchSection(_Section):
    """``[batch]``: the batch top-K output (top-K for every user, partitioned parquet)."""

    enabled: bool = True
    k: int = Field(100, ge=1)
    exclude_seen: bool = True
    rows_per_file: int = Field(1_000_000, ge=1)
    allow_items: str | None = None          # a file of item ids (one per line): only these are recommended
    block_items: str | None = None          # a file of item ids never recommended


class PromotionSection(_Section):
    registered_model: str = "recsys"
    alias: str = "champion"
    metric: str = "ndcg@10"
    tolerance: float = Field(0.02, ge=0, lt=1)

    @pydantic.field_validator("registered_model", "alias")
    @classmethod
    def _names(cls, v: str, info: pydantic.ValidationInfo) -> str:
        return validate_name(v, info.field_name.replace("_", " "))


class TrackingSection(_Section):
    experiment: str = "recsys"

    @pydantic.field_validator("experiment")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_name(v, "experiment name")


class FusionSection(_Section):
    """``[models.fusion]``: the fused model of ``publish = "fusion"`` (and the fusion candidate of ``"best"``).

    ``members`` are trained vector families (default: every one in ``[models] train``);
    ``step`` is the grid of the weight simplex searched on the validation split
    (:func:`recsys.models.fusion.select_weights`; 0.1 gives 66 weightings of 3 members).
    """

    members: list[str] | None = None
    step: float = Field(0.1, gt=0, le=0.5)

    @pydantic.field_validator("step")
    @classmethod
    def _grid(cls, v: float) -> float:
        if abs(1 / v - round(1 / v)) > 1e-6:
            raise ValueError(f"[models.fusion] step = {v} must divide 1 (e.g. 0.05, 0.1, 0.25)")
        return v


class ModelsSection(BaseModel):
    """``[models]``: which families to train and publish, and one table of parameters per family.

    A ``[models.<family>]`` table holds that family's parameters (validated against its
    schema in :mod:`recsys.models.registry`) and an optional ``tune`` sub-table: search
    settings (``budget_minutes``, ``max_trials``, ``seed``, ``method``, ``enabled``,
    ``pruning``) and a search space (lists are choices, ``{low, high, log}`` ranges; none =
    the family's default space), validated by :func:`recsys.autotune.validate_tune_table`.
    """

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    baselines: list[str] = ["most-popular", "item-knn"]
    train: list[str] = ["als"]
    publish: str | None = None  # a trained vector family, "fusion", or "best" (best on validation, never test)
    fusion: FusionSection = FusionSection()

    @pydantic.model_validator(mode="after")
    def _families(self) -> ModelsSection:
        for name in [*self.baselines, *self.train]:
            registry.get_family(name)
        if not self.train:
            raise ValueError("[models] train is empty: name at least one model family to train")
        publish = self.publish or self.train[0]
        members = self.fusion_members()
        if publish == "best":  # the trained vector family or fusion best on validation, chosen after training
            if not [n for n in self.train if registry.get_family(n).vectors]:
                raise ValueError(f'[models] publish = "best" needs a trained vector model '
                                 f"{registry.family_names(vectors=True)} in [models] train {self.train}")
        elif publish == "fusion":
            if len(members) < 2:
                raise ValueError(f'[models] publish = "fusion" needs at least two trained vector families; '
                                 f"[models.fusion] members resolves to {members} (train {self.train})")
        elif publish not in self.train:
            raise ValueError(f"[models] publish = {publish!r} must be one of the trained models {self.train} "
                             '(or "fusion" or "best")')
        elif not registry.get_family(publish).vectors:
            raise ValueError(f"[models] publish must be a vector model {registry.family_names(vectors=True)}, "
                             f"got {publish!r}")
        self.publish = publish
        for name, table in (self.model_extra or {}).items():
            fam = registry.get_family(name)  # an unknown section name suggests the closest family
            if not isinstance(table, dict):
                raise ValueError(f"[models.{name}] must be a table of parameters, got {table!r}")
            params = {k: v for k, v in table.items() if k != "tune"}
            fam.validate_params(params, f"[models.{name}]")
            tune = table.get("tune")
            if tune is not None:
                if not isinstance(tune, dict):
                    raise ValueError(f"[models.{name}.tune] must be a table (a search space), got {tune!r}")
                autotune.validate_tune_table(fam, tune, params, f"[models.{name}.tune]")
        return self

    def fusion_members(self) -> list[str]:
        """The fused families: ``[models.fusion] members``, default every trained vector family.

        Raises
        ------
        ValueError
            A member that is not a trained vector family, or named twice (pydantic reports it
            as a :class:`ConfigError` naming ``[models.fusion] members``).
        """
        vectors = [n for n in self.train if registry.get_family(n).vectors]
        members = list(self.fusion.members) if self.fusion.members is not None else vectors
        bad = [n for n in members if n not in vectors]
        if bad:
            raise ValueError(f"[models.fusion] members {bad} are not trained vector families; choose from {vectors}")
        if len(set(members)) != len(members):
            raise ValueError(f"[models.fusion] members {members} names a family twice")
        return members

    def params(self, name: str) -> dict[str, Any]:
        """Fixed parameters of a family (its table without ``tune``)."""
        return {k: v for k, v in (self.model_extra or {}).get(name, {}).items() if k != "tune"}

    def tune(self, name: str) -> dict[str, Any] | None:
        """The search space of a family, or ``None``."""
        return (self.model_extra or {}).get(name, {}).get("tune")


class EngineSection(_Section):
    """``[engine]``: where ``build-dataset`` (and the batch top-K) run: polars on this node or Spark."""

    name: Literal["polars", "spark"] = "polars"
    master: str = "local[*]"                 # Spark master: local[N], spark://HOST:PORT, yarn, k8s://...
    conf: dict[str, str | int | float | bool] = Field(default_factory=dict)  # extra Spark settings


class RunConfig(_Section):
    """The whole configuration of ``recsys run`` (``recsys build-dataset`` reads its dataset part)."""

    seed: int = 0
    max_reject_share: float = Field(0.01, ge=0, le=1)
    hash_inputs: bool = True
    events: EventsSection = EventsSection()  # type: ignore[valid-type]
    items: ItemsSection = ItemsSection()  # type: ignore[valid-type]
    weights: WeightsSection = WeightsSection()  # type: ignore[valid-type]
    filter: FilterSection = FilterSection()
    split: SplitSection = SplitSection()  # type: ignore[valid-type]
    models: ModelsSection = ModelsSection()
    evaluation: EvaluationSection = EvaluationSection()
    content: ContentSection = ContentSection()
    refit: RefitSection = RefitSection()
    align: AlignSection = AlignSection()
    index: IndexSection = IndexSection()  # type: ignore[valid-type]
    batch: BatchSection = BatchSection()
    promotion: PromotionSection = PromotionSection()
    tracking: TrackingSection = TrackingSection()
    engine: EngineSection = EngineSection()

    def dataset_dict(self) -> dict[str, Any]:
        """The dataset part as given (validated and coerced; unset keys left to the library's defaults)."""
        out: dict[str, Any] = {s: getattr(self, s).model_dump(exclude_unset=True) for s in DATASET_SECTIONS}
        out.update({k: getattr(self, k) for k in ("seed", "max_reject_share", "hash_inputs") if k in self.model_fields_set})
        return out

    def section(self, name: str) -> dict[str, Any]:
        """A run section as a plain dict (``[models]`` with its family tables)."""
        sec = getattr(self, name)
        return sec.model_dump() if name != "models" else {**sec.model_dump(), **(sec.model_extra or {})}

    def to_dict(self) -> dict[str, Any]:
        """The effective config, every section, ``None`` values dropped (TOML has no null)."""
        return _drop_none({"seed": self.seed, "max_reject_share": self.max_reject_share,
                           "hash_inputs": self.hash_inputs,
                           **{s: self.section(s) for s in (*DATASET_SECTIONS, *RUN_SECTIONS)}})


def _drop_none(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _drop_none(v) for k, v in x.items() if v is not None}
    if isinstance(x, (list, tuple)):
        return [_drop_none(v) for v in x]
    return x


def _valid_keys(loc: tuple[Any, ...], schema: type[BaseModel]) -> list[str]:
    """The valid keys at ``loc`` in the schema (for "did you mean")."""
    model: Any = schema
    for part in loc[:-1]:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return []
        model = fields[part].annotation
    return list(getattr(model, "model_fields", {}))


def validate_config(raw: Mapping[str, Any], schema: type[BaseModel] | None = None, what: str = "config") -> Any:
    """Validate a merged config mapping against ``schema`` (default :class:`RunConfig`).

    One :class:`ConfigError` lists every problem, each naming the key and, for an unknown
    key, the closest valid one.

    Raises
    ------
    ConfigError
        e.g. ``[content]: unknown key 'txt_cols' (did you mean 'text_cols'?)`` or
        ``[index] min_recall = 'high': Input should be a valid number``.
    """
    schema = schema or RunConfig
    try:
        return schema.model_validate(dict(raw))
    except pydantic.ValidationError as e:
        lines = []
        for err in e.errors():
            loc = tuple(err["loc"])
            where = (f" [{'.'.join(str(p) for p in loc[:-1])}]" if len(loc) > 1
                     else " top level" if schema is RunConfig else "")
            key = str(loc[-1]) if loc else ""
            if err["type"] == "extra_forbidden":
                valid = _valid_keys(loc, schema)
                lines.append(f"{what}{where}: unknown key {key!r}{registry.did_you_mean(key, valid)}; "
                             f"valid keys: {sorted(valid)}")
            elif err["type"] == "value_error":
                lines.append(f"{what}: {str(err['msg']).removeprefix('Value error, ')}")
            else:
                lines.append(f"{what}{where} {key} = {err.get('input')!r}: {err['msg']}")
        raise ConfigError("; ".join(lines)) from None
    except ConfigError as e:  # raised by a registry lookup inside a validator
        raise ConfigError(f"{what}: {e}") from None


class EmbedContentConfig(_Section):
    """``[embed_content]`` of ``recsys embed-content --config`` (the flags have the same names)."""

    dataset: str | None = None
    cache: str | None = None
    text_cols: str | list[str] = "title,genres"
    tags: str | None = None
    tags_item_col: str | None = None
    encoder: Literal["minilm", "tfidf"] = "minilm"
    model_path: str | None = None
    tfidf_state: str | None = None
    tfidf_dim: int = Field(64, ge=1)
    batch_size: int = Field(64, ge=1)
    device: str = "auto"
    out: str | None = None
    no_progress: bool | None = None
    tracking_uri: str | None = None
    experiment: str = "embed-content"

"""One registry of model families: the single place a family's identity lives.

Why: before this module a family's name, class, parameters and capabilities were
repeated in the CLI choices, the config sections, the pipelines, tracking and export, and
the class registry filled only when a model module happened to be imported, so a model
saved by one process could not be loaded by a fresh one. Now each family is declared once,
here (built-ins) or by :func:`register` (plug-ins), and everything else reads it:

* the CLI's ``--model`` choices and ``recsys run``'s ``[models.<name>]`` sections;
* the typed parameter schema (:meth:`ModelFamily.param_schema`, derived from the class's
  ``__init__`` signature, so defaults and types are written once, in the class);
* the training protocol (:mod:`recsys.training`): how a family is selected on validation;
* saved models (:meth:`recsys.models.base.Recommender.save` records the family name and a
  format version; :meth:`~recsys.models.base.Recommender.load` resolves it here, importing
  the family's module on demand, never relying on import order).

Classes are referenced by import path (``"recsys.models.als:ALS"``) so that importing
``recsys`` imports neither torch nor implicit.

Adding a family (see ``docs/extending.md``)::

    from recsys.models.registry import ModelFamily, register

    register(ModelFamily(name="my-model", target="mypkg.models:MyModel", vectors=True))
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import logging
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import pydantic

from recsys.errors import BundleError, ConfigError

if TYPE_CHECKING:  # pragma: no cover - typing only; base.py imports this module
    from recsys.models.base import Recommender

log = logging.getLogger(__name__)

#: version of the saved-model layout written by ``Recommender.save``; bump on a breaking change
MODEL_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelFamily:
    """Everything the toolkit needs to know about one model family.

    Parameters
    ----------
    name : str
        The name used in configs, on the command line and in saved models (``"als"``).
    target : str
        ``"module:Class"`` of the :class:`~recsys.models.base.Recommender` subclass,
        imported on first use.
    vectors : bool
        The family exports user and item vectors (``user_factors_``, ``item_factors_``)
        and can therefore be published to an index.
    fold_in : bool
        A new user can be folded in from a history without retraining.
    iterative : bool
        Validation picks the best iteration (``iterations`` is an upper bound).
    protocol : str, optional
        ``"module:function"`` of a family-specific selection step for
        :func:`recsys.training.select_on_validation` (the two-tower's early stopping on
        epochs); ``None`` uses the generic grid search.
    params : str, optional
        ``"module:Dataclass"`` whose fields are the parameters, for a class that takes
        ``**params`` (the two-tower's ``TwoTowerConfig``); default: the class's
        ``__init__`` signature. A dataclass also lets configs be validated without
        importing the model's heavy dependencies.
    protocol_params : dict
        Parameters read by the protocol rather than the model, with their defaults
        (e.g. the two-tower's ``item_features``); they are valid config keys too.
    refit_on_all : bool
        The published model may be refitted on every interaction with the selected
        parameters (``[refit] enabled``).
    description : str
        One line for ``--help`` and the docs.
    search_space : dict
        The default search space of ``[models.<name>.tune]`` when the table names only
        settings (``budget_minutes``...): lists are choices, ``{low, high, log}`` ranges
        (:mod:`recsys.autotune`).
    """

    name: str
    target: str
    vectors: bool = False
    fold_in: bool = False
    iterative: bool = False
    protocol: str | None = None
    params: str | None = None
    protocol_params: Mapping[str, Any] = field(default_factory=dict)
    refit_on_all: bool = True
    description: str = ""
    search_space: Mapping[str, Any] = field(default_factory=dict)

    # -- class and parameters ----------------------------------------------------------
    def load_class(self) -> type[Recommender]:
        """Import and return the family's class."""
        return _import(self.target, f"model family {self.name!r}")

    def param_schema(self) -> type[pydantic.BaseModel]:
        """A pydantic model of the family's parameters (extra keys forbidden).

        Derived from the class's ``__init__`` signature (types from its annotations,
        defaults from its defaults) plus :attr:`protocol_params`, so it cannot drift
        from the class.
        """
        return _schema(self.name) if _FAMILIES.get(self.name) is self else _build_schema(self)

    def defaults(self) -> dict[str, Any]:
        """Default value of every parameter (model and protocol)."""
        return self.param_schema()().model_dump()

    def validate_params(self, params: Mapping[str, Any], where: str | None = None) -> dict[str, Any]:
        """Check ``params`` against the schema; return them (unchanged keys, coerced types).

        Raises
        ------
        ConfigError
            Naming the bad key, the closest valid key, or the expected type.
        """
        where = where or f"[models.{self.name}]"
        schema = self.param_schema()
        try:
            schema.model_validate(dict(params))
        except pydantic.ValidationError as e:
            raise ConfigError(format_validation_error(e, where, list(schema.model_fields))) from None
        if self.params is not None:  # a params dataclass checks ranges too (negative budgets, ...)
            check = getattr(_import(self.params, f"parameters of model family {self.name!r}"), "validate", None)
            if callable(check):
                model_params, _ = self.split_params(params)
                try:
                    check(_import(self.params, self.name)(**model_params))
                except ConfigError as e:
                    raise ConfigError(f"{where}: {e}") from None
        return dict(params)

    def split_params(self, params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(model params, protocol params)``; protocol params get their defaults."""
        model = {k: v for k, v in params.items() if k not in self.protocol_params}
        proto = {**self.protocol_params, **{k: v for k, v in params.items() if k in self.protocol_params}}
        return model, proto

    def make(self, params: Mapping[str, Any] | None = None) -> Recommender:
        """Instantiate the model from (validated) parameters; protocol params are dropped."""
        params = self.validate_params(params or {})
        model_params, _ = self.split_params(params)
        return self.load_class()(**model_params)


_FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily, replace: bool = False) -> ModelFamily:
    """Add a family to the registry (``replace=True`` to redefine an existing name)."""
    if not isinstance(family, ModelFamily):
        raise ConfigError(f"register() takes a ModelFamily, got {type(family).__name__}")
    if not family.name or family.name != family.name.strip() or "/" in family.name:
        raise ConfigError(f"model family name {family.name!r} must be a non-empty word without '/' or spaces")
    if ":" not in family.target:
        raise ConfigError(f"model family {family.name!r}: target must look like 'package.module:Class', got {family.target!r}")
    if family.name in _FAMILIES and not replace and _FAMILIES[family.name] != family:
        raise ConfigError(f"model family {family.name!r} is already registered; pass replace=True to redefine it")
    _FAMILIES[family.name] = family
    _schema.cache_clear()
    return family


def unregister(name: str) -> None:
    """Remove a family (tests and plug-in reloads)."""
    _FAMILIES.pop(name, None)
    _schema.cache_clear()


def get_family(name: str) -> ModelFamily:
    """The family called ``name``; a :class:`ConfigError` suggests the closest name."""
    fam = _FAMILIES.get(name)
    if fam is None:
        raise ConfigError(f"unknown model {name!r}{did_you_mean(name, family_names())}; "
                          f"registered families: {family_names()}")
    return fam


def family_names(vectors: bool | None = None) -> list[str]:
    """Registered family names (only vector families with ``vectors=True``)."""
    return [n for n, f in _FAMILIES.items() if vectors is None or f.vectors == vectors]


def family_of(model: Any) -> ModelFamily | None:
    """The registered family of a model instance or class (``None`` if unregistered)."""
    cls = model if isinstance(model, type) else type(model)
    for fam in _FAMILIES.values():
        mod, _, qual = fam.target.partition(":")
        if cls.__module__ == mod and cls.__qualname__ == qual:
            return fam
    for fam in _FAMILIES.values():  # a subclass of a registered class, or a re-export
        try:
            if cls is fam.load_class():
                return fam
        except ConfigError:
            continue
    return None


#: saved files from before the registry recorded only the class name
LEGACY_CLASS_NAMES = {"ALS": "als", "BPR": "bpr", "TwoTower": "two-tower", "MostPopular": "most-popular", "ItemKNN": "item-knn"}


def resolve_saved(meta: Mapping[str, Any], path: Any) -> type[Recommender]:
    """The class of a saved model from its metadata (``family`` + ``format``).

    Raises
    ------
    recsys.errors.BundleError
        An unknown family (with the fix: import the plug-in that registers it) or a
        format version newer than this code understands.
    """
    fmt = int(meta.get("format", 0))
    if fmt > MODEL_FORMAT_VERSION:
        raise BundleError(f"{path} was saved in model format {fmt}, newer than this recsys understands "
                          f"({MODEL_FORMAT_VERSION}); upgrade recsys to load it")
    name = meta.get("family") or LEGACY_CLASS_NAMES.get(str(meta.get("class")))
    if name is None and meta.get("target"):
        # an unregistered class (a subclass defined in a notebook or test): found only if its
        # module is already imported here; a file never makes this process import code
        mod, _, qual = str(meta["target"]).partition(":")
        obj: Any = sys.modules.get(mod)
        for part in qual.split(".") if obj is not None else ():
            obj = getattr(obj, part, None)
        if isinstance(obj, type):
            return obj
    if name is None or name not in _FAMILIES:
        shown = name or meta.get("class")
        raise BundleError(f"{path} holds a model of family {shown!r}, which is not registered in this process"
                          f"{did_you_mean(str(shown), family_names())}; import the module that registers it "
                          "(recsys --plugin MODULE, or `import` it before loading)")
    return _FAMILIES[name].load_class()


# -- helpers -------------------------------------------------------------------------------
def _import(target: str, what: str) -> Any:
    mod_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{what}: cannot import {target!r} ({e})") from e
    return obj


def import_target(target: str) -> Callable[..., Any]:
    """Import ``"module:function"`` (a family's protocol hook)."""
    return _import(target, "protocol")


def did_you_mean(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(str(name), options, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_validation_error(err: pydantic.ValidationError, where: str, valid: list[str]) -> str:
    """One readable line per pydantic error: the key, what is wrong, the closest valid key."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        key = str(e["loc"][-1]) if e["loc"] else ""
        if e["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key {loc!r}{did_you_mean(key, valid)}; valid keys: {sorted(valid)}")
        else:
            lines.append(f"{where}: {loc} = {e.get('input')!r}: {e['msg']}")
    return "; ".join(lines)


def _annotation(name: str, hints: dict[str, Any], default: Any) -> Any:
    hint = hints.get(name, Any)
    if hint is Any and default is not inspect.Parameter.empty and default is not None:
        return type(default) if type(default) in (bool, int, float, str) else Any
    return hint


@lru_cache(maxsize=None)
def _schema(name: str) -> type[pydantic.BaseModel]:
    return _build_schema(_FAMILIES[name])


def _signature_fields(family: ModelFamily) -> dict[str, Any]:
    """``name -> (type, default)`` from a params dataclass or the class's ``__init__``."""
    if family.params is not None:
        dc = _import(family.params, f"parameters of model family {family.name!r}")
        hints = typing.get_type_hints(dc)
        out = {}
        for f in dataclasses.fields(dc):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else ...)  # type: ignore[misc]
            out[f.name] = (hints.get(f.name, Any), default)
        return out
    cls = family.load_class()
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to the defaults' types
        hints = {}
    out = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = ... if p.default is inspect.Parameter.empty else p.default
        out[p.name] = (_annotation(p.name, hints, p.default), default)
    return out


def _build_schema(family: ModelFamily) -> type[pydantic.BaseModel]:
    fields = _signature_fields(family)
    for k, v in family.protocol_params.items():
        fields.setdefault(k, (Any, v))
    config = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())
    return pydantic.create_model(f"{family.name.title().replace('-', '')}Params", __config__=config, **fields)


# -- the built-in families -----------------------------------------------------------------
for _f in (
    ModelFamily("most-popular", "recsys.models.baselines:MostPopular",
                description="items ranked by training popularity (baseline)"),
    ModelFamily("item-knn", "recsys.models.baselines:ItemKNN",
                description="item-item cosine neighbours over the user x item matrix (baseline)",
                search_space={"n_neighbors": {"low": 10, "high": 1000, "log": True}}),
    ModelFamily("als", "recsys.models.als:ALS", vectors=True, fold_in=True, iterative=True,
                description="implicit-feedback ALS (implicit); exact fold-in",
                search_space={"factors": {"low": 32, "high": 512, "log": True},
                              "regularization": {"low": 0.01, "high": 300.0, "log": True},
                              "alpha": {"low": 0.1, "high": 50.0, "log": True},
                              "weighting": ["linear", "log", "bm25"], "iterations": 20}),
    ModelFamily("spark-als", "recsys.models.spark_als:SparkALS", vectors=True,
                description="implicit ALS on Spark MLlib, for matrices past one node (pip install 'recsys[spark]'; docs/spark.md)"),
    ModelFamily("bpr", "recsys.models.bpr:BPR", vectors=True, fold_in=True, iterative=True,
                description="Bayesian personalised ranking (implicit)",
                search_space={"factors": {"low": 32, "high": 256, "log": True},
                              "learning_rate": {"low": 0.003, "high": 0.3, "log": True},
                              "regularization": {"low": 1e-4, "high": 0.3, "log": True}, "iterations": 100}),
    ModelFamily("two-tower", "recsys.models.two_tower:TwoTower", vectors=True, fold_in=True,
                params="recsys.models.two_tower_config:TwoTowerConfig",
                protocol="recsys.training_two_tower:select_on_validation",
                protocol_params={"item_features": "auto", "refit_on_valid": True}, refit_on_all=False,
                description="PyTorch two-tower with in-batch softmax; history-pooled users"),
    ModelFamily("item2vec", "recsys.models.item2vec:Item2Vec", vectors=True, fold_in=True,
                params="recsys.models.item2vec:Item2VecParams",
                protocol="recsys.training_item2vec:select_on_validation", refit_on_all=False,
                description="skip-gram with negative sampling over time-ordered histories; mean-pooled users"),
):
    register(_f)

"""Champion / challenger promotion in the MLflow Model Registry.

A nightly job must never make serving worse on its own. Each run registers its model as a
new version (the *challenger*); the ``champion`` alias, which services load through
``models:/NAME@champion``, moves to it only when every quality gate passes:

* offline metric (e.g. ``ndcg@10`` on the held-out test split) not worse than the current
  champion's by more than ``tolerance`` (relative), compared on the same test split
  (the split's sha256 is stored with every version; a different split is reported, and
  then the comparison is only indicative, so it is made with the same tolerance but
  the reason names the mismatch);
* ANN recall of the exported index at or above ``min_recall``.

Every alias move is appended to a history kept as a registered-model tag, so
:func:`rollback` can move the alias back to the version that served before, without
guessing. Version tags record the bundle each version was exported to, so a rollback can
switch the served bundle too (the caller does that; see ``pipelines/rollback.py``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from recsys.errors import ConfigError, QualityGateError

log = logging.getLogger(__name__)

HISTORY_TAG = "recsys.champion_history"
METRICS_TAG = "recsys.metrics"
SPLIT_TAG = "recsys.test_split_sha256"
BUNDLE_TAG = "recsys.bundle_version"


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the promotion gates.

    Parameters
    ----------
    metric : str
        Offline metric compared with the champion (higher is better).
    tolerance : float
        Allowed relative drop: the challenger passes when
        ``challenger >= champion * (1 - tolerance)``.
    min_recall : float
        Minimum ANN recall@K against exact search of the exported index.
    """

    metric: str = "ndcg@10"
    tolerance: float = 0.02
    min_recall: float = 0.95

    def __post_init__(self) -> None:
        if not 0.0 <= self.tolerance < 1.0:
            raise ConfigError(f"promotion tolerance must be in [0, 1), got {self.tolerance}")
        if not 0.0 <= self.min_recall <= 1.0:
            raise ConfigError(f"min_recall must be in [0, 1], got {self.min_recall}")


@dataclass
class GateDecision:
    """Outcome of the gates: ``passed`` and one human-readable line per check."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    challenger: float | None = None
    champion: float | None = None

    def raise_if_refused(self) -> None:
        """Raise :class:`QualityGateError` (exit code 3) when a gate failed."""
        if not self.passed:
            raise QualityGateError("promotion refused: " + "; ".join(r for r in self.reasons if r.startswith("FAIL")))


def decide(
    challenger_metrics: dict[str, float],
    champion_metrics: dict[str, float] | None,
    recall: float | None,
    config: GateConfig,
    same_split: bool = True,
) -> GateDecision:
    """Apply the gates to a challenger (pure function, no MLflow).

    Parameters
    ----------
    challenger_metrics, champion_metrics : dict
        Offline metrics on the held-out split; ``champion_metrics`` None when there is no
        champion yet (then only the recall gate applies).
    recall : float or None
        Measured ANN recall@K of the challenger's index (None: not measured -> fails,
        because an unmeasured index must not be promoted).
    """
    if config.metric not in challenger_metrics:
        raise ConfigError(f"gate metric {config.metric!r} missing from challenger metrics {sorted(challenger_metrics)}")
    reasons: list[str] = []
    ok = True
    new = float(challenger_metrics[config.metric])
    old = None
    if champion_metrics is None or config.metric not in champion_metrics:
        reasons.append(f"PASS {config.metric}={new:.4f}: no champion to compare with")
    else:
        old = float(champion_metrics[config.metric])
        floor = old * (1.0 - config.tolerance)
        split_note = "" if same_split else " (champion was measured on a different test split)"
        if new >= floor:
            reasons.append(f"PASS {config.metric}={new:.4f} >= {floor:.4f} (champion {old:.4f}, tolerance {config.tolerance:.0%}){split_note}")
        else:
            ok = False
            reasons.append(f"FAIL {config.metric}={new:.4f} < {floor:.4f} (champion {old:.4f}, tolerance {config.tolerance:.0%}){split_note}")
    if recall is None:
        ok = False
        reasons.append("FAIL ANN recall was not measured")
    elif recall >= config.min_recall:
        reasons.append(f"PASS ANN recall {recall:.4f} >= {config.min_recall}")
    else:
        ok = False
        reasons.append(f"FAIL ANN recall {recall:.4f} < {config.min_recall}")
    return GateDecision(ok, reasons, new, old)


def registry_client(tracking_uri: str) -> Any:
    """An ``MlflowClient`` whose model registry lives in the same store as the runs."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def champion_version(client: Any, name: str, alias: str = "champion") -> Any | None:
    """The model version carrying ``alias``, or None when the model or alias is absent."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def version_metrics(version: Any) -> dict[str, float]:
    """Held-out metrics stored on a model version at registration."""
    raw = (version.tags or {}).get(METRICS_TAG)
    return {k: float(v) for k, v in json.loads(raw).items()} if raw else {}


def tag_version(client: Any, name: str, version: str, metrics: dict[str, float], split_sha256: str, bundle_version: str) -> None:
    """Store what the gates and a rollback need on the version itself."""
    client.set_model_version_tag(name, version, METRICS_TAG, json.dumps({k: round(float(v), 6) for k, v in metrics.items()}))
    client.set_model_version_tag(name, version, SPLIT_TAG, split_sha256)
    client.set_model_version_tag(name, version, BUNDLE_TAG, bundle_version)


def _history(client: Any, name: str) -> list[str]:
    tags = client.get_registered_model(name).tags or {}
    return list(json.loads(tags.get(HISTORY_TAG, "[]")))


def promote(client: Any, name: str, version: str, alias: str = "champion") -> None:
    """Point ``alias`` at ``version`` and append it to the champion history."""
    history = _history(client, name)
    client.set_registered_model_alias(name, alias, str(version))
    history.append(str(version))
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-50:]))
    log.info("%s@%s -> version %s", name, alias, version)


def rollback(client: Any, name: str, alias: str = "champion", to_version: str | None = None) -> Any:
    """Move ``alias`` back to the previous champion (or to ``to_version``).

    Returns the model version now carrying the alias.

    The gates are bypassed on purpose: a human decided. The history drops the version
    rolled back from, so a second rollback goes one step further back.

    Raises
    ------
    ConfigError
        When there is no earlier champion to go back to.
    """
    history = _history(client, name)
    if to_version is None:
        if len(history) < 2:
            raise ConfigError(f"{name}@{alias}: no earlier champion in the history {history}; pass --to-version")
        history = history[:-1]
        to_version = history[-1]
    else:
        history.append(str(to_version))
    client.get_model_version(name, str(to_version))  # raises a clear MlflowException when absent
    client.set_registered_model_alias(name, alias, str(to_version))
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-50:]))
    log.info("rolled back %s@%s -> version %s", name, alias, to_version)
    return client.get_model_version(name, str(to_version))

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
switch the served bundle too (:func:`move_together`; see ``pipelines/rollback.py``): the
target is validated first (:func:`rollback_target`), and alias and ``OUT/latest`` move
together or not at all. A version a crashed run registered but never tagged is deleted by
the next run (:func:`clean_untagged_versions`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from recsys.errors import ConfigError, QualityGateError
from recsys.tracking import validate_name

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


def rollback_target(client: Any, name: str, alias: str = "champion",
                    to_version: str | None = None) -> tuple[Any, list[str]]:
    """The version a rollback would move ``alias`` to, validated, and the history after it.

    Moves nothing. The target must exist and carry the tags :func:`tag_version` writes
    (a version registered by a run that crashed before tagging it has none, and no
    bundle to serve).

    Raises
    ------
    ConfigError
        No earlier champion, an unknown version, or an untagged one; the message lists
        the versions a rollback can go to.
    """
    from mlflow.exceptions import MlflowException

    validate_name(name, "registered model name")
    try:
        history = _history(client, name)
    except MlflowException as e:
        raise ConfigError(f"no registered model {name!r} in this registry ({_short(e)}); check --registered-model "
                          "and --tracking-uri") from None
    if to_version is None:
        if len(history) < 2:
            raise ConfigError(f"{name}@{alias}: no earlier champion in the history {history}; pass --to-version")
        history = history[:-1]
        to_version = history[-1]
    else:
        to_version = str(to_version).strip()
        if not to_version.isdigit():
            raise ConfigError(f"--to-version must be a registered version number, got {to_version!r}")
        history = [*history, to_version]
    try:
        version = client.get_model_version(name, to_version)
    except MlflowException:
        raise ConfigError(f"{name} has no version {to_version}; versions to roll back to: "
                          f"{usable_versions(client, name)}") from None
    missing = [t for t in (BUNDLE_TAG, METRICS_TAG, SPLIT_TAG) if not (version.tags or {}).get(t)]
    if missing:
        raise ConfigError(f"{name} v{to_version} lacks the tags {missing}: it was registered by a run that stopped "
                          f"before tagging it (or outside `recsys run`) and names no bundle; versions to roll back "
                          f"to: {usable_versions(client, name)}")
    return version, history[-50:]


def usable_versions(client: Any, name: str) -> list[str]:
    """Versions of ``name`` tagged with a bundle (what a rollback can go to), oldest first."""
    found = client.search_model_versions(f"name = '{name}'")
    return sorted((str(v.version) for v in found if (v.tags or {}).get(BUNDLE_TAG)), key=int)


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def move_together(client: Any, name: str, alias: str, version: Any, history: list[str],
                  switch: Callable[[], None], undo: Callable[[], None]) -> None:
    """Move ``alias`` to ``version`` and the served bundle with it, or neither.

    ``switch`` moves ``latest`` first (a local, undoable rename); then the alias and the
    champion history tag are set. If any of that fails, the alias is put back where it
    was and ``undo`` restores ``latest``, so ``models:/NAME@alias`` and ``OUT/latest``
    never serve different bundles. The error is re-raised.
    """
    before = champion_version(client, name, alias)
    switch()
    try:
        client.set_registered_model_alias(name, alias, str(version))
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-50:]))
    except BaseException:
        log.error("moving %s@%s to version %s failed: putting the alias and latest back", name, alias, version)
        try:
            if before is not None:
                client.set_registered_model_alias(name, alias, str(before.version))
            else:
                client.delete_registered_model_alias(name, alias)
        finally:
            undo()
        raise
    log.info("%s@%s -> version %s", name, alias, version)


def rollback(client: Any, name: str, alias: str = "champion", to_version: str | None = None) -> Any:
    """Move ``alias`` back to the previous champion (or to ``to_version``); registry only.

    Returns the model version now carrying the alias. The target is validated by
    :func:`rollback_target` before anything moves. The gates are bypassed on purpose: a
    human decided. The history drops the version rolled back from, so a second rollback
    goes one step further back. ``recsys rollback`` moves the served bundle too, with
    :func:`move_together`.
    """
    version, history = rollback_target(client, name, alias, to_version)
    move_together(client, name, alias, version.version, history, switch=lambda: None, undo=lambda: None)
    return client.get_model_version(name, str(version.version))


def clean_untagged_versions(client: Any, name: str, owned: Callable[[str], bool], keep: str | None = None) -> list[str]:
    """Delete versions a crashed run registered but never tagged; return them, logged.

    ``recsys run`` registers a version and then tags it (:func:`tag_version`); a kill in
    between leaves a version without a bundle tag that no gate or rollback can use. Only
    versions whose registering run was a ``recsys run`` publish of a bundle that
    ``owned(bundle_version)`` recognises (a bundle of the caller's output directory,
    whose lock the caller holds) are deleted: versions registered another way, or by a
    run of another output directory that may be tagging right now, are left alone, as
    is ``keep`` and any version carrying an alias.
    """
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    deleted = []
    for v in found:
        if str(v.version) == str(keep) or (v.tags or {}).get(BUNDLE_TAG):
            continue
        try:
            v = client.get_model_version(name, str(v.version))  # a search result lists no aliases
            run_tags = client.get_run(v.run_id).data.tags if v.run_id else {}
        except MlflowException:
            continue
        if v.aliases or (v.tags or {}).get(BUNDLE_TAG):
            continue
        bundle = run_tags.get(BUNDLE_TAG)
        if not bundle or not owned(bundle):
            continue
        client.delete_model_version(name, str(v.version))
        deleted.append(str(v.version))
    if deleted:
        log.warning("deleted untagged version(s) %s of %s: registered by a run that stopped before tagging them",
                    deleted, name)
    return deleted

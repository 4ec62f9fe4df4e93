"""The MLflow side of ``recsys train``: one run per trained model, its trials nested inside.

Kept apart from :mod:`pipelines.train` (argument handling) so that the run layout is in one
place: params (full config), validation curves, test metrics at K, dataset lineage, tags
and artifacts.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from recsys import tracking
from recsys.evaluation import sample_users
from recsys.io import save_npz, write_json
from recsys.plots import metrics_vs_k, popularity_curve, training_curves
from recsys.training import KS, train_and_evaluate

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class TrainResult:
    """What :func:`log_training_run` returns (stable; used by ``recsys train`` and ``recsys run``)."""

    model: Any
    run_id: str | None  # None only on a non-main rank of a distributed two-tower job
    params: dict[str, Any]
    metrics_valid: dict[str, float]
    metrics_test: dict[str, float]
    experiment: str = ""
    out_dir: Path | None = None
    trials: list[Any] = field(default_factory=list)
    model_on_train: Any = None  # the selected model fitted on train only, when the protocol kept it

log = logging.getLogger(__name__)


def metrics_vs_k_figure(metrics: dict[str, float], title: str, ks: tuple[int, ...] = KS) -> Any:
    """A PNG-ready figure of precision/recall/NDCG/MAP against K (:func:`recsys.plots.metrics_vs_k`)."""
    return metrics_vs_k({title: metrics}, metrics=("precision", "recall", "ndcg", "map"), ks=ks)


def log_training_run(
    dataset: Any,
    dataset_name: str,
    model_name: str,
    params: dict[str, Any],
    uri: str,
    experiment: str,
    out: Path | None,
    space: dict[str, Any],
    tuning: dict[str, Any],
    show_progress: bool,
    tags: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
) -> TrainResult:
    """The training protocol (:func:`recsys.training.train_and_evaluate`) inside one MLflow run.

    The run gets the config as params, lineage and git tags; the protocol's trials,
    validation curves and test metrics arrive through :class:`recsys.tracking.TrackingCallbacks`;
    artifacts (model, factors, id maps, config, metrics, plots) are written to ``out`` and logged.
    ``evaluation`` (``valid_users``, ``test_users``, ``sample_seed``) picks the users the
    metrics are computed on; it is logged with the config.
    """
    import mlflow  # noqa: PLC0415 - heavy; `recsys --help` must not import it

    tune = bool(space)
    config = {"model": model_name, "params": params, "tune": tune, "tuning": tuning, "space": space,
              "evaluation": dict(evaluation or {})}
    run_tags = {"dataset": dataset_name, "model": model_name, "tuned": str(tune).lower(), **(tags or {})}
    with tracking.start_run(uri, experiment, run_name=f"{model_name}{'-tuned' if tune else ''}", tags=run_tags) as run:
        tracking.log_git_commit(REPO_ROOT)
        tracking.log_config(config)
        rows = {s: df.height for s, df in dataset.splits.items()}
        manifest = dataset.path / "manifest.json" if dataset.path is not None else dataset.manifest
        tracking.log_dataset_lineage(manifest, rows, name=dataset_name, path=dataset.path)
        res = train_and_evaluate(dataset, model_name, params, space=space, tuning=tuning,
                                 callbacks=tracking.TrackingCallbacks(model_name), show_progress=show_progress,
                                 **dict(evaluation or {}))
        if res.history and "iteration" in res.history[0]:
            _log_training_curve(res.history, f"{model_name} validation curve (best trial)")
        elif res.metrics_valid:  # one fit with epochs (two-tower): the selected epoch's scores
            tracking.log_metrics(res.metrics_valid, prefix="valid_")
        tracking.log_metrics(res.summary)
        mlflow.log_params({f"final.{k}": str(v) for k, v in res.model.get_params().items()})
        out_dir = _write_artifacts(dataset, res.model, model_name, config, res.params, res.metrics_valid,
                                   res.metrics_test, out, dataset_name)
        if out_dir is not None and hasattr(res.model, "save_checkpoint"):
            res.model.save_checkpoint(out_dir / "checkpoint")
            tracking.log_file(out_dir / "checkpoint" / "config.json", "checkpoint")
        run_id = run.info.run_id
    return TrainResult(res.model, run_id, res.params, res.metrics_valid, res.metrics_test, experiment, out_dir, res.trials,
                       res.model_on_train)


def _log_training_curve(history: list[dict[str, float]], title: str) -> None:
    """``plots/validation_curve.png``: NDCG@10 and recall@10 per evaluation step (MF models)."""
    rows = [{k: h[k] for k in ("iteration", "ndcg@10", "recall@10") if k in h} for h in history]
    if len(rows) < 2:
        return
    tracking.log_figure(training_curves(rows, title=title), "plots/validation_curve.png")


#: users whose top-k the popularity plot draws: a curve of shares needs no more, and ranking
#: every user of a 20M-event log again only for a plot cost 45 s (docs/scale.md)
POPULARITY_USERS = 20_000


def _log_popularity(dataset: Any, model: Any, model_name: str, k: int = 10, seed: int = 0) -> None:
    """``plots/popularity.png``: popularity of recommended items against the catalogue.

    Drawn from the top-``k`` of a seeded sample of at most :data:`POPULARITY_USERS` test users
    (:func:`recsys.evaluation.sample_users`), all of them on smaller logs.
    """
    train = dataset.matrix("train")
    users = sample_users(dataset.matrix("test"), POPULARITY_USERS, seed)
    ids, _ = model.recommend(users, k=k)
    tracking.log_figure(popularity_curve(train, {model_name: ids}, k=k), "plots/popularity.png")


def _write_artifacts(
    dataset: Any,
    model: Any,
    model_name: str,
    config: dict[str, Any],
    final: dict[str, Any],
    m_valid: dict[str, float],
    m_test: dict[str, float],
    out: Path | None,
    dataset_name: str,
) -> Path | None:
    """Write model, factors, id maps, config, metrics and plot to ``out`` and log them."""
    tmp = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="recsys-train-")
        out = Path(tmp.name)
    out.mkdir(parents=True, exist_ok=True)
    try:
        model.save(out / "model.npz")
        tracking.log_file(out / "model.npz", "model")
        if hasattr(model, "user_factors_"):
            save_npz(out / "factors.npz", user_factors=model.user_factors_, item_factors=model.item_factors_)
            tracking.log_file(out / "factors.npz", "model")
        dataset.user_map.save(out / "user_map.parquet")
        dataset.item_map.save(out / "item_map.parquet")
        tracking.log_file(out / "user_map.parquet", "id_maps")
        tracking.log_file(out / "item_map.parquet", "id_maps")
        write_json(out / "config.json", {**config, "final_params": final, "model_params": model.get_params()})
        tracking.log_file(out / "config.json")
        write_json(out / "metrics.json", {"valid": m_valid, "test": m_test})
        tracking.log_file(out / "metrics.json")
        fig = metrics_vs_k_figure(m_test, f"{model_name} on {dataset_name} (test)")
        fig.savefig(out / "metrics_at_k.png", dpi=110, bbox_inches="tight")
        tracking.log_figure(fig, "plots/metrics_at_k.png")
        _log_popularity(dataset, model, model_name, seed=int((config.get("evaluation") or {}).get("sample_seed", 0)))
    finally:
        if tmp is not None:
            tmp.cleanup()
    return None if tmp is not None else out

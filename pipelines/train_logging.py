"""The MLflow side of ``recsys train``: one run per trained model, its trials nested inside.

Kept apart from :mod:`pipelines.train` (argument handling) so that the run layout is in one
place: params (full config), validation curves, test metrics at K, dataset lineage, tags
and artifacts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.train import KS, REPO_ROOT, TrainResult
from recsys import tracking
from recsys.evaluation import evaluate
from recsys.io import save_npz, write_json
from recsys.tuning import make_model, select_and_fit

log = logging.getLogger(__name__)


def metrics_vs_k_figure(metrics: dict[str, float], title: str, ks: tuple[int, ...] = KS) -> Any:
    """A PNG-ready figure of precision/recall/NDCG/MAP against K.

    Uses :func:`recsys.plots.metrics_vs_k` when it is importable, else draws a minimal
    version here so that every run has the plot.
    """
    try:
        from recsys import plots  # written by the reports issue; optional here

        return plots.metrics_vs_k({title: metrics}, metrics=("precision", "recall", "ndcg", "map"), ks=ks)
    except Exception as e:  # noqa: BLE001 - fall back to the minimal plot
        log.debug("recsys.plots unavailable (%s); drawing the minimal plot", e)
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in ("precision", "recall", "ndcg", "map"):
        ys = [metrics.get(f"{name}@{k}", np.nan) for k in ks]
        ax.plot(ks, ys, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xticks(list(ks), [str(k) for k in ks])
    ax.set_xlabel("K")
    ax.set_ylabel("metric on test")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def log_training_run(
    dataset: Any,
    dataset_name: str,
    model_name: str,
    params: dict[str, Any],
    uri: str,
    experiment: str,
    out: Path | None,
    tune: bool,
    space: dict[str, Any],
    tuning: dict[str, Any],
    show_progress: bool,
) -> TrainResult:
    """Run selection (or a single fit), the test evaluation and all logging in one MLflow run."""
    config = {"model": model_name, "params": params, "tune": tune, "tuning": tuning, "space": space if tune else {}}
    tags = {"dataset": dataset_name, "model": model_name, "tuned": str(tune).lower()}
    train = dataset.matrix("train")
    test = dataset.matrix("test")
    has_valid = "valid" in dataset.splits and dataset.splits["valid"].height > 0
    with tracking.start_run(uri, experiment, run_name=f"{model_name}{'-tuned' if tune else ''}", tags=tags) as run:
        tracking.log_git_commit(REPO_ROOT)
        tracking.log_config(config)
        rows = {s: df.height for s, df in dataset.splits.items()}
        manifest = dataset.path / "manifest.json" if dataset.path is not None else dataset.manifest
        tracking.log_dataset_lineage(manifest, rows, name=dataset_name, path=dataset.path)
        trials: list[Any] = []
        if has_valid:
            res = select_and_fit(
                model_name,
                train,
                dataset.matrix("valid"),
                test,
                space if tune else {},
                base_params=params,
                ks=KS,
                log_to_mlflow=True,
                show_progress=show_progress,
                **tuning,
            )
            model, final, m_valid, m_test, trials = res.model, res.params, res.metrics_valid, res.metrics_test, res.trials
            _log_training_curve(res.best.history, f"{model_name} validation curve (best trial)")
        else:
            log.warning("no valid split: fitting %s with fixed params, no model selection", model_name)
            model = make_model(model_name, params).fit(train)
            final, m_valid, m_test = dict(params), {}, evaluate(model, train, test, ks=KS)
        tracking.log_metrics(m_test, prefix="test_")
        import mlflow

        mlflow.log_params({f"final.{k}": str(v) for k, v in model.get_params().items()})
        out_dir = _write_artifacts(dataset, model, model_name, config, final, m_valid, m_test, out, dataset_name)
        run_id = run.info.run_id
    return TrainResult(model, run_id, final, m_valid, m_test, experiment, out_dir, trials)


def _log_training_curve(history: list[dict[str, float]], title: str) -> None:
    """``plots/validation_curve.png``: NDCG@10 and recall@10 per evaluation step (MF models)."""
    rows = [{k: h[k] for k in ("iteration", "ndcg@10", "recall@10") if k in h} for h in history]
    if len(rows) < 2:
        return
    try:
        from recsys.plots import training_curves
    except ImportError:
        return
    tracking.log_figure(training_curves(rows, title=title), "plots/validation_curve.png")


def _log_popularity(dataset: Any, model: Any, model_name: str, k: int = 10) -> None:
    """``plots/popularity.png``: popularity of recommended items against the catalogue."""
    from recsys.plots import popularity_curve

    train = dataset.matrix("train")
    users = np.flatnonzero(np.diff(dataset.matrix("test").indptr))
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
    import tempfile

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
        _log_popularity(dataset, model, model_name)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return None if tmp is not None else out

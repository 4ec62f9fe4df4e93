"""Evaluation plots as matplotlib :class:`~matplotlib.figure.Figure` objects.

Why figures and not files: the same plot goes to an MLflow run (via
:func:`recsys.tracking.log_figure`), into a notebook, or to disk with
:func:`save_figure`, so the functions here only draw. They build figures with the
object-oriented API on the Agg canvas and never touch ``pyplot``: no global figure
state, no GUI backend, safe in batch jobs and threads.

* :func:`metrics_vs_k`: metric vs K, one line per model (Recall@K / NDCG@K side by side).
* :func:`training_curves`: loss and validation metrics per iteration or epoch.
* :func:`popularity_curve`: how concentrated recommendations are on popular items,
  compared with the training interactions (a Lorenz-like long-tail plot).
* :func:`evaluation_figures`: the set every training run logs, keyed by artifact name.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from recsys.errors import InputError
from recsys.io import atomic_path

log = logging.getLogger(__name__)

_KEY = re.compile(r"^(?P<metric>[a-z_]+)@(?P<k>\d+)$")


def _figure(n_panels: int, width: float = 4.2, height: float = 3.4) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(width * n_panels, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, list(axes)


def _style(ax: Any, xlabel: str, ylabel: str | None, title: str, legend: bool = True) -> None:
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(fontsize="small")


def _as_results(results: Mapping[str, Any]) -> dict[str, Mapping[str, float]]:
    """Accept one model's metrics dict or ``{model name: metrics}``."""
    if not isinstance(results, Mapping) or not results:
        raise InputError("results must be a non-empty mapping of model name -> metrics (or one metrics dict)")
    if all(isinstance(v, Mapping) for v in results.values()):
        return dict(results)
    return {"model": results}


def metrics_vs_k(
    results: Mapping[str, Any],
    metrics: Sequence[str] = ("recall", "ndcg"),
    ks: Sequence[int] | None = None,
    title: str | None = None,
) -> Figure:
    """Metric vs K, one panel per metric and one line per model.

    Parameters
    ----------
    results : ``{model name: evaluate(...) dict}`` or a single ``evaluate`` dict
    metrics : metric names without ``@K`` (e.g. ``"recall"``, ``"ndcg"``, ``"coverage"``)
    ks : only these cut-offs (default: every ``@K`` key found); the K axis is
        logarithmic when the cut-offs span a factor of 8 or more (10 ... 100)
    title : optional figure title
    """
    res = _as_results(results)
    if isinstance(metrics, str) or not metrics:
        raise InputError(f"metrics must be a non-empty sequence of names, got {metrics!r}")
    fig, axes = _figure(len(metrics))
    for ax, metric in zip(axes, metrics):
        plotted = False
        for name, r in res.items():
            pts = sorted(
                (int(m["k"]), float(v))
                for key, v in r.items()
                if (m := _KEY.match(str(key))) and m["metric"] == metric and (ks is None or int(m["k"]) in ks)
            )
            if not pts:
                continue
            xs, vals = zip(*pts)
            ax.plot(xs, vals, marker="o", label=str(name))
            plotted = True
            if max(xs) >= 8 * min(xs):
                ax.set_xscale("log")
                ax.set_xticks(list(xs), [str(x) for x in xs])
        if not plotted:
            raise InputError(f"no '{metric}@K' values in the results; keys look like 'ndcg@10'")
        _style(ax, "K", f"{metric}@K", f"{metric}@K")
    if title:
        fig.suptitle(title)
    return fig


def training_curves(
    history: Sequence[Mapping[str, float]],
    x: str | None = None,
    title: str | None = None,
) -> Figure:
    """Loss and validation metrics over training, one panel per quantity.

    Parameters
    ----------
    history : list of dicts, one per evaluation step, e.g. ``MFModel.history_``
        (``{"iteration": 5, "ndcg@10": 0.31}``) or the two-tower trainer's epochs
        (``{"epoch": 1, "loss": 3.2, ...}``).
    x : key giving the step; default ``"iteration"``, ``"epoch"`` or ``"step"`` when
        present, else 1, 2, ...
    """
    if not history:
        raise InputError("history is empty: nothing to plot (was validation enabled during fit?)")
    rows = list(history)
    if x is None:
        x = next((c for c in ("iteration", "epoch", "step") if c in rows[0]), None)
    steps = np.array([r.get(x, np.nan) for r in rows], float) if x else np.arange(1, len(rows) + 1, dtype=float)
    keys = [k for k in rows[0] if k != x and isinstance(rows[0][k], (int, float, np.number)) and not isinstance(rows[0][k], bool)]
    if not keys:
        raise InputError(f"history rows hold no numeric values besides {x!r}")
    fig, axes = _figure(len(keys), width=3.6)
    for ax, key in zip(axes, keys):
        vals = np.array([r.get(key, np.nan) for r in rows], float)
        ax.plot(steps, vals, marker="." if len(rows) < 50 else None)
        _style(ax, x or "evaluation", None, key, legend=False)
    if title:
        fig.suptitle(title)
    return fig


def lorenz(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Cumulative share of ``counts`` captured by the most popular items.

    Returns ``(x, y, gini)``: ``x`` the fraction of the catalogue (most popular item
    first, starting at 0), ``y`` the cumulative share of the total, and the Gini
    coefficient (0: every item equally often, towards 1: a few items take everything).
    """
    c = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    if c.size == 0 or c.sum() <= 0:
        raise InputError("counts must be non-empty with a positive total")
    y = np.r_[0.0, np.cumsum(c) / c.sum()]
    x = np.linspace(0.0, 1.0, len(c) + 1)
    # area between the curve and the diagonal, doubled (trapezoid rule on the steps)
    gini = float(2 * np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) - 1)
    return x, y, gini


def popularity_curve(
    train: sp.spmatrix,
    recommendations: Mapping[str, np.ndarray],
    k: int | None = None,
    title: str | None = None,
) -> Figure:
    """Popularity of recommended items vs the catalogue (long-tail plot).

    Left: Lorenz-like curves, share of interactions (training data) or of
    recommendation slots (each model) captured by the top x% of items, items ordered
    by their own counts; the Gini coefficient is in the legend. Right: training
    popularity of each item (log scale, items by popularity rank) with the share of
    each model's recommendations falling on the head (top 20% of items).

    Parameters
    ----------
    train : sparse user x item matrix (the catalogue's interactions)
    recommendations : ``{model name: (n_users, K) item index array}`` (``-1`` padding ignored)
    k : use the first ``k`` columns (default: all)
    """
    m = sp.csr_matrix(train)
    n_items = m.shape[1]
    pop = np.bincount(m.indices, minlength=n_items).astype(np.float64)
    if not isinstance(recommendations, Mapping) or not recommendations:
        raise InputError("recommendations must be a non-empty mapping of model name -> (n_users, K) ids")
    fig, (ax_l, ax_r) = _figure(2, width=4.8)
    x, y, g = lorenz(pop)
    ax_l.plot(x, y, color="black", lw=2, label=f"training data (Gini {g:.2f})")
    order = np.argsort(-pop, kind="stable")
    rank = np.empty(n_items, np.int64)
    rank[order] = np.arange(n_items)
    head = rank < max(1, int(round(0.2 * n_items)))
    ax_r.semilogy(np.arange(1, n_items + 1), np.maximum(pop[order], 0.5), color="black", lw=1.5, label="training data")
    for name, ids in recommendations.items():
        rec = np.asarray(ids)
        if rec.ndim != 2 or rec.dtype.kind not in "iu":
            raise InputError(f"recommendations[{name!r}] must be a 2-D integer array, got shape {rec.shape}")
        rec = rec[:, :k] if k else rec
        rec = rec[rec >= 0]
        if rec.size and rec.max() >= n_items:
            raise InputError(f"recommendations[{name!r}] holds item indices >= n_items ({n_items})")
        cnt = np.bincount(rec, minlength=n_items)
        if cnt.sum() == 0:
            log.warning("no recommendations for %s; skipped in the popularity plot", name)
            continue
        x, y, g = lorenz(cnt)
        ax_l.plot(x, y, label=f"{name} (Gini {g:.2f})")
        head_share = float(cnt[head].sum() / cnt.sum())
        pos = np.sort(rank[np.unique(rec)]) + 1
        ax_r.plot(pos, np.maximum(pop[order][pos - 1], 0.5), "|", ms=8, alpha=0.5, label=f"{name}: {head_share:.0%} head")
    ax_l.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    _style(ax_l, "share of items (most frequent first)", "cumulative share", "concentration (Lorenz)")
    _style(ax_r, "item popularity rank", "training interactions", "recommended items on the long tail")
    if title:
        fig.suptitle(title)
    return fig


def evaluation_figures(
    results: Mapping[str, Any],
    train: sp.spmatrix | None = None,
    recommendations: Mapping[str, np.ndarray] | None = None,
    history: Sequence[Mapping[str, float]] | None = None,
    k: int = 10,
) -> dict[str, Figure]:
    """The plots a training run logs, keyed by their MLflow artifact file name.

    ``plots/metrics_at_k.png`` always; ``plots/popularity.png`` when ``train`` and
    ``recommendations`` are given; ``plots/training_curves.png`` when ``history`` is
    non-empty. Log them with ``for name, fig in figs.items(): tracking.log_figure(fig, name)``.
    """
    res = _as_results(results)
    present = {m["metric"] for r in res.values() for key in r if (m := _KEY.match(str(key)))}
    wanted = [m for m in ("recall", "ndcg", "coverage") if m in present] or sorted(present)[:3]
    figs = {"plots/metrics_at_k.png": metrics_vs_k(res, metrics=wanted)}
    if train is not None and recommendations:
        figs["plots/popularity.png"] = popularity_curve(train, recommendations, k=k)
    if history:
        figs["plots/training_curves.png"] = training_curves(history)
    return figs


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> None:
    """Write ``fig`` to ``path`` atomically; the format follows the suffix (.png, .svg, .pdf)."""
    fmt = os.fspath(path).rsplit(".", 1)[-1].lower() if "." in os.path.basename(os.fspath(path)) else ""
    if fmt not in ("png", "svg", "pdf", "jpg", "jpeg"):
        raise InputError(f"unsupported figure format for {path!s}; use .png, .svg or .pdf")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")

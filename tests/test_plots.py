"""Plots draw the right data, never use pyplot state, and save atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (only to check that no pyplot figure is opened)
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from recsys import plots  # noqa: E402
from recsys.errors import InputError  # noqa: E402

RESULTS = {
    "MostPopular": {"recall@10": 0.06, "recall@20": 0.10, "ndcg@10": 0.16, "ndcg@20": 0.15, "mrr": 0.3, "n_users": 610},
    "ItemKNN": {"recall@10": 0.13, "recall@20": 0.20, "ndcg@10": 0.28, "ndcg@20": 0.27, "n_users": 610},
}


def _lines(ax) -> dict[str, tuple[list[float], list[float]]]:
    return {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()}


def test_metrics_vs_k_one_panel_per_metric_one_line_per_model():
    before = plt.get_fignums()
    fig = plots.metrics_vs_k(RESULTS, metrics=("recall", "ndcg"), title="ml-small")
    assert isinstance(fig, Figure)
    assert plt.get_fignums() == before  # no pyplot-managed figure leaked
    ax_recall, ax_ndcg = fig.axes
    assert _lines(ax_recall) == {"MostPopular": ([10, 20], [0.06, 0.10]), "ItemKNN": ([10, 20], [0.13, 0.20])}
    assert _lines(ax_ndcg)["ItemKNN"] == ([10, 20], [0.28, 0.27])
    assert ax_recall.get_xlabel() == "K" and ax_ndcg.get_title() == "ndcg@K"


def test_metrics_vs_k_filters_ks_and_uses_a_log_axis_for_wide_ranges():
    res = {"recall@10": 0.1, "recall@20": 0.2, "recall@100": 0.5}
    fig = plots.metrics_vs_k(res, metrics=("recall",), ks=(10, 20))
    assert _lines(fig.axes[0])["model"][0] == [10, 20] and fig.axes[0].get_xscale() == "linear"
    wide = plots.metrics_vs_k(res, metrics=("recall",))
    assert _lines(wide.axes[0])["model"][0] == [10, 20, 100] and wide.axes[0].get_xscale() == "log"


def test_metrics_vs_k_accepts_a_single_result_and_rejects_missing_metric():
    fig = plots.metrics_vs_k(RESULTS["ItemKNN"], metrics=("recall",))
    assert list(_lines(fig.axes[0])) == ["model"]
    with pytest.raises(InputError, match="map@K"):
        plots.metrics_vs_k(RESULTS, metrics=("map",))
    with pytest.raises(InputError, match="metrics"):
        plots.metrics_vs_k(RESULTS, metrics="recall")


def test_training_curves_plot_each_quantity_against_iteration():
    history = [{"iteration": 5, "ndcg@10": 0.2, "loss": 3.0}, {"iteration": 10, "ndcg@10": 0.25, "loss": 2.5}]
    fig = plots.training_curves(history)
    assert [ax.get_title() for ax in fig.axes] == ["ndcg@10", "loss"]
    x, y = next(iter(_lines(fig.axes[1]).values()))
    assert (x, y) == ([5.0, 10.0], [3.0, 2.5])
    assert fig.axes[0].get_xlabel() == "iteration"
    epochs = plots.training_curves([{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}])
    assert epochs.axes[0].get_xlabel() == "epoch"
    with pytest.raises(InputError, match="empty"):
        plots.training_curves([])


def test_lorenz_curve_and_gini_hand_values():
    x, y, g = plots.lorenz(np.array([1, 1, 1, 1]))
    np.testing.assert_allclose(y, [0, 0.25, 0.5, 0.75, 1.0])
    assert g == pytest.approx(0.0)
    x, y, g = plots.lorenz(np.array([0, 0, 0, 8]))  # one item takes everything
    np.testing.assert_allclose(y, [0, 1, 1, 1, 1])
    assert g == pytest.approx(1 - 1 / 4)
    _, y, g = plots.lorenz(np.array([3, 1]))
    np.testing.assert_allclose(y, [0, 0.75, 1.0])
    assert g == pytest.approx(2 * (0.5 * 0.75 / 2 + 0.5 * 1.75 / 2) - 1)
    with pytest.raises(InputError):
        plots.lorenz(np.zeros(3))


def test_popularity_curve_compares_models_with_training_data():
    train = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]], np.float32))
    recs = {"popular": np.array([[0, 1], [0, 1], [0, 1]]), "spread": np.array([[0, 1], [2, 3], [1, -1]])}
    fig = plots.popularity_curve(train, recs, k=2)
    ax_l, ax_r = fig.axes
    labels = [ln.get_label() for ln in ax_l.get_lines()]
    # counts (sorted) training [3,1,1,1] -> Gini 0.25; popular [3,3,0,0] -> 0.5; spread [2,1,1,1] -> 0.15
    # (Gini = 2 * trapezoid area under the Lorenz curve - 1, e.g. spread: 2 * 0.575 - 1)
    assert labels[:3] == ["training data (Gini 0.25)", "popular (Gini 0.50)", "spread (Gini 0.15)"]
    # the head is the top 20% of 4 items = item 0: "popular" puts 50% of its slots there
    assert any(ln.get_label() == "popular: 50% head" for ln in ax_r.get_lines())
    with pytest.raises(InputError, match=">= n_items"):
        plots.popularity_curve(train, {"bad": np.array([[4]])})


def test_popularity_curve_on_movielens_most_popular_is_more_concentrated(ml_small):
    from recsys.models.baselines import ItemKNN, MostPopular

    train = ml_small.matrix("train")
    users = np.arange(0, train.shape[0], 5)
    recs = {name: m.fit(train).recommend(users, k=10)[0] for name, m in [("MostPopular", MostPopular()), ("ItemKNN", ItemKNN(n_neighbors=30))]}
    fig = plots.popularity_curve(train, recs)
    gini = {ln.get_label().split(" (")[0]: float(ln.get_label().split("Gini ")[1].rstrip(")")) for ln in fig.axes[0].get_lines() if "Gini" in ln.get_label()}
    assert gini["MostPopular"] > gini["ItemKNN"] > 0.5
    assert gini["training data"] > 0.5  # MovieLens has a long tail


def _figures() -> dict[str, Figure]:
    train = sp.csr_matrix(np.eye(4, dtype=np.float32))
    return plots.evaluation_figures(
        RESULTS, train=train, recommendations={"m": np.array([[1, 2]] * 4)}, history=[{"iteration": 1, "loss": 1.0}]
    )


def test_evaluation_figures_are_named_by_artifact_path():
    figs = _figures()
    assert set(figs) == {"plots/metrics_at_k.png", "plots/popularity.png", "plots/training_curves.png"}
    # only the metrics present are drawn (RESULTS has no coverage@K)
    assert [ax.get_title() for ax in figs["plots/metrics_at_k.png"].axes] == ["recall@K", "ndcg@K"]
    assert set(plots.evaluation_figures(RESULTS)) == {"plots/metrics_at_k.png"}


@pytest.mark.slow  # creating a fresh SQLite MLflow store takes ~20 s on 2 busy cores
def test_evaluation_figures_show_up_as_mlflow_artifacts(tmp_path: Path):
    import mlflow

    from recsys import tracking

    figs = _figures()
    uri = tracking.local_sqlite_uri(tmp_path)
    with tracking.start_run(uri, "plots-test", run_name="figs") as run:
        for name, fig in figs.items():
            tracking.log_figure(fig, name)
    listed = {f.path for f in mlflow.MlflowClient(uri).list_artifacts(run.info.run_id, "plots")}
    assert listed == set(figs)


def test_save_figure_writes_png_atomically(tmp_path: Path):
    fig = plots.metrics_vs_k(RESULTS)
    out = tmp_path / "sub" / "m.png"
    plots.save_figure(fig, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plots.save_figure(fig, tmp_path / "m.svg")
    assert b"<svg" in (tmp_path / "m.svg").read_bytes()[:500]
    with pytest.raises(InputError, match="format"):
        plots.save_figure(fig, tmp_path / "m.txt")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["m.png", "m.svg"]  # no temp leftovers

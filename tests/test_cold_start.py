"""Cold-start evaluation on real MovieLens latest-small (TF-IDF content double, small ALS)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from recsys.cold_start import (
    FixedVectors,
    RandomScores,
    als_vectors,
    build_cold_start_dataset,
    evaluate_cold_start,
    user_content_profiles,
)
from recsys.data.dataset import Dataset
from recsys.embeddings.content import embed_items, item_texts
from recsys.embeddings.encoders import TfidfSvdEncoder
from recsys.errors import InputError
from tests.content_fixtures import ml_small_movies, ml_small_ratings


@pytest.fixture(scope="module")
def cold_ds() -> Dataset:
    return build_cold_start_dataset(ml_small_ratings(), ml_small_movies(), cold_frac=0.1, min_interactions=5, seed=0)


@pytest.fixture(scope="module")
def report(cold_ds: Dataset):
    texts = item_texts(cold_ds.items, ["title", "genres"])
    enc = TfidfSvdEncoder(n_components=64).fit(texts)
    content, _ = embed_items(cold_ds.items, ["title", "genres"], enc)
    u, v = als_vectors(cold_ds.matrix("train"), factors=32, regularization=10.0, iterations=8, seed=0)
    return evaluate_cold_start(cold_ds, content, u, v, ks=(10, 20), k_grid=(0, 2, 10))


def test_cold_items_are_ten_percent_of_eligible_items_and_absent_from_training(cold_ds: Dataset) -> None:
    r = ml_small_ratings()
    eligible = r.group_by("item").len().filter(pl.col("len") >= 5).height
    cold = np.unique(cold_ds.split("test_cold")["item_idx"].to_numpy())
    assert len(cold) == round(0.1 * eligible)
    assert (cold_ds.interaction_counts("train", "valid", "test")[cold] == 0).all()
    assert cold_ds.n_items == 9742  # every movie of movies.csv is in the catalogue
    ext = cold_ds.items.filter(pl.col("item_idx").is_in(cold.tolist()))
    assert ext["title"].null_count() == 0  # cold items keep their metadata


def test_mapped_content_beats_random_and_content_knn_beats_random_on_cold_items(report) -> None:
    cold = report.results["cold_only"]
    assert cold["content_map"]["recall@20"] > 3 * cold["random"]["recall@20"]
    assert cold["content_knn"]["recall@20"] > 2 * cold["random"]["recall@20"]
    assert cold["blended"]["recall@20"] == pytest.approx(cold["content_map"]["recall@20"])  # n = 0 -> same vector
    assert cold["random"]["n_users"] > 400


def test_warm_metrics_do_not_drop_when_blending_is_on(report) -> None:
    warm = report.results["warm"]
    assert warm["blend_on_warm_candidates"]["ndcg@20"] >= warm["blend_off"]["ndcg@20"] - 1e-9 or report.k > 0
    assert warm["blend_on"]["recall@20"] >= 0.97 * warm["blend_off"]["recall@20"]
    assert report.table_counts.get("content", 0) >= report.n_cold_items
    assert set(report.as_dict()) == {"results", "k", "cold_scale", "k_scores", "n_cold_items", "table_counts"}


def test_user_profile_is_the_normalised_mean_of_history_content() -> None:
    content = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    ui = sp.csr_matrix(np.array([[5, 1, 0], [0, 0, 0]], np.float32))
    prof = user_content_profiles(ui, content)
    np.testing.assert_allclose(prof, [[np.sqrt(0.5), np.sqrt(0.5)], [0, 0]], rtol=1e-6)
    with pytest.raises(InputError, match="item columns"):
        user_content_profiles(ui, content[:2])


def test_fixed_vectors_rank_by_inner_product_and_random_is_reproducible() -> None:
    u = np.array([[1.0, 0.0]], np.float32)
    v = np.array([[0.1, 0], [0.9, 0], [0.5, 0], [2.0, 0]], np.float32)
    seen = sp.csr_matrix(np.array([[0, 0, 0, 1]], np.float32))
    ids, _ = FixedVectors.from_vectors(u, v, seen).recommend(0, k=3)
    assert ids.tolist() == [1, 2, 0]
    ids2, _ = FixedVectors.from_vectors(u, v, seen).recommend(0, k=2, items=np.array([0, 2]))
    assert ids2.tolist() == [2, 0]
    a = RandomScores(3).fit(seen).recommend(0, k=3)[0]
    assert a.tolist() == RandomScores(3).fit(seen).recommend(0, k=3)[0].tolist()
    with pytest.raises(InputError, match="equal width"):
        FixedVectors.from_vectors(u, v[:, :1], seen)


def test_a_dataset_without_cold_items_is_refused(cold_ds: Dataset) -> None:
    warm_only = Dataset({**cold_ds.splits, "test_cold": cold_ds.split("test_cold").clear()}, cold_ds.user_map, cold_ds.item_map, cold_ds.items)
    z = np.zeros((cold_ds.n_items, 4), np.float32)
    with pytest.raises(InputError, match="no test_cold"):
        evaluate_cold_start(warm_only, z, np.zeros((cold_ds.n_users, 4), np.float32), z)


@pytest.mark.slow  # MiniLM over 9.7k titles: minutes on 2 cores unless .cache/embeddings is warm
def test_acceptance_with_real_minilm_best_method_beats_knn_by_20pct_and_random_by_4x(cold_ds: Dataset) -> None:
    from pathlib import Path

    from recsys.embeddings.cache import EmbeddingCache
    from recsys.embeddings.encoders import MiniLMEncoder

    cache = EmbeddingCache(Path(__file__).resolve().parents[1] / ".cache" / "embeddings")
    content, _ = embed_items(cold_ds.items, ["title", "genres"], MiniLMEncoder(device="cpu", show_progress=False), cache=cache)
    u, v = als_vectors(cold_ds.matrix("train"), factors=64, regularization=10.0, iterations=15, seed=0)
    rep = evaluate_cold_start(cold_ds, content, u, v, ks=(20,))
    cold = rep.results["cold_only"]
    best = max(cold["content_map"]["recall@20"], cold["blended"]["recall@20"])
    assert best >= 1.2 * cold["content_knn"]["recall@20"]
    assert best >= 4.0 * cold["random"]["recall@20"]
    warm = rep.results["warm"]
    assert warm["blend_on"]["recall@20"] >= warm["blend_off"]["recall@20"] - 1e-9


def test_two_tower_vectors_give_cold_items_their_content_only_tower_vector() -> None:
    pytest.importorskip("recsys.models.two_tower")
    from recsys.cold_start import two_tower_vectors

    rng = np.random.default_rng(0)
    inter = pl.DataFrame({"user": rng.integers(0, 60, 1500), "item": rng.integers(0, 40, 1500)}).unique()
    ds = build_cold_start_dataset(inter, cold_frac=0.2, min_interactions=5, seed=0)
    content = rng.normal(size=(ds.n_items, 8)).astype(np.float32)
    out = two_tower_vectors(ds, content, epochs=1, dim=8, user_id_dim=8, item_id_dim=8, history_dim=8, hidden=[16],
                            batch_size=256, patience=None, amp=False)
    assert out is not None
    u, v = out
    assert u.shape == (ds.n_users, 8) and v.shape == (ds.n_items, 8) and np.isfinite(v).all()
    cold = np.unique(ds.split("test_cold")["item_idx"].to_numpy())
    assert len(cold) == 8 and np.allclose(np.linalg.norm(v[cold], axis=1), 1.0, atol=1e-4)  # cosine tower output


# -- cold-start mapper chosen on validation (issue 21 item 2) ---------------------------------


def _world(kind: str, n_users: int = 800, n_items: int = 1500, d: int = 8, seed: int = 0):
    """Known user/item CF vectors, content tied to the item vectors (``linear`` or not), and
    train/valid/test matrices sampled from ``softmax(2 u.v)`` (30 items per user)."""
    rng = np.random.default_rng(seed)
    if kind == "linear":  # content = a linear image of the CF vector: ridge recovers it
        v = rng.normal(size=(n_items, d))
        x = v @ rng.normal(size=(d, 16)) + 0.05 * rng.normal(size=(n_items, 16))
    else:  # CF vector = cos of a projection of 3-d content: no useful linear part, smooth locally
        x3 = rng.normal(size=(n_items, 3))
        v = np.cos(2.5 * x3 @ rng.normal(size=(3, d)))
        x = np.c_[x3, np.zeros((n_items, 13))]
    u = rng.normal(size=(n_users, d))
    s = 2 * (u @ v.T)
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    cols = np.concatenate([rng.choice(n_items, 30, replace=False, p=p[i]) for i in range(n_users)])
    rows = np.repeat(np.arange(n_users), 30)
    r = rng.random(len(rows))

    def m(mask: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((np.ones(mask.sum(), np.float32), (rows[mask], cols[mask])), shape=(n_users, n_items))

    mats = {"train": m(r < 0.7), "valid": m((r >= 0.7) & (r < 0.85)), "test": m(r >= 0.85)}
    return x.astype(np.float32), u.astype(np.float32), v.astype(np.float32), mats


def test_auto_picks_ridge_when_content_is_a_linear_image_of_the_cf_vectors() -> None:
    from recsys.embeddings.mappers import select_mapper

    x, u, v, mats = _world("linear")
    sel = select_mapper(x, u, v, mats["train"], mats["valid"], seed=0)
    assert sel.mapper == "ridge", sel.reason
    ridge = sel.scores["ridge"]
    assert ridge["recall@20"] > sel.scores["knn(k=20)"]["recall@20"] and ridge["gain"] > 2 * ridge["gain_se"]
    assert sel.n_users > 100 and sel.n_folds == 5 and sel.n_pseudo_cold % 5 == 0 and sel.n_pseudo_cold > 0


def test_auto_picks_knn_when_the_ridge_map_is_useless_on_non_linear_content() -> None:
    from recsys.embeddings.mappers import select_mapper

    x, u, v, mats = _world("nonlinear")
    sel = select_mapper(x, u, v, mats["train"], mats["valid"], seed=0)
    assert sel.mapper == "knn", sel.reason
    best = sel.scores[f"knn(k={sel.params['k']})"]["recall@20"]
    assert best > 2 * sel.scores["ridge"]["recall@20"] and sel.scores["ridge"]["gain"] < 0
    assert type(sel.make()).__name__ == "KnnMap" and sel.make().k == sel.params["k"]


def _as_dataset(mats: dict[str, sp.csr_matrix]) -> Dataset:
    from recsys.data.idmap import IdMap

    def frame(m: sp.csr_matrix) -> pl.DataFrame:
        c = m.tocoo()
        return pl.DataFrame({"user_idx": c.row.astype(np.int32), "item_idx": c.col.astype(np.int32),
                             "weight": c.data.astype(np.float32)})

    n_users, n_items = mats["train"].shape
    splits = {name: frame(m) for name, m in mats.items()}
    splits["test_cold"] = splits["test"].clear()
    return Dataset(splits, IdMap([str(i) for i in range(n_users)], "user"), IdMap([str(i) for i in range(n_items)], "item"))


def test_selection_reads_only_train_and_valid_and_ignores_whatever_test_holds(monkeypatch) -> None:
    from recsys.embeddings.mappers import select_mapper_on_dataset

    x, u, v, mats = _world("nonlinear", n_users=400)
    ds = _as_dataset(mats)
    read: list[str] = []
    real_split = Dataset.split
    monkeypatch.setattr(Dataset, "split", lambda self, name: read.append(name) or real_split(self, name))
    sel = select_mapper_on_dataset(ds, x, u, v, seed=3)
    assert read and set(read) <= {"train", "valid"}, read
    # the test split replaced by the validation interactions (which would favour other choices): nothing moves
    swapped = _as_dataset({**mats, "test": mats["valid"]})
    assert select_mapper_on_dataset(swapped, x, u, v, seed=3).as_dict() == sel.as_dict()
    # while a different validation split does move the scores
    other = _as_dataset({**mats, "valid": mats["test"]})
    assert select_mapper_on_dataset(other, x, u, v, seed=3).scores != sel.scores


def test_too_little_validation_evidence_keeps_content_knn_and_says_why() -> None:
    from recsys.embeddings.mappers import select_mapper

    x, u, v, mats = _world("linear", n_users=200)
    sel = select_mapper(x, u, v, mats["train"], mats["valid"], min_users=10_000)
    assert (sel.mapper, sel.params) == ("knn", {"k": 20}) and "validation users" in sel.reason and sel.scores == {}
    with pytest.raises(InputError, match="holdout_frac"):
        select_mapper(x, u, v, mats["train"], mats["valid"], holdout_frac=0.5, n_folds=3)


def test_a_bad_mapper_name_exits_2_naming_the_valid_mappers(tmp_path, capsys) -> None:
    from pathlib import Path

    from pipelines.cli import main

    config = str(Path(__file__).resolve().parents[1] / "configs" / "default.toml")
    code = main(["run", "--config", config, "--out", str(tmp_path / "out"), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
                 "--set", 'content.mapper="lasso"'])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "mapper" in err and all(n in err for n in ("'auto'", "'ridge'", "'knn'", "'blend'")), err


def test_blend_step_uses_the_train_model_for_auto_and_records_the_choice_for_the_manifest_and_mlflow(tmp_path) -> None:
    from mlflow import MlflowClient

    from pipelines import steps
    from recsys.embeddings.blend import ItemVectorTable
    from recsys.embeddings.mappers import select_mapper_on_dataset
    from recsys.io import save_npz
    from recsys.models.als import ALS

    x, _, _, mats = _world("nonlinear", n_users=400, n_items=600)
    ds = _as_dataset(mats)
    trained = ALS(factors=8, iterations=3, random_state=0, device="cpu").fit(ds.matrix("train"))
    refit = ALS(factors=8, iterations=3, random_state=1, device="cpu").fit(ds.matrix("train", "valid", "test"))
    trained.save(tmp_path / "trained.npz")
    refit.save(tmp_path / "refit.npz")
    save_npz(tmp_path / "content.npz", vectors=x)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    ctx = steps.RunContext(out=tmp_path / "out", tracking_uri=uri, experiment="h6", seed=5, show_progress=False)
    cfg = {"mapper": "auto", "min_count": 5, "mapper_holdout": 0.1}
    out = steps.blend_step(ctx, ds, str(tmp_path / "refit.npz"), str(tmp_path / "content.npz"), cfg,
                           selection_model_path=str(tmp_path / "trained.npz"))
    want = select_mapper_on_dataset(ds, x, trained.user_factors_, trained.item_factors_, seed=5)
    assert out["mapper"]["mapper"] == want.mapper and out["mapper"]["scores"] == want.scores
    assert out["mapper"]["selected_on"] == "valid" and len(out["mapper"]["scores"]) == 17
    assert ItemVectorTable.load(out["vectors_path"]).meta["cold_start_mapper"]["mapper"] == want.mapper
    run = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("h6").experiment_id])[0]
    assert run.data.params["mapper.chosen"] == want.mapper and run.data.tags["recsys.step"] == "blend"
    assert run.data.metrics["valid.ridge.recall_at_20"] == pytest.approx(want.scores["ridge"]["recall@20"])
    # an explicit mapper is recorded as configured, with no selection
    fixed = steps.blend_step(ctx, ds, str(tmp_path / "refit.npz"), str(tmp_path / "content.npz"),
                             {**cfg, "mapper": "knn", "knn_k": 7})
    assert fixed["mapper"] == {"mapper": "knn", "params": {"k": 7}, "selected_on": None, "reason": "configured"}


def test_content_without_signal_keeps_the_content_knn_incumbent_instead_of_a_lucky_grid_point() -> None:
    from recsys.embeddings.mappers import select_mapper

    x, u, v, mats = _world("linear")
    noise = np.random.default_rng(9).normal(size=x.shape).astype(np.float32)  # content unrelated to the CF vectors
    sel = select_mapper(noise, u, v, mats["train"], mats["valid"], seed=0)
    assert sel.label == "knn(k=20)", sel.reason
    assert "no candidate beats knn(k=20)" in sel.reason
    assert max(s["recall@20"] for s in sel.scores.values()) > sel.scores["knn(k=20)"]["recall@20"]  # a max would pick noise

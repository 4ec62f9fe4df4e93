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

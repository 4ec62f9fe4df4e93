"""Items with metadata only in `recsys update`: a vector from their content, as a full run's blend gives cold items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys.data.idmap import IdMap
from recsys.lifelong import add_content_items, incremental_update
from recsys.models.foldin import FoldInSpec


def _catalogue(seed=0, n_users=60, n_items=80, d=6, d_content=12):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_users, d)).astype(np.float32)
    y = rng.normal(size=(n_items + 3, d)).astype(np.float32)
    a = rng.normal(size=(d, d_content))
    content = (y @ a).astype(np.float32)  # content is a linear function of the CF vector: ridge recovers it
    spec = FoldInSpec("als", weighting="log", alpha=2.0, regularization=0.5, gram=y[:n_items].T.astype(np.float64) @ y[:n_items])
    users, items = IdMap([f"u{i}" for i in range(n_users)], "user"), IdMap([f"i{j}" for j in range(n_items)], "item")
    rows = [(f"u{u}", f"i{j}", 3.0) for u in range(n_users) for j in rng.choice(n_items, 12, replace=False)]
    hist = ([r[0] for r in rows], [r[1] for r in rows], np.full(len(rows), 3.0, np.float32))
    res = incremental_update(x, users, y[:n_items], items, spec, hist, [], sweeps=0)
    return res, y, content, n_items


def test_metadata_only_items_get_content_vectors_through_the_runs_mapper():
    res, y, content, n = _catalogue()
    new_ids = ["new0", "new1", "new2", "i5"]  # i5 is known: skipped
    new_content = np.vstack([content[n:], content[5:6]])
    out = add_content_items(res, new_ids, new_content, [f"i{j}" for j in range(n)], content[:n], "ridge",
                            cold_scale=1.0, min_count=1)
    assert out.item_ids.ids[-3:] == ["new0", "new1", "new2"] and len(out.item_ids) == n + 3
    assert list(out.item_source[-3:]) == ["content"] * 3 and out.stats["items_content_new"] == 3
    assert out.seen.shape == (len(out.user_ids), n + 3) and out.seen[:, n:].nnz == 0
    got, want = out.item_vectors[n:], y[n:]
    cos = np.sum(got * want, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert (cos > 0.95).all(), cos
    np.testing.assert_array_equal(out.item_vectors[:n], res.item_vectors)  # nothing else moves
    half = add_content_items(res, new_ids[:3], content[n:], [f"i{j}" for j in range(n)], content[:n], "ridge",
                             cold_scale=0.5, min_count=1)
    np.testing.assert_allclose(half.item_vectors[n:], 0.5 * out.item_vectors[n:], rtol=1e-5, atol=1e-6)


def test_a_content_item_is_served_in_similar_items_and_recommendations(tmp_path):
    from recsys.serving.bundle import IndexConfig, export_bundle
    from recsys.serving.retriever import Retriever

    res, y, content, n = _catalogue(seed=1)
    out = add_content_items(res, ["new0"], content[n:n + 1], [f"i{j}" for j in range(n)], content[:n], "ridge",
                            min_count=1)
    info = export_bundle(tmp_path, item_vectors=out.item_vectors, item_ids=out.item_ids, user_vectors=out.user_vectors,
                         user_ids=out.user_ids, seen=out.seen, item_source=out.item_source,
                         config=IndexConfig(backend="exact", n_queries=20, recall_k=10), foldin=out.spec)
    r = Retriever.load(info.path)
    assert r.item_source[-1] == "content"
    assert all(s is not None for s in r.similar_items("new0", k=5)[0])
    lists, _ = r.recommend(out.user_ids.ids, k=10)
    assert any("new0" in row for row in lists)  # the users it suits get it, as cold items after a full run
    r.close()


def test_nothing_to_add_returns_the_update_unchanged():
    res, _, content, n = _catalogue(seed=2)
    zero = np.zeros((1, content.shape[1]), np.float32)
    assert add_content_items(res, ["blank"], zero, [f"i{j}" for j in range(n)], content[:n], "ridge") is res


# -- through `recsys update --items` -----------------------------------------------------------


@pytest.mark.slow  # one `recsys run` with the TF-IDF content encoder, then an update: ~1 min on 2 shared cores
def test_update_with_items_maps_metadata_only_items_through_the_runs_content_map(tmp_path):
    import polars as pl

    from pipelines.cli import main
    from pipelines.update import run_update
    from recsys.serving.retriever import Retriever

    ml = Path(__file__).resolve().parents[1] / "data" / "movielens-latest-small"
    ratings = pl.read_csv(ml / "ratings.csv").filter(pl.col("userId") <= 100)
    movies = pl.read_csv(ml / "movies.csv")
    ratings.write_csv(tmp_path / "ratings.csv")
    unrated = movies.filter(~pl.col("movieId").is_in(ratings["movieId"].implode()))
    launch = unrated.filter(pl.col("genres").str.contains("Comedy"))["movieId"].head(5).to_list()
    movies.filter(~pl.col("movieId").is_in(launch)).write_csv(tmp_path / "movies_run.csv")
    movies.write_csv(tmp_path / "movies_all.csv")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    out = tmp_path / "out"
    assert main(["run", "--out", str(out), "--events", str(tmp_path / "ratings.csv"), "--items",
                 str(tmp_path / "movies_run.csv"), "--item-id-col", "movieId", "--item-text-cols", "title,genres",
                 "--user-col", "userId", "--item-col", "movieId", "--weight-col", "rating", "--time-col", "timestamp",
                 "--tracking-uri", uri, "--no-progress", "--set", "models.baselines=[]", "--set", 'models.train=["als"]',
                 "--set", "models.als.factors=16", "--set", "models.als.iterations=3", "--set", 'content.encoder="tfidf"',
                 "--set", 'content.mapper="ridge"', "--set", "index.n_queries=100", "--set", "align.churn_users=50"]) == 0
    before = Retriever.load(out)
    assert not set(map(str, launch)) & set(before.item_map.ids)
    cold_before = before.item_source == "content"  # the run's own cold items (catalogue items without ratings)
    (tmp_path / "new.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,1700000000\n")
    assert run_update(out, str(tmp_path / "new.csv"), uri, items=str(tmp_path / "movies_all.csv"), show_progress=False) == 0
    r = Retriever.load(out)
    ids = [str(m) for m in launch]
    rows = r.item_map.to_index(ids)
    assert (r.item_source[rows] == "content").all() and r.manifest["extra"]["update"]["items_content_new"] == 5
    vec = np.asarray(r._items)[rows]
    assert (np.linalg.norm(vec, axis=1) > 0).all()
    # as long as the run's own cold items, so exposed like them (the run's cold_scale applies)
    run_norm = np.median(np.linalg.norm(np.asarray(before._items)[cold_before], axis=1))
    assert 0.5 * run_norm < np.median(np.linalg.norm(vec, axis=1)) < 2 * run_norm
    for m in ids:
        assert all(s is not None for s in r.similar_items(m, k=5)[0])
    lists, _ = r.recommend(r.user_map.ids[:50], k=10, candidates=ids + ["1", "2", "3"])
    assert all(set(row) - {None} <= set(ids + ["1", "2", "3"]) for row in lists)
    assert any(set(row) & set(ids) for row in lists)
    before.close()
    r.close()

"""`recsys update`: exact fold-in of users and items, served by the Retriever, crash-safe, idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.data.idmap import IdMap
from recsys.lifelong import incremental_update
from recsys.models.foldin import FoldInSpec

ROOT = Path(__file__).resolve().parents[1]
ML_SMALL = ROOT / "data" / "movielens-latest-small"


def _toy(seed=0, n_users=20, n_items=30, d=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_users, d)).astype(np.float32)
    y = rng.normal(size=(n_items, d)).astype(np.float32)
    spec = FoldInSpec("als", weighting="linear", alpha=2.0, regularization=0.5,
                      gram=y.astype(np.float64).T @ y.astype(np.float64))
    users, items = IdMap([f"u{i}" for i in range(n_users)], "user"), IdMap([f"i{j}" for j in range(n_items)], "item")
    base = [(f"u{u}", f"i{j}", float(rng.integers(1, 6))) for u in range(n_users) for j in rng.choice(n_items, 5, replace=False)]
    return x, y, spec, users, items, base


def _direct_solve(fixed: np.ndarray, rows: np.ndarray, weights: np.ndarray, alpha: float, reg: float) -> np.ndarray:
    """argmin_v sum_r c_r (p_r - v . f_r)^2 + reg |v|^2 over every row of ``fixed`` (dense, by definition)."""
    conf = np.ones(len(fixed))
    pref = np.zeros(len(fixed))
    conf[rows], pref[rows] = alpha * weights, 1.0
    f = fixed.astype(np.float64)
    return np.linalg.solve(f.T @ (conf[:, None] * f) + reg * np.eye(f.shape[1]), f.T @ (conf * pref))


def _history(rows):
    return ([r[0] for r in rows], [r[1] for r in rows], np.asarray([r[2] for r in rows], np.float32))


def test_foldin_of_a_new_user_and_a_new_item_equals_a_direct_least_squares_solve():
    x, y, spec, users, items, base = _toy()
    new_user = [("newbie", "i1", 4.0), ("newbie", "i3", 1.0), ("newbie", "i7", 5.0)]
    new_item = [(f"u{u}", "fresh", float(w)) for u, w in zip(range(6), (5, 4, 3, 5, 2, 1))]
    res = incremental_update(x, users, y, items, spec, _history(base + new_user + new_item), ["newbie"], min_count=5,
                             sweeps=0)
    assert res.user_ids.ids[-1] == "newbie" and res.item_ids.ids[-1] == "fresh"
    want_u = _direct_solve(y, np.array([1, 3, 7]), np.array([4.0, 1.0, 5.0]), 2.0, 0.5)
    np.testing.assert_allclose(res.user_vectors[-1], want_u, rtol=1e-4, atol=1e-5)
    # the item against every user vector (the fixed users plus the folded-in newbie)
    want_i = _direct_solve(res.user_vectors, np.arange(6), np.array([5.0, 4, 3, 5, 2, 1]), 2.0, 0.5)
    np.testing.assert_allclose(res.item_vectors[-1], want_i, rtol=1e-4, atol=1e-5)
    assert res.item_source[-1] == "cf" and res.stats["items_new"] == 1


def test_unchanged_users_and_known_items_keep_their_vectors_bit_for_bit():
    x, y, spec, users, items, base = _toy()
    res = incremental_update(x, users, y, items, spec, _history(base + [("u3", "i2", 5.0)]), ["u3"], sweeps=0)
    keep = np.arange(len(x)) != 3
    np.testing.assert_array_equal(res.user_vectors[keep], x[keep])
    np.testing.assert_array_equal(res.item_vectors, y)
    assert not np.array_equal(res.user_vectors[3], x[3])  # the changed user was folded in again


def test_new_items_below_min_count_wait_and_content_items_get_a_cf_vector():
    x, y, spec, users, items, base = _toy()
    rare = [("u1", "rare", 5.0), ("u2", "rare", 5.0)]
    res = incremental_update(x, users, y, items, spec, _history(base + rare), ["u1"], min_count=3, sweeps=0)
    assert "rare" not in res.item_ids and res.stats["items_waiting"] == 1
    source = np.array(["cf"] * len(y), dtype=object)
    source[0] = "content"  # i0: mapped from metadata; the base history gives it users
    n_users_i0 = sum(1 for r in base if r[1] == "i0")
    res = incremental_update(x, users, y, items, spec, _history(base), [], min_count=max(1, n_users_i0),
                             item_source=source, sweeps=0)
    assert res.item_source[0] == "cf" and not np.array_equal(res.item_vectors[0], y[0])


@pytest.mark.parametrize("scheme", ["log", "binary", "bm25"])
def test_batched_user_foldin_equals_foldin_user(scheme):
    import scipy.sparse as sp

    from recsys.lifelong import fold_rows
    from recsys.models.foldin import FoldIn

    rng = np.random.default_rng(3)
    y = rng.normal(size=(40, 6)).astype(np.float32)
    extra = {"length_norm": rng.uniform(0.5, 1.5, 40).astype(np.float32)} if scheme == "bm25" else {}
    spec = FoldInSpec("als", weighting=scheme, alpha=3.0, regularization=0.7, gram=y.T.astype(np.float64) @ y, **extra)
    m = sp.random(12, 40, density=0.2, format="csr", random_state=4, data_rvs=lambda n: rng.integers(1, 6, n))
    m[5] = 0  # a user without history
    m.eliminate_zeros()
    fold = FoldIn(spec, y)
    rows = np.arange(12)
    got, has = fold_rows(fold, m, rows)
    assert not has[5] and has.sum() == 11
    for r in np.flatnonzero(has):
        row = m[r]
        np.testing.assert_allclose(got[r], fold.user(row.indices, row.data), rtol=1e-5, atol=1e-6)


def test_bpr_spec_adds_no_collaborative_items(caplog):
    x, y, _, users, items, base = _toy()
    spec = FoldInSpec("bpr", solver="lstsq")
    fresh = [(f"u{u}", "fresh", 1.0) for u in range(6)]
    res = incremental_update(np.c_[x, np.ones(len(x))], users, np.c_[y, np.zeros(len(y))], items, spec,
                             _history(base + fresh), ["u0"], min_count=5)
    assert "fresh" not in res.item_ids and "no item solve" in caplog.text


# -- the `recsys update` job -------------------------------------------------------------------


def _run_args(ws: Path, out: Path) -> list[str]:
    return ["run", "--out", str(out), "--events", str(ws / "ratings.csv"), "--user-col", "userId",
            "--item-col", "movieId", "--weight-col", "rating", "--time-col", "timestamp",
            "--tracking-uri", f"sqlite:///{ws / 'mlruns.db'}", "--no-progress",
            "--set", "models.baselines=[]", "--set", 'models.train=["als"]', "--set", "models.als.factors=16",
            "--set", "models.als.iterations=3", "--set", "content.enabled=false", "--set", "index.n_queries=100",
            "--set", "align.churn_users=50"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """One `recsys run` on the first 100 users of latest-small; tests copy its directory."""
    from pipelines.cli import main

    ws = tmp_path_factory.mktemp("update")
    ratings = pl.read_csv(ML_SMALL / "ratings.csv").filter(pl.col("userId") <= 100)
    ratings.write_csv(ws / "ratings.csv")
    # new events: a brand-new user with user 1's history, and a new movie 999999 that the users of a
    # known movie (rated by ~20 of them) rate exactly as they rated it: its least-squares vector must
    # land next to that movie's
    u1 = ratings.filter(pl.col("userId") == 1).with_columns(pl.lit(900001).alias("userId"))
    counts = ratings.group_by("movieId").len().with_columns((pl.col("len") - 20).abs().alias("gap")).sort("gap", "movieId")
    twin = int(counts["movieId"][0])
    clone = ratings.filter(pl.col("movieId") == twin).with_columns(pl.lit(999999).alias("movieId"))
    pl.concat([u1, clone.cast(u1.schema)]).write_csv(ws / "new.csv")
    (ws / "twin.txt").write_text(str(twin))
    assert main(_run_args(ws, ws / "out")) == 0
    return ws


def _copy(base_run: Path, tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(base_run / "out", out, symlinks=True)
    return out


def _update(ws: Path, out: Path) -> int:
    from pipelines.update import run_update

    return run_update(out, str(ws / "new.csv"), f"sqlite:///{ws / 'mlruns.db'}", min_count=5, show_progress=False)


@pytest.mark.slow  # one `recsys run` + updates with MLflow registration: ~1-2 min on 2 shared cores
def test_update_serves_new_users_from_their_history_and_new_items(base_run, tmp_path):
    from recsys.serving.retriever import Retriever

    out = _copy(base_run, tmp_path)
    before = Retriever.load(out).version
    assert _update(base_run, out) == 0
    r = Retriever.load(out)
    assert r.version != before and r.manifest["extra"]["update"]["users_new"] == 1
    hist = pl.read_csv(base_run / "new.csv").filter(pl.col("userId") == 900001)
    ids, _ = r.recommend("900001", k=10)
    want, _ = r.recommend_from_history(hist["movieId"].cast(str).to_list(), k=10, weights=hist["rating"].to_list())
    # the default full sweep leaves it one CG user step from the exact fold-in the Retriever computes (same YᵀY)
    assert len(set(ids) & set(want)) >= 8
    assert list(ids) != list(r.popular(k=10)[0])
    # the new movie: a vector next to its twin's, similar items both ways, ranked like the twin by its raters
    twin = (base_run / "twin.txt").read_text()
    y = np.asarray(r._items)
    a, b = y[r.item_map.to_index("999999")], y[r.item_map.to_index(twin)]
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.9
    assert "999999" in r.similar_items(twin, k=50)[0]  # dot-product neighbours favour long (popular) vectors
    assert all(s is not None for s in r.similar_items("999999", k=5)[0])
    raters = pl.read_csv(base_run / "new.csv").filter(pl.col("movieId") == 999999)["userId"].cast(str).to_list()
    lists, _ = r.recommend(raters, k=50, exclude_seen=False)
    with_twin = [row for row in lists if twin in row]
    assert with_twin and sum("999999" in row for row in with_twin) >= 0.8 * len(with_twin)
    rec = json.loads((out / "latest" / "manifest.json").read_text())["extra"]
    assert rec["update"]["items_new"] == 1 and rec["align"]["new_items"] == 1


@pytest.mark.slow
def test_a_crash_during_update_leaves_the_previous_bundle_serving_and_a_rerun_is_a_no_op(base_run, tmp_path, monkeypatch):
    from pipelines import steps
    from recsys.serving.retriever import Retriever

    out = _copy(base_run, tmp_path)
    before = Retriever.load(out).version

    def crash(*a, **k):
        raise RuntimeError("killed between export and publish")

    monkeypatch.setattr(steps, "promote_step", crash)
    with pytest.raises(RuntimeError, match="killed"):
        _update(base_run, out)
    assert Retriever.load(out).version == before
    monkeypatch.undo()
    assert _update(base_run, out) == 0
    after = Retriever.load(out).version
    assert after != before
    assert _update(base_run, out) == 0  # the same events again: nothing to do
    assert Retriever.load(out).version == after


def test_update_without_a_published_bundle_exits_2_naming_recsys_run(tmp_path, capfd):
    from pipelines.cli import main

    (tmp_path / "new.csv").write_text("userId,movieId,rating\n1,2,3\n")
    assert main(["update", "--out", str(tmp_path / "nothing"), "--events", str(tmp_path / "new.csv")]) == 2
    assert "recsys run" in capfd.readouterr().err


@pytest.mark.slow
def test_an_update_with_a_local_sweep_publishes_the_moved_gram_so_the_retriever_folds_in_what_it_stored(base_run, tmp_path):
    from pipelines.update import run_update
    from recsys.serving.retriever import Retriever

    out = _copy(base_run, tmp_path)
    assert run_update(out, str(base_run / "new.csv"), f"sqlite:///{base_run / 'mlruns.db'}", min_count=5, sweeps=1,
                      sweep_mode="local", show_progress=False) == 0
    r = Retriever.load(out)
    assert r.manifest["extra"]["update"]["sweeps"] == 1 and r.manifest["extra"]["update"]["items_swept"] > 0
    hist = pl.read_csv(base_run / "new.csv").filter(pl.col("userId") == 900001)
    ids, _ = r.recommend("900001", k=10)
    want, _ = r.recommend_from_history(hist["movieId"].cast(str).to_list(), k=10, weights=hist["rating"].to_list())
    assert list(ids) == list(want)


@pytest.mark.slow
def test_an_update_with_a_forced_delta_index_serves_the_new_item_from_the_delta_with_filters(base_run, tmp_path):
    from pipelines.update import run_update
    from recsys.serving.retriever import Retriever

    out = _copy(base_run, tmp_path)
    uri = f"sqlite:///{base_run / 'mlruns.db'}"
    assert run_update(out, str(base_run / "new.csv"), uri, min_count=5, sweeps=0, index="delta", show_progress=False) == 0
    r, ex = Retriever.load(out, backend="index"), Retriever.load(out, backend="exact")
    m = r.manifest
    assert m["index"]["backend"] == "delta" and m["index"]["n_base"] == r.n_items - 1
    assert m["extra"]["update"]["index_delta"] == 1 and type(r._index).__name__ == "DeltaIndex"
    twin = (base_run / "twin.txt").read_text()
    assert "999999" in r.similar_items(twin, k=50)[0]
    raters = pl.read_csv(base_run / "new.csv").filter(pl.col("movieId") == 999999)["userId"].cast(str).to_list()
    for kw in ({"exclude_seen": False}, {"exclude_seen": False, "candidates": ["999999", twin, "1", "2"]},
               {"exclude_seen": False, "exclude": ["999999"]}, {}):
        got, _ = r.recommend(raters, k=10, **kw)
        want, _ = ex.recommend(raters, k=10, **kw)
        overlap = [len((set(a) & set(b)) - {None}) / max(1, len(set(b) - {None})) for a, b in zip(got, want)]
        assert np.mean(overlap) >= 0.95, kw
        if "exclude" in kw or not kw:  # blocked, or seen by its raters
            assert not any("999999" in row for row in got)
    r.close()
    ex.close()
    # the default update (a full sweep) moves known items: auto rebuilds, a forced delta is refused
    (base_run / "more.csv").write_text("userId,movieId,rating,timestamp\n900001,1,4.0,1700000000\n")
    from recsys.errors import InputError

    with pytest.raises(InputError, match="moved"):
        run_update(out, str(base_run / "more.csv"), uri, index="delta", show_progress=False)
    assert run_update(out, str(base_run / "more.csv"), uri, show_progress=False) == 0
    assert Retriever.load(out).manifest["index"]["backend"] != "delta"

"""item2vec: trains on time-ordered sequences, saves/loads in a fresh process, serves like any vector family."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from conftest import random_split_dataset
from recsys.errors import ConfigError, InputError
from recsys.models import registry
from recsys.models.base import Recommender
from recsys.models.item2vec import Item2Vec, ItemSequences
from recsys.training import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(dim=16, epochs=10, seed=0, subsample=0.0, lr=0.05)  # tiny vocabularies: no subsampling


def _clustered_log(n_clusters: int = 3, per_cluster: int = 10, n_users: int = 150, per_user: int = 6,
                   seed: int = 0) -> pl.DataFrame:
    """Each user watches ``per_user`` items of one cluster, in random order: items co-occur only within a cluster."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        c = u % n_clusters
        items = rng.choice(per_cluster, size=per_user, replace=False) + c * per_cluster
        rows += [(u, int(i), float(t)) for t, i in enumerate(items)]
    return pl.DataFrame(rows, schema={"user_idx": pl.Int32, "item_idx": pl.Int32, "timestamp": pl.Float64}, orient="row")


def _matrix(df: pl.DataFrame, shape: tuple[int, int]) -> sp.csr_matrix:
    return sp.csr_matrix((np.ones(df.height, np.float32), (df["user_idx"].to_numpy(), df["item_idx"].to_numpy())), shape=shape)


def test_similar_items_stay_in_their_cluster():
    df = _clustered_log()
    m = _matrix(df, (150, 30))
    model = Item2Vec(**FAST).fit(m, sequences=ItemSequences.from_frame(df, 150))
    same = []
    for item in range(30):
        ids, _ = model.similar_items(item, k=5)
        assert item not in ids, "an item is its own neighbour"
        same.append(np.mean(ids // 10 == item // 10))
    assert np.mean(same) >= 0.95, f"only {np.mean(same):.2f} of the neighbours share the cluster"


def test_time_order_changes_neighbours_with_window_one():
    """Same users, same items (identical matrices); only the order of each history differs.

    Skip-gram makes items similar when they share contexts: with window=1 the items two
    steps before and after an item (both neighbours of the item in between) are its closest.
    """
    n_users, n_items = 60, 24
    rng = np.random.default_rng(1)
    chains = [rng.permutation(n_items), rng.permutation(n_items)]
    m = sp.csr_matrix(np.ones((n_users, n_items), np.float32))
    neighbours = []
    for chain in chains:
        seq = ItemSequences.from_lists([chain] * n_users)
        model = Item2Vec(**{**FAST, "window": 1}).fit(m, sequences=seq)
        pos = np.argsort(chain)
        nb = {int(i): set(model.similar_items(int(i), k=2)[0].tolist()) for i in chain[2:-2]}
        hits = np.mean([nb[i] == {int(chain[pos[i] - 2]), int(chain[pos[i] + 2])} for i in nb])
        assert hits >= 0.8, f"with window=1 the top-2 neighbours are the items 2 steps away for only {hits:.2f}"
        neighbours.append(nb)
    common = set(neighbours[0]) & set(neighbours[1])
    assert np.mean([neighbours[0][i] == neighbours[1][i] for i in common]) < 0.2, "order did not matter"


def test_sequences_follow_timestamps_and_fall_back_to_item_order():
    df = pl.DataFrame({"user_idx": [0, 0, 0, 1, 1, 1], "item_idx": [5, 2, 9, 3, 3, 1],
                       "timestamp": [30, 10, 20, 1, 2, 3]})
    seq = ItemSequences.from_frame(df, n_users=3)
    assert seq.user(0).tolist() == [2, 9, 5]
    assert seq.user(1).tolist() == [3, 1], "a repeat in a row is collapsed"
    assert seq.user(2).tolist() == []
    no_time = ItemSequences.from_frame(df.drop("timestamp"), n_users=3)
    assert no_time.user(0).tolist() == [2, 5, 9]


def test_bad_sequences_are_refused():
    m = sp.csr_matrix(np.ones((3, 4), np.float32))
    with pytest.raises(InputError, match="cover 2 users"):
        Item2Vec(**FAST).fit(m, sequences=[[0, 1], [2, 3]])
    with pytest.raises(InputError, match="out of range"):
        Item2Vec(**FAST).fit(m, sequences=[[0, 7], [1, 2], [2, 3]])
    with pytest.raises(InputError, match="no training pairs"):
        Item2Vec(**FAST).fit(sp.csr_matrix(np.eye(3, dtype=np.float32)))


def test_histories_longer_than_gensims_sentence_limit_are_trained_whole():
    """gensim truncates sentences at 10,000 tokens; the tail of a longer history must still train."""
    chain = np.r_[np.tile(np.arange(40), 250), np.tile(np.arange(40, 50), 20)]  # items 40..49 only after 10,000
    m = sp.csr_matrix(np.ones((1, 50), np.float32))
    model = Item2Vec(**{**FAST, "window": 1}).fit(m, sequences=[chain])
    assert model.item_counts_.sum() == len(chain)
    hits = [set(model.similar_items(i, k=2)[0].tolist()) == {40 + (i - 38) % 10, 40 + (i - 42) % 10} for i in range(40, 50)]
    assert np.mean(hits) >= 0.8, "the tail items (2 steps apart share a context) were not trained"


@pytest.mark.parametrize("params, message", [
    ({"window": 0}, "window must be an integer >= 1"),
    ({"dim": 2.5}, "dim"),
    ({"pooling": "max"}, "pooling must be one of"),
    ({"lr": -1.0}, "lr must be"),
    ({"windw": 3}, "did you mean 'window'"),
])
def test_bad_params_exit_with_a_clear_error(params, message):
    with pytest.raises(ConfigError, match=message):
        registry.get_family("item2vec").validate_params(params)


def test_bad_params_through_the_cli_exit_2(tmp_path: Path, capsys):
    from pipelines.cli import main

    code = main(["run", "--config", str(ROOT / "configs" / "default.toml"), "--out", str(tmp_path / "out"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--set", 'models.train=["item2vec"]',
                 "--set", 'models.publish="item2vec"', "--set", "models.item2vec.window=0"])
    assert code == 2
    assert "window" in capsys.readouterr().err
    assert not (tmp_path / "out" / "dataset").exists()


def test_user_vector_is_the_pooled_history_and_fold_in_reproduces_it():
    df = _clustered_log()
    m = _matrix(df, (150, 30))
    model = Item2Vec(**FAST).fit(m, sequences=ItemSequences.from_frame(df, 150))
    hist = m[7].indices
    np.testing.assert_allclose(model.user_factors_[7], model.item_factors_[hist].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.recalculate_user(hist), model.user_factors_[7], rtol=1e-5, atol=1e-6)
    emb, bias = model.item_factors_[:, :16], model.item_factors_[:, 16]
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5), "normalize=True gives unit embeddings"
    np.testing.assert_allclose(bias, model.popularity_bias * np.log1p(model.item_counts_), rtol=1e-6)
    assert model.foldin_spec().method == "mean"


def test_trains_saves_and_loads_in_a_fresh_process_with_the_same_recommendations(tmp_path: Path):
    df = _clustered_log()
    m = _matrix(df, (150, 30))
    model = Item2Vec(**FAST).fit(m, sequences=ItemSequences.from_frame(df, 150))
    path = tmp_path / "item2vec.npz"
    model.save(path)
    users = [0, 1, 2, 77]
    ids, _ = model.recommend(users, k=5)
    code = ("import json, sys; from recsys.models.base import Recommender; "
            f"m = Recommender.load({str(path)!r}); ids, _ = m.recommend({users}, k=5); "
            "s, _ = m.similar_items(3, k=4); print(json.dumps([type(m).__name__, ids.tolist(), s.tolist()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    name, loaded_ids, similar = json.loads(out.stdout.strip().splitlines()[-1])
    assert name == "Item2Vec"
    assert loaded_ids == ids.tolist()
    assert similar == model.similar_items(3, k=4)[0].tolist()
    again = Recommender.load(path)
    np.testing.assert_array_equal(again.item_counts_, model.item_counts_)
    assert again.get_params() == model.get_params()


def test_same_seed_same_vectors():
    df = _clustered_log()
    m = _matrix(df, (150, 30))
    seq = ItemSequences.from_frame(df, 150)
    a = Item2Vec(**FAST).fit(m, sequences=seq).item_factors_
    b = Item2Vec(**FAST).fit(m, sequences=seq).item_factors_
    np.testing.assert_array_equal(a, b)


def test_protocol_selects_on_valid_and_refits_on_train_plus_valid():
    df = _clustered_log(per_cluster=15, n_users=240, per_user=10).rename({"user_idx": "user", "item_idx": "item"}).with_columns(weight=pl.lit(1.0))
    ds = random_split_dataset(df.select("user", "item", "weight", "timestamp"), seed=0)
    res = train_and_evaluate(ds, "item2vec", dict(FAST), space={"window": [1, 3], "popularity_bias": [0.0, 0.3]}, tuning={"seed": 0},
                             show_progress=False, ks=(10,))
    assert len(res.trials) == 4 and res.params["window"] in (1, 3)
    assert res.seen.nnz == ds.matrix("train", "valid").nnz, "the tested model is refitted on train + valid"
    assert res.metrics_test["ndcg@10"] > 0.2, res.metrics_test  # the valid item is from the user's cluster
    assert registry.get_family("item2vec").refit_on_all is False


def test_with_scoring_equals_a_fresh_fit_with_those_parameters():
    df = _clustered_log()
    m = _matrix(df, (150, 30))
    seq = ItemSequences.from_frame(df, 150)
    base = Item2Vec(**FAST).fit(m, sequences=seq)
    fresh = Item2Vec(**{**FAST, "popularity_bias": 0.0, "normalize": False}).fit(m, sequences=seq)
    cheap = base.with_scoring(popularity_bias=0.0, normalize=False)
    np.testing.assert_array_equal(cheap.item_factors_, fresh.item_factors_)
    np.testing.assert_array_equal(cheap.user_factors_, fresh.user_factors_)
    with pytest.raises(ConfigError, match="need a new fit"):
        base.with_scoring(window=2)


def test_an_item_without_training_pairs_has_no_neighbours_and_a_zero_vector():
    df = _clustered_log()
    m = _matrix(df, (150, 31))  # item 30: in the catalogue, never in a sequence (a cold item)
    model = Item2Vec(**FAST).fit(m, sequences=ItemSequences.from_frame(df, 150))
    ids, scores = model.similar_items(30, k=3)
    assert (ids == -1).all() and np.isneginf(scores).all()
    assert not np.any(model.item_factors_[30, :16])
    assert 30 not in model.similar_items(0, k=29)[0]


def test_a_bundle_of_item2vec_vectors_serves_the_models_recommendations_in_a_fresh_process(tmp_path: Path):
    """What `recsys run --set models.publish='"item2vec"'` exports: the index answers like the model."""
    from recsys.serving.bundle import IndexConfig, export_bundle

    df = _clustered_log()
    m = _matrix(df, (150, 30))
    model = Item2Vec(**FAST).fit(m, sequences=ItemSequences.from_frame(df, 150))
    info = export_bundle(tmp_path, item_vectors=model.item_factors_, item_ids=[str(i) for i in range(30)],
                         user_vectors=model.user_factors_, user_ids=[str(u) for u in range(150)], seen=model.user_items_,
                         similarity=model.similarity, foldin=model.foldin_spec(), config=IndexConfig(n_trees=5, n_jobs=1))
    hist = m[7].indices
    code = ("import json; from recsys.serving.retriever import Retriever; "
            f"r = Retriever.load({str(info.path)!r}); a, _ = r.recommend('7', k=5); "
            f"b, _ = r.recommend_from_history({[str(i) for i in hist]}, k=5); print(json.dumps([a.tolist(), b.tolist()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    served, folded = json.loads(out.stdout.strip().splitlines()[-1])
    expected = [str(i) for i in model.recommend(7, k=5)[0]]
    assert served == expected
    assert folded == expected, "the bundle's mean fold-in of user 7's history is user 7's trained vector"

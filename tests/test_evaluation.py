"""Evaluation metrics against hand computations, a slow reference and a fake model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.errors import InputError
from recsys.evaluation import (
    activity_slices,
    evaluate,
    evaluate_slices,
    format_table,
    item_popularity,
    ranking_metrics,
    sample_users,
)
from recsys.models.base import Recommender

L2 = math.log2


def _csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(c), np.float32), (r, c)), shape=(len(rows), n_items))


# --- hand-computed example ------------------------------------------------------------
# user 0: relevant {1,3,5}, list [1,2,3,4]   -> hits at ranks 1 and 3
# user 1: relevant {7},     list [0,7,-1,-1] -> hit at rank 2, two padding slots
# user 2: no relevant items                  -> skipped (its list must not count anywhere)
# user 3: relevant {9},     list [0,1,2,3]   -> no hit
TEST = _csr([[1, 3, 5], [7], [], [9]], 10)
REC = np.array([[1, 2, 3, 4], [0, 7, -1, -1], [8, 9, 5, 6], [0, 1, 2, 3]])
POP = np.arange(10) / 10


@pytest.fixture(scope="module")
def hand() -> dict[str, float]:
    return ranking_metrics(REC, TEST, ks=(2, 4), item_popularity=POP)


def test_counts_skip_users_without_relevant_items(hand):
    assert hand["n_users"] == 3
    assert hand["n_users_skipped"] == 1


def test_precision_counts_padding_as_misses(hand):
    assert hand["precision@2"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert hand["precision@4"] == pytest.approx((2 / 4 + 1 / 4 + 0) / 3)


def test_recall_divides_by_all_relevant_items(hand):
    assert hand["recall@2"] == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert hand["recall@4"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_ndcg_binary_gains_log2_discounts_ideal_over_min_k_r(hand):
    u0_2 = 1.0 / (1 + 1 / L2(3))  # ideal: min(2, 3) = 2 hits
    u0_4 = (1 + 1 / L2(4)) / (1 + 1 / L2(3) + 1 / L2(4))  # ideal: 3 hits
    u1 = (1 / L2(3)) / 1.0  # ideal: 1 hit
    assert hand["ndcg@2"] == pytest.approx((u0_2 + u1) / 3)
    assert hand["ndcg@4"] == pytest.approx((u0_4 + u1) / 3)


def test_map_sums_precision_at_hits_over_min_k_r(hand):
    assert hand["map@2"] == pytest.approx((1 / 2 + (1 / 2) / 1) / 3)
    assert hand["map@4"] == pytest.approx(((1 + 2 / 3) / 3 + (1 / 2) / 1) / 3)


def test_hit_rate_and_mrr(hand):
    assert hand["hit_rate@2"] == pytest.approx(2 / 3)
    assert hand["hit_rate@4"] == pytest.approx(2 / 3)
    assert hand["mrr"] == pytest.approx((1 + 1 / 2 + 0) / 3)


def test_coverage_counts_distinct_items_of_evaluated_users_only(hand):
    # user 2 (skipped) recommended 8 and 9: they must not count
    assert hand["coverage@2"] == pytest.approx(len({1, 2, 0, 7}) / 10)
    assert hand["coverage@4"] == pytest.approx(len({0, 1, 2, 3, 4, 7}) / 10)


def test_popularity_is_mean_over_non_padding_slots(hand):
    assert hand["mean_popularity@2"] == pytest.approx((1 + 2 + 0 + 7 + 0 + 1) / 6 / 10)
    assert hand["mean_popularity@4"] == pytest.approx((1 + 2 + 3 + 4 + 0 + 7 + 0 + 1 + 2 + 3) / 10 / 10)


def test_popularity_only_reported_when_given():
    res = ranking_metrics(REC, TEST, ks=(2,))
    assert not any(k.startswith("mean_popularity") for k in res)
    assert set(res) >= {"precision@2", "recall@2", "ndcg@2", "map@2", "hit_rate@2", "coverage@2", "mrr"}


def test_mrr_only_looks_within_max_k():
    test = _csr([[3]], 5)
    res = ranking_metrics(np.array([[0, 1, 3]]), test, ks=(2,))
    assert res["mrr"] == 0.0  # the hit at rank 3 is beyond max(ks) = 2


def test_perfect_lists_score_one_even_when_more_relevant_than_k():
    test = _csr([[0, 1, 2, 3, 4], [5]], 6)
    rec = np.array([[4, 3, 2], [5, -1, -1]])
    res = ranking_metrics(rec, test, ks=(3,))
    assert res["ndcg@3"] == pytest.approx(1.0)
    assert res["map@3"] == pytest.approx(1.0)
    assert res["recall@3"] == pytest.approx((3 / 5 + 1) / 2)  # recall cannot reach 1 when R > K


def test_explicit_zero_entries_are_relevant():
    test = sp.csr_matrix((np.array([0.0], np.float32), (np.array([0]), np.array([2]))), shape=(1, 4))
    assert test.nnz == 1
    assert ranking_metrics(np.array([[2]]), test, ks=(1,))["precision@1"] == 1.0


def test_duplicate_test_entries_count_once():
    test = sp.csr_matrix((np.ones(3, np.float32), np.array([1, 1, 2]), np.array([0, 3])), shape=(1, 4))
    assert not test.has_canonical_format
    assert ranking_metrics(np.array([[1, 0]]), test, ks=(2,))["recall@2"] == pytest.approx(1 / 2)


@pytest.mark.parametrize(
    "rec, msg",
    [
        (np.array([[1, 2]]), "max\\(ks\\)"),  # too few columns for k=4
        (np.array([[1, 1, 2, 3]]), "repeats an item"),
        (np.array([[1, 2, 3, 99]]), "outside"),
        (np.array([[1, 2, 3, -2]]), "outside"),
        (np.array([[1.0, 2, 3, 4]]), "integer"),
        (np.array([1, 2, 3, 4]), "2-D"),
    ],
)
def test_bad_rec_ids_raise_input_error(rec, msg):
    with pytest.raises(InputError, match=msg):
        ranking_metrics(rec, _csr([[1]], 10), ks=(4,))


def test_bad_ks_and_misaligned_rows_raise():
    with pytest.raises(InputError, match="ks"):
        ranking_metrics(REC, TEST, ks=(0,))
    with pytest.raises(InputError, match="ks"):
        ranking_metrics(REC, TEST, ks=())
    with pytest.raises(InputError, match="aligned"):
        ranking_metrics(REC[:2], TEST, ks=(2,))
    with pytest.raises(InputError, match="sparse"):
        ranking_metrics(REC, TEST.toarray(), ks=(2,))
    with pytest.raises(InputError, match="item_popularity"):
        ranking_metrics(REC, TEST, ks=(2,), item_popularity=np.ones(3))


# --- slow reference on random data ------------------------------------------------------
def _reference(rec: np.ndarray, test: sp.csr_matrix, ks, pop) -> dict[str, float]:
    """Textbook per-user loops; deliberately independent of the vectorised code."""
    out: dict[str, list[float]] = {}
    covered = {k: set() for k in ks}
    pop_vals = {k: [] for k in ks}
    for u in range(test.shape[0]):
        rel = set(test[u].indices.tolist())
        if not rel:
            continue
        lst = [int(i) for i in rec[u]]
        for k in ks:
            top = lst[:k]
            hits = [1 if i in rel else 0 for i in top]
            h = sum(hits)
            dcg = sum(g / math.log2(r + 2) for r, g in enumerate(hits))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(rel))))
            ap, n_hit = 0.0, 0
            for r, g in enumerate(hits):
                if g:
                    n_hit += 1
                    ap += n_hit / (r + 1)
            vals = {
                "precision": h / k,
                "recall": h / len(rel),
                "ndcg": dcg / idcg,
                "map": ap / min(k, len(rel)),
                "hit_rate": float(h > 0),
            }
            for m, v in vals.items():
                out.setdefault(f"{m}@{k}", []).append(v)
            covered[k].update(i for i in top if i >= 0)
            pop_vals[k].extend(pop[i] for i in top if i >= 0)
        first = next((r for r, i in enumerate(lst[: max(ks)]) if i in rel), None)
        out.setdefault("mrr", []).append(0.0 if first is None else 1 / (first + 1))
    res = {k: float(np.mean(v)) for k, v in out.items()}
    for k in ks:
        res[f"coverage@{k}"] = len(covered[k]) / test.shape[1]
        res[f"mean_popularity@{k}"] = float(np.mean(pop_vals[k]))
    return res


@pytest.mark.parametrize("mask_cells", [1 << 20, 1 << 13, 1])  # dense mask in 1 or many blocks; sorted keys
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_slow_reference_on_random_data(seed, mask_cells, monkeypatch):
    import recsys.metrics

    monkeypatch.setattr(recsys.metrics, "_MASK_CELLS", mask_cells)
    rng = np.random.default_rng(seed)
    n_users, n_items, kmax = 300, 60, 20
    test = sp.random(n_users, n_items, density=0.08, format="csr", random_state=seed, dtype=np.float32)
    rec = np.stack([rng.permutation(n_items)[:kmax] for _ in range(n_users)])
    # put up to 5 relevant items first in every third list, and pad some rows with -1
    dense = test.toarray() > 0
    for u in range(0, n_users, 3):
        rel = np.flatnonzero(dense[u])
        rest = [i for i in rng.permutation(n_items) if i not in rel[:5]]
        rec[u] = np.r_[rel[:5], rest][:kmax]
    rec[::7, 15:] = -1
    pop = rng.random(n_items)
    ks = (1, 5, 10, 20)
    got = ranking_metrics(rec, test, ks=ks, item_popularity=pop)
    want = _reference(rec, test, ks, pop)
    assert got["n_users"] == int((np.diff(test.indptr) > 0).sum())
    for key, v in want.items():
        assert got[key] == pytest.approx(v, rel=1e-9, abs=1e-12), key


# --- evaluate() with a model -------------------------------------------------------------
class FixedScores(Recommender):
    """Scores every user with the same fixed vector (ties impossible)."""

    def __init__(self, order: tuple[int, ...] = ()) -> None:
        self.order = order

    def _fit(self, user_items, **kwargs):
        n = user_items.shape[1]
        s = np.zeros(n, np.float32)
        s[list(self.order)] = np.arange(len(self.order), 0, -1, dtype=np.float32) + n
        s[s == 0] = -np.arange(1, int((s == 0).sum()) + 1, dtype=np.float32) / (n + 1)
        self.s_ = s

    def _score(self, user_indices):
        return np.tile(self.s_, (len(user_indices), 1))


class Oracle(Recommender):
    """Knows the test set: relevant items score 1, others 0."""

    def __init__(self) -> None:
        pass

    def _fit(self, user_items, test=None):
        self.test_ = test.toarray().astype(np.float32)

    def _score(self, user_indices):
        return self.test_[user_indices]


def test_evaluate_excludes_train_items():
    train = _csr([[0], [0], [1]], 5)
    test = _csr([[1], [2], [0]], 5)
    model = FixedScores(order=(0, 1, 2, 3, 4)).fit(train)
    res = evaluate(model, train, test, ks=(1,))
    # with train items removed each user's first item is: user0 -> 1 (hit), user1 -> 1 (miss),
    # user2 -> 0 (hit)
    assert res["precision@1"] == pytest.approx(2 / 3)
    no_excl = evaluate(model, None, test, ks=(1,))
    assert no_excl["precision@1"] == pytest.approx(1 / 3)  # everybody gets item 0


def test_evaluate_oracle_scores_one():
    rng = np.random.default_rng(0)
    test = sp.random(50, 30, density=0.1, format="csr", random_state=1, dtype=np.float32)
    train = sp.csr_matrix(test.shape, dtype=np.float32)
    model = Oracle().fit(train + sp.random(50, 30, density=0.01, format="csr", random_state=2, dtype=np.float32), test=test)
    res = evaluate(model, None, test, ks=(5, 10), batch_size=int(rng.integers(3, 9)))
    assert res["ndcg@10"] == pytest.approx(1.0)
    assert res["map@10"] == pytest.approx(1.0)
    assert res["hit_rate@5"] == pytest.approx(1.0)
    assert res["mrr"] == pytest.approx(1.0)


def test_evaluate_matches_ranking_metrics_and_is_batch_invariant():
    rng = np.random.default_rng(3)
    train = sp.random(120, 40, density=0.1, format="csr", random_state=3, dtype=np.float32)
    test = sp.random(120, 40, density=0.05, format="csr", random_state=4, dtype=np.float32)
    test = test - test.multiply(train > 0)  # no overlap
    test.eliminate_zeros()
    model = FixedScores(order=tuple(rng.permutation(40)[:15].tolist())).fit(train)
    pop = item_popularity(train)
    a = evaluate(model, train, test, ks=(5, 10), item_popularity=pop, batch_size=7)
    b = evaluate(model, train, test, ks=(5, 10), item_popularity=pop, batch_size=1000)
    ids, _ = model.recommend(np.arange(120), k=10, user_items=train)
    c = ranking_metrics(ids, test, ks=(5, 10), item_popularity=pop)
    assert a == pytest.approx(b)
    assert a == pytest.approx(c)
    assert a["n_users"] + a["n_users_skipped"] == 120


def test_evaluate_users_subset_and_skips():
    train = _csr([[0], [0], [1], [2]], 5)
    test = _csr([[1], [], [0], [3]], 5)
    model = FixedScores(order=(0, 1, 2, 3, 4)).fit(train)
    res = evaluate(model, train, test, ks=(1,), users=np.array([0, 1, 2]))
    assert res["n_users"] == 2 and res["n_users_skipped"] == 1
    assert res["precision@1"] == pytest.approx(1.0)


def test_evaluate_candidates_restrict_recommendations_and_coverage():
    train = _csr([[0], [1]], 6)
    test = _csr([[4], [5]], 6)
    model = FixedScores(order=(0, 1, 2, 3, 4, 5)).fit(train)
    res = evaluate(model, train, test, ks=(1, 2), candidates=np.array([4, 5]))
    assert res["precision@1"] == pytest.approx(1 / 2)  # both users get 4 first
    assert res["recall@2"] == pytest.approx(1.0)
    assert res["coverage@1"] == pytest.approx(1 / 2)  # 1 of 2 candidates


def test_evaluate_bad_inputs():
    train = _csr([[0], [1]], 6)
    model = FixedScores().fit(train)
    with pytest.raises(InputError, match="item columns"):
        evaluate(model, train, _csr([[1], [2]], 7), ks=(1,))
    with pytest.raises(InputError, match="users"):
        evaluate(model, train, _csr([[1], [2]], 6), ks=(1,), users=np.array([5]))
    with pytest.raises(InputError, match="batch_size"):
        evaluate(model, train, _csr([[1], [2]], 6), ks=(1,), batch_size=0)


def test_item_popularity_fraction_of_users():
    train = _csr([[0, 1], [0], [0, 2], []], 4)
    np.testing.assert_allclose(item_popularity(train), [3 / 4, 1 / 4, 1 / 4, 0])
    np.testing.assert_allclose(item_popularity(train, normalize=False), [3, 1, 1, 0])


def test_format_table_rows_are_models_and_missing_is_dash():
    table = format_table(
        {"MostPopular": {"ndcg@10": 0.1234567, "n_users": 5}, "ItemKNN": {"ndcg@10": 0.2}},
        metrics=("ndcg@10", "mrr", "n_users"),
    )
    lines = table.splitlines()
    assert lines[0].split() == ["model", "ndcg@10", "mrr", "n_users"]
    assert lines[2].split() == ["MostPopular", "0.1235", "-", "5"]
    assert lines[3].split() == ["ItemKNN", "0.2000", "-", "-"]


def test_format_table_default_columns_include_popularity_and_user_count():
    res = {"m": {"ndcg@10": 0.5, "mean_popularity@10": 0.25, "n_users": 3}}
    header = format_table(res).splitlines()[0].split()
    assert header[0] == "model"
    assert {"ndcg@10", "recall@10", "mrr", "coverage@10", "mean_popularity@10", "n_users"} <= set(header)


def test_evaluate_reports_train_popularity_by_default():
    train = _csr([[0, 1], [0], [0, 2], [3]], 5)
    test = _csr([[4], [4], [4], [4]], 5)
    model = FixedScores(order=(0, 1, 2, 3, 4)).fit(train)
    res = evaluate(model, train, test, ks=(1,))
    # first unseen item: user0 -> 2, user1 -> 1, user2 -> 1, user3 -> 0 ; popularity = share of 4 users
    assert res["mean_popularity@1"] == pytest.approx((1 / 4 + 1 / 4 + 1 / 4 + 3 / 4) / 4)
    assert "mean_popularity@1" not in evaluate(model, None, test, ks=(1,))


def test_evaluate_warns_when_test_overlaps_train(caplog):
    train = _csr([[0, 1], [2]], 4)
    test = _csr([[1, 3], [3]], 4)
    model = FixedScores(order=(0, 1, 2, 3)).fit(train)
    with caplog.at_level("WARNING", logger="recsys.evaluation"):
        evaluate(model, train, test, ks=(1,))
    assert "1 test interactions are also in train" in caplog.text


# --- slices ---------------------------------------------------------------------------------
def test_evaluate_slices_equal_evaluate_on_each_user_subset():
    rng = np.random.default_rng(5)
    train = sp.random(80, 30, density=0.15, format="csr", random_state=5, dtype=np.float32)
    test = sp.random(80, 30, density=0.08, format="csr", random_state=6, dtype=np.float32)
    test = test - test.multiply(train > 0)
    test.eliminate_zeros()
    model = FixedScores(order=tuple(rng.permutation(30)[:12].tolist())).fit(train)
    slices = {"all": np.arange(80), "odd": np.arange(1, 80, 2), "few": np.array([3, 3, 7, 50])}
    got = evaluate_slices(model, train, test, slices, ks=(5, 10), batch_size=9)
    assert list(got) == ["all", "odd", "few"]
    for name, users in slices.items():
        assert got[name] == pytest.approx(evaluate(model, train, test, ks=(5, 10), users=np.unique(users))), name


def test_evaluate_slices_counts_skipped_users_per_slice():
    train = _csr([[0], [0], [1]], 4)
    test = _csr([[1], [], [2]], 4)
    model = FixedScores(order=(0, 1, 2, 3)).fit(train)
    got = evaluate_slices(model, train, test, {"a": np.array([0, 1]), "b": np.array([1])}, ks=(1,))
    assert (got["a"]["n_users"], got["a"]["n_users_skipped"]) == (1, 1)
    assert (got["b"]["n_users"], got["b"]["n_users_skipped"]) == (0, 1)
    with pytest.raises(InputError, match="slices"):
        evaluate_slices(model, train, test, {}, ks=(1,))
    with pytest.raises(InputError, match="slice 'x'"):
        evaluate_slices(model, train, test, {"x": np.array([9])}, ks=(1,))


def test_activity_slices_split_users_by_training_count():
    train = _csr([[0], [0, 1, 2], [], [0, 1, 2, 3, 4]], 5)
    s = activity_slices(train, thresholds=(3,))
    assert list(s) == ["all", "train<3", "train>=3"]
    np.testing.assert_array_equal(s["train<3"], [0, 2])
    np.testing.assert_array_equal(s["train>=3"], [1, 3])
    s2 = activity_slices(train, thresholds=(5, 2))
    assert list(s2) == ["all", "train<2", "2<=train<5", "train>=5"]
    np.testing.assert_array_equal(s2["2<=train<5"], [1])
    with pytest.raises(InputError, match="thresholds"):
        activity_slices(train, thresholds=(0,))


# --- user samples and standard errors -------------------------------------------------------
def _random_split(n_users: int, n_items: int, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    train = sp.random(n_users, n_items, density=0.1, format="csr", random_state=seed, dtype=np.float32)
    test = sp.random(n_users, n_items, density=0.04, format="csr", random_state=seed + 1, dtype=np.float32)
    test = test - test.multiply(train > 0)
    test.eliminate_zeros()
    return train, test


def test_sample_users_is_seeded_and_only_draws_users_with_test_items():
    _, test = _random_split(500, 40, 0)
    eligible = np.flatnonzero(np.diff(test.indptr) > 0)
    a, b, c = sample_users(test, 100, seed=1), sample_users(test, 100, seed=1), sample_users(test, 100, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(a) == 100 and len(np.unique(a)) == 100 and np.all(np.diff(a) > 0)
    assert np.isin(a, eligible).all()
    np.testing.assert_array_equal(sample_users(test, 0, seed=1), eligible)  # 0 = every user
    np.testing.assert_array_equal(sample_users(test, 10**6, seed=1), eligible)


@pytest.mark.parametrize(("n", "seed"), [(-1, 0), (2.5, 0), (True, 0), (10, None), (10, "a")])
def test_sample_users_refuses_a_bad_size_or_seed(n, seed):
    _, test = _random_split(50, 20, 0)
    with pytest.raises(InputError, match="sample"):
        sample_users(test, n, seed)


def test_sampled_evaluation_equals_full_evaluation_when_the_sample_covers_every_user():
    train, test = _random_split(300, 50, 3)
    model = FixedScores(order=tuple(np.random.default_rng(3).permutation(50)[:20].tolist())).fit(train)
    full = evaluate(model, train, test, ks=(5, 10), batch_size=37)
    covered = evaluate(model, train, test, ks=(5, 10), users=sample_users(test, 0, seed=9), batch_size=37)
    assert full["n_users_skipped"] > 0 and covered["n_users_skipped"] == 0  # only the skip count differs
    assert {k: v for k, v in full.items() if k != "n_users_skipped"} == {
        k: v for k, v in covered.items() if k != "n_users_skipped"}


def test_standard_error_is_the_std_of_per_user_values_over_sqrt_n():
    train, test = _random_split(200, 30, 4)
    model = FixedScores(order=tuple(range(0, 30, 2))).fit(train)
    res = evaluate(model, train, test, ks=(5,))
    ids, _ = model.recommend(np.arange(200), k=5, user_items=train)
    per_user = {key: [] for key in ("ndcg@5", "hit_rate@5", "mrr")}
    for u in np.flatnonzero(np.diff(test.indptr)):
        one = ranking_metrics(ids[u : u + 1], test[u], ks=(5,))
        for key in per_user:
            per_user[key].append(one[key])
    for key, vals in per_user.items():
        want = np.std(vals, ddof=1) / np.sqrt(len(vals))
        assert res[f"{key}_se"] == pytest.approx(want, rel=1e-9), key
    assert "coverage@5_se" not in res and "mean_popularity@5_se" not in res


def test_standard_error_is_nan_for_a_single_user():
    res = ranking_metrics(np.array([[0, 1]]), _csr([[1]], 3), ks=(2,))
    assert math.isnan(res["ndcg@2_se"]) and res["n_users"] == 1


def test_a_sampled_metric_is_within_three_standard_errors_of_the_full_one():
    train, test = _random_split(3000, 60, 7)
    model = FixedScores(order=tuple(range(0, 60, 3))).fit(train)
    full = evaluate(model, train, test, ks=(10,))
    part = evaluate(model, train, test, ks=(10,), users=sample_users(test, 300, seed=0))
    assert part["n_users"] == 300
    for key in ("ndcg@10", "recall@10", "mrr"):
        assert abs(part[key] - full[key]) < 3 * part[f"{key}_se"], key


# --- the training protocol evaluates on the configured user samples ------------------------
def test_protocol_validates_on_a_fixed_user_sample_and_tests_on_every_user(ml_small):
    from recsys.training import train_and_evaluate

    a = train_and_evaluate(ml_small, "als", {"factors": 8, "iterations": 4, "random_state": 0},
                           tuning={"eval_every": 2}, show_progress=False, valid_users=100, sample_seed=3)
    n_test = int((np.diff(ml_small.matrix("test").indptr) > 0).sum())
    assert [h["n_users"] for h in a.history] == [100, 100]  # every validation point on the same sample
    assert a.metrics_valid["n_users"] == 100 and "ndcg@10_se" in a.metrics_valid
    assert a.metrics_test["n_users"] == n_test and a.metrics_test["ndcg@10_se"] > 0
    assert a.summary == {"valid_users_sampled": 100.0, "eval_sample_seed": 3.0}
    b = train_and_evaluate(ml_small, "als", {"factors": 8, "iterations": 4, "random_state": 0},
                           tuning={"eval_every": 2}, show_progress=False, valid_users=100, sample_seed=3)
    assert a.history == b.history  # same seed, same users, same curve


def test_protocol_sample_covering_every_user_is_the_full_evaluation(ml_small):
    from recsys.training import train_and_evaluate

    full = train_and_evaluate(ml_small, "most-popular", show_progress=False)
    covered = train_and_evaluate(ml_small, "most-popular", show_progress=False, valid_users=10**6, test_users=10**6)
    assert covered.metrics_valid == full.metrics_valid and covered.metrics_test == full.metrics_test
    assert covered.summary == {}
    part = train_and_evaluate(ml_small, "most-popular", show_progress=False, valid_users=50, test_users=60)
    assert (part.metrics_valid["n_users"], part.metrics_test["n_users"]) == (50, 60)


def test_protocol_refuses_a_negative_sample_size(ml_small):
    from recsys.training import train_and_evaluate

    with pytest.raises(InputError, match="sample size"):
        train_and_evaluate(ml_small, "most-popular", show_progress=False, valid_users=-1)


def test_a_protocol_hook_without_user_samples_still_runs(caplog):
    from recsys.training import _hook_users

    def old_hook(dataset, family, params, *, space, tuning, callbacks, show_progress, ks):
        return None

    def new_hook(dataset, family, params, *, ks, valid_users=None, test_users=None):
        return None

    users = np.arange(3)
    assert set(_hook_users(new_hook, valid_users=users, test_users=None)) == {"valid_users"}
    with caplog.at_level("WARNING", logger="recsys.training"):
        assert _hook_users(old_hook, valid_users=users, test_users=users) == {}
    assert "takes no valid_users" in caplog.text


def test_train_model_logs_the_sample_its_standard_errors_and_user_counts_to_mlflow(ml_small, tmp_path):
    import json

    import mlflow

    from pipelines.train import train_model
    from tests.mf_fixtures import fresh_store

    uri = fresh_store(tmp_path)
    ev = {"valid_users": 120, "test_users": 0, "sample_seed": 5}
    res = train_model(ml_small, "most-popular", {}, tracking_uri=uri, dataset_name="ml-small", show_progress=False,
                      out_dir=tmp_path / "out", evaluation=ev)
    m = mlflow.MlflowClient(uri).get_run(res.run_id).data.metrics
    assert m["valid_n_users"] == 120 and m["valid_users_sampled"] == 120 and m["eval_sample_seed"] == 5
    assert m["test_n_users"] == res.metrics_test["n_users"] > 120
    assert m["test_ndcg_at_10_se"] == pytest.approx(res.metrics_test["ndcg@10_se"]) and m["valid_ndcg_at_10_se"] > 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["evaluation"] == ev


def test_recsys_train_validates_on_the_sampled_users_and_refuses_a_negative_size(ml_small_dataset_dir, tmp_path,
                                                                               monkeypatch):
    import json

    from pipelines import cli
    from tests.mf_fixtures import fresh_store

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fresh_store(tmp_path))
    base = ["train", "--dataset", str(ml_small_dataset_dir), "--model", "most-popular", "--out", "out", "--no-progress"]
    assert cli.main([*base, "--valid-users", "-1"]) == 2
    assert cli.main([*base, "--valid-users", "50", "--sample-seed", "4"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["valid"]["n_users"] == 50 and metrics["test"]["n_users"] > 50

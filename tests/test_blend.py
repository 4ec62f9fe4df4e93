"""Content -> CF mapping, the n/(n+k) blend and the item-vector table."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.embeddings.blend import ContentBlender, ItemVectorTable, MLPMap, RidgeMap, blend_weights
from recsys.embeddings.mappers import BlendMap, KnnMap, knn_neighbours, make_mapper
from recsys.errors import BundleError, ConfigError, InputError, NotFittedError


@pytest.fixture(scope="module")
def linear_problem() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 12)).astype(np.float32)
    w = rng.normal(size=(12, 6)).astype(np.float32)
    y = x @ w + 0.5 + 0.01 * rng.normal(size=(400, 6)).astype(np.float32)
    return x, y, w


def test_ridge_recovers_a_linear_map_and_picks_the_smallest_penalty_for_clean_data(linear_problem) -> None:
    x, y, w = linear_problem
    m = RidgeMap().fit(x[:300], y[:300])
    assert m.alpha_ == 0.1
    np.testing.assert_allclose(m.coef_, w, atol=0.01)
    assert np.abs(m.predict(x[300:]) - y[300:]).max() < 0.1


def test_ridge_picks_a_strong_penalty_for_pure_noise() -> None:
    rng = np.random.default_rng(1)
    m = RidgeMap().fit(rng.normal(size=(60, 30)).astype(np.float32), rng.normal(size=(60, 4)).astype(np.float32))
    assert m.alpha_ == 100.0


def test_mlp_map_learns_the_linear_problem_too(linear_problem) -> None:
    x, y, _ = linear_problem
    m = MLPMap(hidden=32, epochs=60, lr=1e-2, random_state=0).fit(x, y)
    base = float(np.mean((y - y.mean(0)) ** 2))
    assert float(np.mean((m.predict(x) - y) ** 2)) < 0.2 * base


def test_blend_weight_grows_with_interactions() -> None:
    np.testing.assert_allclose(blend_weights(np.array([0, 1, 5, 45]), k=5), [0.0, 1 / 6, 0.5, 0.9], rtol=1e-6)
    np.testing.assert_array_equal(blend_weights(np.array([0, 3]), k=0), [0.0, 1.0])
    with pytest.raises(InputError, match=">= 0"):
        blend_weights(np.array([1]), k=-1)


def _toy() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    content = rng.normal(size=(8, 5)).astype(np.float32)
    content[7] = 0.0  # item 7: no text
    cf = (content @ rng.normal(size=(5, 3))).astype(np.float32)
    counts = np.array([10, 10, 10, 10, 2, 0, 0, 0])
    return content, cf, counts


def test_transform_flags_every_item_by_where_its_vector_came_from() -> None:
    content, cf, counts = _toy()
    b = ContentBlender(k=2.0).fit(content, cf, counts)
    t = b.transform(content, cf, counts)
    assert t.provenance.tolist() == ["blend"] * 5 + ["content", "content", "missing"]
    np.testing.assert_allclose(t.blend_weight[:5], [10 / 12] * 4 + [0.5], rtol=1e-6)
    mapped = b.map_content(content)
    np.testing.assert_allclose(t.vectors[4], 0.5 * cf[4] + 0.5 * mapped[4], rtol=1e-5)
    np.testing.assert_allclose(t.vectors[5], mapped[5], rtol=1e-6)
    assert not t.vectors[7].any()
    pure = b.transform(content, cf, counts, k=0)
    assert pure.counts() == {"cf": 5, "content": 2, "missing": 1}
    np.testing.assert_array_equal(pure.vectors[:5], cf[:5])


def test_tune_k_keeps_pure_cf_unless_blending_clearly_helps() -> None:
    content, cf, counts = _toy()
    b = ContentBlender().fit(content, cf, counts)
    scores = b.tune_k(content, cf, counts, lambda t: 1.0 + 0.001 * t.meta["k"], grid=(0, 1, 5))
    assert b.k == 0.0 and scores == {0.0: 1.0, 1.0: 1.001, 5.0: 1.005}
    b.tune_k(content, cf, counts, lambda t: {0.0: 1.0, 1.0: 1.2, 5.0: 1.2}[t.meta["k"]], grid=(0, 1, 5))
    assert b.k == 1.0  # ties go to the smaller k


def test_item_vector_table_round_trips_without_pickle(tmp_path) -> None:
    content, cf, counts = _toy()
    t = ContentBlender(k=1).fit(content, cf, counts).transform(content, cf, counts)
    t.save(tmp_path / "items.npz")
    with np.load(tmp_path / "items.npz", allow_pickle=False) as z:
        assert z["provenance"].dtype.kind == "U"
    back = ItemVectorTable.load(tmp_path / "items.npz")
    np.testing.assert_array_equal(back.vectors, t.vectors)
    assert back.provenance.tolist() == t.provenance.tolist() and back.meta["k"] == 1.0
    assert back.source is back.provenance
    (tmp_path / "bad.npz").write_bytes(b"no")
    with pytest.raises(BundleError):
        ItemVectorTable.load(tmp_path / "bad.npz")


def test_bad_inputs_are_refused_with_reasons() -> None:
    content, cf, counts = _toy()
    with pytest.raises(NotFittedError):
        ContentBlender().map_content(content)
    with pytest.raises(InputError, match="indexed by item_idx"):
        ContentBlender().fit(content[:5], cf, counts)
    with pytest.raises(InputError, match="cannot fit the map"):
        ContentBlender(min_count=50).fit(content, cf, counts)
    with pytest.raises(InputError, match="unknown provenance"):
        ItemVectorTable(np.zeros((1, 2)), np.array(["guess"]), np.zeros(1))
    with pytest.raises(InputError, match="valid names: auto, ridge, knn, blend, mlp"):
        ContentBlender(mapper="lasso").fit(content, cf, counts)


def test_cold_scale_multiplies_only_cold_rows_and_is_tuned_with_k() -> None:
    content, cf, counts = _toy()
    b = ContentBlender(k=0).fit(content, cf, counts)
    one, half = b.transform(content, cf, counts), b.transform(content, cf, counts, cold_scale=0.5)
    np.testing.assert_allclose(half.vectors[5:], 0.5 * one.vectors[5:], rtol=1e-6)
    np.testing.assert_array_equal(half.vectors[:5], one.vectors[:5])
    scores = b.tune(content, cf, counts, lambda t: -abs(t.meta["cold_scale"] - 0.5), k_grid=(0, 1), scale_grid=(0.25, 0.5, 1.0))
    assert (b.k, b.cold_scale) == (0.0, 0.5) and len(scores) == 6
    with pytest.raises(InputError, match="cold_scale"):
        b.transform(content, cf, counts, cold_scale=0)


def test_knn_mapper_is_the_similarity_weighted_mean_of_the_nearest_warm_items() -> None:
    warm = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]], np.float32)
    cf = np.array([[1, 0], [0, 1], [5, 5], [9, 9]], np.float32)
    out = KnnMap(k=2).fit(warm, cf).transform(np.array([[1, 0]], np.float32))
    # neighbours: item 0 (cos 1) and item 1 (cos 0.8); items 2 and 3 are not among the 2 nearest
    np.testing.assert_allclose(out, [[1 / 1.8, 0.8 / 1.8]], rtol=1e-5)
    idx, sims = knn_neighbours(np.array([[0, 2]], np.float32), warm, k=10)  # k beyond the base: every item
    assert idx[0].tolist() == [2, 1, 0, 3] and sims[0, 0] == pytest.approx(1.0)


def test_knn_mapper_falls_back_to_the_plain_mean_when_no_neighbour_is_similar() -> None:
    warm = np.array([[1, 0], [0, 1]], np.float32)
    cf = np.array([[2, 0], [0, 4]], np.float32)
    out = KnnMap(k=2).fit(warm, cf).transform(np.array([[-1, -1]], np.float32))
    np.testing.assert_allclose(out, [[1, 2]])


def test_blend_mapper_is_alpha_ridge_plus_one_minus_alpha_knn(linear_problem) -> None:
    x, y, _ = linear_problem
    b = BlendMap(alpha=0.3, k=7).fit(x[:300], y[:300])
    want = 0.3 * RidgeMap().fit(x[:300], y[:300]).predict(x[300:]) + 0.7 * KnnMap(7).fit(x[:300], y[:300]).transform(x[300:])
    np.testing.assert_allclose(b.transform(x[300:]), want, rtol=1e-5, atol=1e-5)
    blender = ContentBlender(mapper="blend", mapper_params={"alpha": 0.3, "k": 7}).fit(x, y, np.full(len(x), 10))
    assert isinstance(blender.mapper_, BlendMap) and blender.mapper_.k == 7


def test_mapper_names_and_parameters_are_checked() -> None:
    assert isinstance(make_mapper("knn", k=3), KnnMap) and isinstance(make_mapper("ridge"), RidgeMap)
    with pytest.raises(ConfigError, match="select_mapper"):
        make_mapper("auto")
    with pytest.raises(ConfigError, match="valid names: auto, ridge, knn, blend, mlp"):
        make_mapper("lasso")
    with pytest.raises(InputError, match=">= 1"):
        KnnMap(k=0)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        BlendMap(alpha=1.5)
    with pytest.raises(NotFittedError):
        KnnMap().transform(np.zeros((1, 2), np.float32))

"""recsys.models.weighting: confidence schemes match their formulas and implicit's weightings."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from implicit.nearest_neighbours import bm25_weight, tfidf_weight

from recsys.errors import ConfigError
from recsys.models import weighting


@pytest.fixture()
def ratings() -> sp.csr_matrix:
    rng = np.random.default_rng(0)
    m = sp.random(30, 20, density=0.25, format="csr", random_state=1, dtype=np.float32)
    m.data = rng.integers(1, 6, m.nnz).astype(np.float32)
    return m


def test_linear_keeps_values_and_log_binary_follow_their_formulas(ratings: sp.csr_matrix) -> None:
    np.testing.assert_array_equal(weighting.transform(ratings, "linear").data, ratings.data)
    log_w = weighting.transform(ratings, "log", eps=0.5)
    np.testing.assert_allclose(log_w.data, np.log1p(ratings.data / 0.5), rtol=1e-6)
    np.testing.assert_array_equal(weighting.transform(ratings, "binary").data, np.ones(ratings.nnz, np.float32))
    # sparsity pattern never changes, input never modified
    assert (log_w.indices == ratings.indices).all() and ratings.data.max() == 5


def test_bm25_and_tfidf_equal_implicits_item_user_weighting(ratings: sp.csr_matrix) -> None:
    ours = weighting.transform(ratings, "bm25", K1=50, B=0.7).toarray()
    ref = bm25_weight(ratings.T.tocsr(), K1=50, B=0.7).T.toarray()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    ours_t = weighting.transform(ratings, "tfidf").toarray()
    ref_t = tfidf_weight(ratings.T.tocsr()).T.toarray()
    np.testing.assert_allclose(ours_t, ref_t, rtol=1e-5, atol=1e-6)


def test_confidence_scales_by_alpha(ratings: sp.csr_matrix) -> None:
    c = weighting.confidence(ratings, "log", alpha=4.0)
    np.testing.assert_allclose(c.data, 4.0 * np.log1p(ratings.data), rtol=1e-6)


def test_non_positive_weights_are_clipped_to_stay_positive_evidence() -> None:
    # a user who saw every item has idf log(N) - log(1 + N) < 0
    full = sp.csr_matrix(np.ones((2, 3), np.float32))
    w = weighting.transform(full, "tfidf")
    assert (w.data > 0).all() and w.data.max() == pytest.approx(1e-6)


def test_bm25_fold_in_uses_the_training_length_norm(ratings: sp.csr_matrix) -> None:
    norm = weighting.item_length_norm(ratings, B=0.8)
    row = ratings[3]
    alone = weighting.transform(row, "bm25", length_norm=norm)
    in_context = weighting.transform(ratings, "bm25")[3]
    np.testing.assert_allclose(alone.toarray(), in_context.toarray(), rtol=1e-6)


def test_rejects_unknown_scheme_and_bad_parameters_with_options(ratings: sp.csr_matrix) -> None:
    with pytest.raises(ConfigError, match="choose one of"):
        weighting.transform(ratings, "sqrt")
    with pytest.raises(ConfigError, match="eps > 0"):
        weighting.transform(ratings, "log", eps=0)
    with pytest.raises(ConfigError, match="alpha"):
        weighting.confidence(ratings, alpha=0)

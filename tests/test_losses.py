"""The retrieval loss against values derived by hand on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys.errors import InputError
from recsys.models.losses import candidate_log_q, sampled_softmax_loss

E = math.e


def _t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_in_batch_softmax_equals_hand_value_for_identity_vectors():
    # logits = I: each row picks 1 against one 0 -> log(1 + e^-1)
    loss = sampled_softmax_loss(_t([[1, 0], [0, 1]]), _t([[1, 0], [0, 1]]), remove_accidental_hits=False)
    assert loss.item() == pytest.approx(math.log(1 + 1 / E), rel=1e-6)


def test_temperature_divides_logits():
    loss = sampled_softmax_loss(_t([[1, 0], [0, 1]]), _t([[1, 0], [0, 1]]), temperature=0.5, remove_accidental_hits=False)
    assert loss.item() == pytest.approx(math.log(1 + E**-2), rel=1e-6)


def test_accidental_hits_are_masked_but_not_the_positive():
    # candidates = I3 so logits[i, j] = query[i, j]; columns 0 and 1 are the same item 5
    q = _t([[2, 1, 0], [0, 1, 3], [1, 0, 1]])
    ids = torch.tensor([5, 5, 7])
    loss = sampled_softmax_loss(q, torch.eye(3), ids)
    expected = (math.log(1 + E**-2) + math.log(1 + E**2) + math.log(2 + 1 / E)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    without = sampled_softmax_loss(q, torch.eye(3), ids, remove_accidental_hits=False)
    row0 = math.log((E**2 + E + 1) / E**2)  # item 5 in column 1 now counts as a negative of row 0
    row1 = math.log((1 + E + E**3) / E)
    assert without.item() == pytest.approx((row0 + row1 + math.log(2 + 1 / E)) / 3, rel=1e-6)


def test_log_q_correction_subtracts_log_frequency_from_each_candidate():
    # item 0 is sampled twice as often: its logit drops by log 2 in every row
    loss = sampled_softmax_loss(_t([[1, 0], [0, 1]]), _t([[1, 0], [0, 1]]), log_q=_t([math.log(2), 0.0]),
                                remove_accidental_hits=False)  # fmt: skip
    expected = (math.log(1 + 2 / E) + math.log(1 + 1 / (2 * E))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_uniform_negatives_are_appended_corrected_and_hit_masked():
    # one row, positive item 3 (logit 1); negatives: item 4 (logit 0, logQ log 2) and item 3 (an accidental hit)
    loss = sampled_softmax_loss(
        _t([[1, 0]]), _t([[1, 0]]), torch.tensor([3]), log_q=_t([0.0]),
        negatives=_t([[0, 1], [1, 0]]), negative_ids=torch.tensor([4, 3]), negative_log_q=_t([math.log(2), 0.0]),
    )  # fmt: skip
    assert loss.item() == pytest.approx(math.log(1 + 0.5 / E), rel=1e-6)


def test_sample_weights_give_a_weighted_mean():
    q = _t([[1, 0], [0, 1]])
    c = _t([[1, 0], [0, 0]])  # row 0: logits [1, 0]; row 1: logits [0, 0]
    loss = sampled_softmax_loss(q, c, sample_weight=_t([1, 3]), remove_accidental_hits=False)
    assert loss.item() == pytest.approx((math.log(1 + 1 / E) + 3 * math.log(2)) / 4, rel=1e-6)


def test_positive_offset_points_rows_into_a_larger_candidate_set():
    # the row's positive is column 1 of 2 (a data-parallel rank's slice of the global batch)
    loss = sampled_softmax_loss(_t([[0, 1]]), _t([[1, 0], [0, 1]]), torch.tensor([8, 9]), positive_offset=1)
    assert loss.item() == pytest.approx(math.log(1 + 1 / E), rel=1e-6)


def test_gradient_flows_to_both_towers():
    q = _t([[1, 0], [0, 1]]).requires_grad_()
    c = _t([[1, 0], [0, 1]]).requires_grad_()
    sampled_softmax_loss(q, c, torch.tensor([0, 1])).backward()
    s = 1 / (1 + E)  # softmax weight of the negative
    # d loss_0 / d q_0 = -(1 - p_pos) * c_0 + p_neg * c_1, halved by the mean
    assert np.allclose(q.grad.numpy(), [[-s / 2, s / 2], [s / 2, -s / 2]], atol=1e-6)
    assert c.grad is not None and torch.isfinite(c.grad).all()


def test_candidate_log_q_is_log_of_expected_occurrences():
    # B=4 positives with p=[1/4, 3/4] plus M=2 uniform negatives over N=2 items: [1+1, 3+1]
    assert np.allclose(candidate_log_q(np.array([1, 3]), 4, 2), np.log([2.0, 4.0]))
    assert np.isfinite(candidate_log_q(np.array([0, 5]), 4)).all()  # unsampled item: floor, not -inf


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"remove_accidental_hits": True}, "candidate_ids"),
        ({"positive_offset": 2}, "outside"),
        ({"log_q": _t([0, 0]), "negatives": _t([[1, 0]]), "remove_accidental_hits": False}, "negative_log_q"),
    ],
)
def test_rejects_inconsistent_arguments_with_reason(kwargs, match):
    with pytest.raises(InputError, match=match):
        sampled_softmax_loss(_t([[1, 0], [0, 1]]), _t([[1, 0], [0, 1]]), **kwargs)


def test_candidate_log_q_rejects_empty_or_negative_counts():
    with pytest.raises(InputError, match="non-empty"):
        candidate_log_q(np.array([]), 4)
    with pytest.raises(InputError, match="non-negative"):
        candidate_log_q(np.array([1, -1]), 4)
    with pytest.raises(InputError, match="zero"):
        candidate_log_q(np.array([0, 0]), 4)

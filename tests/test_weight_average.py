from __future__ import annotations

import pytest
import torch
from torch import nn

from recsys.errors import ConfigError
from recsys.models.ema import WeightAverage
from recsys.models.two_tower_config import TwoTowerConfig


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    return net


def test_average_starts_at_the_initial_weights_and_moves_by_one_minus_decay_per_step():
    net = _net()
    avg = WeightAverage(net, 0.9)
    start = net[0].weight.detach().clone()
    for _ in range(3):
        with torch.no_grad():
            net[0].weight.add_(1.0)
        avg.update(net)
    # a_t = 0.9 a_{t-1} + 0.1 (start + t): 0.1 * (0.81 * 1 + 0.9 * 2 + 1 * 3) above the start
    got = avg.state_dict()
    assert torch.allclose(got["0.weight"], start + 0.1 * (0.81 + 1.8 + 3.0))
    assert torch.equal(got["0.bias"], net[0].bias)  # untouched weights stay put
    assert got["1.num_batches_tracked"].dtype == torch.int64  # integer buffers are copied, not averaged


def test_swapped_evaluates_the_average_and_restores_the_trained_weights_even_on_error():
    net = _net()
    avg = WeightAverage(net, 0.5)
    for value in (2.0, 4.0):
        with torch.no_grad():
            net[0].weight.fill_(value)
        avg.update(net)
    trained = net[0].weight.clone()
    with pytest.raises(RuntimeError, match="boom"):
        with avg.swapped(net):
            assert not torch.equal(net[0].weight, trained)
            assert torch.allclose(net[0].weight, avg.state_dict()["0.weight"])
            raise RuntimeError("boom")
    assert torch.equal(net[0].weight, trained)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_decay_outside_zero_one_is_refused(decay):
    with pytest.raises(ConfigError, match="decay"):
        WeightAverage(_net(), decay)


@pytest.mark.parametrize("bad", [1.0, -0.1])
def test_two_tower_config_refuses_an_ema_outside_zero_one(bad):
    with pytest.raises(ConfigError, match="ema"):
        TwoTowerConfig(ema=bad).validate()

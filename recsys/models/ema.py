"""An exponential moving average of a network's weights, swapped in for evaluation.

Two-tower validation NDCG moves by +-0.005-0.01 from one epoch to the next on MovieLens
latest-small, so early stopping picks an epoch partly by luck: the refitted model's test
NDCG@10 per epoch read 0.2669, 0.2667, 0.2735, 0.2644, 0.2690, 0.2728 (docs/two_tower.md).
Averaging the weights over the last few hundred steps (Polyak averaging) evaluates and exports
a smoother model. Every floating-point tensor of the state dict is averaged (parameters and
float buffers); integer buffers are copied.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from recsys.errors import ConfigError

__all__ = ["WeightAverage"]


class WeightAverage:
    """``avg <- decay * avg + (1 - decay) * weights`` after every step, started from the initial weights.

    As ``torch.optim.swa_utils.AveragedModel`` with an EMA function and TensorFlow's
    ``ExponentialMovingAverage`` do, the average starts as a copy of the weights before
    training, whose share fades as ``decay ** t``: early epochs evaluate a model pulled towards
    its small random initialisation, which acts as shrinkage. On latest-small validation
    (NDCG@10, decay 0.995) this beat the bias-corrected average that leaves the start out
    (0.2220 vs 0.2178; 0.997: 0.2214 vs 0.2188).

    Parameters
    ----------
    net : nn.Module
        The network being trained (its current weights start the average).
    decay : float
        In ``(0, 1)``; the average's memory is about ``1 / (1 - decay)`` steps.
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"the weight-average decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.avg = {k: v.detach().clone() for k, v in net.state_dict().items()}

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """Fold the current weights into the average (call after each optimiser step)."""
        for k, v in net.state_dict().items():
            a = self.avg[k]
            if a.is_floating_point():
                a.lerp_(v.detach().to(a.dtype), 1.0 - self.decay)
            else:
                a.copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """A copy of the averaged weights (a state dict of ``net``)."""
        return {k: v.clone() for k, v in self.avg.items()}

    @contextmanager
    def swapped(self, net: nn.Module) -> Iterator[None]:
        """Run the block with the averaged weights in ``net``; the trained ones come back after."""
        trained = {k: v.detach().clone() for k, v in net.state_dict().items()}
        net.load_state_dict(self.avg)
        try:
            yield
        finally:
            net.load_state_dict(trained)

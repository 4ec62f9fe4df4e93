"""Data-parallel two-tower training with ``torch.distributed`` (launched by ``torchrun``).

How the work is split, and why the result matches single-process training
--------------------------------------------------------------------------
Every rank builds the same *global* batch sequence from the same seed (same permutation,
same id-dropout masks, same uniform negatives) and takes its own contiguous slice of each
global batch (``batch_size / world_size`` rows). Each rank then

1. embeds its rows with the user and item towers (the model is wrapped in
   :class:`~torch.nn.parallel.DistributedDataParallel`);
2. gathers the positive item vectors of *all* ranks with :func:`all_gather_with_grad`, so
   its in-batch softmax has exactly the candidates the single-process softmax over the
   global batch has;
3. takes the mean loss over its rows; DDP averages gradients over ranks.

Because the gather's backward sums the gradients each rank's loss sends to every rank's
item vectors, the averaged gradient equals the gradient of the global-batch mean loss:
the run is the single-process run up to floating-point summation order (checked by
``tests/test_distributed.py`` with 2 gloo processes on CPU).

Launch: ``torchrun --nproc_per_node 2 -m pipelines.train_two_tower --dataset DIR --out M.npz``.
Backend ``"auto"`` is NCCL when CUDA is available and gloo otherwise. Sparse embedding
gradients work with gloo; with NCCL use ``sparse=False`` unless your torch build supports
sparse all-reduce.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from recsys.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["DistInfo", "all_gather_with_grad", "all_reduce_mean", "cleanup", "init_distributed", "wrap_model"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a (possibly single-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the rank that logs, evaluates for reporting and writes files."""
        return self.rank == 0

    @classmethod
    def current(cls) -> DistInfo:
        """The info of an already initialised process group (single process if none)."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), dist.get_rank() % max(torch.cuda.device_count(), 1))
        return cls()


def init_distributed(backend: str = "auto", init_method: str = "env://", rank: int | None = None, world_size: int | None = None) -> DistInfo:
    """Join the process group (idempotent) and return this process's :class:`DistInfo`.

    Parameters
    ----------
    backend : {"auto", "gloo", "nccl"}
        "auto": NCCL with CUDA, gloo otherwise.
    init_method : str
        ``"env://"`` (what ``torchrun`` sets up: rank and world size come from the launcher)
        or a ``tcp://host:port`` / ``file://`` URL with explicit ``rank`` and ``world_size``.
    """
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed support")
    if dist.is_initialized():
        return DistInfo.current()
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ConfigError(f"backend must be 'auto', 'gloo' or 'nccl', got {backend!r}")
    kwargs = {}
    if rank is not None:
        kwargs["rank"] = rank
    if world_size is not None:
        kwargs["world_size"] = world_size
    dist.init_process_group(backend=backend, init_method=init_method, **kwargs)
    info = DistInfo.current()
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    log.info("joined process group: rank %d of %d (%s)", info.rank, info.world_size, backend)
    return info


def cleanup() -> None:
    """Leave the process group (no-op when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns this rank's slice of the summed grads."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.n = x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # works on gloo and NCCL alike
        r = dist.get_rank()
        return grad[r * ctx.n : (r + 1) * ctx.n]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) over ranks, in rank order, keeping autograd.

    Returns ``x`` itself when not distributed.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (``x`` itself when not distributed); for reporting, no autograd."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / dist.get_world_size()


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """Wrap in DistributedDataParallel when distributed, else return the model as is.

    Buffers are not re-synced every step: the only buffers are the item-feature table (identical on
    every rank, possibly large), so re-broadcasting it every step would be pure cost.
    """
    if not info.is_distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index if device.index is not None else info.local_rank] if device.type == "cuda" else None
    # torch >= 2.12 renamed broadcast_buffers (deprecated) to forward_sync_buffers
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return DDP(model, device_ids=ids, forward_sync_buffers=False)
    return DDP(model, device_ids=ids, broadcast_buffers=False)

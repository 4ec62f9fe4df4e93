"""One place that turns ``device="auto"|"cpu"|"cuda"`` into a :class:`torch.device`.

Every torch-backed component (two-tower training, inference, benchmarks) resolves its
device here, so "auto" means the same thing everywhere and asking for a GPU on a machine
without one fails with one clear message instead of a CUDA stack trace deep in training.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from recsys.errors import ConfigError

if TYPE_CHECKING:  # importing recsys must not import torch
    import torch

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve a device name to a :class:`torch.device`.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"} or "cuda:N" or torch.device
        ``"auto"`` picks the first CUDA device when one is usable and the CPU otherwise.
        ``"cuda"`` (or ``"cuda:N"``) requires CUDA and raises when it is absent, because
        silently training on the CPU when a GPU was asked for turns a minutes-long job into
        hours without anyone noticing.

    Returns
    -------
    torch.device

    Raises
    ------
    ConfigError
        For an unknown name, or ``"cuda"`` on a machine (or torch build) without CUDA.
    """
    import torch

    if isinstance(device, torch.device):
        name = str(device)
    elif isinstance(device, str):
        name = device.strip().lower()
    else:
        raise ConfigError(f"device must be one of {DEVICES} (or 'cuda:N'), got {device!r}")
    if name == "auto":
        dev = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        log.debug("device='auto' resolved to %s", dev)
        return dev
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            build = "a CPU-only torch build" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
            raise ConfigError(
                f"device={name!r} was requested but CUDA is not available ({build}, "
                f"{torch.cuda.device_count()} visible GPUs); use device='cpu' or 'auto', "
                "or install a CUDA build of torch on a machine with an NVIDIA GPU"
            )
        try:
            dev = torch.device(name)
        except RuntimeError as e:
            raise ConfigError(f"invalid device {name!r}: {e}") from e
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} does not exist: {torch.cuda.device_count()} GPUs are visible")
        return dev
    raise ConfigError(f"device must be one of {DEVICES} (or 'cuda:N'), got {device!r}")

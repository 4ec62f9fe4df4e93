"""Two-tower checkpoints: a tensor-only state dict (``model.pt``) plus ``config.json``.

Why a format of its own: ``model.pt`` holds tensors only and is read back with
``torch.load(weights_only=True)``, so loading a checkpoint never runs code (no pickle of
objects); ``config.json`` holds everything needed to rebuild the net around the tensors.
The trainer writes the best weights while it trains, and
:meth:`~recsys.models.two_tower.TwoTower.save_checkpoint` writes the whole model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from recsys.errors import BundleError
from recsys.io import atomic_path, read_json, write_json

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(directory: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> None:
    """Write ``model.pt`` (tensors only) and ``config.json`` into ``directory`` atomically."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu() for k, v in state_dict.items()}
    with atomic_path(d / "model.pt") as tmp:
        torch.save(tensors, tmp)
    write_json(d / "config.json", dict(config))


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no code runs)."""
    d = Path(directory)
    if not (d / "model.pt").exists() or not (d / "config.json").exists():
        raise BundleError(f"{d} is not a two-tower checkpoint (needs model.pt and config.json)")
    try:
        state = torch.load(d / "model.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError/RuntimeError for foreign or corrupt files
        raise BundleError(f"{d / 'model.pt'} cannot be read as a tensor state dict: {e}") from e
    return state, read_json(d / "config.json")

"""The torch side of :class:`~recsys.models.two_tower.TwoTower`: build its net, run it in batches.

Kept apart from the estimator so that ``recsys.models.two_tower`` imports without torch
(the model registry reads ``TwoTower``'s parameters when it validates a config) and so that
the estimator reads as fit / infer / persist, not tensor plumbing.

* The *architecture* (:func:`arch_from`) is a JSON-able dict of what the data fixes:
  ``n_users``, ``n_items``, ``item_feature_dim``, ``cat_cardinalities``, ``dense_dim``.
  Saved with the weights, it rebuilds the same net with :func:`build_net` (hyperparameters
  come from :class:`~recsys.models.two_tower_config.TwoTowerConfig`).
* :func:`encode_users` / :func:`encode_items` run a tower over numpy inputs in batches in
  inference mode and return contiguous float32 arrays, the layout every model exports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from recsys.errors import InputError
from recsys.models.towers import EnsembleNet, ItemTower, TwoTowerNet, UserTower
from recsys.models.two_tower_config import TwoTowerConfig

__all__ = ["arch_from", "build_member", "build_net", "encode_items", "encode_users"]

DEFAULT_BATCH = 4096


def arch_from(n_users: int, n_items: int, item_features: Any, cat: Any, dense: Any) -> dict[str, Any]:
    """The architecture the training data fixes; checks the item and categorical features."""
    f = None if item_features is None else np.asarray(item_features)
    if f is not None and (f.ndim != 2 or f.shape[0] != n_items or not np.isfinite(f).all()):
        raise InputError(f"item_features must be a finite float array of shape ({n_items}, F), got {f.shape}")
    c = None if cat is None else np.asarray(cat)
    if c is not None and c.dtype.kind not in "iu":
        raise InputError(f"user_categorical must hold integers (-1 = unknown), got dtype {c.dtype}")
    return {
        "n_users": int(n_users),
        "n_items": int(n_items),
        "item_feature_dim": 0 if f is None else int(f.shape[1]),
        "cat_cardinalities": [] if c is None else [int(c[:, j].max(initial=-1)) + 1 for j in range(c.shape[1])],
        "dense_dim": 0 if dense is None else int(np.asarray(dense).shape[1]),
    }


def build_member(arch: dict[str, Any], config: TwoTowerConfig, item_features: np.ndarray | None) -> TwoTowerNet:
    """One :class:`TwoTowerNet`, initialised from torch's current seed.

    ``item_features`` fill the item tower's feature table; ``None`` leaves zeros there (a
    net about to receive saved weights).
    """
    a, c = arch, config
    feats = None
    if a["item_feature_dim"]:
        src = np.zeros((a["n_items"], a["item_feature_dim"]), np.float32) if item_features is None else item_features
        feats = torch.as_tensor(np.asarray(src, np.float32))
    user = UserTower(
        a["n_users"], a["n_items"], c.dim, id_dim=c.user_id_dim, history_dim=c.history_dim, history_len=c.history_len,
        pooling=c.pooling, cat_cardinalities=a["cat_cardinalities"], dense_dim=a["dense_dim"], hidden=c.hidden,
        dropout=c.dropout, normalize=c.normalize, sparse=c.sparse,
    )  # fmt: skip
    item = ItemTower(
        a["n_items"], c.dim, id_dim=c.item_id_dim, features=feats, hidden=c.hidden, dropout=c.dropout,
        normalize=c.normalize, sparse=c.sparse,
    )  # fmt: skip
    return TwoTowerNet(user, item)


def build_net(arch: dict[str, Any], config: TwoTowerConfig, item_features: np.ndarray | None) -> nn.Module:
    """The inference net: one :class:`TwoTowerNet`, or an ``EnsembleNet`` of ``config.ensemble``."""
    if config.ensemble == 1:
        return build_member(arch, config, item_features)
    return EnsembleNet([build_member(arch, config, item_features) for _ in range(config.ensemble)])


def _run(net: nn.Module, fn: Callable[[slice], torch.Tensor], n: int, width: int, batch_size: int) -> np.ndarray:
    """``fn`` over ``n`` rows in slices of ``batch_size``, in eval and inference mode."""
    net.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, n, batch_size):
            out.append(fn(slice(s, s + batch_size)).float().cpu().numpy())
    return np.ascontiguousarray(np.concatenate(out) if out else np.zeros((0, width)), dtype=np.float32)


def encode_users(
    net: nn.Module,
    device: torch.device,
    width: int,
    users: np.ndarray | None,
    histories: np.ndarray,
    categorical: np.ndarray | None,
    dense: np.ndarray | None,
    drop_id: bool,
    batch_size: int = DEFAULT_BATCH,
) -> np.ndarray:
    """User vectors ``(len(histories), width)``; ``users=None`` or ``drop_id`` scores from history and features."""

    def t(x: Any, s: slice, dtype: Any) -> Any:
        return None if x is None else torch.as_tensor(np.asarray(x)[s], dtype=dtype, device=device)

    def fn(s: slice) -> torch.Tensor:
        return net.user_tower(
            None if drop_id or users is None else t(users, s, torch.int64),
            t(histories, s, torch.int64), t(categorical, s, torch.int64), t(dense, s, torch.float32), drop_id or None,
        )  # fmt: skip

    return _run(net, fn, len(histories), width, batch_size)


def encode_items(
    net: nn.Module,
    device: torch.device,
    width: int,
    items: np.ndarray,
    features: np.ndarray | None,
    drop: np.ndarray | bool | None,
    batch_size: int = DEFAULT_BATCH,
) -> np.ndarray:
    """Item vectors ``(len(items), width)``; ``drop`` (all, a row mask or none) drops the id embedding."""

    def fn(s: slice) -> torch.Tensor:
        ids = torch.as_tensor(items[s], dtype=torch.int64, device=device)
        d = drop if isinstance(drop, bool) or drop is None else torch.as_tensor(drop[s], device=device)
        f = None if features is None else torch.as_tensor(features[s], dtype=torch.float32, device=device)
        return net.item_tower(ids, d, f)

    return _run(net, fn, len(items), width, batch_size)

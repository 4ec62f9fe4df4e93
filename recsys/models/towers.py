"""The two towers of the retrieval model, as plain :class:`torch.nn.Module` s.

* :class:`ItemTower`: item-id embedding (optional, with *id dropout*) and a projection of
  the item's content features (a dense float matrix, one row per item: content embeddings
  or multi-hot genres) -> MLP -> vector of dimension ``dim``. The id tells warm items
  apart; the content lets an item that was never trained on (a cold item) get a vector
  from its features alone. Id dropout trains that path: with probability ``p`` a row's id
  embedding is zeroed, so the MLP learns to place items from content when the id is absent.
* :class:`UserTower`: user-id embedding (optional) + pooled embeddings of the user's last
  ``N`` items (mean, or attention with a recency bias) + user features (categorical
  columns with their own embeddings, dense columns as they are) -> MLP -> ``dim``. The
  history pooling is what scores a user who was never trained on: run the tower with the
  id dropped and only their history.
* :class:`TwoTowerNet`: both towers behind one ``forward``, so
  :class:`~torch.nn.parallel.DistributedDataParallel` sees every parameter used in one call.

Both towers L2-normalise their output when ``normalize=True`` (the default), so a score is
a cosine similarity. Padding in histories is ``-1``; id embeddings may be ``sparse`` (their
gradients then only touch the rows of the batch, which is what makes 10M-user tables
trainable at GPU speed with :class:`torch.optim.SparseAdam`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recsys.errors import ConfigError

__all__ = ["MLP", "ConcatTower", "EnsembleNet", "ItemTower", "TwoTowerNet", "UserTower"]

POOLINGS = ("mean", "attention")


def _init_embedding(e: nn.Embedding | nn.EmbeddingBag, std: float) -> None:
    # N(0, 1) (torch's default) makes dot products of 64-d vectors ~8 at init, which
    # saturates a temperature-scaled softmax; a small init starts in the linear regime.
    nn.init.normal_(e.weight, 0.0, std)


class MLP(nn.Sequential):
    """``Linear -> ReLU -> Dropout`` per hidden size, then a final ``Linear`` to ``out_dim``."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        layers.append(nn.Linear(d, out_dim))
        super().__init__(*layers)


def _drop_rows(x: torch.Tensor, drop: torch.Tensor | bool | None) -> torch.Tensor:
    """Zero the rows of ``x`` where ``drop`` is True (all rows for ``drop=True``)."""
    if drop is None or drop is False:
        return x
    if drop is True:
        return torch.zeros_like(x)
    return x * (~drop).to(x.dtype)[:, None]


class ItemTower(nn.Module):
    """Item id embedding + projected content features -> MLP -> (normalised) vector.

    Parameters
    ----------
    n_items : int
    dim : int
        Output dimension.
    id_dim : int
        Id-embedding size; ``0`` makes the tower id-free (content only).
    features : float tensor (n_items, F), optional
        Content features of every item, kept as a buffer (saved with the state dict) so
        the tower can embed any known item, warm or cold, by index.
    hidden : sequence of int
        Hidden layer sizes of the MLP (empty: one linear layer).
    dropout : float
        Dropout after each hidden layer.
    normalize : bool
        L2-normalise the output.
    sparse : bool
        Sparse gradients for the id embedding.
    """

    def __init__(
        self,
        n_items: int,
        dim: int,
        *,
        id_dim: int = 64,
        features: torch.Tensor | None = None,
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
        normalize: bool = True,
        sparse: bool = False,
    ) -> None:
        super().__init__()
        if id_dim <= 0 and features is None:
            raise ConfigError("the item tower needs an id embedding (id_dim > 0) or item features, or both")
        self.normalize = normalize
        self.id_emb = nn.Embedding(n_items, id_dim, sparse=sparse) if id_dim > 0 else None
        if self.id_emb is not None:
            _init_embedding(self.id_emb, 0.1)
        in_dim = max(id_dim, 0)
        if features is not None:
            if features.ndim != 2 or features.shape[0] != n_items:
                raise ConfigError(f"item features must have shape ({n_items}, F), got {tuple(features.shape)}")
            self.register_buffer("features", features.float().contiguous())
            proj = dim if id_dim <= 0 else id_dim
            self.feat_proj: nn.Linear | None = nn.Linear(features.shape[1], proj)
            in_dim += proj
        else:
            self.features = None
            self.feat_proj = None
        self.mlp = MLP(in_dim, hidden, dim, dropout)

    def forward(
        self,
        items: torch.Tensor,
        drop_id: torch.Tensor | bool | None = None,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Vectors of ``items`` (int tensor (b,)).

        ``drop_id``: bool mask (b,) or True for all rows: use content only for those rows.
        ``features``: content rows (b, F) overriding the stored ones (items not in the table).
        """
        parts = []
        if self.id_emb is not None:
            if drop_id is True:
                parts.append(torch.zeros(items.shape[0], self.id_emb.embedding_dim, device=items.device))
            else:
                parts.append(_drop_rows(self.id_emb(items), drop_id))
        if self.feat_proj is not None:
            f = features if features is not None else self.features[items]
            parts.append(self.feat_proj(f.float()))
        x = self.mlp(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
        return F.normalize(x, dim=-1) if self.normalize else x


class UserTower(nn.Module):
    """User id + pooled history + user features -> MLP -> (normalised) vector.

    Parameters
    ----------
    n_users, n_items : int
    dim : int
        Output dimension.
    id_dim : int
        User-id embedding size; ``0`` makes the tower id-free (history and features only).
    history_dim : int
        Size of the history item embeddings; ``0`` disables the history.
    history_len : int
        Maximum history length ``N`` (needed for the attention recency bias).
    pooling : {"mean", "attention"}
        Mean of the history embeddings, or a softmax-weighted sum whose weights come from
        each item's embedding plus a learned bias per position (recency).
    cat_cardinalities : sequence of int
        Number of values of each categorical user feature (values ``0..card-1``; ``-1`` is
        "unknown" and gets its own embedding).
    cat_dim : int
        Embedding size of each categorical feature.
    dense_dim : int
        Number of dense float user features (fed to the MLP as they are: scale them).
    hidden, dropout, normalize, sparse :
        As in :class:`ItemTower`.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        *,
        id_dim: int = 64,
        history_dim: int = 64,
        history_len: int = 50,
        pooling: str = "mean",
        cat_cardinalities: Sequence[int] = (),
        cat_dim: int = 8,
        dense_dim: int = 0,
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
        normalize: bool = True,
        sparse: bool = False,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if id_dim <= 0 and history_dim <= 0 and not cat_cardinalities and dense_dim <= 0:
            raise ConfigError("the user tower needs at least one input: user id, history, or user features")
        self.normalize = normalize
        self.pooling = pooling
        in_dim = 0
        self.id_emb = nn.Embedding(n_users, id_dim, sparse=sparse) if id_dim > 0 else None
        if self.id_emb is not None:
            _init_embedding(self.id_emb, 0.1)
            in_dim += id_dim
        self.hist_emb: nn.Embedding | nn.EmbeddingBag | None = None
        if history_dim > 0:
            # row 0 is padding (history index -1 shifted by one)
            if pooling == "mean":
                self.hist_emb = nn.EmbeddingBag(n_items + 1, history_dim, mode="mean", sparse=sparse, padding_idx=0)
            else:
                self.hist_emb = nn.Embedding(n_items + 1, history_dim, sparse=sparse, padding_idx=0)
                self.attn = nn.Linear(history_dim, 1)
                self.pos_bias = nn.Parameter(torch.zeros(history_len))
            _init_embedding(self.hist_emb, 0.1)
            with torch.no_grad():
                self.hist_emb.weight[0].zero_()
            in_dim += history_dim
        self.cat_embs = nn.ModuleList(nn.Embedding(c + 1, cat_dim) for c in cat_cardinalities)
        in_dim += cat_dim * len(cat_cardinalities) + max(dense_dim, 0)
        self.dense_dim = max(dense_dim, 0)
        self.mlp = MLP(in_dim, hidden, dim, dropout)

    def pool_history(self, history: torch.Tensor) -> torch.Tensor:
        """Pool a padded history (b, N) of item indices (``-1`` = padding) to (b, history_dim)."""
        idx = history + 1
        if isinstance(self.hist_emb, nn.EmbeddingBag):
            return self.hist_emb(idx)  # mean over non-padding entries; zeros for empty rows
        e = self.hist_emb(idx)  # (b, N, h)
        valid = idx > 0
        n = history.shape[1]
        logits = self.attn(e).squeeze(-1) + self.pos_bias[-n:]
        logits = logits.masked_fill(~valid, float("-inf"))
        w = torch.softmax(logits, dim=1)
        w = torch.nan_to_num(w, nan=0.0)  # empty histories: all -inf -> zero vector
        return (w.unsqueeze(-1) * e).sum(1)

    def forward(
        self,
        users: torch.Tensor | None,
        history: torch.Tensor | None = None,
        categorical: torch.Tensor | None = None,
        dense: torch.Tensor | None = None,
        drop_id: torch.Tensor | bool | None = None,
    ) -> torch.Tensor:
        """Vectors of a batch of users.

        Parameters
        ----------
        users : int tensor (b,) or None
            User indices; ``None`` (or ``drop_id=True``) runs the tower without ids, the
            path for users unseen in training.
        history : int tensor (b, N), ``-1`` padded, most recent last
        categorical : int tensor (b, C), ``-1`` = unknown
        dense : float tensor (b, D)
        drop_id : bool tensor (b,) or bool
            Zero the id embedding of these rows (id dropout / unseen users).
        """
        b = next(t.shape[0] for t in (users, history, categorical, dense) if t is not None)
        device = next(t.device for t in (users, history, categorical, dense) if t is not None)
        parts = []
        if self.id_emb is not None:
            if users is None or drop_id is True:
                parts.append(torch.zeros(b, self.id_emb.embedding_dim, device=device))
            else:
                parts.append(_drop_rows(self.id_emb(users), drop_id))
        if self.hist_emb is not None:
            if history is None:
                raise ConfigError("this user tower pools histories; pass history (use -1 padding for none)")
            parts.append(self.pool_history(history))
        if self.cat_embs:
            if categorical is None:
                raise ConfigError("this user tower was built with categorical user features; pass them")
            parts += [emb(categorical[:, j] + 1) for j, emb in enumerate(self.cat_embs)]
        if self.dense_dim:
            if dense is None:
                raise ConfigError("this user tower was built with dense user features; pass them")
            parts.append(dense.float())
        x = self.mlp(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
        return F.normalize(x, dim=-1) if self.normalize else x


class TwoTowerNet(nn.Module):
    """Both towers behind one ``forward`` (what DistributedDataParallel wraps)."""

    def __init__(self, user_tower: UserTower, item_tower: ItemTower) -> None:
        super().__init__()
        self.user_tower = user_tower
        self.item_tower = item_tower

    def forward(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        history: torch.Tensor | None = None,
        categorical: torch.Tensor | None = None,
        dense: torch.Tensor | None = None,
        drop_user_id: torch.Tensor | None = None,
        drop_item_id: torch.Tensor | None = None,
        negatives: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """User vectors, positive item vectors and (optional) negative item vectors."""
        u = self.user_tower(users, history, categorical, dense, drop_user_id)
        v = self.item_tower(items, drop_item_id)
        neg = self.item_tower(negatives) if negatives is not None else None
        return u, v, neg

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Parameters with sparse gradients (for SparseAdam)."""
        out = []
        for m in self.modules():
            if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse:
                out.append(m.weight)
        return out


class ConcatTower(nn.Module):
    """Several towers of one kind side by side: their vectors concatenated, scaled by 1/sqrt(K).

    With unit-norm member vectors the result has unit norm and the cosine of two
    concatenations is the *mean* of the members' cosines (the dot product of unnormalised
    members is their mean too), so an index over the concatenated vectors ranks by the
    ensemble's averaged score.
    """

    def __init__(self, towers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.towers = nn.ModuleList(towers)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.cat([t(*args, **kwargs) for t in self.towers], dim=-1) / len(self.towers) ** 0.5


class EnsembleNet(nn.Module):
    """``K`` independently trained :class:`TwoTowerNet` s seen as one net for inference.

    ``user_tower`` / ``item_tower`` are :class:`ConcatTower` s, so the model's export,
    fold-in and cold-item paths work unchanged and give ``K * dim`` vectors. The members
    are trained one by one before they are put together; this net has no ``forward``.
    """

    def __init__(self, members: Sequence[TwoTowerNet]) -> None:
        super().__init__()
        self.user_tower = ConcatTower([m.user_tower for m in members])
        self.item_tower = ConcatTower([m.item_tower for m in members])

"""The two-tower retrieval model as a :class:`~recsys.models.base.Recommender`.

A user tower (id + pooled recent history + user features) and an item tower (id +
projected content features) trained with the in-batch sampled softmax of
:mod:`recsys.models.losses`. After ``fit`` it is a :class:`FactorModel` like ALS:
``user_factors_`` / ``item_factors_`` are float32 arrays (L2-normalised, so
``similarity="cosine"``) that the index, the content blend and the retriever use
unchanged. Unlike MF it also embeds what it never trained on:

* :meth:`TwoTower.user_vectors_from_history` / :meth:`~TwoTower.recalculate_user`: a
  new user from their history alone (the id embedding is dropped; train with
  ``user_id_dropout > 0`` so the tower has learned that path);
* :meth:`TwoTower.item_vectors` with ``drop_ids=True``: items from their content
  features alone (cold items; train with ``item_id_dropout > 0``). Items without any
  training interaction are exported that way automatically.

Persistence: :meth:`save` writes one ``.npz`` (factors, histories and the net's tensors,
no pickle), readable by :meth:`Recommender.load`; :meth:`save_checkpoint` /
:meth:`load_checkpoint` write the trainer's ``model.pt`` + ``config.json`` pair.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys.device import resolve_device
from recsys.errors import ConfigError, InputError
from recsys.io import load_npz, save_npz
from recsys.models.base import FactorModel
from recsys.models.foldin import FoldInSpec
from recsys.models.tower_foldin import tower_foldin_spec
from recsys.models.two_tower_config import TwoTowerConfig
from recsys.models.two_tower_data import build_train_data, pad_histories, user_balance_weights
from recsys.progress import Deadline, format_seconds

# The torch-backed modules (towers, trainer, two_tower_net, checkpoint, distributed) are
# imported inside the methods that need them, as torch itself is: importing this module
# (the model registry does, to read TwoTower's parameters) must not import torch.

log = logging.getLogger(__name__)

__all__ = ["TwoTower", "TwoTowerConfig", "user_balance_weights"]

_NET = "net."  # prefix of the net's tensors inside a saved .npz


class TwoTower(FactorModel):
    """Two-tower retrieval model; hyperparameters are the fields of :class:`TwoTowerConfig`.

    ``TwoTower(dim=64, epochs=10).fit(train_csr, pairs=train_df, validation=...)``.
    Unknown keyword arguments raise :class:`ConfigError` listing the valid ones.
    """

    similarity = "cosine"

    def __init__(self, **params: Any) -> None:
        names = {f.name for f in dataclasses.fields(TwoTowerConfig)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ConfigError(f"unknown TwoTower parameters {unknown}; valid ones: {sorted(names)}")
        for k, v in dataclasses.asdict(TwoTowerConfig(**params)).items():
            setattr(self, k, list(v) if isinstance(v, tuple) else v)

    def get_params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(TwoTowerConfig)}

    @property
    def config(self) -> TwoTowerConfig:
        """The hyperparameters as a :class:`TwoTowerConfig`."""
        return TwoTowerConfig(**self.get_params())

    # -- fitting ---------------------------------------------------------------------------
    def _fit(
        self,
        user_items: sp.csr_matrix,
        *,
        pairs: pl.DataFrame | None = None,
        item_features: np.ndarray | None = None,
        user_categorical: np.ndarray | None = None,
        user_dense: np.ndarray | None = None,
        validation: Callable[[TwoTower], Mapping[str, float]] | None = None,
        on_epoch: Callable[[int, Mapping[str, float]], None] | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
    ) -> None:
        """Train on ``user_items`` (or on ``pairs``, the train split table, when given).

        Parameters
        ----------
        pairs : polars.DataFrame, optional
            The train split (``user_idx``, ``item_idx``[, ``weight``, ``timestamp``]); with a
            timestamp, histories are each user's *most recent* items. Default: the stored
            entries of ``user_items`` in column order.
        item_features : float array (n_items, F), optional
            Item content (content embeddings, multi-hot genres); required for cold items.
        user_categorical : int array (n_users, C), optional
            Categorical user features ``0..card-1`` (``-1`` unknown), e.g. age bucket,
            gender, occupation.
        user_dense : float array (n_users, D), optional
            Scaled numeric user features.
        validation : callable, optional
            ``validation(model) -> metrics`` with the current vectors; drives early
            stopping on ``metric`` (never pass the test split).
        on_epoch : callable, optional
            ``on_epoch(epoch, metrics)``: loss, samples/s, ``valid_*`` (e.g. MLflow logging).
        checkpoint_dir : path, optional
            Where the best weights are checkpointed during training.
        """
        import torch  # lazy, as the torch-backed modules below: see the note after the imports

        from recsys.models.distributed import DistInfo
        from recsys.models.trainer import Trainer, budget_clock
        from recsys.models.two_tower_net import arch_from, build_member

        cfg = self.config
        cfg.validate()
        deadline = Deadline(cfg.budget_seconds, clock=budget_clock)  # starts now: data preparation counts too
        n_users, n_items = user_items.shape
        data = build_train_data(user_items, pairs, cfg, user_categorical, user_dense)
        self._arch = arch_from(n_users, n_items, item_features, user_categorical, user_dense)
        self.histories_ = data.histories
        self.user_categorical_, self.user_dense_ = data.user_categorical, data.user_dense
        self.item_counts_ = data.item_counts().astype(np.int64)
        self.user_items_ = user_items
        self.device_ = resolve_device(cfg.device)
        log.info("two-tower: training on %s (device=%r)", self.device_, cfg.device)
        torch.manual_seed(cfg.seed)  # same initial weights on every rank and every run
        self.net_ = build_member(self._arch, cfg, item_features).to(self.device_)  # member 0: validated, early-stopped
        trainer = Trainer(self.net_, cfg, self.device_, DistInfo.current())
        evaluate = None
        if validation is not None:

            def evaluate(epoch: int) -> Mapping[str, float]:
                self._export()
                return validation(self)

        member_config = {"config": {**self.get_params(), "ensemble": 1}, "arch": self._arch}
        # the budget covers every member: each gets an even share of what is left when it
        # starts, so time member 0 leaves unused (early stopping) goes to the others
        self.history_ = trainer.fit(data, evaluate, on_epoch, checkpoint_dir, member_config, cfg.show_progress,
                                    deadline=deadline.part(cfg.ensemble))  # fmt: skip
        self.best_epoch_, self.best_score_ = trainer.best_epoch, trainer.best_score
        self.stop_reason_ = trainer.stop_reason
        if cfg.ensemble > 1:
            epochs = len(self.history_) if evaluate is None else self.best_epoch_
            if self._fit_other_members(data, item_features, epochs, deadline) and self.stop_reason_ != "budget":
                self.stop_reason_ = "budget"
            if checkpoint_dir is not None and DistInfo.current().is_main:
                self.save_checkpoint(checkpoint_dir)  # the whole ensemble replaces member 0's checkpoint
        self._export()
        self.fit_seconds_ = budget_clock() - deadline.start
        log.info("two-tower: %d member(s) trained in %s, stopped by %s%s", cfg.ensemble, format_seconds(self.fit_seconds_),
                 self.stop_reason_, f" (budget {format_seconds(cfg.budget_seconds)})" if cfg.budget_seconds else "")  # fmt: skip

    def _fit_other_members(self, data: Any, item_features: Any, epochs: int, deadline: Deadline) -> bool:
        """Members 1..K-1: seeds ``seed + j``, as many epochs as member 0 kept; then one net.

        Each member gets an even share of the budget left when it starts (the last one all
        of it). Returns whether any member was stopped by the budget.
        """
        import torch  # lazy, as the torch-backed modules below: see the note after the imports

        from recsys.models.distributed import DistInfo
        from recsys.models.towers import EnsembleNet
        from recsys.models.trainer import Trainer
        from recsys.models.two_tower_net import build_member

        members, cut = [self.net_], False
        for j in range(1, self.ensemble):
            cfg = dataclasses.replace(self.config, seed=self.seed + j, epochs=epochs, patience=None)
            torch.manual_seed(cfg.seed)
            members.append(build_member(self._arch, self.config, item_features).to(self.device_))
            trainer = Trainer(members[-1], cfg, self.device_, DistInfo.current())
            part = deadline.part(self.ensemble - j)
            budget = f", budget {format_seconds(part.seconds)}" if part.limited else ""
            log.info("two-tower ensemble: member %d/%d, %d epochs%s", j + 1, self.ensemble, epochs, budget)
            trainer.fit(data, show_progress=cfg.show_progress, deadline=part)
            cut = cut or trainer.stop_reason == "budget"
        self.net_ = EnsembleNet(members)
        return cut

    # -- inference -------------------------------------------------------------------------
    def _check_net(self) -> None:
        self._check_fitted()
        if not hasattr(self, "net_"):
            raise InputError("this TwoTower has vectors but no network weights; load it from its .npz or checkpoint")

    def _export(self, batch_size: int = 4096) -> None:
        """Recompute ``user_factors_`` / ``item_factors_`` from the current weights."""
        n_users = self.histories_.shape[0]
        users = np.arange(n_users)
        self.user_factors_ = self._user_vectors(users, self.histories_, self.user_categorical_, self.user_dense_, False)
        drop = self.item_counts_ == 0 if self._arch["item_feature_dim"] else None  # untrained ids: content only
        self.item_factors_ = self._item_vectors(np.arange(self._arch["n_items"]), None, drop, batch_size)

    def _user_vectors(self, users: np.ndarray | None, hist: np.ndarray, cat: Any, dense: Any, drop_id: bool) -> np.ndarray:
        from recsys.models.two_tower_net import encode_users  # torch: see the note after the imports

        width = self.config.dim * self.config.ensemble
        return encode_users(self.net_, self.device_, width, users, hist, cat, dense, drop_id)

    def _item_vectors(self, items: np.ndarray, feats: np.ndarray | None, drop: Any, batch_size: int = 4096) -> np.ndarray:
        from recsys.models.two_tower_net import encode_items  # torch: see the note after the imports

        width = self.config.dim * self.config.ensemble
        return encode_items(self.net_, self.device_, width, items, feats, drop, batch_size)

    def item_vectors(self, item_features: np.ndarray | None = None, drop_ids: bool = False) -> np.ndarray:
        """Item vectors ``(n, dim)`` float32 from the item tower.

        Parameters
        ----------
        item_features : float array (n, F), optional
            Content features to embed; default: the features given to ``fit``. With
            ``n == n_items`` row ``i`` is item ``i``; any other ``n`` (items the model never
            saw) requires ``drop_ids=True``.
        drop_ids : bool
            Ignore the id embeddings and embed from content only: the vector a cold item
            gets. Cold-start evaluation compares these with the warm vectors.
        """
        self._check_net()
        n_items, fdim = self._arch["n_items"], self._arch["item_feature_dim"]
        if drop_ids and not fdim:
            raise InputError("drop_ids=True needs an item tower with content features; fit with item_features")
        feats = None
        if item_features is not None:
            feats = np.asarray(item_features, np.float32)
            if feats.ndim != 2 or feats.shape[1] != fdim:
                raise InputError(f"item_features must have shape (n, {fdim}), got {feats.shape}")
            if feats.shape[0] != n_items and not drop_ids:
                raise InputError(f"{feats.shape[0]} feature rows for {n_items} items: new items need drop_ids=True")
        n = n_items if feats is None else feats.shape[0]
        items = np.arange(n) if n == n_items else np.zeros(n, np.int64)
        return self._item_vectors(items, feats, True if drop_ids else None)

    def user_vectors_from_history(
        self,
        histories: Sequence[Sequence[int]] | np.ndarray,
        user_categorical: np.ndarray | None = None,
        user_dense: np.ndarray | None = None,
    ) -> np.ndarray:
        """Vectors ``(n, dim)`` float32 for users from their item histories alone (no user id).

        ``histories``: one sequence of item indices per user (oldest first; only the last
        ``history_len`` count) or a ``-1``-padded int matrix. This is how users unseen in
        training are scored: ``scores = vectors @ model.item_factors_.T``.
        """
        self._check_net()
        if not self.config.history_dim:
            raise InputError("this model was built without history pooling (history_dim=0); it cannot fold in users")
        hist = pad_histories(histories, self.config.history_len, self._arch["n_items"])
        for name, x in (("user_categorical", user_categorical), ("user_dense", user_dense)):
            if x is not None and len(x) != len(hist):
                raise InputError(f"{name} has {len(x)} rows for {len(hist)} histories")
        if self._arch["cat_cardinalities"] and user_categorical is None:
            user_categorical = np.full((len(hist), len(self._arch["cat_cardinalities"])), -1, np.int64)
        if self._arch["dense_dim"] and user_dense is None:
            user_dense = np.zeros((len(hist), self._arch["dense_dim"]), np.float32)
        return self._user_vectors(None, hist, user_categorical, user_dense, True)

    def recalculate_user(self, item_indices: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Fold-in: a ``(dim,)`` vector from a user's items (oldest first); ``weights`` are ignored."""
        items = np.atleast_1d(np.asarray(item_indices))
        if items.size == 0:
            raise InputError("cannot fold in a user with an empty history; use a popularity fallback")
        return self.user_vectors_from_history([items])[0]

    def foldin_spec(self) -> FoldInSpec:
        """How a bundle folds in a new user: this model's user tower in numpy (``"tower"``), exactly.

        Falls back to ``"mean"`` (mean of the item vectors, an approximation) for towers that
        need user ids, attention pooling or user features (:mod:`recsys.models.tower_foldin`).
        """
        self._check_net()
        return tower_foldin_spec(self.net_.user_tower, self.config.history_len)

    # -- persistence -----------------------------------------------------------------------
    @property
    def _state_arrays(self) -> tuple[str, ...]:  # type: ignore[override]
        base = ("user_factors_", "item_factors_", "histories_", "item_counts_")
        opt = tuple(n for n in ("user_categorical_", "user_dense_") if getattr(self, n, None) is not None)
        return base + opt + tuple(k for k in self.__dict__ if k.startswith(_NET))

    def save(self, path: str | os.PathLike) -> None:
        """One ``.npz``: factors, histories, the net's tensors and the architecture (no pickle)."""
        self._check_net()
        extra = {_NET + k: v.detach().cpu().numpy() for k, v in self.net_.state_dict().items()}
        extra[_NET + "__arch__"] = np.array(json.dumps(self._arch))
        self.__dict__.update(extra)
        try:
            super().save(path)
        finally:
            for k in extra:
                del self.__dict__[k]

    def _after_load(self) -> None:
        import torch  # lazy: see the note after the imports

        arrays = {k[len(_NET) :]: self.__dict__.pop(k) for k in list(self.__dict__) if k.startswith(_NET)}
        self._arch = json.loads(str(arrays.pop("__arch__")))
        for name in ("user_categorical_", "user_dense_"):
            self.__dict__.setdefault(name, None)
        self._load_state({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, resolve_device("cpu"))

    def _load_state(self, state: Mapping[str, Any], device: Any) -> None:
        from recsys.models.two_tower_net import build_net  # torch: see the note after the imports

        self.device_ = device
        self.net_ = build_net(self._arch, self.config, None).to(device)
        self.net_.load_state_dict(state)
        self.net_.eval()

    def save_checkpoint(self, directory: str | os.PathLike) -> None:
        """Trainer-format checkpoint: ``model.pt`` (tensor state dict) + ``config.json``."""
        from recsys.models.checkpoint import save_checkpoint  # torch: see the note after the imports

        self._check_net()
        save_checkpoint(directory, self.net_.state_dict(), {"config": self.get_params(), "arch": self._arch})
        arrays = {"histories": self.histories_, "item_counts": self.item_counts_}
        arrays.update({k: v for k in ("user_categorical_", "user_dense_") if (v := getattr(self, k)) is not None})
        seen = getattr(self, "user_items_", None)
        if seen is not None:  # what recommend(exclude_seen=True) removes
            arrays.update(seen_indptr=seen.indptr, seen_indices=seen.indices, seen_data=seen.data)
        save_npz(os.path.join(directory, "data.npz"), **arrays)

    @classmethod
    def load_checkpoint(cls, directory: str | os.PathLike, device: str = "cpu") -> TwoTower:
        """Rebuild a fitted model from :meth:`save_checkpoint` output (vectors recomputed)."""
        from recsys.models.checkpoint import load_checkpoint  # torch: see the note after the imports

        state, meta = load_checkpoint(directory)
        model = cls(**{k: v for k, v in meta["config"].items() if k != "epoch"})
        model._arch = meta["arch"]
        data = load_npz(os.path.join(directory, "data.npz"))
        model.histories_, model.item_counts_ = data["histories"], data["item_counts"]
        model.user_categorical_, model.user_dense_ = data.get("user_categorical_"), data.get("user_dense_")
        model.n_users_, model.n_items_ = model._arch["n_users"], model._arch["n_items"]
        if "seen_indptr" in data:
            model.user_items_ = sp.csr_matrix(
                (data["seen_data"], data["seen_indices"], data["seen_indptr"]), shape=(model.n_users_, model.n_items_)
            )
        model._load_state(state, resolve_device(device))
        model._export()
        return model

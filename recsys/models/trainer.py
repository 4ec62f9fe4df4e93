"""The two-tower training loop: optimisers, steps, early stopping, checkpoints.

Kept apart from :mod:`recsys.models.two_tower` so the loop can be reused (and
benchmarked against a hand-written one, ``benchmarks/bench_two_tower_throughput.py``)
without the Recommender interface around it. What it samples from and how it saves live
in their own modules, re-exported here because callers import them from the loop:
:class:`TrainData` (:mod:`recsys.models.two_tower_data`), :class:`PairBatches` and
:func:`batch_device` (:mod:`recsys.models.pair_batches`), :func:`save_checkpoint` /
:func:`load_checkpoint` (:mod:`recsys.models.checkpoint`).

* **Optimisers**: AdamW for dense parameters; id embeddings built with ``sparse=True``
  go to :class:`torch.optim.SparseAdam`, which only touches the rows of the batch (the
  only way a 10M-row table trains at GPU speed).
* **Early stopping** on a validation metric computed by a callback; the best epoch's
  weights are restored at the end. With ``ema > 0`` the weights validated, kept and
  exported are a moving average of the trained ones (:mod:`recsys.models.ema`).
* **Batches on the GPU**: when training on CUDA and the pair tables fit, batches are drawn
  on the device (:func:`batch_device`); otherwise built on the host in a prefetch thread.
* **Metrics** (loss, throughput, validation) go to an ``on_epoch`` callback, so MLflow
  logging stays in the pipelines.
* **Checkpoints** are a tensor-only state dict (``model.pt``, read back with
  ``torch.load(weights_only=True)``) plus ``config.json``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from recsys.errors import ConfigError
from recsys.models.checkpoint import load_checkpoint, save_checkpoint
from recsys.models.distributed import DistInfo, all_gather_with_grad, all_reduce_mean, wrap_model
from recsys.models.ema import WeightAverage
from recsys.models.losses import candidate_log_q, sampled_softmax_loss
from recsys.models.pair_batches import PairBatches, batch_device
from recsys.models.prefetch import prefetch
from recsys.models.two_tower_data import TrainData
from recsys.progress import Deadline, Progress, format_seconds

log = logging.getLogger(__name__)

__all__ = ["PairBatches", "TrainData", "Trainer", "batch_device", "load_checkpoint", "save_checkpoint"]

#: ``evaluate(epoch) -> metrics`` with the current weights (validation split only)
Evaluate = Callable[[int], Mapping[str, float]]
#: ``on_epoch(epoch, metrics)``: loss, samples/s and validation metrics of one epoch
OnEpoch = Callable[[int, Mapping[str, float]], None]


class Trainer:
    """Trains a :class:`~recsys.models.towers.TwoTowerNet` with the in-batch sampled softmax.

    Parameters
    ----------
    net : TwoTowerNet
        Already on ``device``.
    config : object with the attributes of :class:`~recsys.models.two_tower.TwoTowerConfig`
    device : torch.device
    dist : DistInfo
        Data-parallel position; single process by default.
    """

    def __init__(self, net: torch.nn.Module, config: Any, device: torch.device, dist: DistInfo | None = None) -> None:
        self.net, self.cfg, self.device = net, config, device
        self.dist = dist or DistInfo()
        self.model = wrap_model(net, self.dist, device)
        sparse = set(map(id, net.sparse_parameters()))
        dense = [p for p in net.parameters() if id(p) not in sparse]
        self.optimizers: list[torch.optim.Optimizer] = [
            torch.optim.AdamW(dense, lr=config.lr, weight_decay=config.weight_decay)
        ]
        if sparse:
            self.optimizers.append(torch.optim.SparseAdam(net.sparse_parameters(), lr=config.sparse_lr or config.lr))
        self.amp = bool(config.amp) and device.type == "cuda"
        self.log_q: torch.Tensor | None = None

    def step(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """One optimisation step on one (local slice of a global) batch; returns the loss."""
        dev, cfg = self.device, self.cfg
        t = {k: (v.to(dev, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        negatives = t["negatives"] if cfg.n_negatives > 0 else None
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=self.amp):
            u, v, neg = self.model(
                t["users"], t["items"], t["history"], t.get("categorical"), t.get("dense"),
                t["drop_user"] if cfg.user_id_dropout > 0 else None,
                t["drop_item"] if cfg.item_id_dropout > 0 else None,
                negatives,
            )  # fmt: skip
        v_all = all_gather_with_grad(v.float())
        ids = t["items_global"]
        log_q = self.log_q
        loss = sampled_softmax_loss(
            u.float(),
            v_all,
            ids,
            temperature=cfg.temperature,
            log_q=None if log_q is None else log_q[ids],
            negatives=None if neg is None else neg.float(),
            negative_ids=negatives,
            negative_log_q=None if log_q is None or negatives is None else log_q[negatives],
            remove_accidental_hits=cfg.remove_accidental_hits,
            sample_weight=t.get("weight"),
            positive_offset=t["offset"],
        )
        if "weight" in t:  # weighted mean over the *global* batch (equal to single-process)
            loss = loss * (t["weight"].sum() / t["weight_total"].clamp_min(1e-12) * self.dist.world_size)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in self.optimizers:
            opt.step()
        return loss.detach()

    def fit(
        self,
        data: TrainData,
        evaluate: Evaluate | None = None,
        on_epoch: OnEpoch | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_config: Mapping[str, Any] | None = None,
        show_progress: bool = False,
        deadline: Deadline | None = None,
    ) -> list[dict[str, float]]:
        """Train for ``config.epochs`` epochs (fewer with early stopping or a budget); returns per-epoch metrics.

        With ``evaluate``, the metric ``config.metric`` is computed every
        ``config.eval_every`` epochs; the best epoch's weights are restored at the end and
        training stops after ``config.patience`` evaluations without improvement.
        ``checkpoint_dir`` receives the best weights each time they improve (main rank only).

        Budget (``deadline``, default ``config.max_minutes`` from the start of this call): with
        validation, an epoch is not started when the last one (training + validation) would
        not fit in what is left, since an unvalidated epoch is thrown away; without it,
        training runs to the deadline, stopping mid-epoch. Either way the weights kept are
        the best validated ones (or the last, averaged ones without validation); an epoch
        cut before any validation is validated, so there always is a best.
        ``config.samples_per_epoch`` makes each epoch a fresh random sample of pairs.
        :attr:`stop_reason` says why training ended: ``"epochs"``, ``"patience"`` or
        ``"budget"``.
        """
        cfg = self.cfg
        if deadline is None:
            deadline = Deadline(_budget_seconds(cfg), clock=_clock)
        batches = PairBatches(
            data, cfg.batch_size, cfg.seed, user_id_dropout=cfg.user_id_dropout, item_id_dropout=cfg.item_id_dropout,
            history_dropout=cfg.history_dropout, short_history=cfg.short_history,
            short_history_len=cfg.short_history_len, n_negatives=cfg.n_negatives, rank=self.dist.rank, world_size=self.dist.world_size,
            device=batch_device(data, self.device),
        )  # fmt: skip
        per_epoch = getattr(cfg, "samples_per_epoch", None)
        n_batches = min(len(batches), max(1, math.ceil(per_epoch / batches.batch_size))) if per_epoch else len(batches)
        if cfg.logq:
            q = candidate_log_q(data.item_counts(), batches.batch_size, cfg.n_negatives)
            self.log_q = torch.from_numpy(q).to(self.device)
        host_to_gpu = batches.device.type == "cpu" and self.device.type == "cuda"
        loader = DataLoader(batches, batch_size=None, num_workers=0, pin_memory=host_to_gpu)
        history: list[dict[str, float]] = []
        best: dict[str, Any] = {}
        since_best = 0
        self.stop_reason = "epochs"
        last_epoch_s = 0.0  # wall time of the last whole epoch, validation included
        ema = WeightAverage(self.net, cfg.ema) if cfg.ema > 0 else None
        for epoch in range(1, cfg.epochs + 1):
            if epoch > 1 and deadline.limited:
                # with validation an epoch must run whole (a cut one is thrown away), and
                # under DDP ranks decide together between epochs: start one only if it fits
                whole = evaluate is not None or self.dist.is_distributed
                if self._agree(not deadline.fits(last_epoch_s) if whole else deadline.expired()):
                    self.stop_reason = "budget"
                    log.info("budget: %s left, an epoch takes %s: stopping before epoch %d",
                             format_seconds(deadline.remaining()), format_seconds(last_epoch_s), epoch)  # fmt: skip
                    break
            batches.set_epoch(epoch)
            self.net.train()
            t0, total, n = _clock(), torch.zeros((), device=self.device), 0
            # host-built batches for a GPU: build them in a thread (the GPU step is short)
            it = prefetch(loader) if host_to_gpu else iter(loader)
            cut = False
            with Progress(f"two-tower epoch {epoch}/{cfg.epochs}", n_batches, "batches", logger=log,
                          show_progress=show_progress and self.dist.is_main, closing_line=False) as bar:  # fmt: skip
                for batch in it:
                    total += self.step(batch)
                    n += 1
                    if ema is not None:
                        ema.update(self.net)
                    bar.update()
                    if n >= n_batches:
                        break
                    # mid-epoch stop: single process only (ranks would disagree on the step)
                    if deadline.limited and not self.dist.is_distributed and deadline.expired():
                        cut = True
                        break
            if hasattr(it, "close"):
                it.close()  # stops a prefetch thread that ran ahead
            loss = float(all_reduce_mean(total)) / max(n, 1)  # the global-batch loss under DDP
            if not math.isfinite(loss):
                raise ConfigError(f"training diverged at epoch {epoch} (loss {loss}); lower lr or raise temperature")
            row: dict[str, float] = {
                "epoch": epoch,
                "loss": loss,
                "samples_per_s": n * batches.batch_size / max(_clock() - t0, 1e-9),
            }
            if cut:
                row["epoch_fraction"] = n / n_batches
            stop = False
            due = epoch % cfg.eval_every == 0 or epoch == cfg.epochs
            if evaluate is not None and ((due and not cut) or (cut and not best)):
                self.net.eval()
                with ema.swapped(self.net) if ema is not None else contextlib.nullcontext():
                    metrics = dict(evaluate(epoch))
                if cfg.metric not in metrics:
                    raise ConfigError(f"validation returned no {cfg.metric!r}; it has {sorted(metrics)}")
                row.update({f"valid_{k}": float(v) for k, v in metrics.items()})
                score = float(metrics[cfg.metric])
                if not best or score > best["score"]:
                    # the evaluated weights: the average when there is one
                    state = ema.state_dict() if ema is not None else copy.deepcopy(self.net.state_dict())
                    best = {"score": score, "epoch": epoch, "state": state}
                    since_best = 0
                    if checkpoint_dir is not None and self.dist.is_main:
                        save_checkpoint(checkpoint_dir, best["state"], {**(checkpoint_config or {}), "epoch": epoch})
                else:
                    since_best += 1
                    if cfg.patience is not None and since_best >= cfg.patience:
                        stop, self.stop_reason = True, "patience"
            last_epoch_s = _clock() - t0
            history.append(row)
            shown = ("loss", "samples_per_s", f"valid_{cfg.metric}")
            left = f", budget left {format_seconds(deadline.remaining())}" if deadline.limited else ""
            log.info("epoch %d/%d: %s (%s%s)", epoch, cfg.epochs, ", ".join(f"{k}={row[k]:.4g}" for k in shown if k in row),
                     format_seconds(last_epoch_s), left)  # fmt: skip
            if on_epoch is not None:
                on_epoch(epoch, row)
            if cut:
                self.stop_reason = "budget"
                log.info("budget of %s used up during epoch %d (%.0f%% done)", format_seconds(deadline.seconds or 0.0),
                         epoch, 100 * n / n_batches)  # fmt: skip
                break
            if stop:
                log.info("early stop after epoch %d (best epoch %d)", epoch, best["epoch"])
                break
        if best:
            self.net.load_state_dict(best["state"])
            self.best_epoch, self.best_score = best["epoch"], best["score"]
        else:
            if ema is not None:  # no validation: export the averaged weights of the last step
                self.net.load_state_dict(ema.state_dict())
            self.best_epoch, self.best_score = len(history), float("nan")
            if checkpoint_dir is not None and self.dist.is_main:
                save_checkpoint(checkpoint_dir, self.net.state_dict(), {**(checkpoint_config or {}), "epoch": len(history)})
        self.net.eval()
        return history

    def _agree(self, flag: bool) -> bool:
        """``flag`` on any rank (one all-reduce under DDP, so every rank stops at the same epoch)."""
        if not self.dist.is_distributed:
            return flag
        return float(all_reduce_mean(torch.tensor(float(flag), device=self.device))) > 0


def _budget_seconds(cfg: Any) -> float | None:
    """The config's budget in seconds (``max_minutes``; configs without one have none)."""
    minutes = getattr(cfg, "max_minutes", None)
    return float(minutes) * 60.0 if minutes else None


def budget_clock() -> float:
    """The clock budgets are measured on (monotonic seconds); :class:`TwoTower` shares it."""
    return _clock()


#: the trainer's clock; tests replace it to make budgets deterministic
_clock = time.monotonic

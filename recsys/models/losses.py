"""Retrieval losses for two-tower training, as pure functions of tensors.

The loss is a sampled softmax: each user in a batch must pick its own positive item out of
a candidate set made of every positive item in the batch ("in-batch negatives", the
standard in YouTube/TFRS/TorchRec retrieval) plus, optionally, items drawn uniformly from
the catalogue ("mixed negative sampling", Yang et al., WWW 2020). Three corrections make
the sampled softmax a good estimate of the full one:

* **temperature**: logits are ``<u, v> / temperature``; with L2-normalised towers a small
  temperature (0.05-0.2) is what lets cosine scores spread enough to express confidence;
* **accidental-hit removal**: when the same item is the positive of two rows, it is not a
  negative for either of them (otherwise the model is pushed away from a correct answer);
* **logQ correction** (Yi et al., RecSys 2019): popular items appear as in-batch negatives
  more often than a full softmax would weigh them, so each candidate's logit is reduced by
  the log of its expected number of occurrences in the candidate set. Without it, in-batch
  training over-penalises popular items.

Functions here hold no state and never touch devices or optimisers, so they are easy to
check by hand (see ``tests/test_losses.py``) and reuse in custom loops.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from recsys.errors import InputError

__all__ = ["candidate_log_q", "sampled_softmax_loss"]


def candidate_log_q(item_counts: np.ndarray, batch_size: int, n_negatives: int = 0) -> np.ndarray:
    """Log of each item's expected number of occurrences among a step's candidates.

    With ``B`` positives drawn from the training pairs (item ``j`` with probability
    ``p_j = count_j / sum(count)``) and ``M`` extra negatives drawn uniformly from ``N``
    items, item ``j`` appears ``B * p_j + M / N`` times in expectation. That is the ``Q``
    of the logQ correction for both kinds of candidate, which is what makes the correction
    consistent when in-batch and uniform negatives are mixed.

    Parameters
    ----------
    item_counts : array of shape (n_items,)
        Training interactions per item (the sampling frequency of in-batch candidates).
    batch_size : int
        Positives per step (the global batch under data parallelism).
    n_negatives : int
        Uniform negatives per step.

    Returns
    -------
    float32 array of shape (n_items,)
        ``log(B * p_j + M / N)``; items that can never be sampled get ``log`` of a tiny
        floor instead of ``-inf`` so the array stays finite.
    """
    counts = np.asarray(item_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise InputError("item_counts must be a non-empty 1-D array (interactions per item)")
    if (counts < 0).any() or not np.isfinite(counts).all():
        raise InputError("item_counts must be finite and non-negative")
    total = counts.sum()
    if total <= 0:
        raise InputError("item_counts sums to zero: there is nothing to train on")
    expected = batch_size * counts / total + n_negatives / counts.size
    return np.log(np.maximum(expected, 1e-12)).astype(np.float32)


def sampled_softmax_loss(
    query: torch.Tensor,
    candidates: torch.Tensor,
    candidate_ids: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    log_q: torch.Tensor | None = None,
    negatives: torch.Tensor | None = None,
    negative_ids: torch.Tensor | None = None,
    negative_log_q: torch.Tensor | None = None,
    remove_accidental_hits: bool = True,
    sample_weight: torch.Tensor | None = None,
    positive_offset: int = 0,
) -> torch.Tensor:
    """In-batch sampled softmax cross-entropy with optional corrections.

    Row ``i`` of ``query`` is a user whose positive item is column ``positive_offset + i``
    of ``candidates``; every other column (and every row of ``negatives``) is a negative.

    Parameters
    ----------
    query : tensor (b, d)
        User vectors.
    candidates : tensor (B, d), B >= positive_offset + b
        Item vectors of the batch's positives. Under data parallelism this is the
        *global* batch (gathered from every rank) and ``positive_offset`` is where this
        rank's rows start, so every rank sees the same negatives as single-process
        training would.
    candidate_ids : int tensor (B,), optional
        Item index of each candidate column; needed for accidental-hit removal.
    temperature : float
        Logits are divided by it. Must be positive.
    log_q : tensor (B,), optional
        Log sampling probability (up to a constant) of each candidate, subtracted from
        its logit (logQ correction; see :func:`candidate_log_q`).
    negatives : tensor (M, d), optional
        Extra negatives (e.g. uniformly sampled items) appended to the candidate set.
    negative_ids : int tensor (M,), optional
        Their item indices (for accidental-hit removal against each row's positive).
    negative_log_q : tensor (M,), optional
        Their log sampling probabilities; required when ``log_q`` is given and negatives
        are used, so both kinds of candidate are corrected on the same scale.
    remove_accidental_hits : bool
        Mask out (logit ``-inf``) candidates that are the same item as the row's positive,
        except the positive column itself. Needs ``candidate_ids``.
    sample_weight : tensor (b,), optional
        Per-row weights; the loss is ``sum(w * l) / sum(w)``.
    positive_offset : int
        Column of row 0's positive in ``candidates``.

    Returns
    -------
    scalar tensor (float32)
        Mean (or weighted mean) cross-entropy of picking the positive column.
    """
    if temperature <= 0:
        raise InputError(f"temperature must be positive, got {temperature}")
    b, n_cand = query.shape[0], candidates.shape[0]
    if positive_offset < 0 or positive_offset + b > n_cand:
        raise InputError(f"positives [{positive_offset}, {positive_offset + b}) fall outside {n_cand} candidates")
    if negatives is not None and remove_accidental_hits and negative_ids is None:
        raise InputError("accidental-hit removal with extra negatives needs negative_ids")
    if log_q is not None and negatives is not None and negative_log_q is None:
        raise InputError("log_q is given but negative_log_q is not; pass both so all candidates are corrected")

    logits = (query @ candidates.T).float() / temperature
    if log_q is not None:
        logits = logits - log_q.float()[None, :]
    labels = torch.arange(b, device=query.device) + positive_offset
    if remove_accidental_hits:
        if candidate_ids is None:
            raise InputError("remove_accidental_hits=True needs candidate_ids (item index of each candidate)")
        pos_ids = candidate_ids[labels]
        hit = pos_ids[:, None] == candidate_ids[None, :]
        hit[torch.arange(b, device=query.device), labels] = False
        logits = logits.masked_fill(hit, float("-inf"))
    if negatives is not None:
        neg_logits = (query @ negatives.T).float() / temperature
        if negative_log_q is not None:
            neg_logits = neg_logits - negative_log_q.float()[None, :]
        if remove_accidental_hits:
            pos_ids = candidate_ids[labels]  # type: ignore[index]
            neg_logits = neg_logits.masked_fill(pos_ids[:, None] == negative_ids[None, :], float("-inf"))  # type: ignore[index]
        logits = torch.cat([logits, neg_logits], dim=1)
    losses = F.cross_entropy(logits, labels, reduction="none")
    if sample_weight is None:
        return losses.mean()
    w = sample_weight.float()
    return (losses * w).sum() / w.sum().clamp_min(1e-12)

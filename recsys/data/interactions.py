"""Training-data builders: CSR matrices for MF, pair tables and histories for two-tower.

All functions take contiguous int indices (as stored in a dataset directory) and return
numpy / scipy objects; nothing here knows external ids.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys.errors import InputError


def to_csr(
    user_idx: np.ndarray,
    item_idx: np.ndarray,
    weight: np.ndarray | None = None,
    shape: tuple[int, int] | None = None,
) -> sp.csr_matrix:
    """Build a float32 user x item CSR matrix; duplicate (user, item) pairs are summed.

    Parameters
    ----------
    user_idx, item_idx : int arrays of equal length
    weight : float array or None
        Confidence per interaction; ``None`` means 1.0 for each.
    shape : (n_users, n_items) or None
        Defaults to ``(max(user_idx) + 1, max(item_idx) + 1)``. Pass the id-map sizes so
        that matrices of different splits line up.
    """
    user_idx = np.asarray(user_idx, dtype=np.int64)
    item_idx = np.asarray(item_idx, dtype=np.int64)
    if user_idx.shape != item_idx.shape:
        raise InputError("user_idx and item_idx must have the same length")
    w = np.ones(len(user_idx), np.float32) if weight is None else np.asarray(weight, dtype=np.float32)
    if shape is None:
        shape = (int(user_idx.max(initial=-1)) + 1, int(item_idx.max(initial=-1)) + 1)
    if len(user_idx) and (user_idx.min() < 0 or item_idx.min() < 0 or user_idx.max() >= shape[0] or item_idx.max() >= shape[1]):
        raise InputError(f"indices out of range for a matrix of shape {shape}")
    m = sp.csr_matrix((w, (user_idx, item_idx)), shape=shape, dtype=np.float32)
    m.sum_duplicates()
    m.sort_indices()
    return m


def frame_to_csr(df: pl.DataFrame, shape: tuple[int, int], value: str | None = "weight") -> sp.csr_matrix:
    """CSR matrix from a split table (columns ``user_idx``, ``item_idx`` and ``value``)."""
    w = df[value].to_numpy() if value is not None and value in df.columns else None
    return to_csr(df["user_idx"].to_numpy(), df["item_idx"].to_numpy(), w, shape)


def pair_table(df: pl.DataFrame) -> pl.DataFrame:
    """(user, item) training pairs, one row per interaction, ordered by user then time.

    The two-tower trainer samples batches from these rows; ordering by time lets
    :func:`user_histories` and the pairs agree on what "recent" means.
    """
    sort_cols = ["user_idx", "timestamp"] if "timestamp" in df.columns else ["user_idx"]
    cols = [c for c in ("user_idx", "item_idx", "weight", "timestamp") if c in df.columns]
    return df.select(cols).sort(sort_cols, nulls_last=True, maintain_order=True)


def user_histories(df: pl.DataFrame, n_users: int, max_len: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Each user's last ``max_len`` items as a padded matrix.

    Returns
    -------
    items : int64 array (n_users, max_len)
        Item indices, most recent last, left-padded with ``-1``.
    lengths : int64 array (n_users,)
        Number of real (non-padding) entries per row.
    """
    pairs = pair_table(df)
    out = np.full((n_users, max_len), -1, dtype=np.int64)
    lengths = np.zeros(n_users, dtype=np.int64)
    if pairs.height == 0:
        return out, lengths
    u = pairs["user_idx"].to_numpy().astype(np.int64)
    it = pairs["item_idx"].to_numpy().astype(np.int64)
    # position of each row counted from the end of its user's run
    starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1]
    counts = np.diff(np.r_[starts, len(u)])
    run_end = np.repeat(starts + counts, counts)
    from_end = run_end - np.arange(len(u)) - 1
    keep = from_end < max_len
    out[u[keep], max_len - 1 - from_end[keep]] = it[keep]
    np.add.at(lengths, u[keep], 1)
    return out, lengths

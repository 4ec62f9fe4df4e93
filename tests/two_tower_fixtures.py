"""A tiny synthetic dataset with an obvious answer, shared by the two-tower tests.

``N_GROUPS`` groups of ``GROUP_SIZE`` items; each user belongs to one group and has
interacted with every item of it but one (a different one per user), which is held out.
Another user's history contains the held-out item, so a model that learned the groups
ranks it first once the user's own items are excluded.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
import torch

N_GROUPS, GROUP_SIZE, USERS_PER_GROUP = 4, 5, 10
N_ITEMS = N_GROUPS * GROUP_SIZE
N_USERS = N_GROUPS * USERS_PER_GROUP


def synthetic() -> tuple[sp.csr_matrix, pl.DataFrame, np.ndarray, np.ndarray]:
    """(train csr, train pairs, held-out item per user, item features one-hot by group)."""
    rows, cols, held = [], [], np.zeros(N_USERS, np.int64)
    for u in range(N_USERS):
        g = u % N_GROUPS
        items = g * GROUP_SIZE + np.arange(GROUP_SIZE)
        held[u] = items[(u // N_GROUPS) % GROUP_SIZE]
        for i in items:
            if i != held[u]:
                rows.append(u)
                cols.append(int(i))
    pairs = pl.DataFrame({"user_idx": rows, "item_idx": cols, "weight": np.ones(len(rows), np.float32)},
                         schema={"user_idx": pl.Int32, "item_idx": pl.Int32, "weight": pl.Float32})  # fmt: skip
    csr = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(N_USERS, N_ITEMS))
    feats = np.zeros((N_ITEMS, N_GROUPS), np.float32)
    feats[np.arange(N_ITEMS), np.arange(N_ITEMS) // GROUP_SIZE] = 1.0
    return csr, pairs, held, feats


#: small, fast settings that learn the synthetic groups in well under a second per epoch
FAST = {"dim": 16, "user_id_dim": 8, "item_id_dim": 8, "history_dim": 16, "history_len": 8, "hidden": [],
        "epochs": 20, "batch_size": 32, "lr": 1e-2, "temperature": 0.1, "device": "cpu", "patience": None}  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors on a shared 2-core machine: extra intra-op threads only add contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

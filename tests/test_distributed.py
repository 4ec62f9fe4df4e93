"""Data-parallel training with 2 gloo processes on CPU matches single-process training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recsys.errors import ConfigError
from recsys.models.distributed import DistInfo, all_gather_with_grad, cleanup, init_distributed
from recsys.models.two_tower import TwoTower
from tests.two_tower_fixtures import FAST, one_torch_thread, synthetic  # noqa: F401

# dense grads (DDP all-reduce), uniform negatives, id dropout and weights: every path of the step
PARAMS = {**FAST, "epochs": 3, "batch_size": 32, "n_negatives": 4, "use_weights": True, "hidden": [16]}
ENSEMBLE = {**PARAMS, "epochs": 2, "ensemble": 2, "short_history": 0.3}


def _check_gather(rank: int) -> dict[str, np.ndarray]:
    x = torch.full((2, 3), float(rank + 1), requires_grad=True)
    y = all_gather_with_grad(x)
    (y * torch.arange(4.0)[:, None]).sum().backward()  # row weights 0..3 over the gathered rows
    return {"gather_y": y.detach().numpy(), "gather_grad": x.grad.numpy()}


def _worker(rank: int, world: int, init: str, out: str) -> None:
    # one spawn for both checks: starting processes dominates the test's time
    torch.set_num_threads(1)
    info = init_distributed("gloo", init, rank=rank, world_size=world)
    try:
        gathered = _check_gather(rank)
        csr, pairs, _, feats = synthetic()
        m = TwoTower(**PARAMS).fit(csr, pairs=pairs, item_features=feats)
        ens = TwoTower(**ENSEMBLE).fit(csr, pairs=pairs, item_features=feats)
        if rank == 1:
            np.savez(out, u=m.user_factors_, v=m.item_factors_, loss=[h["loss"] for h in m.history_],
                     ens_v=ens.item_factors_, **gathered)  # fmt: skip
    finally:
        cleanup()


@pytest.fixture(scope="module")
def ddp_result(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, f"file://{d / 'pg'}", str(d / "out.npz")), nprocs=2, join=True)
    return np.load(d / "out.npz")


def test_two_gloo_processes_match_single_process_training(ddp_result):
    csr, pairs, _, feats = synthetic()
    single = TwoTower(**PARAMS).fit(csr, pairs=pairs, item_features=feats)
    # rank 1's copy: DDP keeps every rank's weights identical, so any rank's vectors are the result
    assert np.allclose(ddp_result["loss"], [h["loss"] for h in single.history_], atol=1e-4)
    assert np.allclose(ddp_result["u"], single.user_factors_, atol=1e-4)
    assert np.allclose(ddp_result["v"], single.item_factors_, atol=1e-4)


def test_ensemble_members_train_data_parallel_like_single_process(ddp_result):
    csr, pairs, _, feats = synthetic()
    single = TwoTower(**ENSEMBLE).fit(csr, pairs=pairs, item_features=feats)
    assert ddp_result["ens_v"].shape == single.item_factors_.shape == (csr.shape[1], 2 * FAST["dim"])
    assert np.allclose(ddp_result["ens_v"], single.item_factors_, atol=1e-4)


def test_gather_with_grad_concatenates_in_rank_order_and_sums_gradients(ddp_result):
    assert np.array_equal(ddp_result["gather_y"][:, 0], [1, 1, 2, 2])
    # each rank's loss sends weights 2 and 3 to rank 1's rows; the backward sums both ranks
    assert np.array_equal(ddp_result["gather_grad"][:, 0], [4.0, 6.0])


def test_single_process_helpers_are_no_ops():
    assert not dist.is_initialized()
    x = torch.ones(2, 2)
    assert all_gather_with_grad(x) is x
    assert DistInfo.current() == DistInfo() and DistInfo().is_main and not DistInfo().is_distributed
    cleanup()  # nothing to leave: no error


def test_rejects_unknown_backend():
    with pytest.raises(ConfigError, match="backend"):
        init_distributed("mpi")


def test_rank_slices_of_seeded_batches_reassemble_the_single_process_batches():
    from recsys.models.trainer import PairBatches, TrainData

    csr, pairs, _, _ = synthetic()
    hist = np.tile(np.arange(8), (csr.shape[0], 1))
    data = TrainData(users=pairs["user_idx"].to_numpy(), items=pairs["item_idx"].to_numpy(), weights=None, histories=hist,
                     user_categorical=None, user_dense=None, n_items=csr.shape[1])  # fmt: skip
    kw = {"user_id_dropout": 0.3, "item_id_dropout": 0.3, "history_dropout": 0.8, "short_history": 0.2, "n_negatives": 3}
    single = list(PairBatches(data, 32, seed=5, **kw))
    ranks = [list(PairBatches(data, 32, seed=5, rank=r, world_size=2, **kw)) for r in range(2)]
    assert len(single) == len(ranks[0]) == 160 // 32
    for i, b in enumerate(single):
        for key in ("users", "items", "history", "drop_user", "drop_item"):
            assert torch.equal(b[key], torch.cat([ranks[0][i][key], ranks[1][i][key]])), key
        assert torch.equal(b["negatives"], ranks[1][i]["negatives"]) and ranks[1][i]["offset"] == 16
        assert (b["history"] == b["items"][:, None]).sum() == 0  # the target never leaks into the history
    kept = (single[0]["history"] >= 0).float().mean()
    assert 0.2 < kept < 0.9  # history dropout thinned the rows (keep rate ~U(0.2, 1))
    with pytest.raises(ConfigError, match="divisible"):
        PairBatches(data, 31, seed=0, world_size=2)

"""The towers: shapes, normalisation, id dropout, history pooling and sparse gradients."""

from __future__ import annotations

import pytest
import torch

from recsys.errors import ConfigError
from recsys.models.towers import ItemTower, TwoTowerNet, UserTower


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_item_tower_outputs_unit_vectors_of_dim():
    t = ItemTower(10, 8, id_dim=4, features=torch.rand(10, 3), hidden=[16])
    v = t(torch.arange(10))
    assert v.shape == (10, 8)
    assert torch.allclose(v.norm(dim=1), torch.ones(10), atol=1e-5)


def test_dropping_the_item_id_uses_content_only():
    feats = torch.rand(6, 3)
    t = ItemTower(6, 4, id_dim=4, features=feats)
    items = torch.arange(6)
    dropped = t(items, drop_id=True)
    with torch.no_grad():
        t.id_emb.weight.zero_()
    assert torch.allclose(dropped, t(items), atol=1e-6)  # == an id embedding of zeros
    # content override: features passed in (for items outside the table) give the same vectors
    assert torch.allclose(dropped, t(torch.zeros(6, dtype=torch.long), True, feats), atol=1e-6)


def test_row_mask_drops_only_masked_rows():
    t = ItemTower(4, 4, id_dim=4, features=torch.rand(4, 2))
    items = torch.arange(4)
    mask = torch.tensor([True, False, True, False])
    out = t(items, drop_id=mask)
    assert torch.allclose(out[mask], t(items, drop_id=True)[mask], atol=1e-6)
    assert torch.allclose(out[~mask], t(items)[~mask], atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_history_padding_is_ignored(pooling):
    t = UserTower(3, 10, 4, id_dim=0, history_dim=4, history_len=4, pooling=pooling)
    a = t(None, torch.tensor([[-1, -1, 2, 5]]))
    b = t(None, torch.tensor([[-1, 2, 5, -1]]).roll(1, 1))  # same items, same positions
    assert torch.allclose(a, b, atol=1e-6)
    empty = t(None, torch.tensor([[-1, -1, -1, -1]]))
    assert torch.isfinite(empty).all()


def test_mean_pooling_is_the_mean_of_history_embeddings():
    t = UserTower(2, 5, 3, id_dim=0, history_dim=3, history_len=3, pooling="mean")
    pooled = t.pool_history(torch.tensor([[-1, 1, 3]]))
    w = t.hist_emb.weight
    assert torch.allclose(pooled[0], (w[2] + w[4]) / 2, atol=1e-6)  # indices shift by one (row 0 = padding)


def test_user_tower_reads_id_history_and_features():
    t = UserTower(5, 7, 6, id_dim=4, history_dim=4, history_len=3, cat_cardinalities=[3, 2], dense_dim=2, hidden=[8])
    out = t(torch.tensor([0, 4]), torch.tensor([[-1, 1, 2], [3, 4, 5]]), torch.tensor([[0, 1], [-1, 0]]), torch.rand(2, 2))
    assert out.shape == (2, 6)
    with pytest.raises(ConfigError, match="categorical"):
        t(torch.tensor([0]), torch.tensor([[1, 2, 3]]))


def test_id_free_user_tower_works_without_user_ids():
    t = UserTower(5, 7, 6, id_dim=4, history_dim=4, history_len=3)
    h = torch.tensor([[1, 2, 3]])
    assert torch.allclose(t(None, h), t(torch.tensor([2]), h, drop_id=True), atol=1e-6)


def test_sparse_embeddings_get_sparse_gradients():
    net = TwoTowerNet(UserTower(5, 7, 4, history_len=3, sparse=True), ItemTower(7, 4, sparse=True))
    params = net.sparse_parameters()
    assert len(params) == 3  # user id, history, item id
    u, v, _ = net(torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([[-1, 1, 2], [-1, -1, 3]]))
    (u * v).sum().backward()
    assert all(p.grad.is_sparse for p in params)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: ItemTower(3, 4, id_dim=0), "id embedding"),
        (lambda: ItemTower(3, 4, features=torch.rand(2, 5)), "shape"),
        (lambda: UserTower(3, 3, 4, pooling="max"), "pooling"),
        (lambda: UserTower(3, 3, 4, id_dim=0, history_dim=0), "at least one input"),
    ],
)
def test_rejects_invalid_tower_configs_with_reason(build, match):
    with pytest.raises(ConfigError, match=match):
        build()

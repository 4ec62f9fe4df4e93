"""The two-tower's wall-clock budget (issue 18): it stops on time and keeps the best weights.

Time is made deterministic by replacing the trainer's clock with one that advances one
second per optimizer step, so "a budget of 30 s" means "30 steps" on any machine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.cli import main
from recsys.device import resolve_device
from recsys.errors import ConfigError
from recsys.models import trainer as trainer_mod
from recsys.models.trainer import load_checkpoint
from recsys.models.two_tower import TwoTower, TwoTowerConfig
from recsys.models.two_tower_config import pairs_per_epoch
from tests.two_tower_fixtures import FAST, N_USERS, one_torch_thread, synthetic  # noqa: F401

STEPS_PER_EPOCH = 5  # 160 training pairs of the synthetic set / batch_size 32


@pytest.fixture(scope="module")
def data():
    return synthetic()


@pytest.fixture
def step_clock(monkeypatch):
    """The trainer's clock reads the number of optimizer steps taken so far (1 step = 1 s)."""
    steps = {"n": 0}
    real_step = trainer_mod.Trainer.step

    def counting_step(self, batch):
        steps["n"] += 1
        return real_step(self, batch)

    monkeypatch.setattr(trainer_mod.Trainer, "step", counting_step)
    monkeypatch.setattr(trainer_mod, "_clock", lambda: float(steps["n"]))
    return steps


def test_budget_stops_before_the_epoch_that_would_overrun_and_publishes_the_best_validated_weights(
        data, step_clock, tmp_path):
    csr, pairs, _, feats = data
    scripted = [0.1, 0.3, 0.2, 0.25, 0.1, 0.1, 0.1, 0.1]  # epoch 2 is the best
    seen_vectors = []

    def validation(model):
        seen_vectors.append(model.user_factors_.copy())
        return {"ndcg@10": scripted[len(seen_vectors) - 1]}

    budget_steps = 6 * STEPS_PER_EPOCH + 2  # six epochs fit, the seventh would not
    m = TwoTower(**{**FAST, "ema": 0.9, "max_minutes": budget_steps / 60}).fit(
        csr, pairs=pairs, item_features=feats, validation=validation, checkpoint_dir=tmp_path)
    assert m.stop_reason_ == "budget"
    assert len(m.history_) == 6 < FAST["epochs"] and step_clock["n"] == 6 * STEPS_PER_EPOCH
    valid = [r["valid_ndcg@10"] for r in m.history_]
    assert m.best_score_ == max(valid) == 0.3 and m.best_epoch_ == 2
    # the published vectors are the ones validated at the best epoch, and so is the checkpoint
    assert np.array_equal(m.user_factors_, seen_vectors[1])
    state, meta = load_checkpoint(tmp_path)
    assert meta["epoch"] == 2
    assert all(torch.equal(state[k], v) for k, v in m.net_.state_dict().items())


def test_budget_cut_during_the_first_epoch_still_validates_it(data, step_clock):
    csr, pairs, _, feats = data
    m = TwoTower(**{**FAST, "max_minutes": 2 / 60}).fit(
        csr, pairs=pairs, item_features=feats, validation=lambda model: {"ndcg@10": 0.5})
    assert m.stop_reason_ == "budget" and len(m.history_) == 1
    assert m.history_[0]["epoch_fraction"] == pytest.approx(2 / STEPS_PER_EPOCH)
    assert m.best_epoch_ == 1 and m.best_score_ == 0.5


def test_without_validation_the_budget_cuts_mid_epoch_and_records_the_fraction(data, step_clock):
    csr, pairs, _, feats = data
    m = TwoTower(**{**FAST, "max_minutes": (2 * STEPS_PER_EPOCH + 2) / 60}).fit(csr, pairs=pairs, item_features=feats)
    assert m.stop_reason_ == "budget" and step_clock["n"] == 2 * STEPS_PER_EPOCH + 2
    assert [r["epoch"] for r in m.history_] == [1, 2, 3]
    assert m.history_[-1]["epoch_fraction"] == pytest.approx(2 / STEPS_PER_EPOCH)
    assert np.isfinite(m.user_factors_).all()


def test_ensemble_members_share_one_budget(data, step_clock):
    csr, pairs, _, feats = data
    m = TwoTower(**{**FAST, "ensemble": 2, "max_minutes": 4 * STEPS_PER_EPOCH / 60}).fit(
        csr, pairs=pairs, item_features=feats)
    # member 0 gets half (2 epochs), member 1 as many epochs in the half left
    assert len(m.history_) == 2 and step_clock["n"] == 4 * STEPS_PER_EPOCH
    assert m.stop_reason_ == "budget"
    assert m.user_factors_.shape[1] == 2 * FAST["dim"]


def test_no_budget_trains_every_epoch_and_says_so(data, step_clock):
    csr, pairs, _, feats = data
    m = TwoTower(**{**FAST, "epochs": 3, "max_minutes": 0}).fit(csr, pairs=pairs, item_features=feats)
    assert m.stop_reason_ == "epochs" and len(m.history_) == 3 and step_clock["n"] == 3 * STEPS_PER_EPOCH


def test_patience_is_reported_as_the_stop_reason(data, step_clock):
    csr, pairs, _, feats = data
    m = TwoTower(**{**FAST, "patience": 2}).fit(csr, pairs=pairs, item_features=feats,
                                                validation=lambda model: {"ndcg@10": 0.1})
    assert m.stop_reason_ == "patience" and len(m.history_) == 3


def test_sampled_epochs_train_the_sample_size_in_steps(data, step_clock):
    csr, pairs, _, feats = data
    m = TwoTower(**{**FAST, "epochs": 3, "samples_per_epoch": 64}).fit(csr, pairs=pairs, item_features=feats)
    assert step_clock["n"] == 3 * 2 and len(m.history_) == 3
    assert pairs_per_epoch(1000, 64) == 64 and pairs_per_epoch(10, 64) == 10 and pairs_per_epoch(10, None) == 10


@pytest.mark.parametrize("field, value", [
    ("max_minutes", -1), ("max_minutes", "abc"), ("max_minutes", True), ("max_minutes", float("nan")),
    ("samples_per_epoch", -5), ("samples_per_epoch", 1.5),
])
def test_bad_budget_values_are_config_errors(field, value):
    with pytest.raises(ConfigError, match=field):
        TwoTowerConfig(**{field: value}).validate()


@pytest.mark.parametrize("value", [None, 0, 0.5, 30])
def test_no_budget_or_a_positive_one_is_valid(value):
    TwoTowerConfig(max_minutes=value).validate()
    assert TwoTowerConfig(max_minutes=value).budget_seconds == (value * 60 if value else None)


@pytest.mark.parametrize("override", ["models.two-tower.max_minutes=-1", 'models.two-tower.max_minutes="soon"',
                                      "models.two-tower.samples_per_epoch=-3"])
def test_recsys_run_with_a_bad_budget_exits_2_before_any_work(tmp_path, capsys, override):
    out = tmp_path / "out"
    code = main(["run", "--out", str(out), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--set", override])
    err = capsys.readouterr().err
    assert code == 2, err
    assert override.split("=")[0].split(".")[-1] in err
    assert not (out / "dataset").exists() and not (tmp_path / "m.db").exists()


def test_device_auto_picks_cuda_when_torch_sees_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert TwoTowerConfig().device == "auto"


def test_the_protocol_tracks_why_training_stopped(step_clock, tmp_path):
    """`recsys train` / `recsys run`: stop_budget (or stop_patience / stop_epochs) = 1 in MLflow."""
    import mlflow
    import polars as pl

    from pipelines.train_two_tower import fit_and_log
    from recsys.data import Dataset, IdMap
    from recsys.tracking import local_sqlite_uri
    from tests.two_tower_fixtures import N_ITEMS

    _, pairs, held, _ = synthetic()
    is_valid = np.random.default_rng(0).random(pairs.height) < 0.3
    test = pl.DataFrame({"user_idx": np.arange(N_USERS), "item_idx": held, "weight": np.ones(N_USERS)}, schema=pairs.schema)
    ds = Dataset({"train": pairs.filter(pl.Series(~is_valid)), "valid": pairs.filter(pl.Series(is_valid)), "test": test,
                  "test_cold": test.clear()}, IdMap([str(u) for u in range(N_USERS)], "user"),
                 IdMap([str(i) for i in range(N_ITEMS)], "item"))
    params = {**FAST, "user_id_dim": 0, "item_features": "none", "max_minutes": 10 / 60}
    _, run_id, _ = fit_and_log(ds, params, local_sqlite_uri(tmp_path), "tt-budget", tmp_path / "out")
    run = mlflow.MlflowClient(local_sqlite_uri(tmp_path)).get_run(run_id)
    m = run.data.metrics
    assert run.data.params["final.max_minutes"] == str(10 / 60)  # the run's budget, not the refit's remainder
    assert m["stop_budget"] == 1.0 and "stop_epochs" not in m and "stop_patience" not in m
    assert m["train_minutes"] > 0
    assert m["valid_best_epoch"] < FAST["epochs"]


def _ddp_budget_worker(rank: int, world: int, init: str, out: str) -> None:
    """Rank 1's clock runs 3x as fast: alone it would stop two epochs in, rank 0 six."""
    from recsys.models.distributed import cleanup, init_distributed

    torch.set_num_threads(1)
    steps = {"n": 0}
    real_step = trainer_mod.Trainer.step

    def counting_step(self, batch):
        steps["n"] += 1
        return real_step(self, batch)

    trainer_mod.Trainer.step = counting_step
    trainer_mod._clock = lambda: float(steps["n"] * (3 if rank == 1 else 1))
    init_distributed("gloo", init, rank=rank, world_size=world)
    try:
        csr, pairs, _, feats = synthetic()
        m = TwoTower(**{**FAST, "max_minutes": 35 / 60}).fit(csr, pairs=pairs, item_features=feats)
        np.save(f"{out}.{rank}.npy", np.array([len(m.history_), steps["n"], m.stop_reason_ == "budget"]))
    finally:
        cleanup()


def test_data_parallel_ranks_agree_on_the_budget_stop(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_budget_worker, args=(2, f"file://{tmp_path / 'pg'}", str(tmp_path / "out")), nprocs=2, join=True)
    r0, r1 = (np.load(tmp_path / f"out.{r}.npy") for r in (0, 1))
    # both stop before epoch 3 (rank 1's clock says it would not fit): same epochs, same steps
    assert r0.tolist() == r1.tolist() == [2, 2 * STEPS_PER_EPOCH, 1]

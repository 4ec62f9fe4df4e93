from __future__ import annotations

import threading
import time

import pytest

from recsys.models.prefetch import prefetch


def test_prefetch_yields_every_item_in_order():
    assert list(prefetch(iter(range(1000)), depth=3)) == list(range(1000))


def test_prefetch_reraises_the_producers_error_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise RuntimeError("broken batch")

    got = []
    with pytest.raises(RuntimeError, match="broken batch"):
        for x in prefetch(items()):
            got.append(x)
    assert got == [1, 2]


def test_consumer_that_stops_early_stops_the_producer():
    produced = []

    def items():
        for i in range(10_000):
            produced.append(i)
            yield i

    gen = prefetch(items(), depth=2)
    assert next(gen) == 0
    gen.close()  # what a `break` or an exception in the training loop does
    time.sleep(0.3)
    n = len(produced)
    time.sleep(0.3)
    assert len(produced) == n < 10  # stopped, at most depth + a couple ahead
    assert not any(t.name == "recsys-prefetch" for t in threading.enumerate())


def test_prefetched_batches_match_the_synchronous_ones():
    import numpy as np
    import torch

    from recsys.models.trainer import PairBatches, TrainData

    rng = np.random.default_rng(0)
    data = TrainData(users=rng.integers(0, 50, 500), items=rng.integers(0, 30, 500), weights=None,
                     histories=rng.integers(-1, 30, (50, 6)), user_categorical=None, user_dense=None, n_items=30)  # fmt: skip
    pb = PairBatches(data, 64, seed=3, user_id_dropout=0.2, history_dropout=0.5, n_negatives=4)
    pb.set_epoch(2)
    for a, b in zip(list(pb), list(prefetch(pb)), strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]

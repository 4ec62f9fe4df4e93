"""Progress of long steps: periodic rate/ETA lines in the log, timed MF iterations."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.models import ALS, BPR
from recsys.models import weighting
from recsys.progress import Deadline, Progress, format_seconds, track


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_progress_logs_rate_and_eta_once_per_interval(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="recsys.progress")
    with Progress("ALS fit", total=10, unit="iterations", interval=30, clock=clock) as p:
        for _ in range(10):
            clock.t += 10.0  # 10 s per iteration: a line every third iteration
            p.update(loss=0.5)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4  # after 30, 60, 90 s, then the closing line
    assert lines[0] == "ALS fit: 3/10 iterations (0.1 iterations/s, 30s elapsed, ETA 1m10s), loss=0.5"
    assert lines[-1] == "ALS fit: done, 10 iterations in 1m40s (0.1 iterations/s)"


def test_short_steps_write_nothing(caplog):
    caplog.set_level(logging.INFO, logger="recsys.progress")
    clock = FakeClock()
    assert list(track(range(5), "quick", interval=30, clock=clock)) == [0, 1, 2, 3, 4]
    assert caplog.records == []


def test_progress_lines_reach_the_json_log_format_whole(caplog):
    """The JSON formatter of `recsys --log-format json` carries the whole line in msg."""
    from pipelines.cli import _JsonFormatter

    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="recsys.progress")
    with Progress("encode items", total=None, unit="texts", interval=1, clock=clock) as p:
        clock.t = 2.0
        p.update(500)
    rec = json.loads(_JsonFormatter().format(caplog.records[0]))
    assert rec["msg"] == "encode items: 500 texts (250 texts/s, 2s elapsed)"  # unknown total: no ETA


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.4, "59s"), (185, "3m05s"), (3720, "1h02m"), (float("inf"), "?")])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text


def test_deadline_shares_what_is_left_and_unlimited_never_expires():
    clock = FakeClock()
    d = Deadline(100, clock=clock)
    clock.t = 40
    assert d.remaining() == 60 and d.share(3) == 20 and d.fits(60) and not d.fits(61) and not d.expired()
    part = d.part(2)
    assert part.seconds == 30 and part.remaining() == 30
    clock.t = 100
    assert d.expired() and d.part(2).limited and d.part(2).expired()  # a spent share is not "no budget"
    free = Deadline(None, clock=clock)
    assert not free.limited and not free.expired() and free.share(2) is None and free.fits(1e12)


@pytest.fixture(scope="module")
def small() -> sp.csr_matrix:
    m = sp.random(300, 200, density=0.05, format="csr", dtype=np.float32, random_state=0)
    m.data = np.ceil(m.data * 5)
    return m


@pytest.mark.parametrize("cls, kw", [(ALS, {}), (BPR, {"learning_rate": 0.05})])
def test_mf_iterations_are_timed(small, cls, kw):
    m = cls(factors=8, iterations=4, device="cpu", num_threads=1, **kw).fit(small)
    assert len(m.iteration_seconds_) == 4 and all(s >= 0 for s in m.iteration_seconds_)
    assert m.fit_seconds_ >= sum(m.iteration_seconds_) * 0.5


def test_als_scales_its_own_weighted_copy_instead_of_a_second_one_in_implicit(small):
    """alpha applied in place on the log-weighted copy: the very factors implicit computes itself."""
    from implicit.cpu.als import AlternatingLeastSquares

    ours = ALS(factors=8, iterations=3, alpha=3.0, weighting="log", device="cpu", random_state=1, num_threads=1).fit(small)
    direct = AlternatingLeastSquares(factors=8, iterations=3, alpha=3.0, regularization=0.01, random_state=1, num_threads=1)
    direct.fit(weighting.transform(small, "log"), show_progress=False)
    assert np.array_equal(ours.user_factors_, direct.user_factors)
    assert np.array_equal(ours.item_factors_, direct.item_factors)

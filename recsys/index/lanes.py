"""Intra-query parallelism: one query's independent forest searches on a few threads.

Why: a norm-ranged query searches about six forests one after the other, and Annoy
releases the GIL while it searches, so a second core can take half of them. Measured
at 1M clustered items on 2 cores (docs/retrieval.md), the same run: p50 / p99
1.92 / 2.81 -> 1.75 / 2.20 ms through the Retriever. It only pays
when cores are idle, i.e. at low concurrency. A loaded service has no spare core, and
queueing one query's work behind another's would make both slower. So a query only
borrows a helper thread that is free at that moment, and otherwise runs all of its
searches itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def balance(costs: Sequence[float], n_lanes: int) -> list[list[int]]:
    """Split task indices into ``n_lanes`` groups of similar total cost (largest first)."""
    lanes: list[list[int]] = [[] for _ in range(n_lanes)]
    load = [0.0] * n_lanes
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        j = min(range(n_lanes), key=load.__getitem__)
        lanes[j].append(i)
        load[j] += costs[i]
    return [lane for lane in lanes if lane]


class Lanes:
    """Up to ``n_threads - 1`` helper threads shared by all queries of one index."""

    def __init__(self, n_threads: int) -> None:
        self.n_threads = int(n_threads)
        self._pool = ThreadPoolExecutor(max(1, self.n_threads - 1), thread_name_prefix="recsys-search")
        self._free = threading.Semaphore(max(1, self.n_threads - 1))

    def run(self, fn: Callable[[Any], T], tasks: Sequence[Any], costs: Sequence[float]) -> list[T]:
        """``[fn(t) for t in tasks]``, the lanes after the first on free helper threads."""
        lanes = balance(costs, self.n_threads)
        out: list[T | None] = [None] * len(tasks)

        def lane(ids: list[int]) -> None:
            for i in ids:
                out[i] = fn(tasks[i])

        def helped(ids: list[int]) -> None:
            try:
                lane(ids)
            finally:
                self._free.release()

        futures: list[Future[None]] = []
        for ids in lanes[1:]:
            if self._free.acquire(blocking=False):
                futures.append(self._pool.submit(helped, ids))
            else:  # every helper busy with other queries: do it here rather than queue
                lane(ids)
        if lanes:
            lane(lanes[0])
        for f in futures:
            f.result()
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self._pool.shutdown(wait=True)

"""Fit time of every model family at the 2M-event shape (issue 18, item 3: every step within a budget).

One synthetic log (``recsys.data.synthetic``: 2M events, 40k users x 10k items, power-law
popularity, taste clusters), one train matrix (repeated pairs summed), and in the same
process, one after the other:

* ``most-popular`` and ``item-knn`` (``n_neighbors=100``) fits, and the scoring of one batch
  of 1024 users (the evaluation's unit of work);
* ``ALS`` (factors 128, 15 iterations, ``weighting="linear"`` so the comparison is with the
  same objective, and the packaged default ``"log"``) against ``implicit``'s
  ``AlternatingLeastSquares`` called directly on the same matrix, both one-thread BLAS and
  ``num_threads=0``, interleaved ``--als-repeats`` times (medians); the ratio is the
  wrapper's overhead (target <= 1.2x);
* ``BPR`` (factors 64, ``--bpr-iterations``) with its per-iteration rate;
* the two-tower with ``max_minutes`` (default 1): wall time, epochs done, stop reason.

Peak RSS growth of each step is reported (``ru_maxrss`` before/after; a step that does not
raise the process peak shows 0); ``--trace-memory`` adds each step's own allocation peak
(tracemalloc: numpy and scipy arrays, not torch). Run::

    .venv/bin/python benchmarks/bench_model_budgets.py [--events 2000000] [--users 40000] [--items 10000]
        [--skip two-tower,bpr] [--max-minutes 1] [--bpr-iterations 20] [--als-repeats 3] [--json out.json]
        [--before-tree DIR] [--trace-memory]

The table goes to stdout; compare runs made on the same machine in the same state.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.data.synthetic import SyntheticConfig, generate_events  # noqa: E402


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train_matrix(n_events: int, n_users: int, n_items: int, seed: int) -> sp.csr_matrix:
    ev = generate_events(SyntheticConfig(n_events=n_events, n_users=n_users, n_items=n_items, event_types=False, seed=seed))
    u, i = ev["user_id"].to_numpy(), ev["item_id"].to_numpy()
    m = sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(n_users, n_items))
    m.sum_duplicates()
    return m


TRACE = False  # --trace-memory: numpy/scipy peak of each step via tracemalloc (slows Python-level loops)


def timed(rows: list[dict[str, Any]], name: str, fn: Any, **extra: Any) -> Any:
    import tracemalloc

    if TRACE:
        tracemalloc.start()
    p0, t = peak_mb(), time.perf_counter()
    out = fn()
    rows.append({"step": name, "seconds": time.perf_counter() - t, "peak_growth_mb": peak_mb() - p0, **extra})
    if TRACE:
        rows[-1]["traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    print(f"  {name}: {rows[-1]['seconds']:.2f} s", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--users", type=int, default=40_000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", default="", help="comma-separated: knn,popular,als,bpr,two-tower")
    ap.add_argument("--max-minutes", type=float, default=1.0, help="two-tower budget")
    ap.add_argument("--bpr-iterations", type=int, default=20)
    ap.add_argument("--als-repeats", type=int, default=3, help="interleaved ALS repeats (medians reported)")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--before-tree", help="a checkout of an older recsys: its ItemKNN is timed too (git worktree add DIR REV)")
    ap.add_argument("--trace-memory", action="store_true", help="report each step's tracemalloc peak (numpy/scipy)")
    args = ap.parse_args()
    global TRACE
    TRACE = args.trace_memory
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    skip = set(filter(None, args.skip.split(",")))
    t0 = time.perf_counter()
    m = train_matrix(args.events, args.users, args.items, args.seed)
    print(f"matrix {m.shape}, nnz {m.nnz} ({time.perf_counter() - t0:.1f} s to generate)", flush=True)
    rows: list[dict[str, Any]] = []
    batch = np.arange(min(1024, m.shape[0]))

    from recsys.models import ALS, BPR
    from recsys.models.baselines import ItemKNN, MostPopular

    if "popular" not in skip:
        mp = timed(rows, "most-popular fit", lambda: MostPopular().fit(m))
        timed(rows, "most-popular score 1024 users", lambda: mp.score(batch))
    if "knn" not in skip:
        knn = timed(rows, "item-knn fit (100 nb)", lambda: ItemKNN(n_neighbors=100).fit(m))
        rows[-1]["sim_nnz_per_item"] = knn.similarity_.nnz / m.shape[1]
        timed(rows, "item-knn score 1024 users", lambda: knn.score(batch))
        del knn
        if args.before_tree:  # the same fit with another checkout's ItemKNN, in this process
            import importlib.util

            spec = importlib.util.spec_from_file_location("before_baselines", Path(args.before_tree) / "recsys/models/baselines.py")
            before = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(before)  # type: ignore[union-attr]
            timed(rows, "item-knn fit (100 nb), --before-tree", lambda: before.ItemKNN(n_neighbors=100).fit(m))
            rows[-1]["ratio_vs_before"] = rows[-3]["seconds"] / rows[-1]["seconds"]
    if "als" not in skip:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        settings = {"factors": 128, "regularization": 10.0, "alpha": 1.0, "iterations": 15, "random_state": 0}

        def direct() -> Any:
            with threadpool_limits(limits=1, user_api="blas"):
                return AlternatingLeastSquares(**settings, num_threads=0).fit(m, show_progress=False)

        # interleaved repeats (direct, linear, log, direct, ...): load from other processes hits
        # all three alike; the table shows each one's median
        runs: dict[str, list[dict[str, Any]]] = {"direct": [], "linear": [], "log": []}
        for _ in range(args.als_repeats):
            timed(runs["direct"], "implicit ALS direct (128 f, 15 it)", direct)
            timed(runs["linear"], "recsys ALS linear (128 f, 15 it)",
                  lambda: ALS(**settings, weighting="linear", device="cpu").fit(m))
            timed(runs["log"], "recsys ALS log (128 f, 15 it)", lambda: ALS(**settings, weighting="log", device="cpu").fit(m))
        med = {k: float(np.median([r["seconds"] for r in v])) for k, v in runs.items()}
        for k, v in runs.items():
            rows.append({**v[0], "seconds": med[k], "peak_growth_mb": max(r["peak_growth_mb"] for r in v),
                         "repeats": len(v), **({"ratio_vs_direct": med[k] / med["direct"]} if k != "direct" else {})})
    if "bpr" not in skip:
        it = args.bpr_iterations
        timed(rows, f"BPR (64 f, {it} it)", lambda: BPR(factors=64, iterations=it, learning_rate=0.05, device="cpu").fit(m))
        rows[-1]["it_per_s"] = it / rows[-1]["seconds"]
    if "two-tower" not in skip:
        from recsys.models.two_tower import TwoTower, TwoTowerConfig

        params: dict[str, Any] = {"epochs": 12, "ensemble": 2, "ema": 0.995, "user_id_dim": 0, "history_len": 300,
                                  "history_dropout": 0.5, "short_history": 0.3, "user_balance": 0.25, "device": "auto"}
        has_budget = "max_minutes" in TwoTowerConfig.__dataclass_fields__
        if has_budget:
            params["max_minutes"] = args.max_minutes
        else:  # before the budget existed: one epoch of one member, the unit the budget divides
            params.update(epochs=1, ensemble=1)
        tt = timed(rows, f"two-tower ({'max_minutes=%g' % args.max_minutes if has_budget else '1 epoch, 1 member'})",
                   lambda: TwoTower(**params).fit(m))
        rows[-1]["epochs_done"] = len(tt.history_)
        rows[-1]["stop_reason"] = getattr(tt, "stop_reason_", "n/a")
        rows[-1]["samples_per_s"] = float(np.median([r["samples_per_s"] for r in tt.history_]))
    print(f"\nmodel fits at {args.events:,} events ({m.shape[0]:,} users x {m.shape[1]:,} items, nnz {m.nnz:,}); "
          f"machine: {__import__('os').cpu_count()} cores")
    print(f"{'step':40s}{'seconds':>10s}{'peak +MB':>10s}  notes")
    for r in rows:
        notes = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                          if k not in ("step", "seconds", "peak_growth_mb"))
        print(f"{r['step']:40s}{r['seconds']:10.2f}{r['peak_growth_mb']:10.0f}  {notes}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

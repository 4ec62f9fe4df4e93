"""Vectorised evaluation vs a straightforward per-user Python loop, in the same run.

Two comparisons on MovieLens latest-small (the embedded dataset, 610 users x 9724
items, a seeded 80/20 random holdout per user):

* ``metrics``: scoring precomputed top-K lists. ``recsys.metrics.ranking_metrics``
  against a textbook loop (one Python iteration per user and K, sets for lookups).
* ``end-to-end``: ``recsys.evaluation.evaluate(model, ...)`` (batched ``recommend`` +
  vectorised metrics) against the naive evaluation people write first: one
  ``recommend`` call per user, then the same loop. The model is ItemKNN (100
  neighbours), fitted once outside the timings.

The full mode adds a 10x larger user base (the test matrix and lists tiled) for the
metrics comparison. Both implementations must agree to 1e-9 on every metric; the
script exits 1 otherwise. Medians of repeats are reported.

    .venv/bin/python benchmarks/bench_evaluation.py --quick
    .venv/bin/python benchmarks/bench_evaluation.py

Results are also written to ``benchmarks/results/evaluation.json``.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.evaluation import evaluate, item_popularity, ranking_metrics  # noqa: E402
from recsys.io import write_json  # noqa: E402
from recsys.models.baselines import ItemKNN  # noqa: E402

KS = (10, 20, 50, 100)


def load_split(seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    r = pl.read_csv(ROOT / "data" / "movielens-latest-small" / "ratings.csv")
    u = r["userId"].rank("dense").cast(pl.Int64).to_numpy() - 1
    i = r["movieId"].rank("dense").cast(pl.Int64).to_numpy() - 1
    w = r["rating"].to_numpy().astype(np.float32)
    is_test = np.random.default_rng(seed).random(len(u)) < 0.2
    shape = (int(u.max()) + 1, int(i.max()) + 1)

    def csr(mask: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((w[mask], (u[mask], i[mask])), shape=shape)

    return csr(~is_test), csr(is_test)


def loop_metrics(rec: np.ndarray, test: sp.csr_matrix, ks: tuple[int, ...], pop: np.ndarray) -> dict[str, float]:
    """The per-user loop a first implementation would be: sets, lists, one user at a time."""
    sums: dict[str, float] = {}
    covered: dict[int, set[int]] = {k: set() for k in ks}
    pop_vals: dict[int, list[float]] = {k: [] for k in ks}
    n = 0
    for uidx in range(test.shape[0]):
        rel = set(test.indices[test.indptr[uidx] : test.indptr[uidx + 1]].tolist())
        if not rel:
            continue
        n += 1
        lst = rec[uidx].tolist()
        for k in ks:
            hits = [1 if i in rel else 0 for i in lst[:k]]
            h = sum(hits)
            dcg = sum(g / math.log2(r + 2) for r, g in enumerate(hits))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(rel))))
            ap, seen_hits = 0.0, 0
            for r, g in enumerate(hits):
                if g:
                    seen_hits += 1
                    ap += seen_hits / (r + 1)
            for name, v in (("precision", h / k), ("recall", h / len(rel)), ("ndcg", dcg / idcg),
                            ("map", ap / min(k, len(rel))), ("hit_rate", float(h > 0))):
                sums[f"{name}@{k}"] = sums.get(f"{name}@{k}", 0.0) + v
            top = [i for i in lst[:k] if i >= 0]
            covered[k].update(top)
            pop_vals[k].extend(pop[i] for i in top)
        first = next((r for r, i in enumerate(lst[: max(ks)]) if i in rel), None)
        sums["mrr"] = sums.get("mrr", 0.0) + (0.0 if first is None else 1 / (first + 1))
    out = {key: v / n for key, v in sums.items()}
    for k in ks:
        out[f"coverage@{k}"] = len(covered[k]) / test.shape[1]
        out[f"mean_popularity@{k}"] = float(np.mean(pop_vals[k]))
    out["n_users"] = n
    return out


def loop_evaluate(model, train, test, ks, pop) -> dict[str, float]:
    """Naive end-to-end evaluation: one recommend call per user, then the loop."""
    kmax = max(ks)
    rec = np.full((test.shape[0], kmax), -1, np.int64)
    for uidx in range(test.shape[0]):
        if test.indptr[uidx + 1] > test.indptr[uidx]:
            rec[uidx] = model.recommend(uidx, k=kmax, user_items=train)[0]
    return loop_metrics(rec, test, ks, pop)


def timed(fn: Callable[[], dict], repeats: int) -> tuple[float, dict]:
    times, out = [], {}
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def check_equal(a: dict, b: dict, what: str) -> float:
    keys = [k for k in b if k != "n_users"]
    diff = max(abs(a[k] - b[k]) for k in keys)
    if diff > 1e-9 or a["n_users"] != b["n_users"]:
        raise SystemExit(f"{what}: vectorised and loop results differ (max abs diff {diff:.3g})")
    return diff


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, no 10x case (~1 min)")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    train, test = load_split()
    pop = item_popularity(train)
    model = ItemKNN(n_neighbors=100).fit(train)
    rec = model.recommend(np.arange(train.shape[0]), k=max(KS), user_items=train)[0]

    cases = [("metrics, ml-small", rec, test)]
    if not args.quick:
        cases.append(("metrics, ml-small users x10", np.tile(rec, (10, 1)), sp.vstack([test] * 10, format="csr")))
    rows = []
    for name, r, t in cases:
        tv, a = timed(lambda r=r, t=t: ranking_metrics(r, t, ks=KS, item_popularity=pop), repeats)
        tl, b = timed(lambda r=r, t=t: loop_metrics(r, t, KS, pop), repeats)
        rows.append({"case": name, "users": int(a["n_users"]), "vectorised_s": tv, "loop_s": tl,
                     "speedup": tl / tv, "max_abs_diff": check_equal(a, b, name)})
    tv, a = timed(lambda: evaluate(model, train, test, ks=KS, item_popularity=pop, show_progress=False), repeats)
    tl, b = timed(lambda: loop_evaluate(model, train, test, KS, pop), max(1, repeats // 2))
    rows.append({"case": "end-to-end evaluate, ItemKNN", "users": int(a["n_users"]), "vectorised_s": tv,
                 "loop_s": tl, "speedup": tl / tv, "max_abs_diff": check_equal(a, b, "end-to-end")})

    print(f"evaluation benchmark: ks={KS}, median of {repeats} repeats, "
          f"train {train.nnz} / test {test.nnz} interactions, {train.shape[1]} items")
    print(f"{'case':<32} {'users':>6} {'vectorised s':>13} {'loop s':>9} {'speedup':>8} {'max diff':>9}")
    for row in rows:
        print(f"{row['case']:<32} {row['users']:>6} {row['vectorised_s']:>13.4f} {row['loop_s']:>9.4f} "
              f"{row['speedup']:>7.1f}x {row['max_abs_diff']:>9.1e}")
    write_json(ROOT / "benchmarks" / "results" / "evaluation.json", {
        "ks": KS, "repeats": repeats, "quick": args.quick, "python": platform.python_version(),
        "machine": platform.machine(), "rows": rows,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

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

``--scale`` measures evaluation at the 20M-event shape instead (issue 18: 400k users x
100k items, 128-d vectors, synthetic taste clusters of ~150 items so the metrics are not
zero; about 26
train and 2 test items per user): the scoring GEMM alone (chunked into 256 MiB blocks, a
preallocated output: the bound), the new ``evaluate`` (batched scoring + the multi-threaded
exact top-k of :mod:`recsys.ranking`), the old path (``recommend`` as it was before: a copy
of every score block, per-block ``nonzero`` exclusion, one single-threaded ``argpartition``)
on ``--old-users`` users, extrapolated per user, and the ratio new / GEMM (target <= 2.0).
The users are cut into rounds and each round is timed GEMM, then new, then old, so a
change in the load of the shared machine hits every path alike. Then the metrics of
``--sample-seeds`` seeded samples of ``--sample`` users are checked against the full ones
(about 95% of them should lie within 2 standard errors; the script exits 1 below 80%).

    .venv/bin/python benchmarks/bench_evaluation.py --quick
    .venv/bin/python benchmarks/bench_evaluation.py
    .venv/bin/python benchmarks/bench_evaluation.py --scale                       # 400k x 100k
    .venv/bin/python benchmarks/bench_evaluation.py --scale --shape 40000x10000   # the 2M shape

Results are also written to ``benchmarks/results/evaluation.json`` (``evaluation_scale_<shape>.json``
for ``--scale``).
"""

from __future__ import annotations

import argparse
import math
import os
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

from recsys.evaluation import evaluate, item_popularity, ranking_metrics, sample_users  # noqa: E402
from recsys.io import write_json  # noqa: E402
from recsys.models.baselines import ItemKNN  # noqa: E402
from recsys.models.fixed_vectors import FixedVectors  # noqa: E402
from recsys.ranking import rows_per_block  # noqa: E402

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


# -- evaluation at scale (--scale) ------------------------------------------------------------


def synthetic(n_users: int, n_items: int, dim: int, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix, sp.csr_matrix]:
    """Vectors with taste clusters, ~26 train and ~2 test items per user (80% in the user's cluster)."""
    rng = np.random.default_rng(seed)
    n_clusters = max(16, n_items // 150)  # ~150 items a cluster at every size: metrics comparable across shapes
    centers = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    item_c = np.sort(rng.integers(0, n_clusters, n_items))  # items of a cluster are contiguous
    user_c = rng.integers(0, n_clusters, n_users)
    items = centers[item_c] + rng.standard_normal((n_items, dim), dtype=np.float32)
    users = 0.5 * centers[user_c] + rng.standard_normal((n_users, dim), dtype=np.float32)
    items /= np.sqrt(dim)
    users /= np.sqrt(dim)
    first = np.searchsorted(item_c, np.arange(n_clusters + 1))

    def draw(per_user: float) -> sp.csr_matrix:
        counts = np.maximum(rng.poisson(per_user, n_users), 1)
        u = np.repeat(np.arange(n_users), counts)
        c = user_c[u]
        own = first[c] + (rng.random(len(u)) * (first[c + 1] - first[c])).astype(np.int64)
        i = np.where(rng.random(len(u)) < 0.8, own, rng.integers(0, n_items, len(u)))
        m = sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(n_users, n_items))
        m.data[:] = 1.0
        return m

    train = draw(26.0)
    test = draw(2.0)
    test = (test - test.multiply(train > 0)).tocsr()
    test.eliminate_zeros()
    return users, items, train, test


def _old_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``recsys.models.base.topk`` before issue 18: one single-threaded argpartition per block."""
    n = scores.shape[1]
    kk = min(k, n)
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
    top = np.take_along_axis(part_scores, order, axis=1).astype(np.float32)
    ids[~np.isfinite(top)] = -1
    return ids, top


class OldRecommend(FixedVectors):
    """``Recommender.recommend`` before issue 18 (copy of each block, nonzero exclusion, old top-k)."""

    def recommend(self, user_indices, k=10, exclude_seen=True, user_items=None, items=None, batch_size=2048):
        users = np.asarray(user_indices, np.int64)
        seen = self.user_items_ if user_items is None else sp.csr_matrix(user_items, dtype=np.float32)
        k = min(int(k), self.n_items_)
        ids = np.empty((len(users), k), np.int64)
        out = np.empty((len(users), k), np.float32)
        for start in range(0, len(users), batch_size):
            b = users[start : start + batch_size]
            s = np.array(self._score(b), dtype=np.float32, copy=True)
            if exclude_seen:
                r, c = seen[b].nonzero()
                s[r, c] = -np.inf
            ids[start : start + len(b)], out[start : start + len(b)] = _old_topk(s, k)
        return ids, out


class Clock:
    """Wall and CPU seconds (every thread of the process) of what runs inside ``with``.

    CPU time is reported next to wall time because this machine is shared: when other jobs
    hold the cores, wall time measures the queue as much as the code.
    """

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Clock:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c


def gemm_block_scores(users: np.ndarray, items: np.ndarray, rows: np.ndarray) -> None:
    """The scoring GEMM alone over ``rows``, in 256 MiB blocks into one preallocated buffer."""
    step = rows_per_block(len(items))
    buf = np.empty((step, len(items)), np.float32)
    for s in range(0, len(rows), step):
        b = rows[s : s + step]
        np.matmul(users[b], items.T, out=buf[: len(b)])


def scale_main(args: argparse.Namespace) -> int:
    n_users, n_items = (int(x) for x in args.shape.lower().split("x"))
    t0 = time.perf_counter()
    uvec, ivec, train, test = synthetic(n_users, n_items, args.dim, args.seed)
    print(f"synthetic {n_users} users x {n_items} items, dim {args.dim}: train {train.nnz}, test {test.nnz} "
          f"interactions ({time.perf_counter() - t0:.1f} s); load average {os.getloadavg()[0]:.1f}", flush=True)
    new = FixedVectors.from_vectors(uvec, ivec, train)
    old = OldRecommend.from_vectors(uvec, ivec, train)
    pop = item_popularity(train)
    evaluated = np.flatnonzero(np.diff(test.indptr) > 0)
    rounds = np.array_split(evaluated, args.rounds)
    old_per_round = max(1, args.old_users // args.rounds)
    c_gemm, c_new, c_old, c_new_sub = Clock(), Clock(), Clock(), Clock()
    n_old = 0
    sums: dict[str, float] = {}
    n_total = 0
    for i, r in enumerate(rounds):
        with c_gemm:
            gemm_block_scores(uvec, ivec, r)
        with c_new:
            res = evaluate(new, train, test, ks=KS, users=r, item_popularity=pop, show_progress=False)
        for key in ("ndcg@10", "recall@10", "precision@10", "map@10", "mrr"):
            sums[key] = sums.get(key, 0.0) + res[key] * res["n_users"]
        n_total += res["n_users"]
        sub = r[:old_per_round]
        if args.old_users:
            with c_old:
                a = evaluate(old, train, test, ks=KS, users=sub, item_popularity=pop, batch_size=1024,
                             show_progress=False)
            with c_new_sub:
                b = evaluate(new, train, test, ks=KS, users=sub, item_popularity=pop, show_progress=False)
            n_old += len(sub)
            if abs(a["ndcg@10"] - b["ndcg@10"]) > 1e-9:
                raise SystemExit(f"old and new evaluation differ: ndcg@10 {a['ndcg@10']} vs {b['ndcg@10']}")
        print(f"  round {i + 1}/{len(rounds)}: {len(r)} users, wall (cpu) s: gemm {c_gemm.wall:.1f} ({c_gemm.cpu:.1f}), "
              f"new {c_new.wall:.1f} ({c_new.cpu:.1f}), old {c_old.wall:.1f} ({c_old.cpu:.1f}) on {n_old} users "
              f"(cumulative); load {os.getloadavg()[0]:.1f}", flush=True)
    full = {k: v / n_total for k, v in sums.items()}
    scale_old = n_total / max(n_old, 1)
    c_sample = Clock()
    checks = []
    for seed in range(args.seed, args.seed + args.sample_seeds):
        with c_sample if seed == args.seed else Clock():  # timed once
            sample = sample_users(test, args.sample, seed=seed)
            samp = evaluate(new, train, test, ks=KS, users=sample, item_popularity=pop, show_progress=False)
        for key, v in full.items():
            z = (samp[key] - v) / samp[f"{key}_se"]
            checks.append({"seed": seed, "metric": key, "full": v, "sample": samp[key], "se": samp[f"{key}_se"],
                           "z": z, "ok": abs(z) <= 2})

    print(f"\nevaluation at {n_users} users x {n_items} items (dim {args.dim}, ks {KS}, {n_total} users with test "
          f"items, {len(rounds)} interleaved rounds)")
    print(f"{'path':<44} {'wall s':>8} {'x GEMM':>7} {'cpu s':>8} {'x GEMM':>7} {'users/s':>8}")
    nan = float("nan")
    rows = [("scoring GEMM alone (256 MiB blocks)", c_gemm.wall, c_gemm.cpu, n_total),
            ("new evaluate (recsys.ranking.topk_batch)", c_new.wall, c_new.cpu, n_total),
            (f"old evaluate, extrapolated from {n_old} users", c_old.wall * scale_old if n_old else nan,
             c_old.cpu * scale_old if n_old else nan, n_total),
            (f"  old evaluate on those {n_old} users", c_old.wall, c_old.cpu, n_old),
            (f"  new evaluate on those {n_old} users", c_new_sub.wall, c_new_sub.cpu, n_old),
            (f"new evaluate on a sample of {len(sample)} users", c_sample.wall, c_sample.cpu, len(sample))]
    for name, wall, cpu, n in rows:
        share = n / n_total
        print(f"{name:<44} {wall:>8.1f} {wall / (c_gemm.wall * share):>6.2f}x {cpu:>8.1f} "
              f"{cpu / (c_gemm.cpu * share):>6.2f}x {n / wall if wall else nan:>8.0f}")
    print(f"ratio new / GEMM = {c_new.wall / c_gemm.wall:.2f} wall, {c_new.cpu / c_gemm.cpu:.2f} cpu (target <= 2.0); "
          f"old / new = {c_old.wall / max(c_new_sub.wall, 1e-9):.1f}x wall on the same {n_old} users")
    print(f"\nsampled ({len(sample)} users, seeds {args.seed}..{args.seed + args.sample_seeds - 1}) vs full metrics:")
    print(f"{'seed':>4} {'metric':<14} {'full':>8} {'sample':>8} {'se':>8} {'z':>6}")
    for c in checks:
        print(f"{c['seed']:>4} {c['metric']:<14} {c['full']:>8.4f} {c['sample']:>8.4f} {c['se']:>8.4f} {c['z']:>6.2f}"
              f"{'' if c['ok'] else '  OUTSIDE 2 SE'}")
    within = float(np.mean([c["ok"] for c in checks]))
    print(f"within 2 SE: {within:.0%} of {len(checks)} (seed, metric) pairs (about 95% expected; the metrics of one "
          f"seed move together)")
    write_json(ROOT / "benchmarks" / "results" / f"evaluation_scale_{n_users}x{n_items}.json", {
        "shape": [n_users, n_items], "dim": args.dim, "ks": KS, "users_evaluated": n_total, "rounds": len(rounds),
        "wall_s": {"gemm": c_gemm.wall, "new": c_new.wall, "old": c_old.wall, "new_same_users": c_new_sub.wall,
                   "sample": c_sample.wall},
        "cpu_s": {"gemm": c_gemm.cpu, "new": c_new.cpu, "old": c_old.cpu, "new_same_users": c_new_sub.cpu,
                  "sample": c_sample.cpu},
        "old_users": n_old, "sample_users": int(len(sample)), "ratio_new_gemm_wall": c_new.wall / c_gemm.wall,
        "ratio_new_gemm_cpu": c_new.cpu / c_gemm.cpu, "sample_checks": checks, "cpus": os.cpu_count(),
        "load_average_end": os.getloadavg()[0],
        "python": platform.python_version(), "machine": platform.machine(),
    })
    return 0 if within >= 0.8 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, no 10x case (~1 min)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--scale", action="store_true", help="evaluation at the 20M-event shape (see the module docstring)")
    ap.add_argument("--shape", default="400000x100000", help="--scale: USERSxITEMS")
    ap.add_argument("--dim", type=int, default=128, help="--scale: vector width")
    ap.add_argument("--rounds", type=int, default=8, help="--scale: interleaved timing rounds")
    ap.add_argument("--old-users", type=int, default=16000, help="--scale: users the old path is timed on (0: skip)")
    ap.add_argument("--sample", type=int, default=20000, help="--scale: users of the sampled evaluation")
    ap.add_argument("--sample-seeds", type=int, default=5, help="--scale: samples (seeds) checked against the full metrics")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.scale:
        return scale_main(args)
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

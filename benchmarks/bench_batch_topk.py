"""Batch top-K for every user against the bound it cannot beat: the scoring GEMM alone.

Synthetic MF-like vectors (default 400k users x 100k items x 128 dims, item norms
power-law, ~26 seen items per user drawn by popularity: the shape of issue 18's 20M-event
log) are wrapped in an in-memory bundle, and each repeat times, in the same process:

* ``gemm``: the scoring GEMM alone, block by block with the batch job's own block size
  and preallocated output (nothing else: no exclusion, no top-k, no output);
* ``gemm + top-k``: the batch job's scoring alone (``BatchScorer``: GEMM, seen items
  excluded, ``recsys.ranking.topk_batch``), no output (``--with-scoring`` only);
* ``batch top-K``: ``recsys.serving.batch.write_batch_topk`` end to end (exclusion of
  seen items, exact top-k, parquet parts with sha256, manifest).

Reported: median seconds of ``--repeats`` and the ratio to the GEMM (issue 18 target:
batch top-K <= 2x GEMM at 400k x 100k on this 2-core machine), plus the stage split that
the batch manifest records. ``--users N`` times the first N users only (same ratios, a
fraction of the time)::

    .venv/bin/python benchmarks/bench_batch_topk.py --users 40000 --repeats 3 --with-scoring
    .venv/bin/python benchmarks/bench_batch_topk.py --repeats 1          # the full 400k users

Results also go to ``benchmarks/results/batch_topk_<users>x<items>x<dim>.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.data.idmap import IdMap  # noqa: E402
from recsys.io import write_json  # noqa: E402
from recsys.models.foldin import FoldInSpec  # noqa: E402
from recsys.serving.batch import BatchScorer, iter_topk, write_batch_topk  # noqa: E402
from recsys.serving.reader import BundleData  # noqa: E402


def synthetic_bundle(n_users: int, n_items: int, dim: int, seen_per_user: int, seed: int) -> BundleData:
    """An in-memory bundle of MF-like vectors (no index: batch top-K is exact)."""
    rng = np.random.default_rng(seed)
    pop = (np.arange(1, n_items + 1, dtype=np.float64) ** -0.8)
    pop /= pop.sum()
    items = rng.standard_normal((n_items, dim), dtype=np.float32) * (0.2 + 2 * (pop / pop.max()) ** 0.3)[:, None].astype(np.float32)
    users = rng.standard_normal((n_users, dim), dtype=np.float32) * np.float32(0.3)
    cols = rng.choice(n_items, size=n_users * seen_per_user, p=pop).astype(np.int32)
    seen = sp.csr_matrix((np.ones(len(cols), np.float32), cols, np.arange(0, len(cols) + 1, seen_per_user)),
                         shape=(n_users, n_items))
    seen.sum_duplicates()
    manifest = {"version": f"bench-{n_users}x{n_items}x{dim}", "similarity": "dot", "n_items": n_items, "dim": dim}
    return BundleData(path=Path("."), manifest=manifest, item_vectors=items, item_map=IdMap([f"i{i}" for i in range(n_items)], "item"),
                      item_popularity=np.bincount(cols, minlength=n_items).astype(np.float32),
                      item_source=np.asarray(["cf"] * n_items, object), user_vectors=users,
                      user_map=IdMap([f"u{u}" for u in range(n_users)], "user"), seen=seen, foldin=FoldInSpec("mean"))


def time_gemm(scorer: BatchScorer, users: np.ndarray) -> float:
    """Seconds of the scoring GEMM alone, in the batch job's blocks and buffer."""
    v = scorer.vectors
    buf = np.empty((scorer.block_rows, len(v)), np.float32)
    t0 = time.perf_counter()
    for a in range(0, len(users), scorer.block_rows):
        q = users[a : a + scorer.block_rows]
        np.matmul(q, v.T, out=buf[: len(q)])
    return time.perf_counter() - t0


def time_scoring(scorer: BatchScorer, n: int) -> float:
    """GEMM + seen exclusion + exact top-k of the first ``n`` users, nothing written."""
    t0 = time.perf_counter()
    for _ in iter_topk(scorer, np.arange(n, dtype=np.int64)):
        pass
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="400000,100000,128", help="users,items,dim (default 400000,100000,128)")
    ap.add_argument("--users", type=int, help="time only the first N users (default: all)")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seen-per-user", type=int, default=26)
    ap.add_argument("--max-chunk-mb", type=int, default=256)
    ap.add_argument("--with-scoring", action="store_true", help="also time GEMM + top-k without writing")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n_users, n_items, dim = (int(x) for x in args.shape.split(","))
    t0 = time.perf_counter()
    data = synthetic_bundle(n_users, n_items, dim, args.seen_per_user, args.seed)
    print(f"synthetic bundle {n_users} users x {n_items} items x {dim} built in {time.perf_counter() - t0:.1f} s", flush=True)
    n = min(args.users or n_users, n_users)
    users = data.user_vectors[:n]
    user_ids = data.user_map.ids[:n] if n < n_users else None
    scorer = BatchScorer(data, args.k, max_chunk_bytes=args.max_chunk_mb << 20)
    rows: dict[str, list[float]] = {"gemm": [], "batch top-K": []}
    if args.with_scoring:
        rows["gemm + top-k"] = []
    stages: list[dict[str, float]] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        for rep in range(args.repeats):
            rows["gemm"].append(time_gemm(scorer, users))
            if args.with_scoring:
                rows["gemm + top-k"].append(time_scoring(scorer, n))
            res = write_batch_topk(data, tmp / f"out{rep}", k=args.k, users=user_ids,
                                   max_chunk_bytes=args.max_chunk_mb << 20)
            rows["batch top-K"].append(res.manifest["seconds"])
            stages.append(res.manifest["seconds_by_stage"])
            shutil.rmtree(tmp / f"out{rep}")
            print(f"repeat {rep + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in rows.items()), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    gemm = statistics.median(rows["gemm"])
    print(f"\n{n} users x {n_items} items x {dim} dims, k={args.k}, {scorer.block_rows} users per block, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
          f"median of {args.repeats}")
    print(f"{'what':<20} {'seconds':>9} {'x gemm':>7} {'users/s':>9}")
    for name, ts in rows.items():
        med = statistics.median(ts)
        print(f"{name:<20} {med:9.1f} {med / gemm:7.2f} {n / med:9.0f}")
    split = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
    print("batch top-K stages (median s): " + ", ".join(f"{k} {v:.1f}" for k, v in split.items()))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (vectors, seen matrix and every step included): {peak_mb:.0f} MB")
    out = {"shape": [n, n_items, dim], "k": args.k, "repeats": args.repeats, "block_rows": scorer.block_rows,
           "seconds": {k: statistics.median(v) for k, v in rows.items()}, "all": rows,
           "ratio_to_gemm": {k: statistics.median(v) / gemm for k, v in rows.items()}, "stages": split,
           "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "peak_rss_mb": round(peak_mb)}
    write_json(ROOT / "benchmarks" / "results" / f"batch_topk_{n}x{n_items}x{dim}.json", out)
    ok = out["ratio_to_gemm"]["batch top-K"] <= 2.0
    print(f"target batch top-K <= 2x GEMM: {'met' if ok else 'NOT met'} ({out['ratio_to_gemm']['batch top-K']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Wall time of ``recsys.models.ALS.fit`` against calling ``implicit`` directly (target overhead <= 5%).

Same matrix (MovieLens latest-small train, ratings as confidences), same settings, same
process; the two are interleaved (ours, direct, ours, direct, ...) so that load from
other processes hits both alike, and medians of the repeats are compared. The direct call
runs under the same one-thread BLAS limit that implicit itself recommends (and that our
wrapper applies), so only the wrapper's own work is measured: input validation, the
device switch, the weighting transform and converting the factors to float32 numpy.

    .venv/bin/python benchmarks/bench_mf_overhead.py [--quick] [--repeats N]

Results also go to benchmarks/results/mf_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.models import ALS  # noqa: E402


def matrix() -> sp.csr_matrix:
    r = pl.read_csv(ROOT / "data" / "movielens-latest-small" / "ratings.csv")
    u = (r["userId"].rank("dense") - 1).to_numpy().astype(np.int64)
    i = (r["movieId"].rank("dense") - 1).to_numpy().astype(np.int64)
    return sp.csr_matrix((r["rating"].to_numpy().astype(np.float32), (u, i)), shape=(u.max() + 1, i.max() + 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller model, 3 repeats")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--threads", type=int, default=1, help="implicit num_threads for both (0 = all cores)")
    args = ap.parse_args()
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    m = matrix()
    settings = {"factors": 64 if args.quick else 128, "regularization": 10.0, "alpha": 1.0, "iterations": 10 if args.quick else 15}
    repeats = args.repeats or (3 if args.quick else 7)

    def ours() -> float:
        t = time.perf_counter()
        ALS(**settings, device="cpu", num_threads=args.threads, random_state=0).fit(m)
        return time.perf_counter() - t

    def direct() -> float:
        t = time.perf_counter()
        with threadpool_limits(limits=1, user_api="blas"):
            AlternatingLeastSquares(**settings, num_threads=args.threads, random_state=0).fit(m, show_progress=False)
        return time.perf_counter() - t

    ours(), direct()  # warm-up (imports, page cache)
    t_ours, t_direct = [], []
    for _ in range(repeats):
        t_ours.append(ours())
        t_direct.append(direct())
    med_o, med_d = statistics.median(t_ours), statistics.median(t_direct)
    overhead = med_o / med_d - 1.0
    print(f"\nALS fit on MovieLens latest-small {m.shape}, nnz {m.nnz}, {settings}, num_threads={args.threads}, {repeats} repeats")
    print(f"{'':24s}{'median s':>10s}{'min s':>10s}{'max s':>10s}")
    print(f"{'implicit directly':24s}{med_d:10.3f}{min(t_direct):10.3f}{max(t_direct):10.3f}")
    print(f"{'recsys ALS (wrapper)':24s}{med_o:10.3f}{min(t_ours):10.3f}{max(t_ours):10.3f}")
    print(f"overhead (median ratio - 1): {overhead * 100:+.2f}%  (target <= 5%): {'PASS' if overhead <= 0.05 else 'FAIL'}")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "mf_overhead.json").write_text(
        json.dumps({"settings": settings, "shape": list(m.shape), "nnz": m.nnz, "ours_s": t_ours, "direct_s": t_direct, "overhead": overhead}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

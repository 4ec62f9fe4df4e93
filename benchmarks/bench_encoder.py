"""Encoding throughput: our content path vs sentence-transformers called directly.

Both encode the same MovieLens "title. genres" texts with the same loaded
all-MiniLM-L6-v2 model, batch size and device, in the same process. "ours" is the full
:func:`recsys.embeddings.content.embed_items` path (text building from the items table,
input checks, length-sorted batching, normalisation, no cache); "direct" is one
``SentenceTransformer.encode(texts, normalize_embeddings=True)`` call. Runs are paired
in ABBA/BAAB blocks (the machine is shared, so its speed drifts); the overhead is the
median over blocks of the ratio of *process CPU time* (wall time is printed too, but on a
shared machine it mostly measures the neighbours). Torch uses ``--threads`` threads
(default 1, so OpenMP spin-waiting does not pollute CPU time). Acceptance: overhead <= 5%.

    .venv/bin/python benchmarks/bench_encoder.py            # 500 texts x 6 blocks
    .venv/bin/python benchmarks/bench_encoder.py --quick    # 100 texts x 4 blocks
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.embeddings.content import embed_items, item_texts  # noqa: E402
from recsys.embeddings.encoders import MiniLMEncoder  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None, help="number of texts")
    ap.add_argument("--repeats", type=int, default=None, help="timed ABBA blocks (4 runs each)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    n = args.n or (100 if args.quick else 500)
    repeats = args.repeats or (4 if args.quick else 6)
    import torch

    torch.set_num_threads(args.threads)

    items = pl.read_csv(ROOT / "data" / "movielens-latest-small" / "movies.csv").head(n)
    items = items.with_columns(item_idx=pl.int_range(0, items.height, dtype=pl.Int64))
    cols = ["title", "genres"]
    texts = item_texts(items, cols)
    enc = MiniLMEncoder(device=args.device, batch_size=args.batch_size, show_progress=False)
    model = enc.model

    def direct() -> np.ndarray:
        return model.encode(texts, batch_size=args.batch_size, show_progress_bar=False, convert_to_numpy=True, normalize_embeddings=True)

    def ours() -> np.ndarray:
        return embed_items(items, cols, enc, cache=None, show_progress=False)[0]

    np.testing.assert_allclose(ours(), direct(), atol=1e-5)  # warm-up, and the same vectors
    wall: dict[str, list[float]] = {"direct": [], "ours": []}
    cpu: dict[str, list[float]] = {"direct": [], "ours": []}
    ratios, wall_ratios = [], []
    fns = {"direct": direct, "ours": ours}
    for r in range(repeats):
        # ABBA / BAAB blocks: a linear drift of the machine's speed cancels within a block
        block = ("direct", "ours", "ours", "direct") if r % 2 == 0 else ("ours", "direct", "direct", "ours")
        got: dict[str, list[tuple[float, float]]] = {"direct": [], "ours": []}
        for name in block:
            t, c = time.perf_counter(), time.process_time()
            fns[name]()
            got[name].append((time.process_time() - c, time.perf_counter() - t))
        for name in got:
            cpu[name] += [x[0] for x in got[name]]
            wall[name] += [x[1] for x in got[name]]
        ratios.append(sum(x[0] for x in got["ours"]) / sum(x[0] for x in got["direct"]))
        wall_ratios.append(sum(x[1] for x in got["ours"]) / sum(x[1] for x in got["direct"]))
    overhead = statistics.median(ratios) - 1
    wall_overhead = statistics.median(wall_ratios) - 1
    print(f"\n{n} texts, batch {args.batch_size}, device {args.device}, {repeats} ABBA blocks, torch threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'path':<36} {'cpu s':>7} {'texts/cpu-s':>11} {'wall s':>7} {'texts/s':>8}")
    for key, name in (("direct", "sentence-transformers direct"), ("ours", "recsys embed_items (MiniLMEncoder)")):
        c, w = statistics.median(cpu[key]), statistics.median(wall[key])
        print(f"{name:<36} {c:>7.2f} {n / c:>11.1f} {w:>7.2f} {n / w:>8.1f}")
    print(f"overhead, median over blocks of CPU-time ratios: {overhead:+.1%} (wall: {wall_overhead:+.1%})  "
          f"acceptance <= +5%: {'PASS' if overhead <= 0.05 else 'FAIL'}")
    md, mo = statistics.median(cpu["direct"]), statistics.median(cpu["ours"])
    t_direct, t_ours = cpu["direct"], cpu["ours"]
    out = ROOT / "benchmarks" / "results" / "encoder.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n": n, "repeats": repeats, "batch_size": args.batch_size, "device": args.device,
                               "threads": args.threads,
                               "cpu_s_direct": t_direct, "cpu_s_ours": t_ours, "wall_s": wall, "ratios": ratios,
                               "overhead": overhead, "wall_overhead": wall_overhead, "texts_per_cpu_s_direct": n / md,
                               "texts_per_cpu_s_ours": n / mo, "load_average": os.getloadavg()[0]}, indent=2))
    return 0 if overhead <= 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())

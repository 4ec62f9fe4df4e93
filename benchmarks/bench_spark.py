"""Benchmark: the Spark engine next to the one-node path (docs/spark.md).

1. ``build-dataset``: polars vs Spark ``local[2]`` on the same synthetic CSV log
   (event-type weights, sum of repeated pairs, 2-core, 10% cold items, random split).
   Each build runs in a fresh child process, which reports its wall time and peak RSS of
   the driver: the Python process (``RUSAGE_SELF``) and, for Spark, the JVM it started
   (``VmHWM`` of its /proc status). The Spark time includes starting the JVM (reported apart).
   Both outputs are compared (splits and id maps equal) in the same run.
2. ALS: ``spark-als`` (Spark MLlib) vs ``als`` (implicit) with the same factors,
   regularization, alpha and iterations on ml-latest-small (or a built log with
   ``--als-events``): training time and NDCG@10 on the test split.

    .venv/bin/python benchmarks/bench_spark.py                       # 2M events, ml-latest-small ALS
    .venv/bin/python benchmarks/bench_spark.py --sizes 2000000,20000000
    .venv/bin/python benchmarks/bench_spark.py --quick               # 200k events

Results: tables on stdout, JSON in benchmarks/results/spark.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EVENT_WEIGHTS = {"view": 1.0, "cart": 3.0, "purchase": 10.0}


def _config(events: str):
    from recsys.data.build import BuildConfig, WeightConfig
    from recsys.data.readers import InputSpec
    from recsys.data.splits import SplitConfig
    from recsys.data.validate import ColumnMapping

    return BuildConfig(InputSpec(events), ColumnMapping("user_id", "item_id", time="timestamp", event_type="event_type"),
                       weights=WeightConfig(event_weights=EVENT_WEIGHTS, aggregate="sum"), min_user_interactions=2,
                       min_item_interactions=2, split=SplitConfig(test_frac=0.2, valid_frac=0.1, cold_item_frac=0.1),
                       seed=0, hash_inputs=False, as_of="2030-01-01")


def child(engine: str, events: str, out: str) -> None:
    t0 = time.perf_counter()
    startup, jvm_peak = 0.0, 0.0
    if engine == "polars":
        from recsys.data.build import build_dataset

        build_dataset(_config(events), out)
    else:
        from recsys.data.spark_build import build_dataset_spark
        from recsys.spark import spark_session

        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # local workers run this interpreter
        spark = spark_session("local[2]", {"spark.driver.memory": "4g", "spark.sql.shuffle.partitions": "8"})
        startup = time.perf_counter() - t0
        build_dataset_spark(_config(events), out, spark=spark)
        jvm_pid = spark.sparkContext._gateway.proc.pid  # the JVM this process started
        with open(f"/proc/{jvm_pid}/status") as f:
            jvm_peak = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM"))
        spark.stop()
    seconds = time.perf_counter() - t0
    py = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "startup_s": startup, "python_mib": py, "jvm_mib": jvm_peak if engine == "spark" else 0.0}))


def run_child(engine: str, events: Path, out: Path, timeout: float) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", engine, str(events), str(out)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "2"})
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} build failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def same_dataset(a: Path, b: Path) -> bool:
    import polars as pl

    return all(pl.read_parquet(a / f"{n}.parquet").equals(pl.read_parquet(b / f"{n}.parquet"))
               for n in ("train", "valid", "test", "test_cold", "user_map", "item_map", "rejects"))


def bench_build(sizes: list[int], timeout: float) -> list[dict]:
    from recsys.data.synthetic import SyntheticConfig, generate_events, write_events

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-spark-") as tmp:
        for n in sizes:
            events = Path(tmp) / f"events-{n}.csv"
            write_events(generate_events(SyntheticConfig(n_events=n, seed=0, event_types=True)), events)
            res = {e: run_child(e, events, Path(tmp) / f"{e}-{n}", timeout) for e in ("polars", "spark")}
            equal = same_dataset(Path(tmp) / f"polars-{n}", Path(tmp) / f"spark-{n}")
            rows.append({"events": n, "polars": res["polars"], "spark": res["spark"], "equal": equal})
            p, s = res["polars"], res["spark"]
            print(f"{n:>11,} | {p['seconds']:>8.1f} | {s['seconds']:>8.1f} ({s['startup_s']:.0f} start) | {s['seconds'] / p['seconds']:>6.1f}x | "
                  f"{p['python_mib']:>7.0f} | {s['python_mib']:>6.0f} + {s['jvm_mib']:>5.0f} JVM | {equal}", flush=True)
    return rows


def bench_als(factors: int, reg: float, alpha: float, iterations: int, events: int = 0, n_eval: int = 5000) -> list[dict]:
    """ALS time and NDCG@10: ml-latest-small (``events=0``) or a synthetic log of ``events`` rows."""
    import dataclasses

    import numpy as np

    from recsys.data.build import BuildConfig, WeightConfig, build_dataset
    from recsys.data.readers import InputSpec
    from recsys.data.splits import SplitConfig
    from recsys.data.validate import ColumnMapping
    from recsys.evaluation import evaluate
    from recsys.models.registry import get_family

    ml = ROOT / "data" / "movielens-latest-small" / "ratings.csv"
    cfg = BuildConfig(InputSpec(str(ml)), ColumnMapping("userId", "movieId", weight="rating", time="timestamp"),
                      weights=WeightConfig(weighting="threshold", positive_threshold=3.5), split=SplitConfig(test_frac=0.2, valid_frac=0.0),
                      seed=0, hash_inputs=False)
    with tempfile.TemporaryDirectory() as tmp:
        if events:
            from recsys.data.synthetic import SyntheticConfig, generate_events, write_events

            path = Path(tmp) / "events.csv"
            write_events(generate_events(SyntheticConfig(n_events=events, seed=0, event_types=True)), path)
            cfg = dataclasses.replace(_config(str(path)), split=SplitConfig(test_frac=0.2, valid_frac=0.0))
        ds = build_dataset(cfg, Path(tmp) / "ds")
    train, test = ds.matrix("train"), ds.matrix("test")
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    users = np.random.default_rng(0).choice(users, min(n_eval, len(users)), replace=False)
    print(f"  {train.shape[0]} users x {train.shape[1]} items, {train.nnz} train pairs; NDCG@10 on {len(users)} test users", flush=True)
    rows = []
    for name, params in (("als", {"use_cg": False, "num_threads": 2}), ("spark-als", {"master": "local[2]"})):
        model = get_family(name).make({"factors": factors, "regularization": reg, "alpha": alpha, "iterations": iterations, **params})
        t0 = time.perf_counter()
        model.fit(train)
        seconds = time.perf_counter() - t0
        ndcg = evaluate(model, train, test, ks=(10,), users=users, show_progress=False)["ndcg@10"]
        rows.append({"family": name, "seconds": seconds, "ndcg@10": ndcg})
        print(f"{name:>10} | {seconds:>8.1f} | {ndcg:.4f}", flush=True)
    return rows


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000000", help="comma-separated event counts (default 2000000)")
    ap.add_argument("--quick", action="store_true", help="200k events")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--no-als", action="store_true")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--als-events", type=int, default=0, help="ALS on a synthetic log of this many events (default: ml-latest-small)")
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--regularization", type=float, default=0.05)
    ap.add_argument("--alpha", type=float, default=10.0)
    ap.add_argument("--iterations", type=int, default=10)
    a = ap.parse_args()
    sizes = [200_000] if a.quick else [int(s) for s in a.sizes.split(",")]
    print("build-dataset, polars vs Spark local[2] (same machine, same run)")
    print(f"{'events':>11} | {'polars s':>8} | {'spark s':>8}           |  ratio | polars MiB | spark MiB (driver)      | equal")
    out = {"build": [] if a.no_build else bench_build(sizes, a.timeout)}
    if not a.no_als:
        what = f"a synthetic log of {a.als_events:,} events" if a.als_events else "ml-latest-small (rating >= 3.5)"
        print(f"\nALS on {what}, 80/20 split: factors={a.factors} reg={a.regularization} "
              f"alpha={a.alpha} iterations={a.iterations}")
        print(f"{'family':>10} | {'fit s':>8} | ndcg@10")
        out["als"] = bench_als(a.factors, a.regularization, a.alpha, a.iterations, a.als_events)
    res = ROOT / "benchmarks" / "results"
    res.mkdir(exist_ok=True)
    (res / "spark.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

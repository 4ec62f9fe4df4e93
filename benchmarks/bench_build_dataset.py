"""Benchmark: ``build-dataset`` (polars, lazy) vs a straightforward pandas implementation.

Both run the same steps on the same synthetic CSV log (user_id, item_id, timestamp,
event_type): read every column as text, validate (missing ids, unparsable timestamps,
unknown event types -> rejects parquet with a reason), event-type weights
(view=1, cart=3, purchase=10), merge repeated (user, item) pairs (sum of weights,
latest time, strongest event), iterative 2-core filter, id maps, 10% cold items,
random per-user 80/20 split with 10% of train as validation, parquet output.

Each run happens in a fresh child process, which reports its wall time and its own
peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``), so the two never share memory.

    .venv/bin/python benchmarks/bench_build_dataset.py            # 1M and 10M events
    .venv/bin/python benchmarks/bench_build_dataset.py --quick    # 100k and 1M
    .venv/bin/python benchmarks/bench_build_dataset.py --sizes 2000000 --repeats 3

Results: table on stdout, JSON in benchmarks/results/build_dataset.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EVENT_WEIGHTS = {"view": 1.0, "cart": 3.0, "purchase": 10.0}
SEED, TEST, VALID, COLD, COLD_MIN, KCORE = 0, 0.2, 0.1, 0.1, 5, 2


def run_polars(events: str, out: str) -> int:
    from recsys.data.build import BuildConfig, WeightConfig, build_dataset
    from recsys.data.readers import InputSpec
    from recsys.data.splits import SplitConfig
    from recsys.data.validate import ColumnMapping

    cfg = BuildConfig(
        events=InputSpec(events),
        mapping=ColumnMapping("user_id", "item_id", time="timestamp", event_type="event_type"),
        weights=WeightConfig(event_weights=EVENT_WEIGHTS, aggregate="sum"),
        min_user_interactions=KCORE,
        min_item_interactions=KCORE,
        split=SplitConfig("random", test_frac=TEST, valid_frac=VALID, cold_item_frac=COLD, cold_min_interactions=COLD_MIN),
        seed=SEED,
        hash_inputs=False,
    )
    ds = build_dataset(cfg, out)
    return int(ds.manifest["rows"]["out"])


def run_pandas(events: str, out: str) -> int:
    """The same pipeline written the way one would in pandas, without tricks."""
    import numpy as np
    import pandas as pd

    os.makedirs(out, exist_ok=True)
    raw = pd.read_csv(events, dtype=str, keep_default_na=False)
    user = raw["user_id"].str.strip()
    item = raw["item_id"].str.strip()
    ts = pd.to_numeric(raw["timestamp"].str.strip(), errors="coerce")
    event = raw["event_type"].str.strip()
    reason = pd.Series(None, index=raw.index, dtype=object)
    # later rules first so that the first failing rule wins
    reason[~event.isin(list(EVENT_WEIGHTS))] = "event_type_unknown"
    reason[event == ""] = "event_type_missing"
    reason[ts.isna()] = "timestamp_unparsable"
    reason[item == ""] = "item_id_missing"
    reason[user == ""] = "user_id_missing"
    bad = reason.notna()
    raw[bad].assign(reason=reason[bad]).to_parquet(f"{out}/rejects.parquet")
    df = pd.DataFrame({"user_id": user[~bad], "item_id": item[~bad], "timestamp": ts[~bad].astype("int64"), "event_type": event[~bad]})
    df["weight"] = df["event_type"].map(EVENT_WEIGHTS).astype("float32")
    g = df.groupby(["user_id", "item_id"], sort=False)
    agg = g.agg(weight=("weight", "sum"), timestamp=("timestamp", "max"))
    agg["event_type"] = df.loc[g["weight"].idxmax().to_numpy(), "event_type"].to_numpy()
    agg = agg.reset_index()
    while True:  # iterative k-core
        uc = agg.groupby("user_id")["user_id"].transform("size")
        ic = agg.groupby("item_id")["item_id"].transform("size")
        bad = (uc < KCORE) | (ic < KCORE)
        if not bad.any():
            break
        agg = agg[~bad]
    users = np.sort(agg["user_id"].unique())
    items = np.sort(agg["item_id"].unique())
    agg["user_idx"] = agg["user_id"].map(pd.Series(np.arange(len(users), dtype="int32"), index=users))
    agg["item_idx"] = agg["item_id"].map(pd.Series(np.arange(len(items), dtype="int32"), index=items))
    pd.DataFrame({"idx": np.arange(len(users), dtype="int32"), "external_id": users}).to_parquet(f"{out}/user_map.parquet")
    pd.DataFrame({"idx": np.arange(len(items), dtype="int32"), "external_id": items}).to_parquet(f"{out}/item_map.parquet")
    agg = agg.sort_values(["user_idx", "item_idx"]).reset_index(drop=True)
    rng = np.random.default_rng(SEED)
    counts = agg["item_idx"].value_counts()
    eligible = np.sort(counts[counts >= COLD_MIN].index.to_numpy())
    cold = rng.choice(eligible, size=int(round(COLD * len(eligible))), replace=False)
    is_cold = agg["item_idx"].isin(cold)
    warm = agg[~is_cold].copy()
    warm["r"] = rng.random(len(warm))
    warm["pos"] = warm.groupby("user_idx")["r"].rank(method="first")
    n = warm.groupby("user_idx")["r"].transform("size")
    n_test = np.minimum(np.floor(n * TEST + 0.5), n - 1).clip(lower=0)
    rest = n - n_test
    n_valid = np.minimum(np.floor(rest * VALID + 0.5), rest - 1).clip(lower=0)
    part = np.where(warm["pos"] > rest, 2, np.where(warm["pos"] > rest - n_valid, 1, 0))
    cols = ["user_idx", "item_idx", "weight", "timestamp", "event_type"]
    for name, frame in (("train", warm[part == 0]), ("valid", warm[part == 1]), ("test", warm[part == 2]), ("test_cold", agg[is_cold])):
        frame[cols].to_parquet(f"{out}/{name}.parquet", index=False)
    return int(len(agg))


def child(impl: str, events: str, out: str) -> None:
    # imports are not part of the measured pipeline
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow  # noqa: F401

    if impl == "polars":
        import recsys.data.build  # noqa: F401
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage0.ru_utime + usage0.ru_stime
    t0 = time.perf_counter()
    rows_out = (run_polars if impl == "polars" else run_pandas)(events, out)
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss * 1024  # KiB on Linux
    cpu = usage.ru_utime + usage.ru_stime - cpu0  # robust to other jobs on a shared machine
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss": peak, "rows_out": rows_out}))


def run_child(impl: str, events: Path, workdir: Path, timeout: float) -> dict:
    out = tempfile.mkdtemp(prefix=f"{impl}-", dir=workdir)
    cmd = [sys.executable, __file__, "--child", impl, "--events", str(events), "--out", str(Path(out) / "ds")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"seconds": float("nan"), "cpu_seconds": float("nan"), "peak_rss": float("nan"), "rows_out": -1, "error": f"timeout after {timeout}s"}
    finally:
        subprocess.run(["rm", "-rf", out], check=False)
    if res.returncode != 0:
        return {"seconds": float("nan"), "cpu_seconds": float("nan"), "peak_rss": float("nan"), "rows_out": -1, "error": res.stderr[-2000:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="100k and 1M events")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], help="comma-separated event counts")
    p.add_argument("--repeats", type=int, default=1, help="runs per implementation and size (median reported)")
    p.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "results" / "tmp")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--skip-pandas-above", type=int, default=50_000_000, help="no pandas run above this many events")
    p.add_argument("--child", choices=["polars", "pandas"], help=argparse.SUPPRESS)
    p.add_argument("--events", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.events, args.out)
        return 0

    from recsys.data.synthetic import SyntheticConfig, generate_events, write_events

    sizes = args.sizes or ([100_000, 1_000_000] if args.quick else [1_000_000, 10_000_000])
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    print(f"build-dataset benchmark on {os.cpu_count()} CPUs (machine shared with other jobs: timings are noisy)")
    for n in sizes:
        events = args.workdir / f"synthetic_{n}.csv"
        if not events.exists():
            t = time.perf_counter()
            write_events(generate_events(SyntheticConfig(n_events=n, seed=SEED)), events)
            print(f"generated {events.name} ({events.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f}s", flush=True)
        row: dict = {"events": n}
        for impl in ("polars", "pandas"):
            if impl == "pandas" and n > args.skip_pandas_above:
                continue
            runs = [run_child(impl, events, args.workdir, args.timeout) for _ in range(args.repeats)]
            errors = [r["error"] for r in runs if "error" in r]
            if errors:
                print(f"{impl} {n}: FAILED\n{errors[0]}", file=sys.stderr)
            ok = [r for r in runs if "error" not in r] or runs
            sec = statistics.median(r["seconds"] for r in ok)
            cpu = statistics.median(r["cpu_seconds"] for r in ok)
            row[impl] = {"seconds": sec, "cpu_seconds": cpu, "events_per_s": n / sec, "peak_rss_gib": max(r["peak_rss"] for r in ok) / 2**30,
                         "rows_out": ok[0]["rows_out"], "runs": [r["seconds"] for r in ok]}
            print(f"  {impl:6s} {n:>11,d} events: {sec:7.1f}s (cpu {cpu:.1f}s)  {n / sec:>12,.0f} events/s  "
                  f"peak RSS {row[impl]['peak_rss_gib']:.2f} GiB  load {os.getloadavg()[0]:.1f}", flush=True)
        if "pandas" in row and "polars" in row:
            row["speedup"] = row["pandas"]["seconds"] / row["polars"]["seconds"]
            row["cpu_ratio"] = row["pandas"]["cpu_seconds"] / row["polars"]["cpu_seconds"]
            row["same_rows_out"] = row["pandas"]["rows_out"] == row["polars"]["rows_out"]
        results.append(row)

    print()
    print(f"{'events':>11} | {'impl':6} | {'seconds':>8} | {'cpu s':>7} | {'events/s':>12} | {'peak RSS GiB':>12} | {'speedup':>7} | {'cpu ratio':>9}")
    print("-" * 98)
    for row in results:
        for impl in ("polars", "pandas"):
            if impl in row:
                r = row[impl]
                sp = f"{row['speedup']:.1f}x" if impl == "polars" and "speedup" in row else ""
                cr = f"{row['cpu_ratio']:.1f}x" if impl == "polars" and "cpu_ratio" in row else ""
                print(f"{row['events']:>11,d} | {impl:6} | {r['seconds']:8.1f} | {r['cpu_seconds']:7.1f} | {r['events_per_s']:>12,.0f} | "
                      f"{r['peak_rss_gib']:>12.2f} | {sp:>7} | {cr:>9}")
    targets = [r for r in results if r["events"] == 10_000_000 and "polars" in r]
    for r in targets:
        ok_time, ok_mem = r["polars"]["seconds"] < 60, r["polars"]["peak_rss_gib"] < 4
        print(f"targets at 10M: <60 s {'OK' if ok_time else 'MISSED'}, <4 GiB {'OK' if ok_mem else 'MISSED'}, "
              f">=5x pandas {'OK' if r.get('speedup', 0) >= 5 else 'MISSED'}")
    out = ROOT / "benchmarks" / "results" / "build_dataset.json"
    out.write_text(json.dumps({"cpus": os.cpu_count(), "load_avg": os.getloadavg(), "results": results}, indent=2))
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: ``recsys run`` at 2M and 20M synthetic events against its own dependencies.

Issue 18 asks whether the nightly job scales to a 20M-event log on one 2-core node. This
script answers with measured numbers and keeps every target of the issue as a PASS/FAIL:

1. **Logs.** :mod:`recsys.data.synthetic` (Zipf item popularity, log-normal user activity,
   taste clusters, event types, item text) at ``2M`` (40k users, 10k items) and ``20M``
   (400k users, 100k items) events, generated in a child process (time and peak RSS
   reported) and cached under ``--work-dir`` (outside git), reused when the same shape and
   seed were generated before.
2. **The job.** ``recsys run`` as a subprocess, fresh output directory, with ``--models als``
   (``[models] baselines=[] train=["als"] publish="als"``, factors 128, content off) and/or
   ``--models default`` (the packaged defaults, content on). Per-step wall time from
   ``OUT/state/run_record.json``, whole-run wall time, peak RSS of the process tree (summed
   RSS polled every 0.5 s with psutil) and the largest single process's ``ru_maxrss``. A run
   past ``--timeout-minutes`` is killed and reported as "did not finish" with the step it
   was in (the last ``step X running`` log line).
3. **Baselines of the same run** (child process, on the ``train`` split of the dataset the
   run built): implicit's ALS called directly (factors 128, 15 iterations), implicit's
   ``recommend`` top-10 for every user, the scoring-GEMM bound (every user vector against
   every item vector, in chunks of 1024 users, no top-k) and ``recsys.evaluation.evaluate``
   of those vectors on the test split (on ``--eval-users`` sampled users, compared with the
   GEMM time of that many users).

``--code-dir`` runs the CLI and the evaluation of another checkout (e.g. a git worktree of
an older commit) through ``PYTHONPATH`` and the working directory, to measure "before";
generation and the implicit baselines do not depend on it.

    .venv/bin/python benchmarks/bench_scale.py          # 2M, ALS only (what `make bench` runs)
    .venv/bin/python benchmarks/bench_scale.py --sizes 2M,20M --models als,default --eval-users 20000
    git worktree add /tmp/recsys-before 61a0df9
    .venv/bin/python benchmarks/bench_scale.py --code-dir /tmp/recsys-before --label before \\
        --sizes 20M --models als --timeout-minutes 20 --eval-users 20000
    .venv/bin/python benchmarks/bench_scale.py --sizes 200k --models als   # a smoke test (~1 min)

Results: tables on stdout, JSON in ``benchmarks/results/bench_scale_<label>.json`` (merged
per size and model set, so sizes can be run separately). Speed targets live here, never in
unit tests. Timings on a shared machine vary: compare ratios to the same-run baselines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EVENT_WEIGHTS = "view=1,cart=3,purchase=10"
SIZES = {"200k": (200_000, 4_000, 1_000), "2M": (2_000_000, 40_000, 10_000), "20M": (20_000_000, 400_000, 100_000)}
ALS_ONLY_TOML = """\
[models]
baselines = []
train = ["als"]
publish = "als"

[models.als]
factors = 128

[content]
enabled = false
"""
# since 4eb76f0 the packaged defaults auto-tune ALS (factors included): off, so ALS-only keeps factors 128
ALS_TUNE_OFF = """
[models.als.tune]
enabled = false
"""
STEP_RE = re.compile(r"step (\S+)\s+running")
#: ``recsys.evaluation.evaluate``'s log line ends with its seconds: the scoring part of a step
EVAL_RE = re.compile(r"evaluated \S+ on \d+ users .* in ([0-9.]+) s$")
#: steps that are scoring and nothing else (users x items by nature)
SCORING_STEPS = ("batch",)


def scoring_seconds(log_text: str) -> dict[str, float]:
    """Seconds each step spent ranking the catalogue for evaluation (from the run's log).

    The growth target (exponent <= 1.1) excludes "what is inherently users x items
    (scoring)", which the issue asks to report separately: a train step's evaluations
    (validation curves, the test split) are scoring; its fit is not.
    """
    out: dict[str, float] = {}
    step = None
    for line in log_text.splitlines():
        m = STEP_RE.search(line)
        if m:
            step = m.group(1)
            continue
        e = EVAL_RE.search(line.rstrip())
        if e and step is not None:
            out[step] = out.get(step, 0.0) + float(e.group(1))
    return out
GIB = 1024 ** 3


# -- child processes: generation and baselines ---------------------------------------------


def _maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def child_generate(out: Path, n_events: int, n_users: int, n_items: int, seed: int) -> dict[str, Any]:
    """Write ``events.parquet`` and ``items.csv`` under ``out``; time and peak RSS of generation."""
    sys.path.insert(0, str(ROOT))
    from recsys.data.synthetic import SyntheticConfig, generate_events, generate_items, write_events

    cfg = SyntheticConfig(n_events=n_events, n_users=n_users, n_items=n_items, seed=seed)
    t0 = time.perf_counter()
    ev = generate_events(cfg)
    gen_s = time.perf_counter() - t0
    write_events(ev, out / "events.parquet", fmt="parquet")
    del ev
    write_events(generate_items(cfg), out / "items.csv")
    return {"generate_s": round(gen_s, 2), "generate_and_write_s": round(time.perf_counter() - t0, 2),
            "generate_peak_rss_mb": round(_maxrss_mb(), 1)}


def _split_csr(dataset: Path, name: str, shape: tuple[int, int]) -> Any:
    import numpy as np
    import polars as pl
    import scipy.sparse as sp

    df = pl.read_parquet(dataset / f"{name}.parquet", columns=["user_idx", "item_idx", "weight"])
    m = sp.csr_matrix((df["weight"].to_numpy().astype(np.float32),
                       (df["user_idx"].to_numpy(), df["item_idx"].to_numpy())), shape=shape)
    m.sum_duplicates()
    return m


@contextlib.contextmanager
def _timed(res: dict[str, Any], key: str) -> Iterator[None]:
    """``res[key]``: wall seconds; ``res[key[:-2] + "_cpu_s"]``: CPU seconds of this process (all threads)."""
    w, c = time.perf_counter(), time.process_time()
    yield
    res[key] = round(time.perf_counter() - w, 2)
    res[key[:-2] + "_cpu_s"] = round(time.process_time() - c, 2)


def child_baselines(dataset: Path, factors: int, iterations: int, eval_users: int, seed: int) -> dict[str, Any]:
    """implicit direct fit + recommend, the scoring-GEMM bound and recsys evaluation, timed."""
    import numpy as np
    import polars as pl
    from implicit.cpu.als import AlternatingLeastSquares

    shape = (pl.scan_parquet(dataset / "user_map.parquet").select(pl.len()).collect().item(),
             pl.scan_parquet(dataset / "item_map.parquet").select(pl.len()).collect().item())
    train = _split_csr(dataset, "train", shape)
    res: dict[str, Any] = {"n_users": shape[0], "n_items": shape[1], "train_pairs": int(train.nnz)}
    als = AlternatingLeastSquares(factors=factors, iterations=iterations, random_state=seed)
    from threadpoolctl import threadpool_limits

    with _timed(res, "implicit_fit_s"), threadpool_limits(limits=1, user_api="blas"):  # implicit's advice, as recsys's ALS
        als.fit(train, show_progress=False)
    with _timed(res, "implicit_recommend_top10_s"):
        als.recommend(np.arange(shape[0]), train, N=10, filter_already_liked_items=True)
    u = np.ascontiguousarray(als.user_factors, dtype=np.float32)
    v = np.ascontiguousarray(als.item_factors, dtype=np.float32)
    chunk = 1024
    buf = np.empty((chunk, shape[1]), np.float32)
    vt = v.T
    with _timed(res, "gemm_bound_s"):
        for lo in range(0, shape[0], chunk):
            hi = min(lo + chunk, shape[0])
            np.matmul(u[lo:hi], vt, out=buf[: hi - lo])
    res["gemm_gflops"] = round(2.0 * shape[0] * shape[1] * factors / res["gemm_bound_s"] / 1e9, 1)
    del buf
    # recsys's own full-ranking evaluation (the code under test) on a seeded user sample
    from recsys.evaluation import evaluate
    from recsys.models.fixed_vectors import FixedVectors

    test = _split_csr(dataset, "test", shape)
    with_test = np.flatnonzero(np.diff(test.indptr) > 0)
    rng = np.random.default_rng(seed)
    sample = with_test if eval_users <= 0 or eval_users >= len(with_test) else np.sort(rng.choice(with_test, eval_users, replace=False))
    model = FixedVectors.from_vectors(u, v, train)
    with _timed(res, "eval_s"):
        metrics = evaluate(model, train, test, users=sample, show_progress=False)
    res["eval_users"] = int(len(sample))
    res["eval_gemm_bound_s"] = round(res["gemm_bound_s"] * len(sample) / shape[0], 2)
    res["eval_ndcg@10"] = round(float(metrics.get("ndcg@10", float("nan"))), 4)
    res["baselines_peak_rss_mb"] = round(_maxrss_mb(), 1)
    return res


# -- the parent: subprocesses, polling, tables -----------------------------------------------


def _env(code_dir: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if code_dir is not None:
        env["PYTHONPATH"] = str(code_dir) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _tree_rss(proc: Any) -> int:
    import psutil

    total = 0
    try:
        for p in [proc] + proc.children(recursive=True):
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    except psutil.NoSuchProcess:
        pass
    return total


def run_monitored(cmd: list[str], cwd: Path, env: dict[str, str], log_path: Path, timeout_s: float | None) -> dict[str, Any]:
    """Run ``cmd`` in its own process group; wall time, peak tree RSS, exit code, killed?"""
    import psutil

    with open(log_path, "w") as logf:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        ps = psutil.Process(p.pid)
        peak, killed, rusage, status, load = 0, False, None, None, []
        while True:
            pid, status, rusage = os.wait4(p.pid, os.WNOHANG)
            if pid == p.pid:
                break
            peak = max(peak, _tree_rss(ps))
            load.append(os.getloadavg()[0])  # the machine is shared: say how busy it was
            if timeout_s is not None and time.perf_counter() - t0 > timeout_s and not killed:
                os.killpg(p.pid, signal.SIGKILL)  # our own child's group (start_new_session)
                killed = True
            time.sleep(0.5)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    return {"exit_code": p.returncode, "killed": killed, "wall_s": round(wall, 1),
            "peak_rss_tree_mb": round(peak / 2**20, 1), "maxrss_mb": round(rusage.ru_maxrss / 1024.0, 1),
            "cpu_s": round(rusage.ru_utime + rusage.ru_stime, 1),  # of the tree: steadier than wall on a busy machine
            "load_avg_mean": round(sum(load) / max(1, len(load)), 1), "load_avg_max": round(max(load, default=0.0), 1)}


def ensure_data(work: Path, size: str, seed: int) -> dict[str, Any]:
    """The cached log of one size, generated in a child process when missing or different."""
    n, nu, ni = SIZES[size]
    d = work / "data" / f"{size}-s{seed}"
    meta = {"n_events": n, "n_users": nu, "n_items": ni, "seed": seed, "format": 1}
    meta_path = d / "meta.json"
    if meta_path.exists() and json.loads(meta_path.read_text()).get("shape") == meta:
        info = json.loads(meta_path.read_text())
        return {**info, "cached": True, "events": str(d / "events.parquet"), "items": str(d / "items.csv")}
    d.mkdir(parents=True, exist_ok=True)
    print(f"[{size}] generating {n:,} events ({nu:,} users, {ni:,} items) in {d} ...", flush=True)
    out = subprocess.run([sys.executable, __file__, "--_generate", str(d), "--_shape", f"{n},{nu},{ni}", "--seed", str(seed)],
                         check=True, capture_output=True, text=True).stdout
    info = {"shape": meta, **json.loads(out.strip().splitlines()[-1])}
    meta_path.write_text(json.dumps(info, indent=1))
    return {**info, "cached": False, "events": str(d / "events.parquet"), "items": str(d / "items.csv")}


def input_flags(data: dict[str, Any], content: bool) -> list[str]:
    flags = ["--events", data["events"], "--user-col", "user_id", "--item-col", "item_id", "--time-col", "timestamp",
             "--event-col", "event_type", "--event-weights", EVENT_WEIGHTS]
    if content:
        flags += ["--items", data["items"], "--item-id-col", "item_id", "--item-text-cols", "title,genres,description"]
    return flags


def run_job(work: Path, size: str, models: str, data: dict[str, Any], code_dir: Path | None, label: str,
            timeout_min: float | None) -> dict[str, Any]:
    """One fresh ``recsys run``; its run record, wall time, RSS and the step it ended in."""
    out = work / "runs" / f"{label}-{size}-{models}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--out", str(out),
           "--tracking-uri", f"sqlite:///{out}/mlruns.db"]
    cwd = code_dir or ROOT
    if models == "als":
        tunes = "[models.als.tune]" in (cwd / "pipelines" / "defaults.toml").read_text()
        (out / "als_only.toml").write_text(ALS_ONLY_TOML + (ALS_TUNE_OFF if tunes else ""))
        cmd += ["--config", str(out / "als_only.toml")]
    cmd += input_flags(data, content=models != "als")
    print(f"[{size}] recsys run --models {models} (code {cwd}) ...", flush=True)
    log_path = out / "run.log"
    res = run_monitored(cmd, cwd, _env(code_dir), log_path, timeout_min * 60 if timeout_min else None)
    rec_path = out / "state" / "run_record.json"
    record = json.loads(rec_path.read_text()) if rec_path.exists() else {}
    text = log_path.read_text(errors="replace")
    started = STEP_RE.findall(text)
    done = {s["name"] for s in record.get("steps", [])}
    steps = {s["name"]: s["seconds"] for s in record.get("steps", []) if s.get("ran")}
    scoring = scoring_seconds(text)
    scoring.update({n: t for n, t in steps.items() if n in SCORING_STEPS})
    res.update(steps=steps, scoring=scoring,
               status=record.get("status", "no record"), out=str(out), command=cmd,
               finished=res["exit_code"] == 0 and not res["killed"],
               in_step=next((s for s in reversed(started) if s not in done), None))
    if not res["finished"]:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        res["log_tail"] = tail
    verdict = "finished" if res["finished"] else f"DID NOT FINISH (in step {res['in_step']}, exit {res['exit_code']})"
    print(f"[{size}] {models}: {verdict} in {res['wall_s']:.0f} s, peak RSS {res['peak_rss_tree_mb']:.0f} MB, "
          f"load average {res['load_avg_mean']} (max {res['load_avg_max']}) on {os.cpu_count()} cores", flush=True)
    return res


def dataset_for(work: Path, size: str, data: dict[str, Any], runs: dict[str, Any], code_dir: Path | None) -> Path:
    """The dataset a run of this size built, or one built now with the same input flags."""
    for r in runs.values():
        d = Path(r["out"]) / "dataset"
        if (d / "manifest.json").exists():
            return d
    d = work / "datasets" / size
    if not (d / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "pipelines.cli", "build-dataset", "--out", str(d)] + input_flags(data, False),
                       cwd=code_dir or ROOT, env=_env(code_dir), check=True)
    return d


def run_baselines(dataset: Path, code_dir: Path | None, eval_users: int, seed: int, log_path: Path) -> dict[str, Any]:
    print(f"baselines on {dataset} (implicit fit, recommend, GEMM, evaluate on {eval_users or 'all'} users) ...", flush=True)
    cmd = [sys.executable, __file__, "--_baselines", str(dataset), "--eval-users", str(eval_users), "--seed", str(seed)]
    res = run_monitored(cmd, code_dir or ROOT, _env(code_dir), log_path, None)
    if res["exit_code"] != 0:
        raise SystemExit(f"baselines failed (exit {res['exit_code']}); see {log_path}")
    return {**json.loads(log_path.read_text().strip().splitlines()[-1]), "wall_s": res["wall_s"],
            "load_avg_mean": res["load_avg_mean"], "load_avg_max": res["load_avg_max"]}


# -- report ----------------------------------------------------------------------------------


def exponent(t2: float | None, t20: float | None) -> float | None:
    if not t2 or not t20 or t2 <= 0 or t20 <= 0:
        return None
    return math.log(t20 / t2) / math.log(10)


def _fmt(x: Any, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec) if isinstance(x, (int, float)) else str(x)


def _cells(r: dict[str, Any] | None) -> dict[str, tuple[float, bool]]:
    """Step -> (seconds, is a lower bound): a killed run's current step and total are lower bounds."""
    if not r:
        return {}
    cells = {n: (float(t), False) for n, t in r["steps"].items()}
    if not r["finished"]:
        if r.get("in_step"):
            cells[r["in_step"]] = (max(0.0, r["wall_s"] - sum(r["steps"].values())), True)
        cells["whole run"] = (r["wall_s"], True)
    else:
        cells["whole run"] = (r["wall_s"], False)
    return cells


def _cell(c: tuple[float, bool] | None) -> str:
    return "-" if c is None else (">" if c[1] else "") + f"{c[0]:.1f}"


def _rest_exponent(name: str, x: tuple[float, bool] | None, y: tuple[float, bool] | None,
                   sa: dict[str, float], sb: dict[str, float]) -> float | None:
    """Growth exponent of a step's time without its scoring (None for pure scoring steps or missing cells)."""
    if not x or not y or x[1] or name in SCORING_STEPS or name == "whole run":
        return None
    return exponent(max(x[0] - sa.get(name, 0.0), 1e-3), max(y[0] - sb.get(name, 0.0), 1e-3))


def step_table(results: dict[str, Any], models: str, small: str = "2M", big: str = "20M") -> str:
    """Seconds per step at both sizes and the growth exponent (">" marks a killed run's lower bounds)."""
    a = _cells(results.get(small, {}).get("runs", {}).get(models))
    b = _cells(results.get(big, {}).get("runs", {}).get(models))
    sa = (results.get(small, {}).get("runs", {}).get(models) or {}).get("scoring", {})
    sb = (results.get(big, {}).get("runs", {}).get(models) or {}).get("scoring", {})
    names = [n for n in a if n != "whole run"] + [n for n in b if n not in a and n != "whole run"] + ["whole run"]
    lines = [f"recsys run, models={models} (scoring = ranking users x items: evaluations, batch top-K)",
             f"{'step':<22} {'s @' + small:>10} {'s @' + big:>10} {'exponent':>9} {'scoring @' + small:>12} "
             f"{'scoring @' + big:>12} {'exp. w/o scoring':>17}"]
    for n in names:
        x, y = a.get(n), b.get(n)
        e = exponent(x[0], y[0]) if x and y and not x[1] else None
        ea = _rest_exponent(n, x, y, sa, sb)
        lines.append(f"{n:<22} {_cell(x):>10} {_cell(y):>10} {('>=' if y and y[1] else '') + _fmt(e, '.2f') if e is not None else '-':>9}"
                     f" {_fmt(sa.get(n)) if n in sa else '-':>12} {_fmt(sb.get(n)) if n in sb else '-':>12}"
                     f" {('>=' if y and y[1] else '') + _fmt(ea, '.2f') if ea is not None else '-':>17}")
    for tag, r in ((small, results.get(small, {}).get("runs", {}).get(models)), (big, results.get(big, {}).get("runs", {}).get(models))):
        if r:
            if not r["finished"]:
                lines.append(f"  @{tag}: DID NOT FINISH: killed={r['killed']}, exit {r['exit_code']}, in step {r['in_step']} "
                             f"after {r['wall_s']:.0f} s")
            lines.append(f"  @{tag}: CPU time {r.get('cpu_s', '-')} s, peak RSS of the process tree {r['peak_rss_tree_mb']:.0f} MB, "
                         f"load average {r.get('load_avg_mean', '-')} (max {r.get('load_avg_max', '-')}) on {os.cpu_count()} cores")
    return "\n".join(lines)


def baseline_table(results: dict[str, Any], small: str = "2M", big: str = "20M") -> str:
    """Wall and CPU seconds of each same-run baseline at both sizes (CPU: this process, all threads)."""
    keys = ("implicit_fit_s", "implicit_recommend_top10_s", "gemm_bound_s", "eval_s", "eval_gemm_bound_s")
    a = results.get(small, {}).get("baselines") or {}
    b = results.get(big, {}).get("baselines") or {}
    lines = ["same-run baselines (implicit direct, factors 128, 15 iterations; GEMM = all users x all items, chunked)",
             f"{'baseline':<28} {'s @' + small:>10} {'s @' + big:>10} {'exponent':>9} {'cpu @' + small:>10} {'cpu @' + big:>10}"]
    for k in keys:
        c = k[:-2] + "_cpu_s"
        lines.append(f"{k:<28} {_fmt(a.get(k)):>10} {_fmt(b.get(k)):>10} {_fmt(exponent(a.get(k), b.get(k)), '.2f'):>9} "
                     f"{_fmt(a.get(c)):>10} {_fmt(b.get(c)):>10}")
    for tag, r in ((small, a), (big, b)):
        if r:
            lines.append(f"  @{tag}: {r['n_users']:,} users x {r['n_items']:,} items, {r['train_pairs']:,} train pairs, "
                         f"GEMM {r['gemm_gflops']} GFLOP/s, evaluated {r['eval_users']:,} users (ndcg@10 {r['eval_ndcg@10']}), "
                         f"peak RSS {r['baselines_peak_rss_mb']:.0f} MB, load average {r.get('load_avg_mean', '-')}")
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, PASS/FAIL/n/a) for each target of issue 18 that this benchmark measures.

    A killed run gives lower bounds: a bound already over its limit is a FAIL, a bound
    under it proves nothing (n/a), and its peak RSS so far can only fail.
    """
    out: list[tuple[str, str, str]] = []

    def check(name: str, value: float | None, limit: float, unit: str, lower: bool = False, why_na: str = "not measured") -> None:
        if value is None:
            out.append((name, why_na, "n/a"))
            return
        measured = f"{'>' if lower else ''}{value:.2f}{unit} (limit {limit:g}{unit})"
        verdict = "FAIL" if value > limit else "n/a" if lower else "PASS"
        out.append((name, measured + (" before it was killed" if lower else ""), verdict))

    big, small = results.get("20M", {}), results.get("2M", {})
    base = big.get("baselines") or {}
    fit = base.get("implicit_fit_s")
    als = big.get("runs", {}).get("als")
    if als:
        cut = not als["finished"]
        check("20M ALS-only run <= 10 min", als["wall_s"] / 60, 10, " min", cut)
        check("20M ALS-only run <= 6.5x implicit direct fit", fit and als["wall_s"] / fit, 6.5, "x", cut, "no baseline")
        fit_cpu = base.get("implicit_fit_cpu_s")
        check("  the same in CPU seconds (steadier on a busy machine)", fit_cpu and als.get("cpu_s") and als["cpu_s"] / fit_cpu,
              6.5, "x", cut, "no CPU times recorded")
        check("20M ALS-only peak RSS <= 8 GiB", als["peak_rss_tree_mb"] / 1024, 8, " GiB", cut)
        refit = als["steps"].get("refit")
        check("20M ALS fit (refit step, all pairs) <= 1.2x implicit direct (train pairs)",
              refit and fit and refit / fit, 1.2, "x", why_na="the run has no finished refit step")
    else:
        out.append(("20M ALS-only targets", "not run", "n/a"))
    dfl = big.get("runs", {}).get("default")
    if dfl:
        check("20M default models <= 30 min", dfl["wall_s"] / 60, 30, " min", not dfl["finished"])
        check("20M default models peak RSS <= 8 GiB", dfl["peak_rss_tree_mb"] / 1024, 8, " GiB", not dfl["finished"])
    else:
        out.append(("20M default-model targets", "not run", "n/a"))
    if base:
        check(f"20M test evaluation ({base['eval_users']:,} users) <= 2x GEMM bound",
              base["eval_s"] / base["eval_gemm_bound_s"] if base.get("eval_gemm_bound_s") else None, 2, "x")
        batch = next((r["steps"][n] for r in big.get("runs", {}).values() for n in r["steps"] if "batch" in n), None)
        check("20M batch top-K <= 2x GEMM bound", batch and batch / base["gemm_bound_s"], 2, "x",
              why_na="no batch top-K step in the run")
    d2 = small.get("runs", {}).get("default")
    if d2:
        check("2M default models <= 5 min", d2["wall_s"] / 60, 5, " min", not d2["finished"])
    for models in ("als", "default"):
        ra, rb = small.get("runs", {}).get(models), big.get("runs", {}).get(models)
        a, b = _cells(ra), _cells(rb)
        sa, sb = (ra or {}).get("scoring", {}), (rb or {}).get("scoring", {})
        # promote is MLflow registry bookkeeping of constant size; scoring is reported apart (issue 18)
        rows = [(n, _rest_exponent(n, a[n], y, sa, sb), y[1]) for n, y in b.items() if n in a and n != "promote"]
        rows = [r for r in rows if r[1] is not None]
        if rows:
            n, e, lower = max(rows, key=lambda r: r[1])
            check(f"{models}: every step's growth exponent without scoring <= 1.1 (worst: {n})", e, 1.1, "", lower)
    return out


def machine() -> dict[str, Any]:
    import psutil

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"nproc": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / GIB, 1), "cpu": cpu,
            "python": platform.python_version()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # modest defaults: `make bench` runs every benchmark without arguments
    p.add_argument("--sizes", default="2M", help=f"comma-separated, of {', '.join(SIZES)} (default 2M; the issue's check: 2M,20M)")
    p.add_argument("--models", default="als", help="comma-separated: als (ALS only, factors 128, content off), default (default: als)")
    p.add_argument("--timeout-minutes", type=float, default=None, help="kill a run after this long (reported as not finished)")
    p.add_argument("--code-dir", type=Path, default=None, help="checkout whose CLI and evaluation run (default: this one)")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/recsys-scale"), help="cached logs and run outputs (outside git)")
    p.add_argument("--label", default="after", help="results go to benchmarks/results/bench_scale_<label>.json")
    p.add_argument("--eval-users", type=int, default=0, help="users in the timed evaluate() baseline (0 = all with test items)")
    p.add_argument("--no-baselines", action="store_true", help="skip the implicit / GEMM / evaluate baselines")
    p.add_argument("--no-runs", action="store_true", help="only the data and the baselines (the dataset is built if needed)")
    p.add_argument("--dataset", type=Path, default=None,
                   help="with one size: baselines on this dataset directory (e.g. a concurrent run's OUT/dataset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--_generate", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_shape", help=argparse.SUPPRESS)
    p.add_argument("--_baselines", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--report", action="store_true", help="only print the tables of the --label results file")
    args = p.parse_args()
    if args._generate:
        n, nu, ni = (int(x) for x in args._shape.split(","))
        print(json.dumps(child_generate(args._generate, n, nu, ni, args.seed)))
        return
    if args._baselines:
        print(json.dumps(child_baselines(args._baselines, 128, 15, args.eval_users, args.seed)))
        return
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [s for s in sizes if s not in SIZES] + [m for m in models if m not in ("als", "default")]
    if bad:
        p.error(f"unknown size or model set {bad}; sizes: {', '.join(SIZES)}; models: als, default")
    if args.dataset and (len(sizes) != 1 or not (args.dataset / "manifest.json").exists()):
        p.error(f"--dataset needs one --sizes value and a dataset directory with manifest.json, got {args.dataset}")
    code_dir = args.code_dir.resolve() if args.code_dir else None
    if code_dir and not (code_dir / "pipelines" / "cli.py").exists():
        p.error(f"--code-dir {code_dir} has no pipelines/cli.py (a checkout of this project is expected)")
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    res_path = RESULTS / f"bench_scale_{args.label}.json"
    report: dict[str, Any] = json.loads(res_path.read_text()) if res_path.exists() else {}
    if args.report:
        if not report:
            p.error(f"no results in {res_path}; run the benchmark with --label {args.label} first")
        print_report(report, res_path)
        return
    report.update(label=args.label, machine=machine(), code_dir=str(code_dir or ROOT))
    git = ["git", "-C", str(code_dir or ROOT)]
    report["code_commit"] = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    report["code_dirty"] = bool(subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip())
    for size in sizes:
        data = ensure_data(work, size, args.seed)
        report = save(res_path, report, size, "data", {k: v for k, v in data.items() if k not in ("events", "items")})
        runs: dict[str, Any] = {}
        if not args.no_runs:
            for m in models:
                runs[m] = run_job(work, size, m, data, code_dir, args.label, args.timeout_minutes)
                report = save(res_path, report, size, f"runs.{m}", runs[m])
        if not args.no_baselines:
            ds = args.dataset or dataset_for(work, size, data, runs, code_dir)
            base = run_baselines(ds, code_dir, args.eval_users, args.seed, work / f"baselines-{args.label}-{size}.log")
            report = save(res_path, report, size, "baselines", base)
    print_report(report, res_path)


def save(res_path: Path, report: dict[str, Any], size: str, key: str, value: Any) -> dict[str, Any]:
    """Set ``sizes[size][key]`` (``runs.<models>`` for a run) in the results file, re-read first.

    Re-reading keeps what other invocations with the same ``--label`` wrote meanwhile (e.g.
    the 20M baselines measured concurrently with the 20M run, or the sizes run apart).
    """
    current = json.loads(res_path.read_text()) if res_path.exists() else {}
    merged = {**current, **{k: v for k, v in report.items() if k != "sizes"}, "sizes": current.get("sizes", {})}
    entry = merged["sizes"].setdefault(size, {})
    if key.startswith("runs."):
        entry.setdefault("runs", {})[key[5:]] = value
    else:
        entry[key] = value
    tmp = res_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged, indent=1))
    os.replace(tmp, res_path)
    return merged


def print_report(report: dict[str, Any], res_path: Path) -> None:
    """Tables for the smallest and largest size in the results file, then the targets."""
    results = report.get("sizes", {})
    present = [s for s in SIZES if s in results]
    small, big = (present[0], present[-1]) if len(present) > 1 else (present[0], "-") if present else ("2M", "20M")
    print(f"\nmachine: {report['machine']}; code: {report['code_dir']} {report.get('code_commit', '')}\n")
    for m in ("als", "default"):
        if any(m in results.get(s, {}).get("runs", {}) for s in (small, big)):
            print(step_table(results, m, small, big) + "\n")
    print(baseline_table(results, small, big) + "\n")
    print("issue 18 targets:")
    for name, measured, verdict in targets(results):
        print(f"  {verdict:<5} {name}: {measured}")
    print(f"\nresults: {res_path}")


if __name__ == "__main__":
    main()

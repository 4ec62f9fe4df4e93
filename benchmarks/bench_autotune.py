"""Validation-tuned ALS vs an oracle searched on the test split vs the packaged defaults (issue 21 item 1).

For each dataset (built by the real ``build_dataset`` path: random per-user split, 20% test,
10% of the rest valid, no cold items):

* **packaged**: the ALS parameters of ``pipelines/defaults.toml`` (tuned on MovieLens),
  best iteration chosen on valid, refitted on train + valid, test NDCG@10;
* **tuned**: :func:`recsys.tuning.select_and_fit` with the family's default TPE space,
  ``--budget`` minutes, median pruning, seed 0, scored on valid only; refitted on train +
  valid, test NDCG@10. This is what ``recsys run`` does with ``[models.als.tune]``;
* **oracle**: the same TPE search with the *test* split as its validation (fitted on train +
  valid), i.e. the best ALS the search space holds for this test split. It is reported,
  never used for selection. Its value is the best test NDCG@10 among every configuration
  evaluated on test (the oracle search's trials, the tuned pick and the packaged pick).

The table gives the ratio tuned / oracle (target >= 0.97) and tuned / packaged, trials and
minutes. All three on the same machine in the same process; ALS on ``--threads`` threads.

    .venv/bin/python benchmarks/bench_autotune.py [--datasets small,100k,skewed,sparse,nometa]
        [--budget 15] [--oracle-budget 15] [--threads 2] [--out benchmarks/results/autotune.json]

Datasets: ``small`` = MovieLens latest-small (embedded), ``100k`` = ML-100K
(``../shared/data/movielens-100k``, skipped if absent), and generated logs
(:mod:`recsys.data.synthetic`, 100k events): ``skewed`` (play counts: repeated plays summed,
Zipf 1.3 popularity), ``sparse`` (25k users, ~4 events each), ``nometa`` (implicit events,
no weight column, no item metadata at all).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.data.build import build_dataset  # noqa: E402
from recsys.data.config import BuildConfig, ColumnMapping, WeightConfig  # noqa: E402
from recsys.data.readers import InputSpec  # noqa: E402
from recsys.data.splits import SplitConfig  # noqa: E402
from recsys.data.synthetic import SyntheticConfig, generate_events  # noqa: E402
from recsys.evaluation import format_table  # noqa: E402
from recsys.tuning import select_and_fit  # noqa: E402

ML_SMALL = ROOT / "data" / "movielens-latest-small"
ML100K = ROOT.parent / "shared" / "data" / "movielens-100k"
SPLIT = SplitConfig(strategy="random", test_frac=0.2, valid_frac=0.1, cold_item_frac=0.0)
log = logging.getLogger("bench_autotune")


def packaged_als() -> dict[str, Any]:
    als = tomllib.loads((ROOT / "pipelines" / "defaults.toml").read_text())["models"]["als"]
    return {k: v for k, v in als.items() if k != "tune"}


def build(name: str, work: Path) -> Any:
    """The dataset ``name`` built by the real build path under ``work`` (``None`` if its data is absent)."""
    if name == "small":
        cfg = BuildConfig(InputSpec(str(ML_SMALL / "ratings.csv")), ColumnMapping("userId", "movieId", weight="rating",
                          time="timestamp"), weights=WeightConfig(aggregate="last"), split=SPLIT)
    elif name == "100k":
        if not (ML100K / "u.data").exists():
            log.warning("ML-100K not found at %s; skipped", ML100K)
            return None
        cfg = BuildConfig(InputSpec(str(ML100K / "u.data"), format="csv", sep="\t", has_header=False,
                                    columns=("user", "item", "rating", "ts")),
                          ColumnMapping("user", "item", weight="rating", time="ts"), split=SPLIT)
    else:
        shapes = {"skewed": dict(n_events=100_000, item_alpha=1.3, in_cluster=0.9, n_items=2_000),
                  "sparse": dict(n_events=100_000, n_users=25_000, n_items=3_000),
                  "nometa": dict(n_events=100_000, n_items=5_000, n_clusters=40, in_cluster=0.7)}[name]
        df = generate_events(SyntheticConfig(**shapes, event_types=False, seed=7))
        path = work / f"{name}.csv"
        df.write_csv(path)
        # repeated (user, item) events add up: weight = play count (skewed), 1 per pair otherwise
        cfg = BuildConfig(InputSpec(str(path)), ColumnMapping("user_id", "item_id", time="timestamp"),
                          weights=WeightConfig(aggregate="sum"), split=SPLIT,
                          min_user_interactions=2 if name == "sparse" else 1)
    return build_dataset(cfg, work / name)


def run(name: str, ds: Any, budget: float, oracle_budget: float, threads: int, max_trials: int) -> dict[str, Any]:
    tr, va, te = ds.matrix("train"), ds.matrix("valid"), ds.matrix("test")
    fit = (tr + va).tocsr()
    base = {**packaged_als(), "num_threads": threads, "device": "cpu"}
    common = dict(eval_every=5, show_progress=False)
    log.info("%s: %d users x %d items, train %d, valid %d, test %d", name, ds.n_users, ds.n_items, tr.nnz, va.nnz, te.nnz)

    t0 = time.perf_counter()
    packaged = select_and_fit("als", tr, va, te, {}, base_params=base, **common)
    t_packaged = time.perf_counter() - t0

    t0 = time.perf_counter()
    tuned = select_and_fit("als", tr, va, te, {}, base_params=base, budget_minutes=budget, max_trials=max_trials,
                           method="tpe", seed=0, **common)
    t_tuned = time.perf_counter() - t0

    t0 = time.perf_counter()  # the oracle: the test split as "validation", fitted on train + valid; never selects
    oracle = select_and_fit("als", fit, te, None, {}, base_params=base, budget_minutes=oracle_budget,
                            max_trials=max_trials, method="tpe", seed=1, **common)
    t_oracle = time.perf_counter() - t0
    oracle_best = max(oracle.best.score, tuned.metrics_test["ndcg@10"], packaged.metrics_test["ndcg@10"])

    row = {
        "dataset": name, "users": ds.n_users, "items": ds.n_items, "train": tr.nnz,
        "packaged_ndcg@10": packaged.metrics_test["ndcg@10"], "tuned_ndcg@10": tuned.metrics_test["ndcg@10"],
        "oracle_ndcg@10": oracle_best, "oracle_search_ndcg@10": oracle.best.score,
        "tuned/oracle": tuned.metrics_test["ndcg@10"] / oracle_best,
        "tuned/packaged": tuned.metrics_test["ndcg@10"] / packaged.metrics_test["ndcg@10"],
        "tuned_trials": len(tuned.trials), "tuned_pruned": sum(t.state == "pruned" for t in tuned.trials),
        "tuned_minutes": t_tuned / 60, "oracle_trials": len(oracle.trials), "oracle_minutes": t_oracle / 60,
        "packaged_minutes": t_packaged / 60, "tuned_valid_ndcg@10": tuned.best.score,
        "packaged_valid_ndcg@10": packaged.best.score, "tuned_params": tuned.params, "oracle_params": oracle.params,
        "budget_minutes": budget, "oracle_budget_minutes": oracle_budget, "threads": threads, "seed": 0,
    }
    log.info("%s: %s", name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                              if not k.endswith("params")})
    return row


def run_datasets(names: str, out: Path, fn: Any) -> dict[str, Any]:
    """``fn(name, dataset)`` for each comma-separated dataset name; rows saved to ``out`` after each one."""
    rows = json.loads(out.read_text()) if out.exists() else {}
    with tempfile.TemporaryDirectory(prefix="bench-") as d:
        for name in [s.strip() for s in names.split(",") if s.strip()]:
            ds = build(name, Path(d))
            if ds is None:
                continue
            rows[name] = fn(name, ds)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(rows, indent=2, default=str) + "\n")  # partial results survive a kill
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="small,100k,skewed,sparse,nometa")
    p.add_argument("--budget", type=float, default=15.0, help="tuning budget in minutes (validation search)")
    p.add_argument("--oracle-budget", type=float, default=None, help="oracle search budget (default: --budget)")
    p.add_argument("--max-trials", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "autotune.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("recsys.models", "recsys.evaluation", "recsys.data", "recsys.tuning", "recsys.progress"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    rows = run_datasets(args.datasets, args.out, lambda name, ds: run(name, ds, args.budget, args.oracle_budget
                                                                      or args.budget, args.threads, args.max_trials))
    cols = ["packaged_ndcg@10", "tuned_ndcg@10", "oracle_ndcg@10", "tuned/oracle", "tuned/packaged", "tuned_trials",
            "tuned_pruned", "tuned_minutes", "oracle_trials", "oracle_minutes"]
    print(format_table({k: {c: float(v[c]) for c in cols} for k, v in rows.items()}, metrics=cols, name_header="dataset"))
    for k, v in rows.items():
        print(f"{k}: tuned {v['tuned_params']}")


if __name__ == "__main__":
    main()

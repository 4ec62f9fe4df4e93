"""Fusion of ALS and the two-tower vs each family alone (issue 21 item 3), same seeds, side by side.

Protocol, on each dataset (built by the real ``build_dataset`` path, random per-user split
20% test, 10% of the rest valid, no cold items):

1. ALS with the packaged parameters (``pipelines/defaults.toml``), its best iteration chosen
   on valid, fitted on ``train``; the two-tower with the packaged parameters,
   early-stopped on valid, fitted on ``train`` (``refit_on_valid = false``);
2. the fusion weights chosen on valid (:func:`recsys.models.fusion.select_weights`, a 0.05
   grid of the simplex; a single family is on the grid);
3. ALS, two-tower and the fusion evaluated once on test, every model fitted on ``train``
   only (the same data for all three), train + valid items excluded.

Target: fusion >= 1.03x the best single family's test NDCG@10.

    .venv/bin/python benchmarks/bench_fusion.py [--datasets small,100k] [--epochs N]
        [--out benchmarks/results/fusion.json]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_autotune import run_datasets  # noqa: E402
from recsys.evaluation import evaluate, format_table  # noqa: E402
from recsys.models.fusion import fuse, select_weights  # noqa: E402
from recsys.training import train_and_evaluate  # noqa: E402

log = logging.getLogger("bench_fusion")


def packaged(family: str) -> dict:
    table = tomllib.loads((ROOT / "pipelines" / "defaults.toml").read_text())["models"][family]
    return {k: v for k, v in table.items() if k != "tune"}


def run(name: str, ds, epochs: int | None) -> dict:
    train, valid, test = ds.matrix("train"), ds.matrix("valid"), ds.matrix("test")
    seen = (train + valid).tocsr()
    t0 = time.perf_counter()
    als = train_and_evaluate(ds, "als", {**packaged("als"), "device": "cpu"}, tuning={"refit_on_valid": False},
                             show_progress=False).model
    t_als = time.perf_counter() - t0
    tt_params = {**packaged("two-tower"), "refit_on_valid": False, "device": "cpu"}
    if epochs is not None:
        tt_params["epochs"] = epochs
    t0 = time.perf_counter()
    tt = train_and_evaluate(ds, "two-tower", tt_params, show_progress=False).model
    t_tt = time.perf_counter() - t0
    fused, scores = select_weights([als, tt], train, valid, names=["als", "two-tower"], step=0.05)
    models = {"als": als, "two-tower": tt, "fusion": fuse([als, tt], fused.weights, ["als", "two-tower"],
                                                            fused.scales, user_items=seen)}
    test_m = {k: evaluate(m, seen, test, ks=(10, 20)) for k, m in models.items()}
    best_single = max(test_m["als"]["ndcg@10"], test_m["two-tower"]["ndcg@10"])
    row = {"dataset": name, "weights": dict(zip(["als", "two-tower"], fused.weights)),
           "valid_ndcg@10": {"fusion": scores[tuple(fused.weights)], "als": scores[(1.0, 0.0)],
                             "two-tower": scores[(0.0, 1.0)]},
           **{f"{k}_ndcg@10": v["ndcg@10"] for k, v in test_m.items()},
           **{f"{k}_recall@20": v["recall@20"] for k, v in test_m.items()},
           "fusion/best_single": test_m["fusion"]["ndcg@10"] / best_single,
           "als_minutes": t_als / 60, "two_tower_minutes": t_tt / 60}
    log.info("%s: %s", name, row)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="small,100k")
    p.add_argument("--epochs", type=int, default=None, help="two-tower epochs (default: the packaged value)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fusion.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("recsys.models", "recsys.evaluation", "recsys.data", "recsys.tuning", "recsys.progress"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    rows = run_datasets(args.datasets, args.out, lambda name, ds: run(name, ds, args.epochs))
    cols = ["als_ndcg@10", "two-tower_ndcg@10", "fusion_ndcg@10", "fusion/best_single", "als_minutes", "two_tower_minutes"]
    print(format_table({k: {c: float(v[c]) for c in cols} for k, v in rows.items()}, metrics=cols, name_header="dataset"))
    for k, v in rows.items():
        print(f"{k}: weights {v['weights']}")


if __name__ == "__main__":
    main()

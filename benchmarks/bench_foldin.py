"""Fold-in drift on the main job's published bundle (issue 17): target mean top-10 overlap >= 0.9.

For ``--users`` sampled users (seeded) of the bundle, ``Retriever.recommend(user, k)`` is
compared with ``Retriever.recommend_from_history(all the user's interactions,
weights=their raw weights, k)``; both exclude exactly the user's interactions (the bundle's
seen items are all of them). Rows of the table, all in this one process on the same
bundle and users:

* ``spec``: what the Retriever does now (``foldin.json`` + ``foldin.npz``: the model's
  weighting, alpha, regularization and the trained ``YᵀY``);
* ``spec, gram of bundle vectors``: the same without the stored ``YᵀY`` (the Gram of the
  bundle's item vectors, cold items' content vectors included);
* ``before: alpha * raw weight``: the Retriever's solve before issue 17 (linear
  confidences whatever the model trained with, Gram of the bundle's vectors).

    .venv/bin/python benchmarks/bench_foldin.py [--out runs/default] [--users 200] [--seed 0]

Needs a published bundle: ``make run`` first. Results also go to benchmarks/results/foldin.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.data import Dataset  # noqa: E402
from recsys.models.foldin import FoldIn, FoldInSpec  # noqa: E402
from recsys.serving.retriever import Retriever  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "runs" / "default"), help="root of the main job (has latest + dataset)")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()

    out = Path(args.out)
    if not (out / "latest").exists():
        sys.exit(f"no published bundle under {out}; run `make run` first")
    r = Retriever.load(out, backend="exact")
    ds = Dataset.load(out / "dataset")
    seen = ds.matrix(*[s for s in ("train", "valid", "test", "test_cold") if s in ds.splits and ds.splits[s].height])
    spec = r.foldin
    print(f"bundle {r.version}: {r.n_users} users, {r.n_items} items, dim {r.dim}; fold-in {spec.method} "
          f"weighting={spec.weighting} alpha={spec.alpha} regularization={spec.regularization} "
          f"stored gram={'yes' if spec.gram is not None else 'no'}")

    users = np.sort(np.random.default_rng(args.seed).choice(seen.shape[0], min(args.users, seen.shape[0]), replace=False))
    user_ids = r.user_map.ids
    item_ids = np.asarray(r.item_map.ids, dtype=object)
    variants = {
        "spec (the Retriever now)": r._foldin,
        "spec, gram of bundle vectors": FoldIn(dataclasses.replace(spec, gram=None), r._items),
        "before: alpha * raw weight": FoldIn(FoldInSpec.from_json(
            {"method": "als", "regularization": spec.regularization, "alpha": spec.alpha}), r._items),
    }
    rows = []
    for name, fold in variants.items():
        overlaps, secs = [], 0.0
        for u in users:
            hist, w = seen[u].indices, seen[u].data
            ref, _ = r.recommend(user_ids[u], k=args.k)
            t = time.perf_counter()
            vec = fold.user(hist, w)  # timed: the fold-in solve alone
            secs += time.perf_counter() - t
            if fold is r._foldin:  # the public path, end to end
                got, _ = r.recommend_from_history(list(item_ids[hist]), weights=w, k=args.k)
            else:
                got, _ = r.search(vec, k=args.k, exclude=list(item_ids[hist]))
            overlaps.append(len(set(ref) & set(got)) / args.k)
        o = np.asarray(overlaps)
        rows.append({"fold_in": name, "mean_overlap": round(float(o.mean()), 4), "min": float(o.min()),
                     "p10": float(np.percentile(o, 10)), "ms_per_foldin": round(1000 * secs / len(users), 3)})
    width = max(len(x["fold_in"]) for x in rows)
    print(f"\n{args.users} users (seed {args.seed}), top-{args.k} overlap of recommend(user) with "
          "recommend_from_history(all interactions, raw weights)")
    print(f"{'fold-in':<{width}}  mean   min    p10    ms/fold-in")
    for x in rows:
        print(f"{x['fold_in']:<{width}}  {x['mean_overlap']:.3f}  {x['min']:.2f}   {x['p10']:.2f}   {x['ms_per_foldin']:.2f}")
    target = rows[0]["mean_overlap"] >= 0.9
    print(f"\ntarget mean overlap >= 0.9: {'met' if target else 'NOT met'} ({rows[0]['mean_overlap']:.3f})")
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "foldin.json").write_text(json.dumps({"bundle": r.version, "users": int(len(users)), "seed": args.seed,
                                                 "k": args.k, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

"""Accuracy of the two-tower model next to tuned ALS, measured in the same run (issue 4).

Datasets and protocol (the MF benchmark's):

* MovieLens latest-small (embedded): random 80/20 split per user;
* MovieLens 100K (``../shared/data/movielens-100k``): random 75/25 per user (Microsoft
  Recommenders protocol: every test rating relevant, seen items removed).

20% of each user's training part is carved out as validation. MovieLens only has users with
>= 20 ratings, so a random 25% of users is thinned to 2-8 training interactions to create
the "fewer than 10 training interactions" slice; their validation interactions never
become training data (``thin_users``). Both families go through the project's training
protocol, :func:`recsys.training.train_and_evaluate` (issue 17), on a
:class:`~recsys.data.dataset.Dataset` whose ``valid`` split is the other users'
validation pairs (``parts["refit"]``), so the protocol's refit on train + valid trains on
exactly the pairs the final models always trained on. The one change of design from
before the protocol: validation during selection now skips the thinned users' validation
pairs (they used to be validation targets, so selection saw light users).

* ALS: the ``als`` family with ``weighting = "binary"`` (confidence ``alpha`` on every
  interaction), 15 iterations (``eval_every = 15``: no iteration selection), a small grid
  of factors/regularization/alpha with strong regularization as the search space;
* two-tower: ``configs/two_tower_small.toml`` through the ``two-tower`` family's own
  protocol hook (``recsys.training_two_tower``): early stopping on validation with one
  member, refit of the ensemble on train + valid for as many optimizer steps as the best
  epoch took; item features ``"auto"`` = genre multi-hot of the Dataset's items table
  (``genres`` column), ``--item-features none`` drops them.

Both are evaluated once on test: NDCG@10 and Recall@20 for all users and for users with
fewer than 10 training interactions. Targets: two-tower NDCG@10 >= 0.95 x ALS, and better
than ALS on the < 10 slice. ``--no-refit-row`` also trains the two-tower with
``refit_on_valid = false`` (early-stopped ensemble on train only) for the refit question.

    .venv/bin/python benchmarks/bench_two_tower_accuracy.py [--quick] [--only small|100k] [--seeds 0 1 2] [--no-refit-row]

Results also go to benchmarks/results/two_tower_accuracy.json (``_small``/``_100k`` with ``--only``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.train import _parse_assignment, load_config, model_params  # noqa: E402
from recsys.data.dataset import Dataset  # noqa: E402
from recsys.data.idmap import IdMap  # noqa: E402
from recsys.data.interactions import frame_to_csr  # noqa: E402
from recsys.data.splits import SplitConfig, split  # noqa: E402
from recsys.evaluation import evaluate, format_table  # noqa: E402
from recsys.training import train_and_evaluate  # noqa: E402

ML100K = ROOT.parent / "shared" / "data" / "movielens-100k"
ML_SMALL = ROOT / "data" / "movielens-latest-small"
ALS_GRID = {"factors": [128, 256], "regularization": [10.0, 20.0, 50.0], "alpha": [5.0]}
ALS_QUICK = {"factors": [128], "regularization": [20.0, 50.0], "alpha": [5.0]}
#: fixed ALS parameters: binary confidence alpha (implicit's alpha applied to 1s), 15 iterations
ALS_FIXED = {"weighting": "binary", "iterations": 15, "device": "cpu", "num_threads": 1}
SPARSE_USER = 10


def load_small() -> tuple[pl.DataFrame, list[str | None]]:
    r = pl.read_csv(ML_SMALL / "ratings.csv")
    movies = pl.read_csv(ML_SMALL / "movies.csv")
    return _index(r["userId"].to_numpy(), r["movieId"].to_numpy(), movies["movieId"].to_numpy(), movies["genres"].to_list())


def load_100k() -> tuple[pl.DataFrame, list[str | None]]:
    r = pl.read_csv(ML100K / "u.data", separator="\t", has_header=False, new_columns=["u", "i", "r", "t"])
    items = pl.read_csv(ML100K / "u.item", separator="|", has_header=False, encoding="latin-1")
    flags = items.select(items.columns[-19:]).to_numpy()  # 19 genre flags (no names in the files we ship)
    genres = ["|".join(f"g{j:02d}" for j in np.flatnonzero(row)) or None for row in flags]
    return _index(r["u"].to_numpy(), r["i"].to_numpy(), items[items.columns[0]].to_numpy(), genres)


def _index(users: np.ndarray, items: np.ndarray, feat_ids: np.ndarray, genres: list[str | None]) -> tuple[pl.DataFrame, list[str | None]]:
    """Interactions on contiguous indices, and each item index's ``|``-separated genres."""
    uniq_items = np.unique(items)
    df = pl.DataFrame({
        "user_idx": pl.Series(np.unique(users, return_inverse=True)[1], dtype=pl.Int32),
        "item_idx": pl.Series(np.searchsorted(uniq_items, items), dtype=pl.Int32),
        "weight": pl.Series(np.ones(len(users)), dtype=pl.Float32),
    })  # fmt: skip
    pos = {int(i): j for j, i in enumerate(feat_ids)}
    return df, [genres[pos[int(i)]] if int(i) in pos else None for i in uniq_items]


def thin_users(parts: dict, n_users: int, seed: int, share: float = 0.25) -> dict:
    """Give a random ``share`` of users only 2-8 training interactions.

    MovieLens keeps only users with >= 20 ratings, so without this no user has fewer than
    10 training interactions and the sparse-user slice of the acceptance would be empty.
    Their test interactions are untouched. Their validation interactions are left out of
    ``"refit"``, the validation pairs that selection is scored on and that the final models
    train on: a thinned user never has more than 8 training interactions.
    """
    rng = np.random.default_rng(seed + 1)
    thin = rng.random(n_users) < share
    keep_n = rng.integers(2, 9, n_users)
    tr = parts["train"].with_columns(_r=pl.Series(rng.random(parts["train"].height)))
    tr = tr.with_columns(_k=pl.col("_r").rank("ordinal").over("user_idx"))
    u = tr["user_idx"].to_numpy()
    tr = tr.filter(pl.Series(~thin[u] | (tr["_k"].to_numpy() <= keep_n[u]))).drop("_r", "_k")
    refit = parts["valid"].filter(pl.Series(~thin[parts["valid"]["user_idx"].to_numpy()]))
    return {**parts, "train": tr, "refit": refit}


def as_dataset(parts: dict, shape: tuple[int, int], genres: list[str | None], seed: int) -> Dataset:
    """The protocol's view of the split: ``valid`` = ``parts["refit"]`` (train + valid = the final models' pairs)."""
    splits = {"train": parts["train"], "valid": parts["refit"], "test": parts["test"]}
    items = pl.DataFrame({"item_idx": pl.Series(np.arange(shape[1]), dtype=pl.Int32),
                          "genres": pl.Series(genres, dtype=pl.String)})  # fmt: skip
    return Dataset(splits, IdMap([str(i) for i in range(shape[0])], "user"), IdMap([str(i) for i in range(shape[1])], "item"),
                   items, {"split": {"seed": seed}})  # fmt: skip


def scores(model, seen, test, sparse_users: np.ndarray) -> dict:
    full = evaluate(model, seen, test, ks=(10, 20))
    few = evaluate(model, seen, test, ks=(10, 20), users=sparse_users)
    return {"ndcg@10": full["ndcg@10"], "recall@20": full["recall@20"], "ndcg@10 <10": few["ndcg@10"],
            "recall@20 <10": few["recall@20"], "n <10": few["n_users"]}  # fmt: skip


def run(
    name: str, df: pl.DataFrame, genres: list[str | None], test_frac: float, quick: bool, seed: int, overrides: dict,
    item_features: str, no_refit_row: bool = False,
) -> dict:
    shape = (int(df["user_idx"].max()) + 1, int(df["item_idx"].max()) + 1)
    parts = split(df, SplitConfig(strategy="random", test_frac=test_frac, valid_frac=0.2, seed=seed))
    parts = thin_users(parts, shape[0], seed)
    ds = as_dataset(parts, shape, genres, seed)
    test = frame_to_csr(parts["test"], shape)
    full_pairs = pl.concat([parts["train"], parts["refit"]])
    seen = frame_to_csr(full_pairs, shape)
    sparse_users = np.flatnonzero(np.diff(seen.indptr) < SPARSE_USER)
    out: dict = {"dataset": name, "shape": shape, "n_test": parts["test"].height}

    t0 = time.perf_counter()
    grid = ALS_QUICK if quick else ALS_GRID
    n_grid = int(np.prod([len(v) for v in grid.values()]))
    res = train_and_evaluate(ds, "als", {**ALS_FIXED, "random_state": seed}, space=grid,
                             tuning={"max_trials": n_grid, "refit_on_valid": True, "eval_every": ALS_FIXED["iterations"],
                                     "seed": seed}, ks=(10, 20), show_progress=False)  # fmt: skip
    assert (res.seen != seen).nnz == 0, "the protocol's refit matrix is not train + refit"
    best = {k: res.params[k] for k in grid}
    out["als"] = {**scores(res.model, seen, test, sparse_users), "params": best, "valid ndcg@10": res.metrics_valid["ndcg@10"],
                  "seconds": time.perf_counter() - t0}  # fmt: skip

    t0 = time.perf_counter()
    params = model_params(load_config(ROOT / "configs" / "two_tower_small.toml"), "two-tower")
    params.update(device="cpu", seed=seed, item_features=item_features, refit_on_valid=True, **overrides)
    if quick:
        params.update(epochs=4)
    res = train_and_evaluate(ds, "two-tower", params, ks=(10, 20), show_progress=False)
    assert (res.seen != seen).nnz == 0, "the protocol's refit matrix is not train + refit"
    out["two_tower"] = {**scores(res.model, seen, test, sparse_users), "best_epoch": int(res.metrics_valid["best_epoch"]),
                        "refit_epochs": int(res.summary["refit_epochs"]), "valid ndcg@10": res.metrics_valid["ndcg@10"],
                        "seconds": time.perf_counter() - t0}  # fmt: skip
    # the early-stopped model without the refit on train + valid, for the refit question (opt-in: one more training)
    out["two_tower_no_refit"] = None
    if no_refit_row:
        sel = train_and_evaluate(ds, "two-tower", {**params, "refit_on_valid": False}, ks=(10,), show_progress=False)
        out["two_tower_no_refit"] = scores(sel.model, seen, test, sparse_users)
    out["ratio_ndcg@10"] = out["two_tower"]["ndcg@10"] / out["als"]["ndcg@10"]
    out["ratio_ndcg@10 <10"] = out["two_tower"]["ndcg@10 <10"] / max(out["als"]["ndcg@10 <10"], 1e-12)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small ALS grid, 4 two-tower epochs")
    ap.add_argument("--only", choices=["small", "100k"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", help="several seeds (each re-splits, re-tunes ALS, re-trains); prints the ratios per seed and their mean")
    ap.add_argument("--item-features", choices=["genres", "none"], default="genres", help="two-tower item content")
    ap.add_argument("--no-refit-row", action="store_true",
                    help="also train the two-tower without the refit on train + valid (one more training per dataset)")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="override a two-tower hyperparameter")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    overrides = dict(_parse_assignment(p) for p in args.param)
    feats = "auto" if args.item_features == "genres" else "none"
    torch.set_num_threads(1)
    results = []
    for seed in args.seeds or [args.seed]:
        if args.only in (None, "small"):
            results.append(run("ml-latest-small 80/20", *load_small(), 0.2, args.quick, seed, overrides, feats, args.no_refit_row))
            results[-1]["seed"] = seed
        if args.only in (None, "100k"):
            if (ML100K / "u.data").exists():
                results.append(run("ml-100k 75/25", *load_100k(), 0.25, args.quick, seed, overrides, feats, args.no_refit_row))
                results[-1]["seed"] = seed
            else:
                print(f"MovieLens 100K not found at {ML100K}: skipped")
    metrics = ("ndcg@10", "recall@20", "ndcg@10 <10", "recall@20 <10", "n <10")
    for r in results:
        r["two_tower"]["overrides"] = {**overrides, "item_features": args.item_features}
        rows = {f"ALS {r['als']['params']}": r["als"],
                f"two-tower (best epoch {r['two_tower']['best_epoch']}, refit {r['two_tower']['refit_epochs']})": r["two_tower"]}
        if r["two_tower_no_refit"] is not None:
            rows["two-tower, no refit (train only)"] = r["two_tower_no_refit"]
        print(f"\n{r['dataset']}, seed {r['seed']}  (users x items {r['shape']}; '<10' = users with < {SPARSE_USER} training interactions)")
        print(format_table(rows, metrics=metrics))
        print(f"validation NDCG@10 (model selection): ALS {r['als']['valid ndcg@10']:.4f}, "
              f"two-tower {r['two_tower']['valid ndcg@10']:.4f}")
        print(f"two-tower / ALS NDCG@10: {r['ratio_ndcg@10']:.3f} (target >= 0.95); on <10 users: {r['ratio_ndcg@10 <10']:.3f} (target > 1)")
    if args.seeds and len(args.seeds) > 1:
        print(f"\ntwo-tower / ALS NDCG@10 over seeds {args.seeds} (targets: all >= 0.95, <10 > 1)")
        for name in dict.fromkeys(r["dataset"] for r in results):
            rs = [r for r in results if r["dataset"] == name]
            for key in ("ratio_ndcg@10", "ratio_ndcg@10 <10"):
                v = [r[key] for r in rs]
                print(f"  {name:<22} {'all' if key == 'ratio_ndcg@10' else '<10':<4} " + " ".join(f"{x:.3f}" for x in v)
                      + f"   mean {np.mean(v):.3f}")  # fmt: skip
    out = ROOT / "benchmarks" / "results" / f"two_tower_accuracy{'_' + args.only if args.only else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

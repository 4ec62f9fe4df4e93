"""Accuracy of the two-tower model next to tuned ALS, measured in the same run (issue 4).

Datasets and protocol (the MF benchmark's):

* MovieLens latest-small (embedded): random 80/20 split per user;
* MovieLens 100K (``../shared/data/movielens-100k``): random 75/25 per user (Microsoft
  Recommenders protocol: every test rating relevant, seen items removed).

20% of each user's training part is carved out as validation. MovieLens only has users with
>= 20 ratings, so a random 25% of users is thinned to 2-8 training interactions to create
the "fewer than 10 training interactions" slice. Their validation interactions stay in the
validation set, so model selection sees the slice too, but never become training data: the
refit adds only the other users' validation interactions. ALS (``implicit``,
binary interactions scaled by ``alpha``) picks factors/regularization/alpha on it from
a small grid with strong regularization; the two-tower model early-stops on it
(``configs/two_tower_small.toml``, genre multi-hot item features). Both are then refitted
on train + valid (ALS with its chosen config, two-tower for as many optimizer steps as
its best epoch took: ``--refit epochs`` keeps the epoch count instead) and
evaluated once on test: NDCG@10 and Recall@20 for all users and for users with fewer
than 10 training interactions. Targets: two-tower NDCG@10 >= 0.95 x ALS, and better
than ALS on the < 10 slice.

    .venv/bin/python benchmarks/bench_two_tower_accuracy.py [--quick] [--only small|100k] [--seeds 0 1 2]

Results also go to benchmarks/results/two_tower_accuracy.json (``_small``/``_100k`` with ``--only``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.train import _parse_assignment, load_config, model_params  # noqa: E402
from pipelines.train_two_tower import multi_hot  # noqa: E402
from recsys.data.interactions import frame_to_csr  # noqa: E402
from recsys.data.splits import SplitConfig, split  # noqa: E402
from recsys.evaluation import evaluate, format_table  # noqa: E402
from recsys.models.base import FactorModel  # noqa: E402
from recsys.models.two_tower import TwoTower  # noqa: E402
from recsys.models.two_tower_config import refit_epochs as two_tower_refit_epochs  # noqa: E402

ML100K = ROOT.parent / "shared" / "data" / "movielens-100k"
ML_SMALL = ROOT / "data" / "movielens-latest-small"
ALS_GRID = {"factors": [128, 256], "regularization": [10.0, 20.0, 50.0], "alpha": [5.0]}
ALS_QUICK = {"factors": [128], "regularization": [20.0, 50.0], "alpha": [5.0]}
SPARSE_USER = 10


class _Vectors(FactorModel):
    """ALS factors from ``implicit`` in the FactorModel layout (so ``evaluate`` scores both alike)."""


def load_small() -> tuple[pl.DataFrame, np.ndarray]:
    r = pl.read_csv(ML_SMALL / "ratings.csv")
    movies = pl.read_csv(ML_SMALL / "movies.csv")
    return _index(r["userId"].to_numpy(), r["movieId"].to_numpy(), movies["movieId"].to_numpy(),
                  multi_hot(movies["genres"].to_list()))  # fmt: skip


def load_100k() -> tuple[pl.DataFrame, np.ndarray]:
    r = pl.read_csv(ML100K / "u.data", separator="\t", has_header=False, new_columns=["u", "i", "r", "t"])
    items = pl.read_csv(ML100K / "u.item", separator="|", has_header=False, encoding="latin-1")
    genres = items.select(items.columns[-19:]).to_numpy().astype(np.float32)  # 19 genre flags
    return _index(r["u"].to_numpy(), r["i"].to_numpy(), items[items.columns[0]].to_numpy(), genres)


def _index(users: np.ndarray, items: np.ndarray, feat_ids: np.ndarray, feats: np.ndarray) -> tuple[pl.DataFrame, np.ndarray]:
    uniq_items = np.unique(items)
    df = pl.DataFrame({
        "user_idx": pl.Series(np.unique(users, return_inverse=True)[1], dtype=pl.Int32),
        "item_idx": pl.Series(np.searchsorted(uniq_items, items), dtype=pl.Int32),
        "weight": pl.Series(np.ones(len(users)), dtype=pl.Float32),
    })  # fmt: skip
    pos = {int(i): j for j, i in enumerate(feat_ids)}
    f = np.zeros((len(uniq_items), feats.shape[1]), np.float32)
    for j, i in enumerate(uniq_items):
        if int(i) in pos:
            f[j] = feats[pos[int(i)]]
    return df, f


def thin_users(parts: dict, n_users: int, seed: int, share: float = 0.25) -> dict:
    """Give a random ``share`` of users only 2-8 training interactions.

    MovieLens keeps only users with >= 20 ratings, so without this no user has fewer than
    10 training interactions and the sparse-user slice of the acceptance would be empty.
    Their test interactions are untouched. Their validation interactions are kept as
    validation targets (so early stopping and the ALS grid are judged on light users too,
    at their share of the users) but left out of ``"refit"``, the validation pairs that
    the final models train on: a thinned user never has more than 8 training interactions.
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


def fit_als(train, params: dict, seed: int) -> _Vectors:
    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    m = train.copy()
    m.data[:] = params["alpha"]
    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(factors=params["factors"], regularization=params["regularization"], alpha=1.0,
                                      iterations=15, random_state=seed)  # fmt: skip
        als.fit(m, show_progress=False)
    v = _Vectors()
    v.user_factors_, v.item_factors_ = np.asarray(als.user_factors), np.asarray(als.item_factors)
    v.n_users_, v.n_items_ = train.shape
    v.user_items_ = train
    return v


def scores(model, seen, test, sparse_users: np.ndarray) -> dict:
    full = evaluate(model, seen, test, ks=(10, 20))
    few = evaluate(model, seen, test, ks=(10, 20), users=sparse_users)
    return {"ndcg@10": full["ndcg@10"], "recall@20": full["recall@20"], "ndcg@10 <10": few["ndcg@10"],
            "recall@20 <10": few["recall@20"], "n <10": few["n_users"]}  # fmt: skip


def run(
    name: str, df: pl.DataFrame, feats: np.ndarray, test_frac: float, quick: bool, seed: int, overrides: dict, use_feats: bool,
    refit: str = "steps",
) -> dict:
    shape = (int(df["user_idx"].max()) + 1, int(df["item_idx"].max()) + 1)
    parts = split(df, SplitConfig(strategy="random", test_frac=test_frac, valid_frac=0.2, seed=seed))
    parts = thin_users(parts, shape[0], seed)
    train, valid, test = (frame_to_csr(parts[k], shape) for k in ("train", "valid", "test"))
    full_pairs = pl.concat([parts["train"], parts["refit"]])
    seen = frame_to_csr(full_pairs, shape)
    sparse_users = np.flatnonzero(np.diff(seen.indptr) < SPARSE_USER)
    out: dict = {"dataset": name, "shape": shape, "n_test": parts["test"].height}

    t0 = time.perf_counter()
    grid = ALS_QUICK if quick else ALS_GRID
    tried = [(evaluate(fit_als(train, p, seed), train, valid, ks=(10,))["ndcg@10"], p)
             for p in (dict(zip(grid, v, strict=True)) for v in itertools.product(*grid.values()))]  # fmt: skip
    valid_score, best = max(tried, key=lambda t: t[0])
    als = fit_als(seen, best, seed)
    out["als"] = {**scores(als, seen, test, sparse_users), "params": best, "valid ndcg@10": valid_score,
                  "seconds": time.perf_counter() - t0}  # fmt: skip

    t0 = time.perf_counter()
    params = {k: v for k, v in model_params(load_config(ROOT / "configs" / "two_tower_small.toml"), "two-tower").items()
              if k not in ("item_features", "refit_on_valid")}  # fmt: skip
    params.update(device="cpu", seed=seed, **overrides)
    if quick:
        params.update(epochs=4)
    feats = feats if use_feats else None
    sel = TwoTower(**params).fit(train, pairs=parts["train"], item_features=feats,
                                 validation=lambda m: evaluate(m, train, valid, ks=(10,)))  # fmt: skip
    refit_epochs = sel.best_epoch_
    if refit == "steps":  # as many optimizer steps as the selected model took (the pipeline's rule)
        refit_epochs = two_tower_refit_epochs(sel.best_epoch_, parts["train"].height, full_pairs.height)
    tt = TwoTower(**{**params, "epochs": refit_epochs, "patience": None}).fit(seen, pairs=full_pairs, item_features=feats)
    out["two_tower"] = {**scores(tt, seen, test, sparse_users), "best_epoch": sel.best_epoch_,
                        "refit_epochs": refit_epochs, "valid ndcg@10": sel.best_score_, "seconds": time.perf_counter() - t0}  # fmt: skip
    # the selection model itself (train only, no refit on train + valid), for the refit question
    out["two_tower_no_refit"] = scores(sel, seen, test, sparse_users)
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
    ap.add_argument("--refit", choices=["steps", "epochs"], default="steps",
                    help="two-tower refit on train + valid: the selected epoch count, or as many steps as the selected model")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="override a two-tower hyperparameter")
    args = ap.parse_args()
    overrides = dict(_parse_assignment(p) for p in args.param)
    use_feats = args.item_features == "genres"
    torch.set_num_threads(1)
    results = []
    for seed in args.seeds or [args.seed]:
        if args.only in (None, "small"):
            results.append(run("ml-latest-small 80/20", *load_small(), 0.2, args.quick, seed, overrides, use_feats, args.refit))
            results[-1]["seed"] = seed
        if args.only in (None, "100k"):
            if (ML100K / "u.data").exists():
                results.append(run("ml-100k 75/25", *load_100k(), 0.25, args.quick, seed, overrides, use_feats, args.refit))
                results[-1]["seed"] = seed
            else:
                print(f"MovieLens 100K not found at {ML100K}: skipped")
    metrics = ("ndcg@10", "recall@20", "ndcg@10 <10", "recall@20 <10", "n <10")
    for r in results:
        r["two_tower"]["overrides"] = {**overrides, "item_features": args.item_features}
        rows = {f"ALS {r['als']['params']}": r["als"], f"two-tower (best epoch {r['two_tower']['best_epoch']})": r["two_tower"],
                "two-tower, no refit (train only)": r["two_tower_no_refit"]}
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

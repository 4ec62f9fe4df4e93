"""item2vec beside ALS on MovieLens latest-small and ML-100K (issue 21, item 4).

Same split for both (random per-user holdout, 20% test, 10% of the rest valid, weight =
rating, no cold items, seed ``--seed``), both through the training protocol
(:func:`recsys.training.train_and_evaluate`: select on valid, refit on train + valid, one
test evaluation):

* **ALS**: the packaged defaults (``pipelines/defaults.toml`` ``[models.als]``; the
  protocol picks the best iteration <= 15 on valid);
* **item2vec**: a grid on the validation split only (:data:`GRID`: window, dim, epochs
  and the popularity column ``popularity_bias``; trials that differ only in the latter
  share a training); also shown with ``popularity_bias = 0`` (plain item2vec, the same
  embeddings) and most-popular for scale.

Columns: test NDCG@10 and Recall@20; ``sim-hit@20``, the similar-item hit rate: for
every test interaction whose previous item in the user's time-ordered history (train,
valid and test together, ties by item index) is a training item, is the test item among
the 20 items most similar to that previous item (cosine of item vectors, the item
itself excluded; most-popular: the 20 most popular items). ``sim-hit@20 dot`` ranks
neighbours by the dot product of the whole item vectors instead, as a bundle's
``Retriever.similar_items`` does (item2vec's popularity column included). ``fit s``: one
fit with the selected parameters on train + valid, one thread each (gensim ``workers=1``,
ALS ``num_threads=1``); ``protocol s``: the whole selection, refit and test.

A second table times the two skip-gram implementations considered, at the same epochs,
dim, window, negatives and subsampling on the train split: gensim (the one item2vec
uses) with 1 and 2 worker threads, and a batched PyTorch SGNS (word2vec's SGD with
``index_add_``, written here for the comparison; 1 thread), with their validation
NDCG@10 on the same scoring (so the speed is compared at equal accuracy).

    .venv/bin/python benchmarks/bench_item2vec.py [--quick] [--only small|100k] [--seed 42] [--no-backends]
    .venv/bin/python benchmarks/bench_item2vec.py --normalization   # normalised vs raw vectors on valid

Results also go to benchmarks/results/item2vec.json (item2vec_normalization.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.data.dataset import Dataset  # noqa: E402
from recsys.data.idmap import IdMap  # noqa: E402
from recsys.data.splits import SplitConfig, split  # noqa: E402
from recsys.evaluation import evaluate, format_table  # noqa: E402
from recsys.models import registry  # noqa: E402
from recsys.models.baselines import MostPopular  # noqa: E402
from recsys.models.item2vec import Item2Vec, ItemSequences  # noqa: E402
from recsys.training import train_and_evaluate  # noqa: E402

ML100K = ROOT.parent / "shared" / "data" / "movielens-100k"
ML_SMALL = ROOT / "data" / "movielens-latest-small"
GRID = {"window": [5, 20], "dim": [64, 128], "epochs": [5, 10], "popularity_bias": [0.0, 0.15, 0.3, 0.6]}
QUICK = {"window": [5, 20], "dim": [64], "epochs": [10], "popularity_bias": [0.0, 0.3]}
SIM_K = 20
log = logging.getLogger("bench")


def load(name: str) -> pl.DataFrame:
    if name == "small":
        r = pl.read_csv(ML_SMALL / "ratings.csv")
        u, i, w, t = r["userId"], r["movieId"], r["rating"], r["timestamp"]
    else:
        r = pl.read_csv(ML100K / "u.data", separator="\t", has_header=False, new_columns=["u", "i", "r", "t"])
        u, i, w, t = r["u"], r["i"], r["r"], r["t"]
    return pl.DataFrame({
        "user_idx": pl.Series(np.unique(u.to_numpy(), return_inverse=True)[1], dtype=pl.Int32),
        "item_idx": pl.Series(np.unique(i.to_numpy(), return_inverse=True)[1], dtype=pl.Int32),
        "weight": w.cast(pl.Float32), "timestamp": t.cast(pl.Int64),
    })  # fmt: skip


def make_dataset(df: pl.DataFrame, seed: int) -> Dataset:
    parts = split(df, SplitConfig(strategy="random", test_frac=0.2, valid_frac=0.1, seed=seed))
    n_users, n_items = int(df["user_idx"].max()) + 1, int(df["item_idx"].max()) + 1
    return Dataset(parts, IdMap([str(x) for x in range(n_users)], "user"), IdMap([str(x) for x in range(n_items)], "item"))


def next_item_pairs(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(previous item, test item) for each test interaction whose predecessor is a training item."""
    frames = [ds.split(s).select("user_idx", "item_idx", "timestamp").with_columns(is_test=pl.lit(s == "test"))
              for s in ("train", "valid", "test")]  # fmt: skip
    h = pl.concat(frames).sort("user_idx", "timestamp", "item_idx")
    same_user = h["user_idx"].to_numpy()[1:] == h["user_idx"].to_numpy()[:-1]
    items, is_test = h["item_idx"].to_numpy(), h["is_test"].to_numpy()
    keep = same_user & is_test[1:] & ~is_test[:-1]
    return items[:-1][keep].astype(np.int64), items[1:][keep].astype(np.int64)


def sim_hit_rate(vectors: np.ndarray | None, prev: np.ndarray, nxt: np.ndarray, cosine: bool = True,
                 popularity: np.ndarray | None = None) -> float:
    """Share of pairs whose next item is in the top-SIM_K neighbours of the previous item."""
    if vectors is None:  # most popular: the same list for every item (minus the item itself)
        top = np.argsort(-popularity, kind="stable")[: SIM_K + 1]
        return float(np.mean([n in top[top != p][:SIM_K] for p, n in zip(prev, nxt)]))
    v = np.asarray(vectors, np.float32)
    if cosine:
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        v = np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)
    uniq, inv = np.unique(prev, return_inverse=True)
    hits = np.zeros(len(prev), bool)
    for s in range(0, len(uniq), 1024):
        block = uniq[s : s + 1024]
        scores = v[block] @ v.T
        scores[np.arange(len(block)), block] = -np.inf
        top = np.argpartition(-scores, SIM_K, axis=1)[:, :SIM_K]
        rows = np.flatnonzero((inv >= s) & (inv < s + len(block)))
        hits[rows] = (top[inv[rows] - s] == nxt[rows, None]).any(1)
    return float(hits.mean())


def timed_fit(family: str, params: dict, ds: Dataset) -> float:
    """Seconds of one fit with ``params`` on train + valid (sequences for item2vec)."""
    seen = ds.matrix("train", "valid")
    kw: dict[str, Any] = {}
    if family == "item2vec":
        both = pl.concat([ds.split("train"), ds.split("valid")])
        kw["sequences"] = ItemSequences.from_frame(both, ds.n_users)
    model = registry.get_family(family).make(params)
    t0 = time.perf_counter()
    model.fit(seen, **kw)
    return time.perf_counter() - t0


def compare(name: str, ds: Dataset, grid: dict, seed: int) -> dict[str, dict[str, float]]:
    als_table = tomllib.loads((ROOT / "pipelines" / "defaults.toml").read_text())["models"]["als"]
    als_params = {**{k: v for k, v in als_table.items() if not isinstance(v, dict)}, "num_threads": 1}  # no [tune]
    prev, nxt = next_item_pairs(ds)
    log.info("%s: %d users x %d items, %d test pairs with a training predecessor", name, ds.n_users, ds.n_items, len(prev))
    rows: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    als = train_and_evaluate(ds, "als", als_params, ks=(10, 20), show_progress=False)
    secs = time.perf_counter() - t0
    rows["ALS (packaged defaults)"] = {
        "ndcg@10": als.metrics_test["ndcg@10"], "recall@20": als.metrics_test["recall@20"],
        "sim-hit@20": sim_hit_rate(als.model.item_factors_, prev, nxt),
        "sim-hit@20 dot": sim_hit_rate(als.model.item_factors_, prev, nxt, cosine=False),
        "fit s": timed_fit("als", als.params, ds), "protocol s": secs}  # fmt: skip
    t0 = time.perf_counter()
    i2v = train_and_evaluate(ds, "item2vec", {"seed": seed}, space=grid, tuning={"seed": seed}, ks=(10, 20),
                             show_progress=False)
    secs = time.perf_counter() - t0
    model: Item2Vec = i2v.model  # type: ignore[assignment]
    log.info("%s item2vec selected %s (valid ndcg@10 %.4f, %d trials)", name, i2v.params, i2v.metrics_valid["ndcg@10"],
             len(i2v.trials))
    fit_s = timed_fit("item2vec", i2v.params, ds)
    short = ", ".join(f"{k}={i2v.params[k]}" for k in grid)
    rows[f"item2vec ({short})"] = {
        "ndcg@10": i2v.metrics_test["ndcg@10"], "recall@20": i2v.metrics_test["recall@20"],
        "sim-hit@20": sim_hit_rate(model.item_factors_[:, : model.dim], prev, nxt),
        "sim-hit@20 dot": sim_hit_rate(model.item_factors_, prev, nxt, cosine=False),
        "fit s": fit_s, "protocol s": secs}  # fmt: skip
    plain = model.with_scoring(popularity_bias=0.0)
    m_plain = evaluate(plain, i2v.seen, ds.matrix("test"), ks=(10, 20), show_progress=False)
    rows["item2vec, popularity_bias=0"] = {
        "ndcg@10": m_plain["ndcg@10"], "recall@20": m_plain["recall@20"],
        "sim-hit@20": rows[f"item2vec ({short})"]["sim-hit@20"],
        "sim-hit@20 dot": sim_hit_rate(plain.item_factors_, prev, nxt, cosine=False)}  # fmt: skip
    pop = MostPopular().fit(i2v.seen)
    m_pop = evaluate(pop, i2v.seen, ds.matrix("test"), ks=(10, 20), show_progress=False)
    rows["most-popular"] = {"ndcg@10": m_pop["ndcg@10"], "recall@20": m_pop["recall@20"],
                            "sim-hit@20": sim_hit_rate(None, prev, nxt, popularity=np.asarray(pop.popularity_))}
    rows["_selected"] = {**i2v.params, "valid ndcg@10": i2v.metrics_valid["ndcg@10"]}  # type: ignore[dict-item]
    return rows


# -- the PyTorch alternative, for the speed comparison only -------------------------------------
def _keep_probability(counts: np.ndarray, t: float) -> np.ndarray:
    f = counts / max(counts.sum(), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = (np.sqrt(f / t) + 1.0) * t / f
    return np.where(counts > 0, np.minimum(p, 1.0), 0.0) if t > 0 else np.ones(len(counts))


def _epoch_pairs(seq: ItemSequences, keep: np.ndarray, window: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    users = np.repeat(np.arange(seq.n_users), np.diff(seq.indptr))
    kept = rng.random(len(seq.items)) < keep[seq.items]
    items, users = seq.items[kept], users[kept]
    centres, contexts = [], []
    for d in range(1, window + 1):
        same = users[d:] == users[:-d]
        for a, b in ((items[:-d], items[d:]), (items[d:], items[:-d])):  # dynamic window: reach d w.p. (w-d+1)/w
            m = same & (rng.random(len(same)) < (window - d + 1) / window)
            centres.append(a[m])
            contexts.append(b[m])
    c, o = np.concatenate(centres), np.concatenate(contexts)
    order = rng.permutation(len(c))
    return c[order], o[order]


class TorchItem2Vec(Item2Vec):
    """The same model trained by a batched PyTorch SGNS (word2vec's SGD, 4096 pairs a step, 1 thread)."""

    def _train(self, seq: ItemSequences, n_items: int) -> np.ndarray:
        import torch

        torch.set_num_threads(1)
        dim, k, bs = int(self.dim), int(self.negatives), 4096
        rng = np.random.default_rng(self.seed)
        counts = np.bincount(seq.items, minlength=n_items).astype(np.float64)
        keep = _keep_probability(counts, float(self.subsample))
        cdf = np.cumsum(counts ** self.ns_exponent / (counts ** self.ns_exponent).sum())
        w_in = torch.from_numpy(((rng.random((n_items, dim)) - 0.5) / dim).astype(np.float32))
        w_out = torch.zeros(n_items, dim)
        label = torch.zeros(1, k + 1)
        label[0, 0] = 1.0
        done, planned = 0, None
        for _ in range(int(self.epochs)):
            cen, ctx = _epoch_pairs(seq, keep, int(self.window), rng)
            planned = planned or len(cen) * int(self.epochs)
            negs = np.minimum(np.searchsorted(cdf, rng.random((len(cen), k)), side="right"), n_items - 1)
            tgt, cen_t = torch.from_numpy(np.c_[ctx, negs]), torch.from_numpy(cen)
            for s in range(0, len(cen), bs):
                c, o = cen_t[s : s + bs], tgt[s : s + bs]
                u, v = w_in[c], w_out[o]
                g = (label - torch.sigmoid(torch.bmm(v, u.unsqueeze(2)).squeeze(2))) * (
                    float(self.lr) * max(1e-4, 1.0 - done / planned))
                w_in.index_add_(0, c, torch.bmm(g.unsqueeze(1), v).squeeze(1))
                w_out.index_add_(0, o.reshape(-1), (g.unsqueeze(2) * u.unsqueeze(1)).reshape(-1, dim))
                done += len(c)
        return w_in.numpy().copy()


def backends(name: str, ds: Dataset, seed: int) -> dict[str, dict[str, float]]:
    train, valid = ds.matrix("train"), ds.matrix("valid")
    seq = ItemSequences.from_frame(ds.split("train"), ds.n_users)
    rows = {}
    for label, cls, kw in (("gensim, 1 worker", Item2Vec, {"workers": 1}), ("gensim, 2 workers", Item2Vec, {"workers": 2}),
                           ("PyTorch SGNS, 1 thread", TorchItem2Vec, {})):  # fmt: skip
        model = cls(seed=seed, window=5, **kw)  # dim 64, 10 epochs: the defaults
        t0 = time.perf_counter()
        model.fit(train, sequences=seq)
        secs = time.perf_counter() - t0
        rows[label] = {"fit s": secs, "valid ndcg@10": evaluate(model, train, valid, ks=(10,), show_progress=False)["ndcg@10"]}
        log.info("%s %s: %.1fs", name, label, secs)
    return rows


def normalization(ds: Dataset, seed: int) -> dict[str, dict[str, float]]:
    """Valid NDCG@10 of normalised vs raw vectors across popularity weights (one training, re-scored)."""
    train, valid = ds.matrix("train"), ds.matrix("valid")
    model = Item2Vec(seed=seed, window=20, dim=64, epochs=10).fit(
        train, sequences=ItemSequences.from_frame(ds.split("train"), ds.n_users))
    return {("normalised" if norm else "raw"): {
        f"b={b}": evaluate(model.with_scoring(normalize=norm, popularity_bias=b), train, valid, ks=(10,),
                           show_progress=False)["ndcg@10"] for b in (0.0, 0.15, 0.3, 0.6)}
        for norm in (True, False)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"grid {QUICK} instead of {GRID}")
    ap.add_argument("--only", choices=["small", "100k"])
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--no-backends", action="store_true", help="skip the gensim / PyTorch timing")
    ap.add_argument("--normalization", action="store_true",
                    help="only the normalised-vs-raw validation table (window 20, dim 64, 10 epochs)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("gensim", "implicit", "recsys"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    names = [n for n in ("small", "100k") if args.only in (None, n)]
    if "100k" in names and not (ML100K / "u.data").exists():
        log.warning("MovieLens 100K not found at %s: skipped", ML100K)
        names.remove("100k")
    out: dict[str, Any] = {"grid": QUICK if args.quick else GRID, "seed": args.seed}
    for name in names:
        ds = make_dataset(load(name), args.seed)
        if args.normalization:
            norm = normalization(ds, args.seed)
            print(f"\nMovieLens {name}: valid NDCG@10 by popularity_bias (window 20, dim 64, 10 epochs)")
            print(format_table(norm, metrics=list(next(iter(norm.values()))), name_header="vectors"))
            out[name] = {"normalization": norm}
            continue
        rows = compare(name, ds, out["grid"], args.seed)
        selected = rows.pop("_selected")
        print(f"\nMovieLens {name}: test split, item2vec selected on valid {selected}")
        print(format_table(rows, metrics=("ndcg@10", "recall@20", "sim-hit@20", "sim-hit@20 dot", "fit s", "protocol s")))
        out[name] = {"rows": rows, "selected": selected}
        if not args.no_backends:
            b = backends(name, ds, args.seed)
            print(f"\nMovieLens {name}: skip-gram implementations (dim 64, window 5, 10 epochs, train split)")
            print(format_table(b, metrics=("fit s", "valid ndcg@10"), name_header="implementation"))
            out[name]["backends"] = b
    path = ROOT / "benchmarks" / "results" / ("item2vec_normalization.json" if args.normalization else "item2vec.json")
    path.write_text(json.dumps(out, indent=2, default=str))
    log.info("results -> %s", path)


if __name__ == "__main__":
    main()

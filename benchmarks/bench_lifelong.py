"""Lifelong embeddings (issue 20): no update vs incremental update vs full retrain, replayed in time.

A log is cut in time into a base period and ``--steps`` steps. After each step ``t`` three
systems answer for the users who interact in step ``t + 1`` (NDCG@10 on those
interactions, every item the system knows up to ``t`` excluded):

* ``none``: the ALS model fitted on the base period, frozen (unknown users: popularity);
* ``update``: the same model carried forward by :func:`recsys.lifelong.incremental_update`
  after every step, one system per ``--sweeps`` value (the first is the tables'; default
  ``1,0`` with ``--sweep-scope full``, ``recsys update``'s default against the fold-in alone:
  new users folded in, new items with ``--min-count`` users, then one warm-started ALS
  iteration over everything, or nothing else for 0 sweeps);
* ``retrain``: ALS refitted from scratch on everything up to ``t`` (same parameters and
  seed), rotated onto the previous retrain (Procrustes) to measure drift.

Steps: ``ml-small`` (data/movielens-latest-small) is cut into equal-*count* steps in time
order (``--step-frac`` of the log each, default 1.5% ~ 1500 ratings): its last weeks hold
a handful of users each, so calendar days or weeks would evaluate on almost nobody.
``synthetic`` (recsys.data.synthetic with taste drift and launches) is cut by *day*.

Reported per step and summarised against the targets of the issue: update's share of the
retrain's NDCG gain over no update (>= 80%), its time against the retrain's (<= 10%;
model work only, both without the index build, which is the same for both), aligned mean
cosine of shared item vectors between consecutive retrains (>= 0.9; unaligned too), and
NDCG of *unchanged* users (known at the base, no event since) after every update vs no
update (no loss). Results also go to benchmarks/results/lifelong.json.

    .venv/bin/python benchmarks/bench_lifelong.py [--data ml-small|synthetic] [--steps 7] [--factors 400]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.data.idmap import IdMap  # noqa: E402
from recsys.embeddings.align import fit_alignment  # noqa: E402
from recsys.lifelong import DEFAULT_MIN_COUNT, history_matrix, incremental_update  # noqa: E402
from recsys.models.als import ALS  # noqa: E402
from recsys.ranking import topk_batch  # noqa: E402

K = 10


def load_ml(step_frac: float, steps: int) -> tuple[pl.DataFrame, list[int]]:
    """latest-small as (user, item, weight, ts); boundaries: base end, then one per equal-count step."""
    df = pl.read_csv(ROOT / "data" / "movielens-latest-small" / "ratings.csv").sort("timestamp")
    df = df.select(pl.col("userId").cast(str).alias("user"), pl.col("movieId").cast(str).alias("item"),
                   pl.col("rating").cast(pl.Float32).alias("weight"), pl.col("timestamp").alias("ts"))
    n = df.height
    ts = df["ts"].to_numpy()
    cuts = [int(ts[int(n * (1 - step_frac * (steps + 1 - i)))]) for i in range(steps + 1)] + [int(ts[-1]) + 1]
    return df, cuts  # cuts[0]: end of base; cuts[t]..cuts[t+1]: step t + 1; the last step is only evaluated


def load_synthetic(steps: int, seed: int) -> tuple[pl.DataFrame, list[int]]:
    from recsys.data.synthetic import SyntheticConfig, generate_events

    days = 21 + steps + 1
    cfg = SyntheticConfig(n_events=150_000, n_users=4000, n_items=3000, days=days, drift=0.6, new_items=0.15,
                          event_types=False, seed=seed)
    ev = generate_events(cfg).sort("timestamp")
    df = ev.group_by("user_id", "item_id").agg(pl.len().cast(pl.Float32).alias("weight"), pl.col("timestamp").min().alias("ts"))
    df = df.select(pl.col("user_id").cast(str).alias("user"), pl.col("item_id").cast(str).alias("item"), "weight", "ts").sort("ts")
    start = int(ev["timestamp"].min()) - int(ev["timestamp"].min()) % 86400
    cuts = [start + 86400 * (21 + i) for i in range(steps + 2)]
    return df, cuts


def fit(history: pl.DataFrame, params: dict) -> tuple[np.ndarray, IdMap, np.ndarray, IdMap, object, float]:
    t0 = time.perf_counter()
    users = IdMap(history["user"].unique(maintain_order=True).to_list(), "user")
    items = IdMap(history["item"].unique(maintain_order=True).to_list(), "item")
    m = history_matrix(history["user"].to_list(), history["item"].to_list(), history["weight"].to_numpy(), users, items)
    model = ALS(**params).fit(m)
    sec = time.perf_counter() - t0
    return (np.asarray(model.user_factors_, np.float32), users, np.asarray(model.item_factors_, np.float32), items,
            model.foldin_spec(), sec)


class System:
    """One system's state: vectors, ids, and what each user is known to have seen."""

    def __init__(self, u, uids, y, iids, spec, history: pl.DataFrame) -> None:
        self.u, self.uids, self.y, self.iids, self.spec = u, uids, y, iids, spec
        self.seen = history_matrix(history["user"].to_list(), history["item"].to_list(), np.ones(history.height),
                                   uids, iids)
        self.pop_order = np.argsort(-np.asarray(self.seen.getnnz(axis=0)), kind="stable")

    def topk(self, users: list[str], known: dict[str, set]) -> list[list[str]]:
        rows = self.uids.to_index(users, missing="ignore")
        ids = np.asarray(self.iids.ids, dtype=object)
        out: list[list[str]] = [[] for _ in users]
        have = np.flatnonzero(rows >= 0)
        if have.size:
            scores = self.u[rows[have]] @ self.y.T
            top, _ = topk_batch(scores, K, exclude=self.seen[rows[have]])
            for r, t in zip(have, top):
                out[r] = list(ids[t[t >= 0]])
        for r in np.flatnonzero(rows < 0):  # unknown: popularity, the user's known items excluded
            seen = known.get(users[r], set())
            out[r] = [i for i in ids[self.pop_order[: K + len(seen)]] if i not in seen][:K]
        return out


def ndcg(lists: list[list[str]], relevant: list[set]) -> np.ndarray:
    disc = 1.0 / np.log2(np.arange(2, K + 2))
    out = np.empty(len(lists))
    for r, (rec, rel) in enumerate(zip(lists, relevant)):
        dcg = sum(disc[i] for i, it in enumerate(rec[:K]) if it in rel)
        out[r] = dcg / disc[: min(len(rel), K)].sum()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=["ml-small", "synthetic"], default="ml-small")
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--step-frac", type=float, default=0.015, help="ml-small: share of the log per step")
    ap.add_argument("--factors", type=int, default=400, help="ALS factors (the packaged default: 400)")
    ap.add_argument("--iterations", type=int, default=15)
    ap.add_argument("--min-count", type=int, default=DEFAULT_MIN_COUNT, help="users a new item needs (recsys update's default)")
    ap.add_argument("--sweeps", default="1,0", help="ALS sweeps of the update, one system per value (first: the table)")
    ap.add_argument("--cg-steps", type=int, default=3, help="CG steps per item and sweep")
    ap.add_argument("--sweep-scope", choices=["touched", "new-events", "full"], default="full",
                    help="what a sweep re-solves: every item the changed users touched, the step's items only, "
                         "or everything (full: a warm-started ALS iteration, every item then every user)")
    ap.add_argument("--select-steps", type=int, default=3, help="steps 1..N choose the sweeps; the rest report")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "lifelong.json"))
    args = ap.parse_args()
    # the packaged [models.als] defaults (pipelines/defaults.toml), tuned on latest-small
    params = dict(factors=args.factors, regularization=10.0, alpha=1.0, weighting="log", iterations=args.iterations,
                  random_state=args.seed)
    df, cuts = load_ml(args.step_frac, args.steps) if args.data == "ml-small" else load_synthetic(args.steps, args.seed)
    base = df.filter(pl.col("ts") < cuts[0])
    print(f"{args.data}: {df.height} interactions, base {base.height}; {args.steps} steps; ALS {params}")
    u0, uid0, y0, iid0, spec, base_s = fit(base, params)
    none = System(u0, uid0, y0, iid0, spec, base)
    sweeps = [int(v) for v in args.sweeps.split(",")]
    upds = {sw: (System(u0, uid0, y0, iid0, spec, base), spec) for sw in sweeps}
    variant: list[dict] = []
    per_user: list[dict] = []  # per step: each system's NDCG@10 per evaluated user (bootstrap of the recovery)
    base_users, base_items = set(uid0.ids), set(iid0.ids)
    prev_rt: tuple[np.ndarray, IdMap] | None = (y0, iid0)
    changed_since_base: set[str] = set()
    rows, per_step = [], []
    for t in range(1, args.steps + 1):
        hist = df.filter(pl.col("ts") < cuts[t])
        step = df.filter((pl.col("ts") >= cuts[t - 1]) & (pl.col("ts") < cuts[t]))
        target = df.filter((pl.col("ts") >= cuts[t]) & (pl.col("ts") < cuts[t + 1]))
        changed = step["user"].unique(maintain_order=True).to_list()
        changed_since_base |= set(changed)
        # update: carried forward from the previous update (one system per number of local sweeps)
        upd_times = {}
        for sw in sweeps:
            sys_, spec_sw = upds[sw]
            t0 = time.perf_counter()
            r_sw = incremental_update(sys_.u, sys_.uids, sys_.y, sys_.iids, spec_sw,
                                      (hist["user"], hist["item"], hist["weight"].to_numpy()), changed,
                                      min_count=args.min_count, sweeps=sw, cg_steps=args.cg_steps,
                                      sweep_items=step["item"].unique().to_list() if args.sweep_scope == "new-events" else None,
                                      sweep_mode="full" if args.sweep_scope == "full" else "local")
            upd_times[sw] = time.perf_counter() - t0
            upds[sw] = (System(r_sw.user_vectors, r_sw.user_ids, r_sw.item_vectors, r_sw.item_ids, r_sw.spec, hist), r_sw.spec)
            if sw == sweeps[0]:
                res = r_sw
        upd, upd_s = upds[sweeps[0]][0], upd_times[sweeps[0]]
        # retrain from scratch, aligned onto the previous retrain
        u_r, uid_r, y_r, iid_r, spec_r, rt_s = fit(hist, params)
        counts = hist.group_by("item").len()
        many = set(counts.filter(pl.col("len") >= 20)["item"].to_list())
        al = fit_alignment(y_r, iid_r, prev_rt[0], prev_rt[1])
        al_many = fit_alignment(y_r, iid_r, prev_rt[0], prev_rt[1], fit_mask=np.asarray([i in many for i in iid_r.ids]))
        prev_rt = (al.apply(y_r), iid_r)
        rt = System(al.apply(u_r), uid_r, al.apply(y_r), iid_r, spec_r, hist)
        # evaluate on the next step's interactions
        tg = target.group_by("user", maintain_order=True).agg(pl.col("item"))
        users = tg["user"].to_list()
        rel = [set(x) for x in tg["item"].to_list()]
        known = {u: set(i) for u, i in hist.group_by("user").agg(pl.col("item")).iter_rows()}
        res_ndcg = {name: ndcg(s.topk(users, known), rel) for name, s in (("none", none), ("update", upd), ("retrain", rt))}
        per_user.append({"none": res_ndcg["none"], "retrain": res_ndcg["retrain"],
                         **{sw: ndcg(upds[sw][0].topk(users, known), rel) for sw in sweeps}})
        variant.append({"step": t, "retrain_s": rt_s, **{f"ndcg_sweeps{sw}": float(ndcg(upds[sw][0].topk(users, known), rel).mean())
                                                         for sw in sweeps},
                        **{f"update_s_sweeps{sw}": v for sw, v in upd_times.items()},
                        "ndcg_none": float(res_ndcg["none"].mean()), "ndcg_retrain": float(res_ndcg["retrain"].mean())})
        print("  sweeps " + ", ".join(f"{sw}: ndcg {variant[-1][f'ndcg_sweeps{sw}']:.4f} {upd_times[sw]:.2f}s" for sw in sweeps),
              flush=True)
        unchanged = np.asarray([u in base_users and u not in changed_since_base for u in users])
        returning = np.asarray([u in known for u in users])
        new_pairs = target.filter(~pl.col("item").is_in(list(base_items)))
        cover = {name: (float(new_pairs["item"].is_in(s.iids.ids).mean()) if new_pairs.height else float("nan"))
                 for name, s in (("none", none), ("update", upd), ("retrain", rt))}
        row = {"step": t, "users": len(users), "unchanged_users": int(unchanged.sum()), "returning_users": int(returning.sum()),
               **{f"ndcg_{k}": float(v.mean()) for k, v in res_ndcg.items()},
               **{f"ndcg_returning_{k}": float(v[returning].mean()) if returning.any() else float("nan")
                  for k, v in res_ndcg.items()},
               **{f"ndcg_unchanged_{k}": float(v[unchanged].mean()) if unchanged.any() else float("nan")
                  for k, v in res_ndcg.items()},
               **{f"new_item_coverage_{k}": v for k, v in cover.items()},
               "update_s": upd_s, "retrain_s": rt_s, "cos_unaligned": al.cosine_before, "cos_aligned": al.cosine_after,
               "cos_aligned_20plus": al_many.cosine_after, "items_new": res.stats["items_new"],
               "users_folded": res.stats["users_changed"]}
        per_step.append({k: (v[unchanged].tolist() if unchanged.any() else []) for k, v in res_ndcg.items()})
        per_step[-1].update({sw: per_user[-1][sw][unchanged].tolist() if unchanged.any() else [] for sw in sweeps})
        rows.append(row)
        print(f"step {t}: {len(users)} users ({row['returning_users']} returning, {row['unchanged_users']} unchanged); "
              f"ndcg none/update/retrain {row['ndcg_none']:.4f}/{row['ndcg_update']:.4f}/{row['ndcg_retrain']:.4f}; "
              f"update {upd_s:.2f}s retrain {rt_s:.2f}s; cos {al.cosine_before:.3f} -> {al.cosine_after:.3f}", flush=True)

    def mean(key: str) -> float:
        v = np.asarray([r[key] for r in rows], float)
        return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")

    print()
    hdr = ["step", "users", "ndcg none", "ndcg update", "ndcg retrain", "returning: none/upd/retr", "unchanged: none/upd",
           "new-item cov none/upd/retr", "update s", "retrain s", "cos unaligned", "cos aligned (>=20)"]
    print(" | ".join(hdr))
    for r in rows:
        print(" | ".join([str(r["step"]), str(r["users"]), f"{r['ndcg_none']:.4f}", f"{r['ndcg_update']:.4f}",
                          f"{r['ndcg_retrain']:.4f}",
                          f"{r['ndcg_returning_none']:.4f}/{r['ndcg_returning_update']:.4f}/{r['ndcg_returning_retrain']:.4f}",
                          f"{r['ndcg_unchanged_none']:.4f}/{r['ndcg_unchanged_update']:.4f}",
                          f"{r['new_item_coverage_none']:.2f}/{r['new_item_coverage_update']:.2f}/{r['new_item_coverage_retrain']:.2f}",
                          f"{r['update_s']:.3f}", f"{r['retrain_s']:.2f}", f"{r['cos_unaligned']:.3f}",
                          f"{r['cos_aligned']:.3f} ({r['cos_aligned_20plus']:.3f})"]))
    gain_rt = mean("ndcg_retrain") - mean("ndcg_none")
    gain_up = mean("ndcg_update") - mean("ndcg_none")
    recovery = gain_up / gain_rt if gain_rt > 0 else float("nan")
    t_ratio = float(np.median([r["update_s"] for r in rows]) / np.median([r["retrain_s"] for r in rows]))
    # unchanged users (known at the base, no event since) of every step, pooled: after 1..7 updates
    diff = np.concatenate([np.asarray(p["update"]) - np.asarray(p["none"]) for p in per_step]) if per_step else np.zeros(0)
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    summary = {
        "gain_recovery": recovery, "time_ratio": t_ratio, "cos_aligned_mean": mean("cos_aligned"),
        "cos_unaligned_mean": mean("cos_unaligned"), "cos_aligned_20plus_mean": mean("cos_aligned_20plus"),
        "unchanged_diff": float(diff.mean()) if len(diff) else float("nan"), "unchanged_se": se,
        "unchanged_user_steps": int(len(diff)), "unchanged_max_abs_diff": float(np.abs(diff).max()) if len(diff) else 0.0, "mean_ndcg": {k: mean(f"ndcg_{k}") for k in ("none", "update", "retrain")},
    }
    # local sweeps: choose on steps 1..select (validation), report on the rest (test)
    def recov(steps_: list[dict], sw: int) -> tuple[float, float]:
        g_rt = np.mean([v["ndcg_retrain"] - v["ndcg_none"] for v in steps_])
        g_up = np.mean([v[f"ndcg_sweeps{sw}"] - v["ndcg_none"] for v in steps_])
        tr = np.median([v[f"update_s_sweeps{sw}"] for v in steps_]) / np.median([v["retrain_s"] for v in steps_])
        return float(g_up / g_rt) if g_rt > 0 else float("nan"), float(tr)
    sel, rep = variant[: args.select_steps], variant[args.select_steps:]
    sweep_table = {sw: {"select": recov(sel, sw), "report": recov(rep, sw) if rep else None, "all": recov(variant, sw)}
                   for sw in sweeps}
    # how noisy is a recovery? resample the evaluated users within each step (seeded)
    rng = np.random.default_rng(args.seed)
    boot = {sw: [] for sw in sweeps}
    for _ in range(1000):
        picks = [rng.integers(0, len(pu["none"]), len(pu["none"])) for pu in per_user]
        g_rt = np.mean([pu["retrain"][i].mean() - pu["none"][i].mean() for pu, i in zip(per_user, picks)])
        for sw in sweeps:
            g_up = np.mean([pu[sw][i].mean() - pu["none"][i].mean() for pu, i in zip(per_user, picks)])
            boot[sw].append(g_up / g_rt if g_rt > 0 else np.nan)
    for sw in sweeps:
        lo, hi = np.nanpercentile(boot[sw], [5, 95])
        sweep_table[sw]["all_90ci"] = (float(lo), float(hi))
        d = np.concatenate([np.asarray(p[sw]) - np.asarray(p["none"]) for p in per_step]) if per_step else np.zeros(0)
        sweep_table[sw]["unchanged_diff"] = (float(d.mean()) if len(d) else float("nan"),
                                             float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan"), len(d))
    print()
    print(f"sweeps (recovery, time ratio): choose on steps 1..{args.select_steps}, report on the rest")
    for sw, v in sweep_table.items():
        print(f"  sweeps {sw}: select {v['select'][0]:.0%} @ {v['select'][1]:.1%}; "
              + (f"report {v['report'][0]:.0%} @ {v['report'][1]:.1%}; " if v["report"] else "")
              + f"all {v['all'][0]:.0%} @ {v['all'][1]:.1%} (90% bootstrap interval of the recovery over users: "
              f"{v['all_90ci'][0]:.0%} .. {v['all_90ci'][1]:.0%}); unchanged users update - none "
              f"{v['unchanged_diff'][0]:+.4f} (se {v['unchanged_diff'][1]:.4f}, {v['unchanged_diff'][2]} user-steps)")
    print()
    print(f"target 1 (sweeps {sweeps[0]}): update recovers {recovery:.0%} of the retrain's NDCG@10 gain over no update (>= 80%): "
          f"{'HOLDS' if recovery >= 0.8 else 'MISSED'}; at {t_ratio:.1%} of its time (median per step, <= 10%): "
          f"{'HOLDS' if t_ratio <= 0.1 else 'MISSED'}")
    print(f"target 2: aligned mean cosine between consecutive retrains {summary['cos_aligned_mean']:.3f} "
          f"(unaligned {summary['cos_unaligned_mean']:.3f}; items with >= 20 ratings {summary['cos_aligned_20plus_mean']:.3f}) "
          f">= 0.9: {'HOLDS' if summary['cos_aligned_mean'] >= 0.9 else 'MISSED'}")
    ok = len(diff) > 0 and (diff.mean() >= -2 * se if len(diff) > 1 else diff.mean() >= 0)
    print(f"target 3: unchanged users after 1..{args.steps} updates (pooled): NDCG@10 update - none = "
          f"{summary['unchanged_diff']:+.4f} (se {se:.4f}, max |diff| {summary['unchanged_max_abs_diff']:.4f}, "
          f"{len(diff)} user-steps): {'HOLDS' if ok else 'MISSED'} (no loss beyond 2 se)")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    prev = json.loads(out.read_text()) if out.exists() else {}
    prev[args.data] = {"params": params, "steps": rows, "summary": summary, "base_fit_s": base_s,
                       "min_count": args.min_count, "cuts": cuts,
                       "sweeps": sweep_table, "sweep_steps": variant, "cg_steps": args.cg_steps,
                       "sweep_scope": args.sweep_scope}
    out.write_text(json.dumps(prev, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()

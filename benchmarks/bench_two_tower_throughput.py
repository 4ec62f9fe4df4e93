"""Training throughput of the two-tower Trainer against a minimal hand-written PyTorch loop.

Both run the same net, the same optimisers and the same loss (in-batch softmax with logQ
and accidental-hit removal) on the same global batches, in the same process, alternating
``--repeats`` times; the table shows median samples/s and the trainer's overhead
``1 - trainer / hand``. Target: overhead <= 10%.

* CPU mode (default): a model small enough for a laptop (200k users, 50k items, 64 dims,
  history pooling over 20 items, batch 1024).
* GPU mode (only when CUDA is present, ``--gpu``): the issue's scale shape, a bare
  two-tower step with 10M users, 2M items, 64 dims, batch 8192, id embeddings with sparse
  gradients (SparseAdam) and bfloat16 autocast; target >= 1M samples/s on an H100/H200.

    .venv/bin/python benchmarks/bench_two_tower_throughput.py [--quick] [--gpu | --gpu-only] [--repeats 3]

Results also go to benchmarks/results/two_tower_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.models.losses import candidate_log_q  # noqa: E402
from recsys.models.towers import ItemTower, TwoTowerNet, UserTower  # noqa: E402
from recsys.models.trainer import PairBatches, TrainData, Trainer, batch_device  # noqa: E402
from recsys.models.two_tower import TwoTowerConfig  # noqa: E402

SHAPES = {
    "cpu": {"n_users": 200_000, "n_items": 50_000, "dim": 64, "batch": 1024, "history_len": 20, "sparse": True, "steps": 60},
    "gpu": {"n_users": 10_000_000, "n_items": 2_000_000, "dim": 64, "batch": 8192, "history_len": 0, "sparse": True, "steps": 600},
}


def make_data(shape: dict, steps: int, seed: int = 0) -> TrainData:
    """Zipf-distributed items (popular items repeat in batches, as in real logs)."""
    rng = np.random.default_rng(seed)
    n = shape["batch"] * steps
    users = rng.integers(0, shape["n_users"], n)
    items = np.minimum(rng.zipf(1.2, n) - 1, shape["n_items"] - 1)
    hl = max(shape["history_len"], 1)
    hist = np.full((shape["n_users"], hl), -1, np.int64)
    if shape["history_len"]:
        hist[:] = rng.integers(0, shape["n_items"], (shape["n_users"], hl))
    return TrainData(users, items, None, hist, None, None, shape["n_items"])


def make_net(shape: dict, device: torch.device) -> TwoTowerNet:
    torch.manual_seed(0)
    d, hl = shape["dim"], shape["history_len"]
    user = UserTower(shape["n_users"], shape["n_items"], d, id_dim=d, history_dim=d if hl else 0, history_len=max(hl, 1),
                     hidden=[] if not hl else [128], sparse=shape["sparse"])  # fmt: skip
    item = ItemTower(shape["n_items"], d, id_dim=d, hidden=[] if not hl else [128], sparse=shape["sparse"])
    return TwoTowerNet(user, item).to(device)


def config(shape: dict, device: torch.device) -> SimpleNamespace:
    c = TwoTowerConfig(dim=shape["dim"], batch_size=shape["batch"], epochs=1, sparse=shape["sparse"], lr=1e-3,
                       user_id_dropout=0.0, item_id_dropout=0.0, amp=device.type == "cuda", patience=None)  # fmt: skip
    return SimpleNamespace(**c.__dict__)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_trainer(shape: dict, data: TrainData, device: torch.device) -> tuple[float, float]:
    """Samples/s of ``Trainer.fit`` for one epoch (its own batches, step and bookkeeping).

    Returns the epoch's own figure (what the trainer logs: from the first batch to the
    epoch's loss, device synchronised) and the whole ``fit`` call, which also pays one-off
    set-up (the logQ table, moving the pair tables to the device) that a real epoch of
    millions of steps amortises.
    """
    net = make_net(shape, device)
    trainer = Trainer(net, config(shape, device), device)
    sync(device)
    t0 = time.perf_counter()
    hist = trainer.fit(data)
    sync(device)
    whole = len(data.users) // shape["batch"] * shape["batch"] / (time.perf_counter() - t0)
    return hist[0]["samples_per_s"], whole


def run_hand(shape: dict, data: TrainData, device: torch.device, batches: list[dict]) -> float:
    """Samples/s of the minimal loop: forward, in-batch softmax + logQ + hit masking, backward, step."""
    net = make_net(shape, device)
    cfg = config(shape, device)
    sparse = set(map(id, net.sparse_parameters()))
    opts = [torch.optim.AdamW([p for p in net.parameters() if id(p) not in sparse], lr=cfg.lr, weight_decay=cfg.weight_decay)]
    if sparse:
        opts.append(torch.optim.SparseAdam(net.sparse_parameters(), lr=cfg.lr))
    log_q = torch.from_numpy(candidate_log_q(np.bincount(data.items, minlength=data.n_items), shape["batch"])).to(device)
    amp = device.type == "cuda"
    sync(device)
    t0 = time.perf_counter()
    for b in batches:
        users, items, hist = (b[k].to(device, non_blocking=True) for k in ("users", "items", "history"))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            u, v, _ = net(users, items, hist)
        logits = (u.float() @ v.float().T) / cfg.temperature - log_q[items][None, :]
        hit = items[:, None] == items[None, :]
        hit.fill_diagonal_(False)
        loss = F.cross_entropy(logits.masked_fill(hit, float("-inf")), torch.arange(len(items), device=device))
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()
    sync(device)
    return len(batches) * shape["batch"] / (time.perf_counter() - t0)


def bench(mode: str, repeats: int, quick: bool) -> dict:
    shape = dict(SHAPES[mode])
    if quick:
        shape["steps"] = max(shape["steps"] // 4, 10)
    device = torch.device("cuda" if mode == "gpu" else "cpu")
    data = make_data(shape, shape["steps"])
    pb = PairBatches(data, shape["batch"], seed=0, device=batch_device(data, device))
    pb.set_epoch(1)
    batches = list(pb)  # exactly the trainer's epoch-1 batches (on the GPU when the trainer draws them there)
    run_trainer(shape, make_data(shape, 3), device)  # warm-up: lazy imports, allocator, kernels
    run_hand(shape, data, device, batches[:3])
    rows: dict[str, list[float]] = {"trainer": [], "hand": [], "trainer_fit": []}
    for i in range(repeats):  # alternate which runs first, so neither always gets the warmer caches
        order = ("hand", "trainer") if i % 2 == 0 else ("trainer", "hand")
        for name in order:
            if name == "hand":
                rows["hand"].append(run_hand(shape, data, device, batches))
            else:
                epoch, whole = run_trainer(shape, data, device)
                rows["trainer"].append(epoch)
                rows["trainer_fit"].append(whole)
    med = {k: statistics.median(v) for k, v in rows.items()}
    return {
        "mode": mode,
        "device": torch.cuda.get_device_name() if mode == "gpu" else "cpu",
        "threads": torch.get_num_threads(),
        "shape": shape,
        "samples_per_s": rows,
        "median": med,
        "overhead": 1.0 - med["trainer"] / med["hand"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    ap.add_argument("--gpu", action="store_true", help="also run the GPU scale shape (needs CUDA)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gpu-only", action="store_true", help="skip the CPU shape (on a GPU machine)")
    args = ap.parse_args()
    modes = [] if args.gpu_only else ["cpu"]
    if args.gpu or args.gpu_only or torch.cuda.is_available():
        if torch.cuda.is_available():
            modes.append("gpu")
        else:
            print("GPU mode: not measured (no CUDA device)")
    results = [bench(m, args.repeats, args.quick) for m in modes]
    print(f"\n{'mode':<5} {'device':<24} {'batch':>6} {'steps':>6} {'hand loop /s':>13} {'trainer epoch /s':>17} {'overhead':>9} {'fit incl. set-up /s':>20}")
    for r in results:
        m = r["median"]
        print(f"{r['mode']:<5} {r['device'][:24]:<24} {r['shape']['batch']:>6} {r['shape']['steps']:>6} {m['hand']:>13,.0f} "
              f"{m['trainer']:>17,.0f} {r['overhead']:>9.1%} {m['trainer_fit']:>20,.0f}")  # fmt: skip
    print(f"(samples/s, medians of {args.repeats} alternating repeats; overhead = 1 - trainer epoch / hand loop, target <= 10%;"
          " GPU target >= 1M samples/s)")  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "two_tower_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

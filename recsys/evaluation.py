"""Offline top-K evaluation of any :class:`~recsys.models.base.Recommender`.

Published numbers for the same model on the same data move by several times with the
protocol, so this module fixes one protocol and documents every choice (the metric
definitions are in :mod:`recsys.metrics`; ``docs/evaluation.md`` has the long form):

* **Binary relevance.** Any stored entry of the test matrix is relevant, whatever its
  value (a rating of 1 is as relevant as a 5; filter the split first if that is wrong).
* **Train items excluded.** :func:`evaluate` asks the model to remove each user's train
  items before ranking, so a model is never rewarded for re-recommending history.
* **Users without test items are skipped and counted** (``n_users_skipped``), never
  averaged in as zeros.
* **Full ranking.** Every item (or every item of the candidate allow-list) competes; no
  sampled negatives, which are known to reorder models.
* **Users are sampled, never items.** Validation at scale (tuning trials, training curves)
  runs on a fixed seeded sample of users (:func:`sample_users`); every mean comes with its
  standard error over users (``"ndcg@10_se"``) so the sampling noise is visible.

Scoring is batched (one float32 block of at most 256 MiB per ``recommend`` call) and ranked
by :func:`recsys.ranking.topk_batch` on every core.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from recsys.errors import InputError
from recsys.metrics import (
    DEFAULT_KS,
    MetricAccumulator,
    check_ks,
    check_popularity,
    check_rec_ids,
    check_test,
    item_popularity,
    ranking_metrics,
)
from recsys.ranking import rows_per_block

__all__ = [
    "DEFAULT_KS",
    "TABLE_METRICS",
    "activity_slices",
    "evaluate",
    "evaluate_slices",
    "format_table",
    "item_popularity",
    "ranking_metrics",
    "sample_users",
]

log = logging.getLogger(__name__)


def _rows_only(m: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    """A matrix of ``m``'s shape that keeps only ``rows`` (the others empty).

    ``Recommender.recommend`` indexes ``user_items`` by user index, so it needs a full
    height matrix; building one with only the batch's rows costs O(n_users + batch nnz)
    instead of validating the whole training matrix once per batch.
    """
    ru = np.unique(rows)
    sub = m[ru]
    counts = np.zeros(m.shape[0], dtype=np.int64)
    counts[ru] = np.diff(sub.indptr)
    indptr = np.r_[0, np.cumsum(counts)]
    return sp.csr_matrix((sub.data, sub.indices, indptr), shape=m.shape)


def _check_users(users: Any, n_rows: int, what: str = "users") -> np.ndarray:
    arr = np.atleast_1d(np.asarray(users))
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind not in "iu":
        raise InputError(f"{what} must be integer user indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.min() < 0 or arr.max() >= n_rows:
        raise InputError(f"{what} hold indices outside the test matrix rows [0, {n_rows})")
    return arr


def sample_users(test: sp.spmatrix, n: int, seed: int) -> np.ndarray:
    """A fixed, seeded sample of ``n`` users with at least one test item (sorted indices).

    Why: the metric is a mean over users, so a sample of 20k users estimates it with a
    standard error that :func:`evaluate` reports (``"ndcg@10_se"``), at a fraction of the
    cost of ranking the catalogue for 400k users, once per trial and iteration. The same
    ``seed`` gives the same users, so every trial and model is compared on the same
    sample. Users are sampled, never items.

    Parameters
    ----------
    test : sparse user x item matrix
        The split the metrics are computed on; users without an entry are not eligible.
    n : int
        Sample size; ``0`` (or ``n`` at least the number of eligible users) means every
        eligible user, and then ``evaluate(..., users=sample_users(...))`` equals the
        full evaluation (apart from ``n_users_skipped``).
    seed : int
        Seed of the sample (record it with the metrics).

    Returns
    -------
    int64 array of user indices, ascending
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise InputError(f"the user sample size must be an integer >= 0 (0 = every user), got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"the user sample seed must be an integer, got {seed!r}")
    m = check_test(test)
    eligible = np.flatnonzero(np.diff(m.indptr) > 0).astype(np.int64)
    if n == 0 or n >= len(eligible):
        return eligible
    pick = np.random.default_rng(int(seed)).choice(len(eligible), size=int(n), replace=False)
    return eligible[np.sort(pick)]


class _ProgressLog:
    """A log line with rate and ETA every ``every`` seconds (tqdm is silent off a terminal)."""

    def __init__(self, what: str, total: int, every: float = 30.0) -> None:
        self.what, self.total, self.every = what, total, every
        self.t0 = self.last = time.perf_counter()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.every or done <= 0:
            return
        self.last = now
        rate = done / (now - self.t0)
        log.info("%s: %d/%d users (%.0f users/s, ETA %.0f s)", self.what, done, self.total, rate,
                 (self.total - done) / max(rate, 1e-9))


class _Setup:
    """Validated inputs shared by :func:`evaluate` and :func:`evaluate_slices`."""

    def __init__(self, model: Any, train: Any, test: Any, ks: Sequence[int], candidates: Any, pop: Any, batch_size: Any) -> None:
        self.ks = check_ks(ks)
        if batch_size is not None and (
                isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0):
            raise InputError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        self.test = check_test(test)
        self.n_items = self.test.shape[1]
        self.batch_size = rows_per_block(self.n_items) if batch_size is None else int(batch_size)
        model_items = getattr(model, "n_items_", self.n_items)
        if model_items != self.n_items:
            raise InputError(f"test has {self.n_items} item columns but the model was fitted on {model_items}")
        self.train: sp.csr_matrix | None = None
        if train is not None:
            if not sp.issparse(train):
                raise InputError(f"train must be a scipy.sparse matrix or None, got {type(train).__name__}")
            self.train = sp.csr_matrix(train)
            if self.train.shape[1] != self.n_items:
                raise InputError(f"train has {self.train.shape[1]} item columns, test has {self.n_items}")
        self.candidates = None if candidates is None else np.unique(np.asarray(candidates, dtype=np.int64))
        self.coverage_items = self.n_items if self.candidates is None else len(self.candidates)
        if pop is None and self.train is not None:
            pop = item_popularity(self.train)  # popularity bias is reported by default
        self.pop = check_popularity(pop, self.n_items)

    def check_train_rows(self, users: np.ndarray) -> None:
        if self.train is not None and users.size and users.max() >= self.train.shape[0]:
            raise InputError(f"train has {self.train.shape[0]} rows, fewer than the evaluated user indices need")
        if self.train is not None and self.train.shape[0] == self.test.shape[0]:
            overlap = self.test.multiply(self.train).nnz
            if overlap:
                log.warning(
                    "%d test interactions are also in train; with train items excluded they can never "
                    "be hit (check the split)",
                    overlap,
                )

    def accumulator(self) -> MetricAccumulator:
        return MetricAccumulator(self.ks, self.n_items, self.coverage_items, self.pop)

    def batches(self, model: Any, users: np.ndarray, show_progress: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(user_indices, rec_ids)`` blocks: the only loop, over batches of users."""
        kmax = self.ks[-1]
        starts = range(0, len(users), self.batch_size)
        disable = True if not show_progress or len(starts) < 4 else None  # None: off when not a TTY
        progress = _ProgressLog(f"evaluate {type(model).__name__}", len(users))
        for start in tqdm(starts, desc=f"evaluate {type(model).__name__}", disable=disable, leave=False):
            progress.update(start)
            b = users[start : start + self.batch_size]
            seen = _rows_only(self.train, b) if self.train is not None else None
            ids, _ = model.recommend(b, k=kmax, exclude_seen=seen is not None, user_items=seen, items=self.candidates)
            if ids.shape[1] < kmax:  # k is capped at the catalogue: the empty slots are misses
                ids = np.pad(ids, ((0, 0), (0, kmax - ids.shape[1])), constant_values=-1)
            yield b, check_rec_ids(ids, kmax, self.n_items)


def evaluate(
    model: Any,
    train: sp.csr_matrix | None,
    test: sp.csr_matrix,
    ks: Sequence[int] = DEFAULT_KS,
    users: np.ndarray | None = None,
    candidates: np.ndarray | None = None,
    item_popularity: np.ndarray | None = None,
    batch_size: int | None = None,
    show_progress: bool = True,
) -> dict[str, float]:
    """Evaluate a fitted recommender on a test matrix (full ranking, train items excluded).

    Parameters
    ----------
    model : Recommender
        Anything with ``recommend(user_indices, k, exclude_seen, user_items=, items=)``
        returning ``(ids, scores)`` 2-D arrays.
    train : sparse user x item matrix or None
        Items to exclude per user (normally the training matrix). ``None`` disables
        exclusion, which is only right when test and train may legitimately overlap.
    test : sparse user x item matrix
        Relevant items (binary relevance); rows are user indices of the model.
    ks : sequence of int
        Cut-offs; the model is asked for ``max(ks)`` items per user.
    users : int array, optional
        User indices to evaluate (default: every row of ``test``), e.g. a fixed sample
        from :func:`sample_users`. Those without test items are skipped and counted in
        ``n_users_skipped``.
    candidates : int array, optional
        Item allow-list passed to the model (e.g. the cold items for cold-start
        evaluation). Relevant items outside it stay relevant (they count in the recall
        denominator); ``coverage@K`` is then relative to the number of candidates.
    item_popularity : float array of length n_items, optional
        Values averaged by ``mean_popularity@K``. Default: the fraction of training users
        who interacted with each item (:func:`recsys.metrics.item_popularity` of
        ``train``); not reported when both this and ``train`` are ``None``.
    batch_size : int, optional
        Users per ``recommend`` call; bounds memory at ``batch_size * n_items`` scores.
        Default: as many as fit 256 MiB (:func:`recsys.ranking.rows_per_block`).
    show_progress : bool
        Progress bar over batches (only for 4+ batches and on a terminal); off a
        terminal a log line with rate and ETA every 30 s.

    Returns
    -------
    dict
        ``"{metric}@{k}"`` for precision, recall, ndcg, map, hit_rate, coverage and
        mean_popularity, plus ``"mrr"``, ``"n_users"`` (users evaluated) and
        ``"n_users_skipped"``; every per-user mean (not coverage or popularity) also as
        ``"{key}_se"``, its standard error over the evaluated users.
    """
    t0 = time.perf_counter()
    s = _Setup(model, train, test, ks, candidates, item_popularity, batch_size)
    n_rows = s.test.shape[0]
    users_arr = np.arange(n_rows, dtype=np.int64) if users is None else _check_users(users, n_rows)
    s.check_train_rows(users_arr)
    acc = s.accumulator()
    n_rel = np.diff(s.test.indptr)[users_arr]
    acc.n_skipped += int((n_rel == 0).sum())
    for b, ids in s.batches(model, users_arr[n_rel > 0], show_progress):
        acc.add(ids, s.test[b])
    res = acc.result()
    k0 = s.ks[0]
    log.info(
        # the seconds let a reader (and benchmarks/bench_scale.py) tell scoring time from fitting time
        "evaluated %s on %d users (%d skipped without test items): ndcg@%d=%.4f (se %.4f) recall@%d=%.4f in %.1f s",
        type(model).__name__, res["n_users"], res["n_users_skipped"], k0, res[f"ndcg@{k0}"], res[f"ndcg@{k0}_se"],
        k0, res[f"recall@{k0}"], time.perf_counter() - t0,
    )
    return res


def evaluate_slices(
    model: Any,
    train: sp.csr_matrix | None,
    test: sp.csr_matrix,
    slices: Mapping[str, np.ndarray],
    ks: Sequence[int] = DEFAULT_KS,
    candidates: np.ndarray | None = None,
    item_popularity: np.ndarray | None = None,
    batch_size: int | None = None,
    show_progress: bool = True,
) -> dict[str, dict[str, float]]:
    """:func:`evaluate` on several user groups at once, recommending once per user.

    Same protocol and keys as :func:`evaluate`, one result per slice (in the order
    given), so ``format_table(evaluate_slices(...), name_header="users")`` prints one
    row per group. Slices may overlap (e.g. ``"all"`` and ``"train<10"``); each user
    is still scored once. See :func:`activity_slices` for the usual groups.

    Parameters
    ----------
    slices : mapping of name -> int array of user indices
    Other parameters : as for :func:`evaluate`.
    """
    if not isinstance(slices, Mapping) or not slices:
        raise InputError("slices must be a non-empty mapping of name -> user index array")
    t0 = time.perf_counter()
    s = _Setup(model, train, test, ks, candidates, item_popularity, batch_size)
    n_rows = s.test.shape[0]
    n_rel_all = np.diff(s.test.indptr)
    members, accs = {}, {}
    for name, idx in slices.items():
        u = np.unique(_check_users(idx, n_rows, what=f"slice {name!r}"))
        members[name] = np.zeros(n_rows, bool)
        members[name][u] = True
        accs[name] = s.accumulator()
        accs[name].n_skipped += int((n_rel_all[u] == 0).sum())
    todo = np.flatnonzero(np.logical_or.reduce(list(members.values())) & (n_rel_all > 0))
    s.check_train_rows(todo)
    for b, ids in s.batches(model, todo, show_progress):
        tb = s.test[b]
        for name, acc in accs.items():
            mask = members[name][b]
            if mask.any():
                acc.add(ids[mask], tb[mask])
    return {name: acc.result() for name, acc in accs.items()}


def activity_slices(train: sp.spmatrix, thresholds: Sequence[int] = (10,)) -> dict[str, np.ndarray]:
    """Users grouped by their number of training interactions, for :func:`evaluate_slices`.

    ``thresholds=(10,)`` gives ``{"all", "train<10", "train>=10"}``; ``(5, 20)`` gives
    ``"train<5"``, ``"5<=train<20"`` and ``"train>=20"``. Light users are where models
    differ most (and where popularity baselines are hard to beat), so a single average
    over all users can hide a regression on them.
    """
    if not sp.issparse(train):
        raise InputError(f"train must be a scipy.sparse matrix, got {type(train).__name__}")
    th = sorted({int(t) for t in thresholds})
    if not th or th[0] <= 0:
        raise InputError(f"thresholds must be positive integers, got {thresholds!r}")
    counts = np.diff(sp.csr_matrix(train).indptr)
    out = {"all": np.arange(len(counts), dtype=np.int64)}
    edges = [0, *th, None]
    for lo, hi in zip(edges[:-1], edges[1:]):
        if lo == 0:
            name, sel = f"train<{hi}", counts < hi
        elif hi is None:
            name, sel = f"train>={lo}", counts >= lo
        else:
            name, sel = f"{lo}<=train<{hi}", (counts >= lo) & (counts < hi)
        out[name] = np.flatnonzero(sel).astype(np.int64)
    return out


TABLE_METRICS: tuple[str, ...] = (
    "precision@10", "recall@10", "ndcg@10", "map@10", "hit_rate@10", "mrr", "coverage@10", "mean_popularity@10", "n_users",
)


def format_table(
    results: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] | None = None,
    digits: int = 4,
    name_header: str = "model",
) -> str:
    """Plain-text table of results: one row per model, one column per metric.

    ``metrics=None`` shows :data:`TABLE_METRICS`. A metric missing for a model is shown
    as ``-`` so that models evaluated with different options still fit in one table;
    integers (``n_users``) are printed without decimals.
    """
    metrics = TABLE_METRICS if metrics is None else tuple(metrics)
    header = [name_header, *metrics]
    rows = []
    for name, res in results.items():
        row = [str(name)]
        for mt in metrics:
            v = res.get(mt)
            if v is None:
                row.append("-")
            elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                row.append(str(int(v)))
            else:
                row.append(f"{float(v):.{digits}f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:]))])

    lines = [fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]
    return "\n".join(lines)

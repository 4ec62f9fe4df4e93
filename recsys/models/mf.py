"""Matrix factorization on implicit feedback: the fit loop shared by ALS and BPR.

The models themselves live in :mod:`recsys.models.als` and :mod:`recsys.models.bpr`;
this module holds what they share (device switch, validation every N iterations with
best-iteration restore, the cached fold-in of :mod:`recsys.models.foldin`).

Why wrap ``implicit`` rather than call it: on its own it has no validation-based model
selection, no fold-in for BPR, a device switch per factory call, and GPU factor matrices
that are not numpy. These classes add, at negligible cost (see
``benchmarks/bench_mf_overhead.py``):

* the common :class:`~recsys.models.base.FactorModel` interface (float32 numpy factors,
  ``recommend`` / ``save`` / ``load`` without pickle);
* one ``device="auto"|"cpu"|"cuda"`` argument resolved via ``implicit.gpu.HAS_CUDA``;
* confidence weighting (:mod:`recsys.models.weighting`);
* evaluation every ``eval_every`` iterations on a validation callable, keeping the best
  iteration's factors and optionally stopping early;
* fold-in of a new or changed user's history (:meth:`ALS.recalculate_user`,
  :meth:`BPR.recalculate_user`);
* every iteration timed (``iteration_seconds_``, ``fit_seconds_``) and reported with rate
  and ETA (:class:`recsys.progress.Progress`: a tqdm bar with ``show_progress`` on a
  terminal, else a log line every 30 s), so a long fit is never silent.

Both fit with OpenBLAS/MKL limited to one thread while ``implicit`` runs its own
OpenMP threads; ``implicit`` recommends this because the two thread pools otherwise
oversubscribe the cores (it warns at construction).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.errors import ConfigError, InputError
from recsys.models.base import FactorModel
from recsys.models.foldin import FoldIn, FoldInSpec
from recsys.progress import Progress, format_seconds

log = logging.getLogger(__name__)

#: ``validation(model) -> metrics``; called with the current factors in place
Validation = Callable[["MFModel"], Mapping[str, float]]
#: ``on_eval(iteration, metrics)``; e.g. log a curve point to MLflow
OnEval = Callable[[int, Mapping[str, float]], None]

DEVICES = ("auto", "cpu", "cuda")


def resolve_use_gpu(device: str) -> bool:
    """Turn ``device`` into implicit's ``use_gpu`` flag.

    ``"auto"`` uses the GPU when ``implicit`` was built with CUDA and a GPU is visible;
    ``"cuda"`` insists and raises :class:`~recsys.errors.ConfigError` otherwise, because
    silently training on the CPU when a GPU was asked for hides a broken install.
    """
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {DEVICES}, got {device!r}")
    import implicit.gpu

    has_cuda = bool(implicit.gpu.HAS_CUDA)
    if device == "cuda" and not has_cuda:
        raise ConfigError(
            "device='cuda' was requested but implicit has no CUDA support here "
            "(implicit.gpu.HAS_CUDA is False: the PyPI wheel is CPU-only, or no GPU is visible); "
            "install implicit with CUDA (e.g. `conda install -c conda-forge implicit implicit-proc=*=gpu`) "
            "or use device='cpu' / 'auto'"
        )
    use_gpu = has_cuda and device != "cpu"
    log.debug("device=%r -> %s", device, "cuda" if use_gpu else "cpu")
    return use_gpu


def _to_numpy(x: Any, copy: bool = False) -> np.ndarray:
    """Factors of an implicit model (numpy on CPU, ``implicit.gpu.Matrix`` on GPU) as float32.

    ``copy=True`` is needed for snapshots taken during fitting: on the CPU implicit
    updates its factor arrays in place, so a view would silently follow later iterations.
    """
    if hasattr(x, "to_numpy"):
        return np.ascontiguousarray(x.to_numpy(), dtype=np.float32)
    if copy:
        return np.array(x, dtype=np.float32, order="C", copy=True)
    return np.ascontiguousarray(x, dtype=np.float32)


class _StopFit(Exception):
    """Raised from the per-iteration callback to stop implicit's loop early."""


def _blas_one_thread() -> Any:
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _blas_threads() -> int | None:
    """BLAS threads outside the fit, restored for validation (its scoring GEMM is BLAS-bound)."""
    from threadpoolctl import threadpool_info

    counts = [int(i.get("num_threads") or 1) for i in threadpool_info() if i.get("user_api") == "blas"]
    return max(counts) if counts else None


def _blas_limit(n: int | None) -> Any:
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n, user_api="blas")


class MFModel(FactorModel):
    """Shared fit loop of :class:`ALS` and :class:`BPR` (validation, best iteration)."""

    def _check_common(self) -> None:
        for name in ("factors", "iterations"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if not self.regularization >= 0:
            raise ConfigError(f"regularization must be >= 0, got {self.regularization!r}")

    def _make_implicit(self, use_gpu: bool) -> Any:
        raise NotImplementedError

    def _implicit_kwargs(self, use_gpu: bool, *names: str) -> dict[str, Any]:
        """Constructor arguments for implicit: the named hyperparameters plus the shared ones.

        ``num_threads`` exists only on implicit's CPU models, so it is passed for the CPU only.
        """
        kw: dict[str, Any] = {n: getattr(self, n) for n in ("factors", "regularization", "iterations", *names)}
        kw.update(random_state=self.random_state, use_gpu=use_gpu)
        if not use_gpu:
            kw["num_threads"] = self.num_threads
        return kw

    def _prepare(self, user_items: sp.csr_matrix) -> sp.csr_matrix:
        return user_items

    def _fit(
        self,
        user_items: sp.csr_matrix,
        validation: Validation | None = None,
        eval_every: int = 5,
        metric: str = "ndcg@10",
        patience: int | None = None,
        on_eval: OnEval | None = None,
    ) -> None:
        """Fit; with ``validation``, evaluate every ``eval_every`` iterations and keep the best.

        Parameters
        ----------
        validation : callable, optional
            ``validation(model) -> dict`` of metrics computed with the current factors
            (e.g. :func:`validation_scorer`). Must not look at the test split.
        eval_every : int
            Evaluate after every this many iterations (and always after the last).
        metric : str
            Key of the validation dict to maximise.
        patience : int, optional
            Stop after this many evaluations without improvement (early stopping).
        on_eval : callable, optional
            ``on_eval(iteration, metrics)`` after each evaluation (1-based iteration).
        """
        self._check_common()
        if validation is not None and (isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every <= 0):
            raise ConfigError(f"eval_every must be a positive integer, got {eval_every!r}")
        use_gpu = resolve_use_gpu(self.device)
        self.user_items_ = user_items  # recommend() during validation excludes seen items
        self.history_: list[dict[str, float]] = []
        self.best_iteration_ = int(self.iterations)
        self.best_score_ = float("nan")
        data = self._prepare(user_items)
        self.iteration_seconds_: list[float] = []  # implicit's own time per iteration (validation excluded)
        progress = Progress(f"{type(self).__name__} fit", int(self.iterations), "iterations", logger=log,
                            show_progress=bool(self.show_progress))  # fmt: skip
        scoring_threads = _blas_threads()  # implicit's fit wants 1 BLAS thread; validation's GEMM all of them
        with _blas_one_thread(), progress:
            impl = self._make_implicit(use_gpu)
            callback: Callable[..., None] | None = None
            best: dict[str, Any] = {}
            if validation is not None:
                state = {"since_best": 0}

                def evaluate_every(iteration: int, *_: Any) -> None:
                    it = iteration + 1
                    if it % eval_every and it != self.iterations:
                        return
                    self.user_factors_ = _to_numpy(impl.user_factors, copy=True)
                    self.item_factors_ = _to_numpy(impl.item_factors, copy=True)
                    with _blas_limit(scoring_threads):
                        metrics = dict(validation(self))
                    if metric not in metrics:
                        raise ConfigError(f"validation returned no {metric!r}; it has {sorted(metrics)}")
                    score = float(metrics[metric])
                    self.history_.append({"iteration": it, **{k: float(v) for k, v in metrics.items()}})
                    if on_eval is not None:
                        on_eval(it, metrics)
                    log.info("iteration %d: validation %s=%.4f", it, metric, score)
                    if not best or score > best["score"]:
                        best.update(score=score, it=it, u=self.user_factors_, v=self.item_factors_)
                        state["since_best"] = 0
                    else:
                        state["since_best"] += 1
                        if patience is not None and state["since_best"] >= patience:
                            raise _StopFit

                callback = evaluate_every

            def on_iteration(iteration: int, elapsed: float = float("nan"), *rest: Any) -> None:
                self.iteration_seconds_.append(float(elapsed))
                progress.update()
                if callback is not None:
                    callback(iteration, elapsed, *rest)

            try:  # our Progress shows the bar (or rate/ETA log lines), not implicit's tqdm
                impl.fit(data, show_progress=False, callback=on_iteration)
            except _StopFit:
                log.info("early stop at iteration %d (best %d)", self.history_[-1]["iteration"], best["it"])
        self.fit_seconds_ = progress.elapsed
        # DEBUG: a fit that outlasted the progress interval already closed with an INFO line
        log.debug("%s: %d iterations in %s (%.3g s/iteration in implicit)", type(self).__name__, len(self.iteration_seconds_),
                 format_seconds(self.fit_seconds_), float(np.mean(self.iteration_seconds_ or [float("nan")])))  # fmt: skip
        if best:
            self.user_factors_, self.item_factors_ = best["u"], best["v"]
            self.best_iteration_, self.best_score_ = best["it"], best["score"]
        else:
            self.user_factors_ = _to_numpy(impl.user_factors)
            self.item_factors_ = _to_numpy(impl.item_factors)
        if not (np.isfinite(self.user_factors_).all() and np.isfinite(self.item_factors_).all()):
            raise InputError(
                f"{type(self).__name__} produced NaN/inf factors; lower learning_rate/alpha or raise regularization"
            )

    def _foldin(self) -> FoldIn:
        """This model's :class:`~recsys.models.foldin.FoldIn`, rebuilt when the factors change.

        Keyed on the identity of ``item_factors_`` (validation swaps in new arrays), so
        ``YᵀY`` is computed once per set of factors, not per user.
        """
        self._check_fitted()
        cache = getattr(self, "_foldin_cache", None)
        if cache is None or cache[0] is not self.item_factors_:
            cache = (self.item_factors_, FoldIn(self.foldin_spec(), self.item_factors_))
            self._foldin_cache = cache
        return cache[1]

    def foldin_spec(self) -> FoldInSpec:
        """The model's :class:`~recsys.models.foldin.FoldInSpec` (each family defines its own)."""
        raise NotImplementedError


def validation_scorer(
    train: sp.csr_matrix,
    valid: sp.csr_matrix,
    ks: tuple[int, ...] = (10,),
    users: np.ndarray | None = None,
) -> Validation:
    """A ``validation`` callable for :meth:`MFModel.fit`: metrics on the validation split.

    Train items are excluded from the ranking; ``users`` can subsample the evaluated
    users to keep frequent evaluation cheap. Never pass the test split here.
    """
    from recsys.evaluation import evaluate

    def score(model: MFModel) -> Mapping[str, float]:
        return evaluate(model, train, valid, ks=ks, users=users)

    return score

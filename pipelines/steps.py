"""The steps of ``recsys run``, each a function from inputs to files on disk.

Every step writes its outputs atomically into the run's output directory and returns a
small JSON-able dict (paths end in ``_path``) that :class:`recsys.workflow.Workflow`
records; the orchestration (order, fingerprints, lock, exit codes) lives in
:mod:`pipelines.run`. Steps read their inputs back from disk rather than from memory, so a
step skipped as up to date and a step that just ran hand the same thing downstream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.embed_content import make_encoder as build
from pipelines.train import train_model
from recsys import promotion, tracking
from recsys.data.dataset import Dataset
from recsys.embeddings.blend import ContentBlender, ItemVectorTable
from recsys.embeddings.cache import EmbeddingCache
from recsys.embeddings.content import embed_items, item_texts
from recsys.embeddings.mappers import make_mapper, select_mapper_on_dataset
from recsys.errors import ConfigError
from recsys.io import load_npz, read_json, save_npz, sha256_file, write_json
from recsys.models.base import Recommender
from recsys.serving.bundle import IndexConfig, export_bundle, foldin_for
from recsys.training import all_interactions, refit_on_all
from recsys.models.registry import get_family
from recsys.tuning_cache import TuningCache, plan_tuning

#: the tuning cache of a run, under OUT/state (docs/autotune.md)
TUNING_CACHE = "tuning_cache.json"

log = logging.getLogger("recsys.run")


@dataclass
class RunContext:
    """What every step needs: where to write and where to track."""

    out: Path
    tracking_uri: str
    experiment: str
    seed: int
    show_progress: bool = True
    effective_toml: str = ""  # the validated config of the run, logged with the publish run
    retune: bool = False  # search again even when the tuning cache holds this data lineage
    evaluation: dict[str, Any] | None = None  # [evaluation]: the users validation and test metrics are computed on

    @property
    def dataset_dir(self) -> Path:
        return self.out / "dataset"


def split_sha256(ds: Dataset) -> str:
    """Hash of the test split file: champion and challenger compare on the same split."""
    if ds.path is None:
        raise ConfigError("dataset has no path; cannot hash its test split")
    return sha256_file(ds.path / "test.parquet")


# -- dataset -------------------------------------------------------------------------------


def build_dataset_step(ctx: RunContext, build_config: Any, engine: Any = None) -> dict[str, Any]:
    """Build the run's dataset on the engine ``[engine]`` names (``engine``: its section; None: polars).

    Both engines write the same directory, so the step's outputs (and the steps after it)
    do not depend on the engine.
    """
    from pipelines.spark_engine import build_with_engine

    ds = build_with_engine(build_config, ctx.dataset_dir, engine)
    rows = ds.manifest.get("rows", {})
    log.info("dataset: %d users x %d items; rows %s", ds.n_users, ds.n_items,
             {k: rows.get(k) for k in ("in", "rejected", "out")})
    return {"dataset_path": str(ctx.dataset_dir), "manifest_sha256": sha256_file(ctx.dataset_dir / "manifest.json"),
            "n_users": ds.n_users, "n_items": ds.n_items}


# -- models ----------------------------------------------------------------------------------


def eval_samples(ctx: RunContext) -> dict[str, Any]:
    """``[evaluation]`` as :func:`recsys.training.train_and_evaluate` takes it (no sample seed: the run's)."""
    ev = dict(ctx.evaluation or {})
    seed = ev.get("sample_seed")
    return {"valid_users": int(ev.get("valid_users", 0)), "test_users": int(ev.get("test_users", 0)),
            "sample_seed": int(ctx.seed if seed is None else seed)}


def train_step(ctx: RunContext, ds: Dataset, name: str, params: dict[str, Any], tune: dict[str, Any] | None) -> dict[str, Any]:
    """Train one configured model on the train split, evaluate it once on test, track it.

    With a ``tune`` table the best parameters of an earlier search on the same data lineage
    (``OUT/state/tuning_cache.json``, :mod:`recsys.tuning_cache`) are reused; otherwise, or
    with ``--retune``, the search runs and its best parameters are cached.
    """
    model_dir = ctx.out / "models" / name
    cache = TuningCache(ctx.out / "state" / TUNING_CACHE)
    plan = plan_tuning(ds, get_family(name), params, tune, cache, retune=ctx.retune, seed=ctx.seed)
    res = train_model(ds, name, plan.params, tracking_uri=ctx.tracking_uri, experiment=ctx.experiment, out_dir=model_dir,
                      tune=plan.space is not None, space=plan.space, tuning=plan.settings,
                      show_progress=ctx.show_progress, tags={"tuning": plan.status}, evaluation=eval_samples(ctx))
    tuning_info: dict[str, Any] = {"status": plan.status, "key": plan.key, "reason": plan.reason,
                                   "seed": plan.settings.get("seed", (plan.hit or {}).get("seed"))}
    if plan.status == "search":
        best = max(res.trials, key=lambda t: t.score)
        entry = cache.put(plan.key, jsonable(res.params), plan.record, score=float(best.score),
                          metric=plan.settings.get("metric", "ndcg@10"), n_trials=len(res.trials),
                          n_pruned=sum(t.state == "pruned" for t in res.trials), seed=plan.settings["seed"],
                          minutes=round(sum(t.fit_seconds for t in res.trials) / 60, 2), run_id=res.run_id)
        tuning_info.update(n_trials=entry["n_trials"], minutes=entry["minutes"])
    model_path = model_dir / "model.npz"
    if not model_path.exists():
        res.model.save(model_path)
    on_train = None
    if res.model_on_train is not None and get_family(name).vectors:  # a fusion member without refitting it
        on_train = model_dir / "model_on_train.npz"
        res.model_on_train.save(on_train)
    write_json(model_dir / "result.json", {"model": name, "params": jsonable(res.params), "run_id": res.run_id,
                                           "model_on_train_path": None if on_train is None else str(on_train),
                                           "metrics_test": jsonable(res.metrics_test),
                                           "metrics_valid": jsonable(res.metrics_valid), "tuning": tuning_info})
    return {"result_path": str(model_dir / "result.json"), "model_path": str(model_path), "run_id": res.run_id}


def load_result(step_outputs: dict[str, Any]) -> dict[str, Any]:
    return read_json(step_outputs["result_path"])


def refit_step(ctx: RunContext, ds: Dataset, name: str, params: dict[str, Any], refit: bool, trained_model_path: str) -> dict[str, Any]:
    """The published model: the selected hyperparameters refitted on every interaction.

    The refit is :func:`recsys.training.refit_on_all` (the protocol's last step); a family
    that does not refit (the two-tower) is published as trained.
    """
    out = ctx.out / "models" / f"{name}-published" / "model.npz"
    model = refit_on_all(ds, name, params) if refit else None
    if model is None:
        if refit:
            log.info("%s is published as trained (its family does not refit on all interactions)", name)
        Recommender.load(trained_model_path).save(out)
        return {"model_path": str(out), "refit": False}
    model.save(out)
    return {"model_path": str(out), "refit": True}


# -- content ---------------------------------------------------------------------------------


def content_step(ctx: RunContext, ds: Dataset, cfg: dict[str, Any]) -> dict[str, Any]:
    """Content vectors of every item; only new or changed texts are encoded (disk cache)."""
    text_cols = list(cfg.get("text_cols") or [c for c in ds.items.columns if c not in ("item_idx", "external_id")])
    missing = [c for c in text_cols if c not in ds.items.columns]
    if missing:
        raise ConfigError(f"[content] text_cols {missing} are not item columns {ds.items.columns}")
    cache_dir = Path(cfg.get("cache_dir") or ctx.out / "cache" / "embeddings")
    encoder = make_encoder(cfg, ds, text_cols, cache_dir, ctx.show_progress)
    cache = EmbeddingCache(cache_dir)
    vectors, stats = embed_items(ds.items, text_cols, encoder, cache=cache, n_items=ds.n_items,
                                 show_progress=ctx.show_progress)
    path = ctx.out / "content" / "item_content.npz"
    save_npz(path, vectors=vectors.astype(np.float32))
    log.info("content: %d items embedded with %s (%s)", len(vectors), encoder.model_id, stats)
    return {"content_path": str(path), "encoder": encoder.model_id, "stats": jsonable(stats)}


def make_encoder(cfg: dict[str, Any], ds: Dataset, text_cols: list[str], cache_dir: Path, show_progress: bool) -> Any:
    """The ``[content]`` encoder, built by the ``embed-content`` job's own factory."""
    kind = cfg.get("encoder", "minilm")
    if kind not in ("minilm", "tfidf"):
        raise ConfigError(f"[content] encoder must be 'minilm' or 'tfidf' (the test double), got {kind!r}")
    opts = {"encoder": kind, "model_path": cfg.get("model_path"), "device": cfg.get("device", "auto"),
            "batch_size": int(cfg.get("batch_size", 64)), "no_progress": not show_progress,
            "cache": str(cache_dir), "tfidf_dim": int(cfg.get("dim", 64))}
    return build(opts, item_texts(ds.items, text_cols) if kind == "tfidf" else [])


def jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if hasattr(x, "as_dict"):
        return jsonable(x.as_dict())
    return x if isinstance(x, (str, int, float, bool)) or x is None else str(x)


# -- blend -----------------------------------------------------------------------------------


def blend_step(ctx: RunContext, ds: Dataset, model_path: str, content_path: str | None, cfg: dict[str, Any],
               selection_model_path: str | None = None) -> dict[str, Any]:
    """One item-vector table for warm and cold items, with where each vector came from.

    ``model_path`` is the published (refitted) model; ``selection_model_path`` the same
    family fitted on ``train`` only, on which ``[content] mapper = "auto"`` chooses the
    cold-start mapper (validation split only; see :mod:`recsys.embeddings.mappers`).
    """
    model = Recommender.load(model_path)
    cf = np.asarray(model.item_factors_, np.float32)
    counts = np.asarray((all_interactions(ds) > 0).sum(axis=0)).ravel()
    path = ctx.out / "vectors" / "items.npz"
    mapper_info = None
    if content_path is None:
        prov = np.where(counts > 0, "cf", "missing")
        table = ItemVectorTable(np.where((counts > 0)[:, None], cf, 0.0), prov, (counts > 0).astype(np.float32), {"content": False})
    else:
        content = load_npz(content_path)["vectors"]
        mapper, mapper_info = _cold_start_mapper(ctx, ds, content, cfg, selection_model_path or model_path)
        blender = ContentBlender(k=float(cfg.get("blend_k", 0.0)), mapper=mapper,
                                 min_count=int(cfg.get("min_count", 5)), cold_scale=float(cfg.get("cold_scale", 1.0)))
        blender.fit(content, cf, counts)
        table = blender.transform(content, cf, counts)
        table.meta["cold_start_mapper"] = mapper_info
    table.save(path)
    return {"vectors_path": str(path), "sources": table.counts(), "mapper": jsonable(mapper_info)}


def _cold_start_mapper(ctx: RunContext, ds: Dataset, content: np.ndarray, cfg: dict[str, Any],
                       selection_model_path: str) -> tuple[Any, dict[str, Any]]:
    """The configured mapper, or for ``"auto"`` the one chosen on validation (logged to MLflow)."""
    name = cfg.get("mapper", "auto")
    if name != "auto":
        params = {"knn": {"k": int(cfg.get("knn_k", 20))},
                  "blend": {"k": int(cfg.get("knn_k", 20)), "alpha": float(cfg.get("mapper_alpha", 0.5))}}.get(name, {})
        return make_mapper(name, **params), {"mapper": name, "params": params, "selected_on": None, "reason": "configured"}
    sel_model = Recommender.load(selection_model_path)
    sel = select_mapper_on_dataset(ds, content, sel_model.user_factors_, sel_model.item_factors_, seed=ctx.seed,
                                   holdout_frac=float(cfg.get("mapper_holdout", 0.1)), min_count=int(cfg.get("min_count", 5)))
    with tracking.start_run(ctx.tracking_uri, ctx.experiment, run_name="cold-start-mapper", tags={"recsys.step": "blend"}):
        tracking.log_config(sel.mlflow_params())
        tracking.log_metrics(sel.mlflow_metrics())
    return sel.make(), sel.as_dict()


# -- align -------------------------------------------------------------------------------------


def align_step(ctx: RunContext, ds: Dataset, model_path: str, vectors_path: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Rotate the new vectors onto the live bundle's space; measure drift, churn, new-item exposure.

    :func:`recsys.lifelong.align_to_live` does the work; a BPR model's bias column is left
    unrotated. With ``[align] enabled = false`` nothing is rotated but the metrics are still
    measured.
    """
    from recsys.lifelong import align_to_live

    model = Recommender.load(model_path)
    table = ItemVectorTable.load(vectors_path)
    return align_to_live(ctx.out, table.vectors, table.provenance, np.asarray(model.user_factors_, np.float32),
                         ds.user_map, ds.item_map, all_interactions(ds), similarity=getattr(model, "similarity", "dot"),
                         fixed_columns=1 if foldin_for(model).method == "bpr" else 0,
                         out_path=ctx.out / "vectors" / "aligned.npz", seed=ctx.seed, **cfg)


def exposure_step(ctx: RunContext, batch: dict[str, Any], previous_version: str, publish_run_id: str,
                  k: int = 10) -> dict[str, Any]:
    """New-item exposure of the batch top-K (items the previous bundle lacked), logged on the publish run."""
    from mlflow import MlflowClient

    from recsys.data.idmap import IdMap
    from recsys.lifelong import batch_exposure

    items = ctx.out / "bundles" / previous_version / "items.parquet"
    if not items.is_file():
        log.warning("exposure: the previous bundle %s is gone (pruned); nothing to compare with", previous_version)
        return {"metrics": {}}
    metrics = batch_exposure(batch["batch_path"], IdMap.load(items, name="item"), k=k)
    client = MlflowClient(ctx.tracking_uri)
    for key, v in metrics.items():
        client.log_metric(publish_run_id, key, v)
    log.info("new-item exposure of the batch top-K: %s", metrics)
    return {"metrics": metrics}


# -- export ------------------------------------------------------------------------------------


def export_step(ctx: RunContext, ds: Dataset, name: str, model_path: str, vectors_path: str, index_cfg: dict[str, Any],
                run_id: str | None, extra: dict[str, Any], align: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build and measure a new bundle (not yet published: promotion decides).

    ``align`` is the align step's output: its rotated vectors (and rotated fold-in Gram)
    replace the model's when a rotation was applied; its metrics join the bundle's.
    """
    model = Recommender.load(model_path)
    table = ItemVectorTable.load(vectors_path)
    seen = all_interactions(ds)
    source = np.where(table.provenance == "missing", "content", table.provenance)
    items, users, foldin = table.vectors, np.asarray(model.user_factors_, np.float32), foldin_for(model)
    if align and align.get("aligned_path"):
        from recsys.embeddings.align import rotate_foldin
        from recsys.lifelong import load_alignment

        items, users, rotation = load_alignment(align["aligned_path"])
        foldin = rotate_foldin(foldin, rotation)
    info = export_bundle(
        ctx.out, item_vectors=items, item_ids=ds.item_map, user_vectors=users,
        user_ids=ds.user_map, seen=seen, similarity=getattr(model, "similarity", "dot"),
        item_popularity=np.asarray(seen.getnnz(axis=0), np.float32), item_source=source,
        config=IndexConfig.from_dict(index_cfg), run_id=run_id, extra_manifest=extra,
        foldin=foldin)
    log.info("bundle %s: recall@%d %.4f at search_k %d, %.1f MB", info.version, info.recall_k, info.recall,
             info.search_k, info.index_bytes / 1e6)
    return {"bundle_path": str(info.path), "version": info.version, "recall": info.recall,
            "metrics": {**info.metrics(), **((align or {}).get("metrics") or {})}}



# -- promote -----------------------------------------------------------------------------------


def promote_step(ctx: RunContext, ds: Dataset, bundle: dict[str, Any], metrics_test: dict[str, float],
                 cfg: dict[str, Any], gate: Any, chosen: dict[str, Any] | None = None) -> dict[str, Any]:
    """Register the bundle as a new model version; move ``champion`` only if the gates pass.

    ``chosen`` (``{"model", "reason"}``: which model is published and why, e.g. the
    validation comparison of ``publish = "best"``) is tagged on the publish run.

    The decision is returned (and recorded by the workflow) rather than raised, so that a
    rerun with nothing changed reports the same refusal without registering again; the
    caller turns a refusal into exit code 3.
    """
    import mlflow

    from recsys.serving.mlflow_model import log_retriever_model
    from recsys.serving.versions import clean_leftovers, publish

    name = cfg.get("registered_model", "recsys")
    alias = cfg.get("alias", "champion")
    split = split_sha256(ds)
    client = promotion.registry_client(ctx.tracking_uri)
    clean_leftovers(ctx.out)  # a killed earlier run's temp bundles; its untagged version:
    promotion.clean_untagged_versions(client, name, owned=lambda b: (ctx.out / "bundles" / b).is_dir())
    with tracking.start_run(ctx.tracking_uri, ctx.experiment, run_name=f"publish-{bundle['version']}",
                            tags={"recsys.step": "promote", "recsys.bundle_version": bundle["version"]}) as run:
        tracking.log_metrics({**{f"test_{k}": v for k, v in metrics_test.items() if isinstance(v, (int, float))},
                              **bundle["metrics"]})
        if ctx.effective_toml:
            mlflow.log_text(ctx.effective_toml, "config/effective.toml")
        if chosen:
            mlflow.set_tags({"recsys.publish": chosen["model"], "recsys.publish_reason": str(chosen["reason"])[:4000]})
        info = log_retriever_model(bundle["bundle_path"], registered_model_name=name)
        version = str(info.registered_model_version)
        promotion.tag_version(client, name, version, metrics_test, split, bundle["version"])
        champ = promotion.champion_version(client, name, alias)
        champ_metrics = promotion.version_metrics(champ) if champ is not None else None
        same_split = champ is None or (champ.tags or {}).get(promotion.SPLIT_TAG) == split
        decision = promotion.decide(metrics_test, champ_metrics, bundle.get("recall"), gate, same_split=same_split)
        for line in decision.reasons:
            log.info("gate: %s", line)
        mlflow.set_tag("recsys.promoted", str(decision.passed).lower())
        if decision.passed:
            publish(ctx.out, bundle["version"])
            promotion.promote(client, name, version, alias)
    return {"promoted": decision.passed, "reasons": decision.reasons, "model_version": version,
            "registered_model": name, "previous_champion": None if champ is None else str(champ.version),
            "run_id": run.info.run_id, "bundle_version": bundle["version"]}

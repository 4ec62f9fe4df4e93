"""Export item/user vectors as a versioned, recall-gated Annoy bundle and publish it.

    recsys export --dataset DIR (--model FILE|DIR | --vectors FILE.npz) --out ROOT
                  [--config run.toml] [--n-trees 50] [--search-k -1] [--min-recall 0.95]
                  [--recall-k 100] [--seed 42] [--no-publish] [--keep 5]
                  [--tracking-uri URI] [--experiment recsys] [--register recsys --alias champion]

Inputs: the dataset directory (id maps, seen items, popularity) and either a saved
recsys model (``Recommender.save`` .npz, or a directory holding ``model.npz``) or an
``.npz`` of vectors: ``item_vectors`` (rows = item indices of the dataset), optional
``user_vectors``, ``item_source`` (``cf``/``blend``/``content`` per item) and
``similarity`` (``dot``/``cosine``). The bundle is built under ``ROOT/bundles/.tmp-*``,
measured (recall@K vs exact on real user vectors, ``search_k`` tuned upwards), renamed to
``ROOT/bundles/<version>`` and ``ROOT/latest`` switched atomically. Below the recall
threshold nothing is published and the exit code is 3. With MLflow on, recall, search_k,
build time and index size are logged, plus the manifest, and the retriever as a pyfunc
model (registered with ``--register``).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config import effective_config

HELP = "export vectors to a recall-gated Annoy bundle and publish it (ROOT/latest)"
log = logging.getLogger("recsys.export")

_INDEX_FLAGS = {"n_trees": "n_trees", "search_k": "search_k", "min_recall": "min_recall", "recall_k": "recall_k",
                "seed": "seed", "n_queries": "n_queries", "exact_max_items": "exact_max_items",
                "norm_ranges": "norm_ranges"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset directory (id maps, seen items)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", "--model-dir", dest="model", help="saved recsys FactorModel (.npz or dir with model.npz)")
    src.add_argument("--vectors", help=".npz with item_vectors [user_vectors item_source similarity]")
    parser.add_argument("--out", required=True, help="bundle root (ROOT/bundles/<version>, ROOT/latest)")
    parser.add_argument("--config", help="run config TOML, validated like `recsys run`'s; its [index] section (flags override)")
    parser.add_argument("--n-trees", type=int)
    parser.add_argument("--search-k", type=int)
    parser.add_argument("--min-recall", type=float)
    parser.add_argument("--recall-k", type=int)
    parser.add_argument("--n-queries", type=int)
    parser.add_argument("--exact-max-items", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--norm-ranges", type=int, help="dot models: forests by vector norm (1: a single forest)")
    parser.add_argument("--seen-splits", default="train,valid,test", help="splits whose items count as seen")
    parser.add_argument("--run-id", help="MLflow run id of the model (lineage, stored in the manifest)")
    parser.add_argument("--no-publish", action="store_true", help="build and measure, but leave latest alone")
    parser.add_argument("--keep", type=int, default=5, help="bundles kept after publishing (live+previous always)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    parser.add_argument("--experiment", default="recsys")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--register", help="register the retriever model under this name")
    parser.add_argument("--alias", help="registry alias for the new version (e.g. champion)")


def index_config(args: argparse.Namespace) -> Any:
    """``[index]`` of the packaged defaults and ``--config`` (typed, validated), overridden by the given flags."""
    from recsys.serving.bundle import IndexConfig

    section: dict[str, Any] = effective_config(argparse.Namespace(config=args.config)).section("index")
    for flag, key in _INDEX_FLAGS.items():
        if getattr(args, flag, None) is not None:
            section[key] = getattr(args, flag)
    return IndexConfig.from_dict(section)


def load_vectors(args: argparse.Namespace) -> dict[str, Any]:
    """Item/user vectors, similarity, item sources and fold-in spec from the inputs."""
    from recsys.errors import InputError
    from recsys.io import load_npz

    if args.vectors:
        z = load_npz(args.vectors)
        if "item_vectors" not in z:
            raise InputError(f"{args.vectors} has no item_vectors array (has {sorted(z)})")
        return {"item_vectors": z["item_vectors"], "user_vectors": z.get("user_vectors"),
                "item_source": z.get("item_source"), "similarity": str(z.get("similarity", "dot")),
                "foldin": None, "model_class": None}
    return vectors_from_model(args.model)


def vectors_from_model(path: str | os.PathLike) -> dict[str, Any]:
    """Load a saved FactorModel and describe how to fold in new users for it."""
    import contextlib
    import importlib

    from recsys.errors import InputError
    from recsys.models.base import Recommender

    for mod in ("recsys.models.mf", "recsys.models.als", "recsys.models.bpr", "recsys.models.two_tower"):
        with contextlib.suppress(ImportError):  # fill the class registry
            importlib.import_module(mod)
    p = Path(path)
    model = Recommender.load(p / "model.npz" if p.is_dir() else p)
    if not hasattr(model, "item_factors_"):
        raise InputError(f"{path} holds a {type(model).__name__}, which exports no vectors; export a FactorModel")
    from recsys.serving.bundle import foldin_for

    foldin = foldin_for(model)
    return {"item_vectors": model.item_factors_, "user_vectors": getattr(model, "user_factors_", None),
            "item_source": None, "similarity": getattr(model, "similarity", "dot"), "foldin": foldin,
            "model_class": type(model).__name__}


def main(args: argparse.Namespace) -> int:
    import contextlib

    from recsys.data.dataset import Dataset
    from recsys.serving import versions
    from recsys.serving.bundle import export_bundle, publish

    cfg = index_config(args)
    ds = Dataset.load(args.dataset)
    vec = load_vectors(args)
    splits = [s for s in args.seen_splits.split(",") if s and s in ds.splits]
    seen = ds.matrix(*splits, value=None) if splits else None
    users = vec["user_vectors"]
    if users is not None and len(users) != ds.n_users:
        log.warning("%d user vectors for %d dataset users: users not exported", len(users), ds.n_users)
        users = None
    from recsys.io import sha256_file

    extra = {"dataset": str(Path(args.dataset).resolve()),
             "dataset_manifest_sha256": sha256_file(Path(args.dataset) / "manifest.json"),
             "model_class": vec["model_class"], "seen_splits": splits}

    run_ctx: Any = contextlib.nullcontext(None)
    if not args.no_mlflow:
        from pipelines.tracking_uri import resolve_tracking_uri
        from recsys import tracking

        run_ctx = tracking.start_run(resolve_tracking_uri(args.tracking_uri), args.experiment, run_name="export", tags={"job": "export"})
    with run_ctx as run:
        run_id = args.run_id or (run.info.run_id if run is not None else None)
        info = export_bundle(
            args.out, item_vectors=vec["item_vectors"], item_ids=ds.item_map,
            user_vectors=users, user_ids=ds.user_map if users is not None else None,
            seen=seen if users is not None else None, similarity=vec["similarity"],
            item_popularity=ds.interaction_counts(*splits).astype(np.float32) if splits else None,
            item_source=vec["item_source"], config=cfg, run_id=run_id, extra_manifest=extra, foldin=vec["foldin"],
        )
        if not args.no_publish:
            publish(args.out, info.version)
            versions.prune(args.out, keep=args.keep)
        if run is not None:
            from recsys import tracking
            from recsys.serving.mlflow_model import log_retriever_model

            tracking.log_config({"index": info.manifest["config"]})
            tracking.log_metrics(info.metrics())
            tracking.log_json(info.manifest, "bundle/manifest.json")
            log_retriever_model(info.path, registered_model_name=args.register, alias=args.alias)
    log.info("bundle %s at %s: recall@%d %.4f, search_k %d%s", info.version, info.path, info.recall_k, info.recall,
             info.search_k, "" if args.no_publish else " (published)")
    print(info.path)
    return 0

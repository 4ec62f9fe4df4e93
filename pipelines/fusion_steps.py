"""The fusion steps of ``recsys run``: weights chosen on validation, tested once, published.

Kept apart from :mod:`pipelines.steps` (one concept per module): the fusion reads the train
steps' outputs (their results, kept train-only models and published models) and produces
a model the later steps (blend, export, gate, promote) treat like any family.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipelines.steps import RunContext, eval_samples, jsonable, refit_step
from recsys import tracking
from recsys.data.dataset import Dataset
from recsys.errors import ConfigError
from recsys.io import read_json, write_json
from recsys.models.base import Recommender
from recsys.models.registry import get_family
from recsys.training import all_interactions

log = logging.getLogger(__name__)


def member_on_train(ds: Dataset, name: str, result: dict[str, Any], trained_model_path: str) -> Recommender:
    """Family ``name`` as validation selected it, fitted on ``train`` only.

    Why: fusion weights are scored on ``valid``, so the members must not have seen it, and
    the train step's published model is refitted on train + valid. When the train step kept
    the selected model fitted on train only (``model_on_train_path``: the best trial's
    model, the two-tower's selection model) it is loaded as it is; otherwise: ALS,
    BPR (families that refit): the selected parameters (best iteration, same seed) fitted
    on train, i.e. the selecting trial again (seconds); the two-tower: the trained model as
    is when it was not refitted (``refit_on_valid = false``), else its selection
    configuration (one member, the selected epoch count) trained again on train; item2vec:
    its selected parameters on train's sequences.
    """
    fam, params, train = get_family(name), result["params"], ds.matrix("train")
    kept = result.get("model_on_train_path")
    if kept and Path(kept).exists():  # the train step kept the selected train-only model: nothing to fit
        log.info("fusion: %s as selected on valid, fitted on train only (%s)", name, kept)
        return Recommender.load(kept)
    if name == "two-tower":
        if not params.get("refit_on_valid", True):
            return Recommender.load(trained_model_path)
        from recsys.models.two_tower import TwoTower
        from recsys.training_two_tower import item_features_for

        model_params, proto = fam.split_params(params)
        epochs = int(result.get("metrics_valid", {}).get("best_epoch") or model_params["epochs"])
        cfg = {**model_params, "ensemble": 1, "epochs": epochs, "patience": None}
        log.info("fusion: two-tower selection configuration (%d epochs, one member) on train only", epochs)
        return TwoTower(**cfg).fit(train, pairs=ds.split("train"), item_features=item_features_for(ds, proto["item_features"]))
    if name == "item2vec":
        from recsys.models.item2vec import ItemSequences

        return fam.make(params).fit(train, sequences=ItemSequences.from_frame(ds.split("train"), ds.n_users))
    if fam.refit_on_all:
        return fam.make(params).fit(train)
    raise ConfigError(f"[models.fusion] members: {name!r} cannot be refitted on the train split for the fusion weights")


def fusion_step(ctx: RunContext, ds: Dataset, members: dict[str, dict[str, Any]], step: float, metric: str) -> dict[str, Any]:
    """Fusion weights chosen on ``valid`` (train-only members), tested once like any model, tracked.

    ``members`` maps each fused family to its train step's outputs. The weights are chosen
    by :func:`recsys.models.fusion.select_weights` on the validation split (its user sample
    when ``[evaluation] valid_users`` is set) with :func:`member_on_train` models; the test
    metrics are those of the members the train steps tested (fitted on train + valid) fused
    with those weights, train + valid items excluded. The test split is read only there.
    """
    from recsys.evaluation import evaluate
    from recsys.models.fusion import fuse, select_weights
    from recsys.training import KS, evaluation_users

    if "valid" not in ds.splits or ds.splits["valid"].height == 0:
        raise ConfigError('[models] publish = "fusion"/"best" chooses fusion weights on the valid split, which is '
                          "empty; rebuild the dataset with valid_frac > 0 or publish one family")
    names = list(members)
    results = {n: read_json(o["result_path"]) for n, o in members.items()}
    train, valid = ds.matrix("train"), ds.matrix("valid")
    sample = eval_samples(ctx)
    v_users = evaluation_users(valid, sample["valid_users"], sample["sample_seed"], "valid")
    on_train = [member_on_train(ds, n, results[n], members[n]["model_path"]) for n in names]
    selection, grid = select_weights(on_train, train, valid, names=names, metric=metric, step=step, users=v_users)
    weights = selection.weights
    m_valid = {metric: grid[tuple(weights)]}
    seen, test = ds.matrix("train", "valid"), ds.matrix("test")
    tested = fuse([Recommender.load(members[n]["model_path"]) for n in names], weights, names, user_items=seen)
    m_test = evaluate(tested, seen, test, ks=KS, users=evaluation_users(test, sample["test_users"], sample["sample_seed"], "test"))
    params = {"members": names, "weights": weights, "scales_valid": selection.scales, "step": step, "metric": metric,
              "weights_chosen_on": "valid"}
    with tracking.start_run(ctx.tracking_uri, ctx.experiment, run_name="train-fusion",
                            tags={"recsys.step": "fusion", "recsys.model": "fusion"}) as run:
        tracking.log_config({**params, "member_run_ids": [results[n]["run_id"] for n in names]})
        tracking.log_metrics(m_valid, prefix="valid_")
        tracking.log_metrics(m_test, prefix="test_")
    model_dir = ctx.out / "models" / "fusion"
    selection.save(model_dir / "model.npz")  # train-only: the cold-start mapper is chosen on it (blend step)
    write_json(model_dir / "result.json", {"model": "fusion", "params": jsonable(params), "run_id": run.info.run_id,
                                           "metrics_test": jsonable(m_test), "metrics_valid": jsonable(m_valid),
                                           "valid_grid": {",".join(map(str, w)): v for w, v in grid.items()}})
    log.info("fusion %s: weights %s chosen on validation (%s %.4f); test %s %.4f", names, weights, metric,
             m_valid[metric], metric, m_test.get(metric, float("nan")))
    return {"result_path": str(model_dir / "result.json"), "model_path": str(model_dir / "model.npz"),
            "run_id": run.info.run_id}


def fusion_refit_step(ctx: RunContext, ds: Dataset, fusion: dict[str, Any], members: dict[str, dict[str, Any]],
                      refit: bool) -> dict[str, Any]:
    """The published fusion: each member's published model (:func:`refit_step`) fused with the chosen weights.

    The weights are those chosen on validation; each member's score scale is measured again
    on its published model (a scale is a property of one model's scores, not a choice).
    """
    from recsys.models.fusion import fuse

    names = list(fusion["params"]["members"])
    paths = [refit_step(ctx, ds, n, read_json(members[n]["result_path"])["params"], refit,
                        members[n]["model_path"])["model_path"] for n in names]
    model = fuse([Recommender.load(p) for p in paths], fusion["params"]["weights"], names, user_items=all_interactions(ds))
    out = ctx.out / "models" / "fusion-published" / "model.npz"
    model.save(out)
    return {"model_path": str(out), "refit": refit, "members": dict(zip(names, paths))}

"""Orchestration of ``recsys run``: step order, fingerprints, run record, summary table.

The chain, each step skipped when its fingerprint (inputs + config + upstream
fingerprints) is unchanged and its outputs still exist::

    dataset -> baseline-<name>... -> train-<name>... [-> fusion] -> content -> refit -> blend -> align -> export -> promote -> batch

A refused promotion is recorded (so an unchanged rerun says "refused" again without
registering another version) and turned into exit code 3. ``batch`` (top-K of every
user, ``[batch]``) runs only after a promotion: the lists delivered are the champion's.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pipelines import fusion_steps, recommend_batch, steps
from recsys.data.dataset import Dataset
from recsys.config import RunConfig
from recsys.errors import QualityGateError
from recsys.models.fusion import choose_published
from recsys.models.registry import get_family
from recsys.io import sha256_file, write_json, write_text
from recsys.workflow import StepResult, Workflow, fingerprint_files

log = logging.getLogger("recsys.run")

SUMMARY_METRICS = ("ndcg@10", "recall@20", "precision@10", "map@10", "mrr", "coverage@10")


class Runner:
    """Runs the chain once in ``out`` (the caller holds the directory lock)."""

    def __init__(self, out: Path, cfg: RunConfig, build_config: Any, tracking_uri: str, effective_toml: str = "",
                 force: bool = False, show_progress: bool = True, input_files: list[str] | None = None,
                 build_config_dict: Any = None, retune: bool = False) -> None:
        self.out = out
        self.cfg = cfg
        self.build_config = build_config
        self.wf = Workflow(out / "state", force=force)
        self.ctx = steps.RunContext(out=out, tracking_uri=tracking_uri, experiment=cfg.tracking.experiment,
                                    seed=int(cfg.seed), show_progress=show_progress, effective_toml=effective_toml,
                                    retune=retune, evaluation=cfg.section("evaluation"))
        self.input_files = input_files or []
        self.build_config_dict = build_config_dict
        self.metrics: dict[str, dict[str, float]] = {}
        self.record: dict[str, Any] = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "out": str(out),
                                       "tracking_uri": tracking_uri, "status": "running"}

    # -- helpers ---------------------------------------------------------------------------

    def _models_cfg(self) -> tuple[list[str], list[str], str]:
        m = self.cfg.models  # validated: families registered, publish a trained vector model, "fusion" or "best"
        return list(m.baselines), list(m.train), str(m.publish)

    def _params(self, name: str) -> dict[str, Any]:
        return self.cfg.models.params(name)

    def _tune(self, name: str) -> dict[str, Any] | None:
        return self.cfg.models.tune(name)

    def _step(self, name: str, inputs: dict[str, Any], fn: Any) -> StepResult:
        res = self.wf.run(name, inputs, fn)
        self.record.setdefault("steps", []).append({"name": name, "ran": res.ran, "seconds": round(res.seconds, 3)})
        self._write_record()
        return res

    def _write_record(self) -> None:
        write_json(self.out / "state" / "run_record.json", self.record)

    # -- the chain -------------------------------------------------------------------------

    def run(self) -> int:
        try:
            code = self._run()
        except QualityGateError as e:
            self.record.update(status="refused", reason=str(e))
            self._write_record()
            raise
        except BaseException as e:
            self.record.update(status="failed", reason=f"{type(e).__name__}: {e}")
            self._write_record()
            raise
        self.record["status"] = "ok" if code == 0 else "refused"
        self.record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._write_record()
        return code

    def _run(self) -> int:
        baselines, train, publish = self._models_cfg()
        ctx = self.ctx
        if self.cfg.batch.enabled:  # a missing [batch] id list exits 2 now, not after training
            recommend_batch.check_lists(self.cfg.section("batch"))
        if ctx.effective_toml:
            write_text(self.out / "state" / "effective_config.toml", ctx.effective_toml)
        ds_res = self._step("dataset", {"files": fingerprint_files(self.input_files), "config": self.build_config_dict},
                            lambda: steps.build_dataset_step(ctx, self.build_config, self.cfg.engine))
        ds = Dataset.load(ctx.dataset_dir)
        ds_fp = ds_res.fingerprint

        trained: dict[str, StepResult] = {}
        for name in baselines + train:
            params, tune = self._params(name), self._tune(name)
            inputs = {"dataset": ds_fp, "params": params, "tune": tune, "seed": ctx.seed, "evaluation": ctx.evaluation}
            if ctx.retune and tune:  # --retune: this run's search, never an up-to-date skip
                inputs["retune"] = self.record["started_at"]
            res = self._step(f"train-{name}", inputs, lambda n=name, p=params, t=tune: steps.train_step(ctx, ds, n, p, t))
            trained[name] = res
            self.metrics[name] = steps.load_result(res.outputs)["metrics_test"]
        self._fusion(ds, ds_fp, publish, trained)
        publish, publish_reason = self._choose(train, publish, trained)
        self.record["publish"] = {"model": publish, "reason": publish_reason}
        published = steps.load_result(trained[publish].outputs)

        content_cfg = self.cfg.section("content")
        content_res = None
        if self.cfg.content.enabled:
            items_fp = sha256_file(ctx.dataset_dir / "items.parquet")  # content only, not the path
            content_res = self._step("content", {"items": items_fp, "config": content_cfg},
                                     lambda: steps.content_step(ctx, ds, content_cfg))

        refit = bool(self.cfg.refit.enabled)
        if publish == "fusion":  # the members' published models, fused with the weights chosen on validation
            members = {n: trained[n].outputs for n in published["params"]["members"]}
            refit_res = self._step("refit", {"train": trained[publish].fingerprint, "refit": refit,
                                             "members": {n: trained[n].fingerprint for n in members}},
                                   lambda: fusion_steps.fusion_refit_step(ctx, ds, published, members, refit))
        else:
            refit_res = self._step("refit", {"train": trained[publish].fingerprint, "refit": refit,
                                             "params": published["params"]},
                                   lambda: steps.refit_step(ctx, ds, publish, published["params"], refit,
                                                            trained[publish].outputs["model_path"]))
        blend_res = self._step("blend", {"model": refit_res.fingerprint, "content": content_res and content_res.fingerprint,
                                         "config": content_cfg},
                               lambda: steps.blend_step(ctx, ds, refit_res.outputs["model_path"],
                                                        content_res and content_res.outputs["content_path"], content_cfg,
                                                        selection_model_path=trained[publish].outputs["model_path"]))
        index_cfg = self.cfg.section("index")
        extra = {"dataset_manifest_sha256": ds_res.outputs.get("manifest_sha256"), "model": publish,
                 "publish_reason": publish_reason,
                 "params": published["params"], "refit_on_all": refit, "train_run_id": published["run_id"],
                 "vector_sources": blend_res.outputs.get("sources"),
                 "cold_start_mapper": blend_res.outputs.get("mapper")}
        # rotate onto the live bundle (issue 20); keyed on the blend only, so an unchanged rerun stays a no-op
        align_cfg = self.cfg.section("align")
        align_res = self._step("align", {"blend": blend_res.fingerprint, "config": align_cfg},
                               lambda: steps.align_step(ctx, ds, refit_res.outputs["model_path"],
                                                        blend_res.outputs["vectors_path"], align_cfg))
        extra["align"] = align_res.outputs.get("record")
        export_res = self._step("export", {"blend": blend_res.fingerprint, "align": align_res.fingerprint, "index": index_cfg},
                                lambda: steps.export_step(ctx, ds, publish, refit_res.outputs["model_path"],
                                                          blend_res.outputs["vectors_path"], index_cfg,
                                                          published["run_id"], extra, align=align_res.outputs))
        gate = self._gate_config()
        promo_cfg = self.cfg.section("promotion")
        promo = self._step("promote", {"export": export_res.fingerprint, "promotion": promo_cfg,
                                       "metrics": published["metrics_test"], "publish": self.record["publish"]},
                           lambda: steps.promote_step(ctx, ds, export_res.outputs, published["metrics_test"], promo_cfg, gate,
                                                      chosen=self.record["publish"]))
        if promo.outputs["promoted"] and self.cfg.batch.enabled:
            batch_cfg = self.cfg.section("batch")
            # keyed on the bundle, not the promotion: registering the same bundle again changes no list
            batch = self._step("batch", {"export": export_res.fingerprint, **recommend_batch.step_inputs(batch_cfg)},
                               lambda: recommend_batch.batch_step(ctx, export_res.outputs, promo.outputs, batch_cfg))
            self.record["batch"] = batch.outputs
            prev = (align_res.outputs.get("record") or {}).get("previous_version")
            if prev:  # issue 20: share of new items in the whole batch top-K, on the publish run
                self._step("exposure", {"batch": batch.fingerprint, "previous": prev},
                           lambda: steps.exposure_step(ctx, batch.outputs, prev, promo.outputs["run_id"],
                                                       k=int(self.cfg.align.churn_k)))
        self.record.update(bundle_version=export_res.outputs["version"], promotion=promo.outputs, metrics=self.metrics)
        self._write_record()
        self._print_summary(publish, export_res.outputs, promo.outputs)
        if not promo.outputs["promoted"]:
            raise QualityGateError("the challenger did not pass the gates; the champion keeps serving: "
                                   + "; ".join(r for r in promo.outputs["reasons"] if r.startswith("FAIL")))
        return 0

    def _fusion(self, ds: Dataset, ds_fp: str, publish: str, trained: dict[str, StepResult]) -> None:
        """The fusion step, for ``publish = "fusion"`` or as a ``"best"`` candidate (two members or more).

        The fusion joins ``trained`` and the held-out table under the name ``"fusion"``.
        """
        m = self.cfg.models
        members, metric = m.fusion_members(), self.cfg.promotion.metric
        if publish != "fusion" and not (publish == "best" and len(members) >= 2):
            return
        inputs = {"members": {n: trained[n].fingerprint for n in members}, "dataset": ds_fp, "step": m.fusion.step,
                  "metric": metric, "seed": self.ctx.seed, "evaluation": self.ctx.evaluation}
        trained["fusion"] = self._step("fusion", inputs, lambda: fusion_steps.fusion_step(
            self.ctx, ds, {n: trained[n].outputs for n in members}, m.fusion.step, metric))
        self.metrics["fusion"] = steps.load_result(trained["fusion"].outputs)["metrics_test"]

    def _choose(self, train: list[str], publish: str, trained: dict[str, StepResult]) -> tuple[str, str]:
        """The published model's name and why.

        ``"best"`` compares the trained vector families and the fusion (when it ran) on their
        **validation** metric (``[promotion] metric``); the test split is never consulted.
        Ties go to the single family listed first, then to the fusion.
        """
        if publish != "best":
            return publish, f"configured ([models] publish = {publish!r})"
        candidates = [n for n in train if get_family(n).vectors] + (["fusion"] if "fusion" in trained else [])
        choice, reason = choose_published({n: steps.load_result(trained[n].outputs)["metrics_valid"] for n in candidates},
                                          self.cfg.promotion.metric)
        log.info("publishing %s: %s", choice, reason)
        return choice, reason

    def _gate_config(self) -> Any:
        from recsys.promotion import GateConfig

        p = self.cfg.promotion
        return GateConfig(metric=p.metric, tolerance=float(p.tolerance), min_recall=float(self.cfg.index.min_recall))

    # -- report ----------------------------------------------------------------------------

    def _print_summary(self, publish: str, bundle: dict[str, Any], promo: dict[str, Any]) -> None:
        from recsys.evaluation import format_table

        lines = ["", "Held-out evaluation (test split, train items excluded):",
                 format_table(self.metrics, metrics=list(SUMMARY_METRICS)), "", "Steps:"]
        for s in self.record.get("steps", []):
            lines.append(f"  {s['name']:<22} {'ran' if s['ran'] else 'up to date':<11} {s['seconds']:8.1f} s")
        lines += ["", f"Published model: {publish}; bundle {bundle['version']} "
                      f"(index recall {bundle['recall']:.4f}); registered {promo['registered_model']} "
                      f"v{promo['model_version']}: {'PROMOTED to champion' if promo['promoted'] else 'REFUSED'}"]
        lines += [f"  {r}" for r in promo["reasons"]]
        if self.record.get("batch"):
            b = self.record["batch"]
            lines.append(f"Batch top-K: {b['rows']} rows for {b['n_users']} users -> {b['batch_path']}")
        print("\n".join(lines), flush=True)

"""Budgeted auto-tuning (recsys.autotune) and its cache per data lineage (recsys.tuning_cache).

The data is a small synthetic log (2,000 events) built by the real build-dataset path, and
ALS is tiny, so that every search here takes seconds.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipelines import steps
from recsys import autotune, tuning
from recsys.config import validate_config
from recsys.data.build import build_dataset
from recsys.data.config import BuildConfig, ColumnMapping, WeightConfig
from recsys.data.dataset import Dataset
from recsys.data.readers import InputSpec
from recsys.data.splits import SplitConfig
from recsys.data.synthetic import SyntheticConfig, generate_events
from recsys.errors import ConfigError
from recsys.models.registry import get_family
from recsys.tuning_cache import TuningCache, plan_tuning
from tests.mf_fixtures import fresh_store

ROOT = Path(__file__).resolve().parents[1]
BASE = {"device": "cpu", "num_threads": 1, "factors": 8, "iterations": 4, "random_state": 0}
SPACE = {"factors": {"low": 4, "high": 16}, "regularization": {"low": 0.01, "high": 30.0, "log": True}, "iterations": 4}
TUNE = {**SPACE, "max_trials": 4, "seed": 7}


def _log(path: Path, n_events: int = 2000, seed: int = 0) -> Path:
    df = generate_events(SyntheticConfig(n_events=n_events, n_users=120, n_items=80, n_clusters=4, ratings=True,
                                         event_types=False, seed=seed))
    df.write_csv(path)
    return path


def _build(tmp: Path, name: str, weighting: str = "confidence", n_events: int = 2000) -> Dataset:
    events = _log(tmp / f"{name}.csv", n_events)
    cfg = BuildConfig(InputSpec(str(events)), ColumnMapping("user_id", "item_id", weight="rating", time="timestamp"),
                      weights=WeightConfig(weighting=weighting, positive_threshold=3.0),
                      split=SplitConfig(test_frac=0.2, valid_frac=0.15, cold_item_frac=0.0))
    return build_dataset(cfg, tmp / name)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return _build(tmp_path_factory.mktemp("autotune"), "ds")


def _select(ds: Dataset, **kw: Any) -> tuning.SelectionResult:
    return tuning.select_and_fit("als", ds.matrix("train"), ds.matrix("valid"), ds.matrix("test"),
                                 kw.pop("space", SPACE), base_params=BASE, eval_every=2, show_progress=False, **kw)


# -- the search ----------------------------------------------------------------------------------
def test_seeded_study_gives_the_same_trials_and_best_params(data: Dataset) -> None:
    a, b = _select(data, max_trials=5, seed=3), _select(data, max_trials=5, seed=3)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert a.params == b.params and a.best.score == b.best.score
    c = _select(data, max_trials=5, seed=4)
    assert [t.params for t in c.trials][1:] != [t.params for t in a.trials][1:]  # the seed matters


def test_the_configured_parameters_are_the_first_trial(data: Dataset) -> None:
    res = _select(data, max_trials=3, seed=0)
    assert res.trials[0].params["factors"] == BASE["factors"]
    assert res.best.score >= res.trials[0].score  # so the search never selects worse on validation


def test_budget_stops_the_study(data: Dataset) -> None:
    t0 = time.perf_counter()
    res = _select(data, budget_minutes=0.02, max_trials=500, seed=0)  # 1.2 s
    assert 1 <= len(res.trials) < 500
    assert time.perf_counter() - t0 < 30


def test_pruned_trials_are_scored_at_their_best_point_and_marked(data: Dataset) -> None:
    space = {**SPACE, "iterations": 8, "regularization": {"low": 0.01, "high": 5000.0, "log": True}}
    res = _select(data, space=space, max_trials=16, seed=1)
    pruned = [t for t in res.trials if t.state == "pruned"]
    assert pruned, "median pruning never stopped a trial"
    for t in pruned:
        assert len(t.history) < 4  # stopped before the last evaluation (iterations 2, 4, 6, 8)
        assert t.score == max(h["ndcg@10"] for h in t.history)
    assert res.best.state != "pruned"


def test_settings_only_search_uses_the_family_default_space() -> None:
    searched, fixed = autotune.parse_space(autotune.default_space(get_family("als")), get_family("als"))
    assert {"factors", "regularization", "alpha", "weighting"} <= set(searched)
    assert searched["factors"].integer and not searched["regularization"].integer and searched["alpha"].log
    assert autotune.resolve_method("auto", {}, budget_minutes=5) == "tpe"
    assert autotune.resolve_method("auto", {"factors": [8, 16]}, None) == "grid"  # older configs keep the grid


@pytest.mark.parametrize(("tune", "message"), [
    ({"budget_minutes": -1}, "budget_minutes = -1: must be a positive number"),
    ({"budget_minutes": "soon"}, "budget_minutes = 'soon'"),
    ({"max_trials": 0}, "max_trials = 0"),
    ({"factors": {"low": 64}}, "a range is"),
    ({"factors": {"low": 64, "high": 32}}, "low .64. must be below high"),
    ({"regularization": {"low": 0, "high": 1, "log": True}}, "log range needs low > 0"),
    ({"factorz": {"low": 8, "high": 16}}, "did you mean 'factors'"),
    ({"method": "bayes"}, "method = 'bayes'"),
    ({"min_train_interactions": -5}, "min_train_interactions = -5"),
])
def test_bad_tune_tables_are_refused_naming_the_key(tune: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config({"models": {"als": {"tune": tune}}})


def test_ranges_and_settings_validate() -> None:
    cfg = validate_config({"models": {"als": {"tune": {"budget_minutes": 2.5, "max_trials": 30,
                                                       "factors": {"low": 32, "high": 512, "log": True}}}}})
    assert cfg.models.tune("als")["budget_minutes"] == 2.5


def test_bad_budget_on_the_command_line_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--out", str(tmp_path / "out"),
                           "--events", str(_log(tmp_path / "e.csv", 50)), "--user-col", "user_id",
                           "--item-col", "item_id", "--set", "models.als.tune.budget_minutes=-1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "budget_minutes" in proc.stderr and not (tmp_path / "out" / "dataset").exists()


# -- the cache -------------------------------------------------------------------------------------
def _count_trials(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per objective call of every search (fits of fixed parameters are not searches)."""
    calls: list[int] = []
    real = autotune.run_study

    def counting(searched: Any, run_trial: Any, **kw: Any) -> Any:
        def counted(*a: Any) -> Any:
            calls.append(1)
            return run_trial(*a)

        return real(searched, counted, **kw)

    monkeypatch.setattr(autotune, "run_study", counting)
    return calls


def _ctx(tmp: Path, uri: str, retune: bool = False) -> steps.RunContext:
    return steps.RunContext(out=tmp / "out", tracking_uri=uri, experiment="autotune-test", seed=5,
                            show_progress=False, retune=retune)


def test_cache_is_reused_on_unchanged_data_and_refreshed_by_retune(data: Dataset, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_trials(monkeypatch)
    uri = fresh_store(tmp_path)
    first = steps.train_step(_ctx(tmp_path, uri), data, "als", BASE, TUNE)
    result = steps.load_result(first)
    assert len(calls) == 4 and result["tuning"]["status"] == "search" and result["tuning"]["seed"] == 7
    cache = TuningCache(tmp_path / "out" / "state" / steps.TUNING_CACHE)
    entry = cache.get(result["tuning"]["key"])
    assert entry is not None and entry["params"] == result["params"] and entry["n_trials"] == 4

    again = steps.load_result(steps.train_step(_ctx(tmp_path, uri), Dataset.load(data.path), "als", BASE, TUNE))
    assert len(calls) == 4, "unchanged data must not be tuned again"
    assert again["tuning"]["status"] == "hit" and again["params"] == result["params"]

    retuned = steps.load_result(steps.train_step(_ctx(tmp_path, uri, retune=True), data, "als", BASE, TUNE))
    assert len(calls) == 8 and retuned["tuning"]["status"] == "search"
    assert len(cache) == 1  # the same lineage, overwritten


def test_schema_change_or_size_jump_means_a_new_search(data: Dataset, tmp_path: Path) -> None:
    fam = get_family("als")
    cache = TuningCache(tmp_path / "cache.json")
    plan = plan_tuning(data, fam, BASE, TUNE, cache, seed=1)
    cache.put(plan.key, {**BASE, "factors": 12}, plan.record, score=0.1, n_trials=4)
    assert plan_tuning(data, fam, BASE, TUNE, cache, seed=1).status == "hit"
    assert plan_tuning(data, fam, BASE, TUNE, cache, seed=1).params["factors"] == 12
    binary = _build(tmp_path, "binary", weighting="threshold")  # same log, another weighting
    assert plan_tuning(binary, fam, BASE, TUNE, cache, seed=1).status == "search"
    bigger = _build(tmp_path, "bigger", n_events=8000)  # 4x the interactions: another size bucket
    assert plan_tuning(bigger, fam, BASE, TUNE, cache, seed=1).status == "search"
    assert plan_tuning(data, fam, {**BASE, "alpha": 3.0}, TUNE, cache, seed=1).status == "search"
    assert plan_tuning(data, fam, BASE, {**TUNE, "max_trials": 9}, cache, seed=1).status == "search"
    assert plan_tuning(data, fam, BASE, {**TUNE, "enabled": False}, cache).status == "off"
    small = plan_tuning(data, fam, BASE, {**TUNE, "min_train_interactions": 10**6}, cache)
    assert small.status == "off" and "min_train_interactions" in small.reason and small.settings == {}


def test_damaged_cache_file_is_a_miss_not_a_crash(data: Dataset, tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    path.write_text("{not json")
    assert plan_tuning(data, get_family("als"), BASE, TUNE, TuningCache(path)).status == "search"


# -- tracking --------------------------------------------------------------------------------------
def test_trials_are_child_runs_with_importance_and_history_plots(data: Dataset, tmp_path: Path) -> None:
    import mlflow

    from recsys import tracking

    uri = fresh_store(tmp_path)
    with tracking.start_run(uri, "autotune-plots", run_name="parent") as parent:
        res = _select(data, max_trials=6, seed=0, callbacks=tracking.TrackingCallbacks("als"))
    client = mlflow.MlflowClient(uri)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == len(res.trials) == 6
    assert {r.data.tags["trial_state"] for r in children} <= {"complete", "pruned", "stopped"}
    files = {f.path for f in client.list_artifacts(parent.info.run_id, "tuning")}
    assert {"tuning/trials.json", "tuning/optimization_history.png", "tuning/param_importance.json"} <= files
    assert "tuning/param_importances.png" in files


def test_retune_flag_reaches_the_train_step_context(tmp_path: Path) -> None:
    import argparse

    from pipelines import run as run_cmd
    from pipelines.runner import Runner

    parser = argparse.ArgumentParser()
    run_cmd.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path), "--retune"])
    assert args.retune and not parser.parse_args(["--out", str(tmp_path)]).retune
    runner = Runner(tmp_path, validate_config({}), None, "sqlite:///unused.db", retune=args.retune)
    assert runner.ctx.retune is True

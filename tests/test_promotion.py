"""The promotion gates as a pure function (the MLflow side is covered by test_run_pipeline)."""

from __future__ import annotations

import pytest

from recsys.errors import ConfigError, QualityGateError
from recsys.promotion import GateConfig, decide

GATE = GateConfig(metric="ndcg@10", tolerance=0.02, min_recall=0.95)


def test_first_model_passes_on_recall_alone():
    d = decide({"ndcg@10": 0.1}, None, recall=0.97, config=GATE)
    assert d.passed and d.champion is None
    d.raise_if_refused()


def test_challenger_within_tolerance_of_champion_passes():
    d = decide({"ndcg@10": 0.2941}, {"ndcg@10": 0.3}, recall=0.99, config=GATE)  # floor 0.294
    assert d.passed and d.challenger == pytest.approx(0.2941) and d.champion == pytest.approx(0.3)


def test_challenger_worse_than_tolerance_is_refused_with_reason():
    d = decide({"ndcg@10": 0.2939}, {"ndcg@10": 0.3}, recall=0.99, config=GATE)
    assert not d.passed
    assert any(r.startswith("FAIL ndcg@10=0.2939 < 0.2940") for r in d.reasons)
    with pytest.raises(QualityGateError, match="ndcg@10"):
        d.raise_if_refused()


@pytest.mark.parametrize("recall", [0.949, None])
def test_low_or_unmeasured_recall_is_refused(recall):
    d = decide({"ndcg@10": 0.5}, {"ndcg@10": 0.3}, recall=recall, config=GATE)
    assert not d.passed and any("recall" in r and r.startswith("FAIL") for r in d.reasons)


def test_different_test_split_is_named_in_the_reason():
    d = decide({"ndcg@10": 0.31}, {"ndcg@10": 0.3}, recall=0.99, config=GATE, same_split=False)
    assert d.passed and "different test split" in d.reasons[0]


def test_missing_gate_metric_and_bad_tolerance_are_config_errors():
    with pytest.raises(ConfigError, match="recall@20"):
        decide({"ndcg@10": 0.3}, None, 0.99, GateConfig(metric="recall@20"))
    with pytest.raises(ConfigError, match="tolerance"):
        GateConfig(tolerance=1.5)

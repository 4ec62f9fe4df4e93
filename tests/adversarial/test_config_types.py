"""Defect 7 of the adversarial pass: wrong-typed config values exit 2 before any work.

Before the typed config these exited 1 with a traceback, often after the whole pipeline,
leaving an unpublished bundle behind (and exit 1 tells a scheduler to retry).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.cli import main

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "default.toml")


@pytest.mark.parametrize("override", [
    'index.min_recall="high"',
    'promotion.tolerance="abc"',
    "seed=abc",
    "models.als=3",
    'promotion.registered_model="team/recs"',
    'tracking.experiment=".."',
    'content.txt_cols=["title"]',
    "index.n_trees=1.5",
])
def test_wrong_typed_or_misspelt_config_exits_2_before_any_dataset_or_bundle(tmp_path, capsys, override):
    out = tmp_path / "out"
    code = main(["run", "--config", CONFIG, "--out", str(out), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
                 "--set", override])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "config" in err
    assert not (out / "dataset").exists() and not (out / "bundles").exists()
    assert not (tmp_path / "m.db").exists()  # not even a tracking store was touched

"""Typed config: packaged defaults + file + flags + --set, validated once; typos exit 2 naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines.cli import main
from pipelines.config import PACKAGED_DEFAULTS
from recsys.config import validate_config
from recsys.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "default.toml")

# one typo (or wrong type) per section of the run config, and the words the error must contain
BAD = [
    ("events.user_colum=\"u\"", "unknown key 'user_colum'", "user_col"),
    ("items.id_column=\"x\"", "unknown key 'id_column'", "id_col"),
    ("weights.weightng=\"log\"", "unknown key 'weightng'", "weighting"),
    ("filter.min_user_interaction=2", "unknown key 'min_user_interaction'", "min_user_interactions"),
    ("split.test_fraction=0.3", "unknown key 'test_fraction'", "test_frac"),
    ("models.als.factorz=8", "unknown key 'factorz'", "factors"),
    ("models.alss.factors=8", "unknown model 'alss'", "als"),
    ("content.txt_cols=[\"title\"]", "unknown key 'txt_cols'", "text_cols"),
    ("refit.enable=false", "unknown key 'enable'", "enabled"),
    ("index.n_tree=10", "unknown key 'n_tree'", "n_trees"),
    ("promotion.tolerence=0.1", "unknown key 'tolerence'", "tolerance"),
    ("tracking.experimnt=\"x\"", "unknown key 'experimnt'", "experiment"),
    ("sed=1", "unknown key 'sed'", "seed"),
    ("index.min_recall=\"high\"", "min_recall", "valid number"),
    ("promotion.tolerance=\"abc\"", "tolerance", "valid number"),
    ("seed=\"abc\"", "seed", "valid integer"),
    ("models.als=3", "[models.als] must be a table", "3"),
    ("models.two-tower.epochs=\"many\"", "epochs", "valid integer"),
    ("promotion.registered_model=\"a/b\"", "registered model", "'/'"),
    ("tracking.experiment=\"..\"", "experiment name", "'.'"),
    ("evaluation.valid_users=-1", "valid_users", "greater than or equal to 0"),
    ("evaluation.test_users=\"all\"", "test_users", "valid integer"),
    ("evaluation.valid_user=100", "unknown key 'valid_user'", "valid_users"),
]


@pytest.mark.parametrize("override, key, hint", BAD)
def test_a_typo_or_wrong_type_in_any_section_exits_2_naming_the_key(tmp_path, capsys, override, key, hint):
    out = tmp_path / "out"
    code = main(["run", "--config", CONFIG, "--out", str(out), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
                 "--set", override])
    err = capsys.readouterr().err
    assert code == 2, err
    assert key in err and hint in err
    assert not out.exists() or not any(out.iterdir())  # nothing written before the check


def test_the_same_typo_in_a_config_file_exits_2_in_build_dataset_too(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(Path(CONFIG).read_text().replace("[content]", "") + "\n[content]\ntxt_cols = [\"title\"]\n")
    code = main(["build-dataset", "--config", str(cfg), "--out", str(tmp_path / "ds")])
    assert code == 2 and "did you mean 'text_cols'" in capsys.readouterr().err


def test_build_dataset_accepts_the_run_config_and_reads_its_dataset_sections(tmp_path):
    assert main(["build-dataset", "--config", CONFIG, "--out", str(tmp_path / "ds")]) == 0
    assert (tmp_path / "ds" / "manifest.json").exists()


def test_config_show_prints_the_effective_config_as_toml(capsys):
    assert main(["config", "show", "--config", CONFIG, "--set", "models.als.factors=32",
                 "--item-text-cols", "title"]) == 0
    cfg = tomllib.loads(capsys.readouterr().out)
    assert cfg["models"]["als"]["factors"] == 32  # --set
    assert cfg["models"]["als"]["regularization"] == 10.0  # packaged default kept beside it
    assert cfg["content"]["text_cols"] == ["title"] == cfg["items"]["text_cols"]  # one flag, every section
    assert cfg["tracking"]["experiment"] == "movielens-latest-small"  # from the file
    assert validate_config(cfg).models.params("als")["factors"] == 32  # what it prints is valid input


def test_packaged_defaults_are_a_valid_config_that_names_no_dataset():
    raw = tomllib.loads(PACKAGED_DEFAULTS.read_text())
    cfg = validate_config(raw)
    assert "path" not in raw.get("events", {}) and cfg.models.publish == "best"


def test_an_empty_time_flag_removes_the_files_time_column(capsys):
    assert main(["config", "show", "--config", CONFIG, "--time-col", "", "--set", "weights.aggregate=\"sum\""]) == 0
    assert "time_col" not in tomllib.loads(capsys.readouterr().out)["events"]


def test_publish_must_be_a_trained_vector_family():
    with pytest.raises(ConfigError, match="must be one of the trained models"):
        validate_config({"models": {"train": ["als"], "publish": "bpr"}})
    with pytest.raises(ConfigError, match="vector model"):
        validate_config({"models": {"train": ["most-popular"], "publish": "most-popular"}})


def _small_log(d: Path, seed: int = 0) -> tuple[Path, Path]:
    """A log with no time column (300 users, 120 items in 4 taste clusters) and item names."""
    rng = np.random.default_rng(seed)
    users, items = 300, 120
    cluster_u, cluster_i = rng.integers(0, 4, users), np.arange(items) % 4
    rows = []
    for u in range(users):
        pool = np.flatnonzero(cluster_i == cluster_u[u])
        picks = rng.choice(pool, size=rng.integers(8, 20), replace=False)
        rows += [(f"u{u}", f"i{i}", float(rng.integers(1, 5))) for i in picks]
    events = d / "plays.csv"
    pl.DataFrame(rows, schema=["user", "item", "plays"], orient="row").write_csv(events)
    names = ["rock", "jazz", "techno", "folk"]
    item_file = d / "items.csv"
    pl.DataFrame({"item": [f"i{i}" for i in range(items)],
                  "name": [f"{names[i % 4]} song {i}" for i in range(items)]}).write_csv(item_file)
    return events, item_file


def test_run_from_an_empty_directory_with_packaged_defaults_and_no_time_column(tmp_path):
    work = tmp_path / "empty"
    work.mkdir()
    events, items = _small_log(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    res = subprocess.run([str(Path(sys.executable).with_name("recsys")), "run", "--events", str(events),
                          "--items", str(items), "--user-col", "user", "--item-col", "item", "--weight-col", "plays",
                          "--item-id-col", "item", "--item-text-cols", "name", "--out", "out", "--no-progress"],
                         cwd=work, capture_output=True, text=True, env=env, timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (work / "out" / "latest").exists() and (work / "mlruns.db").exists()
    effective = tomllib.loads((work / "out" / "state" / "effective_config.toml").read_text())
    assert effective["content"]["text_cols"] == ["name"] and "time_col" not in effective["events"]

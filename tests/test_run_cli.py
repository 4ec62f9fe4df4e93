"""`recsys run` turns bad input and configuration into exit code 2 before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "default.toml")


@pytest.mark.parametrize("extra, message", [
    (["--set", "models.publish=\"nope\""], "publish"),
    (["--set", "typo.key=1"], "unknown key 'typo'"),
    (["--events", "/nonexistent/ratings.csv"], "nonexistent"),
    (["--set", "models.train=[\"als\"]", "--set", "models.publish=\"most-popular\""], "publish"),
])
def test_bad_config_or_input_exits_2_without_output(tmp_path: Path, capsys, extra, message):
    out = tmp_path / "out"
    code = main(["run", "--config", CONFIG, "--out", str(out), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (out / "bundles").exists() and not (out / "dataset").exists()


def test_missing_config_file_exits_2(tmp_path: Path, capsys):
    assert main(["run", "--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err

"""A model family added from a test module trains, saves, loads fresh, exports and serves.

The plug-in lives in tests/plugins/recsys_toy_family.py (outside ``recsys/``); the CLI
imports it with ``--plugin``. This is the path docs/extending.md describes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "tests" / "plugins"


@pytest.fixture(autouse=True)
def _plugin_path(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    yield
    from recsys.models import registry

    registry.unregister("toy-svd")


def test_a_plugin_family_trains_saves_loads_fresh_exports_and_serves(tmp_path, ml_small_dataset_dir):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    out = tmp_path / "toy"
    code = main(["--plugin", "recsys_toy_family", "train", "--dataset", str(ml_small_dataset_dir), "--model", "toy-svd",
                 "--param", "factors=16", "--out", str(out), "--tracking-uri", uri, "--no-progress"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())["test"]
    assert metrics["ndcg@10"] > 0.05  # a real (if weak) model on MovieLens, not noise

    # a fresh interpreter that imports only the plug-in loads the saved model
    code_fresh = ("import json, numpy as np, recsys_toy_family\n"
                  "from recsys.models.base import Recommender\n"
                  f"m = Recommender.load({str(out / 'model.npz')!r})\n"
                  "print(json.dumps([type(m).__name__, m.recommend(np.arange(3), k=5)[0].tolist()]))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGINS), str(ROOT)])}
    res = subprocess.run([sys.executable, "-c", code_fresh], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    name, ids = json.loads(res.stdout.strip().splitlines()[-1])
    from recsys.models.base import Recommender

    assert name == "ToySVD" and ids == Recommender.load(out / "model.npz").recommend(np.arange(3), k=5)[0].tolist()

    # without the plug-in a fresh process gets a clear error naming the fix
    bare = subprocess.run([sys.executable, "-c", f"from recsys.models.base import Recommender; Recommender.load({str(out / 'model.npz')!r})"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert bare.returncode != 0 and "toy-svd" in bare.stderr and "--plugin" in bare.stderr

    # export and serve through the same CLI and the Retriever
    bundle_root = tmp_path / "bundle"
    code = main(["--plugin", "recsys_toy_family", "export", "--dataset", str(ml_small_dataset_dir), "--model",
                 str(out / "model.npz"), "--out", str(bundle_root), "--no-mlflow", "--min-recall", "0.9"])
    assert code == 0
    from recsys.serving.retriever import Retriever

    with Retriever.load(bundle_root) as r:
        ids, scores = r.recommend(r.user_ids[0] if hasattr(r, "user_ids") else "1", k=10)
        assert len(ids) == 10 and np.all(np.diff(scores) <= 1e-6)


def test_an_unknown_plugin_module_exits_2(capsys):
    assert main(["--plugin", "no_such_plugin_module", "train", "--dataset", ".", "--model", "als"]) == 2
    assert "no_such_plugin_module" in capsys.readouterr().err

"""The model-family registry: one declaration per family, models load in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.errors import BundleError, ConfigError
from recsys.io import load_npz, save_npz
from recsys.models import registry
from recsys.models.base import Recommender

ROOT = Path(__file__).resolve().parents[1]

SMALL = {  # parameters that fit in well under a second on a toy matrix
    "most-popular": {},
    "item-knn": {"n_neighbors": 5},
    "als": {"factors": 4, "iterations": 2, "random_state": 0},
    "bpr": {"factors": 4, "iterations": 2, "random_state": 0},
    "two-tower": {"dim": 8, "user_id_dim": 0, "item_id_dim": 8, "history_dim": 8, "hidden": [], "epochs": 1,
                  "batch_size": 64, "device": "cpu", "seed": 0, "item_features": "none"},
}


def _toy_matrix(n_users: int = 30, n_items: int = 20, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < 0.3).astype(np.float32)
    dense[np.arange(n_users), np.arange(n_users) % n_items] = 1.0
    return sp.csr_matrix(dense)


def test_every_builtin_family_is_registered_with_a_schema_and_defaults():
    assert set(SMALL) <= set(registry.family_names())
    for name in registry.family_names():
        fam = registry.get_family(name)
        assert isinstance(fam.defaults(), dict)
    assert set(registry.family_names(vectors=True)) >= {"als", "bpr", "two-tower"}
    assert "most-popular" not in registry.family_names(vectors=True)


def test_unknown_family_and_parameter_names_suggest_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'als'"):
        registry.get_family("alss")
    with pytest.raises(ConfigError, match="unknown key 'factorz'.*did you mean 'factors'"):
        registry.get_family("als").make({"factorz": 8})
    with pytest.raises(ConfigError, match="factors = 'abc'"):
        registry.get_family("als").make({"factors": "abc"})
    with pytest.raises(ConfigError, match="did you mean 'dim'"):
        registry.get_family("two-tower").validate_params({"dims": 8})


def test_saved_model_records_family_and_format(tmp_path):
    model = registry.get_family("als").make(SMALL["als"]).fit(_toy_matrix())
    model.save(tmp_path / "m.npz")
    meta = json.loads(str(load_npz(tmp_path / "m.npz")["__meta__"]))
    assert meta["family"] == "als" and meta["format"] == registry.MODEL_FORMAT_VERSION


def test_every_family_loads_in_a_fresh_interpreter(tmp_path):
    m = _toy_matrix()
    expected = {}
    for name, params in SMALL.items():
        fam = registry.get_family(name)
        model = fam.make(params)
        model.fit(m)
        model.save(tmp_path / f"{name}.npz")
        expected[name] = model.recommend(np.arange(5), k=3)[0].tolist()
    code = (
        "import json, sys, numpy as np\n"
        "from recsys.models.base import Recommender\n"
        "out = {}\n"
        f"for name in {list(SMALL)!r}:\n"
        f"    model = Recommender.load({str(tmp_path)!r} + '/' + name + '.npz')\n"
        "    out[name] = [type(model).__name__, model.recommend(np.arange(5), k=3)[0].tolist()]\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    for name in SMALL:
        assert got[name][1] == expected[name], name


def test_unknown_family_or_newer_format_in_a_file_is_refused(tmp_path):
    model = registry.get_family("most-popular").make({}).fit(_toy_matrix())
    model.save(tmp_path / "m.npz")
    arrays = load_npz(tmp_path / "m.npz")
    meta = json.loads(str(arrays.pop("__meta__")))
    save_npz(tmp_path / "toy.npz", __meta__=np.array(json.dumps({**meta, "family": "no-such", "class": "X"})), **arrays)
    with pytest.raises(BundleError, match="not registered.*--plugin"):
        Recommender.load(tmp_path / "toy.npz")
    save_npz(tmp_path / "new.npz", __meta__=np.array(json.dumps({**meta, "format": 99})), **arrays)
    with pytest.raises(BundleError, match="format 99"):
        Recommender.load(tmp_path / "new.npz")


def test_files_saved_before_the_registry_load_by_class_name(tmp_path):
    model = registry.get_family("most-popular").make({}).fit(_toy_matrix())
    model.save(tmp_path / "m.npz")
    arrays = load_npz(tmp_path / "m.npz")
    meta = json.loads(str(arrays.pop("__meta__")))
    legacy = {k: v for k, v in meta.items() if k not in ("family", "format")}
    save_npz(tmp_path / "old.npz", __meta__=np.array(json.dumps(legacy)), **arrays)
    loaded = Recommender.load(tmp_path / "old.npz")
    assert type(loaded).__name__ == "MostPopular"
    np.testing.assert_array_equal(loaded.popularity_, model.popularity_)


def test_register_rejects_a_clash_and_a_bad_target():
    fam = registry.get_family("als")
    with pytest.raises(ConfigError, match="already registered"):
        registry.register(registry.ModelFamily("als", "recsys.models.bpr:BPR"))
    with pytest.raises(ConfigError, match="module:Class"):
        registry.register(registry.ModelFamily("x", "nocolon"))
    assert registry.get_family("als") is fam

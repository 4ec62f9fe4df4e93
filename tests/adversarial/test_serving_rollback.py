"""Defect 4 of issue 22: ``recsys rollback --to-version N`` validates before it moves anything,
and moves the alias and ``OUT/latest`` together.

Before: after a crash that left an untagged registered version, rolling back to it moved
``champion`` and then exited 2, so ``models:/...@champion`` and ``OUT/latest`` served
different bundles.
"""

from __future__ import annotations

import os
import shutil

import pytest

from pipelines.cli import main
from recsys import promotion
from recsys.serving.versions import current, publish
from serving_cases import small_bundle


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """Two tagged versions (v1 served before, v2 champion now) and an untagged v3; built once."""
    tmp = tmp_path_factory.mktemp("rollback")
    out = tmp / "out"
    a, b = small_bundle(out, seed=1, norm_ranged=False), small_bundle(out, seed=2, norm_ranged=False)
    client = promotion.registry_client(f"sqlite:///{tmp}/mlruns.db")
    client.create_registered_model("m")
    for info in (a, b):
        v = client.create_model_version("m", source=str(info.path)).version
        promotion.tag_version(client, "m", v, {"ndcg@10": 0.3}, "split", info.version)
        publish(out, info.version)
        promotion.promote(client, "m", v)
    client.create_model_version("m", source=str(b.path))  # v3: the crashed run never tagged it
    return tmp, a.version, b.version


@pytest.fixture()
def registry(template, tmp_path):
    """A private copy of the template (store and output directory)."""
    src, a, b = template
    shutil.copytree(src, tmp_path / "w", symlinks=True)
    out, uri = tmp_path / "w" / "out", f"sqlite:///{tmp_path}/w/mlruns.db"
    return dict(out=out, uri=uri, client=promotion.registry_client(uri), a=out / "bundles" / a, b=b)


def _rollback(reg, *extra):
    return main(["rollback", "--out", str(reg["out"]), "--registered-model", "m", "--tracking-uri", reg["uri"], *extra])


def _state(reg):
    return str(promotion.champion_version(reg["client"], "m").version), current(reg["out"])


def test_rollback_to_an_untagged_version_moves_nothing_and_exits_2(registry, capsys):
    before = _state(registry)
    assert _rollback(registry, "--to-version", "3") == 2
    assert _state(registry) == before == ("2", registry["b"])
    err = capsys.readouterr().err
    assert "lacks the tags" in err and "versions to roll back to: ['1', '2']" in err


@pytest.mark.parametrize("target", ["99", "abc", "../1"])
def test_rollback_to_an_unknown_version_moves_nothing(registry, target):
    before = _state(registry)
    assert _rollback(registry, "--to-version", target) == 2
    assert _state(registry) == before


@pytest.mark.parametrize("damage", ["deleted", "corrupted"])
def test_rollback_to_a_version_whose_bundle_is_gone_or_corrupt_moves_nothing(registry, damage, capsys):
    path = registry["a"]
    if damage == "deleted":
        shutil.rmtree(path)
    else:
        (path / "items.parquet").write_bytes(b"x")
    before = _state(registry)
    assert _rollback(registry, "--to-version", "1") == 2
    assert _state(registry) == before and "is not usable" in capsys.readouterr().err


def test_rollback_moves_alias_and_latest_together(registry):
    assert _rollback(registry) == 0
    assert _state(registry) == ("1", registry["a"].name)
    assert os.readlink(registry["out"] / "latest") == os.path.join("bundles", registry["a"].name)


def test_when_the_alias_cannot_move_latest_is_switched_back(registry, monkeypatch):
    from mlflow.exceptions import MlflowException

    real = type(registry["client"]).set_registered_model_alias
    calls = []

    def flaky(self, name, alias, version):
        calls.append(version)
        if len(calls) == 1:
            raise MlflowException("registry unavailable")
        return real(self, name, alias, version)

    monkeypatch.setattr(type(registry["client"]), "set_registered_model_alias", flaky)
    before = _state(registry)
    assert _rollback(registry, "--to-version", "1") == 1  # an internal failure: retry later
    monkeypatch.undo()
    assert _state(registry) == before and calls == ["1", "2"]


def test_rollback_refuses_an_unsafe_registered_model_name(registry):
    assert main(["rollback", "--out", str(registry["out"]), "--registered-model", "../m",
                 "--tracking-uri", registry["uri"]]) == 2

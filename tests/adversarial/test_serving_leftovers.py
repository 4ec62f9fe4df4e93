"""Defect 11 of issue 22: crash leftovers are cleaned by the next run, and logged.

Before: ``.tmp-*`` bundle directories of killed exports and versions registered but never
tagged (a run killed between registering and tagging) stayed forever.
"""

from __future__ import annotations

import logging
import os

import pytest

from recsys import promotion
from recsys.serving.versions import clean_leftovers, current, list_bundles, publish
from serving_cases import small_bundle


def test_temp_bundles_and_half_switched_links_are_removed_and_logged(tmp_path, caplog):
    info = small_bundle(tmp_path, norm_ranged=False)
    publish(tmp_path, info.version)
    stale = tmp_path / "bundles" / ".tmp-abc123"
    stale.mkdir()
    (stale / "index.ann").write_bytes(b"half")
    os.symlink("bundles/" + info.version, tmp_path / ".latest.deadbeef")
    (tmp_path / ".history.json.x1.tmp").write_text("[")
    with caplog.at_level(logging.WARNING):
        removed = clean_leftovers(tmp_path)
    assert sorted(removed) == [".history.json.x1.tmp", ".latest.deadbeef", "bundles/.tmp-abc123"]
    assert "leftover" in caplog.text
    assert not stale.exists() and current(tmp_path) == info.version and list_bundles(tmp_path) == [info.version]
    assert clean_leftovers(tmp_path) == []


def test_young_leftovers_can_be_spared(tmp_path):
    (tmp_path / "bundles" / ".tmp-new").mkdir(parents=True)
    assert clean_leftovers(tmp_path, min_age_s=3600) == []
    assert clean_leftovers(tmp_path) == ["bundles/.tmp-new"]


@pytest.fixture()
def registry(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    client = promotion.registry_client(uri)
    client.create_registered_model("m")
    exp = client.create_experiment("e")
    return client, exp


def _version(client, exp, bundle, tagged, run_tags=True):
    run = client.create_run(exp, tags={promotion.BUNDLE_TAG: bundle} if run_tags else {"job": "export"})
    v = str(client.create_model_version("m", source=f"runs:/{run.info.run_id}/retriever", run_id=run.info.run_id).version)
    if tagged:
        promotion.tag_version(client, "m", v, {"ndcg@10": 0.1}, "split", bundle)
    return v


def test_an_untagged_version_of_this_output_is_deleted_by_the_next_run(registry, caplog):
    client, exp = registry
    good = _version(client, exp, "b1", tagged=True)
    crashed = _version(client, exp, "b2", tagged=False)
    other_out = _version(client, exp, "elsewhere", tagged=False)  # another --out may be tagging it now
    exported = _version(client, exp, "b3", tagged=False, run_tags=False)  # `recsys export --register`
    mine = {"b1", "b2", "b3"}
    with caplog.at_level(logging.WARNING):
        assert promotion.clean_untagged_versions(client, "m", owned=mine.__contains__) == [crashed]
    left = sorted(str(v.version) for v in client.search_model_versions("name = 'm'"))
    assert left == sorted([good, other_out, exported]) and "untagged" in caplog.text
    assert promotion.usable_versions(client, "m") == [good]


def test_an_aliased_or_kept_version_is_never_deleted(registry):
    client, exp = registry
    v = _version(client, exp, "b1", tagged=False)
    assert promotion.clean_untagged_versions(client, "m", owned=lambda b: True, keep=v) == []
    client.set_registered_model_alias("m", "champion", v)
    assert promotion.clean_untagged_versions(client, "m", owned=lambda b: True) == []


def test_promote_step_cleans_leftovers_before_registering():
    import inspect

    from pipelines import steps

    src = inspect.getsource(steps.promote_step)
    assert src.index("clean_leftovers(ctx.out)") < src.index("log_retriever_model(")
    assert src.index("clean_untagged_versions(") < src.index("log_retriever_model(")

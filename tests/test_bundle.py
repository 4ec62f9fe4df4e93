"""Bundle export: recall gate, manifest, versioning, atomic publish, corruption refused."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.errors import BundleError, ConfigError, InputError, QualityGateError
from recsys.io import read_json, sha256_file
from recsys.serving import versions
from recsys.serving.bundle import IndexConfig, export_bundle, list_bundles, previous, publish, rollback, verify_bundle
from recsys.serving.retriever import Retriever
from serving_fixtures import export_real, real  # noqa: F401 - real is a fixture


@pytest.fixture(scope="module")
def real_bundle(real, tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    return root, export_real(root, real)


def _synthetic(n_items=2000, n_users=100, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(n_items, dim)).astype(np.float32)
    users = rng.normal(size=(n_users, dim)).astype(np.float32)
    seen = sp.random(n_users, n_items, density=0.01, format="csr", random_state=seed)
    return dict(item_vectors=items, item_ids=[f"i{i}" for i in range(n_items)], user_vectors=users,
                user_ids=[f"u{u}" for u in range(n_users)], seen=seen)


def _export(root, **kw):
    args = _synthetic()
    args.update(kw)
    args.setdefault("config", IndexConfig(n_trees=10, n_jobs=1))
    return export_bundle(root, **args)


def test_real_movielens_vectors_pass_the_recall_gate_at_100(real_bundle):
    _, info = real_bundle
    gate = info.manifest["quality_gate"]
    assert gate["queries"] == "user_vectors" and gate["n_queries"] == 610
    assert info.recall >= 0.95
    assert gate["recall"] == info.recall and info.search_k == info.manifest["index"]["search_k"]
    print(f"ml-latest-small ALS: recall@100 {info.recall:.4f} at search_k {info.search_k}")


def test_manifest_records_everything_needed_to_load_the_ann_file(real_bundle, real):
    _, info = real_bundle
    m = read_json(info.path / "manifest.json")
    assert m["run_id"] == "test-run" and m["similarity"] == "dot" and m["schema_version"] == 1
    assert m["dim"] == 32 and m["n_items"] == real.dataset.n_items and m["n_users"] == real.dataset.n_users
    assert m["n_seen"] == real.train.nnz
    ix = m["index"]
    # real ALS norms are skewed: the dot model gets one forest per norm range
    assert ix["metric"] == "angular" and ix["transform"] == "norm_ranged_mips" and ix["annoy_dim"] == 33
    assert ix["file"] is None and ix["ranges"]["bounds"] == [0, 1216, 2431, 4862, 9724]
    assert (ix["n_trees"], ix["seed"]) == (20, 42) and ix["search_k"] > 0
    on_disk = sorted(p.name for p in info.path.iterdir() if p.name not in ("manifest.json", "manifest.sha256"))
    assert sorted(m["files"]) == on_disk
    assert {"index-00.ann", "index-03.ann", "norm_order.npy", "item_vectors.npy", "items.parquet", "user_vectors.npy", "users.parquet", "seen.npz"} <= set(on_disk)
    for name, meta in m["files"].items():
        assert meta["sha256"] == sha256_file(info.path / name)
        assert meta["bytes"] == (info.path / name).stat().st_size
    assert m["created_at"].endswith("+00:00") and m["version"] == info.path.name == info.version
    assert info.path.stat().st_mode & 0o777 == 0o755  # readable by a server running as another user
    assert {(info.path / n).stat().st_mode & 0o777 for n in [*m["files"], "manifest.json"]} == {0o644}


def test_version_names_sort_by_creation_time(tmp_path):
    a = _export(tmp_path)
    b = _export(tmp_path, item_vectors=_synthetic(seed=1)["item_vectors"])
    assert a.version < b.version
    assert list_bundles(tmp_path) == [a.version, b.version]


def test_gate_refuses_to_publish_and_leaves_nothing_behind(tmp_path):
    cfg = IndexConfig(n_trees=1, search_k=10, max_search_k=20, min_recall=0.99, n_jobs=1, norm_ranges=1)
    with pytest.raises(QualityGateError, match="recall@100"):
        _export(tmp_path, config=cfg)
    assert list((tmp_path / "bundles").iterdir()) == []
    assert versions.current(tmp_path) is None


def test_gate_tunes_search_k_upwards_before_refusing(tmp_path):
    info = _export(tmp_path, config=IndexConfig(n_trees=5, search_k=50, min_recall=0.95, n_jobs=1, norm_ranges=1))
    tried = info.manifest["quality_gate"]["search_k_tried"]
    assert tried[0] == [50, pytest.approx(tried[0][1])] and tried[0][1] < 0.95
    first_pass = next(i for i, (_, r) in enumerate(tried) if r >= 0.95)
    assert [s for s, _ in tried[: first_pass + 1]] == [50 * 2**i for i in range(first_pass + 1)]  # doubling
    assert info.search_k == min(s for s, r in tried if r >= 0.95)  # then bisected back
    assert info.recall == dict(map(tuple, tried))[info.search_k] >= 0.95


def test_nan_or_inf_vectors_are_refused_before_anything_is_written(tmp_path):
    args = _synthetic()
    args["item_vectors"][7, 3] = np.nan
    with pytest.raises(InputError, match="NaN or infinite.*rows \\[7\\]"):
        export_bundle(tmp_path, **args)
    args = _synthetic()
    args["user_vectors"][2, 0] = np.inf
    with pytest.raises(InputError, match="user vectors"):
        export_bundle(tmp_path, **args)
    assert not (tmp_path / "bundles").exists() or list((tmp_path / "bundles").iterdir()) == []


def test_misaligned_ids_are_refused(tmp_path):
    with pytest.raises(InputError, match="align"):
        _export(tmp_path, item_ids=["a", "b"])
    with pytest.raises(InputError, match="together"):
        _export(tmp_path, user_ids=None)


def test_unknown_index_setting_is_a_config_error():
    with pytest.raises(ConfigError, match="n_tress"):
        IndexConfig.from_dict({"n_tress": 10})
    with pytest.raises(ConfigError):
        IndexConfig(min_recall=1.5)


@pytest.fixture(params=[1, 8], ids=["one-forest", "norm-ranges"])
def published(tmp_path, request):
    info = _export(tmp_path, config=IndexConfig(n_trees=10, n_jobs=1, norm_ranges=request.param))
    publish(tmp_path, info.version)
    return tmp_path, info


def _ann_file(info):
    """The (first) .ann file of a bundle, whichever index layout it has."""
    ix = info.manifest["index"]
    return ix["file"] or ix["ranges"]["files"][1]


def test_flipped_byte_in_the_index_is_refused(published):
    root, info = published
    f = info.path / _ann_file(info)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{f.name} fails its sha256 check"):
        Retriever.load(root)


def test_missing_file_is_refused(published):
    root, info = published
    (info.path / "seen.npz").unlink()
    with pytest.raises(BundleError, match="seen.npz is missing"):
        Retriever.load(info.path)


def test_truncated_ann_is_refused(published):
    root, info = published
    f = info.path / _ann_file(info)
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size - 100)
    with pytest.raises(BundleError, match="truncated"):
        Retriever.load(root)
    with pytest.raises(BundleError, match="truncated"):
        Retriever.load(root, verify=False)  # sizes are checked even without checksums


def test_directory_without_manifest_is_an_incomplete_bundle(published):
    root, info = published
    (info.path / "manifest.json").unlink()
    with pytest.raises(BundleError, match="not a complete bundle"):
        Retriever.load(info.path)
    with pytest.raises(BundleError, match="not a complete bundle"):
        verify_bundle(root / "nothing-here")


def test_root_without_published_bundle_is_refused(tmp_path):
    _export(tmp_path)
    with pytest.raises(BundleError, match="none is published"):
        Retriever.load(tmp_path)


def test_publish_switches_latest_and_rollback_returns(tmp_path):
    a = _export(tmp_path)
    publish(tmp_path, a.version)
    r_old = Retriever.load(tmp_path)
    b = _export(tmp_path, item_vectors=_synthetic(seed=3)["item_vectors"])
    publish(tmp_path, b.version)
    assert os.readlink(tmp_path / "latest") == os.path.join("bundles", b.version)
    assert Retriever.load(tmp_path).version == b.version
    assert r_old.version == a.version and r_old.recommend("u1", k=3)[0].shape == (3,)  # still serving old
    assert previous(tmp_path) == a.version
    assert rollback(tmp_path) == a.version
    assert Retriever.load(tmp_path).version == a.version
    hist = read_json(tmp_path / "history.json")
    assert [h["action"] for h in hist] == ["publish", "publish", "rollback"]
    assert previous(tmp_path) is None  # b was rolled back from: never a rollback target
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".latest")]


def test_publish_refuses_unknown_or_corrupted_versions(published):
    root, info = published
    with pytest.raises(BundleError, match="no bundle"):
        publish(root, "20990101T000000.000000Z-deadbeef")
    (info.path / "items.parquet").write_bytes(b"x")
    with pytest.raises(BundleError):
        publish(root, info.version)


def test_prune_keeps_live_and_previous(tmp_path):
    infos = [_export(tmp_path, item_vectors=_synthetic(seed=s)["item_vectors"]) for s in range(4)]
    publish(tmp_path, infos[0].version)
    publish(tmp_path, infos[1].version)
    deleted = versions.prune(tmp_path, keep=1)
    assert deleted == [infos[2].version]
    assert list_bundles(tmp_path) == [infos[0].version, infos[1].version, infos[3].version]


def test_cosine_bundle_uses_angular_without_augmentation(tmp_path):
    info = _export(tmp_path, similarity="cosine")
    assert info.manifest["index"]["transform"] == "none" and info.manifest["index"]["annoy_dim"] == 16
    r = Retriever.load(info.path, backend="annoy")
    ids, scores = r.search(np.ones(16, np.float32), k=5)
    assert np.all(scores <= 1.0 + 1e-5) and np.all(np.diff(scores) <= 0)


# -- the `recsys export` job ---------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset_dir(ml_small, real, tmp_path_factory):
    """ml_small written as a dataset directory, plus the quick-ALS vectors as an npz."""
    from recsys.io import save_npz, write_json

    d = tmp_path_factory.mktemp("dataset")
    for name, df in ml_small.splits.items():
        df.write_parquet(d / f"{name}.parquet")
    ml_small.user_map.save(d / "user_map.parquet")
    ml_small.item_map.save(d / "item_map.parquet")
    write_json(d / "manifest.json", {"schema_version": 1})
    save_npz(d / "vectors.npz", item_vectors=real.item_vectors, user_vectors=real.user_vectors,
             similarity=np.array("dot"))
    return d


def test_export_job_publishes_a_bundle_the_retriever_loads(dataset_dir, tmp_path):
    from pipelines.cli import main

    rc = main(["export", "--dataset", str(dataset_dir), "--vectors", str(dataset_dir / "vectors.npz"),
               "--out", str(tmp_path), "--no-mlflow", "--n-trees", "20", "--n-queries", "100"])
    assert rc == 0
    r = Retriever.load(tmp_path)
    assert r.manifest["index"]["n_trees"] == 20 and r.manifest["quality_gate"]["recall"] >= 0.95
    assert r.manifest["n_seen"] > 0 and r.manifest["extra"]["seen_splits"] == ["train", "valid", "test"]


def test_export_job_exits_3_when_the_gate_refuses(dataset_dir, tmp_path):
    from pipelines.cli import main

    cfg = tmp_path / "run.toml"
    cfg.write_text("[index]\nn_trees = 1\nsearch_k = 50\nmax_search_k = 100\nn_queries = 100\nnorm_ranges = 1\n")
    rc = main(["export", "--dataset", str(dataset_dir), "--vectors", str(dataset_dir / "vectors.npz"),
               "--out", str(tmp_path / "root"), "--no-mlflow", "--config", str(cfg)])
    assert rc == 3
    assert list_bundles(tmp_path / "root") == [] and not (tmp_path / "root" / "latest").exists()
    cfg.write_text("[index]\nn_tress = 1\n")
    assert main(["export", "--dataset", str(dataset_dir), "--vectors", str(dataset_dir / "vectors.npz"),
                 "--out", str(tmp_path / "root"), "--no-mlflow", "--config", str(cfg)]) == 2


def test_export_times_annoy_against_exact_and_auto_serves_the_faster(tmp_path):
    import dataclasses

    from recsys.serving.reader import read_bundle

    info = _export(tmp_path, config=IndexConfig(n_trees=10, n_jobs=1, exact_max_items=100))
    p50 = info.manifest["quality_gate"]["p50_ms"]
    assert p50["queries"] == 100 and p50["annoy"] > 0 and p50["exact"] > 0
    data = read_bundle(info.path)
    for annoy_ms, exact_ms, want in ((5.0, 1.0, "exact"), (1.0, 5.0, "annoy")):
        gate = {**data.manifest["quality_gate"], "p50_ms": {"annoy": annoy_ms, "exact": exact_ms, "queries": 100}}
        r = Retriever(dataclasses.replace(data, manifest={**data.manifest, "quality_gate": gate}))
        assert r.backend == want
        assert Retriever(dataclasses.replace(data, manifest={**data.manifest, "quality_gate": gate}),
                         backend="annoy").backend == "annoy"  # an explicit backend always wins
    small = _export(tmp_path / "small")  # served exactly by size: nothing to time
    assert "p50_ms" not in small.manifest["quality_gate"]

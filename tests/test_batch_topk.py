"""Batch top-K (recsys.serving.batch, `recsys recommend-batch`, the run's batch step).

The reference is the Retriever itself with exact search: for sampled users the batch
lists must be the lists ``Retriever.recommend`` returns, with every filter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines.cli import main as cli
from recsys import Retriever
from recsys.errors import InputError, UnknownIdError
from recsys.serving.batch import write_batch_topk
from recsys.serving.bundle import IndexConfig
from recsys.serving.reader import read_bundle
from tests.serving_fixtures import export_real, real  # noqa: F401 - fixture

K = 20


@pytest.fixture(scope="module")
def bundle(real, tmp_path_factory) -> Path:  # noqa: F811
    root = tmp_path_factory.mktemp("batch-bundle")
    return export_real(root, real, config=IndexConfig(backend="exact", n_queries=50)).path


@pytest.fixture(scope="module")
def cosine_bundle(real, tmp_path_factory) -> Path:  # noqa: F811
    from recsys.serving.bundle import export_bundle

    root = tmp_path_factory.mktemp("batch-cosine")
    return export_bundle(root, item_vectors=real.item_vectors, item_ids=real.dataset.item_map,
                         user_vectors=real.user_vectors, user_ids=real.dataset.user_map, seen=real.train,
                         similarity="cosine", config=IndexConfig(backend="exact", n_queries=50)).path


def read_lists(out: Path) -> pl.DataFrame:
    return pl.read_parquet(sorted(out.glob("part-*.parquet")))


def assert_same_lists(df: pl.DataFrame, retriever: Retriever, users: list[str], **kw) -> None:
    """Batch rows of ``users`` equal Retriever.recommend(users, K, **kw) slot for slot.

    Scores must agree to float32 rounding (two GEMMs of different shapes); ids must agree
    except between items whose scores tie to that rounding.
    """
    ids, scores = retriever.recommend(users, k=K, **kw)
    got = {u: g for (u,), g in df.filter(pl.col("user_id").is_in(users)).group_by("user_id")}
    for r, u in enumerate(users):
        filled = np.array([i is not None for i in ids[r]])
        g = got[u].sort("rank")
        assert g["rank"].to_list() == list(range(1, filled.sum() + 1)), u
        np.testing.assert_allclose(g["score"].to_numpy(), scores[r][filled], rtol=1e-5, atol=1e-5)
        differ = np.flatnonzero(np.asarray(g["item_id"].to_list(), object) != ids[r][filled])
        for p in differ:  # only near-ties may swap places
            assert abs(scores[r][p] - g["score"][int(p)]) < 1e-5, (u, p)


def sample_users(bundle: Path, n: int = 60, seed: int = 0) -> list[str]:
    ids = read_bundle(bundle, verify=False).user_map.ids
    return [ids[i] for i in np.random.default_rng(seed).choice(len(ids), n, replace=False)]


# -- equal to the Retriever --------------------------------------------------------------------------


def test_batch_equals_retriever_for_sampled_users_with_seen_items_excluded(bundle: Path, tmp_path: Path):
    res = write_batch_topk(read_bundle(bundle), tmp_path / "out", k=K, rows_per_file=5000)
    df = read_lists(res.path)
    m = res.manifest
    assert m["n_users"] == df["user_id"].n_unique() and m["rows"] == df.height == m["n_users"] * K
    assert df.columns == ["user_id", "rank", "item_id", "score", "bundle_version"]
    assert set(df["bundle_version"].unique()) == {m["bundle_version"]}
    with Retriever.load(bundle, backend="exact") as r:
        assert_same_lists(df, r, sample_users(bundle))


def test_batch_keeps_seen_items_when_asked(bundle: Path, tmp_path: Path):
    res = write_batch_topk(read_bundle(bundle), tmp_path / "out", k=K, exclude_seen=False)
    with Retriever.load(bundle, backend="exact") as r:
        assert_same_lists(read_lists(res.path), r, sample_users(bundle, seed=1), exclude_seen=False)


def test_batch_honours_allow_and_block_lists_like_the_retriever(bundle: Path, tmp_path: Path):
    data = read_bundle(bundle)
    rng = np.random.default_rng(3)
    item_ids = np.asarray(data.item_map.ids, object)
    popular = item_ids[np.argsort(-data.item_popularity)[:300]]
    allow = list(rng.choice(popular, 150, replace=False)) + list(rng.choice(item_ids, 150, replace=False))
    block = list(popular[:20]) + list(rng.choice(item_ids, 50, replace=False))
    users = sample_users(bundle, seed=2)
    res = write_batch_topk(data, tmp_path / "out", k=K, users=users, allow_items=allow, block_items=block)
    df = read_lists(res.path)
    assert set(df["item_id"]) <= set(allow) - set(block)
    assert res.manifest["allow_items"] == len(set(allow)) and res.manifest["block_items"] == len(set(block))
    with Retriever.load(bundle, backend="exact") as r:
        assert_same_lists(df, r, users, candidates=allow, exclude=block)


def test_cosine_bundle_and_item_blocks_give_the_retriever_lists(cosine_bundle: Path, tmp_path: Path):
    # 64 KiB blocks: the catalogue is cut into item blocks whose top-k are merged
    res = write_batch_topk(read_bundle(cosine_bundle), tmp_path / "out", k=K, max_chunk_bytes=64 << 10)
    with Retriever.load(cosine_bundle, backend="exact") as r:
        assert_same_lists(read_lists(res.path), r, sample_users(cosine_bundle, seed=4))


def test_unknown_users_get_the_retrievers_popular_fallback(bundle: Path, tmp_path: Path):
    users = ["no-such-user", *sample_users(bundle, 5, seed=5)]
    res = write_batch_topk(read_bundle(bundle), tmp_path / "out", k=K, users=users, block_items=["1"])
    df = read_lists(res.path)
    assert df["user_id"].unique(maintain_order=True).to_list() == users  # the order given
    assert res.manifest["n_cold_users"] == 1
    with Retriever.load(bundle, backend="exact") as r:
        assert_same_lists(df, r, users, exclude=["1"])


def test_parts_hold_whole_users_and_match_their_checksums(bundle: Path, tmp_path: Path):
    from recsys.errors import BundleError
    from recsys.io import sha256_file
    from recsys.serving.batch import read_batch

    res = write_batch_topk(read_bundle(bundle), tmp_path / "out", k=7, rows_per_file=100, users=sample_users(bundle, 40))
    files = res.manifest["files"]
    manifest, parts = read_batch(res.path)
    assert manifest == res.manifest and [p.name for p in parts] == sorted(files)
    assert sorted(files) == sorted(p.name for p in res.path.glob("part-*.parquet")) and len(files) == 3
    seen: set[str] = set()
    for name, meta in sorted(files.items()):
        part = pl.read_parquet(res.path / name)
        assert part.height == meta["rows"] <= 100 and sha256_file(res.path / name) == meta["sha256"]
        users = set(part["user_id"])
        assert not users & seen and (part.group_by("user_id").len()["len"] == 7).all()
        seen |= users
    part = res.path / "part-00001.parquet"
    part.write_bytes(part.read_bytes()[:-1] + b"!")  # same size, other bytes
    with pytest.raises(BundleError, match="sha256"):
        read_batch(res.path)


# -- atomic output -----------------------------------------------------------------------------------


def test_a_crash_mid_write_leaves_no_output_directory(bundle: Path, tmp_path: Path):
    def crash(part: Path) -> None:
        raise RuntimeError("disk full")

    out = tmp_path / "batch" / "v1"
    with pytest.raises(RuntimeError, match="disk full"):
        write_batch_topk(read_bundle(bundle), out, k=5, rows_per_file=1000, on_part=crash)
    assert not out.exists() and list(out.parent.iterdir()) == []  # no final dir, no temporary left


def test_existing_output_is_refused_unless_overwrite(bundle: Path, tmp_path: Path):
    data = read_bundle(bundle)
    users = sample_users(bundle, 3)
    write_batch_topk(data, tmp_path / "o", k=5, users=users)
    with pytest.raises(InputError, match="already exists"):
        write_batch_topk(data, tmp_path / "o", k=5, users=users)
    assert write_batch_topk(data, tmp_path / "o", k=6, users=users, overwrite=True).manifest["k"] == 6


def test_unknown_allow_or_block_ids_are_refused(bundle: Path, tmp_path: Path):
    with pytest.raises(UnknownIdError, match="allow-list"):
        write_batch_topk(read_bundle(bundle), tmp_path / "o", k=5, allow_items=["1", "nope"])
    assert not (tmp_path / "o").exists()


# -- the command line ------------------------------------------------------------------------------


def test_cli_writes_the_batch_next_to_the_bundle(bundle: Path, tmp_path: Path, capsys):
    users = tmp_path / "users.txt"
    users.write_text("\n".join(sample_users(bundle, 10)) + "\n")
    block = tmp_path / "block.txt"
    block.write_text("# never these\n1\n50\n")
    out = tmp_path / "recs"
    code = cli(["recommend-batch", "--bundle", str(bundle), "--out", str(out), "--k", "5", "--users", str(users),
                "--block", str(block), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    df = read_lists(out)
    assert df.height == 50 and not set(df["item_id"]) & {"1", "50"}
    assert "50 rows for 10 users" in capsys.readouterr().out


@pytest.mark.parametrize("case, message", [
    ("missing-bundle", "does not exist"),
    ("k0", "--k must be a positive integer"),
    ("unknown-allow", "unknown item id"),
    ("unknown-users", "none of the 2 users"),
    ("empty-block", "holds no ids"),
])
def test_cli_bad_input_exits_2_with_a_clear_message(bundle: Path, tmp_path: Path, capsys, case, message):
    ids = tmp_path / "ids.txt"
    ids.write_text({"unknown-allow": "1\nnot-an-item\n", "unknown-users": "ghost-1\nghost-2\n"}.get(case, "\n"))
    args = {"missing-bundle": ["--bundle", str(tmp_path / "nope")], "k0": ["--k", "0"],
            "unknown-allow": ["--allow", str(ids)], "unknown-users": ["--users", str(ids)],
            "empty-block": ["--block", str(ids)]}[case]
    base = ["--bundle", str(bundle)] if case != "missing-bundle" else []
    code = cli(["recommend-batch", *base, "--out", str(tmp_path / "out"), *args, "--no-progress"])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -- the `batch` step of `recsys run` ----------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
RUN_FAST = ["--set", "models.baselines=[\"most-popular\"]", "--set", "models.train=[\"als\"]",
            "--set", "models.als.factors=16", "--set", "models.als.iterations=3", "--set", "content.enabled=false",
            "--set", "index.backend=\"exact\"", "--set", "index.n_queries=50", "--no-progress"]


def run_args(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    ratings = pl.read_csv(ROOT / "data" / "movielens-latest-small" / "ratings.csv")
    ratings.filter(pl.col("userId") <= 100).write_csv(tmp_path / "ratings.csv")
    return ["run", "--out", str(out), "--events", str(tmp_path / "ratings.csv"), "--user-col", "userId",
            "--item-col", "movieId", "--weight-col", "rating", "--time-col", "timestamp",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}", *RUN_FAST, *extra]


def test_run_writes_the_batch_of_the_promoted_bundle_and_reruns_as_up_to_date(tmp_path: Path, capsys):
    import json

    out = tmp_path / "run"
    block = tmp_path / "block.txt"
    block.write_text("1\nnot-in-the-catalogue\n")  # a stale id: ignored with a warning in the nightly step
    args = run_args(tmp_path, out, "--set", "batch.k=5", "--set", f"batch.block_items=\"{block}\"")
    assert cli(args) == 0, capsys.readouterr().err[-3000:]
    rec = json.loads((out / "state" / "run_record.json").read_text())
    version = rec["bundle_version"]
    batch_dir = out / "batch" / version
    assert rec["batch"]["batch_path"] == str(batch_dir) and "batch" in [s["name"] for s in rec["steps"] if s["ran"]]
    manifest = json.loads((batch_dir / "manifest.json").read_text())
    df = read_lists(batch_dir)
    n_users = len(read_bundle(out / "bundles" / version, verify=False).user_map)
    assert manifest["n_users"] == n_users == df["user_id"].n_unique() and df.height == 5 * n_users
    assert "1" not in set(df["item_id"]) and manifest["block_items"] == 1
    assert "Batch top-K:" in capsys.readouterr().out
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    run = client.get_run(rec["batch"]["run_id"])
    assert run.data.metrics["batch_rows"] == df.height and run.data.tags["recsys.bundle_version"] == version
    assert [a.path for a in client.list_artifacts(run.info.run_id, "batch")] == ["batch/manifest.json"]
    assert cli(args) == 0  # unchanged: the batch step is up to date like every other
    rec = json.loads((out / "state" / "run_record.json").read_text())
    assert not any(s["ran"] for s in rec["steps"])


def test_run_with_a_missing_batch_list_exits_2_before_any_work(tmp_path: Path, capsys):
    out = tmp_path / "run"
    code = cli(run_args(tmp_path, out, "--set", f"batch.allow_items=\"{tmp_path / 'nope.txt'}\""))
    assert code == 2 and "[batch] allow_items" in capsys.readouterr().err
    assert not (out / "dataset").exists()


def test_cli_without_out_writes_beside_the_bundles_directory(bundle: Path, tmp_path: Path, capsys):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(bundle, root / "bundles" / bundle.name)
    users = tmp_path / "users.txt"
    users.write_text("\n".join(sample_users(bundle, 3)))
    assert cli(["recommend-batch", "--bundle", str(root / "bundles" / bundle.name), "--k", "2", "--users", str(users),
                "--no-progress"]) == 0, capsys.readouterr().err
    assert read_lists(root / "batch" / bundle.name).height == 6

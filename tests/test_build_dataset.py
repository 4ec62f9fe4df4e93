"""The build-dataset pipeline end to end: MovieLens, generic logs, id-map stability, CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines import build_dataset as job
from pipelines.cli import main as cli_main
from recsys.data.build import BuildConfig, WeightConfig, build_dataset
from recsys.data.dataset import Dataset
from recsys.data.readers import InputSpec
from recsys.data.splits import SplitConfig
from recsys.data.validate import ColumnMapping
from recsys.errors import ConfigError, DataQualityError, SchemaError

ROOT = Path(__file__).resolve().parents[1]


def _pairs(df: pl.DataFrame) -> set[tuple[int, int]]:
    return set(zip(df["user_idx"].to_list(), df["item_idx"].to_list()))


def _config_from(argv: list[str], toml: dict | None = None) -> BuildConfig:
    parser = argparse.ArgumentParser()
    job.add_arguments(parser)
    return job.build_config_from(parser.parse_args([*argv, "--out", "unused"]), toml)


@pytest.fixture(scope="module")
def ml_small_ds(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    toml = job.load_toml(ROOT / "configs" / "movielens_small.toml")
    return build_dataset(job.build_config_from(None, toml), tmp_path_factory.mktemp("ml") / "ds")


def test_movielens_small_end_to_end(ml_small_ds: Dataset, ml_small_path: Path) -> None:
    ds = Dataset.load(ml_small_ds.path)
    ratings = pl.read_csv(ml_small_path / "ratings.csv")
    m = ds.manifest
    assert m["schema_version"] == 1
    assert m["rows"]["in"] == ratings.height == 100_836
    assert m["rows"]["rejected"] == 0
    assert m["rows"]["out"] == sum(m["rows"]["splits"].values()) == ratings.height
    assert m["weighting"]["mode"] == "confidence"
    assert m["seed"] == 42
    assert len(m["inputs"]["events"][0]["sha256"]) == 64
    movies = pl.read_csv(ml_small_path / "movies.csv")
    assert ds.n_users == ratings["userId"].n_unique()
    # every catalogue item is indexed: rated ones first, then those nobody rated yet (cold)
    assert ds.n_items == movies["movieId"].n_unique() == ratings["movieId"].n_unique() + 18
    assert m["items"]["items_without_interactions"] == 18
    unrated = set(movies["movieId"].cast(pl.String)) - set(ratings["movieId"].cast(pl.String))
    assert set(ds.item_map.to_index(sorted(unrated)).tolist()) == set(range(ratings["movieId"].n_unique(), ds.n_items))
    assert ds.matrix("train", "valid", "test", "test_cold").getnnz(axis=0)[ratings["movieId"].n_unique():].sum() == 0
    # default protocol: 10% cold items, absent from train/valid/test
    cold = set(ds.split("test_cold")["item_idx"].to_list())
    counts = ratings.group_by("movieId").len()
    assert len(cold) == round(0.1 * counts.filter(pl.col("len") >= 5).height)
    for name in ("train", "valid", "test"):
        assert not cold & set(ds.split(name)["item_idx"].to_list())
    assert not _pairs(ds.split("train")) & _pairs(ds.split("test"))
    warm = ratings.height - ds.split("test_cold").height
    assert ds.split("test").height == pytest.approx(0.2 * warm, rel=0.03)
    # weights are the ratings, matrix lines up with the maps
    train = ds.split("train")
    assert train.schema["user_idx"] == pl.Int32 and train.schema["weight"] == pl.Float32
    assert train["weight"].to_list() == train["rating"].to_list()
    assert ds.matrix("train").shape == (ds.n_users, ds.n_items)
    # item metadata: one row per item, with text
    toy = ds.items.filter(pl.col("external_id") == "1")
    assert toy["title"].to_list() == ["Toy Story (1995)"] and "Animation" in toy["genres"][0]
    assert ds.items.height == ds.n_items
    # the external ids round-trip to the input rows
    row = train.row(0, named=True)
    u, i = ds.user_map.to_external(row["user_idx"]), ds.item_map.to_external(row["item_idx"])
    src = ratings.filter((pl.col("userId") == int(u)) & (pl.col("movieId") == int(i)))
    assert src["rating"][0] == pytest.approx(row["rating"])


def test_movielens_100k_end_to_end_with_recommenders_protocol(tmp_path: Path, ml100k_path: Path) -> None:
    toml = job.load_toml(ROOT / "configs" / "movielens_100k.toml")
    toml["events"]["path"] = str(ml100k_path / "u.data")
    toml["items"]["path"] = str(ml100k_path / "u.item")
    ds = build_dataset(job.build_config_from(None, toml), tmp_path / "ds")
    assert ds.manifest["rows"]["in"] == 100_000
    assert (ds.n_users, ds.n_items) == (943, 1682)
    assert ds.split("valid").height == 0 and ds.split("test_cold").height == 0
    assert ds.split("test").height == pytest.approx(25_000, rel=0.01)
    assert not _pairs(ds.split("train")) & _pairs(ds.split("test"))
    assert ds.items.filter(pl.col("external_id") == "1")["title"][0] == "Toy Story (1995)"
    # every user has >= 20 ratings, so every user is in both train and test
    assert ds.split("test")["user_idx"].n_unique() == 943


def _write_log(path: Path, users: list[str], items: list[str]) -> None:
    pl.DataFrame({"u": users, "i": items, "ts": [str(1_700_000_000 + k) for k in range(len(users))]}).write_csv(path)


def test_id_maps_are_stable_across_runs_and_new_ids_are_appended(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    cfg1 = BuildConfig(InputSpec(str(tmp_path / "a.csv")), ColumnMapping("u", "i", time="ts"), split=SplitConfig(test_frac=0.0, valid_frac=0.0))
    _write_log(tmp_path / "a.csv", ["u2", "u1", "u2", "u3"], ["b", "a", "a", "c"])
    first = build_dataset(cfg1, out)
    assert first.user_map.ids == ["u1", "u2", "u3"] and first.item_map.ids == ["a", "b", "c"]
    # day 2: u1 gone, new user u0 and new items z, d; existing ids keep their index
    _write_log(tmp_path / "b.csv", ["u0", "u2", "u3", "u3"], ["z", "a", "c", "d"])
    cfg2 = BuildConfig(InputSpec(str(tmp_path / "b.csv")), ColumnMapping("u", "i", time="ts"), split=SplitConfig(test_frac=0.0, valid_frac=0.0))
    second = build_dataset(cfg2, out)  # reuses the maps of the dataset at `out`
    assert second.user_map.ids == ["u1", "u2", "u3", "u0"]
    assert second.item_map.ids == ["a", "b", "c", "d", "z"]
    assert second.manifest["id_maps"]["items_added"] == 2
    train = second.split("train")
    got = {(second.user_map.to_external(u), second.item_map.to_external(i)) for u, i in zip(train["user_idx"], train["item_idx"])}
    assert got == {("u0", "z"), ("u2", "a"), ("u3", "c"), ("u3", "d")}
    # explicit --previous works the same; fresh maps when asked
    third = build_dataset(cfg2, tmp_path / "other", previous=out)
    assert third.item_map.ids == second.item_map.ids
    fresh = build_dataset(cfg2, out, reuse_ids=False)
    assert fresh.item_map.ids == ["a", "c", "d", "z"]


def test_rejects_are_written_with_reason_and_counted(tmp_path: Path) -> None:
    f = tmp_path / "log.csv"
    rows = ["u,i,w"] + [f"u{k % 7},i{k % 11},1" for k in range(200)] + ["u1,i1,-3", ",i2,1"]
    f.write_text("\n".join(rows) + "\n")
    cfg = BuildConfig(InputSpec(str(f)), ColumnMapping("u", "i", weight="w"), max_reject_share=0.05)
    ds = build_dataset(cfg, tmp_path / "ds")
    rej = pl.read_parquet(tmp_path / "ds" / "rejects.parquet")
    assert rej.sort("reason").to_dicts() == [
        {"u": None, "i": "i2", "w": "1", "reason": "user_id_missing"},
        {"u": "u1", "i": "i1", "w": "-3", "reason": "weight_negative"},
    ]
    rows_m = ds.manifest["rows"]
    assert rows_m["rejected_by_reason"] == {"user_id_missing": 1, "weight_negative": 1}
    assert rows_m["in"] == 202 and rows_m["duplicates_merged"] == 200 - 77 and rows_m["out"] == 77
    # every input row is accounted for
    parts = ("rejected", "below_threshold", "duplicates_merged", "kcore_removed", "out")
    assert rows_m["in"] == sum(rows_m[k] for k in parts)


def test_too_many_rejects_fail_with_exit_code_2_and_leave_no_output(tmp_path: Path) -> None:
    f = tmp_path / "log.csv"
    f.write_text("u,i,w\n1,a,1\n2,b,abc\n3,c,2\n")
    out = tmp_path / "ds"
    cfg = BuildConfig(InputSpec(str(f)), ColumnMapping("u", "i", weight="w"))
    with pytest.raises(DataQualityError, match=r"1 of 3 rows .*weight_not_numeric=1.*--max-reject-share"):
        build_dataset(cfg, out)
    assert not out.exists()
    code = cli_main(["build-dataset", "--events", str(f), "--user-col", "u", "--item-col", "i", "--weight-col", "w", "--out", str(out)])
    assert code == 2
    code = cli_main(["build-dataset", "--events", str(f), "--user-col", "u", "--item-col", "i", "--weight-col", "w",
                     "--max-reject-share", "0.5", "--test-frac", "0", "--out", str(out)])
    assert code == 0 and Dataset.load(out).manifest["rows"]["rejected"] == 1


def test_missing_column_is_a_schema_error(tmp_path: Path) -> None:
    f = tmp_path / "log.csv"
    f.write_text("user,item\n1,2\n")
    with pytest.raises(SchemaError, match=r"\['userId'\]"):
        build_dataset(BuildConfig(InputSpec(str(f)), ColumnMapping("userId", "item")), tmp_path / "ds")


def test_temporal_split_without_time_column_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs timestamps"):
        _config_from(["--events", "x.csv", "--user-col", "u", "--item-col", "i", "--split", "temporal"])


def test_event_weights_threshold_kcore_and_decay(tmp_path: Path) -> None:
    f = tmp_path / "log.csv"
    rows = ["u,i,e,r,t"]
    day = 86_400
    for u in range(4):
        for i in range(4):
            rows.append(f"{u},{i},view,5,{1_700_000_000 + (u + i) * day}")
    rows += ["0,0,purchase,5,1700000000", "9,0,view,5,1700000000", "0,1,cart,1,1700000000"]
    f.write_text("\n".join(rows) + "\n")
    mapping = ColumnMapping("u", "i", weight="r", time="t", event_type="e")
    weights = WeightConfig(weighting="threshold", positive_threshold=4, event_weights={"view": 1, "cart": 3, "purchase": 10})
    cfg = BuildConfig(InputSpec(str(f)), mapping, weights=weights, min_user_interactions=2, min_item_interactions=2,
                      split=SplitConfig(test_frac=0.0, valid_frac=0.0))
    ds = build_dataset(cfg, tmp_path / "ds")
    r = ds.manifest["rows"]
    assert r["below_threshold"] == 1  # the rating-1 cart
    assert r["kcore_removed"] == 1  # user 9 has one interaction
    assert "9" not in ds.user_map
    t = ds.split("train")
    w00 = t.filter((pl.col("user_idx") == ds.user_map.to_index("0")) & (pl.col("item_idx") == ds.item_map.to_index("0")))
    assert w00["weight"].to_list() == [11.0]  # view 1 + purchase 10 (threshold: value -> 1)
    assert w00["event_type"].to_list() == ["purchase"]
    assert "threshold" in ds.manifest["weighting"]["description"]
    # time decay: an interaction one half-life older than the newest counts half
    cfg_decay = BuildConfig(InputSpec(str(f)), mapping, weights=WeightConfig(half_life_days=1.0, event_weights={"view": 1, "cart": 1, "purchase": 1}, aggregate="max"),
                            split=SplitConfig(test_frac=0.0, valid_frac=0.0))
    td = build_dataset(cfg_decay, tmp_path / "decay").split("train")
    newest = td["timestamp"].max()
    w = td.with_columns(age=(newest - pl.col("timestamp")) / 86_400).with_columns(expect=pl.col("rating") * 0.5 ** pl.col("age"))
    assert np.allclose(w["weight"].to_numpy(), w["expect"].to_numpy(), rtol=1e-5)


def test_partitioned_log_with_trailing_window(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    for k, day in enumerate(["2026-11-22", "2026-11-23", "2026-11-24", "2026-11-25"]):
        (logs / f"dt={day}").mkdir(parents=True)
        pl.DataFrame({"u": [f"u{k}", "u9"], "i": [f"i{k}", f"i{k}"]}).write_parquet(logs / f"dt={day}" / "p.parquet")
    cfg = _config_from(["--events", str(logs), "--user-col", "u", "--item-col", "i", "--as-of", "2026-11-24", "--window-days", "2",
                        "--test-frac", "0", "--valid-frac", "0"])
    ds = build_dataset(cfg, tmp_path / "ds")
    assert sorted(ds.item_map.ids) == ["i1", "i2"]
    assert len(ds.manifest["inputs"]["events"]) == 2


def test_flags_override_toml_and_unknown_keys_fail() -> None:
    toml = {"seed": 5, "events": {"path": "a.csv", "user_col": "x", "item_col": "y"}, "split": {"test_frac": 0.3}}
    cfg = _config_from(["--user-col", "userId", "--test-frac", "0.1", "--item-text-cols", "title,genres", "--items", "m.csv"], toml)
    assert cfg.mapping.user == "userId" and cfg.mapping.item == "y"
    assert cfg.split.test_frac == 0.1 and cfg.seed == 5
    assert cfg.item_text_cols == ("title", "genres")
    with pytest.raises(ConfigError, match="unknown key"):
        _config_from([], {**toml, "events": {**toml["events"], "user_column": "oops"}})
    with pytest.raises(ConfigError, match="--item-col"):
        _config_from(["--events", "a.csv", "--user-col", "u"])
    with pytest.raises(ConfigError, match="top level"):
        _config_from([], {**toml, "split": {"seed": 3}})


def test_cli_with_exact_flags_and_replacing_existing_dataset(tmp_path: Path, ml_small_path: Path) -> None:
    out = tmp_path / "ds"
    argv = ["build-dataset", "--events", str(ml_small_path / "ratings.csv"), "--items", str(ml_small_path / "movies.csv"),
            "--user-col", "userId", "--item-col", "movieId", "--weight-col", "rating", "--time-col", "timestamp",
            "--item-id-col", "movieId", "--item-text-cols", "title,genres", "--out", str(out), "--no-hash"]
    assert cli_main(argv) == 0
    first = json.loads((out / "manifest.json").read_text())
    assert cli_main([*argv, "--split", "leave_last_n", "--seed", "7"]) == 0
    ds = Dataset.load(out)
    assert ds.manifest["config"]["split"]["strategy"] == "leave_last_n" and ds.manifest["seed"] == 7
    assert ds.manifest["id_maps"]["users_added"] == 0 and ds.manifest["id_maps"]["n_items"] == first["id_maps"]["n_items"]
    assert set(ds.split("test").group_by("user_idx").len()["len"].to_list()) == {1}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_every_rule_is_counted_the_same_by_the_streaming_pass(tmp_path: Path) -> None:
    f = tmp_path / "log.csv"
    good = [f"u{k},i{k % 5},2,{1_700_000_000 + k},view" for k in range(20)]
    bad = [",i1,2,1700000000,view", "u1,,2,1700000000,view", "u1,i1,2,,view", "u1,i1,2,soon,view", "u1,i1,,1700000000,view",
           "u1,i1,abc,1700000000,view", "u1,i1,nan,1700000000,view", "u1,i1,inf,1700000000,view", "u1,i1,-2,1700000000,view",
           "u1,i1,2,1700000000,", "u1,i1,2,1700000000,teleport"]
    f.write_text("\n".join(["u,i,w,t,e", *good, *bad]) + "\n")
    cfg = BuildConfig(InputSpec(str(f)), ColumnMapping("u", "i", weight="w", time="t", event_type="e"),
                      weights=WeightConfig(event_weights={"view": 1.0}), max_reject_share=1.0,
                      split=SplitConfig(test_frac=0.0, valid_frac=0.0))
    ds = build_dataset(cfg, tmp_path / "ds")
    rows = ds.manifest["rows"]
    assert rows["in"] == 31 and rows["rejected"] == 11 and rows["out"] == 20
    assert sorted(rows["rejected_by_reason"]) == sorted(
        ["user_id_missing", "item_id_missing", "timestamp_missing", "timestamp_unparsable", "weight_missing",
         "weight_not_numeric", "weight_nan", "weight_infinite", "weight_negative", "event_type_missing", "event_type_unknown"]
    )

"""Every command that takes ``--config`` validates it with the typed schema (issue 17 item 3).

``recsys export``, ``recsys embed-content`` and ``recsys rollback`` read their sections through
:mod:`pipelines.config` / :mod:`recsys.config` like ``recsys run``: a typo or a wrong type is a
:class:`ConfigError` naming the key (exit 2), and rollback finds the registered model name of
the run that wrote ``OUT`` without being told.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pipelines.cli import EXIT_BAD_INPUT, main
from pipelines.embed_content import resolve_options
from pipelines.export import index_config
from pipelines.rollback import promotion_section
from recsys.errors import ConfigError


def _export_args(config: Path | None, **flags) -> argparse.Namespace:
    base = {k: None for k in ("n_trees", "search_k", "min_recall", "recall_k", "seed", "n_queries", "exact_max_items",
                              "norm_ranges")}
    return argparse.Namespace(config=config, **{**base, **flags})


def test_export_config_typo_names_the_key_and_the_closest_one(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text("[index]\nn_tress = 10\n")
    with pytest.raises(ConfigError, match=r"n_tress.*did you mean 'n_trees'"):
        index_config(_export_args(cfg))


def test_export_config_wrong_type_is_refused(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text("[index]\nmin_recall = \"high\"\n")
    with pytest.raises(ConfigError, match="min_recall"):
        index_config(_export_args(cfg))


def test_export_flags_override_the_file_and_the_packaged_defaults_fill_the_rest(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text("[index]\nn_trees = 7\nrecall_k = 20\n")
    ic = index_config(_export_args(cfg, n_trees=9))
    assert (ic.n_trees, ic.recall_k) == (9, 20)
    assert ic.max_search_k == 200000  # pipelines/defaults.toml, as in `recsys run`


def test_embed_content_config_wrong_type_exits_2(tmp_path, capsys):
    cfg = tmp_path / "e.toml"
    cfg.write_text("[embed_content]\ndataset = \"x\"\nout = \"y.npz\"\ntfidf_dim = \"wide\"\n")
    assert main(["embed-content", "--config", str(cfg)]) == EXIT_BAD_INPUT
    assert "tfidf_dim" in capsys.readouterr().err


def test_embed_content_flags_override_the_table(tmp_path):
    cfg = tmp_path / "e.toml"
    cfg.write_text("[embed_content]\ndataset = \"d\"\nout = \"o.npz\"\nencoder = \"tfidf\"\ntext_cols = \"title\"\n")
    ns = argparse.Namespace(config=str(cfg), text_cols="title,genres", encoder=None, batch_size=8, log_level="INFO")
    opts = resolve_options(ns)
    assert opts["text_cols"] == ["title", "genres"] and opts["encoder"] == "tfidf" and opts["batch_size"] == 8


def test_rollback_takes_the_registered_model_of_the_run_that_wrote_out(tmp_path):
    out = tmp_path / "out"
    (out / "state").mkdir(parents=True)
    assert promotion_section(argparse.Namespace(out=out, config=None)).registered_model == "recsys"  # packaged default
    (out / "state" / "effective_config.toml").write_text("[promotion]\nregistered_model = \"nightly\"\nalias = \"live\"\n")
    promo = promotion_section(argparse.Namespace(out=out, config=None))
    assert (promo.registered_model, promo.alias) == ("nightly", "live")
    other = tmp_path / "other.toml"
    other.write_text("[promotion]\nregistered_model = \"from-file\"\n")
    assert promotion_section(argparse.Namespace(out=out, config=other)).registered_model == "from-file"


def test_rollback_config_typo_exits_2(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[promotion]\nregisterd_model = \"x\"\n")
    assert main(["rollback", "--out", str(tmp_path), "--config", str(cfg)]) == EXIT_BAD_INPUT
    assert "registered_model" in capsys.readouterr().err

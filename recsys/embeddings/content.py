"""Item text from metadata columns, and content vectors aligned to ``item_idx``.

Why configurable columns: what describes an item differs per catalogue (title + genres
for films, name + brand + description for products). The text is built the same way at
training time and for a brand-new item, so a cold item's vector is comparable to the warm
items' vectors the content->CF mapping was fitted on.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import polars as pl

from recsys.embeddings.cache import EmbeddingCache
from recsys.embeddings.encoders import check_embeddings
from recsys.errors import InputError, SchemaError

log = logging.getLogger(__name__)


def _column_text(col: pl.Series, list_sep: str | None) -> pl.Series:
    """One metadata column rendered as text: lists joined, separators made readable."""
    if col.dtype == pl.List(pl.Utf8) or isinstance(col.dtype, pl.List):
        col = col.cast(pl.List(pl.Utf8)).list.join(", ")
    else:
        col = col.cast(pl.Utf8)
        if list_sep:
            # "Adventure|Animation" reads as a list to a sentence model only with commas
            col = col.str.replace_all(list_sep, ", ", literal=True)
    return col.fill_null("").str.strip_chars()


def item_texts(items: pl.DataFrame, text_cols: Sequence[str], list_sep: str | None = "|", labels: bool = False) -> list[str]:
    """Build one text per row of ``items`` from ``text_cols``.

    Parameters
    ----------
    items : polars.DataFrame
        Item metadata, one row per item.
    text_cols : sequence of str
        Columns in the order they should appear (the most descriptive first: sentence
        models weigh the start of a text most).
    list_sep : str or None
        Separator of multi-valued string columns (MovieLens genres use ``"|"``); replaced
        by ``", "``. List-typed columns are joined with ``", "`` regardless.
    labels : bool
        Prefix every column but the first with ``"<col>: "``.

    Returns
    -------
    list of str
        Non-empty parts joined by ``". "``; a row with no metadata gives ``""``.
    """
    cols = list(text_cols)
    if not cols:
        raise InputError("text_cols is empty; name at least one metadata column, e.g. --text-cols title,genres")
    missing = [c for c in cols if c not in items.columns]
    if missing:
        raise SchemaError(f"item metadata has no column(s) {missing}; available: {items.columns}")
    parts = []
    for j, c in enumerate(cols):
        s = _column_text(items[c], list_sep)
        if labels and j > 0:
            s = pl.when(s != "").then(pl.lit(f"{c}: ") + s).otherwise(pl.lit("")).alias(c)
            s = pl.select(s).to_series()
        parts.append(s.alias(c))
    frame = pl.DataFrame(parts)
    joined = frame.select(
        pl.concat_list([pl.when(pl.col(c) != "").then(pl.col(c)) for c in cols]).list.drop_nulls().list.join(". ").alias("t")
    )["t"]
    return joined.fill_null("").to_list()


def embed_items(
    items: pl.DataFrame,
    text_cols: Sequence[str],
    encoder: Any,
    cache: EmbeddingCache | None = None,
    show_progress: bool | None = None,
    n_items: int | None = None,
    list_sep: str | None = "|",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Content vectors of every item, row ``i`` for ``item_idx == i``.

    Parameters
    ----------
    items : polars.DataFrame
        Must hold ``item_idx`` (contiguous ints, as in a dataset's ``items.parquet``) and
        the ``text_cols``.
    text_cols : sequence of str
    encoder : ContentEncoder
    cache : EmbeddingCache, optional
        When given, only texts missing from the cache are encoded.
    show_progress : bool, optional
        Overrides the encoder's ``show_progress`` (its tqdm bar) for this call; ``None``
        keeps the encoder's own setting.
    n_items : int, optional
        Number of rows of the result (the id map size). Items without a metadata row, or
        with empty text, get a zero vector (the blend flags them as having no content).

    Returns
    -------
    vectors : float32 array (n_items, encoder.dim), unit-norm or zero rows
    stats : dict
        ``n_items``, ``n_texts``, ``n_unique``, ``hits``, ``encoded``, ``hit_rate``
        (1.0 when nothing needed encoding), ``n_empty`` (items with no text),
        ``model_id``, ``dim`` and ``seconds``: what a nightly run logs and tracks.
    """
    if "item_idx" not in items.columns:
        raise SchemaError("item metadata needs an item_idx column (as written by build-dataset)")
    idx = items["item_idx"].cast(pl.Int64).to_numpy()
    if idx.size and idx.min() < 0:
        raise InputError("item_idx must be >= 0")
    if len(np.unique(idx)) != len(idx):
        raise InputError("item metadata has duplicate item_idx rows; keep one row per item")
    n = int(idx.max(initial=-1)) + 1 if n_items is None else int(n_items)
    if idx.size and idx.max() >= n:
        raise InputError(f"item_idx {int(idx.max())} is out of range for n_items={n}")
    texts = item_texts(items, text_cols, list_sep=list_sep)
    t0 = time.perf_counter()
    with _progress(encoder, show_progress):
        if cache is not None:
            vecs = cache.encode(texts, encoder)
            cstats = cache.last_stats.as_dict() if cache.last_stats is not None else {}
        else:
            vecs = check_embeddings(encoder, encoder.encode(texts), len(texts)) if texts else np.zeros((0, int(encoder.dim)), np.float32)
            n_unique = len(set(texts))
            cstats = {"n_texts": len(texts), "n_unique": n_unique, "hits": 0, "encoded": len(texts), "hit_rate": 0.0 if texts else 1.0}
    out = np.zeros((n, vecs.shape[1]), np.float32)
    out[idx] = vecs
    n_empty = n - int((np.linalg.norm(out, axis=1) > 0).sum())
    if n_empty:
        log.warning("%d of %d items have no content text (zero vectors)", n_empty, n)
    stats = {"n_items": n, **cstats, "n_empty": n_empty, "model_id": str(encoder.model_id), "dim": int(out.shape[1]),
             "seconds": round(time.perf_counter() - t0, 3)}
    log.info("embedded %d items with %s: %d encoded, cache hit rate %.1f%% (%.1fs)", n, stats["model_id"],
             stats["encoded"], 100 * stats["hit_rate"], stats["seconds"])
    return out, stats


@contextlib.contextmanager
def _progress(encoder: Any, show_progress: bool | None) -> Iterator[None]:
    """Temporarily set ``encoder.show_progress`` (encoders without the attribute are left alone)."""
    if show_progress is None or not hasattr(encoder, "show_progress"):
        yield
        return
    old = encoder.show_progress
    encoder.show_progress = bool(show_progress)
    try:
        yield
    finally:
        encoder.show_progress = old


def aggregate_tags(tags: pl.DataFrame, item_col: str, tag_col: str = "tag", max_tags: int = 20) -> pl.DataFrame:
    """One row per item with its most frequent tags as a list column ``tags``.

    User tags (MovieLens ``tags.csv``) are extra item text. Note they only exist for items
    people already tagged, i.e. *after* interactions: using them for cold items is a form
    of leakage in an offline evaluation, so the cold-start benchmark reports title+genres.
    """
    for c in (item_col, tag_col):
        if c not in tags.columns:
            raise SchemaError(f"tags table has no column {c!r}; available: {tags.columns}")
    return (
        tags.with_columns(pl.col(tag_col).cast(pl.Utf8).str.to_lowercase().str.strip_chars().alias("_t"))
        .filter(pl.col("_t") != "")
        .group_by(item_col, "_t")
        .len()
        .sort([item_col, "len", "_t"], descending=[False, True, False])
        .group_by(item_col, maintain_order=True)
        .agg(pl.col("_t").head(max_tags).alias("tags"))
    )

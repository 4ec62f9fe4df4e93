"""Embedding cache keyed by sha256(model id, text) and embed_items over an items table."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys.embeddings.cache import EmbeddingCache, text_key
from recsys.embeddings.content import aggregate_tags, embed_items, item_texts
from recsys.embeddings.encoders import TfidfSvdEncoder
from recsys.errors import BundleError, SchemaError
from tests.content_fixtures import CountingEncoder, ml_small_movies


@pytest.fixture(scope="module")
def movies() -> pl.DataFrame:
    return ml_small_movies(600).with_columns(item_idx=pl.int_range(0, 600, dtype=pl.Int32))


@pytest.fixture(scope="module")
def tfidf(movies: pl.DataFrame) -> TfidfSvdEncoder:
    return TfidfSvdEncoder(n_components=16).fit(item_texts(movies, ["title", "genres"]))


def test_second_run_on_unchanged_items_encodes_nothing(movies, tfidf, tmp_path) -> None:
    enc = CountingEncoder(tfidf)
    first, s1 = embed_items(movies, ["title", "genres"], enc, cache=EmbeddingCache(tmp_path))
    assert s1["encoded"] == 600 and s1["hit_rate"] == 0.0
    second, s2 = embed_items(movies, ["title", "genres"], enc, cache=EmbeddingCache(tmp_path))  # a new process
    assert s2["encoded"] == 0 and s2["hit_rate"] == 1.0 and enc.n_encoded == 600
    np.testing.assert_array_equal(first, second)


def test_only_the_100_changed_titles_are_encoded(movies, tfidf, tmp_path) -> None:
    cache = EmbeddingCache(tmp_path)
    embed_items(movies, ["title", "genres"], tfidf, cache=cache)
    changed = movies.with_columns(
        title=pl.when(pl.col("item_idx") < 100).then(pl.col("title") + " (Director's Cut)").otherwise(pl.col("title"))
    )
    enc = CountingEncoder(tfidf)
    vecs, stats = embed_items(changed, ["title", "genres"], enc, cache=EmbeddingCache(tmp_path))
    assert stats["encoded"] == 100 and stats["hits"] == 500
    assert sorted(enc.calls[0]) == sorted(item_texts(changed.head(100), ["title", "genres"]))
    np.testing.assert_allclose(vecs, tfidf.encode(item_texts(changed, ["title", "genres"])), atol=1e-6)


def test_duplicate_texts_are_encoded_once_and_models_do_not_share_vectors(tfidf, movies, tmp_path) -> None:
    cache = EmbeddingCache(tmp_path)
    enc = CountingEncoder(tfidf)
    out = cache.encode(["a film", "a film", "drama"], enc)
    assert enc.n_encoded == 2 and cache.last_stats.n_texts == 3
    np.testing.assert_array_equal(out[0], out[1])
    other = TfidfSvdEncoder(n_components=8).fit(item_texts(movies.head(200), ["title"]))
    cache.encode(["a film"], CountingEncoder(other))
    assert cache.last_stats.encoded == 1  # a new model id misses
    assert text_key("m1", "ab") != text_key("m1a", "b")


def test_compact_merges_shards_without_changing_vectors(tfidf, tmp_path) -> None:
    cache = EmbeddingCache(tmp_path)
    texts = [f"film number {i} drama" for i in range(30)]
    for i in range(3):
        cache.encode(texts[i * 10 : (i + 1) * 10], tfidf)
    before = cache.encode(texts, tfidf)
    assert cache.compact(tfidf.model_id) == 30
    assert len(list(tmp_path.glob("*/shard-*.npz"))) == 1
    fresh = EmbeddingCache(tmp_path)
    np.testing.assert_array_equal(fresh.encode(texts, tfidf), before)
    assert fresh.last_stats.hit_rate == 1.0


def test_a_corrupt_shard_is_reported_with_the_fix(tfidf, tmp_path) -> None:
    cache = EmbeddingCache(tmp_path)
    path = cache.put(tfidf.model_id, ["x"], np.ones((1, tfidf.dim), np.float32))
    path.write_bytes(b"garbage")
    with pytest.raises(BundleError, match="delete it to re-encode"):
        EmbeddingCache(tmp_path).encode(["x"], tfidf)


def test_items_without_metadata_row_or_text_get_zero_vectors(tfidf) -> None:
    items = pl.DataFrame({"item_idx": [0, 2], "title": ["Heat (1995)", None], "genres": ["Action|Crime", None]})
    vecs, stats = embed_items(items, ["title", "genres"], tfidf, n_items=4, show_progress=False)
    assert vecs.shape == (4, tfidf.dim) and stats["n_empty"] == 3
    assert np.linalg.norm(vecs[0]) == pytest.approx(1.0, abs=1e-5)
    assert not vecs[1:].any()
    with pytest.raises(SchemaError, match="no column"):
        embed_items(items, ["plot"], tfidf)


def test_item_texts_join_columns_lists_and_tags_readably() -> None:
    items = pl.DataFrame({"title": ["Heat (1995)", "Up"], "genres": ["Action|Crime", ""], "tags": [["heist", "pacino"], None]})
    assert item_texts(items, ["title", "genres", "tags"]) == ["Heat (1995). Action, Crime. heist, pacino", "Up"]
    tags = pl.DataFrame({"movieId": [1, 1, 1, 2], "tag": ["Pixar", "pixar ", "fun", ""]})
    agg = aggregate_tags(tags, "movieId").sort("movieId")
    assert agg["tags"].to_list() == [["pixar", "fun"]]


def test_a_long_encoding_is_stored_chunk_by_chunk_so_a_crash_loses_one_chunk(movies, tfidf, tmp_path) -> None:
    texts = item_texts(movies.head(10), ["title", "genres"])

    class CrashOnThirdCall(CountingEncoder):
        def encode(self, batch):
            if len(self.calls) == 2:
                raise RuntimeError("killed")
            return super().encode(batch)

    with pytest.raises(RuntimeError, match="killed"):
        EmbeddingCache(tmp_path, chunk_size=4).encode(texts, CrashOnThirdCall(tfidf))
    rerun = CountingEncoder(tfidf)
    vecs = EmbeddingCache(tmp_path, chunk_size=4).encode(texts, rerun)
    assert rerun.n_encoded == 2  # the two chunks done before the crash were kept
    np.testing.assert_allclose(vecs, tfidf.encode(texts), atol=1e-6)

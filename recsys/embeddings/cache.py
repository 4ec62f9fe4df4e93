"""On-disk embedding cache keyed by ``sha256(model_id, text)``.

Why: encoding a catalogue with a sentence model is the slowest step of a nightly run, yet
from one night to the next almost every item's text is unchanged. Keying each vector by a
hash of the encoder identity and the exact text means a run encodes only new or edited
items, and switching encoders (a new ``model_id``) never returns stale vectors.

Layout::

    ROOT/
      <sha256(model_id)[:16]>/        one folder per encoder identity
        model.json                    {"model_id": ..., "dim": ...}
        shard-<time>-<rand>.npz       keys: uint8 (n, 32) digests, vectors: float32 (n, dim)

Every write creates a new shard atomically (temporary name + rename), so a crash never
leaves a half-written shard and concurrent writers never clobber each other. Readers take
the union of shards (the first occurrence of a key wins; all occurrences are equal by
construction). :meth:`EmbeddingCache.compact` merges shards when many small ones pile up.
No pickle is involved anywhere.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys.embeddings.encoders import check_embeddings, check_texts
from recsys.errors import BundleError
from recsys.io import load_npz, read_json, save_npz, write_json
from recsys.progress import Progress

log = logging.getLogger(__name__)


def text_key(model_id: str, text: str) -> bytes:
    """The 32-byte cache key of one text under one encoder identity."""
    h = hashlib.sha256()
    h.update(model_id.encode("utf-8"))
    h.update(b"\x00")  # separator: ("ab", "c") and ("a", "bc") must not collide
    h.update(text.encode("utf-8"))
    return h.digest()


@dataclass(frozen=True)
class CacheStats:
    """What one :meth:`EmbeddingCache.encode` call did.

    ``encoded`` counts texts actually sent to the encoder (unique misses); it is the
    number to watch in a nightly run.
    """

    n_texts: int
    n_unique: int
    hits: int
    encoded: int

    @property
    def hit_rate(self) -> float:
        """Fraction of unique texts served from the cache (1.0 for an empty request)."""
        return 1.0 if self.n_unique == 0 else self.hits / self.n_unique

    def as_dict(self) -> dict[str, Any]:
        return {"n_texts": self.n_texts, "n_unique": self.n_unique, "hits": self.hits, "encoded": self.encoded, "hit_rate": self.hit_rate}


class EmbeddingCache:
    """A directory of content vectors, one namespace per encoder ``model_id``.

    Parameters
    ----------
    root : str or Path
        Created on first write.
    chunk_size : int
        Missing texts are encoded and stored this many at a time (one shard each), so a
        crash or a kill in a long encoding (100k items with MiniLM on a CPU: minutes) loses at
        most one chunk and the rerun resumes from the cache.

    Examples
    --------
    >>> cache = EmbeddingCache("cache/")                    # doctest: +SKIP
    >>> vecs = cache.encode(texts, encoder)                 # doctest: +SKIP
    >>> cache.last_stats.hit_rate                           # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike, chunk_size: int = 20_000) -> None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
            raise BundleError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.root = Path(root)
        self.chunk_size = chunk_size
        self.last_stats: CacheStats | None = None
        self._loaded: dict[str, tuple[dict[bytes, int], np.ndarray]] = {}

    def _dir(self, model_id: str) -> Path:
        return self.root / hashlib.sha256(model_id.encode("utf-8")).hexdigest()[:16]

    def _shards(self, model_id: str) -> list[Path]:
        d = self._dir(model_id)
        return sorted(d.glob("shard-*.npz")) if d.exists() else []

    def _load(self, model_id: str) -> tuple[dict[bytes, int], np.ndarray]:
        """Index of every cached key for ``model_id`` -> row of the stacked vectors."""
        if model_id in self._loaded:
            return self._loaded[model_id]
        d = self._dir(model_id)
        meta_file = d / "model.json"
        if meta_file.exists():
            meta = read_json(meta_file)
            if meta.get("model_id") != model_id:  # a 64-bit prefix collision: refuse to mix
                raise BundleError(f"cache folder {d} belongs to {meta.get('model_id')!r}, not {model_id!r}; use another cache root")
        index: dict[bytes, int] = {}
        blocks: list[np.ndarray] = []
        n = 0
        for shard in self._shards(model_id):
            try:
                z = load_npz(shard)
            except FileNotFoundError:  # removed by a concurrent compact(); its rows are in the merged shard
                continue
            except (OSError, ValueError) as e:
                raise BundleError(f"embedding cache shard {shard} is unreadable ({e}); delete it to re-encode its texts") from e
            keys, vecs = z["keys"], z["vectors"]
            if keys.ndim != 2 or keys.shape[1] != 32 or len(keys) != len(vecs):
                raise BundleError(f"embedding cache shard {shard} is malformed; delete it to re-encode its texts")
            for i, k in enumerate(keys):
                index.setdefault(k.tobytes(), n + i)
            blocks.append(vecs.astype(np.float32, copy=False))
            n += len(keys)
        vectors = np.concatenate(blocks) if blocks else np.zeros((0, 0), np.float32)
        self._loaded[model_id] = (index, vectors)
        return index, vectors

    def __len__(self) -> int:
        """Number of cached vectors over every encoder (unique keys per encoder, summed)."""
        total = 0
        for meta_file in self.root.glob("*/model.json"):
            total += len(self._load(read_json(meta_file)["model_id"])[0])
        return total

    def put(self, model_id: str, texts: list[str], vectors: np.ndarray) -> Path | None:
        """Store vectors for texts as one new shard (atomic); returns its path."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(texts) == 0:
            return None
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise BundleError(f"put(): {len(texts)} texts but vectors of shape {vectors.shape}")
        d = self._dir(model_id)
        meta_file = d / "model.json"
        if not meta_file.exists():
            write_json(meta_file, {"model_id": model_id, "dim": int(vectors.shape[1])})
        elif read_json(meta_file).get("dim") != vectors.shape[1]:
            raise BundleError(f"cache for {model_id!r} holds {read_json(meta_file).get('dim')}-d vectors, got {vectors.shape[1]}-d")
        keys = np.frombuffer(b"".join(text_key(model_id, t) for t in texts), dtype=np.uint8).reshape(-1, 32)
        path = d / f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz"
        save_npz(path, keys=keys, vectors=vectors)
        self._loaded.pop(model_id, None)
        return path

    def encode(self, texts: list[str], encoder: Any) -> np.ndarray:
        """Vectors for ``texts``: cached ones are read, only the rest go to ``encoder``.

        Duplicate texts are encoded once. The result is stored before returning, and the
        hit rate is logged and kept in :attr:`last_stats`.

        Parameters
        ----------
        texts : list of str
        encoder : ContentEncoder (or anything with ``model_id``, ``dim``, ``encode``)

        Returns
        -------
        float32 array (len(texts), encoder.dim)
        """
        texts = check_texts(texts)
        model_id = str(encoder.model_id)
        unique = list(dict.fromkeys(texts))
        index, cached = self._load(model_id)
        keys = [text_key(model_id, t) for t in unique]
        rows = np.array([index.get(k, -1) for k in keys], dtype=np.int64)
        miss = np.flatnonzero(rows < 0)
        hits = len(unique) - len(miss)
        dim = cached.shape[1] if hits else None
        new = None
        if len(miss):
            new = self._encode_missing(model_id, [unique[i] for i in miss], encoder)
            dim = new.shape[1]
        if dim is None:  # nothing requested
            dim = int(encoder.dim)
        out_unique = np.zeros((len(unique), dim), np.float32)
        if hits:
            if cached.shape[1] != dim:
                raise BundleError(f"cached vectors for {model_id!r} are {cached.shape[1]}-d but the encoder gives {dim}-d")
            hit = rows >= 0
            out_unique[hit] = cached[rows[hit]]
        if new is not None:
            out_unique[miss] = new
        self.last_stats = CacheStats(n_texts=len(texts), n_unique=len(unique), hits=hits, encoded=len(miss))
        log.info(
            "embedding cache %s: %d texts, %d unique, %d hits, %d encoded (hit rate %.1f%%)",
            model_id, len(texts), len(unique), hits, len(miss), 100 * self.last_stats.hit_rate,
        )
        pos = {t: i for i, t in enumerate(unique)}
        return out_unique[[pos[t] for t in texts]] if texts else out_unique

    def _encode_missing(self, model_id: str, texts: list[str], encoder: Any) -> np.ndarray:
        """Encode ``texts`` in chunks of ``chunk_size``, storing each chunk as soon as it is done."""
        parts = []
        chunks = range(0, len(texts), self.chunk_size)
        with Progress(f"embedding cache {model_id}: encode", len(texts), "texts", logger=log) as bar:
            for s in chunks:
                part = texts[s : s + self.chunk_size]
                parts.append(check_embeddings(encoder, encoder.encode(part), len(part)))
                self.put(model_id, part, parts[-1])
                bar.update(len(part))
        return np.concatenate(parts)

    def compact(self, model_id: str) -> int:
        """Merge all shards of ``model_id`` into one (duplicates dropped); returns its row count."""
        shards = self._shards(model_id)
        if len(shards) <= 1:
            return len(self._load(model_id)[0])
        self._loaded.pop(model_id, None)
        index, vectors = self._load(model_id)
        rows = np.fromiter(index.values(), dtype=np.int64, count=len(index))
        keys = np.frombuffer(b"".join(index.keys()), dtype=np.uint8).reshape(-1, 32)
        path = self._dir(model_id) / f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz"
        save_npz(path, keys=keys, vectors=vectors[rows])
        for s in shards:
            s.unlink(missing_ok=True)
        self._loaded.pop(model_id, None)
        log.info("compacted %d shards of %s into %s (%d vectors)", len(shards), model_id, path.name, len(rows))
        return len(rows)

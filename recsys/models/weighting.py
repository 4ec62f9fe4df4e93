"""Confidence weighting of implicit feedback before matrix factorization.

Why: iALS treats every stored value as a *confidence* that the user likes the item, and
the raw signal (play counts, ratings, dwell time) is rarely on the right scale. Heavy
users and blockbuster items dominate the loss unless the values are damped (``log``) or
re-weighted by how informative they are (``bm25``/``tfidf``, as in implicit's examples).

Schemes (``r`` = stored value; ``alpha`` is applied on top by the caller):

=========  ===========================================================================
linear     ``r`` (Hu et al. 2008: confidence ``alpha * r``)
log        ``log(1 + r / eps)`` (Hu et al.'s log variant)
binary     ``1`` for every stored interaction
bm25       BM25 as :func:`implicit.nearest_neighbours.bm25_weight` applied to the item x
           user matrix: per-item length normalisation, per-user idf
tfidf      ``sqrt(r) * idf`` as :func:`implicit.nearest_neighbours.tfidf_weight` on the
           item x user matrix
=========  ===========================================================================

``bm25`` depends on per-item statistics of the training matrix (item length norm), so
:func:`item_length_norm` computes them once and fold-in reuses them for new users.
Every function takes and returns a user x item float32 CSR matrix; weights that come out
non-positive (an idf of 0 for a user who saw every item) are clipped to a tiny positive
value so they stay positive evidence instead of turning into implicit's negative feedback.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys.errors import ConfigError

SCHEMES = ("linear", "log", "binary", "bm25", "tfidf")
_MIN_WEIGHT = 1e-6


def check_scheme(scheme: str) -> str:
    """Validate a weighting name (raises :class:`~recsys.errors.ConfigError` naming the options)."""
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown weighting {scheme!r}; choose one of {SCHEMES}")
    return scheme


def _user_idf(user_items: sp.csr_matrix, n_items: int) -> np.ndarray:
    """``log(N_items) - log1p(items per user)``, implicit's idf with items as documents."""
    per_user = np.diff(user_items.indptr).astype(np.float64)
    return np.log(float(n_items)) - np.log1p(per_user)


def item_length_norm(user_items: sp.csr_matrix, B: float = 0.8) -> np.ndarray:
    """BM25 length normalisation per item: ``(1 - B) + B * item_sum / mean(item_sum)``.

    Computed on the *training* matrix and stored with the model, so that folding in a
    new user weights their history exactly as training users were weighted.
    """
    sums = np.asarray(user_items.sum(axis=0)).ravel().astype(np.float64)
    mean = sums.mean() if sums.size and sums.mean() > 0 else 1.0
    return ((1.0 - B) + B * sums / mean).astype(np.float32)


def transform(
    user_items: sp.csr_matrix,
    scheme: str = "linear",
    eps: float = 1.0,
    K1: float = 100.0,
    B: float = 0.8,
    length_norm: np.ndarray | None = None,
    n_items: int | None = None,
) -> sp.csr_matrix:
    """Apply a weighting scheme to a user x item matrix (``alpha`` excluded).

    Parameters
    ----------
    user_items : csr_matrix, float32
    scheme : {"linear", "log", "binary", "bm25", "tfidf"}
    eps : float
        Scale of the ``log`` scheme: ``log(1 + r / eps)``.
    K1, B : float
        BM25 saturation and length-normalisation strength (implicit's defaults).
    length_norm : array, optional
        Per-item BM25 normalisation from :func:`item_length_norm` of the training matrix;
        computed from ``user_items`` when omitted (i.e. when this *is* training data).
    n_items : int, optional
        Number of items (idf's N); defaults to the matrix's column count.

    Returns
    -------
    csr_matrix, float32, same sparsity pattern
    """
    check_scheme(scheme)
    m = sp.csr_matrix(user_items, dtype=np.float32)
    if scheme == "linear":
        return m
    out = m.copy()
    data = out.data.astype(np.float64)
    if scheme == "log":
        if eps <= 0:
            raise ConfigError(f"log weighting needs eps > 0, got {eps}")
        data = np.log1p(data / eps)
    elif scheme == "binary":
        data = np.ones_like(data)
    else:
        idf = _user_idf(m, n_items or m.shape[1])
        rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
        if scheme == "tfidf":
            data = np.sqrt(data) * idf[rows]
        else:
            if length_norm is None:
                length_norm = item_length_norm(m, B)
            norm = np.asarray(length_norm, np.float64)[m.indices]
            data = data * (K1 + 1.0) / (K1 * norm + data) * idf[rows]
    out.data = np.maximum(data, _MIN_WEIGHT).astype(np.float32)
    return out


def confidence(
    user_items: sp.csr_matrix,
    scheme: str = "linear",
    alpha: float = 1.0,
    eps: float = 1.0,
    K1: float = 100.0,
    B: float = 0.8,
) -> sp.csr_matrix:
    """``alpha * transform(user_items, scheme)``: the confidence matrix iALS trains on."""
    if alpha <= 0:
        raise ConfigError(f"alpha must be > 0, got {alpha}")
    out = transform(user_items, scheme, eps=eps, K1=K1, B=B)
    if alpha != 1.0:
        out.data = out.data * np.float32(alpha)
    return out

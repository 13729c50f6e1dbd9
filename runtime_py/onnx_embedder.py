"""The bundle's ONNX embedder on onnxruntime (no torch imported)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memlora.errors import MemloraError

from .bundle_embedder import BundleEmbedder, open_section
from .onnx_backend import THREADS, session_options


class OnnxEmbedder(BundleEmbedder):
    name = "onnx"

    def __init__(self, bundle, section: dict, threads: int = THREADS):
        import onnxruntime as ort

        super().__init__(bundle, section, "onnx")
        self.output = section["output"]
        try:
            self.session = ort.InferenceSession(str(self.path), session_options(threads),
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
            raise MemloraError(f"{self.path}: onnxruntime cannot load this embedder ({e})") from e

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {"input_ids": ids, "attention_mask": mask})[0]


def from_bundle(bundle_dir: Path, threads: int | None = None, verify: bool = True) -> OnnxEmbedder:
    return OnnxEmbedder(*open_section(bundle_dir, "onnx", verify), threads=threads or THREADS)

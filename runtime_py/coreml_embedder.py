"""The bundle's Core ML embedder (fp16 mlprogram): Core ML itself on macOS, the MIL interpreter elsewhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .bundle_embedder import BundleEmbedder, open_section
from .coreml_backend import default_engine


class CoreMLEmbedder(BundleEmbedder):
    name = "coreml"

    def __init__(self, bundle, section: dict, engine: str | None = None):
        super().__init__(bundle, section, "coreml")
        self.output = section["output"]
        self.engine = engine or default_engine()
        if self.engine == "coreml":
            import coremltools as ct

            self.model = ct.models.MLModel(str(self.path), compute_units=ct.ComputeUnit.CPU_AND_NE)
        else:
            from .mil_interpreter import MILModel

            self.model = MILModel(self.path)

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = self.model.predict({"input_ids": ids, "attention_mask": mask})[self.output]
        return np.asarray(out, dtype=np.float32)


def from_bundle(bundle_dir: Path, threads: int | None = None, verify: bool = True,
                engine: str | None = None) -> CoreMLEmbedder:
    return CoreMLEmbedder(*open_section(bundle_dir, "coreml", verify), engine=engine)

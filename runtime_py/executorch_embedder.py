"""The bundle's ExecuTorch embedder (XNNPACK) on ``executorch.runtime``, one text per call (the program's batch
is 1: see `memlora.export.embedder`). The pybindings take torch tensors, so this path imports torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memlora.errors import MemloraError

from .bundle_embedder import BundleEmbedder, open_section


class ExecuTorchEmbedder(BundleEmbedder):
    name = "executorch"

    def __init__(self, bundle, section: dict):
        from executorch.runtime import Runtime

        super().__init__(bundle, section, "executorch")
        try:
            self.method = Runtime.get().load_program(self.path).load_method("forward")
        except Exception as e:  # the pybinding raises RuntimeError/ValueError for unreadable programs
            raise MemloraError(f"{self.path}: ExecuTorch cannot load this embedder ({e})") from e

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch

        out = self.method.execute([torch.from_numpy(ids), torch.from_numpy(mask)])
        return out[0].numpy().astype(np.float32, copy=False)


def from_bundle(bundle_dir: Path, threads: int | None = None, verify: bool = True) -> ExecuTorchEmbedder:
    """`threads` is the process-wide threadpool the decoder backend sizes; not set here twice."""
    return ExecuTorchEmbedder(*open_section(bundle_dir, "executorch", verify))

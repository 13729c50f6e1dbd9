"""Backend names -> constructors. Runtimes are imported only when chosen, so `memlora ask` on one backend
never pays for importing the others."""

from __future__ import annotations

import importlib
from pathlib import Path

from memlora.backend import Backend
from memlora.errors import MemloraError

BUNDLE_BACKENDS = {
    "onnx": "memlora.runtime.onnx_backend",
    "executorch": "memlora.runtime.executorch_backend",
    "coreml": "memlora.runtime.coreml_backend",
}
NAMES = ("torch", *BUNDLE_BACKENDS)


def open_backend(
    name: str,
    bundle: Path | None = None,
    model: Path | None = None,
    adapters: Path | None = None,
    adapter_mode: str = "separable",
) -> tuple[Backend, Path]:
    """Open backend `name`; returns it with the directory holding its tokenizer files."""
    if name == "torch":
        from .torch_backend import TorchBackend

        if model is None:
            raise MemloraError("the torch backend needs a model directory (run `memlora setup` first)")
        return TorchBackend(model, adapters, mode=adapter_mode if adapters else "none"), Path(model)
    if name not in BUNDLE_BACKENDS:
        raise MemloraError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)}")
    if bundle is None:
        raise MemloraError(f"the {name} backend runs an exported bundle: pass --bundle DIR (see `memlora export`)")
    module = importlib.import_module(BUNDLE_BACKENDS[name])
    backend = module.from_bundle(Path(bundle))
    return backend, Path(bundle) / "tokenizer"

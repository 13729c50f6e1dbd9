"""A target is a backend name plus a bundle: its Backend, precision and recipe from the manifest, its size,
and (when the runtime offers one) a hidden-state probe for localisation.

Anything that implements `memlora.backend.Backend` can be judged: `Target` can also be built directly
around a backend object (e.g. a program built outside `memlora export`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from memlora.backend import Backend
from memlora.export.bundle import Bundle
from memlora.recipe import QuantRecipe

from .coreml_probe import CoreMLHiddenProbe
from .executorch_probe import ExecuTorchHiddenProbe
from .localise import HiddenProbe
from .onnx_probe import OnnxHiddenProbe


@dataclass
class Target:
    name: str
    backend: Backend
    recipe: QuantRecipe
    mode: str = "separable"
    size_bytes: int | None = None
    probe: HiddenProbe | None = None
    files: list[str] = field(default_factory=list)

    @property
    def precision(self) -> str:
        """The scheme thresholds are keyed by."""
        return self.recipe.scheme


def _probe(name: str, bundle: Bundle, entry: dict) -> HiddenProbe | None:
    """The runtime's debug view, if it has one: ONNX graphs with extra outputs, the Core ML program's
    intermediate variables in the MIL interpreter, the ExecuTorch program's delegate arguments in ETDump."""
    makers = {"onnx": OnnxHiddenProbe, "coreml": CoreMLHiddenProbe, "executorch": ExecuTorchHiddenProbe}
    if name not in makers:
        return None

    @functools.cache
    def probe() -> HiddenProbe:  # built on first use: it may hold a second copy of the weights
        return makers[name](bundle.path, entry)

    return lambda tokens, adapter: probe()(tokens, adapter)


def open_target(bundle: Bundle, name: str) -> Target:
    from memlora.runtime.registry import open_backend

    entry = bundle.target(name)
    backend, _ = open_backend(name, bundle.path)
    files = entry.get("files", [])
    return Target(
        name=name,
        backend=backend,
        recipe=bundle.recipe(name),
        mode=entry["mode"],
        size_bytes=sum((bundle.path / f).stat().st_size for f in files),
        probe=_probe(name, bundle, entry),
        files=files,
    )

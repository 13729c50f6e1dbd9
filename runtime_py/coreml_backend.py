"""Core ML backend: the Core ML target of a bundle behind the `memlora.backend.Backend` interface.

The bundle holds one multifunction mlprogram (``coreml/model.mlpackage``, see `memlora.export.coreml_export`)
with a function per adapter and a stateful KV cache. Two engines run it:

- ``coreml``: `coremltools.models.MLModel(..., function_name=...)` with ``make_state`` / ``predict`` --
  the real Core ML runtime, macOS 15+ only.
- ``interpreter``: `memlora.runtime.mil_interpreter`, which executes the same saved program with numpy in
  the precision it declares -- how the model's numbers are checked on Linux.

The default is ``coreml`` on macOS and ``interpreter`` elsewhere. The cache position of a call is given to
the program by the shape of its causal mask (``[1, 1, T, start + T]``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from memlora.backend import CheckedBackend
from memlora.errors import MemloraError

ENGINES = ("interpreter", "coreml")


def default_engine() -> str:
    return "coreml" if sys.platform == "darwin" else "interpreter"


def causal_mask(start: int, count: int) -> np.ndarray:
    """fp16 additive mask for `count` queries at positions ``start..``: [1, 1, count, start + count]."""
    key = np.arange(start + count)[None, :]
    query = np.arange(start, start + count)[:, None]
    return np.where(key <= query, 0.0, -np.inf).astype(np.float16)[None, None]


class _InterpreterEngine:
    """One set of cache states, made fresh by `reset(function)`, which the backend calls before a function's
    first `predict` (an adapter change starts a new sequence)."""

    def __init__(self, package: Path):
        from .mil_interpreter import MILModel

        self.model = MILModel(package)
        self.state = None

    def reset(self, function: str) -> None:
        self.state = self.model.make_state(function)

    def predict(self, function: str, inputs: dict) -> np.ndarray:
        return self.model.predict(inputs, self.state, function)["logits"]


class _CoreMLEngine:
    """One loaded model per function and the MLState of the current one, made by `reset(function)` before
    the function's first `predict`: Core ML states belong to the function that made them."""

    def __init__(self, package: Path):
        self.package = package
        self.models: dict = {}
        self.states: dict = {}

    def _model(self, function: str):
        if function not in self.models:
            import coremltools as ct

            self.models[function] = ct.models.MLModel(
                str(self.package), function_name=function, compute_units=ct.ComputeUnit.CPU_AND_NE
            )
        return self.models[function]

    def reset(self, function: str) -> None:
        self.states = {function: self._model(function).make_state()}

    def predict(self, function: str, inputs: dict) -> np.ndarray:
        return self._model(function).predict(inputs, state=self.states[function])["logits"]


class CoreMLBackend(CheckedBackend):
    """Runs a multifunction Core ML decoder exported by `memlora.export.coreml_export`."""

    name = "coreml"

    def __init__(self, package: Path, functions: dict[str | None, str], max_context: int, engine: str | None = None):
        """`functions` maps an adapter name (``None`` = base model) to its function in the package."""
        self.package = Path(package)
        self.functions = functions
        self.adapters = tuple(k for k in functions if k is not None)
        self.max_context = max_context
        self.engine_name = engine or default_engine()
        if self.engine_name not in ENGINES:
            raise MemloraError(f"unknown Core ML engine {self.engine_name!r}; choose one of {ENGINES}")
        if not self.package.is_dir():
            raise MemloraError(f"{self.package}: Core ML package is missing")
        self.vocab = logits_size(self.package, next(iter(functions.values())))
        self.engine = (_CoreMLEngine if self.engine_name == "coreml" else _InterpreterEngine)(self.package)
        self._last: str | None = None

    def _run(self, tokens: list[int], start: int, adapter: str | None, all_logits: bool) -> np.ndarray:
        """The cache of the function last run is kept across sequences: positions >= start are overwritten
        and the causal mask hides later ones, so only a new function needs fresh states."""
        function = self.functions[adapter]
        count = len(tokens)
        if start == 0 and function != self._last:
            self.engine.reset(function)
        self._last = function
        inputs = {"input_ids": np.asarray([tokens], dtype=np.int32), "causal_mask": causal_mask(start, count)}
        logits = np.asarray(self.engine.predict(function, inputs), dtype=np.float32)[0]
        return logits if all_logits else logits[-1:]


def logits_size(package: Path, function: str) -> int:
    """The vocabulary size: the last dimension of `function`'s ``logits`` output in the package's program
    (the spec's feature description carries no shapes; the op that writes ``logits`` does)."""
    from memlora.mlpackage import load_spec, parse_type

    spec_path, spec = load_spec(package)
    programs = spec.mlProgram.functions
    blocks = programs[function].block_specializations.values() if function in programs else ()
    outputs = (o for block in blocks for op in block.operations for o in op.outputs if o.name == "logits")
    shape = next((parse_type(o.type).shape for o in outputs), None)
    if not shape or shape[-1] is None:
        raise MemloraError(f"{spec_path}: function {function!r} has no logits output of a fixed vocabulary size")
    return int(shape[-1])


def from_bundle(bundle_dir: Path, engine: str | None = None, threads: int | None = None) -> CoreMLBackend:
    """Open the Core ML target of a bundle (checksums and schema verified) as a Backend. Neither engine takes
    a thread count, so `threads` is refused rather than ignored."""
    from memlora.export.bundle import load_bundle

    if threads:
        raise MemloraError(f"--threads {threads}: the coreml backend has no thread setting")
    bundle = load_bundle(Path(bundle_dir))
    target = bundle.target("coreml")
    functions = {(None if k == "base" else k): v for k, v in target["functions"].items()}
    return CoreMLBackend(bundle.path / target["graphs"]["base"], functions, target["max_context"], engine)

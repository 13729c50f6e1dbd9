"""A debug view of a Core ML target: the bundle's own program, run by the MIL interpreter, read at the
residual stream.

Nothing is re-exported or modified: the interpreter runs the package's function for the adapter and hands
out intermediate variables (`MILModel.predict(keep=...)`). The variables are found by structure, the same in
every function (merged, separable, any quantization): the embeddings are the ``gather`` whose indices are
``input_ids`` (through casts), and each decoder layer adds to the residual stream twice (attention, then
MLP), so the stream is the chain of ``add`` ops each taking the previous stream value; every second one is a
layer's output. The norms read the stream too, but never with an ``add`` (their ``+ eps`` adds to a mean).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memlora.errors import MemloraError


def _inputs(op) -> list[str]:
    return [b.name for arg in op.inputs.values() for b in arg.arguments if b.WhichOneof("binding") == "name"]


def residual_stream(block) -> list[str]:
    """Names of the embedding output and each layer's output in a converted decoder's MIL block, in order."""
    ids = {"input_ids"}
    stream: list[str] = []
    for op in block.operations:
        args, outs = _inputs(op), [o.name for o in op.outputs]
        if not stream:
            if op.type == "cast" and op.inputs["x"].arguments[0].name in ids:
                ids.add(outs[0])
            elif op.type == "gather" and op.inputs["indices"].arguments[0].name in ids:
                stream.append(outs[0])
        elif op.type == "add" and stream[-1] in args:
            stream.append(outs[0])
    adds = len(stream) - 1
    if not stream or adds == 0 or adds % 2:
        raise MemloraError(f"Core ML program: found {len(stream)} embedding output(s) and {adds} residual adds "
                           "(expected two per layer); cannot find per-layer outputs")
    return [stream[0], *stream[2::2]]


class CoreMLHiddenProbe:
    """``probe(tokens, adapter)`` -> hidden states of the bundle's Core ML function for `adapter`."""

    def __init__(self, bundle_dir: Path, entry: dict):
        from memlora.runtime.mil_interpreter import MILModel

        self.model = MILModel(Path(bundle_dir) / entry["graphs"]["base"])
        self.functions = {None if k == "base" else k: v for k, v in entry["functions"].items()}
        self._names: dict[str, list[str]] = {}

    def __call__(self, tokens: list[int], adapter: str | None) -> list[np.ndarray]:
        from memlora.runtime.coreml_backend import causal_mask

        if adapter not in self.functions:
            raise MemloraError(f"Core ML target has no function for adapter {adapter!r}")
        function = self.functions[adapter]
        if function not in self._names:
            self._names[function] = residual_stream(self.model.block(function))
        names = self._names[function]
        inputs = {"input_ids": np.asarray([tokens], np.int32), "causal_mask": causal_mask(0, len(tokens))}
        out = self.model.predict(inputs, self.model.make_state(function), function, keep=names)
        return [out[n][0].astype(np.float32) for n in names]

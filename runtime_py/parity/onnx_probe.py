"""A debug view of an ONNX target: the same graphs with every layer's output added as a graph output.

The exporter traces `export.decoder`, and the torch exporter records each node's module scope in its
metadata (``pkg.torch.onnx.name_scopes``): a layer's output is the last node directly in scope
``decoder.layers.<i>`` (the second residual add, or the SkipSimplifiedLayerNormalization it was fused
into), the embeddings the last node in ``decoder.embed_tokens``.
The debug graphs are written to a temporary directory next to hard links (or, across file systems, copies) of
the bundle's weight files, so the bundle itself is never touched. Not symlinks: onnxruntime refuses external
data that resolves outside the model's directory.
"""

from __future__ import annotations

import ast
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from memlora.errors import MemloraError

SCOPES = "pkg.torch.onnx.name_scopes"


def hidden_outputs(model) -> list[str]:
    """Names of the embedding output and each layer's output, in order."""
    last: dict[str, str] = {}
    for node in model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        if SCOPES not in meta:
            continue
        scopes = ast.literal_eval(meta[SCOPES])
        if len(scopes) >= 2 and (scopes[1] == "decoder.embed_tokens" or
                                 (scopes[1].startswith("decoder.layers.") and len(scopes) == 3)):
            # a residual add fused with the next norm keeps the add's scope; its sum is the 4th output
            last[scopes[1]] = node.output[3] if node.op_type == "SkipSimplifiedLayerNormalization" else node.output[0]
    layers = sorted((k for k in last if k.startswith("decoder.layers.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if "decoder.embed_tokens" not in last or not layers:
        raise MemloraError("ONNX graph carries no module-scope metadata; cannot find per-layer outputs")
    return [last["decoder.embed_tokens"]] + [last[k] for k in layers]


def _link(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


class OnnxHiddenProbe:
    """``probe(tokens, adapter)`` -> hidden states from debug copies of a bundle's ONNX graphs."""

    def __init__(self, bundle_dir: Path, entry: dict):
        import onnx
        import onnxruntime as ort

        from memlora.runtime.onnx_backend import read_adapter, session_options

        self._dir = tempfile.TemporaryDirectory(prefix="memlora-onnx-probe-")
        root = Path(bundle_dir)
        self.sessions: dict[str | None, object] = {}
        self.outputs: list[str] = []
        for key, rel in entry["graphs"].items():
            src = root / rel
            model = onnx.load(str(src), load_external_data=False)
            self.outputs = hidden_outputs(model)
            for name in self.outputs:
                model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            for init in model.graph.initializer:
                for kv in init.external_data:
                    if kv.key == "location" and not (Path(self._dir.name) / kv.value).exists():
                        _link(src.parent / kv.value, Path(self._dir.name) / kv.value)
            path = Path(self._dir.name) / Path(rel).name
            onnx.save_model(model, str(path))
            self.sessions[None if key == "base" else key] = ort.InferenceSession(
                str(path), session_options(), providers=["CPUExecutionProvider"])
        self.params = {name: {k: v.numpy().copy() for k, v in read_adapter(root / rel).items()}  # own the memory
                       for name, rel in entry.get("adapter_files", {}).items()}

    def __call__(self, tokens: list[int], adapter: str | None) -> list[np.ndarray]:
        session = self.sessions.get(adapter, self.sessions[None])
        n = len(tokens)
        known = {"input_ids": np.asarray([tokens], np.int64), "attention_mask": np.ones((1, n), np.int64)}
        feeds = {}
        for i in session.get_inputs():
            if i.name in known:
                feeds[i.name] = known[i.name]
            elif i.name.startswith(("past_key_values.", "lora.")):  # empty cache; LoRA zeros = base model
                feeds[i.name] = np.zeros(i.shape, np.float32)
        if adapter in self.params and adapter not in self.sessions:
            feeds.update(self.params[adapter])
        return [h[0] for h in session.run(self.outputs, feeds)]

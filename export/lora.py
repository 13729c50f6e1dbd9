"""PEFT LoRA adapters for the export-friendly decoder: load, check against the base, unify for separable use.

An adapter is read from a PEFT directory (``adapter_config.json`` + ``adapter_model.safetensors``). Its
scale (``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA, per-module ``alpha_pattern`` honoured) is folded
into B, so every runtime computes ``y = x W^T + (x A^T) B^T`` with no scale constant. That is what lets
separable adapters share one graph: runtimes bake a scale and fixed shapes into the graph, so adapters
with different alphas, ranks or target sets are brought to one slot layout -- the union of targets and
the largest rank, padded with zeros (exact: zero rows/columns add nothing).

API::

    adapters = load_adapters(adapters_dir, config)     # {name: Adapter}, one per subdirectory
    adapter = load_adapter(path, config, name)          # checked against the base: names and shapes
    slots = unify_slots(adapters.values())              # LoraSlots(targets, rank) for one shared graph
    decoder = Decoder.from_pretrained(model_dir, lora=slots); fill_slots(decoder, adapter)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from memlora.adapters import check_rank, find_adapters, pattern_value, read_config
from memlora.checksum import sha256_file
from memlora.errors import MemloraError

from .decoder import ATTN_TARGETS, FUSED, LORA_TARGETS, Decoder, DecoderConfig, LoraSlots

_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


@dataclass
class Adapter:
    """One LoRA adapter with its scale folded into B: ``weights[module] = (A [r, in], scale * B [out, r])``."""

    name: str
    path: Path
    rank: int
    alpha: float
    targets: tuple[str, ...]
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
    sha256: str

    def manifest_entry(self) -> dict:
        return {"name": self.name, "rank": self.rank, "alpha": self.alpha, "targets": list(self.targets),
                "sha256": self.sha256}


def expected_shape(config: DecoderConfig, target: str) -> tuple[int, int]:
    """(out_features, in_features) of a projection in the base model."""
    d, f, hd = config.hidden_size, config.intermediate_size, config.head_dim
    return {
        "q_proj": (config.num_heads * hd, d),
        "k_proj": (config.num_kv_heads * hd, d),
        "v_proj": (config.num_kv_heads * hd, d),
        "o_proj": (d, config.num_heads * hd),
        "gate_proj": (f, d),
        "up_proj": (f, d),
        "down_proj": (d, f),
    }[target]


def load_adapter(path: Path, config: DecoderConfig, name: str | None = None) -> Adapter:
    """Read a PEFT adapter and check every tensor against the base (known module, layer, and shape) and its
    rank against the config's, which PEFT and the scale below go by."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    cfg = read_config(path)
    weights_path = path / "adapter_model.safetensors"
    try:
        raw = load_file(weights_path)
    except (OSError, SafetensorError) as e:
        raise MemloraError(f"{weights_path}: cannot read adapter weights ({e})") from e
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in raw.items():
        m = _KEY.match(key)
        if not m or m.group(3) not in LORA_TARGETS:
            raise MemloraError(f"{weights_path}: tensor {key} is not a LoRA weight of a Llama-family projection")
        layer, block, target, ab = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        if layer >= config.num_layers or (block == "self_attn") != (target in ATTN_TARGETS):
            raise MemloraError(
                f"{weights_path}: {key} does not exist in the base model ({config.num_layers} layers): "
                "this adapter was trained for another base"
            )
        pairs.setdefault(f"layers.{layer}.{block}.{target}", {})[ab] = tensor.to(torch.float32)
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise MemloraError(f"{weights_path}: {module} has lora_{'A' if 'A' in ab else 'B'} only")
        a, b = ab["A"], ab["B"]
        out_f, in_f = expected_shape(config, module.rsplit(".", 1)[1])
        r = a.shape[0]
        if a.shape != (r, in_f) or b.shape != (out_f, r):
            raise MemloraError(
                f"{weights_path}: {module} has A {tuple(a.shape)} and B {tuple(b.shape)}, the base needs "
                f"A (r, {in_f}) and B ({out_f}, r): this adapter was trained for another base"
            )
        check_rank(path, cfg, module, f"base_model.model.model.{module}.lora_A.weight", r)
        alpha = float(pattern_value(cfg.get("alpha_pattern") or {}, module, cfg["lora_alpha"]))
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        weights[module] = (a, b * scale)
    if not weights:
        raise MemloraError(f"{weights_path}: the adapter has no LoRA weights")
    targets = tuple(t for t in LORA_TARGETS if any(m.endswith("." + t) for m in weights))
    return Adapter(
        name=name or path.name,
        path=path,
        rank=max(a.shape[0] for a, _ in weights.values()),
        alpha=float(cfg["lora_alpha"]),
        targets=targets,
        weights=weights,
        sha256=sha256_file(weights_path),
    )


def load_adapters(adapters_dir: Path, config: DecoderConfig) -> dict[str, Adapter]:
    """Every operation adapter under `adapters_dir` (``<op>/adapter_config.json``), in operation order."""
    return {n: load_adapter(p, config, n) for n, p in find_adapters(Path(adapters_dir)).items()}


def unify_slots(adapters: Iterable[Adapter]) -> LoraSlots:
    """One slot layout every adapter fits: union of targets, largest rank (smaller ones are zero-padded)."""
    adapters = list(adapters)
    targets = {t for a in adapters for t in a.targets}
    return LoraSlots(tuple(t for t in LORA_TARGETS if t in targets), max(a.rank for a in adapters))


def slot_tensors(decoder: Decoder, adapter: Adapter | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The (A, B) each slot of `decoder` holds for `adapter`, shaped like the slot: transposed from PEFT's
    layout, zero-padded to the slot rank, zero if absent. A fused slot (``qkv_proj``, ``gate_up_proj``)
    holds its members side by side in A (member i owns columns ``i*r ..``) and its B per output chunk
    (see `LoraLinear`): chunk j holds, from the member feeding it, the B columns of its output span."""
    slots = decoder.lora_modules()
    members = {
        module: [f"{module.rsplit('.', 1)[0]}.{m}" for m in FUSED.get(module.rsplit(".", 1)[1], (module.rsplit(".", 1)[1],))]
        for module in slots
    }
    if adapter is not None:
        covered = {m for ms in members.values() for m in ms}
        extra = sorted(set(adapter.weights) - covered)
        if extra:
            raise MemloraError(f"{adapter.path}: adapter {adapter.name} targets {extra[0]}, which has no LoRA slot")
    out = {}
    for module, lin in slots.items():
        a, b = torch.zeros_like(lin.lora_a), torch.zeros_like(lin.lora_b)
        rank = lin.rank // len(members[module])
        for i, member in enumerate(members[module]):
            if adapter is None or member not in adapter.weights:
                continue
            src_a, src_b = adapter.weights[member]
            r = src_a.shape[0]
            if r > rank:
                raise MemloraError(f"{adapter.path}: adapter {adapter.name} has rank {r} > slot rank {rank}")
            a[:, i * rank : i * rank + r] = src_a.T
            if not lin.chunks:
                b[:r] = src_b.T
                continue
            width = b.shape[-1]
            own = [j for j, m in enumerate(lin.chunks) if m == i]
            for k, j in enumerate(own):
                b[j, :r] = src_b.T[:, k * width : (k + 1) * width]
        out[module] = (a, b)
    return out


def slot_arrays(decoder: Decoder, adapter: Adapter | None, name: Callable[[str, str], str]) -> dict[str, np.ndarray]:
    """`slot_tensors` as contiguous numpy arrays keyed ``name(module, "a" | "b")``: the form every exporter
    writes LoRA constants in (ONNX initializers and adapter files, Core ML weight blobs)."""
    return {name(module, ab): t.contiguous().numpy()
            for module, pair in slot_tensors(decoder, adapter).items() for ab, t in zip("ab", pair)}


def fill_slots(decoder: Decoder, adapter: Adapter | None) -> None:
    """Copy `adapter` into the decoder's LoRA slots (zeros where it has no weights)."""
    modules = decoder.lora_modules()
    with torch.no_grad():
        for module, (a, b) in slot_tensors(decoder, adapter).items():
            modules[module].lora_a.copy_(a)
            modules[module].lora_b.copy_(b)


def stack_adapters(decoder: Decoder, adapters: dict[str, Adapter]) -> dict[str, tuple[int, int]]:
    """Hold every adapter in the decoder's slots at once, side by side (`LoraLinear.stack`), and return each
    one's rank columns ``[start, stop)`` of the gate that selects it. One module then serves every adapter
    with one copy of the base weights; the gate, an input, says which adapter is active (zeros: none)."""
    per = [slot_tensors(decoder, a) for a in adapters.values()]
    with torch.no_grad():
        for module, lin in decoder.lora_modules().items():
            lin.stack(torch.cat([p[module][0] for p in per], dim=1), torch.cat([p[module][1] for p in per], dim=0))
    rank = decoder.slots.rank
    return {name: (k * rank, (k + 1) * rank) for k, name in enumerate(adapters)}


def gate_vector(width: int, span: tuple[int, int] | None) -> np.ndarray:
    """The gate that turns on the rank columns `span` of a stacked slot of `width` columns (None: no adapter)."""
    gate = np.zeros(width, np.float32)
    if span is not None:
        gate[span[0] : span[1]] = 1.0
    return gate

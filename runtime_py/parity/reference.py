"""The two references a target is judged against.

1. `fp32_reference`: the transformers+peft pipeline in fp32 -- what users care about.
2. `DecoderReference`: the export-friendly decoder every exporter starts from, with the target's
   quantization recipe simulated in torch (weights quantize-dequantized as the runtime stores them,
   activations quantized the way its kernel does). The gap reference -> decoder reference is quantization
   error; the gap decoder reference -> target is conversion error (what the exporter or runtime broke).
"""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

from memlora.errors import MemloraError
from memlora.export.decoder import Decoder, LoraLinear
from memlora.export.lora import Adapter, fill_slots, unify_slots


def fp32_reference(model_dir: Path, adapters_dir: Path):
    from memlora.runtime.torch_backend import TorchBackend

    return TorchBackend(model_dir, adapters_dir, mode="separable")


def quantize_weight(w: torch.Tensor, bits: int, block_size: int | None) -> torch.Tensor:
    """Symmetric blockwise quantize-dequantize along the input dimension, as onnxruntime's MLAS does it: the
    value of largest magnitude in a block maps to the most negative code (-2^(bits-1)), no zero point."""
    out, k = w.shape
    bs = block_size or k
    blocks = nn.functional.pad(w, (0, (-k) % bs)).view(out, -1, bs)
    vmax = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    scale = vmax / lo
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.clamp(torch.round(blocks / scale), lo, hi)
    return (q * scale).view(out, -1)[:, :k].contiguous()


def quantize_activation(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Dynamic symmetric int8 quantize-dequantize of activations in blocks along the last dimension (what a
    MatMulNBits kernel at accuracy_level 4 feeds its int8 dot products)."""
    k = x.shape[-1]
    blocks = nn.functional.pad(x, (0, (-k) % block_size)).unflatten(-1, (-1, block_size))
    scale = blocks.abs().amax(-1, keepdim=True) / 127
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return (torch.clamp(torch.round(blocks / scale), -127, 127) * scale).flatten(-2)[..., :k]


def simulation(recipe: dict) -> dict:
    """How a manifest quantization recipe is simulated: bits, block size, activation blocks, exactness."""
    scheme = recipe.get("scheme", "fp32")
    if scheme == "fp32":
        return {"bits": None, "exact": True}
    bits = int(recipe.get("bits", {"int8": 8, "int4": 4}[scheme]))
    block = recipe.get("block_size", recipe.get("group_size"))
    if recipe.get("op") == "com.microsoft::MatMulNBits":
        act = block if recipe.get("accuracy_level") == 4 else None
        return {"bits": bits, "block_size": block, "act_block": act, "lm_head": True, "exact": True}
    # recipes of other runtimes: weights as recorded, activations if the recipe says they are dynamic-int8
    act = block if recipe.get("activations") in ("int8", "dynamic_int8") else None
    return {"bits": bits, "block_size": block, "act_block": act, "lm_head": bool(recipe.get("lm_head", True)),
            "exact": False}


def _quantized_forward(act_block: int | None):
    def forward(self: LoraLinear, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.linear(quantize_activation(x, act_block) if act_block else x, self.weight, self.bias)
        if self.rank:  # the LoRA branch stays float on the float input, as in the exported graphs
            y = y + self.lora(x)
        return y

    return forward


def apply_recipe(decoder: Decoder, sim: dict) -> None:
    """Quantize `decoder`'s base linear weights in place (and its output head) as `sim` describes."""
    if sim["bits"] is None:
        return
    with torch.no_grad():
        for module in decoder.modules():
            if isinstance(module, LoraLinear):
                module.weight.copy_(quantize_weight(module.weight, sim["bits"], sim["block_size"]))
                module.forward = types.MethodType(_quantized_forward(sim["act_block"]), module)
        if sim["lm_head"]:
            src = decoder.embed_tokens.weight if decoder.config.tie_embeddings else decoder.lm_head.weight
            head_w = quantize_weight(src, sim["bits"], sim["block_size"])  # a copy: embeddings stay float
            act = sim["act_block"]

            def head(x: torch.Tensor) -> torch.Tensor:
                h = decoder.norm(x)
                return nn.functional.linear(quantize_activation(h, act) if act else h, head_w)

            decoder.head = head


class DecoderReference:
    """The export-friendly decoder (static KV cache, LoRA slots) as a Backend, with a recipe simulated."""

    def __init__(self, model_dir: Path, adapters: dict[str, Adapter], recipe: dict, max_context: int):
        slots = unify_slots(adapters.values()) if adapters else None
        self.decoder = Decoder.from_pretrained(Path(model_dir), max_context, slots)
        self.sim = simulation(recipe)
        apply_recipe(self.decoder, self.sim)
        self.name = f"decoder[{recipe.get('scheme', 'fp32')}]"
        self._adapters = adapters
        self.adapters = tuple(adapters)
        self.max_context = self.decoder.config.max_context
        self._active: object = ...

    def reset(self) -> None:
        """Nothing to clear: cache positions >= start are overwritten and later ones are masked out."""

    def _activate(self, adapter: str | None) -> None:
        if adapter == self._active:
            return
        if adapter is not None and adapter not in self._adapters:
            raise MemloraError(f"adapter {adapter!r} is not loaded in the decoder reference")
        fill_slots(self.decoder, self._adapters[adapter]) if adapter else self.decoder.clear_lora()
        self._active = adapter

    @torch.inference_mode()
    def forward(self, tokens: list[int], start: int, adapter: str | None, all_logits: bool = False) -> np.ndarray:
        self._activate(adapter)
        logits = self.decoder(torch.tensor([tokens]), torch.arange(start, start + len(tokens)))[0]
        return (logits if all_logits else logits[-1:]).float().numpy()

    @torch.inference_mode()
    def hidden_states(self, tokens: list[int], adapter: str | None) -> list[np.ndarray]:
        """Embeddings and every layer's output for a prefill of `tokens` (for localisation)."""
        self._activate(adapter)
        _, hidden = self.decoder(torch.tensor([tokens]), torch.arange(len(tokens)), return_hidden=True)
        return [h[0].float().numpy() for h in hidden]

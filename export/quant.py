"""Quantize-dequantize in torch, as each runtime stores weights and quantizes activations, read from a
`QuantRecipe`. One implementation serves the Core ML exporter (whose compression the decoder must match) and
parity's decoder reference (which isolates conversion error from quantization error on every target).
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from memlora.recipe import QuantRecipe

from .decoder import Decoder, LoraLinear

TINY = torch.finfo(torch.float32).smallest_normal
"""The smallest scale torchao allows (its default eps), so an all-zero block quantizes to zeros."""


def _blocks(w: torch.Tensor, block: int | None) -> tuple[torch.Tensor, int]:
    """`w` [out, in] as [out, n_blocks, block], the last block zero-padded; and the original width."""
    k = w.shape[1]
    size = block or k
    return nn.functional.pad(w, (0, (-k) % size)).view(w.shape[0], -1, size), k


@dataclass(frozen=True)
class Grid:
    """The block scales `linear` derives from a weight [out, in]: codes times `scale` are what it stores."""

    scale: torch.Tensor
    """[out, n_blocks, 1]"""
    lo: int
    hi: int
    rule: str
    fp16: bool
    width: int
    """The weight's input size (the last block may be zero-padded past it)."""
    scales16: bool = False
    """The runtime stores each scale as fp16 beside fp32 compute (llama.cpp's blocks): codes are rounded on the
    fp32 scale, values are codes times its fp16 rounding."""
    offset: torch.Tensor | None = None
    """[out, n_blocks, 1] the value code 0 stands for (``min_max``, asymmetric); None: symmetric."""

    def codes(self, blocks: torch.Tensor) -> torch.Tensor:
        """Round-to-nearest integer codes of `blocks` (broadcastable to `scale`) on this grid."""
        if self.rule == "min_max":  # llama.cpp: trunc((x - min) * (1 / d) + 0.5), 0 where d is 0
            inverse = torch.where(self.scale == 0, torch.zeros_like(self.scale), 1.0 / self.scale)
            return torch.clamp(torch.floor((blocks - self.offset) * inverse + 0.5), self.lo, self.hi)
        if self.rule == "half_range":
            return torch.clamp(torch.round(blocks * (1.0 / self.scale)), self.lo, self.hi)
        safe = torch.where(self.scale == 0, torch.ones_like(self.scale), self.scale)
        return torch.clamp(torch.round(_half(blocks / safe, self.fp16)), self.lo, self.hi)

    def values(self, codes: torch.Tensor) -> torch.Tensor:
        """What the runtime computes with for `codes` (torchao's half-range kernels are fp32 only)."""
        product = codes * _stored(self.scale, self.scales16)
        if self.offset is not None:
            return product + _stored(self.offset, self.scales16)
        return product if self.rule == "half_range" else _half(product, self.fp16)


def _half(t: torch.Tensor, fp16: bool) -> torch.Tensor:
    return t.half().float() if fp16 else t


def _stored(t: torch.Tensor, scales16: bool) -> torch.Tensor:
    return t.half().float() if scales16 else t


def grid(w: torch.Tensor, bits: int, block: int | None, rule: str, fp16: bool = False,
         scales16: bool = False) -> tuple[Grid, torch.Tensor]:
    """The grid of `w` [out, in] (blockwise along the input axis; ``block`` None: per output
    channel) under a `memlora.recipe.ScaleRule`, and `w` as the blocks it scales ([out, n_blocks, block], the
    last zero-padded; `fp16`: weights, scales and products are fp16 values, as a Core ML program holds them)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    blocks, k = _blocks(_half(w.float(), fp16), block)
    amax = blocks.abs().amax(-1, keepdim=True)
    if rule == "max_to_min":  # the signed value of largest magnitude maps to lo exactly
        scale = _half(blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True)) / lo, fp16)
    elif rule == "restricted":
        scale, lo = _half(amax / hi, fp16), -hi
    elif rule == "half_range":  # torchao's choose_qparams_affine / quantize_affine, SYMMETRIC
        scale = torch.clamp(amax / ((hi - lo) / 2), min=TINY)
    elif rule == "min_max":  # asymmetric: min -> 0, max -> 2^bits - 1
        low = blocks.amin(-1, keepdim=True)
        return Grid((blocks.amax(-1, keepdim=True) - low) / ((1 << bits) - 1), 0, (1 << bits) - 1, rule, fp16, k,
                    scales16, low), blocks
    else:
        raise ValueError(f"unknown scale rule {rule!r}")
    return Grid(scale, lo, hi, rule, fp16, k, scales16), blocks


def linear(w: torch.Tensor, bits: int, block: int | None, rule: str, fp16: bool = False,
           scales16: bool = False) -> torch.Tensor:
    """Symmetric blockwise round-to-nearest quantize-dequantize of `w` [out, in] (see `grid`)."""
    g, blocks = grid(w, bits, block, rule, fp16, scales16)
    return g.values(g.codes(blocks)).reshape(w.shape[0], -1)[:, : g.width].contiguous()


def palettize_group(values: np.ndarray, bits: int, iterations: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic 1-D k-means on the fp16 values of one group: (lut [2^bits] fp16, indices uint8).

    Starts from levels evenly spaced between the group's min and max and runs Lloyd steps on the sorted
    array (cluster boundaries are midpoints between centroids), so it needs no random seed and no
    scikit-learn. The even start keeps a table entry near the extreme weights: started from equal-count
    segments instead, the few outlier weights of a group were averaged into the tail cluster, and SmolLM2-135M
    palettized that way agreed with fp32 on no top-1 token (0.0 vs 0.63 with this start, 96 tokens).
    """
    order = np.sort(values.reshape(-1).astype(np.float64))
    n, k = order.size, 2**bits
    prefix = np.concatenate([[0.0], np.cumsum(order)])
    centroids = np.linspace(order[0], order[-1], k)
    cuts = np.concatenate([[0], np.searchsorted(order, (centroids[1:] + centroids[:-1]) / 2, side="right"), [n]])
    for _ in range(iterations):
        counts = np.diff(cuts)
        sums = prefix[cuts[1:]] - prefix[cuts[:-1]]
        centroids = np.maximum.accumulate(np.where(counts > 0, sums / np.maximum(counts, 1), centroids))
        bounds = np.searchsorted(order, (centroids[1:] + centroids[:-1]) / 2, side="right")
        new_cuts = np.concatenate([[0], bounds, [n]])
        if np.array_equal(new_cuts, cuts):
            break
        cuts = new_cuts
    lut = centroids.astype(np.float16)
    indices = np.abs(values.reshape(-1, 1).astype(np.float32) - lut.astype(np.float32)[None]).argmin(1)
    return lut, indices.astype(np.uint8).reshape(values.shape)


def palettize(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """`w` [out, in] with each group of `group` output channels replaced by its 2^bits-entry table's values."""
    values = w.to(torch.float16).numpy()
    out = np.empty_like(values)
    for g in range(0, values.shape[0], group):
        lut, idx = palettize_group(values[g : g + group], bits)
        out[g : g + group] = lut[idx]
    return torch.from_numpy(out.astype(np.float32))


def quantizable(recipe: QuantRecipe, shape: tuple[int, ...]) -> bool:
    """Whether the runtime quantizes a weight of `shape` [out, in]; with ``uneven == "skip"`` one whose axis
    the blocks (linear: inputs; palette: output channels) do not tile stays float."""
    if recipe.weights == "float":
        return False
    if recipe.uneven == "pad" or recipe.block_size is None:
        return True
    axis = 0 if recipe.weights == "palette" else 1
    return shape[axis] % recipe.block_size == 0


def weight(w: torch.Tensor, recipe: QuantRecipe) -> torch.Tensor:
    """`w` as the runtime stores it, dequantized (float32)."""
    fp16 = recipe.compute == "fp16"
    if not quantizable(recipe, tuple(w.shape)):
        return w.half().float() if fp16 else w
    if recipe.weights == "palette":
        return palettize(w, recipe.bits, recipe.block_size)
    return linear(w, recipe.bits, recipe.block_size, recipe.scale_rule, fp16, recipe.scale_dtype == "fp16")


def activation(x: torch.Tensor, recipe: QuantRecipe) -> torch.Tensor:
    """`x` as the quantized matmul's kernel sees it (dynamic int8, or unchanged)."""
    if recipe.activations == "int8_block":
        k, size = x.shape[-1], recipe.act_block
        blocks = nn.functional.pad(x, (0, (-k) % size)).unflatten(-1, (-1, size))
        scale = blocks.abs().amax(-1, keepdim=True) / 127
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        stored = scale.half().float() if recipe.scale_dtype == "fp16" else scale
        return (torch.clamp(torch.round(blocks / scale), -127, 127) * stored).flatten(-2)[..., :k]
    if recipe.activations == "int8_token_asym":  # torchao's choose_qparams_affine, ASYMMETRIC, per token
        lo, hi = torch.clamp(x.amin(-1, keepdim=True), max=0), torch.clamp(x.amax(-1, keepdim=True), min=0)
        scale = torch.clamp((hi - lo) / 255, min=TINY)
        zero = torch.clamp(-128 - torch.round(lo / scale), -128, 127)
        return (torch.clamp(torch.round(x * (1.0 / scale)) + zero, -128, 127) - zero) * scale
    return x


def _quantized_forward(recipe: QuantRecipe):
    def forward(self: LoraLinear, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        y = nn.functional.linear(activation(self.base_input(x), recipe), self.weight, self.bias)
        if self.rank:  # the LoRA branch stays float on the float input, as in the exported programs
            y = y + self.lora(x, gate)
        return y

    return forward


@torch.no_grad()
def quantize_decoder(decoder: Decoder, recipe: QuantRecipe) -> None:
    """Apply `recipe` to `decoder` in place: base projections, token embedding and output head as the
    runtime stores them, dynamic activation quantization in front of each quantized matmul, and (fp16
    compute) every other parameter rounded to fp16."""
    if recipe.weights == "float" and recipe.compute == "fp32" and recipe.embedding == "float":
        return
    if recipe.compute == "fp16":
        for p in decoder.parameters():
            p.copy_(p.half().float())
    embed = decoder.embed_tokens.weight
    original = embed.detach().clone()
    for name, module in decoder.named_modules():
        if isinstance(module, LoraLinear) and recipe.weights != "float":
            own = recipe.for_projection(name)
            quantized = quantizable(own, tuple(module.weight.shape))
            module.weight.copy_(weight(module.weight, own))
            if quantized and recipe.activations != "float":
                module.forward = types.MethodType(_quantized_forward(recipe), module)
    if recipe.embedding == "as_weights":
        embed.copy_(weight(embed, recipe))
    elif recipe.embedding == "int8_row":
        embed.copy_(linear(embed, 8, None, "half_range"))
    elif recipe.embedding == "q8_0":
        embed.copy_(linear(embed, 8, 32, "restricted", scales16=True))
    if not recipe.lm_head:
        return
    tied = decoder.config.tie_embeddings
    if tied and recipe.embedding in ("as_weights", "q8_0"):
        head_w = embed  # one tensor in the program: quantized once, above
    else:
        head_w = weight(original if tied else decoder.lm_head.weight, recipe.for_projection("lm_head"))

    def head(x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(activation(decoder.norm(x), recipe), head_w)

    decoder.head = head

"""torchao quantization recipes for the ExecuTorch target (XNNPACK kernels).

Only dynamic-activation recipes are offered: ``int8`` = 8-bit dynamic activations + 8-bit per-channel
weights, ``int4`` = 8-bit dynamic activations + 4-bit weights in groups of ``block_size`` along K (8da4w,
what ExecuTorch's own LLM export uses). They quantize the base projections and the output head; LoRA
branches stay fp32 (they are not ``weight`` of a projection), and the token embedding is optionally int8
weight-only (a gather, served by ExecuTorch's quantized kernels, not by XNNPACK).

Weight-only LINEAR recipes (torchao ``IntxWeightOnlyConfig`` / ``Int8WeightOnlyConfig`` on linears) are
refused: with torch 2.13 / executorch 1.5.1 / torchao 0.18 they lower and run but the XNNPACK delegate
receives the scales as runtime inputs and returns logits off by 85-1600 at fp32 size -- a silent error.
"""

from __future__ import annotations

from torch import nn

from memlora.recipe import PROJECTIONS, QuantRecipe

from .target import TargetRequest

QUANTS = ("fp32", "int8", "int4")
INT4_AT_8_BITS = ("k_proj", "v_proj", "up_proj", "down_proj", "lm_head")
"""What the int4 recipe keeps at 8 bits (q, o and gate stay 4-bit): with GPTQ on the rest (`--calibrate`), the
smallest set whose exported program passes parity's int4 gate on the default model. k/v/down/head passed in
simulation but not exported (XNNPACK's own activation rounding costs about 0.02 of top-1); docs/executorch.md."""
REFUSED = {
    q: "weight-only linear quantization lowers to XNNPACK with scales passed as runtime inputs and gives wrong "
       "logits (off by 85-1600) at fp32 size in this version set (torch 2.13, executorch 1.5.1, torchao 0.18); "
       "use int8 or int4 (dynamic activations)"
    for q in ("int8-weight-only", "int4-weight-only")
}


def linear_config(recipe: QuantRecipe):
    """The torchao config for base linears stored as `recipe` says (one projection's: see
    `QuantRecipe.for_projection`): 8-bit dynamic activations with int8 per-channel or grouped int4 weights."""
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    granularity = PerAxis(0) if recipe.block_size is None else PerGroup(recipe.block_size)
    return Int8DynamicActivationIntxWeightConfig(weight_dtype=getattr(torch, f"int{recipe.bits}"),
                                                 weight_granularity=granularity)


def quantize_model(model: nn.Module, recipe: QuantRecipe, is_base_linear) -> None:
    """Quantize, in place, every module `is_base_linear` selects (they compute ``F.linear(x, self.weight)``)
    as `recipe` stores its projection (`int8_projections` at 8 bits, the rest at `bits`), and the embeddings
    to int8 weight-only when it says so."""
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis

    if recipe.weights == "linear":
        for own in {recipe.for_projection(p) for p in PROJECTIONS}:
            quantize_(model, linear_config(own), filter_fn=lambda m, fqn, own=own:
                      is_base_linear(m) and recipe.for_projection(fqn) == own)
    if recipe.embedding == "int8_row":
        import torch

        quantize_(model, IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)),
                  filter_fn=lambda m, fqn: isinstance(m, nn.Embedding))


def recipe(req: TargetRequest) -> QuantRecipe:
    """The torchao recipe: 8-bit dynamic per-token activations with int8 per-channel or int4 grouped weights
    on the base projections and the output head (int4: `INT4_AT_8_BITS` kept at 8 bits unless the request
    names others); optionally int8 row-wise embeddings."""
    embedding = "int8_row" if req.embedding_int8 else "float"
    if req.quant == "fp32":
        return QuantRecipe("fp32", op="XNNPACK fp32 linear", embedding=embedding)
    return QuantRecipe(req.quant, op="torchao Int8DynamicActivationIntxWeightConfig -> XNNPACK", weights="linear",
                       bits=8 if req.quant == "int8" else 4, block_size=None if req.quant == "int8" else req.block_size,
                       scale_rule="half_range", activations="int8_token_asym", lm_head=True, embedding=embedding,
                       int8_projections=own_int8_projections(req), notes="LoRA branches stay fp32")


def own_int8_projections(req: TargetRequest) -> tuple[str, ...]:
    if req.int8_projections is not None:
        return req.int8_projections
    return INT4_AT_8_BITS if req.quant == "int4" else ()

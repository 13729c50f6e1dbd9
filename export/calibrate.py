"""Calibrated base weights for a recipe: GPTQ (`memlora.export.gptq`) or AWQ scales (`memlora.export.awq`),
layer by layer on the memory operations' own prompts, as the GPTQ reference implementation runs it.

Calibration data: the first synthetic training conversations (`memlora.distill.synthetic_teacher`; never the
demo, held-out or LoCoMo conversations, which are evaluation data), `samples` examples per operation spread
evenly over them, each rendered as the pipeline sends it plus the teacher's reply (`memlora.distill.train.
encode`). Each operation's sequences run with its adapter in the LoRA slots (the base model when the export
has no such adapter): one set of base weights serves all three adapters, so their Hessians are pooled.

Layer by layer: every sequence's input to layer l (computed through the already-quantized layers before it)
is cached; a float pass of layer l accumulates ``H = 2 X^T X`` per input (q/k/v share one, gate/up one,
o_proj and down_proj their own); GPTQ quantizes the layer's projections (AWQ: chooses each input's scales
and quantizes the scaled weights to nearest); the quantized layer then computes
the next layer's inputs. The token embedding and the output head stay round-to-nearest: the head is the tied
embedding table, which Core ML also quantizes for the input gather, where a Hessian of the head's inputs
says nothing. Everything is deterministic (fixed conversations, no sampling), so parity recomputes the same
weights from the same model, adapters and recipe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from memlora import OPERATIONS
from memlora.recipe import QuantRecipe

from . import awq, gptq, quant
from .decoder import Decoder, LoraLinear, LoraSlots, grouped_attention
from .lora import Adapter, fill_slots, unify_slots

MAX_TOKENS = 1024
"""Calibration sequences longer than this are left out (as training leaves them out)."""
GROUPS = {"self_attn.q_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
          "self_attn.o_proj": ("self_attn.o_proj",),
          "mlp.gate_proj": ("mlp.gate_proj", "mlp.up_proj"),
          "mlp.down_proj": ("mlp.down_proj",)}
"""Per layer: the projection whose input is recorded -> the projections that share that input."""


@dataclass(frozen=True)
class Calibration:
    """Calibrated base weights (decoder parameter name -> the floats the target's packer is given) and, for
    AWQ, the input scales of the projections that store scaled weights (module name -> [in])."""

    weights: dict[str, torch.Tensor]
    sequences: int
    tokens: int
    seconds: float
    input_scales: dict[str, torch.Tensor] = field(default_factory=dict)

    def apply(self, decoder: Decoder) -> None:
        """Copy the weights (and input scales) into a decoder built from the same checkpoint, before it fuses
        projections."""
        params, modules = dict(decoder.named_parameters()), dict(decoder.named_modules())
        with torch.no_grad():
            for name, w in self.weights.items():
                params[name].copy_(w)
        for name, s in self.input_scales.items():
            modules[name].input_scale = s.clone()

    def manifest_entry(self, recipe: QuantRecipe) -> dict:
        return {"method": recipe.calibration, "samples_per_operation": recipe.calibration_samples,
                "sequences": self.sequences, "tokens": self.tokens, "data": "memlora.distill.synthetic_teacher"}


def load_decoder(model_dir: Path, max_context: int, slots: LoraSlots | None,
                 calibration: Calibration | None) -> Decoder:
    """The float decoder an exporter starts from: the checkpoint, with the calibrated base weights if any
    (the exporter's own packing then quantizes them to GPTQ's codes)."""
    decoder = Decoder.from_pretrained(Path(model_dir), max_context, slots)
    if calibration is not None:
        calibration.apply(decoder)
    return decoder


def grid_key(recipe: QuantRecipe) -> tuple:
    """What determines the calibrated weights of a recipe: targets sharing it share one calibration."""
    return (recipe.calibration, recipe.calibration_samples, recipe.bits, recipe.block_size, recipe.scale_rule,
            recipe.compute, recipe.uneven, recipe.int8_projections)


def sequences(model_dir: Path, samples: int, max_len: int) -> dict[str, list[list[int]]]:
    """Token ids of `samples` calibration sequences per operation (fewer if some are longer than `max_len`)."""
    from memlora.distill.synthetic_teacher import synthetic_examples
    from memlora.distill.train import encode
    from memlora.embed import Embedder
    from memlora.session import load_tokenizer

    tokenizer, embedder = load_tokenizer(model_dir), Embedder()
    out = {}
    for op in OPERATIONS:
        examples = synthetic_examples(op, samples, embedder)
        spread = [examples[i * len(examples) // samples] for i in range(min(samples, len(examples)))]
        out[op] = [e.ids for e in encode(tokenizer, spread, max_len)]
    return out


MEMO = 4
"""Calibrations kept per process: an export with several targets, or parity with several decoder references,
computes each grid once."""
_memo: dict[tuple, Calibration] = {}


def calibrate(model_dir: Path, adapters: dict[str, Adapter], recipe: QuantRecipe) -> Calibration:
    """GPTQ weights of every base projection for `recipe` (see the module docstring); independent of the
    export's context length, so parity recomputes them from the recipe alone. Computed once per model,
    adapters and grid in a process."""
    key = (str(Path(model_dir).resolve()), tuple((n, a.sha256) for n, a in adapters.items()), grid_key(recipe))
    if key not in _memo:
        if len(_memo) >= MEMO:
            del _memo[next(iter(_memo))]
        _memo[key] = _calibrate(Path(model_dir), adapters, recipe)
    return _memo[key]


def _calibrate(model_dir: Path, adapters: dict[str, Adapter], recipe: QuantRecipe) -> Calibration:
    began = time.monotonic()
    slots = unify_slots(adapters.values()) if adapters else None
    decoder = Decoder.from_pretrained(Path(model_dir), MAX_TOKENS, slots)
    data = sequences(Path(model_dir), recipe.calibration_samples, decoder.config.max_context)
    runs = [(adapters.get(op), torch.tensor([ids])) for op, seqs in data.items() for ids in seqs]
    with torch.no_grad():
        hidden = [decoder.embed(tokens) for _, tokens in runs]
        weights: dict[str, torch.Tensor] = {}
        scales: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(decoder.layers):
            modules = dict(layer.named_modules())
            hessians = _hessians(decoder, layer, {n: modules[n] for n in GROUPS}, runs, hidden)
            for leader, members in GROUPS.items():
                group = [(name, modules[name], recipe.for_projection(name)) for name in members]
                if recipe.calibration == "awq":  # one scale per input: members share it
                    s = awq.scale([m.weight for _, m, _ in group], [own for _, _, own in group], hessians[leader])
                for name, module, own in group:
                    if recipe.calibration == "awq":
                        stored = module.weight * s
                        values = quant.weight(stored, own)
                        module.input_scale = scales[f"layers.{i}.{name}"] = 1 / s
                    elif quant.quantizable(own, tuple(module.weight.shape)):
                        stored, values = gptq.quantize(module.weight, hessians[leader], own)
                    else:
                        continue
                    weights[f"layers.{i}.{name}.weight"] = stored
                    module.weight.copy_(values)
            hidden = _run_all(decoder, layer, runs, hidden)
    return Calibration(weights, len(runs), sum(t.shape[1] for _, t in runs), time.monotonic() - began, scales)


def _hessians(decoder: Decoder, layer, leaders: dict[str, LoraLinear], runs, hidden) -> dict[str, torch.Tensor]:
    """``2 X^T X`` (float64) of each leader's inputs over every calibration sequence, layer `layer` in float."""
    size = {n: m.weight.shape[1] for n, m in leaders.items()}
    h = {n: torch.zeros(size[n], size[n], dtype=torch.float64) for n in leaders}

    def record(name: str):
        def hook(module, args):
            x = args[0].reshape(-1, size[name]).double()
            h[name].add_(2 * x.T @ x)
        return hook

    handles = [m.register_forward_pre_hook(record(n)) for n, m in leaders.items()]
    try:
        _run_all(decoder, layer, runs, hidden)
    finally:
        for handle in handles:
            handle.remove()
    return h


def _run_all(decoder: Decoder, layer, runs, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
    """Layer `layer` on every cached sequence input, each with its operation's adapter in the slots (runs
    come grouped by operation, so the slots are refilled once per operation)."""
    active: object = ...
    out = []
    for (adapter, _), x in zip(runs, hidden):
        if decoder.slots is not None and adapter is not active:
            fill_slots(decoder, adapter) if adapter is not None else decoder.clear_lora()
            active = adapter
        out.append(_run_layer(layer, decoder.rope(torch.arange(x.shape[1])), x))
    return out


def _run_layer(layer, rope: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """One decoder layer on a whole sequence `x` [1, T, hidden] from position 0, causal attention."""
    mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()

    def attend(q, k, v):
        return grouped_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask)

    return layer(x, *rope, attend)

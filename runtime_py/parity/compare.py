"""Tensor and token levels: every golden prompt through the fp32 reference, the decoder references and the
targets in lockstep -- prefill in chunks (all positions' logits), then teacher-forced decode steps along the
reference's greedy output -- folding each block of logits into the metrics as soon as it exists.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from memlora.backend import Backend
from memlora.constrain import Constraints
from memlora.generate import GenerationConfig, generate
from memlora.prompts import MAX_NEW_TOKENS, STOP
from memlora.recipe import QuantRecipe

from .prompts import GoldenPrompt
from .reference import DecoderReference
from .targets import Target
from .tensor import LogitStats
from .token import PromptTokens, summarize

CHUNK = 256
"""Prefill chunk: bounds memory (chunk x vocab floats per backend) on prompts as long as the context."""


@dataclass
class TargetRun:
    """What one target accumulates over the golden set."""

    total: dict[str, LogitStats] = field(default_factory=lambda: {"all": LogitStats(), "prefill": LogitStats(),
                                                                  "decode": LogitStats()})
    conversion: LogitStats = field(default_factory=LogitStats)
    tokens: list[PromptTokens] = field(default_factory=list)
    per_position: dict[str, list[float]] = field(default_factory=dict)  # max |diff| vs fp32, per prompt
    worst_prompt: tuple[float, GoldenPrompt | None] = (-1.0, None)  # largest conversion error, for localising
    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_tokens: int = 0
    decode_seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)  # prompts whose adapter the target lacks

    def summary(self) -> dict:
        return {
            "tensor": self.total["all"].summary(),
            "tensor_by_phase": {p: self.total[p].summary() for p in ("prefill", "decode")},
            "token": summarize(self.tokens),
            "conversion": self.conversion.gap(),
            "speed": {"prefill_tok_s": self.prefill_tokens / self.prefill_seconds if self.prefill_seconds else None,
                      "decode_tok_s": self.decode_tokens / self.decode_seconds if self.decode_seconds else None},
            "per_position": self.per_position,
            "skipped": self.skipped,
        }


def _adapter(backend: Backend, op: str) -> str | None:
    return op if op in backend.adapters else None


def run_golden(reference: Backend, decoders: dict[str, DecoderReference], targets: list[Target],
               golden: list[GoldenPrompt], tokenizer, eos_ids: set[int], decode_tokens: int,
               constraints: Constraints,
               progress=lambda msg: None) -> tuple[dict[str, TargetRun], dict[str, LogitStats]]:
    """Run the golden set; returns each target's run and each decoder reference's gap to the fp32 reference.
    The reference decodes each prompt under its operation's constraint (as the pipeline does); every backend
    is compared on the raw logits along that output.

    `decoders` maps a recipe key to its decoder reference; ``target.recipe`` picks one through `recipe_key`.
    """
    runs = {t.name: TargetRun() for t in targets}
    quant = {k: LogitStats() for k in decoders}
    for n, prompt in enumerate(golden, 1):
        progress(f"golden prompt {n}/{len(golden)}: {prompt.label}")
        adapter = _adapter(reference, prompt.op)
        config = GenerationConfig(min(decode_tokens, MAX_NEW_TOKENS[prompt.op]), STOP[prompt.op])
        out = generate(reference, tokenizer, prompt.ids, adapter, config, eos_ids, prompt.op,
                       constraint=constraints.for_op(prompt.op, prompt.shown))
        steps = len(out.output_ids) + (out.stop_reason == "eos")
        fed = out.output_ids[: steps - 1]
        for b in (reference, *decoders.values(), *(t.backend for t in targets)):
            b.reset()
        # a target without this prompt's adapter cannot be compared on it (it would run another model)
        skip = {t.name for t in targets if _adapter(t.backend, prompt.op) != adapter}
        for name in skip:
            runs[name].skipped.append(prompt.label)
        toks = {t.name: PromptTokens(prompt.label, prompt.op) for t in targets}
        curves: dict[str, list[float]] = {t.name: [] for t in targets}
        conv_max = {t.name: 0.0 for t in targets}

        def block(chunk: list[int], start: int, phase: str) -> None:
            all_logits = phase == "prefill"
            ref = reference.forward(chunk, start, adapter, all_logits)
            dec = {k: d.forward(chunk, start, _adapter(d, prompt.op), all_logits) for k, d in decoders.items()}
            for k in decoders:
                quant[k].add(ref, dec[k])
            last_of_prompt = phase == "decode" or start + len(chunk) == len(prompt.ids)
            for t in targets:
                if t.name in skip:
                    continue
                t0 = time.perf_counter()
                got = t.backend.forward(chunk, start, _adapter(t.backend, prompt.op), all_logits)
                dt = time.perf_counter() - t0
                run = runs[t.name]
                if phase == "prefill":
                    run.prefill_tokens, run.prefill_seconds = run.prefill_tokens + len(chunk), run.prefill_seconds + dt
                else:
                    run.decode_tokens, run.decode_seconds = run.decode_tokens + 1, run.decode_seconds + dt
                per_pos = run.total["all"].add(ref, got)
                run.total[phase].add(ref, got)
                curves[t.name].extend(round(float(v), 7) for v in per_pos)
                conv = run.conversion.add(dec[recipe_key(t.recipe)], got)
                conv_max[t.name] = max(conv_max[t.name], float(conv.max()))
                if last_of_prompt:
                    toks[t.name].add(ref[-1], got[-1])

        for start in range(0, len(prompt.ids), CHUNK):
            block(prompt.ids[start : start + CHUNK], start, "prefill")
        for i, token in enumerate(fed):
            block([token], len(prompt.ids) + i, "decode")
        for t in targets:
            if t.name in skip:
                continue
            run = runs[t.name]
            run.tokens.append(toks[t.name])
            run.per_position[prompt.label] = curves[t.name]
            if conv_max[t.name] > run.worst_prompt[0]:
                run.worst_prompt = (conv_max[t.name], prompt)
    return runs, quant


def recipe_key(recipe: QuantRecipe) -> QuantRecipe:
    """Targets whose recipes have the same numerics share one decoder reference (op and notes only describe)."""
    return replace(recipe, op="", notes="")

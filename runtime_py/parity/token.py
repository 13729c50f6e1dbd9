"""Token-level parity on teacher-forced decoding: the other backend is fed the reference's greedy tokens.

Why teacher-forced steps also give greedy exact match: greedy decoding on the other backend produces the
reference's sequence exactly when its top-1 agrees at every step of the reference's sequence, and first
differs at the first step where it does not. So one teacher-forced pass measures top-1 agreement, top-5
overlap, greedy exact match and the first divergent position, with the same decode path (one token per
call against the KV cache) that generation uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TOP_K = 5


def _topk(logits: np.ndarray, k: int) -> set[int]:
    return set(np.argpartition(-logits, k)[:k].tolist())


@dataclass
class PromptTokens:
    """Agreement over the decode steps of one golden prompt."""

    label: str
    op: str
    agree: list[bool] = field(default_factory=list)
    overlap: list[float] = field(default_factory=list)

    def add(self, ref: np.ndarray, other: np.ndarray) -> None:
        """One decode step's logits (vocab,) from the reference and the other backend."""
        self.agree.append(int(np.argmax(ref)) == int(np.argmax(other)))
        self.overlap.append(len(_topk(ref, TOP_K) & _topk(other, TOP_K)) / TOP_K)

    @property
    def first_divergence(self) -> int | None:
        return next((i for i, ok in enumerate(self.agree) if not ok), None)

    def to_json(self) -> dict:
        return {"label": self.label, "op": self.op, "steps": len(self.agree),
                "top1_agreement": float(np.mean(self.agree)) if self.agree else None,
                "first_divergence": self.first_divergence}


def summarize(prompts: list[PromptTokens]) -> dict:
    """The report's token metrics over all prompts, plus top-1 agreement per operation (for the plot)."""
    steps = [a for p in prompts for a in p.agree]
    overlaps = [o for p in prompts for o in p.overlap]
    firsts = [(p.first_divergence, p.label) for p in prompts if p.first_divergence is not None]
    first = min(firsts) if firsts else None
    by_op: dict[str, list[bool]] = {}
    for p in prompts:
        by_op.setdefault(p.op, []).extend(p.agree)
    return {
        "top1_agreement": float(np.mean(steps)) if steps else None,
        "top5_overlap": float(np.mean(overlaps)) if overlaps else None,
        "greedy_exact_rate": float(np.mean([p.first_divergence is None for p in prompts])) if prompts else None,
        "first_divergence": None if first is None else {"position": first[0], "prompt": first[1]},
        "top1_by_op": {op: float(np.mean(a)) for op, a in by_op.items() if a},
        "prompts": [p.to_json() for p in prompts],
    }

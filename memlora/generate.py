"""The one decode loop, shared by every backend: greedy, stops on eos, stop strings or a token budget, and
held to the operation's output constraint when it has one (`memlora.constrain`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backend import Backend
from .constrain import Constraint
from .errors import MemloraError
from .trace import TraceRecord, TraceWriter


@dataclass(frozen=True)
class GenerationConfig:
    """Generation settings; the bundle manifest carries them so apps decode the same way."""

    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    trace_top_k: int = 5


class PromptTooLong(MemloraError):
    """The prompt leaves no room to generate in the backend's context: the input, not the model, is at fault."""


@dataclass
class Generation:
    text: str
    output_ids: list[int]
    stop_reason: str


def _topk(logits: np.ndarray, k: int) -> dict[str, list]:
    idx = np.argpartition(-logits, k)[:k]
    idx = idx[np.argsort(-logits[idx], kind="stable")]
    return {"ids": idx.tolist(), "logits": [round(float(v), 5) for v in logits[idx]]}


def generate(
    backend: Backend,
    tokenizer,
    prompt_ids: list[int],
    adapter: str | None,
    config: GenerationConfig,
    eos_ids: set[int],
    op: str = "generate",
    trace: TraceWriter | None = None,
    constraint: Constraint | None = None,
) -> Generation:
    """Greedy-decode from `prompt_ids` with `adapter` active and return the text before any stop string.

    Greedy argmax ties break on the lowest token id (numpy's argmax), identically on every backend. With a
    `constraint`, the argmax runs over the tokens it allows with the budget left (eos only where the output
    is complete), so the output always ends complete with eos; traces keep the raw logits' top-k.
    """
    budget = min(config.max_new_tokens, backend.max_context - len(prompt_ids))
    if budget <= 0:
        raise PromptTooLong(
            f"prompt of {len(prompt_ids)} tokens leaves no room in a context of {backend.max_context}"
        )
    state = 0 if constraint is None else constraint.start()
    if constraint is not None:
        if not eos_ids:
            raise MemloraError(f"constraint {constraint.name}: no eos id to end the output with")
        if constraint.needs(state) > budget:
            raise PromptTooLong(
                f"prompt of {len(prompt_ids)} tokens leaves {budget} in a context of {backend.max_context}; the "
                f"shortest {constraint.name} output takes {constraint.needs(state)}"
            )
    eos = sorted(eos_ids)
    backend.reset()
    logits = backend.forward(list(prompt_ids), 0, adapter)[-1]
    out: list[int] = []
    steps: list[dict[str, list]] = []
    text, reason = "", "length"
    pos = len(prompt_ids)
    while True:
        if trace is not None:
            steps.append(_topk(logits, config.trace_top_k))
        if constraint is None:
            token = int(np.argmax(logits))
        else:
            token = int(np.argmax(_masked(logits, constraint, state, budget - len(out), eos)))
        if token in eos_ids:
            reason = "eos"
            break
        out.append(token)
        if constraint is not None:
            state = constraint.advance(state, token)
        if config.stop:
            text = tokenizer.decode(out, skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in config.stop) if i >= 0), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
                break
        if len(out) >= budget:
            break
        logits = backend.forward([token], pos, adapter)[-1]
        pos += 1
    if reason != "stop":
        text = tokenizer.decode(out, skip_special_tokens=True)
    if trace is not None:
        trace.write(
            TraceRecord(backend.name, op, adapter, list(prompt_ids), out, reason, steps, text,
                        constraint=None if constraint is None else constraint.name)
        )
    return Generation(text, out, reason)


def _masked(logits: np.ndarray, constraint: Constraint, state: int, remaining: int, eos: list[int]) -> np.ndarray:
    """`logits` with every token the constraint does not allow now at -inf (ids past its vocabulary too)."""
    allowed = constraint.allowed(state, remaining)
    if len(allowed) != len(logits):  # a model vocabulary padded past (or short of) the tokenizer's ids
        allowed = np.concatenate([allowed, np.zeros(max(0, len(logits) - len(allowed)), bool)])[: len(logits)]
    allowed[eos] = constraint.accepts(state)
    return np.where(allowed, logits, -np.inf)

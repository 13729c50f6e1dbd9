"""The one decode loop, shared by every backend: greedy, stops on eos, stop strings or a token budget."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backend import Backend
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
) -> Generation:
    """Greedy-decode from `prompt_ids` with `adapter` active and return the text before any stop string.

    Greedy argmax ties break on the lowest token id (numpy's argmax), identically on every backend.
    """
    budget = min(config.max_new_tokens, backend.max_context - len(prompt_ids))
    if budget <= 0:
        raise PromptTooLong(
            f"prompt of {len(prompt_ids)} tokens leaves no room in a context of {backend.max_context}"
        )
    backend.reset()
    logits = backend.forward(list(prompt_ids), 0, adapter)[-1]
    out: list[int] = []
    steps: list[dict[str, list]] = []
    text, reason = "", "length"
    pos = len(prompt_ids)
    while True:
        if trace is not None:
            steps.append(_topk(logits, config.trace_top_k))
        token = int(np.argmax(logits))
        if token in eos_ids:
            reason = "eos"
            break
        out.append(token)
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
            TraceRecord(backend.name, op, adapter, list(prompt_ids), out, reason, steps, text)
        )
    return Generation(text, out, reason)

"""Golden traces: a few fixed prompts per operation run on the fp32 reference, stored in the bundle.

An app (or `memlora parity`) replays them: same prompt ids in, the same output ids and top-k logits out.
"""

from __future__ import annotations

from pathlib import Path

from memlora import prompts
from memlora.backend import Backend
from memlora.constrain import Constraints
from memlora.generate import GenerationConfig, generate
from memlora.trace import TraceWriter

_DATE = "8 May 2023"
_TURNS = [
    [prompts.Turn("Caroline", "I went to a support group yesterday.", _DATE, "D1:1"),
     prompts.Turn("Melanie", "That sounds great! I painted a sunrise with my kids.", _DATE, "D1:2")],
    [prompts.Turn("Caroline", "I'm researching adoption agencies.", _DATE, "D2:1"),
     prompts.Turn("Melanie", "I ran a charity race last Saturday.", _DATE, "D2:2")],
]
_MEMORIES = [prompts.Memory("m0", "Caroline went to a support group", "7 May 2023"),
             prompts.Memory("m1", "Melanie painted a sunrise with her kids", "8 May 2023")]


def golden_messages() -> list[tuple[str, list[dict[str, str]], int]]:
    """(operation, chat messages, memories shown) triples: two prompts per operation, built with the
    pipeline's prompt code."""
    return [
        ("extract", prompts.extract_messages(_TURNS[0]), 0),
        ("extract", prompts.extract_messages(_TURNS[1]), 0),
        ("mem_update", prompts.update_messages(["Caroline researches adoption agencies"], []), 0),
        ("mem_update", prompts.update_messages(["Melanie painted a sunrise"], _MEMORIES), len(_MEMORIES)),
        ("answer", prompts.answer_messages("What did Caroline research?", _MEMORIES), 0),
        ("answer", prompts.answer_messages("When did Caroline go to the support group?", _MEMORIES), 0),
    ]


def operation_settings(adapters: tuple[str, ...]) -> dict[str, dict]:
    """Per-operation generation settings for the manifest: adapter, token budget, stop strings."""
    return {
        op: {"adapter": op if op in adapters else None, "max_new_tokens": prompts.MAX_NEW_TOKENS[op],
             "stop": list(prompts.STOP[op])}
        for op in prompts.TEMPLATES
    }


def write_golden(backend: Backend, tokenizer, eos_ids: set[int], path: Path, max_new_tokens: int,
                 constraints: Constraints, top_k: int = 5) -> int:
    """Run every golden prompt on `backend` through the shared decode loop, each held to its operation's
    constraint as the pipeline holds it (a record names its table); returns the record count."""
    settings = operation_settings(backend.adapters)
    writer = TraceWriter(path)
    try:
        messages = golden_messages()
        for op, msgs, shown in messages:
            s = settings[op]
            config = GenerationConfig(min(max_new_tokens, s["max_new_tokens"]), tuple(s["stop"]), top_k)
            generate(backend, tokenizer, prompts.render(tokenizer, msgs), s["adapter"], config, eos_ids, op, writer,
                     constraints.for_op(op, shown))
    finally:
        writer.close()
    return len(messages)

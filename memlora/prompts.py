"""The three memory operations' prompts, rendered through the model's own chat template.

Kept short on purpose: a 135M-parameter model follows short instructions better, and every prompt token
costs prefill time on a phone. The bundle manifest carries `TEMPLATES` so demo apps build identical prompts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

TEMPLATES: dict[str, dict[str, str]] = {
    "extract": {
        "system": (
            "Extract the facts worth remembering about the people in this conversation. "
            "Write each fact as a short sentence that names the person; keep dates. "
            'Reply only with JSON: {"facts": ["..."]}. Reply {"facts": []} if there is nothing to remember.'
        ),
        "user": "Conversation on {date}:\n{turns}",
    },
    "mem_update": {
        "system": (
            "You manage a memory store. For each new fact choose one event: "
            "ADD if it is new; UPDATE if it adds to or corrects an existing memory (give that id and the "
            "combined text); DELETE if it contradicts an existing memory (give that id); "
            "NONE if it is already known (give that id). "
            'Reply only with JSON: {"memory": [{"id": "...", "text": "...", "event": "...", "old_memory": "..."}]}.'
        ),
        "user": "Existing memories:\n{memories}\n\nNew facts:\n{facts}",
    },
    "answer": {
        "system": (
            "Answer the question using the memories. Use their dates to work out when things happened. "
            "Reply with a short answer only."
        ),
        "user": "Memories:\n{memories}\n\nQuestion: {question}",
    },
}

STOP = {"extract": (), "mem_update": (), "answer": ("\n",)}
"""Stop strings per operation (JSON outputs end at eos; an answer is one line)."""

MAX_NEW_TOKENS = {"extract": 160, "mem_update": 200, "answer": 32}

MAX_SHOWN = 5
"""Most existing memories one update prompt shows (the best-scored first; the pipeline cuts the rest). The
update's output constraint has one table per count 0..MAX_SHOWN, each with a copy of its states per set of ids
named so far, so the tables double with every memory more (docs/constraints.md)."""


@dataclass(frozen=True)
class Turn:
    """One conversation turn; `turn_id` is stable (LoCoMo's dia_id, or a line number)."""

    speaker: str
    text: str
    date: str
    turn_id: str


@dataclass(frozen=True)
class Memory:
    id: str
    text: str
    date: str
    score: float = 0.0


def _messages(op: str, **fields: str) -> list[dict[str, str]]:
    t = TEMPLATES[op]
    return [{"role": "system", "content": t["system"]}, {"role": "user", "content": t["user"].format(**fields)}]


def extract_messages(turns: list[Turn]) -> list[dict[str, str]]:
    date = turns[0].date if turns else ""
    return _messages("extract", date=date, turns="\n".join(f"{t.speaker}: {t.text}" for t in turns))


def update_messages(facts: list[str], memories: list[Memory]) -> list[dict[str, str]]:
    """Existing memories are shown with short temporary ids ("0", "1", ...), as Mem0 does, so a small
    model copies ids reliably; the pipeline maps them back to the store's ids."""
    shown = [{"id": str(i), "text": m.text} for i, m in enumerate(memories)]
    return _messages(
        "mem_update",
        memories=json.dumps(shown, ensure_ascii=False) if shown else "[]",
        facts=json.dumps(facts, ensure_ascii=False),
    )


def answer_messages(question: str, memories: list[Memory]) -> list[dict[str, str]]:
    lines = "\n".join(f"- ({m.date}) {m.text}" for m in memories) or "- (none)"
    return _messages("answer", memories=lines, question=question)


def render(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of `messages` in the model's chat template, ready for the assistant's reply."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)

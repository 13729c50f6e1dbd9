"""Task level: the whole memory pipeline (extract -> retrieve -> update -> store; retrieve -> answer) on the
reference and on a target, from empty stores, compared item by item.

Items: each exchange's extracted facts, each exchange's update events (event, memory id, new text as the
store recorded them), the final store, and each answer (exact and LoCoMo token F1).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memlora.backend import Backend
from memlora.constrain import Constraints
from memlora.metrics import token_f1
from memlora.pipeline import MemoryPipeline
from memlora.store import MemoryStore

from .prompts import Conversation

OP_OF_ITEM = {"facts": "extract", "events": "mem_update", "store": "mem_update", "answer": "answer"}


@dataclass
class TaskRun:
    facts: dict[str, tuple[str, list[str]]]
    events: dict[str, list[tuple[str, str, str | None]]]
    store: list[tuple[str, str, str]]
    answers: dict[str, str]

    def to_json(self) -> dict:
        return {"facts": {k: {"status": s, "facts": f} for k, (s, f) in self.facts.items()},
                "events": {k: [list(e) for e in v] for k, v in self.events.items()},
                "store": [list(m) for m in self.store], "answers": self.answers}


def run_task(backend: Backend, tokenizer, embedder, conversation: Conversation, constraints: Constraints) -> TaskRun:
    """Ingest the conversation into a fresh store on `backend`, then ask its questions (outputs held to the
    bundle's `constraints`, on the reference as on every target)."""
    with tempfile.TemporaryDirectory(prefix="memlora-parity-task-") as tmp:
        store = MemoryStore(Path(tmp) / "store.sqlite")
        try:
            pipe = MemoryPipeline(backend, tokenizer, store, embedder, constraints=constraints)
            facts, events = {}, {}
            for key, turns in conversation.exchanges:
                result = pipe.ingest(key, turns)
                facts[key] = (result.status, result.facts)
                events[key] = [(h.event, h.memory_id, h.new_text) for h in store.history() if h.exchange == key]
            final = [(m.id, m.text, m.date) for m in store.memories()]
            answers = {q: pipe.answer(q).text for q in conversation.questions}
        finally:
            store.close()
    return TaskRun(facts, events, final, answers)


def compare_task(ref: TaskRun, got: TaskRun) -> dict:
    """Equal rate over all items, answer F1 against the reference's answers, and equality per operation."""
    items: list[tuple[str, str, bool]] = []
    items += [("facts", k, got.facts.get(k) == v) for k, v in ref.facts.items()]
    items += [("events", k, got.events.get(k) == v) for k, v in ref.events.items()]
    items.append(("store", "final", got.store == ref.store))
    f1 = {q: token_f1(got.answers.get(q, ""), a) if a.strip() else float(got.answers.get(q, "").strip() == "")
          for q, a in ref.answers.items()}
    items += [("answer", q, got.answers.get(q) == a) for q, a in ref.answers.items()]
    by_op: dict[str, list[bool]] = {}
    for kind, _, ok in items:
        by_op.setdefault(OP_OF_ITEM[kind], []).append(ok)
    return {
        "equal_rate": float(np.mean([ok for *_, ok in items])),
        "answer_exact": float(np.mean([ok for kind, _, ok in items if kind == "answer"])) if ref.answers else None,
        "answer_f1": float(np.mean(list(f1.values()))) if f1 else None,
        "equal_by_op": {op: float(np.mean(v)) for op, v in by_op.items()},
        "differences": [f"{kind} {key}" for kind, key, ok in items if not ok],
    }

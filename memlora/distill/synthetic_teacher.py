"""Training examples for the three operations from synthetic conversations, labelled from the generator's truth.

* extract: each window of WINDOW turns (as `memlora ingest` cuts a session) -> the facts its turns state.
* mem_update: the windows replayed in order against `teacher.SimStore`, the store the pipeline would keep;
  the prompt shows what the pipeline's retrieval would show, the label is the generator's event for each fact
  (ADD, or UPDATE/DELETE/NONE with the shown id of that fact's memory). A change whose memory retrieval does
  not show is labelled ADD (all the pipeline could do), and counted.
* answer: after each session, its questions with the memories retrieval would show; a question whose answer
  memory is not among them is left out (it would teach guessing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from memlora.conversations import exchanges
from memlora.prompts import Memory, Turn, answer_messages, extract_messages, update_messages

from .synthetic import GoldFact, SyntheticConversation, conversation_id, generate
from .teacher import ANSWER_K, WINDOW, Example, SimStore, facts_json

VAL_EVERY = 6
"""Conversations whose seed % VAL_EVERY == VAL_EVERY - 1 form the inner validation split."""


def seeds(n: int) -> range:
    """The seeds of `n` training conversations."""
    return range(n)


def validation_groups(n: int) -> set[str]:
    return {conversation_id(s) for s in seeds(n) if s % VAL_EVERY == VAL_EVERY - 1}


def windows(sc: SyntheticConversation) -> list[tuple[int, list[Turn], list[GoldFact]]]:
    """(session number, turns, facts they state) per exchange, in the pipeline's order."""
    conv = sc.conversation
    return [(s.number, turns, [f for t in turns for f in sc.facts.get(t.turn_id, ())])
            for s in conv.sessions for _, turns in exchanges(conv, [s.number], WINDOW)]


def extract_examples(sc: SyntheticConversation) -> list[Example]:
    return [Example("extract", extract_messages(turns), facts_json([f.text for f in facts]), sc.conversation.id)
            for _, turns, facts in windows(sc)]


@dataclass
class Replay:
    updates: list[Example] = field(default_factory=list)
    answers: list[Example] = field(default_factory=list)
    unseen: int = 0  # changes whose memory retrieval did not show (labelled ADD)
    unanswerable: int = 0  # questions whose answer memory retrieval did not show (left out)


def _events(facts: list[GoldFact], shown_ids: list[str], where: dict[str, str], next_id: int,
            replay: Replay) -> list[dict]:
    """The label of one update prompt; `where` (slot -> memory id) follows the store the events leave."""
    events = []
    for f in facts:
        mid = where.get(f.slot)
        if f.event != "ADD" and mid not in shown_ids:
            replay.unseen += 1
        if f.event == "ADD" or mid not in shown_ids:
            events.append({"event": "ADD", "text": f.text})
            if f.event == "DELETE":
                where.pop(f.slot, None)
            else:
                where[f.slot] = f"m{next_id}"
            next_id += 1
            continue
        sid = str(shown_ids.index(mid))
        if f.event == "UPDATE":
            events.append({"event": "UPDATE", "id": sid, "text": f.text})
        elif f.event == "DELETE":
            events.append({"event": "DELETE", "id": sid})
            del where[f.slot]
        else:
            events.append({"event": "NONE", "id": sid})
    return events


def replay(sc: SyntheticConversation, embedder) -> Replay:
    """Replay the conversation window by window; update examples per window with facts, answer examples
    after each session."""
    conv = sc.conversation
    plan = windows(sc)
    texts = [f.text for _, _, facts in plan for f in facts]
    vecs = embedder.embed(texts) if texts else np.zeros((0, embedder.dim), np.float32)
    q_vecs = embedder.embed([q.question for q in sc.questions]) if sc.questions else []
    store, where, out, at = SimStore(embedder.dim), {}, Replay(), 0
    for n, (number, turns, facts) in enumerate(plan):
        if facts:
            fact_vecs, at = vecs[at : at + len(facts)], at + len(facts)
            shown_idx = store.related(fact_vecs)
            shown = [store.mems[i] for i in shown_idx]
            events = _events(facts, [m.id for m in shown], where, store.next, out)
            texts_now = [f.text for f in facts]
            out.updates.append(Example("mem_update", update_messages(texts_now, shown),
                                       json.dumps({"memory": events}, ensure_ascii=False), conv.id, len(shown)))
            store.apply(events, shown_idx, fact_vecs, texts_now, turns[0].date)
        if n + 1 == len(plan) or plan[n + 1][0] != number:  # the session ends: its questions
            for q, qv in zip(sc.questions, q_vecs):
                if q.session == number:
                    _answer(q.question, q.answer, where.get(q.slot), store, qv, conv.id, out)
    return out


def _answer(question: str, answer: str, memory_id: str | None, store: SimStore, q_vec, group: str,
            out: Replay) -> None:
    memories = [Memory(store.mems[i].id, store.mems[i].text, store.mems[i].date, s)
                for i, s in store.search(q_vec, ANSWER_K)]
    if memory_id is None or memory_id not in {m.id for m in memories}:
        out.unanswerable += 1
        return
    out.answers.append(Example("answer", answer_messages(question, memories), answer, group))


def synthetic_examples(op: str, n: int, embedder=None) -> list[Example]:
    """Examples for `op` from the first `n` synthetic conversations."""
    convs = [generate(s) for s in seeds(n)]
    if op == "extract":
        return [e for sc in convs for e in extract_examples(sc)]
    if embedder is None:
        from memlora.embed import Embedder

        embedder = Embedder()
    replays = [replay(sc, embedder) for sc in convs]
    return [e for r in replays for e in (r.updates if op == "mem_update" else r.answers)]

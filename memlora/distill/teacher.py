"""Teacher examples for the three operations, rendered with the pipeline's own prompt builders.

Two sources: LoCoMo annotations (observations, QA, and a rule-based update teacher over observations in
time order) and a teacher JSONL with any large model's outputs. Either way an example is the exact chat
messages the pipeline sends at run time plus the reply the adapter should learn.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memlora import OPERATIONS
from memlora.conversations import Conversation, exchanges, load_locomo
from memlora.errors import MemloraError
from memlora.parse import MalformedOutput, parse_answer, parse_facts, parse_update
from memlora.prompts import MAX_SHOWN, Memory, Turn, answer_messages, extract_messages, update_messages

WINDOW = 4  # turns per exchange, as `memlora ingest` cuts them
HELD_OUT = ("conv-47", "conv-48")  # LoCoMo's test conversations: never trained or tuned on
TOP_K, ANSWER_K = 5, 10  # retrieval sizes of MemoryPipeline
QA_CATEGORIES = (1, 2, 3, 4)
LOCOMO_ENV = "MEMLORA_LOCOMO"
_DIA_ID = re.compile(r"D\d+:\d+")

# Update-teacher thresholds on all-MiniLM-L6-v2 cosine similarity (see docs/distillation.md).
DUPLICATE_COS = 0.85
SAME_TOPIC_COS = 0.80
_ENDS_STATE = re.compile(
    r"\b(no longer|not anymore|stopped|quit|broke up|gave up|ended|moved out|sold|lost (?:his|her|their) job)\b", re.I
)


@dataclass(frozen=True)
class Example:
    """One training example: chat messages (what the pipeline sends) and the teacher's reply."""

    op: str
    messages: list[dict[str, str]]
    target: str
    group: str  # the conversation it comes from; splits never cut a conversation
    n_shown: int = 0  # memories shown with temporary ids (mem_update), so a reply can be parsed
    source: str = "teacher"  # where it comes from (locomo, synthetic, a teacher file): the data mix


def locomo_dir(data: Path | None) -> Path:
    """The LoCoMo folder: `--data`, else `$MEMLORA_LOCOMO`."""
    path = data or (Path(os.environ[LOCOMO_ENV]) if os.environ.get(LOCOMO_ENV) else None)
    if path is None:
        raise MemloraError(f"no LoCoMo data: pass --data DIR or set {LOCOMO_ENV}")
    if not Path(path).is_dir():
        raise MemloraError(f"{path}: LoCoMo data directory does not exist")
    return Path(path)


def load_conversations(data: Path, ids: list[str]) -> list[Conversation]:
    """Load `ids` (e.g. conv-26) from `data`; a missing one is an error, never silently skipped."""
    convs = []
    for cid in ids:
        f = Path(data) / f"{cid}.json"
        if not f.is_file():
            raise MemloraError(f"{f}: conversation {cid} not found in {data}")
        convs.append(load_locomo(f))
    return convs


def observation_facts(conv: Conversation) -> dict[str, list[tuple[str, str]]]:
    """dia_id -> (fact, the person it is annotated under) for the observations coming from that turn, in
    annotation order."""
    by_turn: dict[str, list[tuple[str, str]]] = {}
    for s in conv.sessions:
        for person, facts in s.observations.items():
            for fact, source in facts:
                for dia in _DIA_ID.findall(str(source)):
                    by_turn.setdefault(dia, []).append((fact.strip(), person))
    return by_turn


def window_observations(conv: Conversation) -> list[tuple[list[Turn], list[tuple[str, str]]]]:
    """Each exchange window with the observations (fact, person) of its turns, a fact once."""
    by_turn = observation_facts(conv)
    out = []
    for _, turns in exchanges(conv, [s.number for s in conv.sessions], WINDOW):
        seen: dict[str, str] = {}
        for t in turns:
            for fact, person in by_turn.get(t.turn_id, []):
                seen.setdefault(fact, person)
        out.append((turns, list(seen.items())))
    return out


def window_facts(conv: Conversation) -> list[tuple[list[Turn], list[str]]]:
    """Each exchange window with the observation facts of its turns: the extraction target."""
    return [(turns, [fact for fact, _ in obs]) for turns, obs in window_observations(conv)]


def facts_json(facts: list[str]) -> str:
    return json.dumps({"facts": facts}, ensure_ascii=False)


def extract_examples(conv: Conversation) -> list[Example]:
    return [Example("extract", extract_messages(turns), facts_json(facts), conv.id) for turns, facts in window_facts(conv)]


# -- memory update: a rule-based teacher over observations arriving in time order ------------------

def _names(text: str) -> set[str]:
    return set(re.findall(r"\b[A-Z][a-z]+\b", text))


def decide(fact: str, fact_vec: np.ndarray, shown: list[Memory], shown_vecs: np.ndarray, busy: set[str]) -> dict:
    """One Mem0 event for `fact` against the shown memories (temporary ids "0", "1", ...).

    NONE: a shown memory is a near-duplicate (cosine >= DUPLICATE_COS).
    DELETE: the fact ends a state (a cue such as "no longer", "quit") of a same-topic memory of the same person.
    UPDATE: a same-topic memory (cosine >= SAME_TOPIC_COS) about the same person; the new fact is its text.
    ADD: otherwise. `busy` holds ids already changed in this reply (a reply may change an id only once).
    """
    if len(shown):
        sims = shown_vecs @ fact_vec
        best = int(np.argmax(sims))
        sid, cos = str(best), float(sims[best])
        same_person = bool(_names(fact) & _names(shown[best].text))
        if cos >= DUPLICATE_COS:
            return {"event": "NONE", "id": sid}
        if cos >= SAME_TOPIC_COS and same_person and sid not in busy:
            busy.add(sid)
            if _ENDS_STATE.search(fact) and not _ENDS_STATE.search(shown[best].text):
                return {"event": "DELETE", "id": sid}
            return {"event": "UPDATE", "id": sid, "text": fact}
    return {"event": "ADD", "text": fact}


class SimStore:
    """The store a teacher keeps while replaying a conversation: what the pipeline's MemoryStore would hold,
    retrieved the same way (cosine, ties in insertion order; the union of each fact's top-k, best first)."""

    def __init__(self, dim: int):
        self.mems: list[Memory] = []
        self.vecs = np.zeros((0, dim), np.float32)
        self.next = 0

    def search(self, vec: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The `k` most similar memories (index, cosine), as MemoryStore.search orders them."""
        scores = self.vecs @ vec
        return [(int(i), float(scores[i])) for i in np.argsort(-scores, kind="stable")[:k]]

    def related(self, fact_vecs: np.ndarray) -> list[int]:
        """What the update prompt shows for these facts: the union of each one's top-5, best first, at most
        MAX_SHOWN."""
        best: dict[int, float] = {}
        for v in fact_vecs:
            for i, score in self.search(v, TOP_K):
                best[i] = max(best.get(i, -2.0), score)
        return sorted(best, key=lambda i: -best[i])[:MAX_SHOWN]

    def apply(self, events: list[dict], shown: list[int], fact_vecs: np.ndarray, facts: list[str], date: str) -> None:
        gone: set[int] = set()
        for e, fact, v in zip(events, facts, fact_vecs):
            if e["event"] == "ADD":
                self.mems.append(Memory(f"m{self.next}", e["text"], date))
                self.vecs = np.vstack([self.vecs, v[None]])
                self.next += 1
            elif e["event"] == "UPDATE":
                i = shown[int(e["id"])]
                self.mems[i] = Memory(self.mems[i].id, e["text"], date)
                self.vecs[i] = v
            elif e["event"] == "DELETE":
                gone.add(shown[int(e["id"])])
        keep = [i for i in range(len(self.mems)) if i not in gone]
        self.mems = [self.mems[i] for i in keep]
        self.vecs = self.vecs[keep]


def update_examples(conv: Conversation, embedder) -> list[Example]:
    """Replay the conversation's windows in order; every window with facts is one update example."""
    store = SimStore(embedder.dim)
    windows = [(turns, facts) for turns, facts in window_facts(conv) if facts]
    all_facts = [f for _, facts in windows for f in facts]
    all_vecs = embedder.embed(all_facts) if all_facts else np.zeros((0, embedder.dim), np.float32)
    out, at = [], 0
    for turns, facts in windows:
        vecs, at = all_vecs[at : at + len(facts)], at + len(facts)
        shown_idx = store.related(vecs)
        shown = [store.mems[i] for i in shown_idx]
        shown_vecs = store.vecs[shown_idx] if shown_idx else np.zeros((0, embedder.dim), np.float32)
        busy: set[str] = set()
        events = [decide(f, v, shown, shown_vecs, busy) for f, v in zip(facts, vecs)]
        target = json.dumps({"memory": events}, ensure_ascii=False)
        out.append(Example("mem_update", update_messages(facts, shown), target, conv.id, len(shown)))
        store.apply(events, shown_idx, vecs, facts, turns[0].date)
    return out


# -- answers ------------------------------------------------------------------------------------------

def answer_examples(conv: Conversation, embedder) -> list[Example]:
    """QA of categories 1-4: the evidence facts plus the most similar other facts as distractors (up to
    ANSWER_K memories, ranked by similarity to the question as retrieval would), with their dates."""
    pool: list[tuple[str, str, str]] = []  # (fact, date, dia_id)
    for s in conv.sessions:
        for facts in s.observations.values():
            for fact, source in facts:
                pool.append((fact.strip(), s.date, (_DIA_ID.findall(str(source)) or [""])[0]))
    turns = {t.turn_id: (t, s.date) for s in conv.sessions for t in s.turns}
    if not pool:
        return []
    pool_vecs = embedder.embed([p[0] for p in pool])
    qa = [q for q in conv.qa if q.get("category") in QA_CATEGORIES and "answer" in q]
    q_vecs = embedder.embed([str(q["question"]) for q in qa]) if qa else []
    out = []
    for q, qv in zip(qa, q_vecs):
        evidence = set(_DIA_ID.findall(" ".join(map(str, q.get("evidence", [])))))
        chosen = [i for i, p in enumerate(pool) if p[2] in evidence]
        mems = [(pool[i][0], pool[i][1], float(pool_vecs[i] @ qv)) for i in chosen]
        for dia in evidence - {pool[i][2] for i in chosen}:
            if dia in turns:  # an evidence turn without an observation: the turn itself
                t, date = turns[dia]
                mems.append((f"{t.speaker} said: {t.text}", date, 1.0))
        mems = mems[:ANSWER_K]
        for i in np.argsort(-(pool_vecs @ qv), kind="stable"):
            if len(mems) >= ANSWER_K:
                break
            if int(i) not in chosen:
                mems.append((pool[i][0], pool[i][1], float(pool_vecs[i] @ qv)))
        mems.sort(key=lambda m: -m[2])
        memories = [Memory(str(k), text, date, score) for k, (text, date, score) in enumerate(mems)]
        out.append(Example("answer", answer_messages(str(q["question"]), memories), answer_target(q), conv.id))
    return out


def answer_target(q: dict) -> str:
    """LoCoMo's answer as one line (category 3 keeps the part before ';', as LoCoMo scores it)."""
    text = str(q["answer"])
    if q.get("category") == 3:
        text = text.split(";")[0]
    return " ".join(text.split())


def locomo_examples(op: str, convs: list[Conversation], embedder=None) -> list[Example]:
    """Examples for `op` from LoCoMo annotations of `convs`."""
    if op == "extract":
        return [e for c in convs for e in extract_examples(c)]
    if embedder is None:
        from memlora.embed import Embedder

        embedder = Embedder()
    build = update_examples if op == "mem_update" else answer_examples
    return [e for c in convs for e in build(c, embedder)]


# -- teacher JSONL ------------------------------------------------------------------------------------

def _memories(raw: list, where: str) -> list[Memory]:
    if not isinstance(raw, list):
        raise MemloraError(f"{where}: \"memories\" must be a list")
    out = []
    for i, m in enumerate(raw):
        text = m if isinstance(m, str) else m.get("text") if isinstance(m, dict) else None
        if not isinstance(text, str):
            raise MemloraError(f"{where}: memories[{i}] needs a text")
        out.append(Memory(str(i), text, m.get("date", "") if isinstance(m, dict) else ""))
    return out


def jsonl_example(obj: dict, where: str) -> Example:
    """One teacher JSONL line -> Example; the teacher output must parse as the pipeline would parse it."""
    op, output, n_shown = obj.get("op"), obj.get("output"), 0
    if op not in OPERATIONS:
        raise MemloraError(f"{where}: \"op\" must be one of {', '.join(OPERATIONS)}")
    if not isinstance(output, str):
        raise MemloraError(f"{where}: \"output\" (the teacher's reply) must be a string")
    try:
        if op == "extract":
            turns = [Turn(str(t["speaker"]), str(t["text"]), str(t.get("date", obj.get("date", ""))), str(i))
                     for i, t in enumerate(obj["turns"])]
            messages = extract_messages(turns)
            parse_facts(output)
        elif op == "mem_update":
            memories = _memories(obj.get("memories", []), where)
            facts = [str(f) for f in obj["facts"]]
            messages = update_messages(facts, memories)
            parse_update(output, {m.id for m in memories})
            n_shown = len(memories)
        else:
            messages = answer_messages(str(obj["question"]), _memories(obj.get("memories", []), where))
            output = parse_answer(output)
    except (KeyError, TypeError) as e:
        raise MemloraError(f"{where}: missing or malformed field {e}") from e
    except MalformedOutput as e:
        raise MemloraError(f"{where}: teacher output does not parse ({e})") from e
    return Example(op, messages, output.strip(), str(obj.get("group", obj.get("conversation", "teacher"))), n_shown)


def jsonl_examples(path: Path, op: str) -> list[Example]:
    """The `op` lines of a teacher JSONL file (other operations' lines are skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise MemloraError(f"{path}: cannot read teacher file ({e.strerror})") from e
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise MemloraError(f"{path}:{n}: not JSON ({e})") from e
        if not isinstance(obj, dict):
            raise MemloraError(f"{path}:{n}: expected a JSON object")
        if obj.get("op") == op:
            out.append(jsonl_example(obj, f"{path}:{n}"))
    if not out:
        raise MemloraError(f"{path}: no teacher examples for op {op!r}")
    return out

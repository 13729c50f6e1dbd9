"""What a conversation should leave behind, written down beside it: `NAME.truth.json` next to `NAME.jsonl`.

It holds the cast (every person and pet the conversation names), the questions with their expected answers
(an answer is right when it contains all the answer's key words) and the memories the store should end with
(the person each must name, other cast names it may carry beside that person, and key words), plus facts
that later changed (`"past": true`: a memory of one is judged for the person it names, but not expected). `memlora demo`
and `memlora eval convs` judge what a user would see against it (`memlora.quality`).

    {"cast": ["Ana", "Ben", "Max"],
     "questions": [{"question": "What is the name of Ben's dog?", "answer": "Max", "keywords": ["Max"]}],
     "memories": [{"person": "Ben", "also": ["Max"], "keywords": ["beagle"]}]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import MemloraError

SUFFIX = ".truth.json"
DATA = Path(__file__).parent / "data"
DEMO_CONVERSATION = DATA / "demo_conversation.jsonl"  # the demo's conversation; never trained on
HELDOUT = DATA / "heldout"  # conversations like the demo's, with other people and facts; never trained on


@dataclass(frozen=True)
class ExpectedAnswer:
    question: str
    answer: str  # the reference answer (token F1 is scored against it)
    keywords: tuple[str, ...]  # an answer is right when it contains every one


@dataclass(frozen=True)
class ExpectedMemory:
    person: str  # the name the memory must carry
    keywords: tuple[str, ...]  # what identifies the memory, whoever it names
    also: tuple[str, ...] = ()  # other cast names it may carry ("Priya's brother Arjun": person Arjun, also Priya)
    past: bool = False  # a fact that later changed: judged for whom it names, not expected in the final store


@dataclass(frozen=True)
class Truth:
    path: Path
    cast: tuple[str, ...]
    questions: tuple[ExpectedAnswer, ...]
    memories: tuple[ExpectedMemory, ...]


def truth_path(conversation: Path) -> Path:
    """Where the truth of a conversation file lies: beside it, `NAME.truth.json`."""
    conversation = Path(conversation)
    return conversation.with_name(conversation.name.rsplit(".", 1)[0] + SUFFIX)


def _words(obj: dict, key: str, where: str, required: bool = True) -> tuple[str, ...]:
    value = obj.get(key, None if required else [])
    if not isinstance(value, list) or (required and not value) or not all(isinstance(w, str) and w.strip() for w in value):
        raise MemloraError(f"{where}: \"{key}\" must be a {'non-empty ' if required else ''}list of words")
    return tuple(value)


def _text(obj: dict, key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise MemloraError(f"{where}: \"{key}\" must be text")
    return value


def load_truth(path: Path) -> Truth:
    """Read and check a truth file; every problem is one line naming the file and the entry."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise MemloraError(f"{path}: cannot read the expected truth ({e.strerror})") from e
    except ValueError as e:
        raise MemloraError(f"{path}: the expected truth is not JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list) or not isinstance(data.get("memories"), list):
        raise MemloraError(f"{path}: expected an object with \"cast\", \"questions\" and \"memories\" lists")
    cast = _words(data, "cast", str(path))
    questions = []
    for i, q in enumerate(data["questions"]):
        where = f"{path}: questions[{i}]"
        if not isinstance(q, dict):
            raise MemloraError(f"{where}: must be an object")
        questions.append(ExpectedAnswer(_text(q, "question", where), _text(q, "answer", where), _words(q, "keywords", where)))
    memories = []
    for i, m in enumerate(data["memories"]):
        where = f"{path}: memories[{i}]"
        if not isinstance(m, dict):
            raise MemloraError(f"{where}: must be an object")
        if not isinstance(m.get("past", False), bool):
            raise MemloraError(f"{where}: \"past\" must be true or false")
        memory = ExpectedMemory(_text(m, "person", where), _words(m, "keywords", where), _words(m, "also", where, False),
                                m.get("past", False))
        unknown = [n for n in (memory.person, *memory.also) if n not in cast]
        if unknown:
            raise MemloraError(f"{where}: {', '.join(unknown)} not in the cast")
        memories.append(memory)
    return Truth(path, cast, tuple(questions), tuple(memories))

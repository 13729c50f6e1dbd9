"""What a user sees, measured against a conversation's truth (`memlora.truth`): answers right, memories naming
the right person, duplicates, malformed exchanges. One set of rules for `memlora demo`, `memlora eval convs`
and the speaker attribution of `memlora eval locomo`.

* A text *names* the cast members whose name occurs in it as a word ("Ben's" names Ben).
* A text names the right person for (person, allowed) when it names `person` and no cast member outside
  {person} and `allowed`.
* A text contains a key word when every Porter stem of the word (after LoCoMo's answer normalisation) is
  among the text's stems.
* An answer is right when it contains all of its expected answer's key words.
* A stored memory matches the expected memories whose key words it all contains. It names the right person
  when it names the person of one of them right (see above), else the wrong person; a memory matching none
  is unmatched. It counts for the matching expected memory with most key words (first on a tie), among
  those whose person it names right when there are any. A right-person memory counting for an expected
  memory an earlier right-person memory already counts for is a duplicate. An expected memory (one not
  marked past) is stored when some memory matches it and names its person right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nltk.stem import PorterStemmer

from .metrics import normalize_answer, token_f1
from .prompts import Memory
from .truth import ExpectedAnswer, ExpectedMemory, Truth

RIGHT, WRONG, UNMATCHED = "right person", "wrong person", "unmatched"
OPS = ("extract", "mem_update")
_STEMMER = PorterStemmer()


def names_in(text: str, cast: tuple[str, ...] | list[str]) -> set[str]:
    return {n for n in cast if re.search(rf"\b{re.escape(n)}\b", text)}


def names_right_person(text: str, person: str, allowed: set[str] | tuple[str, ...], cast) -> bool:
    named = names_in(text, cast)
    return person in named and named <= {person, *allowed}


def _stems(text: str) -> set[str]:
    return {_STEMMER.stem(w) for w in normalize_answer(text).split()}


def contains(text: str, keywords: tuple[str, ...]) -> bool:
    have = _stems(text)
    return all(_stems(k) <= have for k in keywords)


@dataclass(frozen=True)
class AnswerCheck:
    question: str
    expected: str
    answer: str
    right: bool
    f1: float


def check_answer(expected: ExpectedAnswer, answer: str) -> AnswerCheck:
    return AnswerCheck(expected.question, expected.answer, answer, contains(answer, expected.keywords),
                       token_f1(answer, expected.answer))


@dataclass(frozen=True)
class MemoryCheck:
    id: str
    date: str
    text: str
    verdict: str  # RIGHT | WRONG | UNMATCHED
    expected: ExpectedMemory | None
    duplicate: bool


def check_memories(memories: list[Memory], truth: Truth) -> list[MemoryCheck]:
    out, counted = [], set()
    for m in memories:
        matches = [e for e in truth.memories if contains(m.text, e.keywords)]
        right = [e for e in matches if names_right_person(m.text, e.person, e.also, truth.cast)]
        pick = max(right or matches, key=lambda e: len(e.keywords), default=None)
        verdict = UNMATCHED if pick is None else RIGHT if right else WRONG
        out.append(MemoryCheck(m.id, m.date, m.text, verdict, pick, verdict == RIGHT and pick in counted))
        if verdict == RIGHT:
            counted.add(pick)
    return out


def stored(memories: list[Memory], truth: Truth) -> list[bool]:
    """Per expected memory of the final store (not past): whether some memory matches it and names its person
    right."""
    return [any(contains(m.text, e.keywords) and names_right_person(m.text, e.person, e.also, truth.cast)
                for m in memories) for e in truth.memories if not e.past]


def malformed(rows: list[dict]) -> dict[str, dict]:
    """Per operation, of the store's exchange rows: replies malformed out of replies given. Extraction replies
    to every exchange whose prompt fits; the update replies to exchanges with facts whose prompt fits."""
    out = {}
    for op in OPS:
        bad = sum(r["status"] == "malformed" and r["failed_op"] == op for r in rows)
        if op == "extract":
            ran = sum(not (r["status"] == "too_long" and r["failed_op"] == op) for r in rows)
        else:
            ran = sum(r["status"] == "applied" for r in rows) + bad
        out[op] = {"malformed": bad, "replies": ran, "rate": bad / ran if ran else 0.0}
    return out


@dataclass(frozen=True)
class ConversationScore:
    name: str
    answers: list[AnswerCheck]
    memories: list[MemoryCheck]
    stored: list[bool]
    malformed: dict[str, dict]


def score(name: str, truth: Truth, answers: list[str], memories: list[Memory], rows: list[dict]) -> ConversationScore:
    """Judge one conversation: `answers` to `truth.questions` in order, the store's memories and exchange rows."""
    return ConversationScore(name, [check_answer(q, a) for q, a in zip(truth.questions, answers)],
                             check_memories(memories, truth), stored(memories, truth), malformed(rows))


def summary(scores: list[ConversationScore]) -> dict:
    """Counts over one or more conversations (rates over their pooled replies)."""
    answers = [a for s in scores for a in s.answers]
    verdicts = [m.verdict for s in scores for m in s.memories]
    bad = {op: {k: sum(s.malformed[op][k] for s in scores) for k in ("malformed", "replies")} for op in OPS}
    return {
        "answers_right": sum(a.right for a in answers), "questions": len(answers),
        "answer_f1": sum(a.f1 for a in answers) / len(answers) if answers else 0.0,
        "memories": len(verdicts), "right_person": verdicts.count(RIGHT), "wrong_person": verdicts.count(WRONG),
        "unmatched": verdicts.count(UNMATCHED), "duplicates": sum(m.duplicate for s in scores for m in s.memories),
        "expected_stored": sum(sum(s.stored) for s in scores), "expected_memories": sum(len(s.stored) for s in scores),
        "malformed": {op: {**v, "rate": v["malformed"] / v["replies"] if v["replies"] else 0.0} for op, v in bad.items()},
    }


def line(name: str, s: dict) -> str:
    """The one-line verdict of a `summary`."""
    bad = s["malformed"]
    return (f"{name}: {s['answers_right']}/{s['questions']} answers right; "
            f"{s['right_person']}/{s['memories']} memories name the right person ({s['wrong_person']} the wrong "
            f"person, {s['unmatched']} match no expected memory; duplicates: {s['duplicates']}); "
            f"{s['expected_stored']}/{s['expected_memories']} expected memories stored; malformed replies: "
            f"{bad['extract']['malformed']}/{bad['extract']['replies']} extract, "
            f"{bad['mem_update']['malformed']}/{bad['mem_update']['replies']} update")


def describe(result: ConversationScore) -> list[str]:
    """Every memory and answer with its verdict, then the summary line: what `memlora demo` prints."""
    out = [f"memories ({len(result.memories)}):"]
    for m in result.memories:
        verdict = m.verdict if m.verdict != WRONG else f"WRONG PERSON: should name {m.expected.person}"
        out.append(f"  {m.id} ({m.date}) {m.text}  [{verdict}{', duplicate' if m.duplicate else ''}]")
    for a in result.answers:
        out += [f"Q: {a.question}", f"A: {a.answer}  [{'right' if a.right else f'WRONG: expected {a.expected!r}'}]"]
    out.append(line(result.name, summary([result])))
    return out

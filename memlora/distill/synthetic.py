"""Synthetic multi-session conversations whose every label is known exactly.

LoCoMo gives ~150 examples per operation and no ground truth for memory updates; the shipped adapters
trained on it confuse whose fact is whose. A generated conversation has two speakers and the people and
pets they talk about (a cast whose facts must not be confused), three or four dated sessions in which facts
are stated in first person ("I ...") and about others ("My sister Lena ..."), changed (UPDATE), ended
(DELETE) and repeated (NONE), with relative dates ("last week"). The generator keeps the truth: per turn,
the facts it states (third person, naming the person, dates absolute) and the Mem0 event each is against
the store a faithful pipeline holds; per session, questions with short exact answers. One seed gives the
same conversation on every machine. Names and values come from `pools.py`, disjoint from the evaluation
conversations.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from dataclasses import dataclass

from memlora.conversations import Conversation, Session
from memlora.prompts import Turn

from . import pools
from .dates import FUTURE, day, resolve
from .topics import TOPICS, Phrasing, Topic

FIRST_DAY, DAYS = dt.date(2019, 1, 1), 9 * 365
QUESTIONS_PER_SESSION = 4
GREETINGS = ("Hi {other}! How have you been?", "Hey {other}, long time no see!", "Good to hear from you, {other}.",
             "Hi {other}, how was your week?")
GREETED = ("Hi {other}! I'm good, thanks.", "Good to hear from you too!", "Hey! Busy as always.", "Hi! All fine here.")
LEADS = ("By the way, ", "Oh, and ", "Guess what: ", "So, ", "Also, ", "News from here: ")
REACTIONS = ("That's great!", "Oh wow!", "Good for you.", "I'm glad to hear that.", "Ha, that sounds fun.",
             "How exciting!", "Oh no, really?", "Interesting!", "That's a big change.", "I should try that too.",
             "Nice, tell me more sometime.", "I wish I had time for that.")
ABOUT = ("Say hi to {name} for me!", "How is {name} doing?", "I haven't seen {name} in ages.")
CLOSINGS = ("Talk soon!", "I have to run, bye!", "Let's catch up again soon.", "Take care!")


@dataclass(frozen=True)
class Person:
    name: str
    kind: str  # "speaker", a relative ("sister", ...) or a species ("dog", "cat")
    gender: str  # "f" or "m"
    owner: str = ""  # the speaker whose relative or pet this is

    @property
    def role(self) -> str:
        return "speaker" if not self.owner else "pet" if self.kind in pools.BREEDS else "relative"

    @property
    def label(self) -> str:
        """How a fact names them: 'Ana', "Ana's sister Lena", "Ana's dog Rex"."""
        return self.name if not self.owner else f"{self.owner}'s {self.kind} {self.name}"


@dataclass(frozen=True)
class GoldFact:
    """One fact a turn states, as the extraction label writes it, with what it does to the memory store."""

    text: str
    person: str  # whom it is about: the name its memory must carry
    names: tuple[str, ...]  # every cast name in `text` (who may be named beside `person`)
    slot: str  # the memory it adds, updates, deletes or repeats
    event: str  # ADD | UPDATE | DELETE | NONE


@dataclass(frozen=True)
class Question:
    question: str
    answer: str
    slot: str  # the memory holding the answer
    session: int  # asked after this session


@dataclass(frozen=True)
class SyntheticConversation:
    seed: int
    conversation: Conversation
    cast: tuple[Person, ...]
    facts: dict[str, tuple[GoldFact, ...]]  # turn id -> the facts that turn states
    questions: tuple[Question, ...]


@dataclass
class _Alive:
    """A memory the faithful store holds: its topic, subject, current value and text."""

    topic: Topic
    subject: Person
    value: dict
    text: str


def _an(words: str) -> str:
    return ("an " if words[0].lower() in "aeiou" else "a ") + words


_DATED = ("when", "date", "answer_date", "until")


def _key(value: dict) -> str:
    return "|".join(f"{k}={v}" for k, v in sorted(value.items()) if k not in _DATED)


def _ahead(value: dict, today: dt.date) -> bool:
    """A plan is still ahead (can change, can be asked about); anything undated always is."""
    return "until" not in value or dt.date.fromisoformat(value["until"]) >= today


class _Writer:
    """Writes one conversation, keeping the truth as it goes."""

    def __init__(self, seed: int):
        self.seed = seed
        self.rng = random.Random(seed)
        self.cast = self._cast()
        self.alive: dict[str, _Alive] = {}
        self.introduced: set[str] = set()  # pets already adopted in the story (never twice)
        self.serial = 0

    def _cast(self) -> tuple[Person, ...]:
        rng = self.rng
        names = {"f": list(pools.FEMALE), "m": list(pools.MALE)}
        for pool in names.values():
            rng.shuffle(pool)
        pets = list(pools.PETS)
        rng.shuffle(pets)
        cast = [Person(names[g].pop(), "speaker", g) for g in (rng.choice("fm"), rng.choice("fm"))]
        for speaker in cast[:2]:
            for kind in rng.sample(sorted(pools.RELATIVES), rng.randint(1, 2)):
                g = pools.RELATIVES[kind] or rng.choice("fm")
                cast.append(Person(names[g].pop(), kind, g, speaker.name))
            if rng.random() < 0.7:
                cast.append(Person(pets.pop(), rng.choice(sorted(pools.BREEDS)), rng.choice("fm"), speaker.name))
        return tuple(cast)

    # -- what can be said ------------------------------------------------------------------------
    def _owner(self, p: Person) -> Person:
        return p if not p.owner else next(c for c in self.cast if c.name == p.owner)

    def _pet_of(self, speaker: Person) -> Person | None:
        return next((c for c in self.cast if c.owner == speaker.name and c.role == "pet"), None)

    def _slot(self, topic: Topic, subject: Person) -> str:
        if topic.many:
            self.serial += 1
            return f"{subject.name}:{topic.name}:{self.serial}"
        return f"{subject.name}:{topic.name}"

    def _can_add(self, topic: Topic, subject: Person, touched: set[str]) -> bool:
        if subject.role not in topic.subjects:
            return False
        if topic.name == "pet":
            pet = self._pet_of(subject)
            return pet is not None and pet.name not in self.introduced
        if topic.name == "pet_event":
            return f"{subject.owner}:pet" in self.alive
        slot = f"{subject.name}:{topic.name}"
        return topic.many or (slot not in self.alive and slot not in touched)

    def _value(self, topic: Topic, subject: Person, old: dict | None = None) -> dict:
        if topic.name == "pet":
            pet = self._pet_of(subject)
            return {"pet": pet.name, "species": pet.kind, "breed": self.rng.choice(pools.BREEDS[pet.kind])}
        if topic.name == "plan" and old is not None:
            return dict(old)  # the same plan on another date
        mine = {_key(a.value) for a in self.alive.values() if a.topic is topic and a.subject == subject}
        if old is not None:
            mine.add(_key(old))
        others = [a.value for a in self.alive.values() if a.topic is topic and a.subject != subject
                  and _key(a.value) not in mine]
        if others and self.rng.random() < 0.2:  # the same job or city as someone else: still another person's fact
            return dict(self.rng.choice(others))
        return dict(self.rng.choice([v for v in topic.pool if _key(v) not in mine]))

    def _fields(self, subject: Person, value: dict, old: dict | None = None) -> dict[str, str]:
        f = {**value, **{f"old_{k}": v for k, v in (old or {}).items()}}
        for k in ("title", "car"):
            if k in f:
                f[f"a_{k}"] = _an(f[k])
        ref = f"{'our' if subject.role == 'pet' and self.rng.random() < 0.5 else 'my'} {subject.kind} {subject.name}"
        q = subject.name if subject.role == "speaker" else self.rng.choice(
            (f"{subject.owner}'s {subject.kind}", subject.name, subject.label))
        f.update(N=subject.label, ref=ref, Ref=ref[0].upper() + ref[1:], Q=q, Qs=f"{q}'s",
                 poss="her" if subject.gender == "f" else "his")
        if "when" in f:
            f["When"] = f["when"][0].upper() + f["when"][1:]
        return f

    def _say(self, phrasing: Phrasing, subject: Person, value: dict, old: dict | None, today: dt.date,
             stored: str = "") -> tuple[str, str, dict]:
        """(what the speaker says, the fact label, the value with its resolved date)."""
        if phrasing.when:
            w = resolve(self.rng.choice(phrasing.when), today)
            if old is not None and w.answer == old.get("answer_date"):
                w = resolve(next(x for x in phrasing.when if resolve(x, today).answer != w.answer), today)
            value = {**value, "when": w.spoken, "date": w.fact, "answer_date": w.answer}
            if phrasing.when[0] in FUTURE:
                value["until"] = w.last.isoformat()
        f = self._fields(subject, value, old)
        said = self.rng.choice(phrasing.first if subject.role == "speaker" else phrasing.third).format(**f)
        return said, stored if phrasing.fact is None else phrasing.fact.format(**f), value

    def _names(self, text: str) -> tuple[str, ...]:
        return tuple(p.name for p in self.cast if re.search(rf"\b{re.escape(p.name)}\b", text))

    def _fact(self, text: str, subject: Person, slot: str, event: str) -> GoldFact:
        return GoldFact(text, subject.name, self._names(text), slot, event)

    # -- one session ------------------------------------------------------------------------------
    def _changes(self, today: dt.date, touched: set[str]) -> list[tuple[Person, str, GoldFact]]:
        out = []
        changeable = [s for s, a in self.alive.items() if self._change_kinds(a) and _ahead(a.value, today)]
        for slot in self.rng.sample(changeable, min(len(changeable), self.rng.randint(2, 4))):
            a = self.alive[slot]
            event = self.rng.choice(self._change_kinds(a))
            touched.add(slot)
            if event == "UPDATE":
                new = self._value(a.topic, a.subject, a.value)
                said, text, new = self._say(a.topic.update, a.subject, new, a.value, today)
                self.alive[slot] = _Alive(a.topic, a.subject, new, text)
            elif event == "DELETE":
                said, text, _ = self._say(a.topic.delete, a.subject, a.value, None, today)
                del self.alive[slot]
            else:
                said, text, _ = self._say(a.topic.repeat, a.subject, a.value, None, today, stored=a.text)
            out.append((self._owner(a.subject), said, self._fact(text, a.subject, slot, event)))
        return out

    def _change_kinds(self, a: _Alive) -> list[str]:
        third = a.subject.role != "speaker"
        return [e for e, p in (("UPDATE", a.topic.update), ("DELETE", a.topic.delete), ("NONE", a.topic.repeat))
                if p is not None and (p.third if third else p.first)]

    def _additions(self, n: int, today: dt.date, touched: set[str]) -> list[tuple[Person, str, GoldFact]]:
        out = []
        for _ in range(n):
            options = [(t, p) for p in self.cast for t in TOPICS if self._can_add(t, p, touched)]
            speakers = [o for o in options if o[1].role == "speaker"]
            topic, subject = self.rng.choice(speakers if speakers and self.rng.random() < 0.55 else options)
            slot = self._slot(topic, subject)
            said, text, value = self._say(topic.add, subject, self._value(topic, subject), None, today)
            if topic.name == "pet":
                self.introduced.add(value["pet"])
            self.alive[slot] = _Alive(topic, subject, value, text)
            touched.add(slot)
            out.append((self._owner(subject), said, self._fact(text, subject, slot, "ADD")))
        return out

    def _opening(self, speaker: Person, text: str) -> str:
        first = text.split()[0].rstrip(",:!?.")
        keep = first.split("'")[0] == "I" or first in {p.name for p in self.cast}
        return text if keep else text[0].lower() + text[1:]

    def _turns(self, statements: list[tuple[Person, str, GoldFact]]) -> list[tuple[Person, str, list[GoldFact]]]:
        rng = self.rng
        a, b = self.cast[0], self.cast[1]
        other = {a.name: b, b.name: a}
        opener = rng.choice((a, b))
        turns: list[tuple[Person, str, list[GoldFact]]] = [
            (opener, rng.choice(GREETINGS).format(other=other[opener.name].name), [])]
        for speaker, said, fact in statements:
            last = turns[-1]
            if last[0] == speaker and (not last[2] or (len(last[2]) < 2 and rng.random() < 0.4)):
                turns[-1] = (speaker, f"{last[1]} {said}", [*last[2], fact])
                continue
            if last[0] == speaker:
                reply = rng.choice(GREETED).format(other=speaker.name) if len(turns) == 1 else rng.choice(REACTIONS)
                turns.append((other[speaker.name], reply, []))
            if rng.random() < 0.3:
                said = rng.choice(LEADS) + self._opening(speaker, said)
            turns.append((speaker, said, [fact]))
            if rng.random() < 0.45:
                mine = [p.name for p in self.cast if p.owner == speaker.name]
                line = rng.choice(ABOUT).format(name=rng.choice(mine)) if mine and rng.random() < 0.3 else rng.choice(REACTIONS)
                turns.append((other[speaker.name], line, []))
        if rng.random() < 0.4:
            turns.append((other[turns[-1][0].name], rng.choice(CLOSINGS), []))
        return turns

    def _questions(self, number: int, touched: set[str], today: dt.date) -> list[Question]:
        asked = [s for s, a in self.alive.items() if a.topic.questions and _ahead(a.value, today)]
        fresh = [s for s in asked if s in touched]
        rest = [s for s in asked if s not in touched]
        chosen = (self.rng.sample(fresh, len(fresh)) + self.rng.sample(rest, len(rest)))[:QUESTIONS_PER_SESSION]
        out = []
        for slot in chosen:
            a = self.alive[slot]
            q, ans = self.rng.choice(a.topic.questions)
            f = self._fields(a.subject, a.value)
            out.append(Question(q.format(**f), ans.format(**f), slot, number))
        return out

    def write(self) -> SyntheticConversation:
        rng = self.rng
        today = FIRST_DAY + dt.timedelta(days=rng.randrange(DAYS))
        sessions, facts, questions = [], {}, []
        for number in range(1, rng.choice((3, 4)) + 1):
            touched: set[str] = set()
            statements = [] if number == 1 else self._changes(today, touched)
            statements += self._additions(rng.randint(5, 8) if number == 1 else rng.randint(2, 5), today, touched)
            rng.shuffle(statements)
            turns = []
            for k, (speaker, text, stated) in enumerate(self._turns(statements), 1):
                turns.append(Turn(speaker.name, text, day(today), f"D{number}:{k}"))
                if stated:
                    facts[turns[-1].turn_id] = tuple(stated)
            sessions.append(Session(number, day(today), turns))
            questions += self._questions(number, touched, today)
            today += dt.timedelta(days=rng.randint(5, 40))
        speakers = (self.cast[0].name, self.cast[1].name)
        conv = Conversation(conversation_id(self.seed), speakers, sessions, [])
        return SyntheticConversation(self.seed, conv, self.cast, facts, tuple(questions))


def conversation_id(seed: int) -> str:
    return f"syn-{seed:05d}"


def generate(seed: int) -> SyntheticConversation:
    """The synthetic conversation of `seed` (deterministic)."""
    return _Writer(seed).write()

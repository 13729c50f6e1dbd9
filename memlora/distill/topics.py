"""What people in synthetic conversations talk about: per topic, how a fact is said, how it is labelled,
how it changes, and what can be asked about it.

Templates are filled by `synthetic.py`: `{N}` is how a fact names its subject ("Ana", "Ana's sister Lena",
"Ana's dog Rex"), `{Ref}`/`{ref}` how the speaker refers to someone else ("My sister Lena"), `{Q}`/`{Qs}` how a
question names the subject (and its possessive), `{when}`/`{When}` a relative date as said, `{date}` the same
date as a fact states it and `{answer_date}` as an answer gives it; the value's own fields fill the rest, the
previous value's as `{old_...}`.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import pools
from .dates import FUTURE, PAST


@dataclass(frozen=True)
class Phrasing:
    first: tuple[str, ...]  # the subject says it ("I ...")
    third: tuple[str, ...]  # someone says it about a relative or pet ("{Ref} ...")
    fact: str | None  # the label, naming the subject; None for a repeat: the stored memory's text
    when: tuple[str, ...] = ()  # relative dates it may use (dates.PAST or dates.FUTURE); () for none


@dataclass(frozen=True)
class Topic:
    name: str
    subjects: tuple[str, ...]  # "speaker", "relative", "pet"
    pool: tuple[dict, ...]
    add: Phrasing
    update: Phrasing | None = None  # a new value replaces the memory (UPDATE)
    delete: Phrasing | None = None  # the state ends (DELETE)
    repeat: Phrasing | None = None  # said again (NONE); its fact is the stored memory's text
    questions: tuple[tuple[str, str], ...] = ()
    many: bool = False  # several at once (trips, plans): every mention is a memory of its own


TOPICS = (
    Topic(
        "job", ("speaker", "relative"), pools.JOBS,
        add=Phrasing(("I work as {a_title} at {place}.", "I'm {a_title} at {place} these days.",
                      "Work is good, I'm {a_title} at {place}."),
                     ("{Ref} works as {a_title} at {place}.", "{Ref} is {a_title} at {place}."),
                     "{N} works as {a_title} at {place}."),
        update=Phrasing(("I left {old_place} and started as {a_title} at {place} {when}.",
                         "Big change: {when} I started a new job as {a_title} at {place}."),
                        ("{Ref} left {old_place} and started as {a_title} at {place} {when}.",),
                        "{N} started working as {a_title} at {place} {date}.", PAST),
        delete=Phrasing(("I quit my job at {place}.", "I'm not working at {place} anymore, I quit."),
                        ("{Ref} quit {poss} job at {place}.",),
                        "{N} quit {poss} job as {a_title} at {place}."),
        repeat=Phrasing(("I'm still {a_title} at {place}, nothing new there.",
                         "Same job for me, still {a_title} at {place}."),
                        ("{Ref} is still {a_title} at {place}.",), None),
        questions=(("What does {Q} do for work now?", "{title}"), ("What is {Qs} job?", "{title}"),
                   ("Where does {Q} work?", "{place}")),
    ),
    Topic(
        "home", ("speaker", "relative"), tuple({"city": c} for c in pools.CITIES),
        add=Phrasing(("I live in {city}.", "I've been living in {city} for a few years now."),
                     ("{Ref} lives in {city}.",), "{N} lives in {city}."),
        update=Phrasing(("I moved to {city} {when}, so I don't live in {old_city} anymore.",
                         "We moved from {old_city} to {city} {when}."),
                        ("{Ref} moved from {old_city} to {city} {when}.",),
                        "{N} moved to {city} {date}.", PAST),
        repeat=Phrasing(("I still live in {city}, I love it there.",), ("{Ref} still lives in {city}.",), None),
        questions=(("Where does {Q} live now?", "{city}"), ("Which city does {Q} live in?", "{city}")),
    ),
    Topic(
        "hobby", ("speaker",), pools.HOBBIES,
        add=Phrasing(("I {base} these days.", "I took up {ing} recently, I love it."), (), "{N} {third}."),
        update=Phrasing(("I stopped {old_ing}, now I {base}.",), (), "{N} {third} now instead of {old_ing}."),
        delete=Phrasing(("I gave up {ing}, no time for it anymore.",), (), "{N} gave up {ing}."),
        repeat=Phrasing(("I still {base} every week.",), (), None),
        questions=(("What hobby does {Q} have?", "{answer}"),),
    ),
    Topic(
        "car", ("speaker",), pools.CARS,
        add=Phrasing(("I drive {a_car} these days.", "We have {a_car} now."), (), "{N} drives {a_car}."),
        update=Phrasing(("I traded the {old_short} for {a_car}.", "We sold the {old_short} and bought {a_car}."), (),
                        "{N} traded {poss} {old_car} for {a_car}."),
        delete=Phrasing(("We sold the {short}, we take the train now.", "I sold my {car}."), (), "{N} sold {poss} {car}."),
        repeat=Phrasing(("I still drive the {car}.",), (), None),
        questions=(("What car does {Q} drive?", "{a_car}"),),
    ),
    Topic(
        "trip", ("speaker", "relative"), pools.TRIPS,
        add=Phrasing(("I {past} {when}.", "{When} I {past}, it was great."), ("{Ref} {past} {when}.",),
                     "{N} {past} {date}.", PAST),
        questions=(("When did {Q} {base}?", "{answer_date}"),), many=True,
    ),
    Topic(
        "plan", ("speaker", "relative"), pools.PLANS,
        add=Phrasing(("I'm {ing} {when}.", "{When} I'm {ing}!"), ("{Ref} is {ing} {when}.",),
                     "{N} plans to {base} {date}.", FUTURE),
        update=Phrasing(("The plan changed: I'm {ing} {when} instead.",), ("{Ref} is {ing} {when} instead.",),
                        "{N} now plans to {base} {date}.", FUTURE),
        delete=Phrasing(("I'm not {ing} after all, I cancelled it.",), ("{Ref} is not {ing} after all.",),
                        "{N} cancelled the plan to {base}."),
        questions=(("When does {Q} plan to {base}?", "{answer_date}"),), many=True,
    ),
    Topic(
        "course", ("speaker",), pools.COURSES,
        add=Phrasing(("I'm taking {course}.", "I signed up for {course}."), (), "{N} is taking {course}."),
        delete=Phrasing(("I dropped out of {the}, it was too much.",), (), "{N} dropped out of {the}."),
        repeat=Phrasing(("I'm still taking {course}, it's going well.",), (), None),
        questions=(("What course is {Q} taking?", "{answer}"),),
    ),
    Topic(
        "pet", ("speaker",), (),  # the value is one of the speaker's pets (see synthetic.py)
        add=Phrasing(("I have a {species} named {pet}, a {breed}.", "We adopted a {breed} called {pet}!",
                      "Have I told you about {pet}? My {species}, a {breed}."), (),
                     "{N} has a {species} named {pet}, a {breed}."),
        delete=Phrasing(("We gave {pet} to my parents, they have a big garden.",), (),
                        "{N} gave {poss} {species} {pet} to {poss} parents."),
        repeat=Phrasing(("{pet} is still the best {species} ever.",), (), None),
        questions=(("What is the name of {Qs} {species}?", "{pet}"), ("What breed is {Qs} {species}?", "{breed}")),
    ),
    Topic(
        "pet_event", ("pet",), pools.PET_EVENTS,
        add=Phrasing((), ("{Ref} {past} {when}!", "{When} {ref} {past}."), "{N} {past} {date}.", PAST),
        questions=(("When did {Q} {base}?", "{answer_date}"),), many=True,
    ),
)
BY_NAME = {t.name: t for t in TOPICS}

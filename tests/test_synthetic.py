"""Synthetic conversations: seeded, windows as the pipeline cuts them, exact labels for all three operations
checked against a real SQLite store filled the way the pipeline fills it, relative dates resolved, and no
person or fact of the evaluation conversations anywhere in the training data; `memlora distill` mixes sources,
records the mix and refuses held-out conversations."""

import datetime as dt
import json
import re

import pytest
import typer
from typer.testing import CliRunner

from memlora.conversations import exchanges, load_conversation
from memlora.distill import pools
from memlora.distill.command import load_examples, main as distill_main
from memlora.distill.dates import PAST, day, resolve
from memlora.distill.synthetic import generate
from memlora.distill.synthetic_teacher import extract_examples, replay, validation_groups, windows
from memlora.distill.teacher import WINDOW
from memlora.errors import MemloraError
from memlora.parse import parse_facts, parse_update
from memlora.prompts import MAX_SHOWN, answer_messages, extract_messages, update_messages
from memlora.quality import contains
from memlora.store import Change, MemoryStore
from memlora.truth import DEMO_CONVERSATION, HELDOUT, load_truth, truth_path

pytestmark = pytest.mark.usefixtures("one_thread")

EVALUATION = [DEMO_CONVERSATION, *sorted(HELDOUT.glob("*.jsonl"))]
EVALUATION_FACTS = ("Lisbon", "beagle", "nurse", "hospital", "chemistry", "tutoring", "marathon", "allergic",
                    "puppy", "dentist", "Nairobi", "pilot", "architect", "Leeds", "Bristol", "motorbike", "swim",
                    "parrot", "bakery", "choir", "till", "Ghent", "croissant", "whistle", "school", "dachshund",
                    "furniture", "van", "Spanish", "Porto", "translates", "cello", "Sapporo", "surgery", "instructor")
"""What the evaluation conversations are about (the values of their facts), none of it in the pools."""


def _texts(sc) -> list[str]:
    """Everything of a synthetic conversation that reaches a training example."""
    turns = [t.text for s in sc.conversation.sessions for t in s.turns]
    facts = [f.text for fs in sc.facts.values() for f in fs]
    return turns + facts + [q.question for q in sc.questions] + [q.answer for q in sc.questions] + list(
        sc.conversation.speakers)


def test_relative_dates_resolve_against_the_session_date():
    sunday = dt.date(2024, 3, 3)
    assert resolve("yesterday", sunday).fact == "on 2 March 2024"
    assert resolve("last Friday", sunday).answer == "1 March 2024"
    assert resolve("last Sunday", sunday).answer == "25 February 2024"  # the latest Sunday before today
    assert resolve("on Sunday", sunday).answer == "10 March 2024"  # the first Sunday after today
    assert resolve("last week", sunday).answer == "the week before 3 March 2024"
    assert resolve("next month", dt.date(2024, 12, 20)).answer == "January 2025"
    assert resolve("next month", dt.date(2024, 1, 31)).last == dt.date(2024, 2, 29)
    assert resolve("last month", dt.date(2024, 1, 5)).fact == "in December 2023"
    assert day(dt.date(2023, 5, 8)) == "8 May 2023"


def test_generation_is_seeded_and_labels_follow_the_ingest_windows():
    assert generate(4) == generate(4) and generate(4) != generate(5)
    events, dated = set(), 0
    for seed in range(30):
        sc = generate(seed)
        conv = sc.conversation
        plan = windows(sc)
        assert [t for _, t, _ in plan] == [t for _, t in exchanges(conv, [s.number for s in conv.sessions], WINDOW)]
        for ex, (_, turns, facts) in zip(extract_examples(sc), plan):
            assert ex.messages == extract_messages(turns) and parse_facts(ex.target) == [f.text for f in facts]
        names = {p.name for p in sc.cast}
        for turn_id, facts in sc.facts.items():
            session = conv.sessions[int(turn_id[1:].split(":")[0]) - 1]
            turn = next(t for t in session.turns if t.turn_id == turn_id)
            for f in facts:
                events.add(f.event)
                assert re.search(rf"\b{f.person}\b", f.text), f  # every fact names its person
                assert set(f.names) <= names and f.person in f.names
            today = dt.datetime.strptime(session.date, "%d %B %Y").date()
            for spoken in PAST:  # a relative date said in a turn is absolute in its fact
                if re.search(rf"\b{spoken}\b", turn.text, re.I):
                    assert any(resolve(spoken, today).fact in f.text for f in facts), (turn.text, facts)
                    dated += 1
    assert events == {"ADD", "UPDATE", "DELETE", "NONE"} and dated > 30


def test_no_person_or_fact_of_the_evaluation_conversations_in_training_data():
    truths = [load_truth(truth_path(p)) for p in EVALUATION]
    cast = {n for t in truths for n in t.cast} | {t.speaker for p in EVALUATION
                                                   for s in load_conversation(p).sessions for t in s.turns}
    assert {"Ana", "Ben", "Max"} <= cast
    said = {t.text for p in EVALUATION for s in load_conversation(p).sessions for t in s.turns}
    for seed in range(200):
        for text in _texts(generate(seed)):
            assert not [n for n in cast if re.search(rf"\b{n}\b", text)], text
            assert text not in said
    values = " ".join(str(v) for pool in (pools.JOBS, pools.CITIES, pools.HOBBIES, pools.CARS, pools.TRIPS,
                                          pools.PLANS, pools.COURSES, pools.PET_EVENTS) for v in pool)
    values += " " + " ".join(b for breeds in pools.BREEDS.values() for b in breeds)
    assert not [k for k in EVALUATION_FACTS if contains(values, (k,))]


def test_update_and_answer_labels_against_a_real_store(embedder, tmp_path):
    """Replaying the labels into a MemoryStore as the pipeline does shows exactly the prompts' memories; every
    UPDATE/DELETE/NONE names the memory the truth says; the store ends as the truth (where retrieval showed
    every memory a change is about)."""
    seen = set()
    for seed in (0, 1, 2):
        sc = generate(seed)
        r = replay(sc, embedder)
        assert r.unseen == 0 and r.unanswerable == 0
        store = MemoryStore(tmp_path / f"{seed}.sqlite")
        truth: dict[str, str] = {}
        updates, answers = iter(r.updates), iter(r.answers)
        plan = windows(sc)
        for n, (number, turns, facts) in enumerate(plan):
            if facts:
                vecs = embedder.embed([f.text for f in facts])
                best = {}
                for v in vecs:  # what MemoryPipeline shows: the union of each fact's top-5, best first
                    for m in store.search(v, 5):
                        best[m.id] = m if m.id not in best or m.score > best[m.id].score else best[m.id]
                shown = sorted(best.values(), key=lambda m: -m.score)[:MAX_SHOWN]
                ex = next(updates)
                assert ex.messages == update_messages([f.text for f in facts], shown)
                events = parse_update(ex.target, {str(i) for i in range(ex.n_shown)})
                for f, e in zip(facts, events, strict=True):
                    seen.add(e.event)
                    assert e.event == f.event
                    if e.id is not None:
                        assert shown[int(e.id)].text == truth[f.slot]
                    if f.event == "DELETE":
                        del truth[f.slot]
                    elif f.event != "NONE":
                        truth[f.slot] = f.text
                changes = [Change(e.event, None if e.id is None else shown[int(e.id)].id, e.text,
                                  embedder.embed([e.text])[0] if e.event in ("ADD", "UPDATE") else None)
                           for e in events]
                store.apply(f"k{n}", [t.turn_id for t in turns], turns[0].date, [f.text for f in facts], changes)
            if n + 1 == len(plan) or plan[n + 1][0] != number:
                for q in (q for q in sc.questions if q.session == number):
                    ex = next(answers)
                    mems = store.search(embedder.embed([q.question])[0], 10)
                    assert ex.messages == answer_messages(q.question, mems) and ex.target == q.answer
                    assert truth[q.slot] in {m.text for m in mems}
        assert next(updates, None) is None and next(answers, None) is None
        assert sorted(m.text for m in store.memories()) == sorted(truth.values())
    assert seen == {"ADD", "UPDATE", "DELETE", "NONE"}


def _distill(args):
    app = typer.Typer()
    app.command()(distill_main)
    return CliRunner().invoke(app, args)


def test_distill_mixes_sources_by_conversation_and_records_the_mix(tiny_model, tiny_locomo, tmp_path):
    examples = load_examples("extract", "locomo,synthetic", tiny_locomo, ["conv-1", "conv-2"], 6)
    assert {e.source for e in examples} == {"locomo", "synthetic"}
    assert validation_groups(6) == {"syn-00005"}
    out = tmp_path / "extract"
    result = _distill(["--op", "extract", "--teacher", "locomo,synthetic", "--synthetic", "6", "--data",
                       str(tiny_locomo), "--train-convs", "conv-1,conv-2", "--val-convs", "conv-2", "--model",
                       str(tiny_model), "--out", str(out), "--ranks", "2", "--lrs", "1e-2", "--max-epochs", "1",
                       "--train-examples", "6", "--val-examples", "4", "--max-len", "1024", "--no-bf16"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    record = json.loads((out / "selection.json").read_text())
    assert record["validation_conversations"] == ["conv-2", "syn-00005"]
    assert "syn-00005" not in record["train_conversations"] and "conv-1" in record["train_conversations"]
    mix = record["data_mix"]
    assert mix["locomo"]["examples"] == 4 and mix["synthetic"]["examples"] == len(examples) - 4
    assert sum(m["train"] for m in mix.values()) == record["train_examples"] == 6
    assert sum(m["validation"] for m in mix.values()) == record["validation_examples"]


def test_distill_refuses_held_out_conversations(tmp_path):
    result = _distill(["--op", "answer", "--teacher", "locomo", "--train-convs", "conv-26,conv-47", "--out",
                       str(tmp_path / "a")])
    assert isinstance(result.exception, MemloraError)
    assert "--train-convs conv-47: held-out test conversation" in str(result.exception)
    with pytest.raises(MemloraError, match="neither `locomo`, `synthetic` nor an existing teacher JSONL"):
        load_examples("extract", "synthetic,missing.jsonl", None, [], 1)

"""What a user sees: the packaged truth files, the judgments of `memlora.quality` on a store filled by hand, and
`memlora eval convs` end to end on the tiny model with the taught adapters."""

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from memlora.conversations import load_conversation
from memlora.errors import MemloraError
from memlora.eval_convs import conversations_in
from memlora.quality import RIGHT, UNMATCHED, WRONG, contains, describe, names_right_person, score, summary
from memlora.store import Change, MemoryStore
from memlora.truth import DEMO_CONVERSATION, HELDOUT, load_truth, truth_path
from tests import script

pytestmark = pytest.mark.usefixtures("one_thread")


def test_packaged_truth_agrees_with_its_conversations():
    """Every packaged conversation has a truth whose cast holds its speakers and whose key words it says."""
    files = [*conversations_in(HELDOUT), DEMO_CONVERSATION]
    assert len(files) == 4
    for path in files:
        truth = load_truth(truth_path(path))
        conv = load_conversation(path)
        said = " ".join(t.text for s in conv.sessions for t in s.turns)
        assert set(conv.speakers) <= set(truth.cast)
        assert all(contains(said, m.keywords) for m in truth.memories), path
        assert len(truth.questions) >= 3 and len(truth.memories) >= 8


def test_truth_errors_name_the_file_and_entry(tmp_path):
    bad = tmp_path / "c.truth.json"
    bad.write_text(json.dumps({"cast": ["Ana"], "questions": [], "memories": [{"person": "Bob", "keywords": ["x"]}]}))
    with pytest.raises(MemloraError, match=r"c.truth.json: memories\[0\]: Bob not in the cast"):
        load_truth(bad)
    bad.write_text(json.dumps({"cast": ["Ana"], "questions": [],
                               "memories": [{"person": "Ana", "keywords": ["x"], "past": "yes"}]}))
    with pytest.raises(MemloraError, match=r"memories\[0\]: \"past\" must be true or false"):
        load_truth(bad)
    (tmp_path / "c.jsonl").write_text("")
    (tmp_path / "d.jsonl").write_text("")
    with pytest.raises(MemloraError, match=r"d.truth.json: missing"):
        conversations_in(tmp_path)


def _unit(i: int) -> np.ndarray:
    v = np.zeros(8, np.float32)
    v[i] = 1.0
    return v


def test_quality_of_a_store_filled_by_hand(tmp_path):
    truth = load_truth(truth_path(DEMO_CONVERSATION))
    store = MemoryStore(tmp_path / "s.sqlite")
    texts = ["Ana spent a week in Lisbon with her sister.", "Ana adopted a beagle called Max.",
             "Ben adopted a beagle called Max.", "Ben has a beagle puppy, Max.", "Ben likes pizza.",
             "Ana works as a nurse at the city hospital.", "Ana is still teaching at the high school."]
    store.apply("k1", ["L1"], "3 March 2024", texts, [Change("ADD", None, t, _unit(i)) for i, t in enumerate(texts)])
    store.record_skipped("k2", ["L5"], "malformed", None, "extract", "{", "no JSON object in output")
    store.record_skipped("k3", ["L9"], "malformed", ["x"], "mem_update", "{", "no JSON object in output")
    result = score("demo", truth, ["Max", "She is a teacher", "He tutors chemistry students"],
                   store.memories(), store.exchanges())
    assert [m.verdict for m in result.memories] == [RIGHT, WRONG, RIGHT, RIGHT, UNMATCHED, RIGHT, WRONG]
    assert [m.duplicate for m in result.memories] == [False, False, False, True, False, False, False]
    assert [a.right for a in result.answers] == [True, False, True]  # "tutors" and "tutoring" share the stem
    s = summary([result])
    assert (s["answers_right"], s["right_person"], s["wrong_person"], s["unmatched"], s["duplicates"]) == (2, 4, 2, 1, 1)
    assert (s["expected_stored"], s["expected_memories"]) == (3, 10)  # Ben's teaching is past: judged, not expected
    assert s["malformed"] == {"extract": {"malformed": 1, "replies": 3, "rate": 1 / 3},
                              "mem_update": {"malformed": 1, "replies": 2, "rate": 0.5}}
    lines = describe(result)
    assert "  m1 (3 March 2024) Ana adopted a beagle called Max.  [WRONG PERSON: should name Ben]" in lines
    assert "A: She is a teacher  [WRONG: expected 'A nurse at the city hospital']" in lines
    assert lines[-1] == ("demo: 2/3 answers right; 4/7 memories name the right person (2 the wrong person, 1 match "
                         "no expected memory; duplicates: 1); 3/10 expected memories stored; malformed replies: "
                         "1/3 extract, 1/2 update")


def test_naming_the_right_person():
    cast = ("Priya", "Tomas", "Arjun", "Pixel")
    assert names_right_person("Priya's brother Arjun is a flight instructor.", "Arjun", ("Priya",), cast)
    assert not names_right_person("Priya is a flight instructor.", "Arjun", ("Priya",), cast)
    assert not names_right_person("Tomas's brother Arjun is a pilot.", "Arjun", ("Priya",), cast)
    assert names_right_person("Tomas's cat Pixel turned ten.", "Pixel", ("Tomas",), cast)


def _run(args):
    from memlora.cli import app

    result = CliRunner().invoke(app, ["eval", "convs", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_eval_convs_end_to_end(tiny_model, taught_adapters, tiny_locomo, tmp_path):
    """The taught adapters store one merged memory naming Caroline and answer "Sunsets"."""
    data = tmp_path / "convs"
    data.mkdir()
    shutil.copy(tiny_locomo / "conv-1.json", data / "chat.json")
    (data / "chat.truth.json").write_text(json.dumps({
        "cast": ["Caroline", "Melanie"],
        "questions": [{"question": script.QUESTION, "answer": script.ANSWER, "keywords": ["sunsets"]}],
        "memories": [{"person": "Caroline", "keywords": ["support group"]},
                     {"person": "Caroline", "keywords": ["paints", "sunsets"]},
                     {"person": "Melanie", "keywords": ["swims"]}]}))
    out = tmp_path / "report.json"
    result = _run(["--data", str(data), "--no-demo", "--model", str(tiny_model), "--adapters", str(taught_adapters),
                   "--json", str(out)])
    report = json.loads(out.read_text())
    chat = report["conversations"]["chat"]
    assert chat["answers"][0]["answer"] == script.ANSWER and chat["answers"][0]["right"]
    assert chat["memories"] == [{"id": "m0", "text": script.MERGED, "verdict": RIGHT, "person": "Caroline",
                                 "duplicate": False}]
    s = chat["summary"]
    assert (s["answers_right"], s["expected_stored"], s["expected_memories"], s["duplicates"]) == (1, 2, 3, 0)
    assert s["malformed"]["extract"] == {"malformed": 0, "replies": 2, "rate": 0.0}
    assert report["total"]["questions"] == 1
    assert "chat: 1/1 answers right; 1/1 memories name the right person" in result.output

"""`memlora eval locomo` end to end on a tiny LoCoMo-format file with the tiny model and taught adapters."""

import json

import pytest
import typer
from typer.testing import CliRunner

from memlora.eval_locomo import extraction_scores, main, match_facts, questions_in


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(args):
    app = typer.Typer()
    app.command()(main)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_questions_are_limited_to_ingested_sessions(tiny_locomo):
    from memlora.conversations import load_locomo

    conv = load_locomo(tiny_locomo / "conv-1.json")
    assert [q["category"] for q in questions_in(conv, [1, 2])] == [4, 2]  # category 5 left out
    assert [q["category"] for q in questions_in(conv, [1])] == [2]


def test_fact_matching_is_one_to_one():
    assert len(match_facts(["Caroline paints sunsets", "Caroline paints sunsets"], ["Caroline paints sunsets."])) == 1
    assert match_facts(["Melanie swims"], ["Caroline paints sunsets"]) == []


def test_speaker_attribution_of_matched_facts(tiny_locomo, tmp_path):
    """A fact matched to an observation annotated under Caroline must name Caroline and not Melanie."""
    from memlora.conversations import load_locomo
    from memlora.store import MemoryStore

    conv = load_locomo(tiny_locomo / "conv-1.json")
    store = MemoryStore(tmp_path / "s.sqlite")
    store.apply("conv-1:s1:D1:1", ["D1:1"], "8 May 2023", ["Melanie went to a support group", "Melanie swims"], [])
    store.apply("conv-1:s2:D2:1", ["D2:1"], "8 May 2023", ["Caroline paints sunsets."], [])
    scores = extraction_scores(store, conv, [1, 2])
    assert scores == {"predicted": 3, "gold": 2, "matched": 2, "right_person": 1}


def test_eval_locomo_end_to_end_and_resume(tiny_model, taught_adapters, tiny_locomo, tmp_path):
    out = tmp_path / "report.json"
    args = ["--data", str(tiny_locomo), "--conversations", "conv-1", "--model", str(tiny_model),
            "--adapters", str(taught_adapters), "--json", str(out), "--update-examples", "5"]
    _run(args)
    report = json.loads(out.read_text())
    assert report["n_questions"] == 2
    assert set(report["overall"]) >= {"f1", "bleu1"}
    assert report["by_category"]["4"]["n"] == 1 and report["by_category"]["4"]["f1"] == 1.0  # "Sunsets"
    assert report["extraction_f1"] == 1.0  # both observation facts extracted exactly
    assert report["speaker_attribution"] == 1.0
    assert report["malformed"] == {"extract": {"malformed": 0, "replies": 2, "rate": 0.0},
                                   "mem_update": {"malformed": 0, "replies": 2, "rate": 0.0}}
    assert report["update"]["facts"] == 2 and 0.0 <= report["update_accuracy"] <= 1.0
    answers = tmp_path / "report.json.work" / "conv-1.answers.jsonl"
    lines = answers.read_text().splitlines()
    _run(args)  # resumes: nothing is answered twice, the report is the same
    assert answers.read_text().splitlines() == lines
    again = json.loads(out.read_text())
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in report.items() if k != "seconds"}

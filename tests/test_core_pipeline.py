"""The memory pipeline through the on-device core's host runner (`memlora-core prompt/ingest/ask/memories`) against
the Python pipeline on the same tiny ExecuTorch bundle: the same prompt ids, facts, events, final store (rows,
history, skipped exchanges; embeddings to float rounding) and answers; its device trace passes `memlora parity
--trace`; a store begun by one side is resumed by the other."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from memlora.bundle_tokenizer import BundleTokenizer
from memlora.conversations import load_conversation
from memlora.export.bundle import MANIFEST
from memlora.ingest import ingest, plan
from memlora.prompts import Memory, Turn, answer_messages, extract_messages, render, update_messages
from memlora.store import MemoryStore
from tests import script
from tests.test_device_core import ROOT, core_error, run

DEMO = ROOT / "memlora" / "data" / "demo_conversation.jsonl"

AWKWARD = ['quote " backslash \\ tab\t newline\nend', "braces {turns} {{x}} }", "emoji 😀 CJK 日本語 café",
           "control \x01\x1f del \x7f", "<|im_end|> inside", ""]


def prompt_inputs() -> dict[str, list[tuple[dict, list[dict[str, str]]]]]:
    """(the runner's input line, the Python messages) per operation, with awkward texts in every field."""
    mems = [Memory(f"m{i}", t, f"{i + 1} May 2023") for i, t in enumerate(AWKWARD)]
    as_json = lambda ms: [{"id": m.id, "text": m.text, "date": m.date} for m in ms]  # noqa: E731
    turns = [Turn(f"Speaker {t[:3]}", t, "8 May 2023", f"D1:{i}") for i, t in enumerate(AWKWARD)]
    return {
        "extract": [({"turns": [{"speaker": t.speaker, "text": t.text, "date": t.date} for t in turns[:k]]},
                     extract_messages(turns[:k])) for k in (0, 1, len(turns))],
        "mem_update": [({"facts": AWKWARD[:k], "memories": as_json(mems[:n])}, update_messages(AWKWARD[:k], mems[:n]))
                       for k, n in ((1, 0), (2, 1), (len(AWKWARD), 5))],
        "answer": [({"question": q, "memories": as_json(mems[:n])}, answer_messages(q, mems[:n]))
                   for q, n in (("What does Caroline paint?", 0), (AWKWARD[0], 2), ("", len(mems)))],
    }


def test_prompts_are_the_python_prompts(core, et_bundle):
    """The manifest's templates in its chat format give the ids of memlora.prompts rendered through the
    bundle's Jinja chat template."""
    tokenizer = BundleTokenizer(et_bundle / "tokenizer")
    for op, cases in prompt_inputs().items():
        result = run(core, "prompt", "--bundle", et_bundle, "--op", op,
                     stdin="".join(json.dumps(line) + "\n" for line, _ in cases))
        assert result.returncode == 0, result.stderr
        assert [json.loads(x) for x in result.stdout.splitlines()] == [render(tokenizer, m) for _, m in cases], op


def python_run(bundle: Path, store: Path, file: Path, question: str) -> tuple[list[dict], dict]:
    """The Python pipeline on the bundle's ExecuTorch target: the exchange results and the answer."""
    from memlora.runtime.registry import open_pipeline

    pipeline = open_pipeline(store, "executorch", bundle)
    results = ingest(pipeline, plan(load_conversation(file)), progress=False)
    answer = pipeline.answer(question)
    pipeline.store.close()
    return ([{"key": r.key, "status": r.status, "facts": r.facts, "events": [{"event": e, "id": i} for e, i in r.events],
              "error": r.error, "turn_ids": r.turn_ids} for r in results],
            {"answer": answer.text, "memories": [m.id for m in answer.memories]})


def core_run(core: Path, bundle: Path, store: Path, file: Path, question: str, trace: Path) -> tuple[list[dict], dict]:
    out = store.parent / f"{store.stem}-ingest.json"
    result = run(core, "ingest", file, "--bundle", bundle, "--store", store, "--trace", trace, "--json", out)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    n = len(MemoryStore(store, read_only=True).memories())
    assert result.stdout.endswith(f"; {n} memories in {store}\n") and report["memories"] == n
    asked = store.parent / f"{store.stem}-ask.json"
    result = run(core, "ask", question, "--bundle", bundle, "--store", store, "--trace", trace, "--json", asked)
    assert result.returncode == 0, result.stderr
    answer = json.loads(asked.read_text())
    assert result.stdout == answer["answer"] + "\n" and answer["adapter"] == "answer"
    return report["exchanges"], {"answer": answer["answer"], "memories": [m["id"] for m in answer["memories"]]}


def store_rows(path: Path) -> tuple[list, list, list, np.ndarray]:
    s = MemoryStore(path, read_only=True)
    mems, vectors = s._load()
    history = [(r.seq, r.memory_id, r.event, r.old_text, r.new_text, r.date, r.turn_ids, r.exchange) for r in s.history()]
    exchanges = [{k: v for k, v in x.items()} for x in s.exchanges()]
    return [m.__dict__ for m in mems], history, exchanges, vectors


@pytest.mark.parametrize("source", ["scripted", "demo"])
def test_the_cores_pipeline_is_the_python_pipeline(core, et_bundle, tiny_locomo, tmp_path, source):
    """The scripted conversation (the taught adapters ADD, then UPDATE, then answer "Sunsets") and the demo
    conversation (which the tiny model never saw: whatever constrained JSON it writes, both sides parse, store
    and skip it alike)."""
    file, question = (tiny_locomo / "conv-1.json", script.QUESTION) if source == "scripted" else \
        (DEMO, "What is the name of Ben's dog?")
    py_results, py_answer = python_run(et_bundle, tmp_path / "py.sqlite", file, question)
    core_results, core_answer = core_run(core, et_bundle, tmp_path / "core.sqlite", file, question,
                                         tmp_path / "device.jsonl")
    assert core_results == py_results and core_answer == py_answer
    py, dev = store_rows(tmp_path / "py.sqlite"), store_rows(tmp_path / "core.sqlite")
    assert dev[:3] == py[:3]
    assert dev[3].shape == py[3].shape and (py[3].size == 0 or np.abs(dev[3] - py[3]).max() < 1e-5)
    if source == "scripted":
        assert [r["status"] for r in core_results] == ["applied", "applied"]
        assert [m["text"] for m in dev[0]] == [script.MERGED] and core_answer["answer"] == script.ANSWER
    else:
        assert len(core_results) == 3


def test_the_cores_pipeline_trace_passes_parity(core, et_bundle, tiny_locomo, tiny_model, taught_adapters, tmp_path):
    """Every generation of an ingest and an answer, replayed on the fp32 reference; an edited copy fails."""
    from typer.testing import CliRunner

    from memlora.cli import app

    trace = tmp_path / "device.jsonl"
    core_run(core, et_bundle, tmp_path / "s.sqlite", tiny_locomo / "conv-1.json", script.QUESTION, trace)
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [r["op"] for r in records] == ["extract", "mem_update", "extract", "mem_update", "answer"]
    args = ["parity", "--bundle", str(et_bundle), "--targets", "", "--model", str(tiny_model), "--adapters",
            str(taught_adapters), "--trace", str(trace), "--quick", "--json", str(tmp_path / "r.json")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())["traces"]["executorch"]
    assert report["passed"] and report["records"] == len(records)
    records[0]["topk"][1]["ids"][0] = (records[0]["topk"][1]["ids"][0] + 1) % 100
    trace.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert CliRunner().invoke(app, args).exit_code == 1


def test_a_store_is_resumed_by_either_side(core, et_bundle, tiny_locomo, tmp_path):
    """The core's ingest again adds nothing; the Python pipeline finds the core's exchanges done, and the core
    finds the Python side's done."""
    from memlora.runtime.registry import open_pipeline

    conv = tiny_locomo / "conv-1.json"
    store = tmp_path / "s.sqlite"
    for _ in range(2):
        result = run(core, "ingest", conv, "--bundle", et_bundle, "--store", store)
        assert result.returncode == 0, result.stderr
    assert result.stdout == f"exchanges: 2 done_before; 1 memories in {store}\n"
    pipeline = open_pipeline(store, "executorch", et_bundle)
    assert [r.status for r in ingest(pipeline, plan(load_conversation(conv)), progress=False)] == ["done_before"] * 2
    py_store = tmp_path / "py.sqlite"
    ingest(open_pipeline(py_store, "executorch", et_bundle), plan(load_conversation(conv))[:1], progress=False)
    result = run(core, "ingest", conv, "--bundle", et_bundle, "--store", py_store)
    assert result.stdout == f"exchanges: 1 applied, 1 done_before; 1 memories in {py_store}\n", result.stderr
    listed = json.loads(run(core, "memories", "--store", py_store, "--history").stdout)
    assert [m["text"] for m in listed["memories"]] == [script.MERGED]
    assert [h["event"] for h in listed["history"]] == ["ADD", "UPDATE"]


def test_pipeline_errors_are_one_line(core, et_bundle, tiny_locomo, tmp_path):
    """A bundle without the chat format (exported by memlora 0.4.0), a store that is not there for `ask`, and a
    bad conversation file before any model loads."""
    old = tmp_path / "old"
    shutil.copytree(et_bundle, old)
    manifest = json.loads((old / MANIFEST).read_text())
    del manifest["prompts"]["chat"]
    (old / MANIFEST).write_text(json.dumps(manifest))
    message = core_error(core, "ingest", tiny_locomo / "conv-1.json", "--bundle", old, "--store", tmp_path / "s.sqlite")
    assert message.startswith(f"{old / MANIFEST}: no prompts.chat") and "export the bundle again" in message
    with pytest.raises(Exception) as e:
        MemoryStore(tmp_path / "missing.sqlite", read_only=True)
    assert core_error(core, "ask", "?", "--bundle", et_bundle, "--store", tmp_path / "missing.sqlite") == str(e.value)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"speaker": "A"}\n')
    assert core_error(core, "ingest", bad, "--bundle", tmp_path / "nowhere", "--store", tmp_path / "s.sqlite") == \
        f"{bad}:1: 'text', 'date' missing or not text (every turn needs a speaker, a text and a date, as strings)"

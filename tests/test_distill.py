"""Distillation: teacher examples rendered like the pipeline, the update teacher's rules, and a real
LoRA training on the tiny model that lowers the loss and writes a loadable adapter with its selection."""

import json

import numpy as np
import pytest

from memlora.distill.select import SELECTION_FILE, Grid, distill
from memlora.distill.teacher import (
    Example, decide, jsonl_examples, load_conversations, locomo_examples,
)
from memlora.distill.train import TrainConfig, encode, train
from memlora.errors import MemloraError
from memlora.parse import parse_facts, parse_update
from memlora.prompts import Memory, extract_messages
from tests import script


pytestmark = pytest.mark.usefixtures("one_thread")


def _unit(*xs):
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_locomo_extraction_targets_follow_the_ingest_windows(tiny_locomo):
    conv = load_conversations(tiny_locomo, ["conv-1"])
    ex = locomo_examples("extract", conv)
    assert [parse_facts(e.target) for e in ex] == [[script.FACT1], [script.FACT2]]
    assert ex[0].messages == extract_messages(script.EXCHANGES[0][1])  # same prompt the pipeline builds


def test_locomo_update_and_answer_targets(tiny_locomo, embedder):
    conv = load_conversations(tiny_locomo, ["conv-1"])
    upd = locomo_examples("mem_update", conv, embedder)
    assert json.loads(upd[0].target) == {"memory": [{"event": "ADD", "text": script.FACT1}]}
    assert upd[1].n_shown == 1
    parse_update(upd[1].target, {"0"})
    ans = locomo_examples("answer", conv, embedder)
    assert [a.target for a in ans] == [script.ANSWER, "7 May 2023"]  # category 5 is left out
    assert f"(8 May 2023) {script.FACT2}" in ans[0].messages[1]["content"]


def test_update_teacher_rules():
    shown = [Memory("0", "Caroline paints sunsets", ""), Memory("1", "Melanie runs marathons", "")]
    vecs = np.stack([_unit(1, 0, 0), _unit(0, 1, 0)])
    assert decide("Caroline paints sunsets.", _unit(1, 0.05, 0), shown, vecs, set()) == {"event": "NONE", "id": "0"}
    busy: set[str] = set()
    assert decide("Melanie ran a marathon in May", _unit(0.7, 1, 0), shown, vecs, busy) == {
        "event": "UPDATE", "id": "1", "text": "Melanie ran a marathon in May"}
    # the same id may change only once per reply, and another person's memory is never updated
    assert decide("Melanie runs daily", _unit(0.7, 1, 0), shown, vecs, busy)["event"] == "ADD"
    assert decide("Anna paints too", _unit(1, 0.7, 0), shown, vecs, set())["event"] == "ADD"
    assert decide("Melanie no longer runs marathons", _unit(0.7, 1, 0), shown, vecs, set()) == {"event": "DELETE", "id": "1"}
    assert decide("Anything", _unit(0, 0, 1), [], np.zeros((0, 3), np.float32), set())["event"] == "ADD"


def test_teacher_jsonl(tmp_path):
    f = tmp_path / "teacher.jsonl"
    f.write_text("\n".join(json.dumps(o) for o in [
        {"op": "extract", "turns": [{"speaker": "Ann", "text": "I adopted a cat.", "date": "1 May 2023"}],
         "output": '{"facts": ["Ann adopted a cat."]}', "conversation": "a"},
        {"op": "mem_update", "facts": ["Ann adopted a cat."], "memories": [{"text": "Ann likes dogs"}],
         "output": '{"memory": [{"event": "ADD", "text": "Ann adopted a cat."}]}'},
        {"op": "answer", "question": "What pet?", "memories": [{"text": "Ann adopted a cat.", "date": "1 May 2023"}],
         "output": "A cat\nextra"},
    ]))
    (ex,) = jsonl_examples(f, "extract")
    assert ex.group == "a" and "Ann: I adopted a cat." in ex.messages[1]["content"]
    assert jsonl_examples(f, "mem_update")[0].n_shown == 1
    assert jsonl_examples(f, "answer")[0].target == "A cat"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"op": "mem_update", "facts": ["x"], "memories": [],
                               "output": '{"memory": [{"event": "UPDATE", "id": "3", "text": "x"}]}'}))
    with pytest.raises(MemloraError, match=r"bad.jsonl:1: teacher output does not parse"):
        jsonl_examples(bad, "mem_update")


def test_training_lowers_the_loss(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    examples = [Example("extract", extract_messages(t), json.dumps({"facts": [f]}), "a")
                for (_, t), f in zip(script.EXCHANGES, (script.FACT1, script.FACT2))]
    data = encode(tok, examples, 512)
    assert all(lab[: len(ids) - 20].count(-100) > 0 for ids, lab in ((d.ids, d.labels) for d in data))
    _, res = train(tiny_model, tok, data, TrainConfig(rank=4, lr=5e-2, epochs=16, batch_size=2, bf16=False), log=lambda s: None)
    assert res.train_loss_per_epoch[-1] < 0.8 * res.train_loss_per_epoch[0]


def test_distill_writes_a_loadable_adapter_with_its_selection(tiny_model, tiny_locomo, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from memlora.adapters import load_checked_adapters

    tok = AutoTokenizer.from_pretrained(tiny_model)
    examples = locomo_examples("extract", load_conversations(tiny_locomo, ["conv-1", "conv-2"]))
    out = tmp_path / "adapters" / "extract"
    grid = Grid(ranks=(2, 4), lrs=(1e-2,), max_epochs=2, train_examples=8, val_examples=8, max_len=512)
    record = distill("extract", examples, {"conv-2"}, tiny_model, tok, out, grid,
                     TrainConfig(batch_size=2, bf16=False), log=lambda s: None)
    saved = json.loads((out / SELECTION_FILE).read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["validation_conversations"] == ["conv-2"] and saved["train_conversations"] == ["conv-1"]
    assert len(saved["grid"]) == 2 and all(len(p["val_loss_per_epoch"]) == 2 for p in saved["grid"])
    chosen = next(p for p in saved["grid"] if p["rank"] == saved["choice"]["rank"])
    assert saved["best_val_loss"] == min(min(p["val_loss_per_epoch"]) for p in saved["grid"])
    assert saved["best_val_loss"] == chosen["val_loss_per_epoch"][saved["choice"]["epochs"] - 1]
    info = load_checked_adapters(out.parent, tiny_model)["extract"]
    assert info.rank == saved["choice"]["rank"]
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out)

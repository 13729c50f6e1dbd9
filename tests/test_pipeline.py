"""The memory pipeline end to end on the reference backend with tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from memlora.errors import MemloraError
from memlora.generate import GenerationConfig, generate
from memlora.pipeline import MemoryPipeline
from memlora.prompts import render, update_messages
from memlora.store import MemoryStore
from memlora.trace import read_traces, TraceWriter
from memlora.runtime.torch_backend import TorchBackend
from tests import script, tiny


@pytest.fixture(scope="module")
def tok(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def test_decode_loop_matches_transformers_generate(tiny_model, tiny_adapters, tok):
    prompt = render(tok, [{"role": "user", "content": "Caroline likes painting sunsets."}])
    backend = TorchBackend(tiny_model)
    ours = generate(backend, tok, prompt, None, GenerationConfig(max_new_tokens=24), set()).output_ids
    hf = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    x = torch.tensor([prompt])
    ref = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=24, do_sample=False,
                      eos_token_id=None)[0, len(prompt):].tolist()
    assert ours == ref and len(ours) == 24


def test_separable_and_merged_adapters_agree(tiny_model, tiny_adapters, tok):
    prompt = render(tok, [{"role": "user", "content": "What did Melanie paint?"}])
    cfg = GenerationConfig(max_new_tokens=12)
    sep, merged = TorchBackend(tiny_model, tiny_adapters), TorchBackend(tiny_model, tiny_adapters, mode="merged")
    outs = {}
    for name in ("extract", "answer", "extract", None):  # switch back and forth
        a = generate(sep, tok, prompt, name, cfg, set()).output_ids
        b = generate(merged, tok, prompt, name, cfg, set()).output_ids
        assert a == b
        outs.setdefault(name, a)
        assert outs[name] == a  # switching adapters does not leak state
    assert outs["extract"] != outs["answer"] != outs[None]
    sep.reset()
    np.testing.assert_allclose(sep.forward(prompt, 0, "extract"), merged.forward(prompt, 0, "extract"), atol=1e-4)


def test_scripted_conversation_builds_store_with_history(tiny_model, taught_adapters, tok, embedder, tmp_path):
    trace = tmp_path / "trace.jsonl"
    pipe = MemoryPipeline(TorchBackend(tiny_model, taught_adapters), tok, MemoryStore(tmp_path / "s.sqlite"),
                          embedder, trace=TraceWriter(trace))
    first = pipe.ingest(*script.EXCHANGES[0])
    assert (first.status, first.facts, first.events) == ("applied", [script.FACT1], [("ADD", "m0")])
    second = pipe.ingest(*script.EXCHANGES[1])
    assert (second.status, second.events) == ("applied", [("UPDATE", "m0")])
    assert pipe.ingest(*script.EXCHANGES[1]).status == "done_before"
    [mem] = pipe.store.memories()
    assert (mem.id, mem.text, mem.date) == ("m0", script.MERGED, script.DATE)
    hist = pipe.store.history("m0")
    assert [(h.event, h.old_text, h.new_text, h.turn_ids) for h in hist] == [
        ("ADD", None, script.FACT1, ["D1:1", "D1:2"]),
        ("UPDATE", script.FACT1, script.MERGED, ["D1:3", "D1:4"]),
    ]
    answer = pipe.answer(script.QUESTION)
    assert answer.text == script.ANSWER and answer.memories[0].id == "m0"
    records = list(read_traces(trace))
    assert [r.op for r in records] == ["extract", "mem_update", "extract", "mem_update", "answer"]
    assert all(r.adapter == r.op and r.stop_reason == "eos" and len(r.topk) == len(r.output_ids) + 1 for r in records)


def test_malformed_outputs_never_touch_the_store(tiny_model, tiny_adapters, tok, embedder, tmp_path):
    """Output the parser refuses -- here random adapters decoding extract under a constraint that lets any
    line through -- records every exchange as malformed and applies nothing."""
    from dataclasses import replace

    from memlora import constrain

    cons = constrain.for_tokenizer(tok)
    loose = replace(cons, tables={**cons.tables, "extract": replace(cons.tables["answer"], name="extract")})
    store = MemoryStore(tmp_path / "s.sqlite")
    pipe = MemoryPipeline(TorchBackend(tiny_model, tiny_adapters), tok, store, embedder, constraints=loose)
    for key, turns in script.EXCHANGES:
        assert pipe.ingest(key, turns).status == "malformed"
    assert store.memories() == [] and store.history() == []
    rows = store.exchanges()
    assert [r["status"] for r in rows] == ["malformed", "malformed"]
    assert all(r["failed_op"] == "extract" and r["raw_output"] and r["error"] for r in rows)


def test_update_with_a_bad_entry_is_rejected_whole(tiny_model, taught_adapters, tok, embedder, tmp_path):
    """A valid ADD next to an UPDATE of an unknown id must not be applied half-way."""
    from memlora.parse import MalformedOutput, parse_update

    bad = json.dumps({"memory": [{"id": "new", "text": "x", "event": "ADD"}, {"id": "7", "text": "y", "event": "UPDATE"}]})
    with pytest.raises(MalformedOutput, match="unknown id '7'"):
        parse_update(bad, {"0"})
    assert render(tok, update_messages(["a"], []))  # prompt builds with no memories


def test_adapter_for_another_base_is_refused(tiny_model, tmp_path):
    other = tiny.build_model(tmp_path / "other", hidden_size=32, intermediate_size=64)
    tiny.build_adapters(other, tmp_path / "adapters", names=("extract",))
    with pytest.raises(MemloraError, match=r"adapters/extract/adapter_model.safetensors: adapter for another base"):
        TorchBackend(tiny_model, tmp_path / "adapters")

"""Output constraints: compiled token automata, their file, the engine, and decoding under them."""

from __future__ import annotations

import json
import random
import shutil
import time

import numpy as np
import pytest
from transformers import AutoTokenizer

from memlora import constrain
from memlora.errors import MemloraError
from memlora.export.bundle import load_bundle
from memlora.generate import GenerationConfig, PromptTooLong, generate
from memlora.parse import EVENTS, parse_answer, parse_facts, parse_update
from memlora.pipeline import MemoryPipeline
from memlora.prompts import MAX_SHOWN, Memory, render, update_messages
from memlora.store import Change, MemoryStore
from memlora.trace import TraceWriter, read_traces
from memlora.runtime.torch_backend import TorchBackend
from tests import script


@pytest.fixture(scope="module")
def tok(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """memlora's home for this module: the compiled-constraint cache lands here, not in the user's."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("home")
    mp.setenv("MEMLORA_HOME", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def cons(tok, home):
    return constrain.for_tokenizer(tok)


def parse(name: str, text: str):
    """What the pipeline does with an output of table `name` (raises MalformedOutput when it would)."""
    if name == "extract":
        return parse_facts(text)
    if name == "answer":
        assert parse_answer(text), repr(text)  # never blank
        return parse_answer(text)
    return parse_update(text, {str(i) for i in range(int(name.split("/")[1]))})


def walk(c: constrain.Constraint, budget: int, rng: random.Random, eos: int) -> list[int]:
    """A random output the engine lets through within `budget` tokens (eos excluded from the ids)."""
    state, out = c.start(), []
    while True:
        allowed = np.nonzero(c.allowed(state, budget - len(out)))[0].tolist()
        if c.accepts(state):
            allowed.append(eos)
        assert allowed, f"{c.name}: nothing allowed in state {state} with {budget - len(out)} left"
        token = rng.choice(allowed) if rng.random() < 0.95 or not c.accepts(state) else eos
        if token == eos:
            return out
        out.append(token)
        assert len(out) < budget, "the budget ran out before eos"
        state = c.advance(state, token)


def test_every_output_the_engine_lets_through_parses(cons, tok):
    """Random walks through every table, budgets from the least that finishes to plenty: each ends with eos
    inside its budget and what it decodes to is accepted by memlora.parse (ids below the memories shown)."""
    rng = random.Random(0)
    assert set(cons.tables) == {"extract", "answer", *(f"mem_update/{n}" for n in range(MAX_SHOWN + 1))}
    seen_events = set()
    for name in cons.tables:
        c = cons.table(name)
        for k in range(120):
            budget = [c.needs(0), c.needs(0) + 1, c.needs(0) + 3, 24, 200][k % 5]
            ids = walk(c, budget, rng, tok.eos_token_id)
            result = parse(name, tok.decode(ids, skip_special_tokens=True))
            if name.startswith("mem_update"):
                seen_events |= {e.event for e in result}
    assert seen_events == set(EVENTS)


def test_teacher_outputs_pass_and_near_misses_do_not(cons, tok):
    """json.dumps-style outputs (as the teacher writes them) reach acceptance token by token; compact JSON,
    other key orders, an unknown or twice-changed id, blank text, a newline in an answer do not."""

    def accepted(name: str, text: str) -> bool:
        c, state = cons.table(name), 0
        for t in tok.encode(text, add_special_tokens=False):
            if not c.allowed(state, 10_000)[t]:
                return False
            state = c.advance(state, t)
        return c.accepts(state)

    facts = json.dumps({"facts": ["Caroline went to a support group", 'odd "quotes" \\ / é\n\t']}, ensure_ascii=False)
    assert accepted("extract", facts) and accepted("extract", '{"facts": []}')
    events = [{"event": "NONE", "id": "1"}, {"event": "UPDATE", "id": "0", "text": "Caroline paints"},
              {"event": "ADD", "text": "Melanie runs"}, {"event": "DELETE", "id": "2"}, {"event": "NONE", "id": "0"}]
    assert accepted("mem_update/3", json.dumps({"memory": events}, ensure_ascii=False))
    assert accepted("answer", " Sunsets, in May 2023.")
    refused = [
        ("extract", '{"facts":["a"]}'), ("extract", '{"facts": [""]}'), ("extract", '{"facts": [" \\n "]}'),
        ("extract", '{"facts": ["a"]} '), ("extract", '{"facts": ["\\u0041"]}'),
        ("mem_update/3", json.dumps({"memory": [{"id": "0", "text": "a", "event": "UPDATE"}]})),
        ("mem_update/3", json.dumps({"memory": [{"event": "UPDATE", "id": "3", "text": "a"}]})),
        ("mem_update/0", json.dumps({"memory": [{"event": "NONE", "id": "0"}]})),
        ("mem_update/3", json.dumps({"memory": [{"event": "UPDATE", "id": "1", "text": "a"},
                                                {"event": "DELETE", "id": "1"}]})),
        ("mem_update/3", json.dumps({"memory": [{"event": "NONE", "id": "1"}, {"event": "UPDATE", "id": "1",
                                                                              "text": "a"}]})),
        ("mem_update/3", json.dumps({"memory": [{"event": "ADD", "text": " "}]})),
        ("answer", "Sunsets\nand more"), ("answer", "   "),
    ]
    for name, text in refused:
        assert not accepted(name, text), (name, text)


def test_ids_past_the_memories_shown_cannot_be_chosen(cons, tok):
    """After `"id": "` only the digits of shown ids are allowed; UPDATE/DELETE also skip an id already named."""
    digit = {tok.convert_tokens_to_ids(str(i)): i for i in range(10)}

    def ids_allowed(name: str, prefix: str) -> set[int]:
        c, state = cons.table(name), 0
        for t in tok.encode(prefix, add_special_tokens=False):
            state = c.advance(state, t)
        mask = c.allowed(state, 10_000)
        for t in np.nonzero(mask)[0]:  # every allowed token starts with a digit
            assert tok.decode([int(t)])[0].isdigit(), tok.decode([int(t)])
        return {i for t, i in digit.items() if mask[t]}

    for n in range(1, MAX_SHOWN + 1):
        assert ids_allowed(f"mem_update/{n}", '{"memory": [{"event": "DELETE", "id": "') == set(range(n))
    named = '{"memory": [{"event": "NONE", "id": "2"}, {"event": "UPDATE", "id": "0", "text": "x"}, {"event": "'
    assert ids_allowed("mem_update/4", named + 'UPDATE", "id": "') == {1, 3}
    assert ids_allowed("mem_update/4", named + 'NONE", "id": "') == {0, 1, 2, 3}


def test_file_round_trip_and_refusals(cons, tmp_path):
    blob = cons.to_bytes()
    again = constrain.Constraints.from_bytes(blob, "x")
    assert again.to_bytes() == blob and again.is_current(cons.tokenizer_sha256)
    header = json.loads(blob[12 : 12 + int.from_bytes(blob[8:12], "little")])
    assert header["format"] == constrain.FORMAT and header["vocab_size"] == len(cons.class_of)
    assert all(cons.class_of[i] == 0 for i in range(3))  # the special tokens: never allowed
    bad = tmp_path / "bad.bin"
    flipped = blob[:-1] + bytes([blob[-1] ^ 1])
    for data, message in [(b"garbage", "not a memlora constraint file"),
                          (flipped, r"constraint tables are corrupt \(data_sha256 mismatch\)"),
                          (blob[:12] + b"[" + blob[13:], "constraint header is not valid")]:
        bad.write_bytes(data)
        with pytest.raises(MemloraError, match=rf"{bad}: {message}"):
            constrain.load(bad)


def test_compiled_once_per_tokenizer_and_rebuilt_when_corrupt(tok, home):
    first = constrain.for_tokenizer(tok)
    [path] = (home / "constraints").glob("*.bin")
    assert path.stem == first.tokenizer_sha256
    stamp = path.stat().st_mtime_ns
    assert constrain.for_tokenizer(tok).to_bytes() == first.to_bytes() and path.stat().st_mtime_ns == stamp
    path.write_bytes(path.read_bytes()[:100])
    assert constrain.for_tokenizer(tok).to_bytes() == first.to_bytes() == path.read_bytes()


def test_a_home_it_cannot_write_to_only_costs_a_compile(tok, tmp_path, monkeypatch):
    (tmp_path / "home").write_text("a file where the home directory should be")
    monkeypatch.setenv("MEMLORA_HOME", str(tmp_path / "home"))
    assert set(constrain.for_tokenizer(tok).tables) == set(constrain.automata())
    assert list(tmp_path.iterdir()) == [tmp_path / "home"]


def test_non_byte_level_tokenizer_is_refused():
    spec = json.dumps({"model": {"type": "WordPiece", "vocab": {"a": 0}}, "decoder": {"type": "WordPiece"}})
    with pytest.raises(MemloraError, match="bert/tokenizer.json: constrained decoding needs a byte-level BPE"):
        constrain.compile_json(spec, "bert/tokenizer.json")


def test_decode_masks_but_traces_raw_logits(tiny_model, tok, cons, tmp_path):
    """The random base model under the answer constraint: output ends with eos within its budget, the trace's
    top-k is the raw logits' (its top-1 is not always the chosen token), and too little room is PromptTooLong."""
    backend = TorchBackend(tiny_model)
    prompt = render(tok, [{"role": "user", "content": "What did Melanie paint?"}])
    trace = tmp_path / "t.jsonl"
    writer = TraceWriter(trace)
    for name, budget in [("answer", 2), ("extract", 40), ("mem_update/2", 60)]:
        c = cons.table(name)
        out = generate(backend, tok, prompt, None, GenerationConfig(budget), {tok.eos_token_id}, "op", writer, c)
        assert out.stop_reason == "eos" and len(out.output_ids) < budget
        parse(name, out.text)
    writer.close()
    records = list(read_traces(trace))
    assert [r.constraint for r in records] == ["answer", "extract", "mem_update/2"]
    raw_top = [s["ids"][0] for r in records for s in r.topk[:-1]]
    chosen = [t for r in records for t in r.output_ids]
    assert raw_top != chosen
    with pytest.raises(PromptTooLong, match="the shortest extract output takes"):
        generate(backend, tok, prompt, None, GenerationConfig(3), {tok.eos_token_id}, "op", None, cons.table("extract"))


def test_random_adapters_are_never_malformed(tiny_model, tiny_adapters, tok, cons, embedder, tmp_path):
    """The random-weight adapters wrote garbage before constrained decoding; through the pipeline every
    operation's output now parses: exchanges are applied or have no facts, updates against 0..MAX_SHOWN
    memories give valid events, answers are not blank."""
    store = MemoryStore(tmp_path / "s.sqlite")
    pipe = MemoryPipeline(TorchBackend(tiny_model, tiny_adapters), tok, store, embedder, constraints=cons)
    for key, turns in script.EXCHANGES:
        assert pipe.ingest(key, turns).status in ("applied", "no_facts")
    assert all(r["status"] != "malformed" for r in store.exchanges())
    memories = [Memory(f"m{i}", f"{script.FACT1} {i}", script.DATE) for i in range(MAX_SHOWN)]
    for n in range(MAX_SHOWN + 1):
        out = pipe.run("mem_update", update_messages([script.FACT2], memories[:n]), n)
        parse(f"mem_update/{n}", out.text)
        assert out.stop_reason == "eos"
    assert pipe.answer(script.QUESTION).text


def test_pipeline_shows_at_most_max_shown_memories(tiny_model, taught_adapters, tok, cons, embedder, tmp_path):
    """More related memories than MAX_SHOWN: the update prompt shows the best-scored MAX_SHOWN and decodes
    under mem_update/MAX_SHOWN."""
    store = MemoryStore(tmp_path / "s.sqlite")
    pipe = MemoryPipeline(TorchBackend(tiny_model, taught_adapters), tok, store, embedder, top_k=MAX_SHOWN + 2,
                          trace=TraceWriter(tmp_path / "t.jsonl"), constraints=cons)
    texts = [f"Caroline went to support group number {i}" for i in range(MAX_SHOWN + 2)]
    store.apply("seed", ["s"], script.DATE, texts,
                [Change("ADD", None, t, v) for t, v in zip(texts, embedder.embed(texts))])
    shown = store.search(embedder.embed([script.FACT1])[0], MAX_SHOWN + 2)[:MAX_SHOWN]
    assert pipe.ingest(*script.EXCHANGES[0]).facts == [script.FACT1]
    [update] = [r for r in read_traces(tmp_path / "t.jsonl") if r.op == "mem_update"]
    assert update.constraint == f"mem_update/{MAX_SHOWN}"
    assert update.prompt_ids == render(tok, update_messages([script.FACT1], shown))


def test_bundle_ships_the_compiled_constraints(onnx_bundle, cons):
    """The bundle's constraint file is what the reference compiles from the same tokenizer, listed with its
    sha256; every golden record names its table and is a complete output."""
    bundle = load_bundle(onnx_bundle)
    entry = bundle.manifest["constraints"]
    assert entry["file"] in bundle.manifest["files"]
    assert entry["tables"] == {name: len(t.next) for name, t in cons.tables.items()}
    assert (onnx_bundle / entry["file"]).read_bytes() == cons.to_bytes()
    records = list(read_traces(bundle.golden_file))
    assert [r.constraint for r in records] == ["extract", "extract", "mem_update/0", "mem_update/2", "answer", "answer"]
    for r in records:
        assert r.stop_reason == "eos"
        parse(r.constraint, r.text)


def test_bundle_of_the_previous_version_is_refused_with_the_re_export_command(onnx_bundle, tmp_path):
    copy = shutil.copytree(onnx_bundle, tmp_path / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = "memlora-bundle/2"
    del manifest["constraints"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MemloraError, match=r"manifest\.json: a bundle of memlora 0\.3 \(memlora-bundle/2\), which has "
                       r"no output constraints .*; re-export it with `memlora export \.\.\. --out "):
        load_bundle(copy)


@pytest.mark.real
def test_compile_real_tokenizer():
    """SmolLM2-135M's 49152 tokens compile in seconds into tables of about 1.5 MB."""
    from memlora.paths import default_model_dir
    from tokenizers import Tokenizer

    text = Tokenizer.from_file(str(default_model_dir() / "tokenizer.json")).to_str()
    t0 = time.perf_counter()
    cons = constrain.compile_json(text, "SmolLM2")
    assert time.perf_counter() - t0 < 60
    assert len(cons.class_of) == 49152 and len(cons.to_bytes()) < 4 << 20
    rng = random.Random(1)
    decode = Tokenizer.from_str(text)
    for name in cons.tables:
        for k in range(40):
            c = cons.table(name)
            parse(name, decode.decode(walk(c, [c.needs(0), 30, 200][k % 3], rng, 2), skip_special_tokens=True))

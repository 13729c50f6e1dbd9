"""Property tests of what `memlora parity` reads before any model loads -- device traces and bundle manifests:
a `MemloraError` with a message, or a valid result, never another exception."""

from __future__ import annotations

import copy
import hashlib
import json
import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from memlora.export.bundle import MANIFEST, Bundle, load_bundle
from memlora.recipe import QuantRecipe
from memlora.runtime.parity.traces import validate_file
from memlora.trace import TraceRecord, read_traces
from tests.test_fuzz_inputs import json_values, refused_or_valid

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
VOCAB = 50

# -- device traces ------------------------------------------------------------------------------------------

ids = st.lists(st.integers(-2, VOCAB + 2) | st.sampled_from([1.0, True, 10**30]), max_size=4)
steps = st.lists(st.fixed_dictionaries({}, optional={
    "ids": ids | json_values,
    "logits": st.lists(st.floats() | st.integers(-10**40, 10**40), max_size=4) | json_values,
}), max_size=4)
records = st.fixed_dictionaries({}, optional={
    "schema": st.just("memlora-trace/1") | json_values,
    "backend": st.sampled_from(["onnx", ""]) | json_values,
    "op": st.just("answer") | json_values,
    "adapter": st.sampled_from(["answer", None]) | json_values,
    "prompt_ids": ids | json_values,
    "output_ids": ids | json_values,
    "stop_reason": st.sampled_from(["eos", "stop", "length", "tired"]) | json_values,
    "topk": steps | json_values,
    "text": st.text(max_size=10) | json_values,
    "extra": json_values,
})
lines = st.lists(records.map(json.dumps) | json_values.map(json.dumps) | st.text(max_size=30), max_size=4)


def assert_replayable(numbered: list[tuple[int, TraceRecord]]) -> None:
    """What `check_traces` indexes with: ids in the vocabulary, one logit per id, one top-k entry per step."""
    for _, rec in numbered:
        for seq in (rec.prompt_ids, rec.output_ids, *(s["ids"] for s in rec.topk)):
            assert all(type(t) is int and 0 <= t < VOCAB for t in seq)
        for s in rec.topk:
            assert s["ids"] and len(s["ids"]) == len(s["logits"]) and all(math.isfinite(x) for x in s["logits"])
        assert not rec.topk or len(rec.topk) == len(rec.output_ids) + (rec.stop_reason == "eos")


@FUZZ
@given(st.binary(max_size=200))
@example(b"[" * 100_000)  # nested deeper than the JSON decoder recurses
def test_trace_reader_on_arbitrary_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("trace") / "t.jsonl"
    path.write_bytes(data)
    assert_replayable(refused_or_valid(validate_file, path, VOCAB) or [])
    assert all(isinstance(r, TraceRecord) for r in refused_or_valid(lambda p: list(read_traces(p)), path) or [])


@FUZZ
@given(lines)
def test_trace_reader_on_arbitrary_records(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("trace") / "t.jsonl"
    path.write_text("\n".join(text), encoding="utf-8")
    assert_replayable(refused_or_valid(validate_file, path, VOCAB) or [])


# -- bundle manifests ---------------------------------------------------------------------------------------

TOKENIZER = b'{"model": {}}'
VALID = {
    "schema_version": "memlora-bundle/3", "memlora_version": "0.3.0",
    "model": {"name": "tiny", "architecture": "llama", "vocab_size": VOCAB, "hidden_size": 8, "num_layers": 1,
              "num_heads": 2, "num_kv_heads": 1, "head_dim": 4, "max_context": 64, "rope_type": "default",
              "rope_theta": 10000.0, "tie_embeddings": True, "special_tokens": {"eos_ids": [2]}},
    "tokenizer": {"dir": "tokenizer", "files": ["tokenizer/tokenizer.json"]},
    "prompts": {"source": "memlora.prompts", "templates": {"answer": {"system": "s", "user": "u"}}},
    "generation": {"decoding": "greedy", "trace_top_k": 5,
                   "operations": {"answer": {"adapter": "answer", "max_new_tokens": 8, "stop": ["\n"]}}},
    "constraints": {"file": "tokenizer/tokenizer.json", "format": "memlora-constraints/1", "grammar": "g",
                    "max_shown": 0, "tokenizer_sha256": "0" * 64, "tables": {"answer": 2}},
    "adapters": [{"name": "answer", "rank": 8, "alpha": 16, "targets": ["q_proj"], "sha256": "0" * 64}],
    "targets": {"onnx": {"mode": "separable", "quantization": QuantRecipe("fp32", op="MatMul").to_json(), "files": ["tokenizer/tokenizer.json"]}},
    "golden": {"file": "tokenizer/tokenizer.json", "reference": "torch", "max_new_tokens": 8, "records": 1},
    "files": {"tokenizer/tokenizer.json": hashlib.sha256(TOKENIZER).hexdigest()},
}


@st.composite
def mutated_manifests(draw) -> dict:
    """The valid manifest with one to three values deep inside it replaced or deleted."""
    manifest = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        parent, key, node = None, None, manifest
        while isinstance(node, (dict, list)) and node and (parent is None or draw(st.booleans())):
            parent, key = node, draw(st.sampled_from(list(node) if isinstance(node, dict) else range(len(node))))
            node = parent[key]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[key]
        elif parent is not None:
            parent[key] = draw(json_values | st.text(max_size=70))
    return manifest


def _load(tmp_path_factory, manifest: bytes) -> Bundle | None:
    bundle = tmp_path_factory.mktemp("bundle")
    (bundle / "tokenizer").mkdir()
    (bundle / "tokenizer" / "tokenizer.json").write_bytes(TOKENIZER)
    (bundle / MANIFEST).write_bytes(manifest)
    return refused_or_valid(load_bundle, bundle)


def test_the_unmutated_manifest_is_a_bundle(tmp_path_factory):
    assert _load(tmp_path_factory, json.dumps(VALID).encode()).manifest == VALID


@FUZZ
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_bundle_loader_on_arbitrary_manifests(tmp_path_factory, data):
    loaded = _load(tmp_path_factory, data)
    assert loaded is None or isinstance(loaded.manifest, dict)


@FUZZ
@given(mutated_manifests())
def test_bundle_loader_on_mutated_manifests(tmp_path_factory, manifest):
    loaded = _load(tmp_path_factory, json.dumps(manifest).encode())
    assert loaded is None or set(loaded.manifest["files"]) == {"tokenizer/tokenizer.json"}


@pytest.mark.parametrize("manifest", [
    b"[" * 100_000,
    json.dumps({**VALID, "files": {**VALID["files"], "x" * 300: "0" * 64}}).encode(),
    json.dumps({**VALID, "files": {**VALID["files"], "../outside.txt": "0" * 64}}).encode(),
], ids=["nested too deep", "a file name too long", "a file outside the bundle"])
def test_bundle_loader_on_manifests_that_break_the_decoder_or_the_file_system(tmp_path_factory, manifest):
    assert _load(tmp_path_factory, manifest) is None

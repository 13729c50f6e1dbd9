"""`memlora parity` on real runtimes: a correct ONNX bundle passes, a silently wrong one (a perturbed weight,
an ExecuTorch weight-only program) fails with its first divergent layer named; device traces are replayed."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner

from memlora.errors import MemloraError
from memlora.export.bundle import MANIFEST, checksums, load_bundle
from memlora.prompts import Memory
from memlora.recipe import QuantRecipe
from memlora.runtime.parity import prompts as golden_set
from memlora.runtime.parity.run import run_parity
from memlora.runtime.parity.targets import Target
from memlora.runtime.parity.thresholds import METRICS, check, load_thresholds, lookup
from memlora.trace import TraceRecord
from tests import script

SCRIPT = golden_set.Conversation(
    exchanges=script.EXCHANGES,
    questions=[script.QUESTION],
    facts=[[script.FACT1], [script.FACT2]],
    memories_before=[[], [Memory("m0", script.FACT1, script.DATE)]],
    final_memories=[Memory("m0", script.MERGED, script.DATE)],
)


def test_thresholds_defaults_and_per_target_override(tmp_path):
    t = load_thresholds()
    assert t.limits("onnx", "fp32")["token.greedy_exact_rate"] == {"min": 1.0}
    assert t.limits("onnx", "int8")["token.top1_agreement"] == {"min": 0.99}
    user = tmp_path / "t.json"
    user.write_text(json.dumps({"targets": {"onnx": {"token.top1_agreement": {"min": 0.9}}}}))
    t = load_thresholds(user)
    assert t.limits("onnx", "int8")["token.top1_agreement"] == {"min": 0.9}
    assert t.limits("coreml", "int8")["token.top1_agreement"] == {"min": 0.99}
    assert check({"token": {"top1_agreement": 0.95}}, t.limits("coreml", "int4")) == []
    assert check({"token": {"top1_agreement": 0.5}}, t.limits("coreml", "int4")) == ["token.top1_agreement = 0.5 < 0.95"]
    user.write_text(json.dumps({"precisions": {"int8": {"token.top1_agreement": 0.9}}}))
    with pytest.raises(MemloraError, match="t.json: precisions.int8.token.top1_agreement must be"):
        load_thresholds(user)


def _rechecksum(bundle) -> None:
    """Re-sign a modified bundle, as an exporter with a silent bug would have signed its output."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"] = checksums(bundle)
    (bundle / MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def good_report(onnx_bundle, tiny_model, taught_adapters, tmp_path_factory):
    """The CLI on the fp32 ONNX bundle with a device trace written by the ONNX backend itself."""
    from memlora.cli import app
    from memlora.generate import GenerationConfig, generate
    from memlora.prompts import render
    from memlora.runtime.registry import open_backend
    from memlora.session import load_tokenizer
    from memlora.trace import TraceWriter

    out = tmp_path_factory.mktemp("parity")
    backend, tok_dir = open_backend("onnx", onnx_bundle)
    tok = load_tokenizer(tok_dir)
    writer = TraceWriter(out / "device.jsonl")
    for op, examples in script.lessons(tok).items():
        generate(backend, tok, examples[0][0], op, GenerationConfig(max_new_tokens=40), {tok.eos_token_id}, op, writer)
    writer.close()
    args = ["parity", "--bundle", str(onnx_bundle), "--model", str(tiny_model), "--adapters", str(taught_adapters),
            "--trace", str(out / "device.jsonl"), "--quick", "--json", str(out / "r.json"), "--html", str(out / "r.html")]
    result = CliRunner().invoke(app, args)
    return result, json.loads((out / "r.json").read_text()), (out / "r.html").read_text(), out


def test_fp32_onnx_bundle_passes_every_level(good_report):
    result, report, html, _ = good_report
    assert result.exit_code == 0, result.output
    assert "parity: PASSED" in result.output and "onnx" in result.output
    embedder_rows = result.output.split("top-k agree  result")[1].splitlines()[2:3]  # the bundle's embedder, printed
    assert embedder_rows and embedder_rows[0].split() == ["onnx", "fp32", "1.000000", "1.000000", "100%", "PASS"]
    t = report["targets"]["onnx"]
    assert report["passed"] and t["passed"] and t["precision"] == "fp32"
    assert set(t["tensor"]) == {"max_abs", "mean_abs", "cosine", "kl", "sqnr_db"}
    assert t["tensor"]["max_abs"] < 1e-3 and t["tensor"]["cosine"] > 0.999999
    assert t["token"]["top1_agreement"] == 1.0 and t["token"]["greedy_exact_rate"] == 1.0
    assert t["token"]["first_divergence"] is None and t["first_divergent_layer"] is None
    assert t["gap"]["conversion"]["max_abs"] < 1e-3 and t["gap"]["quantization"]["max_abs"] < 1e-3
    assert t["task"]["equal_rate"] == 1.0 and t["task"]["answer_f1"] == 1.0
    assert report["traces"]["onnx"]["passed"] and report["traces"]["onnx"]["token"]["greedy_exact_rate"] == 1.0
    assert {p["op"] for p in report["golden"]["prompts"]} == {"extract", "mem_update", "answer"}
    for metric in METRICS:  # every metric a limit can name is a field of a real report
        assert lookup(t, metric)[1] is not None, metric
    assert html.count("data:image/png;base64,") >= 2 and "PASSED" in html


def test_task_level_runs_the_scripted_conversation(onnx_bundle, tiny_model, taught_adapters):
    """On the conversation the taught adapters know, the pipeline builds the same store on both backends."""
    report = run_parity(onnx_bundle, tiny_model, taught_adapters, quick=True, conversation=SCRIPT)
    task = report["targets"]["onnx"]["task"]
    assert task["equal_rate"] == 1.0 and task["answer_exact"] == 1.0
    assert report["reference_task"]["answers"] == {script.QUESTION: script.ANSWER}
    ref = report["reference_task"]  # --quick: the first exchange and the question
    assert ref["store"] == [["m0", script.FACT1, script.DATE]]
    assert ref["events"] == {script.EXCHANGES[0][0]: [["ADD", "m0", script.FACT1]]}


def test_tampered_device_trace_fails(good_report, onnx_bundle, tiny_model, taught_adapters):
    *_, out = good_report
    lines = (out / "device.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec["topk"][1]["ids"][0] = (rec["topk"][1]["ids"][0] + 1) % 100  # the app chose another token at step 1
    (out / "bad.jsonl").write_text(json.dumps(rec) + "\n")
    report = run_parity(onnx_bundle, tiny_model, taught_adapters, target_names=[], trace=out / "bad.jsonl")
    trace = report["traces"]["onnx"]
    assert not report["passed"] and trace["token"]["first_divergence"] == {"position": 1, "line": 1}
    (out / "bad.jsonl").write_text(json.dumps({**rec, "stop_reason": "tired"}) + "\n")
    with pytest.raises(MemloraError, match=r"bad.jsonl:1: trace record does not match trace.schema.json at stop_reason"):
        run_parity(onnx_bundle, tiny_model, taught_adapters, target_names=[], trace=out / "bad.jsonl")


def test_trace_records_match_the_schema():
    import jsonschema

    from memlora.trace import SCHEMA_PATH

    rec = TraceRecord("onnx", "answer", "answer", [1, 2], [3], "eos", [{"ids": [3, 4], "logits": [1.0, 0.5]}] * 2, "x")
    jsonschema.validate(json.loads(rec.to_json()), json.loads(SCHEMA_PATH.read_text()))


def test_perturbed_onnx_weight_fails_and_is_localised(onnx_bundle, tiny_model, taught_adapters, tmp_path):
    bad = tmp_path / "bundle"
    shutil.copytree(onnx_bundle, bad)
    graph = bad / "onnx" / "base.onnx"
    model = onnx.load(str(graph))
    # the last layer's (1) post-attention norm scale: a wrong weight, as a bad transpose or scale would give
    init = next(i for i in model.graph.initializer if i.name == "decoder.layers.1.post_attention_layernorm.weight")
    w = numpy_helper.to_array(init).copy()
    w[: len(w) // 2] *= 1.5
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save_model(model, str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="base.onnx.data", size_threshold=1024)
    _rechecksum(bad)
    load_bundle(bad)  # a valid, signed bundle: only the numbers are wrong
    report = run_parity(bad, tiny_model, taught_adapters, quick=True, task=False)
    t = report["targets"]["onnx"]
    assert not report["passed"] and not t["passed"]
    assert any(f.startswith("tensor.max_abs") for f in t["failures"])
    assert t["first_divergent_layer"] == "layers.1"
    errors = t["localisation"]["relative_errors"]
    assert errors["embed_tokens"] < 1e-5 and errors["layers.0"] < 1e-5 and errors["layers.1"] > 1e-3
    # the gap is conversion, not quantization (the bundle is fp32)
    assert t["gap"]["conversion"]["max_abs"] > 100 * t["gap"]["quantization"]["max_abs"]


class _Program:
    """An ExecuTorch program of the decoder taking one token per call (the test's own export, see below)."""

    def __init__(self, path):
        from executorch.runtime import Runtime

        self.method = Runtime.get().load_program(path).load_method("forward")

    def __call__(self, token: int, pos: int):
        return self.method.execute([torch.tensor([[token]]), torch.tensor([pos])])


class _EtBackend:
    """A Backend over `_Program` with the `extract` adapter baked in."""

    name = "executorch"
    adapters = ("extract",)

    def __init__(self, program: _Program, max_context: int):
        self.program, self.max_context = program, max_context

    def reset(self) -> None:
        pass

    def forward(self, tokens, start, adapter, all_logits=False):
        rows = [self.program(t, start + i)[0][0, -1].numpy() for i, t in enumerate(tokens)]
        return np.stack(rows if all_logits else rows[-1:])


def _et_weight_only(tiny_model, taught_adapters, out, ctx: int):
    """Lower the decoder (extract adapter in its LoRA slots) with torchao's weight-only int8 linear config to
    XNNPACK -- the recipe `memlora export` refuses (FINDINGS: wrong logits) -- plus a debug program that
    also returns every layer's hidden state."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis

    from memlora.export.decoder import Decoder, DecoderConfig, LoraLinear
    from memlora.export.lora import fill_slots, load_adapters, unify_slots

    adapters = load_adapters(taught_adapters, DecoderConfig.from_hf(tiny_model, ctx))
    decoder = Decoder.from_pretrained(tiny_model, ctx, unify_slots(adapters.values()))
    fill_slots(decoder, adapters["extract"])
    quantize_(decoder, IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)),
              filter_fn=lambda m, fqn: isinstance(m, LoraLinear))

    class Step(torch.nn.Module):
        def __init__(self, hidden: bool):
            super().__init__()
            self.decoder, self.hidden = decoder, hidden

        def forward(self, tokens, input_pos):
            if not self.hidden:
                return self.decoder(tokens, input_pos)
            logits, hidden = self.decoder(tokens, input_pos, return_hidden=True)
            return (logits, *hidden)

    paths = []
    for hidden in (False, True):
        ep = torch.export.export(Step(hidden).eval(), (torch.tensor([[1]]), torch.tensor([0])), strict=True)
        et = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
        paths.append(out / f"decoder{'-debug' if hidden else ''}.pte")
        paths[-1].write_bytes(et.buffer)
    return paths


def test_executorch_weight_only_program_fails_and_is_localised(onnx_bundle, tiny_model, taught_adapters, tmp_path):
    ctx = 1024
    pte, debug_pte = _et_weight_only(tiny_model, taught_adapters, tmp_path, ctx)
    debug = _Program(debug_pte)

    def probe(tokens, adapter):
        steps = [[h[0, -1].numpy() for h in debug(t, i)[1:]] for i, t in enumerate(tokens)]
        return [np.stack(layer) for layer in zip(*steps)]

    recipe = QuantRecipe("int8", op="torchao IntxWeightOnlyConfig -> XNNPACK", weights="linear", bits=8,
                         scale_rule="half_range", lm_head=True)
    target = Target("executorch", _EtBackend(_Program(pte), ctx), recipe, probe=probe)
    report = run_parity(onnx_bundle, tiny_model, taught_adapters, target_names=[], extra_targets=[target],
                        quick=True, task=False)
    t = report["targets"]["executorch"]
    assert not report["passed"] and not t["passed"]
    assert any(f.startswith("token.top1_agreement") for f in t["failures"]), t["failures"]
    assert t["tensor"]["max_abs"] > 1.0 and t["gap"]["conversion"]["max_abs"] > 10 * t["gap"]["quantization"]["max_abs"]
    assert t["first_divergent_layer"] == "layers.0"
    assert t["localisation"]["relative_errors"]["embed_tokens"] < 1e-5
    assert t["skipped_prompts"] and all(not p.startswith("extract") for p in t["skipped_prompts"])

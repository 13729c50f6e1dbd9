"""`memlora parity` never passes having checked nothing, and refuses bad input (an empty, unreadable or
inconsistent trace, a limit on a metric the report does not have) in one line before any model loads."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from memlora.cli import app
from memlora.errors import MemloraError
from memlora.export.bundle import MANIFEST, checksums
from memlora.recipe import QuantRecipe
from memlora.runtime.parity.run import run_parity
from memlora.runtime.parity.targets import Target
from memlora.runtime.parity.thresholds import TRACE_METRICS, check, load_thresholds, lookup
from memlora.trace import TraceRecord, read_traces
from tests import script

VOCAB = 540  # the ids tests/tiny.py's tokenizer trains; the `vocab` fixture checks the bundle says so


def parity(*args) -> tuple[int, str]:
    """`memlora parity ARGS` in-process: exit code and everything it printed."""
    result = CliRunner().invoke(app, ["parity", *map(str, args)])
    return result.exit_code, result.output


def record(**fields) -> dict:
    """A schema-valid record of an answer that stopped on eos after one token (two top-k entries)."""
    rec = TraceRecord("onnx", "answer", "answer", [1, 2, 3], [4], "eos",
                      [{"ids": [4, 5], "logits": [2.0, 1.0]}, {"ids": [2], "logits": [3.0]}], "x")
    return {**json.loads(rec.to_json()), **fields}


@pytest.fixture(scope="module")
def vocab(onnx_bundle) -> int:
    manifest = json.loads((onnx_bundle / MANIFEST).read_text())
    assert manifest["model"]["vocab_size"] == VOCAB
    return VOCAB


# -- nothing to check is refused up front ------------------------------------------------------------------


def test_empty_targets_without_a_trace_are_refused_before_any_model_loads(onnx_bundle, tmp_path):
    code, out = parity("--bundle", onnx_bundle, "--targets", "", "--model", tmp_path / "no-model",
                       "--adapters", tmp_path / "no-adapters")
    assert code == 2 and "nothing to check (--targets is empty and there is no --trace)" in out, out


def test_an_empty_trace_is_refused_before_any_model_loads(onnx_bundle, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    code, out = parity("--bundle", onnx_bundle, "--targets", "", "--trace", empty, "--model", tmp_path / "no-model",
                       "--adapters", tmp_path / "no-adapters")
    assert code == 2 and f"error: {empty}: no trace records: nothing to check" in out, out


@pytest.mark.parametrize("content, problem", [
    (None, "cannot read trace file (No such file or directory)"),
    (b"\x89PNG\r\n\x1a\n\xff\xfe", "not a trace file (not UTF-8 text at byte 0)"),
], ids=["missing", "binary"])
def test_a_missing_or_binary_trace_is_one_line(onnx_bundle, tmp_path, content, problem):
    trace = tmp_path / "trace.jsonl"
    if content is not None:
        trace.write_bytes(content)
    code, out = parity("--bundle", onnx_bundle, "--targets", "", "--trace", trace, "--model", tmp_path / "m",
                       "--adapters", tmp_path / "a")
    assert code == 2 and out.strip() == f"error: {trace}: {problem}", out


BAD_RECORDS = {
    "prompt id past the vocabulary": ({"prompt_ids": [1, VOCAB]}, f"prompt_ids has id {VOCAB}, past the model's vocabulary of {VOCAB}"),
    "output id past the vocabulary": ({"output_ids": [10**12]}, "output_ids has id 1000000000000, past"),
    "top-k id past the vocabulary": ({"topk": [{"ids": [4, VOCAB + 1], "logits": [2.0, 1.0]}, {"ids": [2], "logits": [3.0]}]},
                                     f"topk/0/ids has id {VOCAB + 1}, past"),
    "a float id": ({"prompt_ids": [1, 2.0]}, "prompt_ids has 2.0, not an integer token id"),
    "fewer logits than ids": ({"topk": [{"ids": [4, 5], "logits": [2.0]}, {"ids": [2], "logits": [3.0]}]},
                              "topk/0 has 2 ids and 1 logits"),
    "a NaN logit": ({"topk": [{"ids": [4, 5], "logits": [2.0, float("nan")]}, {"ids": [2], "logits": [3.0]}]},
                    "topk/0/logits holds a value that is not a finite float32 logit"),
    "one top-k entry missing": ({"topk": [{"ids": [4, 5], "logits": [2.0, 1.0]}]},
                                "topk has 1 entries for 2 decode steps (1 output_ids, stop_reason eos)"),
    "a length stop with an eos entry": ({"stop_reason": "length"}, "topk has 2 entries for 1 decode steps"),
    "not an object": ([1, 2], "trace record does not match trace.schema.json at (record)"),
}


@pytest.mark.parametrize("fields, problem", BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_an_inconsistent_trace_record_is_refused_by_line_before_any_model_loads(onnx_bundle, vocab, tmp_path,
                                                                                 fields, problem):
    trace = tmp_path / "trace.jsonl"
    bad = fields if isinstance(fields, list) else record(**fields)
    trace.write_text(json.dumps(record()) + "\n\n" + json.dumps(bad) + "\n")  # line 3, after a blank line
    code, out = parity("--bundle", onnx_bundle, "--targets", "", "--trace", trace, "--model", tmp_path / "m",
                       "--adapters", tmp_path / "a")
    assert code == 2 and out.startswith(f"error: {trace}:3: ") and problem in out, out


def test_read_traces_without_a_vocabulary_still_checks_the_shape(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text(json.dumps(record(prompt_ids=[10**9])) + "\n" + json.dumps(record(topk=[])) + "\n")
    assert [r.prompt_ids for r in read_traces(trace)] == [[10**9], [1, 2, 3]]
    trace.write_text(json.dumps(record(text="one\u2028two"), ensure_ascii=False) + "\n")  # one JSONL line
    assert [r.text for r in read_traces(trace)] == ["one\u2028two"]


# -- a limit on a metric the report does not have is an error; a metric asked for and not measured fails ------


def test_a_limit_on_an_unknown_metric_is_an_error_naming_it_and_its_file(tmp_path):
    with pytest.raises(MemloraError, match=r"threshold token\.top1_agrement: no metric 'token\.top1_agrement'"):
        check({"token": {"top1_agreement": 1.0}}, {"token.top1_agrement": {"min": 0.9}})
    user = tmp_path / "limits.json"
    user.write_text(json.dumps({"targets": {"onnx": {"task.f1": {"min": 0.5}}}}))
    with pytest.raises(MemloraError, match=r"limits\.json: targets\.onnx\.task\.f1: no metric 'task\.f1'"):
        load_thresholds(user)


def test_a_report_without_the_limited_field_is_an_error_not_a_pass():
    """A renamed report key (task.answer_f1 -> task.f1) must not make its limit a no-op."""
    renamed = {"token": {"top1_agreement": 1.0}, "task": {"equal_rate": 1.0, "f1": 1.0}}
    with pytest.raises(MemloraError, match=r"threshold task\.answer_f1: the report's task level has no 'answer_f1'"):
        check(renamed, load_thresholds().limits("onnx", "int8"))
    with pytest.raises(MemloraError, match=r"threshold tensor\.max_abs: the report has no 'tensor' level"):
        check({"token": {"greedy_exact_rate": 1.0}}, {"tensor.max_abs": {"max": 1e-3}})


def test_a_metric_asked_for_and_not_measured_fails():
    limits = load_thresholds().limits("onnx", "int8")  # token.top1_agreement, task.answer_f1
    skipped = {"token": {"top1_agreement": None}, "task": {"skipped": "target lacks adapters ['answer']"}}
    assert check(skipped, limits) == ["token.top1_agreement was not measured",
                                      "task.answer_f1 was not measured (target lacks adapters ['answer'])"]
    not_asked = {"token": {"top1_agreement": 1.0}, "task": None}  # run_parity(..., task=False)
    assert check(not_asked, limits) == []
    assert check({"token": {"top1_by_op": {"extract": 1.0}}}, {"token.top1_by_op.answer": {"min": 1}}) == [
        "token.top1_by_op.answer was not measured"]


def test_device_traces_are_judged_only_on_what_a_replay_measures():
    limits = load_thresholds().limits("onnx", "fp32")  # task.equal_rate and tensor.max_abs among them
    without_logits = {"token": {"top1_agreement": 1.0, "top5_overlap": None, "greedy_exact_rate": 1.0}, "tensor": None}
    assert check(without_logits, limits, TRACE_METRICS) == []
    assert check({**without_logits, "tensor": {"max_abs": 0.5}}, limits, TRACE_METRICS) == ["tensor.max_abs = 0.5 > 0.001"]


# -- a target that checked nothing fails -------------------------------------------------------------------


@pytest.fixture(scope="module")
def bare_bundle(onnx_bundle, tmp_path_factory):
    """The ONNX bundle with its adapters taken out of the manifest and the files (and re-signed)."""
    bundle = shutil.copytree(onnx_bundle, tmp_path_factory.mktemp("bare") / "bundle")
    manifest = json.loads((bundle / MANIFEST).read_text())
    target = manifest["targets"]["onnx"]
    for f in target.pop("adapter_files").values():
        (bundle / f).unlink()
        target["files"].remove(f)
    manifest["adapters"] = []
    manifest["files"] = checksums(bundle)
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    return bundle


def test_a_bundle_without_adapters_fails_as_nothing_to_check(bare_bundle, tiny_model, taught_adapters, tmp_path):
    code, out = parity("--bundle", bare_bundle, "--model", tiny_model, "--adapters", taught_adapters, "--quick",
                       "--json", tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    t = report["targets"]["onnx"]
    assert code == 1 and "parity: FAILED" in out, out
    assert not report["passed"] and not t["passed"]
    assert len(t["skipped_prompts"]) == len(report["golden"]["prompts"])
    assert "adapters: the target has none to check against the reference's answer, extract, mem_update: " \
           "nothing to check" in t["failures"]
    assert "golden: no golden prompt was compared (the target lacks their adapters): nothing to check" in t["failures"]
    assert any(f.startswith("task: not run (target lacks adapters") for f in t["failures"])
    assert "tensor.max_abs was not measured" in t["failures"]


def test_a_target_not_run_at_task_level_fails_whatever_its_limits(onnx_bundle, tiny_model, taught_adapters):
    """int4 limits only token agreement; a target lacking two adapters still fails for the task it skipped."""
    from memlora.runtime.registry import open_backend

    backend, _ = open_backend("onnx", onnx_bundle)
    backend.adapters = ("extract",)
    target = Target("extract-only", backend, QuantRecipe("int4", op="MatMulNBits", weights="linear", bits=4,
                                                         block_size=32, scale_rule="max_to_min"))
    report = run_parity(onnx_bundle, tiny_model, taught_adapters, target_names=[], extra_targets=[target], quick=True)
    t = report["targets"]["extract-only"]
    assert t["token"]["top1_agreement"] == 1.0 and not t["passed"] and not report["passed"]
    assert t["failures"] == ["task: not run (target lacks adapters ['answer', 'mem_update']): nothing to check"]


def test_a_trace_without_top_k_logits_is_judged_on_its_tokens(onnx_bundle, tiny_model, taught_adapters, tmp_path):
    from memlora.generate import GenerationConfig, generate
    from memlora.runtime.parity.reference import fp32_reference
    from memlora.session import load_tokenizer
    from memlora.trace import TraceWriter

    tok = load_tokenizer(onnx_bundle / "tokenizer")
    writer = TraceWriter(tmp_path / "full.jsonl")
    prompt = script.lessons(tok)["answer"][0][0]
    generate(fp32_reference(tiny_model, taught_adapters), tok, prompt, "answer", GenerationConfig(8), {tok.eos_token_id},
             "answer", writer)
    writer.close()
    rec = json.loads((tmp_path / "full.jsonl").read_text())
    (tmp_path / "tokens.jsonl").write_text(json.dumps({**rec, "topk": []}) + "\n")
    report = run_parity(onnx_bundle, tiny_model, taught_adapters, target_names=[], trace=tmp_path / "tokens.jsonl")
    trace = report["traces"]["torch"]
    assert report["passed"] and trace["tensor"] is None and trace["token"]["greedy_exact_rate"] == 1.0, trace
    for metric in TRACE_METRICS:  # every metric a trace limit can name is a field of a real trace report
        lookup(trace, metric)


def test_parity_help_describes_its_own_bundle_option():
    code, out = parity("--help")
    assert code == 0 and "the bundle to check" in out and "non-torch" not in out, out

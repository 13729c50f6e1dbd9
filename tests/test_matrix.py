"""`memlora matrix` on the tiny model: rows enumerated from the exporters, one row run twice, the table."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from memlora.cli import app
from memlora.errors import MemloraError
from memlora.matrix import all_rows, select


def test_the_rows_are_every_distinct_recipe_each_exporter_accepts():
    keys = [r.key for r in all_rows()]
    assert len(keys) == len(set(keys)) == 23
    assert "coreml:merged:fp32" not in keys and "coreml:merged:fp16" in keys  # Core ML's fp32 is its fp16
    assert {k.split(":")[0] for k in keys} == {"onnx", "executorch", "coreml", "gguf"}
    assert "gguf:separable:int4" in keys and "gguf:merged:fp32" not in keys  # llama.cpp applies LoRA at run time
    assert [r.key for r in select(all_rows(), "onnx:*:int8,coreml:separable:pal4")] == [
        "onnx:merged:int8", "onnx:separable:int8", "coreml:separable:pal4"]


@pytest.mark.parametrize("rows, message", [("onnx:int8", "a row is target:mode:quant"),
                                           ("tflite:*:*", "matches no row")])
def test_a_row_pattern_that_names_nothing_is_refused(rows, message):
    with pytest.raises(MemloraError, match=message):
        select(all_rows(), rows)


def test_one_row_runs_and_a_rerun_gives_the_same_verdict(tiny_model, taught_adapters, tmp_path):
    results, doc = tmp_path / "matrix.json", tmp_path / "matrix.md"
    args = ["matrix", "--model", str(tiny_model), "--adapters", str(taught_adapters), "--rows", "onnx:separable:fp32",
            "--results", str(results), "--doc", str(doc), "--work", str(tmp_path), "--quick"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    row = json.loads(results.read_text())["rows"]["onnx:separable:fp32"]
    assert row["passed"] and row["scheme"] == "fp32" and row["size_bytes"] > 0 and row["export_s"] > 0
    assert row["figures"]["token.greedy_exact_rate"] == 1.0 and row["recipe"]["op"] == "MatMul"
    table = doc.read_text()
    assert "| onnx | separable | fp32 | pass |" in table and "Not run yet: onnx:merged:fp32" in table
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("memlora-matrix-")] == []  # bundles removed
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0 and "verdict changed" not in second.output
    assert json.loads(results.read_text())["rows"]["onnx:separable:fp32"]["passed"] == row["passed"]


def test_a_results_file_of_something_else_is_refused_before_any_export(tmp_path):
    results = tmp_path / "matrix.json"
    results.write_text('{"rows": []}')
    out = CliRunner().invoke(app, ["matrix", "--rows", "onnx:separable:fp32", "--results", str(results),
                                   "--doc", str(tmp_path / "m.md"), "--adapters", str(tmp_path)])
    assert out.exit_code == 2 and "not a matrix results file" in out.output

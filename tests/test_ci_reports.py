"""`memlora parity --junit/--summary` on a real tiny ONNX bundle: the JUnit XML is read back with junitparser
(one case per target x level x gated metric, failures carrying value and limit, exactly the report's
failures), and the Markdown summary has a row per target and lists the failures."""

from __future__ import annotations

import json

import pytest
from junitparser import Failure, JUnitXml, Skipped
from typer.testing import CliRunner

from memlora.cli import app
from memlora.runtime.parity.junit import render
from memlora.runtime.parity.thresholds import load_thresholds


def _cases(path) -> dict[tuple[str, str], object]:
    xml = JUnitXml.fromfile(str(path))
    return {(case.classname, case.name): case for suite in xml for case in suite}


@pytest.fixture(scope="module")
def failing_run(onnx_bundle, tiny_model, taught_adapters, tmp_path_factory):
    """The CLI with one impossible limit for onnx (cosine >= 1.5) on top of the defaults."""
    out = tmp_path_factory.mktemp("ci-reports")
    limits = out / "limits.json"
    limits.write_text(json.dumps({"targets": {"onnx": {"tensor.cosine": {"min": 1.5}}}}))
    args = ["parity", "--bundle", str(onnx_bundle), "--model", str(tiny_model), "--adapters", str(taught_adapters),
            "--quick", "--thresholds", str(limits), "--json", str(out / "r.json"), "--junit", str(out / "r.xml"),
            "--summary", str(out / "r.md")]
    result = CliRunner().invoke(app, args, env={"MEMLORA_HOME": str(out / "home")})
    return result, json.loads((out / "r.json").read_text()), out, limits


def test_junit_has_one_case_per_gate_and_the_reports_failures(failing_run):
    result, report, out, limits = failing_run
    assert result.exit_code == 1, result.output
    cases = _cases(out / "r.xml")
    gated = load_thresholds(limits).limits("onnx", "fp32")
    assert {name for (cls, name) in cases} == set(gated)
    assert {cls for cls, _ in cases} == {f"parity.onnx.{m.split('.')[0]}" for m in gated}
    failed = {key: c for key, c in cases.items() if any(isinstance(r, Failure) for r in c.result)}
    assert list(failed) == [("parity.onnx.tensor", "tensor.cosine")]
    message = failed["parity.onnx.tensor", "tensor.cosine"].result[0].message
    cosine = report["targets"]["onnx"]["tensor"]["cosine"]
    assert message == f"tensor.cosine = {cosine:.6g} < 1.5" and report["targets"]["onnx"]["failures"] == [message]
    xml = JUnitXml.fromfile(str(out / "r.xml"))
    assert (xml.tests, xml.failures, xml.skipped, xml.errors) == (len(gated), 1, 0, 0)


def test_junit_skips_a_level_not_run_and_fails_a_level_that_checked_nothing(failing_run, tmp_path):
    _, report, _, limits = failing_run
    onnx = report["targets"]["onnx"]
    not_run = {**report, "targets": {"onnx": {**onnx, "task": None}}}
    (tmp_path / "a.xml").write_text(render(not_run, load_thresholds(limits)))
    case = _cases(tmp_path / "a.xml")["parity.onnx.task", "task.equal_rate"]
    assert isinstance(case.result[0], Skipped)
    skipped = {"skipped": "target lacks adapters ['answer']"}
    failures = [*onnx["failures"], "task.equal_rate was not measured (target lacks adapters ['answer'])",
                "task: not run (target lacks adapters ['answer']): nothing to check"]
    unchecked = {**report, "targets": {"onnx": {**onnx, "task": skipped, "failures": failures}}}
    (tmp_path / "b.xml").write_text(render(unchecked, load_thresholds(limits)))
    cases = _cases(tmp_path / "b.xml")
    messages = sorted(c.result[0].message for c in cases.values() if c.result and isinstance(c.result[0], Failure))
    assert messages == sorted(failures)
    assert cases["parity.onnx.task", "checked"].result[0].message == failures[-1]


def test_summary_has_a_row_per_target_and_the_failures(failing_run):
    _, report, out, _ = failing_run
    text = (out / "r.md").read_text()
    assert text.startswith("## memlora parity: FAILED")
    row = next(line for line in text.splitlines() if line.startswith("| onnx |"))
    assert "fp32 separable" in row and "FAIL" in row and f"{report['targets']['onnx']['token']['top1_agreement']:.4g}" in row
    assert f"- **onnx**: {report['targets']['onnx']['failures'][0]}" in text

"""The CI example runs what it documents: the reusable workflow calls scripts/ci_parity.sh with every input
it declares (and only flags the script knows), uploads the four reports whatever the verdict, the example
workflow uses it with declared inputs only, and the script itself runs on the tiny model: reports written,
summary appended to $GITHUB_STEP_SUMMARY, exit 0 on a pass and 1 on a failed gate."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from junitparser import JUnitXml

ROOT = Path(__file__).resolve().parents[1]
GATE = ROOT / ".github/workflows/parity-gate.yml"
SCRIPT = ROOT / "scripts/ci_parity.sh"
REPORTS = ("parity.json", "parity.html", "parity.xml", "parity.md")


def _on(workflow: dict) -> dict:
    return workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as True


def test_the_gate_calls_the_script_with_every_input_and_uploads_the_reports():
    gate = yaml.safe_load(GATE.read_text())
    inputs = _on(gate)["workflow_call"]["inputs"]
    (job,) = gate["jobs"].values()
    (run,) = [s["run"] for s in job["steps"] if "run" in s]
    assert run.split()[0] == "scripts/ci_parity.sh"
    assert {m for m in re.findall(r"inputs\.(\w+)", run)} == set(inputs)
    accepted = set(re.findall(r"^\s+(--[a-z-]+)\)", SCRIPT.read_text(), re.M))
    assert set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", run)) <= accepted
    (upload,) = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert upload["if"] == "always()"
    assert [Path(p).name for p in upload["with"]["path"].splitlines()] == list(REPORTS)


def test_the_example_workflow_uses_the_gate_with_declared_inputs():
    inputs = _on(yaml.safe_load(GATE.read_text()))["workflow_call"]["inputs"]
    example = yaml.safe_load((ROOT / ".github/workflows/parity.yml").read_text())
    (job,) = example["jobs"].values()
    assert job["uses"] == "./.github/workflows/parity-gate.yml" and set(job["with"]) <= set(inputs)
    assert Path(job["with"]["adapters"]).is_dir() or (ROOT / job["with"]["adapters"]).is_dir()


def _script(tmp: Path, name: str, tiny_model, adapters, *extra) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEMLORA": str(Path(sys.executable).with_name("memlora")), "MEMLORA_HOME": str(tmp / "home"),
           "GITHUB_STEP_SUMMARY": str(tmp / "step-summary.md")}
    args = ["bash", str(SCRIPT), "--model", str(tiny_model), "--adapters", str(adapters), "--bundle",
            str(tmp / name / "bundle"), "--out", str(tmp / name / "out"), "--targets", "onnx", "--quant", "fp32",
            "--max-context", "1024", "--quick", *map(str, extra)]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


def test_the_script_gates_the_tiny_model(tiny_model, taught_adapters, tmp_path):
    passed = _script(tmp_path, "pass", tiny_model, taught_adapters)
    assert passed.returncode == 0, passed.stderr[-3000:]
    out = tmp_path / "pass" / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORTS)
    assert json.loads((out / "parity.json").read_text())["passed"]
    assert JUnitXml.fromfile(str(out / "parity.xml")).failures == 0
    assert (tmp_path / "step-summary.md").read_text() == (out / "parity.md").read_text()

    limits = tmp_path / "limits.json"
    limits.write_text(json.dumps({"targets": {"onnx": {"tensor.cosine": {"min": 1.5}}}}))
    failed = _script(tmp_path, "fail", tiny_model, taught_adapters, "--thresholds", limits)
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "parity: FAILED" in failed.stdout
    assert (tmp_path / "step-summary.md").read_text().count("## memlora parity:") == 2
    bad = subprocess.run(["bash", str(SCRIPT), "--model", "x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--adapters is required" in bad.stderr

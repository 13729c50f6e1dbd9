"""`memlora parity --baseline OLD.json --bench BENCH.json` on a real tiny ONNX bundle: allowances are validated
like limits, a regression past its allowance fails the target (in the JSON, JUnit and summary), speed is
compared only from `memlora bench`, and a baseline of another model is refused before anything runs."""

from __future__ import annotations

import json

import pytest
from junitparser import Failure, JUnitXml
from typer.testing import CliRunner

from memlora.cli import app
from memlora.errors import MemloraError
from memlora.runtime.bench.measure import BenchConfig
from memlora.runtime.parity.thresholds import load_thresholds


def _parity(onnx_bundle, tiny_model, adapters, out, *extra):
    args = ["parity", "--bundle", str(onnx_bundle), "--model", str(tiny_model), "--adapters", str(adapters),
            "--quick", "--json", str(out / "r.json"), *map(str, extra)]
    return CliRunner().invoke(app, args, env={"MEMLORA_HOME": str(out / "home")})


def test_allowances_have_defaults_and_are_validated(tmp_path):
    t = load_thresholds()
    assert t.allowances["token.top1_agreement"] == {"drop": 0.005} and t.allowances["size_bytes"] == {"grow_pct": 10}
    user = tmp_path / "t.json"
    user.write_text(json.dumps({"allowances": {"token.top1_agreement": {"drop": 0.02}}}))
    assert load_thresholds(user).allowances["token.top1_agreement"] == {"drop": 0.02}
    user.write_text(json.dumps({"allowances": {"token.top1_agrement": {"drop": 0.02}}}))
    with pytest.raises(MemloraError, match=r"t.json: allowances.token.top1_agrement: no metric"):
        load_thresholds(user)
    user.write_text(json.dumps({"allowances": {"size_bytes": {"shrink": 1}}}))
    with pytest.raises(MemloraError, match=r"t.json: allowances.size_bytes must be one of drop, drop_pct"):
        load_thresholds(user)


@pytest.fixture(scope="module")
def runs(onnx_bundle, tiny_model, taught_adapters, tmp_path_factory):
    """A baseline run with bench speeds, then a run against a copy of it from a smaller, faster, better bundle."""
    from memlora.runtime.bench.command import run_bench
    from memlora.runtime.bench.report import write_json

    out = tmp_path_factory.mktemp("ci-baseline")
    config = BenchConfig(prompt_tokens=48, decode_tokens=6, warmup=0, repeats=1, switch_repeats=2, rounds=1)
    write_json(run_bench([onnx_bundle], tiny_model, taught_adapters, peer_names=(), config=config, log=lambda s: None),
               out / "bench.json")
    first = _parity(onnx_bundle, tiny_model, taught_adapters, out, "--bench", out / "bench.json")
    assert first.exit_code == 0, first.output
    baseline = json.loads((out / "r.json").read_text())
    onnx = baseline["targets"]["onnx"]
    onnx["size_bytes"] = onnx["size_bytes"] // 2  # the bundle has doubled since
    onnx["speed"]["decode_tok_s"] *= 10  # and decodes 10x slower
    (out / "old.json").write_text(json.dumps(baseline))
    second = _parity(onnx_bundle, tiny_model, taught_adapters, out, "--bench", out / "bench.json",
                     "--baseline", out / "old.json", "--junit", out / "r.xml", "--summary", out / "r.md")
    return second, json.loads((out / "r.json").read_text()), baseline, out


def test_regressions_past_their_allowance_fail_the_target(runs):
    result, report, baseline, out = runs
    assert result.exit_code == 1, result.output
    onnx = report["targets"]["onnx"]
    assert onnx["speed"]["source"] == f"memlora bench {out / 'bench.json'}"
    metrics = onnx["baseline"]["metrics"]
    assert set(metrics) == set(load_thresholds().allowances)
    size = metrics["size_bytes"]
    assert size["baseline"] == baseline["targets"]["onnx"]["size_bytes"] and size["value"] == onnx["size_bytes"]
    assert size["change"] == size["value"] - size["baseline"] and size["allowed"] == "growth <= 10%"
    assert "failure" in metrics["speed.decode_tok_s"] and metrics["speed.decode_tok_s"]["allowed"] == "drop <= 15%"
    assert metrics["token.top1_agreement"] == {"allowed": "drop <= 0.005", "baseline": 1.0, "value": 1.0, "change": 0.0}
    assert onnx["failures"] == [metrics["size_bytes"]["failure"], metrics["speed.decode_tok_s"]["failure"]]
    assert onnx["failures"][0].startswith(f"baseline: size_bytes = {onnx['size_bytes']}, was {size['baseline']}")
    assert not report["passed"] and report["baseline"] == {"report": str(out / "old.json")}
    xml = JUnitXml.fromfile(str(out / "r.xml"))
    failed = {c.name for s in xml for c in s if any(isinstance(r, Failure) for r in c.result)}
    assert failed == {"size_bytes", "speed.decode_tok_s"}
    summary = (out / "r.md").read_text()
    assert "### Against the baseline" in summary and "| onnx | size_bytes |" in summary


def test_a_re_quantized_target_is_held_to_the_baseline_and_says_what_changed(runs):
    """Swapping a lossier bundle into a release is what the gate is for: compared, not skipped."""
    from memlora.runtime.parity.baseline import compare

    _, report, baseline, out = runs
    swapped = json.loads(json.dumps(report))
    onnx = swapped["targets"]["onnx"]
    onnx["precision"], onnx["token"]["top1_agreement"] = "int4", onnx["token"]["top1_agreement"] - 0.02
    onnx["failures"], onnx["passed"] = [], True
    compare(swapped, json.loads(json.dumps(baseline)), out / "old.json", load_thresholds().allowances)
    assert onnx["baseline"]["changed"] == "precision was fp32, is int4"
    assert not onnx["passed"] and any(f.startswith("baseline: token.top1_agreement") for f in onnx["failures"])


def test_speed_without_bench_is_not_compared_and_a_missing_target_is_skipped(runs):
    from memlora.runtime.parity.baseline import compare

    _, report, baseline, out = runs
    fresh = json.loads(json.dumps(report))
    del fresh["targets"]["onnx"]["speed"]["source"]
    for entry in fresh["targets"].values():
        entry["failures"], entry["passed"] = [], True
    compare(fresh, baseline, out / "old.json", load_thresholds().allowances)
    assert "skipped" in fresh["targets"]["onnx"]["baseline"]["metrics"]["speed.decode_tok_s"]
    del baseline["targets"]["onnx"]
    compare(fresh, baseline, out / "old.json", load_thresholds().allowances)
    assert fresh["targets"]["onnx"]["baseline"] == {"skipped": "the baseline has no such target"}


def test_a_baseline_of_another_model_is_refused_before_running(runs, onnx_bundle, tiny_model, taught_adapters, tmp_path):
    *_, baseline, out = runs
    baseline["model"]["hidden_size"] += 1
    (tmp_path / "other.json").write_text(json.dumps(baseline))
    result = _parity(onnx_bundle, tiny_model, taught_adapters, tmp_path, "--baseline", tmp_path / "other.json")
    assert result.exit_code == 2 and "other.json: the baseline is a report on model" in result.output
    assert not (tmp_path / "r.json").exists()

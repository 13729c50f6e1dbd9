"""`run_parity` over bundles holding every target, merged and separable, as `memlora export --target
onnx,executorch,coreml` writes them; and a compressed Core ML bundle, whose recipe parity must simulate."""

from __future__ import annotations

import pytest

from memlora.export.command import export_bundle
from memlora.runtime.parity.run import run_parity

TARGETS = ["onnx", "executorch", "coreml"]


@pytest.fixture(scope="module", params=["merged", "separable"])
def all_targets(request, tiny_model, taught_adapters, tmp_path_factory):
    out = tmp_path_factory.mktemp("all-targets") / request.param
    return request.param, export_bundle(tiny_model, taught_adapters, TARGETS, request.param, "fp32", 32, out,
                                        max_context=1024)


def test_every_target_of_a_bundle_passes_parity_against_the_references(all_targets, tiny_model, taught_adapters):
    mode, bundle = all_targets
    report = run_parity(bundle, tiny_model, taught_adapters, quick=True)
    assert set(report["targets"]) == set(TARGETS)
    for name, t in report["targets"].items():
        assert t["passed"], (name, t["failures"])
        assert t["mode"] == mode and t["task"]["equal_rate"] == 1.0, name
    onnx, et, coreml = (report["targets"][n] for n in TARGETS)
    assert onnx["precision"] == et["precision"] == "fp32" and coreml["precision"] == "fp16"
    assert coreml["recipe"]["compute"] == "fp16" and coreml["gap"]["simulation"]["compute"] != "exact"
    # fp32 targets match the fp32 reference to float rounding; fp16 compute does not, and its limits say so
    assert onnx["tensor"]["max_abs"] < 1e-3 and et["tensor"]["max_abs"] < 1e-3
    assert coreml["tensor"]["max_abs"] > 1e-3 and coreml["token"]["top1_agreement"] >= 0.99


def test_a_palettized_core_ml_bundle_goes_through_parity_with_its_recipe_simulated(tiny_model, taught_adapters, tmp_path):
    bundle = export_bundle(tiny_model, taught_adapters, ["coreml"], "separable", "pal4", 32, tmp_path / "pal4",
                           max_context=1024)
    report = run_parity(bundle, tiny_model, taught_adapters, quick=True, task=False)
    t = report["targets"]["coreml"]
    assert t["precision"] == "pal4" and t["recipe"]["weights"] == "palette" and t["recipe"]["block_size"] == 16
    # the decoder reference carries the same 16-entry tables, so what is left is fp16 arithmetic
    assert t["gap"]["conversion"]["kl"] < 0.1 * t["gap"]["quantization"]["kl"]
    assert t["token"]["top1_agreement"] is not None and "failures" in t

"""GPTQ calibration: its weights pack to its own codes with each target's real packer, it beats round-to-nearest
on a layer's output, and `memlora export --calibrate` writes a bundle that parity checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from memlora.export import executorch_quant, gptq, quant
from memlora.export.command import main
from memlora.export.target import TargetRequest, load

OUT, IN, BLOCK = 48, 128, 32


def recipe(target: str, quant_: str = "int4"):
    return load(target).recipe(TargetRequest(None, {}, "separable", quant_, BLOCK, 64, calibration_samples=4))


@pytest.fixture(scope="module")
def layer():
    """A weight, and inputs with correlated features (GPTQ's error feedback has something to use)."""
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(IN, IN, generator=g) / IN**0.5 + torch.eye(IN)
    fit = torch.randn(1024, IN, generator=g) @ mix
    held_out = torch.randn(512, IN, generator=g) @ mix
    w = torch.randn(OUT, IN, generator=g) * 0.05
    w[3, :BLOCK] = 0  # an all-zero block stays zeros
    return w, 2 * fit.double().T @ fit.double(), held_out


@pytest.mark.parametrize("target, quant_", [("onnx", "int4"), ("executorch", "int4"), ("coreml", "int4"),
                                             ("onnx", "int8"), ("executorch", "int8"), ("coreml", "int8")])
def test_the_simulated_packer_maps_gptq_weights_to_gptq_codes(layer, target, quant_):
    w, h, _ = layer
    r = recipe(target, quant_)
    stored, values = gptq.quantize(w, h, r)
    assert torch.equal(quant.weight(stored, r), values)
    assert not torch.equal(values, quant.weight(w, r))


def test_onnxruntime_packs_gptq_weights_to_gptq_codes(layer):
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    w, h, _ = layer
    stored, values = gptq.quantize(w, h, recipe("onnx"))
    blocks = IN // BLOCK
    packed = np.zeros((OUT, blocks, BLOCK // 2), np.uint8)
    scales = np.zeros((OUT, blocks), np.float32)
    quantize_matmul_4bits(packed, np.ascontiguousarray(stored.numpy().T), scales, np.zeros((OUT, 2), np.uint8),
                          BLOCK, OUT, IN, True)
    codes = np.stack([packed & 15, packed >> 4], -1).reshape(OUT, blocks, BLOCK).astype(np.float32) - 8
    assert np.array_equal((codes * scales[..., None]).reshape(OUT, IN), values.numpy())


def test_torchao_packs_gptq_weights_to_gptq_codes(layer):
    from torchao.quantization import quantize_

    w, h, _ = layer
    stored, values = gptq.quantize(w, h, recipe("executorch"))
    model = nn.Sequential(nn.Linear(IN, OUT, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(stored)
    quantize_(model, executorch_quant.linear_config("int4", BLOCK))
    assert torch.equal(model[0].weight.dequantize(), values)


def test_coremltools_packs_gptq_weights_to_gptq_codes(layer):
    from coremltools.optimize._utils import compute_qparams

    w, h, _ = layer
    stored, values = gptq.quantize(w, h, recipe("coreml"))
    codes, scales, _ = compute_qparams(stored.half().numpy(), 4, True, "LINEAR_SYMMETRIC", np.int8, [1, BLOCK])
    got = codes.reshape(OUT, -1, BLOCK).astype(np.float16) * scales[..., None]
    assert np.array_equal(got.reshape(OUT, IN).astype(np.float32), values.numpy())


@pytest.mark.parametrize("target", ["onnx", "executorch", "coreml"])
def test_gptq_beats_round_to_nearest_on_held_out_inputs(layer, target):
    w, h, x = layer
    r = recipe(target)
    _, values = gptq.quantize(w, h, r)
    error = lambda v: float((x @ w.T - x @ v.T).norm())  # noqa: E731
    assert error(values) < 0.85 * error(quant.weight(w, r))


def _export(args: list[str]):
    app = typer.Typer()
    app.command()(main)
    return CliRunner().invoke(app, args)


def test_calibrated_onnx_export_records_gptq_and_passes_parity(tiny_model, taught_adapters, tmp_path):
    from memlora.runtime.parity.run import run_parity

    out = tmp_path / "gptq"
    result = _export(["--model", str(tiny_model), "--adapters", str(taught_adapters), "--target", "onnx",
                      "--quant", "int4", "--calibrate", "--calibration-samples", "2", "--max-context", "1024",
                      "--no-embedder", "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    entry = json.loads((out / "manifest.json").read_text())["targets"]["onnx"]
    assert (entry["quantization"]["calibration"], entry["quantization"]["calibration_samples"]) == ("gptq", 2)
    assert entry["calibration"]["sequences"] == 6 and entry["calibration"]["tokens"] > 0
    report = run_parity(out, tiny_model, taught_adapters, quick=True, task=False)
    t = report["targets"]["onnx"]
    assert t["gap"]["simulation"]["weights"] == "exact (gptq recomputed)"
    assert t["gap"]["conversion"]["kl"] < 1e-5  # the decoder reference holds the weights the export packed
    assert report["passed"], t["failures"]


@pytest.mark.parametrize("args, message", [
    (["--calibration-samples", "4"], "--calibration-samples 4 needs --calibrate"),
    (["--calibrate", "--calibration-samples", "0"], "--calibration-samples 0: must be a positive number"),
    (["--calibrate"], "ONNX export: --calibrate chooses integer codes; --quant fp32 stores float weights"),
    (["--calibrate", "--quant", "int4", "--mode", "merged"], "ONNX export: --calibrate needs --mode separable"),
])
def test_a_calibration_request_that_cannot_be_honoured_is_refused(tiny_model, tiny_adapters, tmp_path, args, message):
    result = _export(["--model", str(tiny_model), "--adapters", str(tiny_adapters), "--no-embedder",
                      "--out", str(tmp_path / "b"), *args])
    assert result.exit_code != 0 and message in str(result.exception), result.output + repr(result.exception)
    assert not (tmp_path / "b").exists()

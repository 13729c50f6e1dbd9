"""Calibration: GPTQ's weights pack to its own codes with each target's real packer; GPTQ and AWQ beat
round-to-nearest on a layer's output; AWQ's scales are exact in float; and `memlora export --calibrate` writes a
bundle that parity checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from memlora.export import awq, executorch_quant, gptq, quant
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
    quantize_(model, executorch_quant.linear_config(recipe("executorch")))
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


@pytest.mark.parametrize("target", ["onnx", "executorch", "coreml"])
def test_awq_beats_round_to_nearest_on_inputs_with_outlier_channels(layer, target):
    w, _, x = layer
    x = x * torch.where(torch.arange(IN) % 16 == 0, 12.0, 1.0)  # a few channels carry large activations
    r = recipe(target)
    s = awq.scale([w], [r], 2 * x.double().T @ x.double())
    error = lambda v: float((x @ w.T - x @ v.T).norm())  # noqa: E731
    assert error(quant.weight(w * s, r) / s) < 0.9 * error(quant.weight(w, r))
    assert s[::16].mean() > s.mean()  # the outlier channels are the ones scaled up


def test_awq_scales_are_exact_in_float(tiny_model, taught_adapters):
    """The calibrated decoder (weights scaled, inputs divided) computes what the plain one does, LoRA included."""
    from memlora.export.calibrate import calibrate, load_decoder
    from memlora.export.decoder import DecoderConfig
    from memlora.export.lora import fill_slots, load_adapters, unify_slots

    adapters = load_adapters(taught_adapters, DecoderConfig.from_hf(tiny_model, 64))
    r = load("onnx").recipe(TargetRequest(tiny_model, adapters, "separable", "int4", BLOCK, 64,
                                           calibration_samples=2, calibration_method="awq"))
    cal = calibrate(tiny_model, adapters, r)
    assert len(cal.input_scales) == len(cal.weights) > 0
    slots = unify_slots(adapters.values())
    plain, scaled = load_decoder(tiny_model, 64, slots, None), load_decoder(tiny_model, 64, slots, cal)
    assert any(not torch.equal(s, torch.ones_like(s)) for s in cal.input_scales.values())
    tokens = torch.tensor([[5, 17, 42, 7, 99, 3, 250, 11]])
    for d in (plain, scaled):
        fill_slots(d, adapters["extract"])
    with torch.no_grad():
        a, b = (d(tokens, torch.arange(8)) for d in (plain, scaled))
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()


def _export(args: list[str]):
    app = typer.Typer()
    app.command()(main)
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_calibrated_onnx_export_records_its_method_and_passes_parity(tiny_model, taught_adapters, tmp_path, method):
    from memlora.runtime.parity.run import run_parity

    out = tmp_path / method
    result = _export(["--model", str(tiny_model), "--adapters", str(taught_adapters), "--target", "onnx",
                      "--quant", "int4", "--calibrate", "--calibration-samples", "2", "--calibration-method", method,
                      "--max-context", "1024", "--no-embedder", "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    entry = json.loads((out / "manifest.json").read_text())["targets"]["onnx"]
    assert (entry["quantization"]["calibration"], entry["quantization"]["calibration_samples"]) == (method, 2)
    assert entry["calibration"]["sequences"] == 6 and entry["calibration"]["tokens"] > 0
    report = run_parity(out, tiny_model, taught_adapters, quick=True, task=False)
    t = report["targets"]["onnx"]
    assert t["gap"]["simulation"]["weights"] == f"exact ({method} recomputed)"
    assert t["gap"]["conversion"]["kl"] < 1e-5  # the decoder reference holds the weights the export packed
    if method == "gptq":  # AWQ has no outlier channels to protect in a random tiny model (top-1 0.947 here)
        assert report["passed"], t["failures"]


@pytest.mark.parametrize("args, message", [
    (["--calibration-samples", "4"], "--calibration-samples 4 needs --calibrate"),
    (["--calibrate", "--calibration-samples", "0"], "--calibration-samples 0: must be a positive number"),
    (["--calibrate"], "ONNX export: --calibrate chooses integer codes; --quant fp32 stores float weights"),
    (["--calibrate", "--quant", "int4", "--mode", "merged"], "ONNX export: --calibrate needs --mode separable"),
    (["--calibration-method", "awq"], "--calibration-method awq needs --calibrate"),
    (["--calibrate", "--calibration-method", "hqq"], "--calibration-method hqq: choose gptq or awq"),
])
def test_a_calibration_request_that_cannot_be_honoured_is_refused(tiny_model, tiny_adapters, tmp_path, args, message):
    result = _export(["--model", str(tiny_model), "--adapters", str(tiny_adapters), "--no-embedder",
                      "--out", str(tmp_path / "b"), *args])
    assert result.exit_code != 0 and message in str(result.exception), result.output + repr(result.exception)
    assert not (tmp_path / "b").exists()

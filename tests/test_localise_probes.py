"""Hidden-state probes of the Core ML and ExecuTorch targets on tiny bundles, through `localise`.

An unmodified bundle matches the decoder reference at every state within its precision's tolerance; a bundle
with one layer's weight negated in its weight file (Core ML ``weight.bin``, ExecuTorch ``foundation.ptd``) is
localised to exactly that layer. The probes read the bundle's own program, so the patched file is what runs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("coremltools")

from memlora.export import coreml_export as ce  # noqa: E402
from memlora.export.bundle import load_bundle  # noqa: E402
from memlora.export.decoder import Decoder, DecoderConfig  # noqa: E402
from memlora.export.lora import load_adapters  # noqa: E402
from memlora.export.target import MODES  # noqa: E402
from memlora.runtime.parity.coreml_probe import CoreMLHiddenProbe  # noqa: E402
from memlora.runtime.parity.executorch_probe import ExecuTorchHiddenProbe  # noqa: E402
from memlora.runtime.parity.localise import localise  # noqa: E402
from memlora.runtime.parity.reference import DecoderReference  # noqa: E402
from memlora.runtime.parity.thresholds import load_thresholds  # noqa: E402
from tests import test_coreml  # noqa: E402

# the Core ML packages of tests/test_coreml.py (both modes, base + two adapters), built once for this module
requests, templates, packages = test_coreml.requests, test_coreml.templates, test_coreml.packages

TOKENS = [5, 17, 42, 7, 99, 3, 250, 11, 64, 8, 120, 33]
BROKEN = "layers.1.mlp.down_proj.weight"


def base_weight(model_dir, name: str) -> np.ndarray:
    return dict(Decoder.from_pretrained(model_dir, 8).named_parameters())[name].detach().numpy()


def assert_matches(reference: DecoderReference, probe, precision: str, num_layers: int) -> None:
    """Every adapter's hidden states within the tolerance at every state (no layer named)."""
    tol = load_thresholds().layer_tolerance(precision)
    for adapter in (None, *reference.adapters):
        result = localise(reference.hidden_states, probe, TOKENS, adapter, tol)
        errors = result["relative_errors"]
        assert result["layer"] is None and len(errors) == num_layers + 1, (adapter, result)
        assert errors["embed_tokens"] < 1e-6 and max(errors.values()) <= tol, (adapter, errors)


def assert_localised(reference: DecoderReference, probe, precision: str) -> None:
    for adapter in (None, *reference.adapters):
        result = localise(reference.hidden_states, probe, TOKENS, adapter, load_thresholds().layer_tolerance(precision))
        assert result["layer"] == "layers.1", (adapter, result)


def coreml_reference(mode: str, requests, adapters: bool = True) -> DecoderReference:
    """The decoder reference with the packages' recipe (and their adapters, unless `adapters` is false)."""
    req = requests[mode]
    return DecoderReference(req.model_dir, req.adapters if adapters else {}, ce.recipe(req), test_coreml.CONTEXT)


@pytest.mark.parametrize("mode", MODES)
def test_coreml_probe_matches_reference(mode, requests, packages, tiny_model):
    path, entry = packages(mode, "fp16")
    probe = CoreMLHiddenProbe(path.parents[1], entry)
    assert_matches(coreml_reference(mode, requests), probe, "fp16", DecoderConfig.from_hf(tiny_model).num_layers)


@pytest.mark.parametrize("mode", MODES)
def test_coreml_broken_layer_is_localised(mode, requests, packages, tiny_model, tmp_path):
    """One layer's weight negated in the package's weight blob: every function holding it names that layer
    (separable: all of them share the base weight; merged: the base function, the others fold an adapter in)."""
    path, entry = packages(mode, "fp16")
    bundle = tmp_path / "bundle"
    shutil.copytree(path.parents[1], bundle)
    package = bundle / entry["graphs"]["base"]
    weight = base_weight(tiny_model, BROKEN)
    ce.patch(package, ce.locate(package, {BROKEN: weight}), {BROKEN: -weight})
    reference = coreml_reference(mode, requests, adapters=mode == "separable")
    assert_localised(reference, CoreMLHiddenProbe(bundle, entry), "fp16")


@pytest.fixture(scope="module")
def et_target(et_bundle, tiny_model, taught_adapters):
    """(manifest entry, precision, decoder reference) of the session's ExecuTorch bundle."""
    bundle = load_bundle(et_bundle)
    recipe = bundle.recipe("executorch")
    adapters = load_adapters(taught_adapters, DecoderConfig.from_hf(tiny_model, 64))
    return bundle.target("executorch"), recipe.scheme, DecoderReference(tiny_model, adapters, recipe, 64)


def test_executorch_probe_matches_reference(et_bundle, et_target, tiny_model):
    entry, precision, reference = et_target
    assert_matches(reference, ExecuTorchHiddenProbe(et_bundle, entry), precision,
                   DecoderConfig.from_hf(tiny_model).num_layers)


def test_executorch_broken_layer_is_localised(et_bundle, et_target, tiny_model, tmp_path):
    """One layer's weight negated in foundation.ptd (shared by every method): every method names that layer."""
    entry, precision, reference = et_target
    bundle = tmp_path / "bundle"
    shutil.copytree(et_bundle, bundle)
    ptd = bundle / entry["data_files"]["foundation"]
    weight = base_weight(tiny_model, BROKEN).astype(np.float32).tobytes()
    data = ptd.read_bytes()
    offset = data.find(weight)
    assert offset > 0 and data.find(weight, offset + 1) < 0  # stored once, as is
    ptd.write_bytes(data[:offset] + (-np.frombuffer(weight, np.float32)).tobytes() + data[offset + len(weight):])
    assert_localised(reference, ExecuTorchHiddenProbe(bundle, entry), precision)


def test_a_probe_that_sees_fewer_states_gives_a_reason():
    """E.g. an ExecuTorch program whose delegate spans two layers: a reason, never a misnamed layer."""
    reference = lambda tokens, adapter: [np.ones((2, 4))] * 3  # noqa: E731
    result = localise(reference, lambda tokens, adapter: [np.ones((2, 4))] * 2, [1, 2], None, 0.01)
    assert result["layer"] is None and "read 2 states, the reference has 3" in result["reason"]

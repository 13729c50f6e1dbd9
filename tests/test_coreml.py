"""The Core ML target on a tiny model, executed by the MIL interpreter, against the export-friendly torch decoder.

Tolerance for fp16 programs: the reference is the same torch decoder run in fp16 (``.half()``). Both round
every activation to fp16 (unit roundoff 2^-11 ~ 4.9e-4), but not at the same places: the converter splits and
fuses ops (RMSNorm becomes pow/mean/rsqrt/mul, RoPE and the GQA repeat become slices, concat and tile) and
torch's CPU fp16 kernels accumulate and round differently from MIL's op-by-op rounding. A few fp16 ulps per
op over two layers, measured at <= ~4e-3 of the logit range here, so logits must agree within
``FP16_TOL = 1.5e-2 x max|logit|`` -- an order of magnitude below what a wrong op, a wrong weight layout or a
wrong adapter produces (those differ by O(max|logit|)).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("coremltools")

from memlora.errors import MemloraError  # noqa: E402
from memlora.export import coreml_export as ce  # noqa: E402
from memlora.export import quant as qd  # noqa: E402
from memlora.export.target import MODES, TargetRequest  # noqa: E402
from memlora.export.decoder import Decoder, DecoderConfig  # noqa: E402
from memlora.export.lora import load_adapters, unify_slots  # noqa: E402
from memlora.runtime.coreml_backend import CoreMLBackend, causal_mask  # noqa: E402
from memlora.runtime.mil_interpreter import MILModel  # noqa: E402

CONTEXT = 48
FP16_TOL = 1.5e-2
PROMPT = [5, 17, 33, 2, 99, 100, 7, 250, 31]
QUANTS = ("int8", "int4", "pal4")
ADAPTERS = ("extract", "answer")


@pytest.fixture(scope="module")
def requests(tiny_model, tiny_adapters):
    loaded = load_adapters(tiny_adapters, DecoderConfig.from_hf(tiny_model, CONTEXT))
    adapters = {name: loaded[name] for name in ADAPTERS}  # two suffice; every function costs conversion time
    return {mode: TargetRequest(tiny_model, adapters, mode, "fp16", 32, CONTEXT) for mode in MODES}


@pytest.fixture(scope="module")
def templates(requests, tmp_path_factory):
    """One conversion per mode, shared by every package built in this module."""
    return {mode: ce.make_template(req, tmp_path_factory.mktemp(f"template-{mode}")) for mode, req in requests.items()}


@pytest.fixture(scope="module")
def packages(requests, templates, tmp_path_factory):
    """(mode, quant) -> (package path, manifest entry), built lazily."""
    cache: dict = {}

    def get(mode: str, quant: str):
        if (mode, quant) not in cache:
            req = TargetRequest(**{**requests[mode].__dict__, "quant": quant})
            bundle = tmp_path_factory.mktemp(f"bundle-{mode}-{quant}")
            entry = ce.write_package(templates[mode], req, bundle, tmp_path_factory.mktemp("work"))
            cache[mode, quant] = (bundle / entry["graphs"]["base"], entry)
        return cache[mode, quant]

    return get


def reference(req: TargetRequest, adapter: str | None, quant: str = "fp16", half: bool = False) -> Decoder:
    """The torch decoder for one function: same adapter handling, same quantization applied in torch."""
    slots = unify_slots(req.adapters.values()) if req.mode == "separable" else None
    decoder = ce.build_decoder(req, req.adapters[adapter] if adapter else None, slots)
    qd.quantize_decoder(decoder, ce.recipe(TargetRequest(**{**req.__dict__, "quant": quant})))
    return decoder.half() if half else decoder


def torch_logits(decoder: Decoder, chunks: list[list[int]]) -> list[np.ndarray]:
    out, pos = [], 0
    decoder.reset_cache()
    with torch.no_grad():
        for chunk in chunks:
            logits = decoder(torch.tensor([chunk]), torch.arange(pos, pos + len(chunk)))
            out.append(logits[0].float().numpy())
            pos += len(chunk)
    return out


def interpreter_logits(model: MILModel, function: str, chunks: list[list[int]]) -> list[np.ndarray]:
    state, out, pos = model.make_state(function), [], 0
    for chunk in chunks:
        inputs = {"input_ids": np.array([chunk], np.int32), "causal_mask": causal_mask(pos, len(chunk))}
        out.append(model.predict(inputs, state, function)["logits"][0].astype(np.float32))
        pos += len(chunk)
    return out


CHUNKS = [PROMPT[:6], PROMPT[6:7], PROMPT[7:8], PROMPT[8:]]  # prefill, then decode steps


def assert_close(got: list[np.ndarray], want: list[np.ndarray], tol: float = FP16_TOL) -> float:
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        scale = max(1.0, float(np.abs(w).max()))
        worst = max(worst, float(np.abs(g - w).max()) / scale)
    assert worst <= tol, f"max |delta logits| = {worst:.2e} x max|logit| > {tol}"
    return worst


@pytest.mark.parametrize("mode", MODES)
def test_fp16_functions_match_torch_fp16(mode, requests, packages):
    """Every function of the fp16 package (base and each adapter) against the torch decoder in fp16."""
    path, entry = packages(mode, "fp16")
    model = MILModel(path)
    assert set(model.functions) == {"base", *requests[mode].adapters} and model.default_function == "base"
    for adapter in (None, *requests[mode].adapters):
        function = entry["functions"][adapter or "base"]
        got = interpreter_logits(model, function, CHUNKS)
        assert_close(got, torch_logits(reference(requests[mode], adapter, half=True), CHUNKS))
        fp32 = torch_logits(reference(requests[mode], adapter), CHUNKS)
        assert_close(got, fp32)  # fp16 rounding is the only difference to fp32 as well


def test_functions_differ_by_adapter(requests, packages):
    """Each function carries its own adapter: the logits of different functions are far apart."""
    model = MILModel(packages("separable", "fp16")[0])
    outs = {f: interpreter_logits(model, f, CHUNKS[:1])[0] for f in model.functions}
    names = sorted(outs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(outs[a] - outs[b]).max() > 5 * FP16_TOL * max(1.0, np.abs(outs[a]).max())


@pytest.mark.parametrize("quant", QUANTS)
def test_quantized_matches_same_quantization_in_torch(quant, requests, packages):
    """Each quantized variant against the torch decoder with the same quantization applied in torch."""
    path, entry = packages("separable", quant)
    model = MILModel(path)
    op = "constexpr_lut_to_dense" if quant == "pal4" else "constexpr_blockwise_shift_scale"
    fn = model.program.functions["extract"]
    assert op in {o.type for o in fn.block_specializations[fn.opset].operations}
    req = requests["separable"]
    for adapter in (None, "extract"):
        got = interpreter_logits(model, entry["functions"][adapter or "base"], CHUNKS)
        ref = reference(req, adapter, quant)
        assert_close(got, torch_logits(ref, CHUNKS))
    # the dequantized weights the program holds are exactly the ones quantized in torch
    q_proj = ref.layers[0].self_attn.q_proj.weight.detach().numpy()
    held = [v[0] for v in model._cache.values() if isinstance(v, tuple) and np.shape(v[0]) == q_proj.shape]
    assert any(np.array_equal(h, q_proj) for h in held)
    unquantized = reference(req, "extract").layers[0].self_attn.q_proj.weight.detach().numpy()
    assert not np.array_equal(q_proj, unquantized.astype(np.float16).astype(np.float32))


def test_quantized_merged(requests, packages):
    """Merged functions are quantized after merging: compare with merge-then-quantize in torch."""
    path, entry = packages("merged", "int4")
    got = interpreter_logits(MILModel(path), entry["functions"]["answer"], CHUNKS)
    assert_close(got, torch_logits(reference(requests["merged"], "answer", "int4"), CHUNKS))


def test_multifunction_stores_base_weights_once(packages):
    sizes = packages("separable", "fp16")[1]["size_bytes"]
    # three functions (base + 2 adapters) share one copy of the base weights
    assert sizes["multifunction"] < 0.5 * sizes["separate_models"], sizes
    merged = packages("merged", "fp16")[1]["size_bytes"]
    assert merged["multifunction"] > sizes["multifunction"]  # merged functions cannot share projections


def test_backend_forward_and_generate(requests, packages):
    """The Backend over the interpreter: chunked forward, adapter switching, and the shared decode loop."""
    from memlora.generate import GenerationConfig, generate

    path, entry = packages("separable", "fp16")
    functions = {None if k == "base" else k: v for k, v in entry["functions"].items()}
    backend = CoreMLBackend(path, functions, entry["max_context"], engine="interpreter")
    assert backend.adapters == ADAPTERS and backend.max_context == CONTEXT
    prefill = backend.forward(PROMPT[:6], 0, "extract", all_logits=True)
    step = backend.forward(PROMPT[6:7], 6, "extract")
    want = torch_logits(reference(requests["separable"], "extract"), CHUNKS[:2])
    assert prefill.shape == want[0].shape and step.shape == (1, want[1].shape[-1])
    assert_close([prefill, step], want)

    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    decoder = reference(requests["separable"], "answer")
    result = generate(backend, Tok(), PROMPT, "answer", GenerationConfig(max_new_tokens=8), eos_ids=set())
    ids, greedy = list(PROMPT), []
    decoder.reset_cache()
    with torch.no_grad():
        logits = decoder(torch.tensor([ids]), torch.arange(len(ids)))[0, -1]
        for _ in range(8):
            greedy.append(int(logits.argmax()))
            logits = decoder(torch.tensor([[greedy[-1]]]), torch.tensor([len(ids) + len(greedy) - 1]))[0, -1]
    assert result.output_ids == greedy


def test_backend_errors(packages):
    path, entry = packages("separable", "fp16")
    backend = CoreMLBackend(path, {None: "base", "extract": "extract"}, entry["max_context"], engine="interpreter")
    with pytest.raises(MemloraError, match="unknown adapter 'answer'"):
        backend.forward([1], 0, "answer")
    with pytest.raises(MemloraError, match="exceed the context"):
        backend.forward([1] * (CONTEXT + 1), 0, "extract")


@pytest.mark.skipif(sys.platform != "darwin", reason="MLModel.predict runs only on macOS (Core ML framework)")
def test_coreml_engine_matches_interpreter(packages):
    path, entry = packages("separable", "int4")
    functions = {None if k == "base" else k: v for k, v in entry["functions"].items()}
    native = CoreMLBackend(path, functions, entry["max_context"], engine="coreml")
    emulated = CoreMLBackend(path, functions, entry["max_context"], engine="interpreter")
    for backend in (native, emulated):
        backend.reset()
    a = native.forward(PROMPT, 0, "extract", all_logits=True)
    b = emulated.forward(PROMPT, 0, "extract", all_logits=True)
    assert_close([a], [b])


def test_export_verb_writes_a_coreml_bundle(tiny_model, tiny_adapters, tmp_path):
    """`memlora export --target coreml` end to end: manifest entry, checksums, backend from the bundle."""
    from memlora.export.command import export_bundle
    from memlora.runtime.coreml_backend import from_bundle

    out = export_bundle(tiny_model, tiny_adapters, ["coreml"], "separable", "int4", 32, tmp_path / "bundle",
                        max_context=CONTEXT, golden_tokens=8)
    backend = from_bundle(out)
    assert backend.adapters == ("extract", "mem_update", "answer")
    logits = backend.forward(PROMPT, 0, "extract")
    assert logits.shape[0] == 1 and np.isfinite(logits).all()

"""The ONNX target on onnxruntime: both adapter modes x fp32/int8/int4, parity with the references."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoTokenizer

from memlora.export import onnx_export
from memlora.export.bundle import load_bundle
from memlora.export.target import MODES, TargetRequest
from memlora.export.decoder import Decoder, DecoderConfig
from memlora.export.lora import fill_slots, load_adapters, unify_slots
from memlora.generate import GenerationConfig, generate
from memlora.runtime.onnx_backend import OnnxBackend, from_bundle
from memlora.trace import read_traces

CTX = 128
PROMPT = [5, 17, 42, 7, 99, 3, 250, 11, 64, 8, 120, 33, 301, 77, 12, 400]
COSINE = {"fp32": 0.99999, "int8": 0.999, "int4": 0.98}  # int8/int4 kernels also quantize activations


@pytest.fixture(scope="module")
def adapters(tiny_model, tiny_adapters):
    return load_adapters(tiny_adapters, DecoderConfig.from_hf(tiny_model, CTX))


@pytest.fixture(scope="module")
def exported(tiny_model, adapters, tmp_path_factory):
    """Every mode x quantization, exported once per module. Tracing is deterministic, so the traced graph
    is reused across quantizations (the matrix is about modes and quantization, not tracing)."""
    traced: dict = {}
    real_export = onnx_export.export_graph

    def export_once(decoder):
        key = (decoder.config, decoder.slots)
        if key not in traced:
            traced[key] = real_export(decoder)
        return copy.deepcopy(traced[key])

    mp = pytest.MonkeyPatch()
    mp.setattr(onnx_export, "export_graph", export_once)
    out = {}
    try:
        for mode in MODES:
            for quant in onnx_export.QUANTS:
                root = tmp_path_factory.mktemp(f"onnx-{mode}-{quant}")
                req = TargetRequest(tiny_model, adapters, mode, quant, 32, CTX)
                out[mode, quant] = (root, onnx_export.export_target(req, root))
    finally:
        mp.undo()
    return out


def open_backend(exported, mode, quant) -> OnnxBackend:
    root, entry = exported[mode, quant]
    graphs = {(None if k == "base" else k): root / f for k, f in entry["graphs"].items()}
    return OnnxBackend(graphs, {k: root / f for k, f in entry["adapter_files"].items()})


def reference(tiny_model, adapter) -> np.ndarray:
    dec = Decoder.from_pretrained(tiny_model, CTX, unify_slots([adapter]) if adapter else None)
    if adapter:
        fill_slots(dec, adapter)
    with torch.no_grad():
        return dec(torch.tensor([PROMPT]), torch.arange(len(PROMPT)))[0].numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("quant", onnx_export.QUANTS)
@pytest.mark.parametrize("mode", MODES)
def test_export_load_run(exported, tiny_model, adapters, mode, quant):
    backend = open_backend(exported, mode, quant)
    assert set(backend.adapters) == set(adapters) and backend.max_context == CTX
    for name in (None, *adapters):
        ref = reference(tiny_model, adapters.get(name))
        got = np.concatenate([backend.forward(PROMPT[:9], 0, name, all_logits=True),  # prefill
                              backend.forward(PROMPT[9:10], 9, name, all_logits=True),  # decode step
                              backend.forward(PROMPT[10:], 10, name, all_logits=True)])  # prefill after past
        if quant == "fp32":
            assert np.abs(got - ref).max() <= 1e-4, name
        assert cosine(got, ref) >= COSINE[quant], (name, cosine(got, ref))


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantization_touches_base_weights_only(exported, quant):
    root, entry = exported["separable", quant]
    graph = onnx.load(str(root / entry["graphs"]["base"]), load_external_data=False).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    float_mm = [n for n in graph.node if n.op_type == "MatMul"]
    bits = {a.i for n in nbits for a in n.attribute if a.name == "bits"}
    assert bits == {onnx_export.QUANT_BITS[quant]}
    assert len(nbits) == 2 * 4 + 1  # qkv, o, gate_up, down of both layers, and the lm_head
    assert float_mm and all(n.input[1].startswith("lora.") for n in float_mm)
    assert {i.name for i in graph.input if i.name.startswith("lora.")} == {n.input[1] for n in float_mm}


def test_graph_has_no_split_reshape_or_separate_residual_add_per_layer(exported):
    """Every kernel counts in a small model's decode step: q|k|v reaches GroupQueryAttention packed, and each
    residual add is fused into the RMSNorm after it (2 layers: 3 such norms; the first layer's norm follows
    the embedding, the final one the slice of the logits positions)."""
    root, entry = exported["separable", "fp32"]
    graph = onnx.load(str(root / entry["graphs"]["base"]), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    producer = {o: n for n in graph.node for o in n.output}
    gqa = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == 2 and all(list(n.input[1:3]) == ["", ""] for n in gqa)
    assert all(producer[n.input[0]].op_type == "Add" for n in gqa)  # fused projection + its LoRA branch
    assert "Split" not in ops[: ops.index("GroupQueryAttention")]
    assert ops.count("SkipSimplifiedLayerNormalization") == 3 and ops.count("RMSNormalization") == 2


def test_adapter_file_that_does_not_fit_the_base_graph_is_named(exported, tmp_path):
    """An adapter exported for another slot layout (a parameter missing or of another shape) fails at load
    with the file named, not with onnxruntime's missing-input error at the first step."""
    import onnxruntime as ort

    from memlora.errors import MemloraError
    from memlora.runtime.onnx_backend import read_adapter

    root, entry = exported["separable", "fp32"]
    graphs = {None: root / entry["graphs"]["base"]}
    params = {k: v.numpy() for k, v in read_adapter(root / entry["adapter_files"]["extract"]).items()}
    name = sorted(params)[0]
    for label, bad in (("missing", {k: v for k, v in params.items() if k != name}),
                       ("reshaped", {**params, name: params[name][..., :1].copy()})):
        fmt = ort.AdapterFormat()
        fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in bad.items()})
        path = tmp_path / f"{label}.onnx_adapter"
        fmt.export_adapter(str(path))
        with pytest.raises(MemloraError, match=f"{path}: .*{name}"):
            OnnxBackend(graphs, {"extract": path})


def test_graph_with_stored_zero_lora_defaults_still_loads(exported, tmp_path):
    """ONNX bundles of memlora 0.1 stored the LoRA slots as zero initializers listed as inputs: the backend
    runs them unchanged, with and without an adapter."""
    from onnx import numpy_helper

    root, entry = exported["separable", "fp32"]
    model = onnx.load(str(root / entry["graphs"]["base"]))
    for i in model.graph.input:
        if i.name.startswith("lora."):
            shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
            model.graph.initializer.append(numpy_helper.from_array(np.zeros(shape, np.float32), i.name))
    onnx.save(model, str(tmp_path / "old.onnx"))
    adapter = root / entry["adapter_files"]["extract"]
    old = OnnxBackend({None: tmp_path / "old.onnx"}, {"extract": adapter})
    new = open_backend(exported, "separable", "fp32")
    for name in (None, "extract"):
        assert np.abs(old.forward(PROMPT, 0, name) - new.forward(PROMPT, 0, name)).max() <= 1e-5, name


@pytest.mark.parametrize("quant", onnx_export.QUANTS)
@pytest.mark.parametrize("mode", MODES)
def test_onnxruntime_genai_runs_every_mode_and_quant(exported, tiny_model, mode, quant):
    """onnxruntime-genai's own loop on the exported folder (a merged adapter's graph through a config overlay,
    a separable one's `.onnx_adapter` through `og.Adapters`) gives our backend's greedy tokens."""
    from tests.test_onnx_genai import genai_adapters, genai_eos, genai_greedy, genai_model, our_greedy

    root, entry = exported[mode, quant]
    backend, tok = open_backend(exported, mode, quant), AutoTokenizer.from_pretrained(tiny_model)
    folder = root / Path(entry["genai_config"]).parent
    base, eos = genai_model(folder), genai_eos(folder)
    adapters = genai_adapters(base, folder, entry["adapter_files"])
    for name in (None, *backend.adapters):
        model, active = (base, name) if mode == "separable" or name is None else \
            (genai_model(folder, Path(entry["graphs"][name]).name), None)
        want = our_greedy(backend, tok, PROMPT, 12, eos, name)
        assert genai_greedy(model, PROMPT, 12, eos, adapters, active) == want, name


@pytest.mark.parametrize("quant", onnx_export.QUANTS)
def test_separable_adapter_equals_merged(exported, adapters, quant):
    separable, merged = open_backend(exported, "separable", quant), open_backend(exported, "merged", quant)
    for name in (None, *adapters):
        a = separable.forward(PROMPT, 0, name, all_logits=True)
        b = merged.forward(PROMPT, 0, name, all_logits=True)
        assert np.abs(a - b).max() <= 1e-4, name


def test_switching_adapters_matches_fresh_sessions(exported, tiny_model, adapters):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    config = GenerationConfig(max_new_tokens=10)
    fresh = {name: generate(open_backend(exported, "separable", "fp32"), tok, PROMPT, name, config, set()).output_ids
             for name in (None, *adapters)}
    shared = open_backend(exported, "separable", "fp32")
    for name in ["answer", "extract", None, "answer", "mem_update", "extract", None, "mem_update"]:
        assert generate(shared, tok, PROMPT, name, config, set()).output_ids == fresh[name], name
    assert len({tuple(v) for v in fresh.values()}) > 1  # the adapters really change the output


def test_fp32_greedy_equals_golden_reference(onnx_bundle, tiny_model):
    """Replaying the bundle's golden traces (transformers+peft fp32) on onnxruntime gives the same ids."""
    bundle = load_bundle(onnx_bundle)
    backend = from_bundle(onnx_bundle)
    tok = AutoTokenizer.from_pretrained(onnx_bundle / "tokenizer")
    records = list(read_traces(bundle.golden_file))
    assert len(records) == bundle.manifest["golden"]["records"] >= 6
    for r in records:
        ops = bundle.manifest["generation"]["operations"][r.op]
        config = GenerationConfig(min(bundle.manifest["golden"]["max_new_tokens"], ops["max_new_tokens"]),
                                  tuple(ops["stop"]))  # the budget export/golden.py decoded with
        got = generate(backend, tok, r.prompt_ids, r.adapter, config, bundle.eos_ids,
                       constraint=bundle.constraints.table(r.constraint))
        assert got.output_ids == r.output_ids and got.stop_reason == r.stop_reason, r.op


def test_memory_pipeline_runs_on_onnx(onnx_bundle, embedder, tmp_path):
    """`memlora ask --backend onnx --bundle DIR` path: the scripted conversation gives the reference store."""
    from memlora.pipeline import MemoryPipeline
    from memlora.runtime.registry import open_backend as open_named
    from memlora.session import load_tokenizer
    from memlora.store import MemoryStore
    from tests import script

    backend, tok_dir = open_named("onnx", bundle=onnx_bundle)
    pipe = MemoryPipeline(backend, load_tokenizer(tok_dir), MemoryStore(tmp_path / "s.sqlite"), embedder)
    assert pipe.ingest(*script.EXCHANGES[0]).events == [("ADD", "m0")]
    assert pipe.ingest(*script.EXCHANGES[1]).events == [("UPDATE", "m0")]
    assert [m.text for m in pipe.store.memories()] == [script.MERGED]
    assert pipe.answer(script.QUESTION).text == script.ANSWER
